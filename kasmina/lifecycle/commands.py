"""Internal commands ``decide`` understands.

These are already verified and translated: the security layer turns a signed Leyline
``AdaptationCommand`` into one of these, the executor turns each training step into
:class:`Tick`, and ``kasmina simulate`` builds them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from kasmina.lifecycle.gates import GateInputs
from kasmina.lifecycle.stages import Stage


@dataclass(frozen=True, slots=True)
class Germinate:
    seed_id: str
    blueprint_id: str
    step: int
    inputs: GateInputs
    parameters: Mapping[str, float] = field(default_factory=dict)
    blend: Mapping[str, Any] | None = None
    warnings: tuple[Mapping[str, Any], ...] = ()
    baseline_metric: float | None = None
    schedule: str = "SIGMOID"


@dataclass(frozen=True, slots=True)
class Tick:
    """One training step for one seed; ``inputs`` are measured only when a gate is due."""

    seed_id: str
    step: int
    inputs: GateInputs | None = None


@dataclass(frozen=True, slots=True)
class Advance:
    """Move to ``to_stage`` now, ignoring the rest of the dwell (gates still apply)."""

    seed_id: str
    step: int
    to_stage: Stage
    inputs: GateInputs | None = None


@dataclass(frozen=True, slots=True)
class Cull:
    seed_id: str
    step: int
    reason: str = "requested"


@dataclass(frozen=True, slots=True)
class Terminate:
    seed_id: str
    step: int


@dataclass(frozen=True, slots=True)
class Pause:
    seed_id: str
    step: int


@dataclass(frozen=True, slots=True)
class Resume:
    seed_id: str
    step: int


@dataclass(frozen=True, slots=True)
class Rollback:
    """Restore a seed to ``target``, its replayed state at log position ``to_position``."""

    seed_id: str
    step: int
    to_position: int
    target: Any  # SeedState; typed loosely to keep this module free of a state import


Command = Germinate | Tick | Advance | Cull | Terminate | Pause | Resume | Rollback
