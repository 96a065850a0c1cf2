"""Turning logged events and metrics into Leyline ``TelemetryPacket``s, routed by priority.

Every event the executor appends to its log is also handed to :meth:`Telemetry.record`.
CRITICAL events are published at once, in a packet of their own; everything else waits in
a bounded queue for the next :meth:`Telemetry.flush` (the executor flushes at the end of
each ``handle()`` and ``step()``). A packet's priority is the highest of its events; HIGH
and CRITICAL packets go to the emergency stream (rate-limited), the rest to the normal one.
Nothing here raises into the training loop, and nothing is dropped silently: every drop is
counted and reported as the metric ``kasmina.telemetry.dropped``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from typing import Any, Callable, Iterable, Mapping, Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from kasmina import leyline
from kasmina.telemetry.levels import CRITICAL, INFO, is_emergency, level_of, priority_of
from kasmina.telemetry.sinks import MemorySink, RedisSink, Sink

NORMAL_STREAM = "kasmina.telemetry"
EMERGENCY_STREAM = "kasmina.emergency"
#: A metric to publish: (name, value, unit, attributes).
Metric = tuple[str, float, str, Mapping[str, str]]


class Telemetry:
    """The executor's telemetry: a bounded event queue, a packet builder, a router."""

    def __init__(self, sink: Sink | None = None, *, normal_stream: str = NORMAL_STREAM,
                 emergency_stream: str = EMERGENCY_STREAM, max_queue: int = 1024,
                 emergency_per_minute: int = 120, metrics_every: int = 100,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sink: Sink = sink if sink is not None else MemorySink()
        self.normal_stream, self.emergency_stream = normal_stream, emergency_stream
        self.max_queue, self.emergency_per_minute = max_queue, emergency_per_minute
        self.metrics_every = metrics_every
        self.clock = clock
        self._queue: deque[leyline.TelemetryEvent] = deque()
        self._emergency_times: deque[float] = deque()
        self._ids = itertools.count(1)
        self._run = os.urandom(4).hex()
        self._counters = {"dropped_queue": 0, "rate_limited": 0, "unpublished": 0}

    @classmethod
    def from_spec(cls, spec: Telemetry | str | None) -> Telemetry:
        """``None`` or ``"memory"``: in memory; ``"redis://..."``: Redis Streams;
        ``"prometheus://HOST[:PORT]"``: a ``/metrics`` endpoint (the ``prometheus`` extra); or a Telemetry."""
        if isinstance(spec, Telemetry):
            return spec
        if spec is None or spec in ("memory", "memory://"):
            return cls()
        if isinstance(spec, str) and spec.startswith(("redis://", "rediss://", "unix://")):
            return cls(RedisSink(spec))
        if isinstance(spec, str) and spec.startswith("prometheus://"):
            return cls(_prometheus_sink(spec))
        raise ValueError(f"telemetry must be None, 'memory', a redis:// or prometheus:// URL or a Telemetry, "
                         f"got {spec!r}")

    @property
    def counters(self) -> dict[str, int]:
        published = getattr(self.sink, "published", {})
        out = {"published_normal": int(published.get(self.normal_stream, 0)),
               "published_emergency": int(published.get(self.emergency_stream, 0)), **self._counters}
        out["dropped_buffer"] = int(getattr(self.sink, "dropped", 0))
        out["buffered"] = int(getattr(self.sink, "buffered", 0))
        return out

    @property
    def dropped(self) -> int:
        c = self.counters
        return c["dropped_queue"] + c["dropped_buffer"] + c["rate_limited"]

    # -- events ---------------------------------------------------------------------------
    def record(self, events: Iterable[Any]) -> None:
        """Log events (anything with ``type``, ``data``, ``stream_id``, ``position``)."""
        for event in events:
            item = _event(event)
            if item.level == CRITICAL:
                self._publish([item], [], step=None)
                continue
            if len(self._queue) >= self.max_queue:
                self._counters["dropped_queue"] += 1
                continue
            self._queue.append(item)

    def flush(self, step: int | None = None, metrics: Sequence[Metric] | None = None) -> None:
        """Publish the queued events (and ``metrics``) as one packet, if there is anything."""
        drained = getattr(self.sink, "drain", None)
        if drained is not None:
            drained()  # packets left over from an outage go first, in order
        if not self._queue and not metrics:
            return
        events = list(self._queue)
        self._queue.clear()
        metrics = list(metrics or [])
        if metrics or self.dropped:  # in every metric packet, and in any packet once something was lost
            metrics.append(("kasmina.telemetry.dropped", float(self.dropped), "count", {}))
        self._publish(events, metrics, step=step)

    def metrics_due(self, step: int) -> bool:
        return self.metrics_every > 0 and step % self.metrics_every == 0

    # -- packets --------------------------------------------------------------------------
    def _publish(self, events: list[leyline.TelemetryEvent], metrics: list[Metric], *, step: int | None) -> None:
        level = max((e.level for e in events), default=INFO)
        priority = priority_of(level)
        packet = leyline.TelemetryPacket(
            packet_id=f"kasmina-{self._run}-{next(self._ids)}", source_subsystem="kasmina", level=level,
            events=events,
            metrics=[leyline.MetricPoint(name=n, value=float(v), unit=u, attributes=dict(a)) for n, v, u, a in metrics],
        )
        packet.timestamp.CopyFrom(_now())
        packet.system_health.indicators["priority"] = leyline.MessagePriority.Name(priority)
        packet.system_health.indicators["step"] = "" if step is None else str(step)
        emergency = is_emergency(priority)
        if emergency and not self._admit_emergency():
            self._counters["rate_limited"] += 1
            return
        stream = self.emergency_stream if emergency else self.normal_stream
        try:
            self.sink.publish(stream, packet)  # False: buffered by the sink, published later
        except Exception:  # noqa: BLE001 - a sink must never break training; counted instead
            self._counters["unpublished"] += 1

    def _admit_emergency(self) -> bool:
        now = self.clock()
        while self._emergency_times and now - self._emergency_times[0] >= 60.0:
            self._emergency_times.popleft()
        if len(self._emergency_times) >= self.emergency_per_minute:
            return False
        self._emergency_times.append(now)
        return True

    def close(self) -> None:
        self.flush()
        closer = getattr(self.sink, "close", None)
        if closer is not None:
            closer()


def _event(event: Any) -> leyline.TelemetryEvent:
    data: Mapping[str, Any] = event.data
    attributes = {k: str(v) for k, v in data.items()
                  if isinstance(v, (str, int, float, bool)) and k not in ("inputs", "verdicts", "state")}
    attributes["seed_id"] = str(data.get("seed_id") or getattr(event, "stream_id", ""))
    if getattr(event, "position", None) is not None:
        attributes["position"] = str(event.position)
    return leyline.TelemetryEvent(event_id=f"{event.type}:{getattr(event, 'position', '')}",
                                  description=event.type, level=level_of(event.type, data), attributes=attributes)


def _prometheus_sink(url: str) -> Sink:
    try:
        from kasmina.integrations.prometheus import PrometheusSink
    except ImportError as e:
        raise ValueError(f"telemetry {url!r} needs prometheus_client: pip install 'kasmina[prometheus]' ({e})") from e
    return PrometheusSink.from_url(url)


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp
