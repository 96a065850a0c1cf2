"""The many-runs benchmark (tools/bench_runs.py) runs end to end on a real PostgreSQL log
with tiny sizes: the result has the promised shape, nothing was lost or written twice, and
every run verifies. No timing is asserted."""

from __future__ import annotations

import json
import math

from kasmina.bench import runs as bench
from kasmina.events import migrate, open_store

FIGURES = ("appends_per_s", "p50_ms", "p99_ms", "follower_lag_ms")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def test_runs_benchmark_on_postgres(pg_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    migrate.upgrade(pg_url)
    result = bench.run(runs=(1, 2), pg_url=pg_url, appends=4, interval_s=0.01, workdir=str(tmp_path))
    json.dumps(result)  # JSON-ready
    assert set(result["runs"]) == {"1", "2"}
    for key, entry in result["runs"].items():
        assert "error" not in entry, (key, entry)
        for figure in FIGURES:
            assert _finite(entry[figure]) and entry[figure] > 0, (key, figure, entry[figure])
        assert entry["appends"] == 4 * int(key)
        assert entry["lost"] == entry["duplicated"] == entry["runs_with_gaps"] == 0, entry["problems"]
        assert entry["follower_missed"] == entry["follower_twice"] == 0
        assert entry["verified"] is True and entry["verified_runs"] == int(key)
        assert entry["worker_errors"] == [] and entry["problems"] == []
    assert result["lost"] == result["duplicated"] == 0 and result["all_verified"] is True
    assert result["config"]["postgres"]["synchronous_commit"] and result["config"]["cpus"] >= 1
    assert result["scaling_16_vs_1"] is None and result["goals"] == []  # 16 and 64 not measured
    line = bench.summary_line(result)
    assert line.startswith("bench runs: 1 runs ") and "lost 0 dup 0 verified" in line

    store = open_store(pg_url)
    try:
        infos = {info.name: info for info in store.runs()}
    finally:
        store.close()
    for name in ("bench-1-0", "bench-2-0", "bench-2-1"):
        assert infos[name].status == "finished"
        assert infos[name].last_position >= bench.WARMUP + 4


def test_commands_group_a_seeds_events() -> None:
    history = bench.commands("seed-00")
    first = [next(history) for _ in range(8)]
    assert len(first[0]) == 1  # registration
    assert len(first[1]) == 2  # germination: its stage change and blend config, one transaction
    assert all(len(group) >= 1 for group in first)


def test_percentile() -> None:
    assert bench.percentile([], 50) is None
    assert bench.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert bench.percentile([1.0, 2.0], 99) == 1.99
