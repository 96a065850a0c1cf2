"""Tests for the Leyline v1 protobuf contracts (``kasmina.leyline``).

These pin the wire format: field tags, enum numbers and the esper.leyline.v1
package name must match what Esper's controllers put on the wire.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from kasmina import leyline
from kasmina.leyline import (
    AdaptationCommand,
    CommandSeedOperation,
    CommandType,
    HealthStatus,
    MetricPoint,
    SeedLifecycleGate,
    SeedLifecycleStage,
    SeedOperation,
    SystemHealth,
    TelemetryEvent,
    TelemetryLevel,
    TelemetryPacket,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
GEN_SCRIPT = REPO_ROOT / "tools" / "gen_leyline.py"


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _top_level_fields(buf: bytes) -> list[tuple[int, int, bytes | int]]:
    """Decode one message level into ``(field_number, wire_type, value)`` triples."""
    out: list[tuple[int, int, bytes | int]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire_type = key >> 3, key & 0x7
        if wire_type == 0:
            value, pos = _read_varint(buf, pos)
            out.append((field, wire_type, value))
        elif wire_type == 2:
            length, pos = _read_varint(buf, pos)
            out.append((field, wire_type, buf[pos : pos + length]))
            pos += length
        elif wire_type == 1:
            out.append((field, wire_type, buf[pos : pos + 8]))
            pos += 8
        elif wire_type == 5:
            out.append((field, wire_type, buf[pos : pos + 4]))
            pos += 4
        else:  # pragma: no cover - groups are not used by Leyline
            raise AssertionError(f"unexpected wire type {wire_type}")
    return out


def _load_gen_module() -> ModuleType:
    try:
        import grpc_tools.protoc  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on dev extras
        pytest.skip(f"grpcio-tools not installed, cannot regenerate Leyline bindings: {exc}")
    spec = importlib.util.spec_from_file_location("gen_leyline", GEN_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------
# (a) generated bindings are up to date
# ---------------------------------------------------------------------------


def test_generated_bindings_are_not_stale() -> None:
    gen = _load_gen_module()
    ok, message = gen.check()
    assert (ok, message) == (True, "ok"), message


def test_check_cli_reports_ok() -> None:
    _load_gen_module()  # skips when grpc_tools is missing
    result = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok"


def test_check_detects_stale_bindings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _load_gen_module()
    leyline_dir = tmp_path / "kasmina" / "leyline"
    leyline_dir.mkdir(parents=True)
    src_dir = REPO_ROOT / "kasmina" / "leyline"
    for name in ("leyline.proto", "leyline_pb2.py", "leyline_pb2.pyi"):
        shutil.copy(src_dir / name, leyline_dir / name)
    monkeypatch.setattr(gen, "REPO_ROOT", tmp_path)
    assert gen.check() == (True, "ok")

    stub = leyline_dir / "leyline_pb2.pyi"
    stub.write_bytes(stub.read_bytes() + b"# hand edit\n")
    ok, message = gen.check()
    assert not ok
    assert message == "stale: kasmina/leyline/leyline_pb2.pyi (run python tools/gen_leyline.py)"


# ---------------------------------------------------------------------------
# (b) wire compatibility
# ---------------------------------------------------------------------------


def _sample_command() -> AdaptationCommand:
    return AdaptationCommand(
        version=1,
        command_id="cmd-1",
        command_type=CommandType.COMMAND_SEED,
        target_seed_id="s1",
        seed_operation=CommandSeedOperation(
            operation=SeedOperation.SEED_OP_GERMINATE,
            blueprint_id="bp",
        ),
        annotations={"k": "v"},
    )


def test_package_name_is_esper_leyline_v1() -> None:
    assert AdaptationCommand.DESCRIPTOR.full_name == "esper.leyline.v1.AdaptationCommand"
    assert TelemetryPacket.DESCRIPTOR.full_name == "esper.leyline.v1.TelemetryPacket"
    assert SeedLifecycleStage.DESCRIPTOR.full_name == "esper.leyline.v1.SeedLifecycleStage"


def test_adaptation_command_exact_wire_bytes() -> None:
    data = _sample_command().SerializeToString(deterministic=True)
    expected = (
        b"\x08\x01"  # field 1 version, varint = 1
        b"\x12\x05cmd-1"  # field 2 command_id, len-delimited
        b"\x18\x01"  # field 3 command_type = COMMAND_SEED
        b"\x22\x02s1"  # field 4 target_seed_id
        b"\x52\x06"  # field 10 seed_operation, 6 bytes:
        b"\x08\x01"  #   field 1 operation = SEED_OP_GERMINATE
        b"\x12\x02bp"  #   field 2 blueprint_id
        b"\xa2\x01\x06"  # field 20 annotations entry, 6 bytes:
        b"\x0a\x01k"  #   key
        b"\x12\x01v"  #   value
    )
    assert data == expected


def test_adaptation_command_field_tags() -> None:
    data = _sample_command().SerializeToString(deterministic=True)
    fields = _top_level_fields(data)
    assert [(f, wt) for f, wt, _ in fields] == [(1, 0), (2, 2), (3, 0), (4, 2), (10, 2), (20, 2)]
    assert data[2] == 0x12 and data[3:4] == b"\x05"  # command_id tag
    assert b"\x52\x06\x08\x01\x12\x02bp" in data  # seed_operation tag 0x52
    assert data.endswith(b"\xa2\x01\x06\x0a\x01k\x12\x01v")  # annotations tag 0xa2 0x01


def test_adaptation_command_decodes_hand_built_bytes() -> None:
    """Bytes as an Esper controller would emit them decode to the right fields."""
    wire = (
        b"\x12\x04abcd"  # command_id
        b"\x18\x04"  # command_type = COMMAND_CIRCUIT_BREAKER
        b"\x28\xe8\x07"  # execution_deadline_ms = 1000
        b"\x3a\x05tamio"  # issued_by (field 7)
        b"\x62\x05\x08\x02\x12\x01x"  # field 12 circuit_breaker{desired_state=OPEN, rationale="x"}
    )
    cmd = AdaptationCommand.FromString(wire)
    assert cmd.command_id == "abcd"
    assert cmd.command_type == CommandType.COMMAND_CIRCUIT_BREAKER
    assert cmd.execution_deadline_ms == 1000
    assert cmd.issued_by == "tamio"
    assert cmd.WhichOneof("payload") == "circuit_breaker"
    assert cmd.circuit_breaker.desired_state == leyline.CircuitBreakerState.CIRCUIT_STATE_OPEN
    assert cmd.circuit_breaker.rationale == "x"
    assert cmd.SerializeToString(deterministic=True) == wire


def test_payload_oneof_is_exclusive() -> None:
    cmd = _sample_command()
    cmd.rollback_payload.update({"epoch": 3})
    assert cmd.WhichOneof("payload") == "rollback_payload"
    assert not cmd.HasField("seed_operation")
    assert _top_level_fields(cmd.SerializeToString(deterministic=True))[4][0] == 13


FIELD_NUMBERS: dict[str, dict[str, int]] = {
    "CommandSeedOperation": {"operation": 1, "blueprint_id": 2, "parameters": 3},
    "CommandOptimizerAdjustment": {"optimizer_id": 1, "hyperparameters": 2},
    "CommandCircuitBreaker": {"desired_state": 1, "rationale": 2},
    "AdaptationCommand": {
        "version": 1,
        "command_id": 2,
        "command_type": 3,
        "target_seed_id": 4,
        "execution_deadline_ms": 5,
        "issued_at": 6,
        "issued_by": 7,
        "seed_operation": 10,
        "optimizer_adjustment": 11,
        "circuit_breaker": 12,
        "rollback_payload": 13,
        "annotations": 20,
    },
    "SeedState": {
        "seed_id": 1,
        "stage": 2,
        "gradient_norm": 3,
        "learning_rate": 4,
        "layer_depth": 5,
        "metrics": 6,
        "age_epochs": 7,
        "risk_score": 8,
    },
    "MetricPoint": {"name": 1, "value": 2, "unit": 3, "attributes": 4},
    "TelemetryEvent": {"event_id": 1, "description": 2, "level": 3, "attributes": 4},
    "TraceSpan": {
        "span_id": 1,
        "parent_span_id": 2,
        "name": 3,
        "start_time": 4,
        "end_time": 5,
        "attributes": 6,
    },
    "SystemHealth": {"status": 1, "summary": 2, "indicators": 3},
    "TelemetryPacket": {
        "packet_id": 1,
        "timestamp": 2,
        "source_subsystem": 3,
        "level": 4,
        "metrics": 10,
        "events": 20,
        "spans": 30,
        "system_health": 40,
    },
}


@pytest.mark.parametrize("message_name", sorted(FIELD_NUMBERS))
def test_message_field_numbers(message_name: str) -> None:
    descriptor = getattr(leyline, message_name).DESCRIPTOR
    actual = {f.name: f.number for f in descriptor.fields}
    assert actual == FIELD_NUMBERS[message_name]


# ---------------------------------------------------------------------------
# (c) enum wire values
# ---------------------------------------------------------------------------


def test_seed_lifecycle_stage_values() -> None:
    assert dict(SeedLifecycleStage.items()) == {
        "SEED_STAGE_UNKNOWN": 0,
        "SEED_STAGE_DORMANT": 1,
        "SEED_STAGE_GERMINATED": 2,
        "SEED_STAGE_TRAINING": 3,
        "SEED_STAGE_BLENDING": 4,
        "SEED_STAGE_SHADOWING": 5,
        "SEED_STAGE_PROBATIONARY": 6,
        "SEED_STAGE_FOSSILIZED": 7,
        "SEED_STAGE_CULLED": 8,
        "SEED_STAGE_EMBARGOED": 9,
        "SEED_STAGE_RESETTING": 10,
        "SEED_STAGE_TERMINATED": 11,
    }


def test_seed_lifecycle_gate_values() -> None:
    assert dict(SeedLifecycleGate.items()) == {
        "SEED_GATE_UNKNOWN": 0,
        "SEED_GATE_G0_SANITY": 1,
        "SEED_GATE_G1_GRADIENT_HEALTH": 2,
        "SEED_GATE_G2_STABILITY": 3,
        "SEED_GATE_G3_INTERFACE": 4,
        "SEED_GATE_G4_SYSTEM_IMPACT": 5,
        "SEED_GATE_G5_RESET": 6,
    }


def test_other_enum_values() -> None:
    assert dict(leyline.HealthStatus.items()) == {
        "HEALTH_STATUS_UNKNOWN": 0,
        "HEALTH_STATUS_HEALTHY": 1,
        "HEALTH_STATUS_DEGRADED": 2,
        "HEALTH_STATUS_UNHEALTHY": 3,
        "HEALTH_STATUS_CRITICAL": 4,
    }
    assert dict(leyline.CircuitBreakerState.items()) == {
        "CIRCUIT_STATE_UNKNOWN": 0,
        "CIRCUIT_STATE_CLOSED": 1,
        "CIRCUIT_STATE_OPEN": 2,
        "CIRCUIT_STATE_HALF_OPEN": 3,
    }
    assert dict(CommandType.items()) == {
        "COMMAND_UNKNOWN": 0,
        "COMMAND_SEED": 1,
        "COMMAND_ROLLBACK": 2,
        "COMMAND_OPTIMIZER": 3,
        "COMMAND_CIRCUIT_BREAKER": 4,
        "COMMAND_PAUSE": 5,
        "COMMAND_EMERGENCY": 6,
        "COMMAND_STRUCTURAL_PRUNING": 7,
    }
    assert dict(SeedOperation.items()) == {
        "SEED_OP_UNKNOWN": 0,
        "SEED_OP_GERMINATE": 1,
        "SEED_OP_START_TRAINING": 2,
        "SEED_OP_START_GRAFTING": 3,
        "SEED_OP_STABILIZE": 4,
        "SEED_OP_EVALUATE": 5,
        "SEED_OP_FINE_TUNE": 6,
        "SEED_OP_FOSSILIZE": 7,
        "SEED_OP_CULL": 8,
        "SEED_OP_CANCEL": 9,
    }
    assert dict(leyline.MessagePriority.items()) == {
        "MESSAGE_PRIORITY_UNSPECIFIED": 0,
        "MESSAGE_PRIORITY_LOW": 1,
        "MESSAGE_PRIORITY_NORMAL": 2,
        "MESSAGE_PRIORITY_HIGH": 3,
        "MESSAGE_PRIORITY_CRITICAL": 4,
    }
    assert dict(TelemetryLevel.items()) == {
        "TELEMETRY_LEVEL_UNSPECIFIED": 0,
        "TELEMETRY_LEVEL_INFO": 1,
        "TELEMETRY_LEVEL_WARNING": 2,
        "TELEMETRY_LEVEL_ERROR": 3,
        "TELEMETRY_LEVEL_CRITICAL": 4,
    }


# ---------------------------------------------------------------------------
# (d) TelemetryPacket round trip
# ---------------------------------------------------------------------------


def test_telemetry_packet_round_trip() -> None:
    packet = TelemetryPacket(
        packet_id="pkt-7",
        source_subsystem="kasmina",
        level=TelemetryLevel.TELEMETRY_LEVEL_WARNING,
        metrics=[
            MetricPoint(name="seed.loss", value=0.25, unit="nats", attributes={"seed": "s1"}),
            MetricPoint(name="seed.grad_norm", value=1.5),
        ],
        events=[
            TelemetryEvent(
                event_id="ev-1",
                description="gate G1 failed",
                level=TelemetryLevel.TELEMETRY_LEVEL_ERROR,
                attributes={"gate": "G1"},
            )
        ],
        system_health=SystemHealth(status=HealthStatus.HEALTH_STATUS_DEGRADED, summary="slow"),
    )
    packet.timestamp.FromSeconds(1_700_000_000)

    data = packet.SerializeToString(deterministic=True)
    fields = _top_level_fields(data)
    assert [f for f, _, _ in fields] == [1, 2, 3, 4, 10, 10, 20, 40]

    # field 10 metrics -> tag 0x52; field 20 events -> tag 0xa2 0x01; field 40 -> 0xc2 0x02
    first_metric = MetricPoint(
        name="seed.loss", value=0.25, unit="nats", attributes={"seed": "s1"}
    ).SerializeToString(deterministic=True)
    assert b"\x52" + bytes([len(first_metric)]) + first_metric in data
    event_bytes = packet.events[0].SerializeToString(deterministic=True)
    assert b"\xa2\x01" + bytes([len(event_bytes)]) + event_bytes in data
    assert b"\xc2\x02" in data
    # field 2 of MetricPoint is a double (wire type 1): 0.25 little-endian.
    metric_fields = _top_level_fields(fields[4][2])  # type: ignore[arg-type]
    assert (2, 1, b"\x00\x00\x00\x00\x00\x00\xd0\x3f") in metric_fields

    decoded = TelemetryPacket.FromString(data)
    assert decoded == packet
    assert decoded.packet_id == "pkt-7"
    assert decoded.timestamp.seconds == 1_700_000_000
    assert [m.name for m in decoded.metrics] == ["seed.loss", "seed.grad_norm"]
    assert decoded.metrics[0].value == 0.25
    assert dict(decoded.metrics[0].attributes) == {"seed": "s1"}
    assert decoded.events[0].level == TelemetryLevel.TELEMETRY_LEVEL_ERROR
    assert dict(decoded.events[0].attributes) == {"gate": "G1"}
    assert decoded.system_health.status == HealthStatus.HEALTH_STATUS_DEGRADED
    assert decoded.SerializeToString(deterministic=True) == data


def test_public_api_exports() -> None:
    assert sorted(leyline.__all__) == sorted(
        [
            "AdaptationCommand",
            "CommandSeedOperation",
            "CommandOptimizerAdjustment",
            "CommandCircuitBreaker",
            "SeedState",
            "MetricPoint",
            "TelemetryEvent",
            "TraceSpan",
            "SystemHealth",
            "TelemetryPacket",
            "SeedLifecycleStage",
            "SeedLifecycleGate",
            "HealthStatus",
            "CircuitBreakerState",
            "CommandType",
            "SeedOperation",
            "MessagePriority",
            "TelemetryLevel",
        ]
    )
    for name in leyline.__all__:
        assert getattr(leyline, name) is getattr(leyline.leyline_pb2, name)
