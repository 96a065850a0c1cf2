"""Lifecycle stages and gates, with Leyline v1 wire values.

The numbers are the ones Esper's controllers put on the wire (``SeedLifecycleStage`` and
``SeedLifecycleGate``); ``tests/test_lifecycle.py`` checks them against the generated
protobuf enums so the two can never drift apart.
"""

from __future__ import annotations

from enum import IntEnum


class Stage(IntEnum):
    UNKNOWN = 0
    DORMANT = 1
    GERMINATED = 2
    TRAINING = 3
    BLENDING = 4
    SHADOWING = 5
    PROBATIONARY = 6
    FOSSILIZED = 7
    CULLED = 8
    EMBARGOED = 9
    RESETTING = 10
    TERMINATED = 11

    def __str__(self) -> str:  # IntEnum prints its number since Python 3.11; people read names
        return self.name

    @classmethod
    def parse(cls, value: str | int | Stage) -> Stage:
        """Accept a stage, its wire number, or its name in any case."""
        if isinstance(value, cls):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[str(value).strip().upper().removeprefix("SEED_STAGE_")]
        except KeyError:
            raise ValueError(f"unknown stage {value!r}") from None


class Gate(IntEnum):
    UNKNOWN = 0
    G0_SANITY = 1
    G1_GRADIENT_HEALTH = 2
    G2_STABILITY = 3
    G3_INTERFACE = 4
    G4_SYSTEM_IMPACT = 5
    G5_RESET = 6

    def __str__(self) -> str:
        return self.name


#: Stages in which a seed's module is attached to its site and can be culled.
LIVE_STAGES = frozenset(
    {Stage.GERMINATED, Stage.TRAINING, Stage.BLENDING, Stage.SHADOWING, Stage.PROBATIONARY}
)
