"""Several OS processes appending to one log at once (PostgreSQL, and a SQLite file).

Each worker is a fresh ``python -c`` process with its own store. It loops: read a shared
stream's version, wait a moment (widening the race window), then append with that
``expected_version``, so other workers often get there first and the append must raise
``StaleVersion``; every fourth append carries no expected version and must always succeed.
Every worker also sends one command id shared by all: exactly one may write it. Afterwards
the log must be exactly what the successful appends returned: positions 1..N with no gap or
duplicate, contiguous versions per stream, a valid hash chain, and not one row from a stale
attempt.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kasmina.events import EventStore, migrate, open_store
from kasmina.rebuild import verify

pytestmark = pytest.mark.slow

STREAMS = ["seed-a", "seed-b", "seed-c"]
EVENTS_PER_APPEND = 2

WORKER = r"""
import json, random, sys, time
from pathlib import Path
from kasmina.errors import StaleVersion
from kasmina.events import NewEvent, open_store

url, worker, appends, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
streams = json.loads(sys.argv[5])
rng = random.Random(worker)
store = open_store(url)
store.head()                      # connect before the start signal
deadline = time.monotonic() + 60
while not go.exists():            # start together, to overlap as much as possible
    if time.monotonic() > deadline:
        sys.exit("no start signal")
    time.sleep(0.001)
# Every worker sends the same command once: exactly one of them may write it.
shared = store.append("seed-shared", [NewEvent("annotation_warning", {"worker": worker})] * 2,
                      command_id="shared-command")
ok, stale = [], []
for i in range(appends):
    stream = streams[rng.randrange(len(streams))]
    command = f"w{worker}-{i}"
    events = [NewEvent("annotation_warning", {"worker": worker, "i": i, "k": k}) for k in range(2)]
    if i % 4 == 3:
        result = store.append(stream, events, command_id=command)
    else:
        version = store.stream_version(stream)
        time.sleep(rng.random() * 0.002)
        try:
            result = store.append(stream, events, expected_version=version, command_id=command)
        except StaleVersion as e:
            assert e.expected == version and e.actual > version, (e.expected, e.actual)
            stale.append(command)
            continue
        assert result.version == version + 2, (result.version, version)
    assert not result.duplicate
    ok.append({"stream": stream, "command": command, "positions": list(result.positions),
               "versions": [e.version for e in result.events]})
store.close()
print(json.dumps({"ok": ok, "stale": stale,
                  "shared": {"duplicate": shared.duplicate, "positions": list(shared.positions)}}))
"""


def run_workers(url: str, workers: int, appends: int, tmp_path: Path) -> tuple[list[dict], list[str]]:
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(w), str(appends), str(go),
                               json.dumps(STREAMS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(workers)]
    time.sleep(0.5)  # let the interpreters start and connect, then release them together
    go.touch()
    ok: list[dict] = []
    stale: list[str] = []
    shared: list[dict] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"worker failed:\n{err}"
        report = json.loads(out.strip().splitlines()[-1])
        ok += report["ok"]
        stale += report["stale"]
        shared.append(report["shared"])
    # The shared command was written once; every other worker got its positions back.
    assert sum(not r["duplicate"] for r in shared) == 1
    assert len({tuple(r["positions"]) for r in shared}) == 1
    ok.append({"stream": "seed-shared", "command": "shared-command", "positions": shared[0]["positions"],
               "versions": [1, 2]})
    return ok, stale


def check_log(store: EventStore, ok: list[dict], stale: list[str], attempts: int) -> None:
    assert len(ok) + len(stale) == attempts + 1  # + the shared command, written once
    assert len(stale) > 0, "no append ever raced another: the test did not exercise StaleVersion"
    # Every append without an expected version (i % 4 == 3) made it.
    unchecked = [r for r in ok if r["command"] != "shared-command" and int(r["command"].split("-")[1]) % 4 == 3]
    assert len(unchecked) == attempts // 4

    events = list(store.read(raw=True))
    total = len(ok) * EVENTS_PER_APPEND
    assert len(events) == total
    assert [e.position for e in events] == list(range(1, total + 1))
    assert store.head()[0] == total
    claimed = sorted(p for r in ok for p in r["positions"])
    assert claimed == list(range(1, total + 1)), "positions returned to writers are not exactly 1..N"

    by_position = {e.position: e for e in events}
    for r in ok:
        stored = [by_position[p] for p in r["positions"]]
        assert all(e.stream_id == r["stream"] and e.command_id == r["command"] for e in stored)
        assert [e.version for e in stored] == r["versions"]
    for stream in STREAMS + ["seed-shared"]:
        versions = [e.version for e in events if e.stream_id == stream]
        assert versions == list(range(1, len(versions) + 1))
        assert store.stream_version(stream) == len(versions)
    assert len({(e.stream_id, e.version) for e in events}) == total

    # Stale attempts wrote nothing.
    assert not {e.command_id for e in events} & set(stale)
    assert all(store.find_command(c) == () for c in stale[:20])
    assert verify(store) == total


def test_postgres_concurrent_appenders(pg_url: str, tmp_path: Path) -> None:
    workers, appends = 4, 100
    migrate.upgrade(pg_url)
    ok, stale = run_workers(pg_url, workers, appends, tmp_path)
    with open_store(pg_url) as store:
        check_log(store, ok, stale, workers * appends)


def test_sqlite_concurrent_appenders(sqlite_url: str, tmp_path: Path) -> None:
    """BEGIN IMMEDIATE takes the write lock before the head row is read: writers serialize."""
    workers, appends = 3, 60
    migrate.upgrade(sqlite_url)
    ok, stale = run_workers(sqlite_url, workers, appends, tmp_path)
    with open_store(sqlite_url) as store:
        check_log(store, ok, stale, workers * appends)
