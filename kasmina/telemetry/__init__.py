"""Telemetry (WP-K5): Leyline TelemetryPackets routed by priority to memory or Redis Streams."""

from __future__ import annotations

from kasmina.telemetry.hub import EMERGENCY_STREAM, NORMAL_STREAM, Metric, Telemetry
from kasmina.telemetry.levels import level_of, priority_of
from kasmina.telemetry.sinks import MemorySink, RedisSink, Sink

__all__ = ["EMERGENCY_STREAM", "NORMAL_STREAM", "MemorySink", "Metric", "RedisSink", "Sink", "Telemetry",
           "level_of", "priority_of"]
