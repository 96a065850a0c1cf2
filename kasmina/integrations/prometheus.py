"""Kasmina's telemetry on a Prometheus endpoint (``pip install kasmina[prometheus]``).

:class:`PrometheusSink` is a telemetry sink (:class:`kasmina.telemetry.Sink`): the
executor hands it the packets it would send to Redis, and it keeps the newest value of
every metric point they carry, served by ``prometheus_client``'s HTTP server on
``/metrics`` for a scrape. Nothing is computed at scrape time but the seeds-by-stage
count, from the per-seed stage gauges; nothing touches the training loop but a dict
update under a lock when a packet arrives (metric packets come every ``metrics_every``
steps and at ``close()``). Turn it on with one argument::

    ex = kasmina.Executor(model, sites=[...], telemetry="prometheus://127.0.0.1:9464")

or wrap another sink, so Redis (or memory) still gets every packet:
``Telemetry(PrometheusSink(port=9464, inner=RedisSink(url)))``.

Names: a metric point ``kasmina.seed.alpha`` with attribute ``seed_id`` is the gauge
``kasmina_seed_alpha{seed_id="..."}``; ``kasmina.seed.stage`` also feeds
``kasmina_seeds{stage="TRAINING"}``; packets and events are counted by stream and type
(``kasmina_telemetry_packets_total``, ``kasmina_telemetry_events_total``).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from typing import Any, Iterator
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kasmina import leyline
from kasmina.errors import KasminaError
from kasmina.lifecycle.stages import Stage
from kasmina.telemetry.sinks import Sink

#: The port used when a URL names none (``prometheus://HOST``): the one OpenTelemetry's
#: Prometheus exporter uses by default, so dashboards that scrape it find Kasmina there.
DEFAULT_PORT = 9464
_NOT_A_NAME = re.compile(r"[^a-zA-Z0-9_]")
_STAGE_METRIC = "kasmina.seed.stage"


def metric_name(point_name: str) -> str:
    """``kasmina.seed.alpha`` -> ``kasmina_seed_alpha`` (Prometheus allows ``[a-zA-Z0-9_:]``)."""
    return _NOT_A_NAME.sub("_", point_name)


class PrometheusSink(Collector):
    """A telemetry sink served on ``http://addr:port/metrics``; ``port=0`` picks a free one."""

    def __init__(self, port: int = DEFAULT_PORT, addr: str = "127.0.0.1", *, inner: Sink | None = None,
                 registry: CollectorRegistry | None = None, serve: bool = True) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise KasminaError(f"prometheus port must be an integer 0..65535, got {port!r}")
        self.inner = inner
        self.published: Counter[str] = Counter()
        self._lock = threading.Lock()
        #: (point name, its attributes sorted) -> (unit, newest value)
        self._latest: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, float]] = {}
        self._packets: Counter[str] = Counter()
        self._events: Counter[tuple[str, str]] = Counter()
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._server: Any = None
        self.addr, self.port = addr, port
        if serve:
            try:
                self._server, _thread = start_http_server(port, addr=addr, registry=self.registry)
            except OSError as e:
                raise KasminaError(f"prometheus endpoint: cannot listen on {addr}:{port}: {e.strerror or e}") from e
            self.port = int(self._server.server_port)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PrometheusSink:
        """``prometheus://HOST[:PORT]`` (default 127.0.0.1:9464; port 0: any free port)."""
        parts = urlsplit(url)
        if parts.scheme != "prometheus" or parts.path not in ("", "/") or parts.query:
            raise KasminaError(f"expected prometheus://HOST[:PORT], got {url!r}")
        try:
            port = parts.port
        except ValueError as e:
            raise KasminaError(f"prometheus URL {url!r}: {e}") from None
        return cls(DEFAULT_PORT if port is None else port, parts.hostname or "127.0.0.1", **options)

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{self.port}/metrics"

    # -- the sink ------------------------------------------------------------------------
    def publish(self, stream: str, packet: leyline.TelemetryPacket) -> bool:
        with self._lock:
            for point in packet.metrics:
                key = (point.name, tuple(sorted(point.attributes.items())))
                self._latest[key] = (point.unit, point.value)
            self._packets[stream] += 1
            for event in packet.events:
                self._events[(stream, event.description)] += 1
        self.published[stream] += 1
        return self.inner.publish(stream, packet) if self.inner is not None else True

    def drain(self) -> bool:
        inner = getattr(self.inner, "drain", None)
        return inner() if inner is not None else True

    @property
    def dropped(self) -> int:
        return int(getattr(self.inner, "dropped", 0))

    @property
    def buffered(self) -> int:
        return int(getattr(self.inner, "buffered", 0))

    def close(self) -> None:
        """Stop serving (the values stay readable through :meth:`collect`)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        closer = getattr(self.inner, "close", None)
        if closer is not None:
            closer()

    # -- the collector -------------------------------------------------------------------
    def collect(self) -> Iterator[Any]:
        with self._lock:
            latest = dict(self._latest)
            packets, events = Counter(self._packets), Counter(self._events)
        families: dict[str, GaugeMetricFamily] = {}
        stages: Counter[str] = Counter()
        for (name, attributes), (unit, value) in sorted(latest.items()):
            family = families.get(name)
            if family is None:
                family = families[name] = GaugeMetricFamily(metric_name(name), f"Kasmina {name} ({unit})")
            family.add_sample(metric_name(name), dict(attributes), value)
            if name == _STAGE_METRIC:
                stages[_stage_name(value)] += 1
        yield from families.values()
        seeds = GaugeMetricFamily("kasmina_seeds", "Kasmina sites by their seed's current stage", labels=["stage"])
        for stage in Stage:
            if stage is not Stage.UNKNOWN or stages[stage.name]:
                seeds.add_metric([stage.name], stages[stage.name])
        yield seeds
        sent = CounterMetricFamily("kasmina_telemetry_packets", "Telemetry packets by stream", labels=["stream"])
        for stream, count in sorted(packets.items()):
            sent.add_metric([stream], count)
        yield sent
        typed = CounterMetricFamily("kasmina_telemetry_events", "Telemetry events by stream and type",
                                    labels=["stream", "type"])
        for (stream, kind), count in sorted(events.items()):
            typed.add_metric([stream, kind], count)
        yield typed


def _stage_name(value: float) -> str:
    try:
        return Stage(int(value)).name
    except ValueError:
        return Stage.UNKNOWN.name
