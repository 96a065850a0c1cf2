"""Alpha schedules: how a seed's weight ramps from 0 to 1 over its BLENDING steps.

Pure Python math (no tensors), so computing the next alpha costs nothing on the device;
the executor copies the value into its device-resident alpha tensor.

With t = k / total for step k = 1..total:

* LINEAR:  alpha = t
* COSINE:  alpha = (1 − cos(π·t)) / 2, computed as sin²(π·t/2) so tiny t stays positive
* SIGMOID: alpha = (σ(s·(t − ½)) − σ(−s/2)) / (σ(s/2) − σ(−s/2)) with steepness s (10 by
  default, the curve of the prototype's 20-step, temperature-2 schedule), i.e. the logistic
  curve rescaled so it starts at 0 and ends at exactly 1. The prototype's plain sigmoid
  never reached 1 (0.9933 after its last step); this one does.

Every schedule is strictly increasing in k on (0, 1], exactly 1.0 for k >= total and 0.0
for k <= 0.
"""

from __future__ import annotations

import math
import operator

from kasmina.lifecycle.naming import NamedEnum

__all__ = ["AlphaSchedule", "alpha_at", "DEFAULT_STEEPNESS"]

DEFAULT_STEEPNESS = 10.0


class AlphaSchedule(NamedEnum):
    """The ramp shapes; the value is the name."""

    SIGMOID = "SIGMOID"
    LINEAR = "LINEAR"
    COSINE = "COSINE"


def alpha_at(step_in_blend: int, total: int, schedule: AlphaSchedule | str = AlphaSchedule.SIGMOID,
             *, steepness: float = DEFAULT_STEEPNESS) -> float:
    """Alpha after ``step_in_blend`` of ``total`` blending steps (``total`` >= 1).

    ``steepness`` only shapes SIGMOID; it must be in (0, 40] so the curve stays strictly
    increasing in double precision.
    """
    k = operator.index(step_in_blend)
    n = operator.index(total)
    if n < 1:
        raise ValueError(f"total must be >= 1, got {n}")
    kind = AlphaSchedule.parse(schedule)
    if not (math.isfinite(steepness) and 0.0 < steepness <= 40.0):
        raise ValueError(f"steepness must be in (0, 40], got {steepness!r}")
    if k <= 0:
        return 0.0
    if k >= n:
        return 1.0
    t = k / n
    if kind is AlphaSchedule.LINEAR:
        return t
    if kind is AlphaSchedule.COSINE:
        return math.sin(0.5 * math.pi * t) ** 2
    # σ(x) = (1 + tanh(x/2)) / 2, so the rescaled sigmoid is a ratio of tanh values; this
    # form has no 1 − σ cancellation and gives exactly 1 at t = 1 and 0 at t = 0.
    edge = math.tanh(0.25 * steepness)
    return (math.tanh(0.5 * steepness * (t - 0.5)) + edge) / (2.0 * edge)
