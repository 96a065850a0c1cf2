"""The lifecycle: the table, gates, decide and evolve (pure; no database)."""

from __future__ import annotations

import math

import pytest

from kasmina.lifecycle import (
    ALLOWED_NEXT, Gate, GateInputs, SeedState, Stage, commands as c, decide, evaluate, events as ev,
)
from kasmina.lifecycle.decide import MissingGateInputs
from kasmina.lifecycle.evolve import ReplayError, apply

SPEC_TABLE = {
    "UNKNOWN": {"DORMANT"},
    "DORMANT": {"GERMINATED", "TERMINATED"},
    "GERMINATED": {"TRAINING", "CULLED"},
    "TRAINING": {"BLENDING", "CULLED"},
    "BLENDING": {"SHADOWING", "CULLED"},
    "SHADOWING": {"PROBATIONARY", "CULLED"},
    "PROBATIONARY": {"FOSSILIZED", "CULLED"},
    "FOSSILIZED": {"TERMINATED"},
    "CULLED": {"EMBARGOED"},
    "EMBARGOED": {"RESETTING"},
    "RESETTING": {"DORMANT"},
    "TERMINATED": set(),
}

HEALTHY = GateInputs(
    blueprint_known=True, parameters={}, kernel_attached=True, isolation_violations=0,
    seed_loss_finite=True, seed_grad_finite=True, fetch_latency_ms=1.0, output_finite=True,
    output_growth=1.0, interface_ok=True, metric=1.0, baseline_metric=1.0, hooks=0,
    registered_params=0, cache_entries=0,
)


def test_table_is_the_spec_table() -> None:
    assert {s.name: {d.name for d in nxt} for s, nxt in ALLOWED_NEXT.items()} == SPEC_TABLE


def test_stage_and_gate_numbers_match_leyline() -> None:
    from kasmina import leyline

    for stage in Stage:
        assert leyline.SeedLifecycleStage.Value(f"SEED_STAGE_{stage.name}") == stage.value
    for gate in Gate:
        assert leyline.SeedLifecycleGate.Value(f"SEED_GATE_{gate.name}") == gate.value


def _fold(state: SeedState, events: tuple[ev.Event, ...]) -> SeedState:
    for event in events:
        state = apply(state, event)
    return state


def _germinated(params: dict[str, float] | None = None) -> SeedState:
    params = params or {"training_steps": 3, "blend_steps": 2, "shadow_steps": 1, "probation_steps": 1,
                        "embargo_steps": 4}
    d = decide(SeedState("s"), c.Germinate("s", "bp", 0, HEALTHY, parameters=params, baseline_metric=1.0))
    assert d.accepted
    return _fold(SeedState("s"), d.events)


def test_full_lifecycle_over_steps_respects_dwell() -> None:
    state = _germinated()
    seen = [(0, state.stage)]
    for step in range(1, 20):
        d = decide(state, c.Tick("s", step, HEALTHY))
        state = _fold(state, d.events)
        if d.events:
            seen.append((step, state.stage))
    assert seen == [(0, Stage.GERMINATED), (1, Stage.TRAINING), (4, Stage.BLENDING), (6, Stage.SHADOWING),
                    (7, Stage.PROBATIONARY), (8, Stage.FOSSILIZED)]


def test_no_move_before_dwell_and_no_inputs_needed() -> None:
    state = _germinated()
    state = _fold(state, decide(state, c.Tick("s", 1, HEALTHY)).events)
    assert state.stage is Stage.TRAINING
    # dwell of 3 not elapsed: a tick without inputs is fine and changes nothing
    assert decide(state, c.Tick("s", 2, None)).events == ()
    with pytest.raises(MissingGateInputs):
        decide(state, c.Tick("s", 4, None))


def test_failed_gate_culls_then_embargo_is_enforced_then_reset() -> None:
    state = _germinated()
    state = _fold(state, decide(state, c.Tick("s", 1, HEALTHY)).events)  # TRAINING
    bad = GateInputs(**{**HEALTHY.to_dict(), "fetch_latency_ms": 42.0})
    d = decide(state, c.Tick("s", 4, bad))
    state = _fold(state, d.events)
    assert [e.data["to_stage"] for e in d.events] == ["CULLED", "EMBARGOED"]
    assert d.events[0].data["gate"] == "G2_STABILITY" and "over budget" in d.events[0].data["reason"]
    assert state.stage is Stage.EMBARGOED and state.embargo_until_step == 8
    assert state.cull_reason and "42.000 ms" in state.cull_reason
    # re-germination before the embargo ends is refused with the reason
    refused = decide(state, c.Germinate("s", "bp", 5, HEALTHY))
    assert not refused.accepted and refused.reason == "illegal_transition"
    assert "embargoed until step 8" in refused.refusal.data["detail"]
    assert decide(state, c.Tick("s", 7, None)).events == ()
    state = _fold(state, decide(state, c.Tick("s", 8, None)).events)
    assert state.stage is Stage.RESETTING
    dirty = GateInputs(hooks=1, registered_params=0, cache_entries=0)
    d = decide(state, c.Tick("s", 9, dirty))
    assert [e.type for e in d.events] == [ev.GATE_FAILED]
    state = _fold(state, d.events)
    assert decide(state, c.Tick("s", 10, dirty)).events == ()  # same failure is not re-recorded
    state = _fold(state, decide(state, c.Tick("s", 11, HEALTHY)).events)
    assert state.stage is Stage.DORMANT
    again = decide(state, c.Germinate("s", "bp", 12, HEALTHY))
    assert again.accepted
    assert _fold(state, again.events).generation == 2


@pytest.mark.parametrize("command", [
    c.Cull("s", 1), c.Terminate("s", 1), c.Pause("s", 1),
    c.Advance("s", 1, Stage.BLENDING, HEALTHY),
])
def test_illegal_commands_are_refused_not_ignored(command: c.Command) -> None:
    d = decide(SeedState("s", stage=Stage.DORMANT), command)
    if isinstance(command, c.Terminate):
        assert d.accepted  # DORMANT -> TERMINATED is in the table
        return
    assert not d.accepted and d.events == ()
    assert d.refusal.type == ev.COMMAND_REFUSED and d.refusal.data["reason"] == "illegal_transition"


def test_germinate_refusals() -> None:
    unknown_bp = GateInputs(blueprint_known=False, parameters={})
    d = decide(SeedState("s"), c.Germinate("s", "nope", 0, unknown_bp))
    assert d.reason == "gate_failed" and d.refusal.data["gate"] == "G0_SANITY"
    nan = GateInputs(blueprint_known=True, parameters={"lr": math.nan})
    assert "not finite" in decide(SeedState("s"), c.Germinate("s", "bp", 0, nan)).refusal.data["detail"]
    bad_dwell = decide(SeedState("s"), c.Germinate("s", "bp", 0, HEALTHY, parameters={"blend_steps": 0.5}))
    assert bad_dwell.reason == "invalid_parameter"


def test_pause_freezes_dwell() -> None:
    state = _germinated()
    state = _fold(state, decide(state, c.Tick("s", 1, HEALTHY)).events)  # TRAINING at 1, dwell 3
    state = _fold(state, decide(state, c.Pause("s", 2)).events)
    assert decide(state, c.Tick("s", 10, HEALTHY)).events == ()
    state = _fold(state, decide(state, c.Resume("s", 10)).events)
    assert decide(state, c.Tick("s", 11, HEALTHY)).events == ()  # 1 + 8 paused + 3 = 12
    assert _fold(state, decide(state, c.Tick("s", 12, HEALTHY)).events).stage is Stage.BLENDING
    assert decide(state, c.Resume("s", 12)).reason == "not_paused"


def test_controller_fossilize_evaluates_g4_now() -> None:
    state = SeedState("s", stage=Stage.PROBATIONARY, stage_entered_step=0,
                      parameters={"probation_steps": 100}, baseline_metric=1.0)
    regressed = GateInputs(**{**HEALTHY.to_dict(), "metric": 2.0})
    d = decide(state, c.Advance("s", 1, Stage.FOSSILIZED, regressed))
    assert [e.data["to_stage"] for e in d.events] == ["CULLED", "EMBARGOED"]
    assert "regressed" in d.events[0].data["reason"]
    assert _fold(state, decide(state, c.Advance("s", 1, Stage.FOSSILIZED, HEALTHY)).events).stage is Stage.FOSSILIZED


@pytest.mark.parametrize("gate,field,value,needle", [
    (Gate.G1_GRADIENT_HEALTH, "kernel_attached", False, "not attached"),
    (Gate.G1_GRADIENT_HEALTH, "seed_loss_finite", False, "loss not finite"),
    (Gate.G2_STABILITY, "output_finite", False, "not finite"),
    (Gate.G2_STABILITY, "output_growth", 1e6, "exploding"),
    (Gate.G3_INTERFACE, "interface_ok", False, "interface mismatch"),
    (Gate.G4_SYSTEM_IMPACT, "isolation_violations", 2, "isolation"),
    (Gate.G5_RESET, "cache_entries", 1, "cache_entries=1"),
])
def test_each_gate_fails_on_its_input(gate: Gate, field: str, value: object, needle: str) -> None:
    assert evaluate(gate, HEALTHY).passed
    verdict = evaluate(gate, GateInputs(**{**HEALTHY.to_dict(), field: value}))
    assert not verdict.passed and needle in verdict.reason


def test_missing_inputs_fail_closed() -> None:
    verdict = evaluate(Gate.G3_INTERFACE, GateInputs())
    assert not verdict.passed and verdict.reason == "input not measured: interface_ok"


def test_evolve_is_strict() -> None:
    wrong = ev.stage_changed(Stage.TRAINING, Stage.BLENDING, step=1, reason="x")
    with pytest.raises(ReplayError, match="but the seed is DORMANT"):
        apply(SeedState("s", stage=Stage.DORMANT), wrong)
    forbidden = ev.stage_changed(Stage.DORMANT, Stage.FOSSILIZED, step=1, reason="x")
    with pytest.raises(ReplayError, match="not in the lifecycle table"):
        apply(SeedState("s", stage=Stage.DORMANT), forbidden)
    with pytest.raises(ReplayError, match="unknown event type"):
        apply(SeedState("s"), ev.Event("mystery", {}))


def test_state_round_trips_through_dict() -> None:
    state = _germinated()
    assert SeedState.from_dict(state.to_dict()) == state


def test_non_finite_measurements_are_recorded_as_json_and_verify_the_same() -> None:
    import json

    from kasmina.lifecycle.gates import evaluate_all

    bad = GateInputs(**{**HEALTHY.to_dict(), "output_growth": math.nan, "metric": math.inf,
                        "parameters": {"lr": -math.inf}, "interface_detail": "nan"})
    text = json.dumps(bad.to_dict(), allow_nan=False)
    back = GateInputs.from_dict(json.loads(text))
    assert back.interface_detail == "nan" and math.isnan(back.output_growth) and back.metric == math.inf
    for gate in Gate:
        if gate is not Gate.UNKNOWN:
            assert evaluate_all((gate,), back) == evaluate_all((gate,), bad)
