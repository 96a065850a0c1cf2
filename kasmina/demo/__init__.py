"""``kasmina demo``: morphogenetic training of a real network on scikit-learn's digits.

See :mod:`kasmina.demo.run` for the flow and docs/demo.md for what it shows.
"""

from kasmina.demo.run import DemoOptions, DemoReport, run

__all__ = ["DemoOptions", "DemoReport", "run"]
