"""Leyline v1 protobuf contracts used by Kasmina.

Kasmina speaks the same wire format as Esper's controllers. The protobuf
package is therefore deliberately kept as ``esper.leyline.v1`` (not renamed to
something Kasmina-specific): full message names such as
``esper.leyline.v1.AdaptationCommand`` appear in ``google.protobuf.Any`` type
URLs, descriptor pools and gRPC method paths, so keeping the name means bytes
produced by an Esper controller decode here unchanged, and vice versa.

The bindings in ``leyline_pb2.py``/``leyline_pb2.pyi`` are generated from
``leyline.proto`` and checked in; regenerate them with
``python tools/gen_leyline.py`` (``--check`` verifies they are up to date).
Field numbers and enum values mirror Leyline v1 and must never be renumbered.
"""

from __future__ import annotations

from kasmina.leyline.leyline_pb2 import (
    AdaptationCommand,
    CircuitBreakerState,
    CommandCircuitBreaker,
    CommandOptimizerAdjustment,
    CommandSeedOperation,
    CommandType,
    HealthStatus,
    MessagePriority,
    MetricPoint,
    SeedLifecycleGate,
    SeedLifecycleStage,
    SeedOperation,
    SeedState,
    SystemHealth,
    TelemetryEvent,
    TelemetryLevel,
    TelemetryPacket,
    TraceSpan,
)

__all__ = [
    # Messages
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
    # Enums
    "SeedLifecycleStage",
    "SeedLifecycleGate",
    "HealthStatus",
    "CircuitBreakerState",
    "CommandType",
    "SeedOperation",
    "MessagePriority",
    "TelemetryLevel",
]
