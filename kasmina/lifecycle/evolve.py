"""``evolve``: the only way a seed's state changes, live or in replay.

Pure and strict: an event that does not fit the state it is applied to (a transition from
the wrong stage, or one the table forbids) raises :class:`ReplayError`, which is how
``kasmina verify`` finds a log the current machine cannot reproduce.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from kasmina.lifecycle import events as ev
from kasmina.lifecycle.machine import is_allowed
from kasmina.lifecycle.stages import Stage
from kasmina.lifecycle.state import SeedState


class ReplayError(ValueError):
    """An event cannot be applied to the state replayed so far."""


def _stage_changed(state: SeedState, data: Mapping[str, Any]) -> SeedState:
    source, dest = Stage.parse(data["from_stage"]), Stage.parse(data["to_stage"])
    if source != state.stage:
        raise ReplayError(
            f"{state.seed_id}: transition {source.name}->{dest.name} recorded, "
            f"but the seed is {state.stage.name}"
        )
    if not is_allowed(source, dest):
        raise ReplayError(f"{state.seed_id}: {source.name}->{dest.name} is not in the lifecycle table")
    changes: dict[str, Any] = {"stage": dest, "stage_entered_step": int(data["step"])}
    if data.get("gate"):
        changes["last_gate"] = {"gate": data["gate"], "passed": data["passed"], "reason": data["reason"]}
    if dest is Stage.GERMINATED:
        changes.update(
            generation=state.generation + 1,
            blueprint_id=data["blueprint_id"],
            parameters=dict(data.get("parameters", {})),
            baseline_metric=data.get("baseline_metric"),
            schedule=data.get("schedule", "SIGMOID"),
            blend=None,
            kernel=None,
            cull_reason=None,
            embargo_until_step=None,
        )
    elif dest is Stage.CULLED:
        changes["cull_reason"] = data["reason"]
    elif dest is Stage.EMBARGOED:
        changes["embargo_until_step"] = int(data["embargo_until_step"])
    elif dest is Stage.DORMANT and source is Stage.RESETTING:
        changes.update(blueprint_id=None, parameters={}, blend=None, kernel=None, baseline_metric=None,
                       embargo_until_step=None)
    return replace(state, **changes)


def _resumed(state: SeedState, data: Mapping[str, Any]) -> SeedState:
    if state.paused_at_step is None:
        raise ReplayError(f"{state.seed_id}: resumed but not paused")
    paused_for = int(data["step"]) - state.paused_at_step
    return replace(state, paused_at_step=None, stage_entered_step=state.stage_entered_step + paused_for)


def _rolled_back(state: SeedState, data: Mapping[str, Any]) -> SeedState:
    target = SeedState.from_dict(data["state"])
    return replace(target, seed_id=state.seed_id, stage_entered_step=int(data["step"]),
                   paused_at_step=None)


def apply(state: SeedState, event: ev.Event | ev.Recorded) -> SeedState:
    """Fold one event into a state (position bookkeeping is left to :func:`evolve`)."""
    data = event.data
    match event.type:
        case ev.STAGE_CHANGED:
            return _stage_changed(state, data)
        case ev.GATE_FAILED:
            return replace(state, last_gate={"gate": data["gate"], "passed": False, "reason": data["reason"]})
        case ev.BLEND_CONFIG:
            return replace(state, blend=dict(data))
        case ev.SEED_PAUSED:
            if state.paused:
                raise ReplayError(f"{state.seed_id}: paused twice")
            return replace(state, paused_at_step=int(data["step"]))
        case ev.SEED_RESUMED:
            return _resumed(state, data)
        case ev.SEED_ROLLED_BACK:
            return _rolled_back(state, data)
        case ev.BASELINE_RECORDED:
            return replace(state, baseline_metric=float(data["metric"]))
        case ev.KERNEL_ATTACHED:
            return replace(state, kernel=dict(data))
        case ev.ANNOTATION_WARNING | ev.COMMAND_REFUSED | ev.COMMAND_ACCEPTED | ev.ISOLATION_VIOLATION:
            return state
    raise ReplayError(f"unknown event type {event.type!r}")


def evolve(state: SeedState, event: ev.Recorded) -> SeedState:
    """Apply a stored event and remember where in the log the state now stands."""
    return apply(state, event).with_position(event.version, event.position)
