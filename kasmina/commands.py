"""Public builders for Leyline ``AdaptationCommand``s (unsigned).

Why builders: every command needs the same envelope (a fresh ``command_id`` nonce,
``version=1``, ``issued_at``, ``issued_by``) and the Esper conventions that live in
annotations (``resume``, ``reason``, ``include_teacher``) are easy to get wrong by hand.
Inputs are validated here, at the edge, with one clear ``ValueError`` each, so a bad
command never reaches the wire. Sign the result with :func:`kasmina.security.sign` (or
``Keyring.sign``); signing is deliberately not re-exported here, it has one definition.
"""

from __future__ import annotations

import math
import struct
import time
import uuid
from datetime import datetime
from typing import Callable, Mapping

from google.protobuf.timestamp_pb2 import Timestamp

from kasmina import leyline
from kasmina.security.signing import KEY_ID_ANNOTATION, SIGNATURE_ANNOTATION
from kasmina.security.verify import MAX_COMMAND_ID_CHARS

__all__ = [
    "COMMAND_VERSION", "DEFAULT_ISSUER",
    "germinate", "seed_operation", "start_training", "start_grafting", "stabilize", "evaluate",
    "fine_tune", "fossilize", "cull", "cancel", "pause", "resume", "rollback", "emergency",
    "circuit_breaker", "optimizer", "structural_pruning",
]

COMMAND_VERSION = 1
DEFAULT_ISSUER = "kasmina"
#: Largest finite float32 (``map<string, float>`` values are float32 on the wire).
_FLOAT32_MAX = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]
#: Largest integer a Struct number (a double) holds exactly.
_MAX_EXACT_INT = 2 ** 53
#: Annotation keys the signing layer owns; builders refuse them.
_RESERVED_ANNOTATIONS = frozenset({SIGNATURE_ANNOTATION, KEY_ID_ANNOTATION})


# -- validation ---------------------------------------------------------------------------

def _non_empty(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _string(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _command_id(value: object) -> str:
    """A nonce the verifier will accept and the log can store (see MAX_COMMAND_ID_CHARS)."""
    text = _non_empty("command_id", value)
    if len(text) > MAX_COMMAND_ID_CHARS or "\x00" in text:
        raise ValueError(f"command_id must be at most {MAX_COMMAND_ID_CHARS} characters without NUL, "
                         f"got {len(text)} characters")
    return text


def _floats(name: str, values: Mapping[str, float] | None) -> dict[str, float]:
    """Finite float32-representable numbers keyed by non-empty strings."""
    out: dict[str, float] = {}
    for key, value in (values or {}).items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{name} keys must be non-empty strings, got {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}[{key!r}] must be a number, got {type(value).__name__}")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{name}[{key!r}] must be finite, got {number!r}")
        if abs(number) > _FLOAT32_MAX:
            raise ValueError(f"{name}[{key!r}] = {number!r} does not fit a float32")
        out[key] = number
    return out


def _annotations(values: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (values or {}).items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"annotation keys must be non-empty strings, got {key!r}")
        if key in _RESERVED_ANNOTATIONS:
            raise ValueError(f"annotation {key!r} is set by kasmina.security.sign, not by a builder")
        if not isinstance(value, str):
            raise ValueError(f"annotation {key!r} must be a string, got {type(value).__name__}")
        out[key] = value
    return out


def _timestamp(issued_at: datetime | float | int | Timestamp | None) -> Timestamp:
    ts = Timestamp()
    if issued_at is None:
        ts.FromNanoseconds(time.time_ns())
    elif isinstance(issued_at, Timestamp):
        ts.CopyFrom(issued_at)
    elif isinstance(issued_at, datetime):
        if issued_at.tzinfo is None or issued_at.utcoffset() is None:
            raise ValueError("issued_at must be a timezone-aware datetime (naive time is ambiguous)")
        ts.FromDatetime(issued_at)
    elif isinstance(issued_at, (int, float)) and not isinstance(issued_at, bool):
        if not math.isfinite(issued_at):
            raise ValueError(f"issued_at must be a finite unix time, got {issued_at!r}")
        # Split first: x - floor(x) is exact, whereas x * 1e9 loses ~100 ns at today's epoch.
        seconds = math.floor(issued_at)
        nanos = round((issued_at - seconds) * 1_000_000_000)
        ts.FromNanoseconds(seconds * 1_000_000_000 + nanos)
    else:
        raise ValueError(f"issued_at must be a datetime, unix seconds or Timestamp, got {type(issued_at).__name__}")
    return ts


def _enum(enum: object, prefix: str, value: int | str, what: str) -> int:
    """An enum number from its value or name (``"GERMINATE"`` / ``"SEED_OP_GERMINATE"``);
    the UNKNOWN (0) member is refused because it means "no decision"."""
    try:
        if isinstance(value, str):
            name = value.strip().upper()
            number = int(enum.Value(name if name.startswith(prefix) else prefix + name))  # type: ignore[attr-defined]
        elif isinstance(value, int) and not isinstance(value, bool):
            enum.Name(value)  # type: ignore[attr-defined]
            number = int(value)
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"unknown {what}: {value!r}") from None
    if number == 0:
        raise ValueError(f"{what} must not be UNKNOWN")
    return number


def _envelope(command_type: int, *, target_seed_id: str = "", annotations: Mapping[str, str] | None,
              command_id: str | None, issued_by: str,
              issued_at: datetime | float | int | Timestamp | None) -> leyline.AdaptationCommand:
    cmd = leyline.AdaptationCommand(
        version=COMMAND_VERSION,
        command_id=uuid.uuid4().hex if command_id is None else _command_id(command_id),
        command_type=command_type,  # type: ignore[arg-type]
        target_seed_id=target_seed_id,
        issued_by=_string("issued_by", issued_by),
    )
    cmd.issued_at.CopyFrom(_timestamp(issued_at))
    cmd.annotations.update(_annotations(annotations))
    return cmd


# -- seed operations ----------------------------------------------------------------------

def seed_operation(seed_id: str, operation: int | str, *, blueprint_id: str = "",
                   parameters: Mapping[str, float] | None = None,
                   annotations: Mapping[str, str] | None = None, command_id: str | None = None,
                   issued_by: str = DEFAULT_ISSUER,
                   issued_at: datetime | float | int | Timestamp | None = None) -> leyline.AdaptationCommand:
    """COMMAND_SEED with a ``seed_operation`` payload; ``operation`` is a SeedOperation
    value or name ("GERMINATE", "SEED_OP_CULL", ...)."""
    op = _enum(leyline.SeedOperation, "SEED_OP_", operation, "seed operation")
    _string("blueprint_id", blueprint_id)
    if op == leyline.SeedOperation.SEED_OP_GERMINATE:
        _non_empty("blueprint_id", blueprint_id)
    params = _floats("parameters", parameters)
    cmd = _envelope(leyline.CommandType.COMMAND_SEED, target_seed_id=_non_empty("seed_id", seed_id),
                    annotations=annotations, command_id=command_id, issued_by=issued_by,
                    issued_at=issued_at)
    cmd.seed_operation.operation = op  # type: ignore[assignment]
    cmd.seed_operation.blueprint_id = blueprint_id
    cmd.seed_operation.parameters.update(params)
    return cmd


def germinate(seed_id: str, blueprint_id: str, *, annotations: Mapping[str, str] | None = None,
              parameters: Mapping[str, float] | None = None, command_id: str | None = None,
              issued_by: str = DEFAULT_ISSUER,
              issued_at: datetime | float | int | Timestamp | None = None) -> leyline.AdaptationCommand:
    """GERMINATE ``seed_id`` with ``blueprint_id`` (blend-mode hints go in ``annotations``)."""
    return seed_operation(seed_id, leyline.SeedOperation.SEED_OP_GERMINATE, blueprint_id=blueprint_id,
                          parameters=parameters, annotations=annotations, command_id=command_id,
                          issued_by=issued_by, issued_at=issued_at)


def _operation(operation: int, name: str) -> Callable[..., leyline.AdaptationCommand]:
    """A builder for one seed operation that needs nothing but the seed (one definition, six uses)."""

    def build(seed_id: str, *, parameters: Mapping[str, float] | None = None,
              annotations: Mapping[str, str] | None = None, command_id: str | None = None,
              issued_by: str = DEFAULT_ISSUER,
              issued_at: datetime | float | int | Timestamp | None = None) -> leyline.AdaptationCommand:
        return seed_operation(seed_id, operation, parameters=parameters, annotations=annotations,
                              command_id=command_id, issued_by=issued_by, issued_at=issued_at)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{leyline.SeedOperation.Name(operation)} for ``seed_id``."
    return build


start_training = _operation(leyline.SeedOperation.SEED_OP_START_TRAINING, "start_training")
start_grafting = _operation(leyline.SeedOperation.SEED_OP_START_GRAFTING, "start_grafting")
stabilize = _operation(leyline.SeedOperation.SEED_OP_STABILIZE, "stabilize")
evaluate = _operation(leyline.SeedOperation.SEED_OP_EVALUATE, "evaluate")
fine_tune = _operation(leyline.SeedOperation.SEED_OP_FINE_TUNE, "fine_tune")
fossilize = _operation(leyline.SeedOperation.SEED_OP_FOSSILIZE, "fossilize")


def cull(seed_id: str, reason: str = "", *, parameters: Mapping[str, float] | None = None,
         annotations: Mapping[str, str] | None = None, command_id: str | None = None,
         issued_by: str = DEFAULT_ISSUER,
         issued_at: datetime | float | int | Timestamp | None = None) -> leyline.AdaptationCommand:
    """SEED_OP_CULL for ``seed_id``; a non-empty ``reason`` goes to ``annotations["reason"]``."""
    return seed_operation(seed_id, leyline.SeedOperation.SEED_OP_CULL, parameters=parameters,
                          annotations=_with(annotations, "reason", reason), command_id=command_id,
                          issued_by=issued_by, issued_at=issued_at)


cancel = _operation(leyline.SeedOperation.SEED_OP_CANCEL, "cancel")


def _with(annotations: Mapping[str, str] | None, key: str, value: str | None) -> dict[str, str]:
    """``annotations`` plus ``key=value`` (when value is non-empty); a conflicting caller
    annotation is an error rather than silently overwritten."""
    merged = dict(annotations or {})
    if value:
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string, got {type(value).__name__}")
        if key in merged and merged[key] != value:
            raise ValueError(f"annotation {key!r} conflicts with the {key} argument")
        merged[key] = value
    return merged


# -- other command types ------------------------------------------------------------------

def pause(seed_id: str, *, annotations: Mapping[str, str] | None = None, command_id: str | None = None,
          issued_by: str = DEFAULT_ISSUER,
          issued_at: datetime | float | int | Timestamp | None = None) -> leyline.AdaptationCommand:
    """COMMAND_PAUSE for ``seed_id`` (no ``resume`` annotation)."""
    if annotations and "resume" in annotations:
        raise ValueError("pause() must not carry a 'resume' annotation; use resume()")
    return _envelope(leyline.CommandType.COMMAND_PAUSE, target_seed_id=_non_empty("seed_id", seed_id),
                     annotations=annotations, command_id=command_id, issued_by=issued_by,
                     issued_at=issued_at)


def resume(seed_id: str, *, annotations: Mapping[str, str] | None = None, command_id: str | None = None,
           issued_by: str = DEFAULT_ISSUER,
           issued_at: datetime | float | int | Timestamp | None = None) -> leyline.AdaptationCommand:
    """COMMAND_PAUSE with ``annotations["resume"]="true"`` (Esper's resume convention)."""
    return _envelope(leyline.CommandType.COMMAND_PAUSE, target_seed_id=_non_empty("seed_id", seed_id),
                     annotations=_with(annotations, "resume", "true"), command_id=command_id,
                     issued_by=issued_by, issued_at=issued_at)


def rollback(seed_id: str, to_position: int, *, annotations: Mapping[str, str] | None = None,
             command_id: str | None = None, issued_by: str = DEFAULT_ISSUER,
             issued_at: datetime | float | int | Timestamp | None = None) -> leyline.AdaptationCommand:
    """COMMAND_ROLLBACK restoring ``seed_id`` to its state at log position ``to_position``
    (``rollback_payload = {"to_position": N}``; a Struct number is a double, so N must be
    an integer in [0, 2**53])."""
    if isinstance(to_position, bool) or not isinstance(to_position, int):
        raise ValueError(f"to_position must be an int, got {type(to_position).__name__}")
    if not 0 <= to_position <= _MAX_EXACT_INT:
        raise ValueError(f"to_position must be in [0, 2**53], got {to_position}")
    cmd = _envelope(leyline.CommandType.COMMAND_ROLLBACK, target_seed_id=_non_empty("seed_id", seed_id),
                    annotations=annotations, command_id=command_id, issued_by=issued_by,
                    issued_at=issued_at)
    cmd.rollback_payload.update({"to_position": to_position})
    return cmd


def emergency(reason: str = "", *, include_teacher: bool = False,
              annotations: Mapping[str, str] | None = None, command_id: str | None = None,
              issued_by: str = DEFAULT_ISSUER,
              issued_at: datetime | float | int | Timestamp | None = None) -> leyline.AdaptationCommand:
    """COMMAND_EMERGENCY (global); ``reason`` -> ``annotations["reason"]``,
    ``include_teacher`` -> ``annotations["include_teacher"]="true"``."""
    merged = _with(annotations, "reason", reason)
    if include_teacher:
        merged = _with(merged, "include_teacher", "true")
    return _envelope(leyline.CommandType.COMMAND_EMERGENCY, annotations=merged, command_id=command_id,
                     issued_by=issued_by, issued_at=issued_at)


def circuit_breaker(desired_state: int | str, rationale: str = "", *,
                    annotations: Mapping[str, str] | None = None, command_id: str | None = None,
                    issued_by: str = DEFAULT_ISSUER,
                    issued_at: datetime | float | int | Timestamp | None = None) -> leyline.AdaptationCommand:
    """COMMAND_CIRCUIT_BREAKER forcing the breaker to ``desired_state`` (a
    CircuitBreakerState value or name: "OPEN", "CIRCUIT_STATE_CLOSED", ...)."""
    state = _enum(leyline.CircuitBreakerState, "CIRCUIT_STATE_", desired_state, "circuit breaker state")
    _string("rationale", rationale)
    cmd = _envelope(leyline.CommandType.COMMAND_CIRCUIT_BREAKER, annotations=annotations, command_id=command_id,
                    issued_by=issued_by, issued_at=issued_at)
    cmd.circuit_breaker.desired_state = state  # type: ignore[assignment]
    cmd.circuit_breaker.rationale = rationale
    return cmd


def optimizer(optimizer_id: str, hyperparameters: Mapping[str, float], *,
              annotations: Mapping[str, str] | None = None, command_id: str | None = None,
              issued_by: str = DEFAULT_ISSUER,
              issued_at: datetime | float | int | Timestamp | None = None) -> leyline.AdaptationCommand:
    """COMMAND_OPTIMIZER adjusting ``optimizer_id`` (finite float32 hyperparameters)."""
    _non_empty("optimizer_id", optimizer_id)
    hyper = _floats("hyperparameters", hyperparameters)
    cmd = _envelope(leyline.CommandType.COMMAND_OPTIMIZER, annotations=annotations, command_id=command_id,
                    issued_by=issued_by, issued_at=issued_at)
    cmd.optimizer_adjustment.optimizer_id = optimizer_id
    cmd.optimizer_adjustment.hyperparameters.update(hyper)
    return cmd


def structural_pruning(seed_id: str, *, annotations: Mapping[str, str] | None = None,
                       command_id: str | None = None, issued_by: str = DEFAULT_ISSUER,
                       issued_at: datetime | float | int | Timestamp | None = None) -> leyline.AdaptationCommand:
    """COMMAND_STRUCTURAL_PRUNING for ``seed_id`` (Kasmina refuses it as unsupported)."""
    return _envelope(leyline.CommandType.COMMAND_STRUCTURAL_PRUNING, target_seed_id=_non_empty("seed_id", seed_id),
                     annotations=annotations, command_id=command_id, issued_by=issued_by,
                     issued_at=issued_at)
