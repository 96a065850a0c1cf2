"""How loud each logged event is, and where a packet of them goes.

One table from event to level; one mapping from level to priority (INFO and WARNING are
routine and go to the normal stream; ERROR is HIGH and CRITICAL is CRITICAL, and both go
to the emergency stream). A healthy germination is INFO all the way, so it never reaches
the emergency stream (the prototype sent every successful G1 there).
"""

from __future__ import annotations

from typing import Any, Mapping

from kasmina import leyline
from kasmina.lifecycle import events as ev

Level = int  # leyline.TelemetryLevel values
INFO = leyline.TelemetryLevel.Value("TELEMETRY_LEVEL_INFO")
WARNING = leyline.TelemetryLevel.Value("TELEMETRY_LEVEL_WARNING")
ERROR = leyline.TelemetryLevel.Value("TELEMETRY_LEVEL_ERROR")
CRITICAL = leyline.TelemetryLevel.Value("TELEMETRY_LEVEL_CRITICAL")

NORMAL_PRIORITY = leyline.MessagePriority.Value("MESSAGE_PRIORITY_NORMAL")
HIGH_PRIORITY = leyline.MessagePriority.Value("MESSAGE_PRIORITY_HIGH")
CRITICAL_PRIORITY = leyline.MessagePriority.Value("MESSAGE_PRIORITY_CRITICAL")
PRIORITY_OF: Mapping[Level, int] = {INFO: NORMAL_PRIORITY, WARNING: NORMAL_PRIORITY, ERROR: HIGH_PRIORITY,
                                    CRITICAL: CRITICAL_PRIORITY}

#: Refusals that mean someone sent a command they should not have: an operator must look.
SECURITY_REFUSALS = frozenset({
    "invalid_signature", "missing_signature", "nonce_replayed", "stale_command", "issued_in_future",
    "unknown_key", "verifier_unavailable", "oversized_command", "malformed_command", "missing_command_id",
    "missing_timestamp",
})


def level_of(event_type: str, data: Mapping[str, Any]) -> Level:
    if event_type in (ev.ISOLATION_VIOLATION, ev.EMERGENCY):
        return CRITICAL
    if event_type == ev.COMMAND_REFUSED:
        return ERROR if data.get("reason") in SECURITY_REFUSALS else WARNING
    if event_type in (ev.GATE_FAILED, ev.ANNOTATION_WARNING, ev.BREAKER_FORCED, ev.SEED_ROLLED_BACK):
        return WARNING
    if event_type == ev.STAGE_CHANGED and data.get("to_stage") == "CULLED":
        return WARNING
    if event_type == ev.KERNEL_ATTACHED and data.get("fallback_used"):
        return WARNING
    return INFO


def priority_of(level: Level) -> int:
    return PRIORITY_OF.get(level, NORMAL_PRIORITY)


def is_emergency(priority: int) -> bool:
    return priority >= HIGH_PRIORITY
