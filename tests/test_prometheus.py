"""The Prometheus sink (kasmina/integrations/prometheus.py), scraped over 127.0.0.1 for real.

Every value the endpoint shows is checked against what the executor itself says at the
moment of the scrape (``ex.seed``): seeds by stage, alpha per seed, isolation violations,
drops, fetch and prewarm latency, packets and events by stream.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

import kasmina
from kasmina import commands
from kasmina.errors import KasminaError
from kasmina.integrations.prometheus import PrometheusSink, metric_name
from kasmina.telemetry import MemorySink, Telemetry

from test_executor import FAST, SECRET, Net, _catalogue, leaky_blueprint, signed, train


def scrape(sink: PrometheusSink) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the endpoint serves, by (name, sorted labels)."""
    with urllib.request.urlopen(sink.url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


#: A representative input per site, so each seed is prewarmed (and its latency measured).
PREWARM = {"features.2": torch.zeros(2, 8, 6, 6), "classifier.1": torch.zeros(2, 64)}


def seed_label(seed_id: str) -> tuple[tuple[str, str], ...]:
    return (("seed_id", seed_id),)


@pytest.fixture
def running(tmp_path: Path) -> Any:
    """An executor publishing through a Prometheus sink (on a free port) that keeps a copy in memory."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    memory = MemorySink()
    sink = PrometheusSink(port=0, inner=memory)
    ex = kasmina.Executor(model, sites=["features.2", "classifier.1"], db=f"sqlite:///{tmp_path / 'run.db'}",
                          secret=SECRET, catalogue=_catalogue(leaky_blueprint()), optimizer=opt,
                          telemetry=Telemetry(sink, metrics_every=1), prewarm=PREWARM.get)
    yield model, opt, ex, sink, memory
    ex.close()


def test_the_endpoint_shows_what_the_executor_says(running: Any) -> None:
    model, opt, ex, sink, memory = running
    assert ex.handle(signed(commands.germinate("features.2", "conv_adapter", parameters=FAST))).accepted
    assert ex.handle(signed(commands.germinate("classifier.1", "leaky", parameters=FAST))).accepted
    train(model, opt, ex, 6)  # features.2 blends; the leaky seed trips the isolation monitor
    got = scrape(sink)
    views = {view.seed_id: view for view in ex.seeds()}
    assert views["features.2"].stage == "BLENDING"
    assert 0 < views["features.2"].alpha < 1
    for seed_id, view in views.items():
        assert got[("kasmina_seed_alpha", seed_label(seed_id))] == pytest.approx(view.alpha)
        assert got[("kasmina_seed_stage", seed_label(seed_id))] == kasmina.Stage[view.stage].value
    by_stage = {labels[0][1]: value for (name, labels), value in got.items() if name == "kasmina_seeds"}
    expected = {stage.name: 0 for stage in kasmina.Stage if stage is not kasmina.Stage.UNKNOWN}
    for view in views.values():
        expected[view.stage] += 1
    assert by_stage == expected
    # the violation found when the leaky seed attached: counted as an event (the gauge counts
    # the live seeds' violations, and G1 culled that seed)
    assert ex.state("classifier.1").stage.name in ("EMBARGOED", "RESETTING")  # culled by G1
    assert ("kasmina_isolation_violations", ()) in got
    # the newest metric packet, value for value
    newest = next(p for _, p in reversed(memory.packets) if p.metrics)
    for point in newest.metrics:
        key = (metric_name(point.name), tuple(sorted(point.attributes.items())))
        assert got[key] == pytest.approx(point.value), key
    prewarmed = [view.prewarm_ms for view in views.values() if view.prewarm_ms is not None]
    assert prewarmed and got[("kasmina_prewarm_latency_ms", ())] == pytest.approx(max(prewarmed))
    assert ("kasmina_kernel_fetch_latency_ms", ()) in got
    assert got[("kasmina_telemetry_dropped", ())] == ex.telemetry.dropped
    # every packet counted once, by stream, and the events in them by type
    for stream, count in memory.published.items():
        assert got[("kasmina_telemetry_packets_total", (("stream", stream),))] == count
    germinated = sum(1 for stream, p in memory.packets for e in p.events
                     if stream == "kasmina.telemetry" and e.description == "kernel_attached")
    assert germinated == 2
    assert got[("kasmina_telemetry_events_total", (("stream", "kasmina.telemetry"), ("type", "kernel_attached")))] == 2
    assert got[("kasmina_telemetry_events_total",
                (("stream", "kasmina.emergency"), ("type", "isolation_violation")))] >= 1


def test_values_follow_the_run(running: Any) -> None:
    model, opt, ex, sink, _ = running
    assert ex.handle(signed(commands.germinate("features.2", "conv_adapter", parameters=FAST))).accepted
    train(model, opt, ex, 1)
    first = scrape(sink)
    assert first[("kasmina_seeds", (("stage", "TRAINING"),))] == 1
    train(model, opt, ex, 12)
    assert ex.seed("features.2").stage == "FOSSILIZED"
    later = scrape(sink)
    assert later[("kasmina_seeds", (("stage", "TRAINING"),))] == 0
    assert later[("kasmina_seeds", (("stage", "FOSSILIZED"),))] == 1
    assert later[("kasmina_seed_alpha", seed_label("features.2"))] == 1.0


def test_one_line_turns_it_on_and_close_stops_serving(tmp_path: Path) -> None:
    ex = kasmina.Executor(Net(), sites=["classifier.1"], db=f"sqlite:///{tmp_path / 'run.db'}", secret=SECRET,
                          telemetry="prometheus://127.0.0.1:0")
    sink = ex.telemetry.sink
    assert isinstance(sink, PrometheusSink) and sink.port > 0
    assert ex.handle(signed(commands.germinate("classifier.1", "bottleneck_mlp", parameters=FAST))).accepted
    ex.close()  # flushes the metrics, then stops the server
    assert sink.published["kasmina.telemetry"] >= 2
    with pytest.raises(OSError):
        urllib.request.urlopen(sink.url, timeout=2)


def test_two_sinks_do_not_share_metrics() -> None:
    a, b = PrometheusSink(port=0), PrometheusSink(port=0)
    try:
        tel = Telemetry(a)
        tel.flush(step=1, metrics=[("kasmina.seeds.active", 3.0, "count", {})])
        assert scrape(a)[("kasmina_seeds_active", ())] == 3.0
        assert ("kasmina_seeds_active", ()) not in scrape(b)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("url, problem", [
    ("prometheus://127.0.0.1:99999", "Port out of range"),
    ("prometheus://127.0.0.1:abc", "could not be cast to integer"),
    ("prometheus://127.0.0.1:0/metrics/x", "expected prometheus://HOST[:PORT]"),
    ("prometheus://127.0.0.1:0?x=1", "expected prometheus://HOST[:PORT]"),
])
def test_bad_urls_are_one_line(url: str, problem: str) -> None:
    with pytest.raises(KasminaError) as caught:
        PrometheusSink.from_url(url)
    assert problem in str(caught.value) and "\n" not in str(caught.value)


def test_a_port_in_use_is_one_line() -> None:
    taken = PrometheusSink(port=0)
    try:
        with pytest.raises(KasminaError, match=f"cannot listen on 127.0.0.1:{taken.port}") as caught:
            PrometheusSink(port=taken.port)
        assert "\n" not in str(caught.value)
    finally:
        taken.close()
