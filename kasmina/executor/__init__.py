"""The in-process executor: seed sites inside a torch model, driven by the replayed log."""

from __future__ import annotations

from kasmina.executor.executor import Executor, Result, SeedView
from kasmina.executor.measure import MetricPolicy
from kasmina.executor.site import SeedSite, SiteMode

__all__ = ["Executor", "MetricPolicy", "Result", "SeedSite", "SeedView", "SiteMode"]
