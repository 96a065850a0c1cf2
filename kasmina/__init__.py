"""Kasmina: the seed executor for morphogenetic training.

Public API (torch is imported only when a torch-facing name is first used, so the log
tools stay light)::

    ex = kasmina.Executor(model, sites=["features.3"], db="sqlite:///run.db", secret=b"...")
    cmd = kasmina.commands.germinate("features.3", "conv_adapter", parameters={"blend_steps": 30})
    kasmina.sign(cmd, b"...")
    ex.handle(cmd); ...; ex.step(metrics={"val_loss": 0.42})
    state = kasmina.replay("sqlite:///run.db")
    plain = kasmina.export(ex, probe_batch)   # the grown model as a plain nn.Module (ex.export())
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from kasmina.errors import KasminaError
from kasmina.lifecycle import Gate, Stage

__version__ = "0.1.0"

if TYPE_CHECKING:
    from kasmina import commands, kernels, leyline
    from kasmina.catalogue import Blueprint, Catalogue
    from kasmina.events import EventStore
    from kasmina.executor import Executor, MetricPolicy, Result, SeedView
    from kasmina.executor.export import ExportReport, export
    from kasmina.kernels import BlenderConfig, BlendMode
    from kasmina.rebuild import ReplayResult
    from kasmina.security import Keyring, sign

_LAZY = {
    "Executor": "kasmina.executor", "MetricPolicy": "kasmina.executor", "Result": "kasmina.executor",
    "SeedView": "kasmina.executor",
    # export(ex or model, probe, merge=, drop_unfinished=, report=): the grown model as plain torch
    "export": "kasmina.executor.export", "ExportReport": "kasmina.executor.export",
    "BlendMode": "kasmina.kernels", "BlenderConfig": "kasmina.kernels",
    "Blueprint": "kasmina.catalogue", "Catalogue": "kasmina.catalogue",
    "Keyring": "kasmina.security", "sign": "kasmina.security",
    "EventStore": "kasmina.events",
}
_MODULES = {"commands", "kernels", "leyline", "security", "catalogue", "events", "lifecycle"}

__all__ = ["Executor", "MetricPolicy", "Result", "SeedView", "BlendMode", "BlenderConfig", "Blueprint", "Catalogue",
           "EventStore", "ExportReport", "Gate", "KasminaError", "Keyring", "Stage", "commands", "export", "kernels",
           "leyline", "replay", "sign"]


def replay(db: str | EventStore, *, to_position: int | None = None, run: str | None = None) -> ReplayResult:
    """Every seed's state rebuilt from run ``run`` (else $KASMINA_RUN, else ``default``) of
    the log at ``db`` (a URL, or an open store: then its own run unless ``run`` is given)."""
    from kasmina.events import EventStore as _Store
    from kasmina.events import open_store
    from kasmina.events.runs import resolve
    from kasmina.rebuild import replay as _replay

    if isinstance(db, _Store):
        return _replay(db if run is None else db.for_run(run), to_position=to_position)
    with open_store(db, run=resolve(run)) as store:
        return _replay(store, to_position=to_position)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name in _MODULES:
        return import_module(f"kasmina.{name}")
    raise AttributeError(f"module 'kasmina' has no attribute {name!r}")
