"""Alpha as a pure function of the replayed state and the training step.

Alpha is never stored per step: in BLENDING it is the schedule's value at the number of
steps spent blending, so the live executor, a replay and a resumed run all agree on it.
"""

from __future__ import annotations

from kasmina.lifecycle.schedule import AlphaSchedule, alpha_at
from kasmina.lifecycle.stages import Stage
from kasmina.lifecycle.state import SeedState

_FULL = frozenset({Stage.SHADOWING, Stage.PROBATIONARY, Stage.FOSSILIZED})


def alpha_for(state: SeedState, step: int) -> float:
    if state.stage is Stage.BLENDING:
        steps = state.steps_in_stage(state.paused_at_step if state.paused else step)
        return alpha_at(steps, state.dwell(Stage.BLENDING), AlphaSchedule.parse(state.schedule))
    if state.stage in _FULL or (state.stage is Stage.TERMINATED and state.blueprint_id is not None):
        return 1.0
    return 0.0
