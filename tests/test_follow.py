"""The read-only follower (issue 7): a live replayed view of a log another process writes.

A ``kasmina simulate`` child writes to a REAL PostgreSQL log (and a SQLite file) while the
follower polls it; at the end its view must equal a fresh replay, it must have applied the
events in several batches while the writer ran (live, not once at the end), it must not
have written anything, and it must report its lag.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kasmina.events import migrate, open_store
from kasmina.follow import Follower
from kasmina.rebuild import replay

KASMINA = str(Path(sys.executable).with_name("kasmina"))


def _simulate(url: str, steps: int) -> subprocess.Popen[str]:
    return subprocess.Popen([KASMINA, "simulate", "--db", url, "--seeds", "60", "--steps", str(steps), "--rng", "5",
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_follower_keeps_a_live_view_of_a_log_being_written(backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url" if backend == "postgres" else "sqlite_url")
    migrate.upgrade(url)
    with open_store(url) as store:
        follower = Follower(store, interval_s=0.01)
        writer = _simulate(url, 400)
        batches = 0
        deadline = time.monotonic() + 120
        while writer.poll() is None and time.monotonic() < deadline:
            batches += bool(follower.poll())
            time.sleep(0.01)
        assert writer.wait(timeout=60) == 0, writer.stderr.read() if writer.stderr else ""
        follower.poll()
        head = store.head()[0]
        assert head > 100
        assert follower.lag.position == head and follower.lag.events_behind == 0
        assert follower.lag.applied == head
        assert batches >= 2, "the follower should have applied events while the writer was still running"
        assert follower.digest == replay(store).digest
        assert follower.seeds == replay(store).seeds
        lag = follower.lag.to_dict()
        assert all(math.isfinite(float(lag[k])) and float(lag[k]) >= 0 for k in ("lag_last_ms", "lag_max_ms",
                                                                                 "lag_mean_ms"))
        assert lag["lag_max_ms"] >= lag["lag_mean_ms"]
        assert store.head()[0] == head  # it wrote nothing


def test_follow_cli_applies_the_log_and_reports_lag(sqlite_url: str) -> None:
    done = subprocess.run([KASMINA, "simulate", "--db", sqlite_url, "--seeds", "3", "--steps", "80", "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = subprocess.run([KASMINA, "follow", "--db", sqlite_url, "--from-start", "--idle-timeout", "0.2",
                          "--interval", "0.05", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    summary, moves = lines[-1], lines[:-1]
    with open_store(sqlite_url) as store:
        events = list(store.read())
        expected = [e.position for e in events if e.type in ("stage_changed", "command_refused", "gate_failed")]
        assert [m["position"] for m in moves] == expected
        assert summary["applied"] == len(events) == summary["position"] == summary["head"]
        assert summary["digest"] == replay(store).digest
    assert summary["lag_max_ms"] >= 0


@pytest.mark.parametrize("argv, message", [
    (["--interval", "0"], "expected a finite number > 0"),
    (["--interval", "nan"], "expected a finite number > 0"),
    (["--until-position", "-3"], "expected a number"),
])
def test_follow_cli_refuses_bad_arguments(sqlite_url: str, argv: list[str], message: str) -> None:
    out = subprocess.run([KASMINA, "follow", "--db", sqlite_url, *argv], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and message in out.stderr


def test_interval_must_be_positive(sqlite_url: str) -> None:
    migrate.upgrade(sqlite_url)
    with open_store(sqlite_url) as store:
        for bad in (0, -1, float("inf"), "1"):
            with pytest.raises(ValueError, match="interval must be"):
                Follower(store, interval_s=bad)  # type: ignore[arg-type]
