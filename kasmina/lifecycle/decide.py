"""``decide(state, command) -> Decision``: what a command means, as events. Pure.

Nothing here touches a database, a clock or a model; everything a decision needs arrives
in the command (including measured gate inputs). A command that cannot be carried out is
refused with a reason, never ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from kasmina.lifecycle import commands as c
from kasmina.lifecycle import events as ev
from kasmina.lifecycle.evolve import apply
from kasmina.lifecycle.gates import CONTRIBUTION_THRESHOLD, GateInputs, Verdict, evaluate_all
from kasmina.lifecycle.machine import PROGRESSION, gates_for, is_allowed
from kasmina.lifecycle.stages import LIVE_STAGES, Stage
from kasmina.lifecycle.state import DWELL_KEYS, MAX_DWELL, SeedState

ILLEGAL_TRANSITION = "illegal_transition"
GATE_REJECTED = "gate_failed"
INVALID_PARAMETER = "invalid_parameter"
NOT_PAUSED = "not_paused"


class MissingGateInputs(ValueError):
    """A gate fell due but the caller sent no measurements (a programming error)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Events for the seed's own stream, or a refusal for the executor stream."""

    events: tuple[ev.Event, ...] = ()
    refusal: ev.Event | None = None

    @property
    def accepted(self) -> bool:
        return self.refusal is None

    @property
    def reason(self) -> str:
        return "accepted" if self.refusal is None else str(self.refusal.data["reason"])


def _refuse(state: SeedState, reason: str, detail: str) -> Decision:
    return Decision(refusal=ev.refused(reason, seed_id=state.seed_id, detail=detail,
                                       stage=state.stage.name))


def _illegal(state: SeedState, action: str) -> Decision:
    detail = f"cannot {action} a seed in {state.stage.name}"
    if state.stage is Stage.EMBARGOED and state.embargo_until_step is not None:
        detail += f" (embargoed until step {state.embargo_until_step})"
    return _refuse(state, ILLEGAL_TRANSITION, detail)


def _dwell_problem(parameters: Mapping[str, float]) -> str | None:
    for key in DWELL_KEYS.values():
        if key in parameters:
            value = parameters[key]
            if not (math.isfinite(value) and value == int(value) and 1 <= value <= MAX_DWELL):
                return f"{key} must be a whole number of steps in [1, {MAX_DWELL}], got {value!r}"
    threshold = parameters.get(CONTRIBUTION_THRESHOLD)
    if threshold is not None and not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        return f"{CONTRIBUTION_THRESHOLD} must be a relative change in [-1, 1], got {threshold!r}"
    return None


def _fold(state: SeedState, events: list[ev.Event]) -> SeedState:
    for event in events:
        state = apply(state, event)
    return state


def _germinate(state: SeedState, cmd: c.Germinate) -> Decision:
    if state.stage not in (Stage.UNKNOWN, Stage.DORMANT):
        return _illegal(state, "germinate")
    problem = _dwell_problem(cmd.parameters)
    if problem:
        return _refuse(state, INVALID_PARAMETER, problem)
    (verdict,) = evaluate_all(gates_for(Stage.DORMANT, Stage.GERMINATED), cmd.inputs)
    if not verdict.passed:
        return Decision(refusal=ev.refused(GATE_REJECTED, seed_id=state.seed_id, detail=verdict.reason,
                                           gate=verdict.gate.name, inputs=cmd.inputs.to_dict()))
    events: list[ev.Event] = []
    if state.stage is Stage.UNKNOWN:
        events.append(ev.stage_changed(Stage.UNKNOWN, Stage.DORMANT, step=cmd.step, reason="site registered"))
    events.append(
        ev.stage_changed(
            Stage.DORMANT, Stage.GERMINATED, step=cmd.step, reason=verdict.reason,
            verdicts=(verdict,), inputs=cmd.inputs, blueprint_id=cmd.blueprint_id,
            parameters=dict(cmd.parameters), baseline_metric=cmd.baseline_metric, schedule=cmd.schedule,
        )
    )
    events.extend(ev.Event(ev.ANNOTATION_WARNING, dict(w)) for w in cmd.warnings)
    if cmd.blend is not None:
        events.append(ev.Event(ev.BLEND_CONFIG, dict(cmd.blend)))
    return Decision(events=tuple(events))


def _move(state: SeedState, dest: Stage, step: int, inputs: GateInputs | None) -> list[ev.Event]:
    """Events for one gated move, including cull and embargo when a gate fails."""
    gates = gates_for(state.stage, dest)
    verdicts: tuple[Verdict, ...] = ()
    if gates:
        if inputs is None:
            raise MissingGateInputs(f"{state.seed_id}: {', '.join(g.name for g in gates)} due at step {step}")
        verdicts = evaluate_all(gates, inputs)
    failed = next((v for v in verdicts if not v.passed), None)
    if failed is None:
        extra = {}
        if dest is Stage.EMBARGOED:
            extra["embargo_until_step"] = step + state.dwell(Stage.EMBARGOED)
            reason = f"embargoed until step {extra['embargo_until_step']}"
        elif dest is Stage.RESETTING:
            reason = "embargo over"
        else:
            reason = verdicts[-1].reason if verdicts else f"{state.stage.name.lower()} dwell elapsed"
        return [ev.stage_changed(state.stage, dest, step=step, reason=reason, verdicts=verdicts,
                                 inputs=inputs, **extra)]
    if state.stage in LIVE_STAGES:
        culled = ev.stage_changed(state.stage, Stage.CULLED, step=step, reason=failed.reason,
                                  verdicts=verdicts, inputs=inputs)
        return [culled, *_progress(apply(state, culled), step, None)]
    if state.last_gate != {"gate": failed.gate.name, "passed": False, "reason": failed.reason}:
        assert inputs is not None
        return [ev.gate_failed(state.stage, failed, step=step, inputs=inputs)]
    return []


def _progress(state: SeedState, step: int, inputs: GateInputs | None) -> list[ev.Event]:
    """Every move whose dwell has elapsed at ``step`` (at most one gated move)."""
    events: list[ev.Event] = []
    while not state.paused and state.stage in PROGRESSION:
        if state.stage is Stage.EMBARGOED:
            due = state.embargo_until_step is not None and step >= state.embargo_until_step
        else:
            due = state.steps_in_stage(step) >= state.dwell()
        if not due:
            break
        moved = _move(state, PROGRESSION[state.stage], step, inputs)
        if not moved:
            break
        events.extend(moved)
        after = _fold(state, moved)
        if after.stage == state.stage:  # a gate failed where no cull exists; try next step
            break
        state = after
    return events


def due_gates(state: SeedState, step: int) -> tuple:
    """Gates that the next :class:`Tick` at ``step`` will evaluate (what to measure)."""
    if state.paused or state.stage not in PROGRESSION:
        return ()
    if state.stage is Stage.EMBARGOED or state.steps_in_stage(step) < state.dwell():
        return ()
    return gates_for(state.stage, PROGRESSION[state.stage])


def decide(state: SeedState, command: c.Command) -> Decision:
    match command:
        case c.Tick():
            return Decision(events=tuple(_progress(state, command.step, command.inputs)))
        case c.Germinate():
            return _germinate(state, command)
        case c.Advance():
            if state.paused or state.stage not in LIVE_STAGES or PROGRESSION.get(state.stage) != command.to_stage:
                return _illegal(state, f"advance to {command.to_stage.name}")
            return Decision(events=tuple(_move(state, command.to_stage, command.step, command.inputs)))
        case c.Cull():
            if state.stage not in LIVE_STAGES:
                return _illegal(state, "cull")
            culled = ev.stage_changed(state.stage, Stage.CULLED, step=command.step,
                                      reason=f"culled by controller: {command.reason}")
            return Decision(events=(culled, *_progress(apply(state, culled), command.step, None)))
        case c.Terminate():
            if not is_allowed(state.stage, Stage.TERMINATED):
                return _illegal(state, "terminate")
            return Decision(events=(ev.stage_changed(state.stage, Stage.TERMINATED, step=command.step,
                                                     reason="terminated by controller"),))
        case c.Pause():
            if state.stage not in LIVE_STAGES or state.paused:
                return _illegal(state, "pause")
            return Decision(events=(ev.Event(ev.SEED_PAUSED, {"step": command.step}),))
        case c.Resume():
            if not state.paused:
                return _refuse(state, NOT_PAUSED, f"{state.seed_id} is not paused")
            return Decision(events=(ev.Event(ev.SEED_RESUMED, {"step": command.step}),))
        case c.Rollback():
            target: SeedState = command.target
            if state.stage is Stage.TERMINATED:
                return _illegal(state, "roll back")
            data = {"from_stage": state.stage.name, "to_stage": target.stage.name, "step": command.step,
                    "to_position": command.to_position, "reason": f"rolled back to position {command.to_position}",
                    "state": target.to_dict()}
            return Decision(events=(ev.Event(ev.SEED_ROLLED_BACK, data),))
    raise TypeError(f"not a lifecycle command: {command!r}")
