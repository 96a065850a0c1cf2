"""``kasmina demo``: morphogenetic training of a real network on a real task.

Tasks: ``digits`` (an MLP on scikit-learn's digits, the quick default) and ``text`` (a
byte-level transformer language model on the Python standard library's source). See
:mod:`kasmina.demo.run` for the flow and docs/demo.md for what it shows.
"""

from kasmina.demo.run import DemoOptions, DemoReport, get_task, run, tasks

__all__ = ["DemoOptions", "DemoReport", "get_task", "run", "tasks"]
