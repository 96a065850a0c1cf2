"""The replayed state of one seed site, and its canonical (snapshot / digest) form."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterable, Mapping

from kasmina.lifecycle.stages import Stage

#: Bumped whenever the shape of :class:`SeedState` changes; older snapshots are ignored.
STATE_SCHEMA = 1

#: Dwell (steps) per stage when a germination's parameters don't say otherwise.
DEFAULT_DWELL: Mapping[Stage, int] = {
    Stage.GERMINATED: 1,
    Stage.TRAINING: 50,
    Stage.BLENDING: 30,
    Stage.SHADOWING: 10,
    Stage.PROBATIONARY: 20,
    Stage.CULLED: 0,
    Stage.EMBARGOED: 50,
    Stage.RESETTING: 1,
}
#: Command parameter that overrides each stage's dwell.
DWELL_KEYS: Mapping[Stage, str] = {
    Stage.GERMINATED: "germinated_steps",
    Stage.TRAINING: "training_steps",
    Stage.BLENDING: "blend_steps",
    Stage.SHADOWING: "shadow_steps",
    Stage.PROBATIONARY: "probation_steps",
    Stage.EMBARGOED: "embargo_steps",
    Stage.RESETTING: "reset_steps",
}
MAX_DWELL = 10_000_000


@dataclass(frozen=True, slots=True)
class SeedState:
    """Everything Kasmina knows about one site. Only ``evolve`` makes new ones."""

    seed_id: str
    stage: Stage = Stage.UNKNOWN
    generation: int = 0
    blueprint_id: str | None = None
    parameters: Mapping[str, float] = field(default_factory=dict)
    blend: Mapping[str, Any] | None = None
    kernel: Mapping[str, Any] | None = None
    schedule: str = "SIGMOID"
    stage_entered_step: int = 0
    embargo_until_step: int | None = None
    baseline_metric: float | None = None
    paused_at_step: int | None = None
    last_gate: Mapping[str, Any] | None = None
    cull_reason: str | None = None
    version: int = 0
    position: int = 0

    @property
    def paused(self) -> bool:
        return self.paused_at_step is not None

    def dwell(self, stage: Stage | None = None) -> int:
        """Steps the seed must spend in ``stage`` (default: its current one)."""
        stage = self.stage if stage is None else stage
        key = DWELL_KEYS.get(stage)
        default = DEFAULT_DWELL.get(stage, 0)
        if key is None or key not in self.parameters:
            return default
        return int(self.parameters[key])

    def steps_in_stage(self, step: int) -> int:
        return step - self.stage_entered_step

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["stage"] = self.stage.name
        out["parameters"] = dict(self.parameters)
        out["blend"] = None if self.blend is None else dict(self.blend)
        out["kernel"] = None if self.kernel is None else dict(self.kernel)
        out["last_gate"] = None if self.last_gate is None else dict(self.last_gate)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SeedState:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["stage"] = Stage.parse(values.get("stage", Stage.UNKNOWN))
        return cls(**values)

    def with_position(self, version: int, position: int) -> SeedState:
        return replace(self, version=version, position=position)


#: Built once: ``json.dumps`` with options constructs a new encoder on every call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)


def canonical_json(value: Any) -> str:
    """One byte-stable text for a JSON value (sorted keys, no spaces, no NaN)."""
    return _CANONICAL.encode(value)


def digest(states: Iterable[SeedState]) -> str:
    """SHA-256 of the canonical form of every seed, in seed-id order."""
    body = [s.to_dict() for s in sorted(states, key=lambda s: s.seed_id)]
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()
