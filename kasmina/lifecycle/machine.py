"""The lifecycle table of SPEC §4, defined once with ``transitions``.

``transitions`` is used only as the declarative table (one shared ``Machine`` with no model,
no callbacks, no auto ``to_<state>`` shortcuts): ``decide`` asks it which moves exist and
``evolve`` does plain assignment, so replay never runs a side effect. Everything else in
this module is derived from that one table.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from transitions import Machine

from kasmina.lifecycle.stages import LIVE_STAGES, Gate, Stage

S = Stage
#: (trigger, sources, destination, gates that must pass). The only place the table lives.
_TABLE: tuple[tuple[str, tuple[Stage, ...], Stage, tuple[Gate, ...]], ...] = (
    ("register", (S.UNKNOWN,), S.DORMANT, ()),
    ("germinate", (S.DORMANT,), S.GERMINATED, (Gate.G0_SANITY,)),
    ("start_training", (S.GERMINATED,), S.TRAINING, (Gate.G1_GRADIENT_HEALTH,)),
    ("start_blending", (S.TRAINING,), S.BLENDING, (Gate.G2_STABILITY,)),
    ("start_shadowing", (S.BLENDING,), S.SHADOWING, (Gate.G2_STABILITY, Gate.G3_INTERFACE)),
    ("start_probation", (S.SHADOWING,), S.PROBATIONARY, (Gate.G4_SYSTEM_IMPACT,)),
    ("fossilize", (S.PROBATIONARY,), S.FOSSILIZED, (Gate.G4_SYSTEM_IMPACT,)),
    ("cull", tuple(sorted(LIVE_STAGES)), S.CULLED, ()),
    ("embargo", (S.CULLED,), S.EMBARGOED, ()),
    ("reset", (S.EMBARGOED,), S.RESETTING, ()),
    ("reactivate", (S.RESETTING,), S.DORMANT, (Gate.G5_RESET,)),
    ("terminate", (S.DORMANT, S.FOSSILIZED), S.TERMINATED, ()),
)

MACHINE = Machine(
    model=None,
    states=list(Stage),
    transitions=[
        {"trigger": trigger, "source": [s.name for s in sources], "dest": dest.name}
        for trigger, sources, dest, _ in _TABLE
    ],
    initial=Stage.UNKNOWN,
    auto_transitions=False,
    ignore_invalid_triggers=False,
)


def _build_next() -> Mapping[Stage, frozenset[Stage]]:
    nxt: dict[Stage, set[Stage]] = {s: set() for s in Stage}
    for source in Stage:
        for transition in MACHINE.get_transitions(source=source.name):
            nxt[source].add(Stage[transition.dest])
    return MappingProxyType({s: frozenset(d) for s, d in nxt.items()})


#: stage -> the stages it may move to, read back from the machine.
ALLOWED_NEXT: Mapping[Stage, frozenset[Stage]] = _build_next()

_GATES: Mapping[tuple[Stage, Stage], tuple[Gate, ...]] = MappingProxyType(
    {(src, dest): gates for _, sources, dest, gates in _TABLE for src in sources}
)
_TRIGGERS: Mapping[tuple[Stage, Stage], str] = MappingProxyType(
    {(src, dest): trigger for trigger, sources, dest, _ in _TABLE for src in sources}
)

#: Where a seed goes when its stage's dwell has elapsed (the step-driven path).
PROGRESSION: Mapping[Stage, Stage] = MappingProxyType(
    {
        S.GERMINATED: S.TRAINING,
        S.TRAINING: S.BLENDING,
        S.BLENDING: S.SHADOWING,
        S.SHADOWING: S.PROBATIONARY,
        S.PROBATIONARY: S.FOSSILIZED,
        S.CULLED: S.EMBARGOED,
        S.EMBARGOED: S.RESETTING,
        S.RESETTING: S.DORMANT,
    }
)


def is_allowed(source: Stage, dest: Stage) -> bool:
    return dest in ALLOWED_NEXT[source]


def gates_for(source: Stage, dest: Stage) -> tuple[Gate, ...]:
    """Gates that must pass for ``source -> dest`` (empty for ungated moves)."""
    return _GATES.get((source, dest), ())


def trigger_for(source: Stage, dest: Stage) -> str:
    return _TRIGGERS[(source, dest)]


def _check_progression() -> None:
    for source, dest in PROGRESSION.items():
        if not is_allowed(source, dest):  # pragma: no cover - guards edits to the table
            raise AssertionError(f"progression {source.name}->{dest.name} not in the table")


_check_progression()
