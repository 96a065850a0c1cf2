"""Blend kernels and alpha schedules: the numeric core a seed site runs every step.

Eager PyTorch only (never ``torch.compile``): alpha changes every step and must not retrace.
"""

from __future__ import annotations

from kasmina.kernels.blend import BlenderConfig, BlendMode, BlendStats, blend
# Schedules are pure math and live with the lifecycle (torch-free); re-exported here.
from kasmina.lifecycle.schedule import DEFAULT_STEEPNESS, AlphaSchedule, alpha_at

__all__ = ["AlphaSchedule", "BlendMode", "BlendStats", "BlenderConfig", "DEFAULT_STEEPNESS",
           "alpha_at", "blend"]
