"""Public command builders: envelope, payloads, Esper annotation conventions, validation."""

from __future__ import annotations

import math
import re
import struct
import time
from datetime import datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from kasmina import commands, leyline
from kasmina.security import Keyring, Verifier, sign

CT = leyline.CommandType
OP = leyline.SeedOperation
NOW = 1_700_000_000.0


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _field_numbers(cmd: leyline.AdaptationCommand) -> dict[str, int]:
    return {fd.name: fd.number for fd, _ in cmd.ListFields()}


# -- envelope -----------------------------------------------------------------------------

def test_germinate_fields_and_wire_numbers() -> None:
    before = time.time()
    cmd = commands.germinate("seed-1", "bp-conv", parameters={"lr": 0.1, "steps": 20},
                             annotations={"blend_mode": "CHANNEL"})
    after = time.time()
    assert cmd.version == 1 and commands.COMMAND_VERSION == 1
    assert re.fullmatch(r"[0-9a-f]{32}", cmd.command_id)
    assert cmd.command_type == CT.COMMAND_SEED == 1
    assert cmd.target_seed_id == "seed-1"
    assert cmd.issued_by == "kasmina"
    assert before - 1e-6 <= cmd.issued_at.ToNanoseconds() / 1e9 <= after + 1e-6
    assert cmd.WhichOneof("payload") == "seed_operation"
    assert cmd.seed_operation.operation == OP.SEED_OP_GERMINATE == 1
    assert cmd.seed_operation.blueprint_id == "bp-conv"
    assert dict(cmd.seed_operation.parameters) == {"lr": _f32(0.1), "steps": 20.0}
    assert dict(cmd.annotations) == {"blend_mode": "CHANNEL"}
    assert _field_numbers(cmd) == {"version": 1, "command_id": 2, "command_type": 3,
                                   "target_seed_id": 4, "issued_at": 6, "issued_by": 7,
                                   "seed_operation": 10, "annotations": 20}
    op_fields = {fd.name: fd.number for fd, _ in cmd.seed_operation.ListFields()}
    assert op_fields == {"operation": 1, "blueprint_id": 2, "parameters": 3}


def test_command_ids_are_unique_uuid4_hex() -> None:
    ids = {commands.germinate("s", "bp").command_id for _ in range(2000)}
    assert len(ids) == 2000
    assert all(i[12] == "4" for i in ids)  # uuid version 4


def test_explicit_envelope_values_are_kept() -> None:
    ts = Timestamp(seconds=1_700_000_000, nanos=5)
    cmd = commands.germinate("s", "bp", command_id="cmd-x", issued_by="tamiyo", issued_at=ts)
    assert (cmd.command_id, cmd.issued_by) == ("cmd-x", "tamiyo")
    assert cmd.issued_at == ts and cmd.issued_at is not ts


@pytest.mark.parametrize("issued_at, nanos", [
    (NOW, 1_700_000_000 * 10**9),
    (1_700_000_000, 1_700_000_000 * 10**9),
    (NOW + 0.25, 1_700_000_000 * 10**9 + 250_000_000),
    (datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc), 1_700_000_000 * 10**9),
    (datetime(2023, 11, 14, 23, 13, 20, tzinfo=timezone(timedelta(hours=1))), 1_700_000_000 * 10**9),
])
def test_issued_at_forms(issued_at: object, nanos: int) -> None:
    cmd = commands.pause("s", issued_at=issued_at)  # type: ignore[arg-type]
    assert cmd.issued_at.ToNanoseconds() == nanos


@pytest.mark.parametrize("bad", [datetime(2023, 1, 1), float("nan"), float("inf"), "now", True])
def test_issued_at_rejects_ambiguous_or_invalid(bad: object) -> None:
    with pytest.raises(ValueError):
        commands.pause("s", issued_at=bad)  # type: ignore[arg-type]


# -- seed operations ----------------------------------------------------------------------

@pytest.mark.parametrize("builder, op", [
    (commands.start_training, OP.SEED_OP_START_TRAINING),
    (commands.start_grafting, OP.SEED_OP_START_GRAFTING),
    (commands.stabilize, OP.SEED_OP_STABILIZE),
    (commands.evaluate, OP.SEED_OP_EVALUATE),
    (commands.fine_tune, OP.SEED_OP_FINE_TUNE),
    (commands.fossilize, OP.SEED_OP_FOSSILIZE),
    (commands.cull, OP.SEED_OP_CULL),
    (commands.cancel, OP.SEED_OP_CANCEL),
])
def test_seed_operation_helpers(builder, op: int) -> None:  # type: ignore[no-untyped-def]
    cmd = builder("seed-9", parameters={"x": 1.5}, command_id="c1")
    assert cmd.command_type == CT.COMMAND_SEED and cmd.target_seed_id == "seed-9"
    assert cmd.seed_operation.operation == op
    assert cmd.seed_operation.blueprint_id == ""
    assert dict(cmd.seed_operation.parameters) == {"x": 1.5}
    assert cmd.command_id == "c1"


def test_seed_operation_enum_values_match_leyline() -> None:
    assert [OP.Value(n) for n in ("SEED_OP_GERMINATE", "SEED_OP_START_TRAINING", "SEED_OP_START_GRAFTING",
                                  "SEED_OP_STABILIZE", "SEED_OP_EVALUATE", "SEED_OP_FINE_TUNE",
                                  "SEED_OP_FOSSILIZE", "SEED_OP_CULL", "SEED_OP_CANCEL")] == list(range(1, 10))


@pytest.mark.parametrize("operation", [OP.SEED_OP_EVALUATE, 5, "EVALUATE", "evaluate", "SEED_OP_EVALUATE"])
def test_seed_operation_accepts_value_or_name(operation: object) -> None:
    cmd = commands.seed_operation("s", operation, blueprint_id="bp")  # type: ignore[arg-type]
    assert cmd.seed_operation.operation == OP.SEED_OP_EVALUATE
    assert cmd.seed_operation.blueprint_id == "bp"


@pytest.mark.parametrize("operation", [0, "UNKNOWN", 99, "EXPLODE", True, 1.0, None])
def test_seed_operation_rejects_unknown(operation: object) -> None:
    with pytest.raises(ValueError):
        commands.seed_operation("s", operation)  # type: ignore[arg-type]


def test_cull_reason_annotation() -> None:
    assert commands.cull("s", "gradient explosion").annotations["reason"] == "gradient explosion"
    assert "reason" not in commands.cull("s").annotations
    assert commands.cull("s", "r", annotations={"reason": "r"}).annotations["reason"] == "r"
    with pytest.raises(ValueError, match="conflicts"):
        commands.cull("s", "r", annotations={"reason": "other"})


# -- other command types ------------------------------------------------------------------

def test_pause_and_resume() -> None:
    p = commands.pause("seed-2")
    assert p.command_type == CT.COMMAND_PAUSE == 5 and p.target_seed_id == "seed-2"
    assert "resume" not in p.annotations and p.WhichOneof("payload") is None
    r = commands.resume("seed-2", annotations={"why": "ok"})
    assert r.command_type == CT.COMMAND_PAUSE and r.target_seed_id == "seed-2"
    assert dict(r.annotations) == {"resume": "true", "why": "ok"}
    with pytest.raises(ValueError):
        commands.pause("s", annotations={"resume": "true"})
    with pytest.raises(ValueError):
        commands.resume("s", annotations={"resume": "false"})


def test_rollback_payload() -> None:
    cmd = commands.rollback("seed-3", 42)
    assert cmd.command_type == CT.COMMAND_ROLLBACK == 2 and cmd.target_seed_id == "seed-3"
    assert cmd.WhichOneof("payload") == "rollback_payload"
    assert _field_numbers(cmd)["rollback_payload"] == 13
    assert dict(cmd.rollback_payload) == {"to_position": 42.0}
    assert commands.rollback("s", 0).rollback_payload["to_position"] == 0
    assert commands.rollback("s", 2**53).rollback_payload["to_position"] == 2**53


@pytest.mark.parametrize("pos", [-1, 2**53 + 1, 1.0, True, "3", None])
def test_rollback_rejects_bad_positions(pos: object) -> None:
    with pytest.raises(ValueError):
        commands.rollback("s", pos)  # type: ignore[arg-type]


def test_emergency() -> None:
    cmd = commands.emergency("oom")
    assert cmd.command_type == CT.COMMAND_EMERGENCY == 6 and cmd.target_seed_id == ""
    assert dict(cmd.annotations) == {"reason": "oom"}
    assert dict(commands.emergency().annotations) == {}
    assert commands.emergency(include_teacher=True).annotations["include_teacher"] == "true"


@pytest.mark.parametrize("state, expected", [
    ("OPEN", 2), ("open", 2), ("CIRCUIT_STATE_CLOSED", 1), (3, 3),
    (leyline.CircuitBreakerState.CIRCUIT_STATE_OPEN, 2),
])
def test_circuit_breaker(state: object, expected: int) -> None:
    cmd = commands.circuit_breaker(state, "operator")  # type: ignore[arg-type]
    assert cmd.command_type == CT.COMMAND_CIRCUIT_BREAKER == 4
    assert cmd.WhichOneof("payload") == "circuit_breaker" and _field_numbers(cmd)["circuit_breaker"] == 12
    assert cmd.circuit_breaker.desired_state == expected
    assert cmd.circuit_breaker.rationale == "operator"


@pytest.mark.parametrize("state", [0, "UNKNOWN", "AJAR", 7])
def test_circuit_breaker_rejects_unknown_state(state: object) -> None:
    with pytest.raises(ValueError):
        commands.circuit_breaker(state)  # type: ignore[arg-type]


def test_optimizer() -> None:
    cmd = commands.optimizer("adamw-main", {"lr": 3e-4, "weight_decay": 0.01})
    assert cmd.command_type == CT.COMMAND_OPTIMIZER == 3
    assert cmd.WhichOneof("payload") == "optimizer_adjustment"
    assert _field_numbers(cmd)["optimizer_adjustment"] == 11
    assert cmd.optimizer_adjustment.optimizer_id == "adamw-main"
    assert dict(cmd.optimizer_adjustment.hyperparameters) == {"lr": _f32(3e-4), "weight_decay": _f32(0.01)}
    assert commands.optimizer("o", {}).WhichOneof("payload") == "optimizer_adjustment"
    with pytest.raises(ValueError):
        commands.optimizer("", {"lr": 1.0})
    with pytest.raises(ValueError):
        commands.optimizer("o", {"lr": float("nan")})


def test_structural_pruning() -> None:
    cmd = commands.structural_pruning("seed-4")
    assert cmd.command_type == CT.COMMAND_STRUCTURAL_PRUNING == 7
    assert cmd.target_seed_id == "seed-4" and cmd.WhichOneof("payload") is None


# -- validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("builder", [
    lambda s: commands.germinate(s, "bp"), commands.start_training, commands.cull, commands.cancel,
    commands.pause, commands.resume, lambda s: commands.rollback(s, 1), commands.structural_pruning,
    lambda s: commands.seed_operation(s, "EVALUATE"),
])
@pytest.mark.parametrize("seed_id", ["", "   ", None, 7])
def test_seed_id_required(builder, seed_id: object) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="seed_id"):
        builder(seed_id)


@pytest.mark.parametrize("blueprint", ["", " ", None])
def test_germinate_needs_blueprint(blueprint: object) -> None:
    with pytest.raises(ValueError, match="blueprint_id"):
        commands.germinate("s", blueprint)  # type: ignore[arg-type]


@pytest.mark.parametrize("params", [
    {"lr": float("nan")}, {"lr": float("inf")}, {"lr": -float("inf")}, {"lr": 1e39},
    {"lr": True}, {"lr": "0.1"}, {"": 1.0}, {3: 1.0}, {"lr": None},
])
def test_parameters_must_be_finite_float32(params: dict) -> None:
    with pytest.raises(ValueError, match="parameters"):
        commands.germinate("s", "bp", parameters=params)


@pytest.mark.parametrize("ann", [
    {"signature": "x"}, {"key_id": "k"}, {"": "v"}, {"k": 1}, {"k": None}, {5: "v"},
])
def test_annotations_validated(ann: dict) -> None:
    with pytest.raises(ValueError):
        commands.germinate("s", "bp", annotations=ann)


@pytest.mark.parametrize("kw", [{"command_id": ""}, {"command_id": 5}, {"issued_by": None}])
def test_envelope_validated(kw: dict) -> None:
    with pytest.raises(ValueError):
        commands.pause("s", **kw)


def test_builders_do_not_sign() -> None:
    for cmd in (commands.germinate("s", "bp"), commands.resume("s"), commands.emergency("x")):
        assert "signature" not in cmd.annotations and "key_id" not in cmd.annotations
    assert not hasattr(commands, "sign")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=10), st.floats(allow_nan=False, allow_infinity=False,
                                                                  width=32), max_size=10))
def test_finite_float32_parameters_round_trip(params: dict[str, float]) -> None:
    cmd = commands.germinate("s", "bp", parameters=params)
    got = dict(leyline.AdaptationCommand.FromString(cmd.SerializeToString()).seed_operation.parameters)
    assert got == params and all(math.isfinite(v) for v in got.values())


@settings(max_examples=200, deadline=None)
@given(st.floats())
def test_any_float_parameter_is_accepted_only_if_finite_float32(x: float) -> None:
    if math.isfinite(x) and abs(x) <= 3.4028234663852886e38:
        stored = commands.germinate("s", "bp", parameters={"p": x}).seed_operation.parameters["p"]
        assert math.isfinite(stored)
    else:
        with pytest.raises(ValueError):
            commands.germinate("s", "bp", parameters={"p": x})


# -- integration with signing -------------------------------------------------------------

def test_every_builder_signs_and_verifies() -> None:
    ring = Keyring(b"k")
    v = Verifier(ring)
    built = [
        commands.germinate("s", "bp"), commands.start_training("s"), commands.start_grafting("s"),
        commands.stabilize("s"), commands.evaluate("s"), commands.fine_tune("s"), commands.fossilize("s"),
        commands.cull("s", "r"), commands.cancel("s"), commands.pause("s"), commands.resume("s"),
        commands.rollback("s", 3), commands.emergency("e"), commands.circuit_breaker("OPEN"),
        commands.optimizer("o", {"lr": 0.1}), commands.structural_pruning("s"),
    ]
    for cmd in built:
        assert v.check(sign(cmd, b"k")) is None, cmd.command_type
    assert len({c.command_id for c in built}) == len(built)
