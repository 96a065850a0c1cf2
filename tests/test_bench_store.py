"""The store benchmark (tools/bench_store.py) runs end to end at a tiny size and reports every figure.

No timing is asserted: this only proves the benchmark works, its result has the promised
shape (positive, finite numbers) and its CI line keeps its format.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re

import pytest

from kasmina.bench import store as bench

PG_URL = os.environ.get("KASMINA_BENCH_PG") or bench.DEFAULT_PG_URL
RATES = ("append_single_per_s", "append_batch_per_s", "replay_per_s")
KASMINA_ONLY = ("lifecycle_replay_per_s", "long_seed_replay_ms", "full_replay_peak_mb", "full_replay_per_s")


def _postgres_reachable() -> bool:
    try:
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except Exception:
        return False
    return True


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _non_negative(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    backends = ("sqlite", "postgres") if _postgres_reachable() else ("sqlite",)
    return bench.run(backends=backends, events=400, batch=25, single=20, long_seed=450, pg_url=PG_URL,
                     workdir=str(tmp_path_factory.mktemp("bench")))


def test_every_contender_reports_positive_finite_rates(result: dict) -> None:
    expected = list(result["config"]["backends"]) + ["sqlite_raw"]
    if importlib.util.find_spec("eventsourcing") is not None:
        expected.append("eventsourcing_sqlite")
    for name in expected:
        entry = result["store"][name]
        assert "error" not in entry, (name, entry)
        for key in RATES:
            assert _positive(entry[key]), (name, key, entry.get(key))
    for name in result["config"]["backends"]:
        entry = result["store"][name]
        for key in KASMINA_ONLY:
            assert _non_negative(entry[key]), (name, key, entry.get(key))
        assert _positive(entry["long_seed_replay_ms"])
        assert entry["long_seed_events"] == 450
        assert entry["long_seed"]["state_matches"] is True
        assert entry["full_replay"]["events"] == 450


def test_sqlite_contenders_ran_with_the_same_durability(result: dict) -> None:
    for name in ("sqlite", "sqlite_raw", "eventsourcing_sqlite"):
        if name in result["store"]:
            settings = result["store"][name]["settings"]
            assert settings["journal_mode"] == "WAL" and settings["synchronous"] == "FULL", (name, settings)


def test_ratios_goals_and_sizes(result: dict) -> None:
    assert result["ratios"]["sqlite_single_vs_raw"] > 0
    for value in result["ratios"].values():
        assert value is None or _positive(value)
    assert result["goals"], "no goals reported"
    for goal in result["goals"]:
        assert set(goal) >= {"name", "value", "target", "ok"}
        assert isinstance(goal["ok"], bool)
    assert result["long_seed"]["events"] == 450 and _positive(result["long_seed"]["replay_ms"])
    assert result["full_replay"]["events"] == 450 and _non_negative(result["full_replay"]["peak_mb"])
    json.dumps(result)  # JSON-ready


def test_render_and_summary_line(result: dict) -> None:
    table = bench.render(result)
    for name in result["store"]:
        assert name in table
    assert "PASS" in table or "MISS" in table
    line = bench.summary_line(result)
    assert "\n" not in line
    assert re.match(r"^bench store: sqlite single \d+/s \([\d.]+x raw(, [\d.]+x peer)?\) batch \d+/s", line), line
    assert re.search(r"; goals \d+/\d+$", line), line


def test_unreachable_postgres_is_recorded_not_raised(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = bench.run(backends=("postgres",), events=200, batch=20, single=10, long_seed=50,
                    pg_url="postgresql://postgres@127.0.0.1:1/nowhere", workdir=str(tmp_path))
    assert "error" in out["store"]["postgres"]
    assert _positive(out["store"]["sqlite_raw"]["append_single_per_s"])
    assert "postgres error" in bench.summary_line(out)


def test_workload_replays_cleanly() -> None:
    from datetime import datetime, timezone

    from kasmina.events.store import RecordedEvent

    items = bench.workload(600)
    versions: dict[str, int] = {}
    records = []
    for position, (sid, etype, data) in enumerate(items, 1):
        versions[sid] = versions.get(sid, 0) + 1
        records.append(RecordedEvent(position, sid, versions[sid], etype, data, 2, None,
                                     datetime.now(timezone.utc), "", ""))
    replayed = bench._rebuild().fold(records)
    assert replayed.events == 600 and len(replayed.seeds) == bench.SEEDS
