"""Runs: many training jobs in one log (issue 13), on SQLite and real PostgreSQL.

Two runs that use the very same seed ids must stay apart everywhere a run is read:
replay, history, verify, checkpoints and restore, followers. The order across runs
(``read_all``) must hold every event once. The 0003 migration must carry a log written
before runs into the ``default`` run unchanged, and come back down while it holds one run.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kasmina
from kasmina.cli import commands as cli
from kasmina.errors import KasminaError, LogCorrupted, SchemaMismatch
from kasmina.events import DEFAULT_RUN, NewEvent, UnknownRun, migrate, open_store
from kasmina.events.hashing import GENESIS
from kasmina.events.runs import genesis
from kasmina.follow import Follower, RunsFollower
from kasmina.lifecycle.events import EXECUTOR_STREAM
from kasmina.lifecycle.state import STATE_SCHEMA
from kasmina.rebuild import replay, verify
from test_executor import FAST, SECRET, Net, _catalogue, signed, train

FIXTURE = Path(__file__).parent / "data" / "log_0002.db"
#: What `kasmina replay` said of the fixture when the pre-runs code wrote it.
FIXTURE_EVENTS = 38
FIXTURE_DIGEST = "89a0c5bb945e6d3ca3f1ee6d5347c5e79c783f6a3c37cecf4491b36eac2b3313"
FIXTURE_DECISIONS = "69226ac9a42bab34d906382a790c223b23ad4f7711f8b229f7f4b3454fec81e9"
SITES = ["features.2", "classifier.1"]


@pytest.fixture(params=["sqlite", "postgres"])
def log_url(request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    migrate.upgrade(url)
    return url


def _executor(url: str, run: str | None) -> tuple[Net, torch.optim.Optimizer, kasmina.Executor]:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, opt, kasmina.Executor(model, sites=SITES, db=url, secret=SECRET, catalogue=_catalogue(),
                                        optimizer=opt, run=run)


def _grow(url: str, run: str, blueprint: str, steps: int, checkpoints: Path) -> dict:
    model, opt, ex = _executor(url, run)
    with ex:
        assert ex.handle(signed(kasmina.commands.germinate("classifier.1", blueprint, parameters=FAST))).accepted
        train(model, opt, ex, steps)
        ex.checkpoint(checkpoints / run)
        return {k: v.clone() for k, v in model.state_dict().items()}


def test_two_runs_with_the_same_seed_ids_stay_apart(log_url: str, tmp_path: Path) -> None:
    weights = {"a": _grow(log_url, "a", "bottleneck_mlp", 4, tmp_path),
               "b": _grow(log_url, "b", "lora", 9, tmp_path)}

    a, b = open_store(log_url, run="a"), open_store(log_url, run="b")
    try:
        # Each run has its own positions from 1, its own chain, and verifies on its own.
        assert verify(a) > 0 and verify(b) > 0
        first_a, first_b = next(a.read(raw=True)), next(b.read(raw=True))
        assert first_a.position == first_b.position == 1
        assert first_a.prev_hash == genesis("a") != first_b.prev_hash == genesis("b") != GENESIS
        # Replay: the same seed id, two different histories.
        seed_a, seed_b = replay(a).seeds["classifier.1"], replay(b).seeds["classifier.1"]
        assert (seed_a.blueprint_id, seed_b.blueprint_id) == ("bottleneck_mlp", "lora")
        assert seed_a.stage_entered_step != seed_b.stage_entered_step or seed_a.stage != seed_b.stage
        # The default run is untouched by both.
        assert open_store(log_url).head()[0] == 0
        # History of one seed id, per run.
        hist_a = cli.history(log_url, "classifier.1", "a")
        hist_b = cli.history(log_url, "classifier.1", "b")
        assert hist_a["run"] == "a" and hist_b["run"] == "b"
        assert [e["position"] for e in hist_a["events"]] != [e["position"] for e in hist_b["events"]]
        assert {e["event"] for e in hist_a["events"]} >= {"stage_changed"}
        # A follower of run a sees a's events only.
        follower = Follower(a, from_start=True)
        follower.poll()
        assert follower.lag.position == a.head()[0]
        assert follower.digest == replay(a).digest != replay(b).digest
    finally:
        a.close()
        b.close()

    # Checkpoints and restore: a new executor on run b restores b's checkpoint, not a's.
    model, opt, ex = _executor(log_url, "b")
    with ex:
        restored = ex.restore()
        assert restored is not None and Path(restored.checkpoint.path).parent.name == "b"
        for key, value in weights["b"].items():
            assert torch.equal(model.state_dict()[key], value), key
        assert any(not torch.equal(weights["a"][k], v) for k, v in weights["b"].items() if k in weights["a"])


def test_the_order_across_runs_holds_every_event_once(log_url: str) -> None:
    writers = {name: migrate.open_log(log_url, run=name) for name in ("x", "y", "z")}
    try:
        for i in range(5):
            for name, store in writers.items():
                store.append(EXECUTOR_STREAM, [NewEvent("run_note", {"i": i, "run": name})] * (1 + i % 2))
        reader = open_store(log_url)
        feed = list(reader.read_all())
        keys = [item.at for item in feed]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        per_run = {name: [item.event.position for item in feed if item.run == name] for name in writers}
        for name, store in writers.items():
            assert per_run[name] == list(range(1, store.head()[0] + 1)), name
        # Resuming from any cursor gives exactly the rest; the feed head is the last item.
        middle = keys[len(keys) // 2]
        assert [item.at for item in reader.read_all(after=middle)] == keys[len(keys) // 2 + 1:]
        assert reader.feed_head() == keys[-1]
        assert [item.at for item in reader.read_all(after=keys[2], limit=3)] == keys[3:6]
        # A follower of every run starts at the head and picks up what comes next, new runs included.
        follower = RunsFollower(reader)
        assert follower.poll() == []
        writers["y"].append(EXECUTOR_STREAM, [NewEvent("run_note", {"late": True})])
        late = migrate.open_log(log_url, run="late")
        late.append(EXECUTOR_STREAM, [NewEvent("run_note", {"new": True})])
        assert [(item.run, item.event.position) for item in follower.poll()] == [("y", 8), ("late", 1)]
        late.close()
        reader.close()
    finally:
        for store in writers.values():
            store.close()


def test_a_command_bound_to_another_run_is_refused(sqlite_url: str) -> None:
    _, _, ex = _executor(sqlite_url, "mine")
    with ex:
        theirs = signed(kasmina.commands.germinate("classifier.1", "bottleneck_mlp", parameters=FAST,
                                                   annotations={"run": "theirs"}))
        result = ex.handle(theirs)
        assert (result.accepted, result.reason) == (False, "wrong_run")
        assert ex.seed("classifier.1").stage == "UNKNOWN"  # nothing was carried out
        mine = signed(kasmina.commands.germinate("classifier.1", "bottleneck_mlp", parameters=FAST,
                                                 annotations={"run": "mine"}))
        assert ex.handle(mine).accepted
    refusals = cli.audit(sqlite_url, run="mine")["refusals"]
    assert refusals == [{"reason": "wrong_run", "count": 1}]


def test_unknown_and_malformed_run_names_are_one_line_refusals(log_url: str) -> None:
    migrate.open_log(log_url, run="real").close()
    with pytest.raises(UnknownRun, match=r"no run 'nope' in .*; its runs: default, real"):
        open_store(log_url, run="nope")
    for bad in ("", "with space", "-leading", "x" * 129, "semi;colon", "new\nline"):
        with pytest.raises(KasminaError, match="run name must be"):
            open_store(log_url, run=bad)
    with open_store(log_url) as store:
        with pytest.raises(UnknownRun):
            store.for_run("nope")
        assert [r.name for r in store.runs()] == [DEFAULT_RUN, "real"]


def test_tamper_in_one_run_is_reported_with_its_run_and_position(log_url: str) -> None:
    for name in ("good", "bad"):
        with migrate.open_log(log_url, run=name) as store:
            for i in range(4):
                store.append(EXECUTOR_STREAM, [NewEvent("run_note", {"i": i})])
    with open_store(log_url, run="bad") as store:
        with store.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("ALTER TABLE kasmina_events DISABLE TRIGGER kasmina_events_append_only")
            else:
                conn.exec_driver_sql("DROP TRIGGER kasmina_events_no_update")
            conn.exec_driver_sql(f"UPDATE kasmina_events SET payload = '{{\"i\": 9}}' "
                                 f"WHERE run_id = {store.run_id} AND position = 3")
    found = cli.verify(log_url, all_runs=True)
    assert found["ok"] is False
    assert found["runs"]["good"] == {"ok": True, "events": 4}
    assert found["runs"]["bad"]["ok"] is False and found["runs"]["bad"]["position"] == 3
    with open_store(log_url, run="bad") as store, pytest.raises(LogCorrupted, match=r"^run 'bad', position 3: "):
        verify(store)


def test_a_cut_tail_is_caught_by_the_runs_recorded_head(sqlite_url: str) -> None:
    with migrate.open_log(sqlite_url, run="r") as store:
        for i in range(3):
            store.append(EXECUTOR_STREAM, [NewEvent("run_note", {"i": i})])
        run_id = store.run_id
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    conn.execute("DROP TRIGGER kasmina_events_no_delete")
    conn.execute(f"DELETE FROM kasmina_events WHERE run_id = {run_id} AND position = 3")
    conn.commit()
    conn.close()
    with open_store(sqlite_url, run="r") as store, pytest.raises(LogCorrupted, match="recorded head says 3 events"):
        verify(store)


def test_run_status_running_finished_crashed(log_url: str) -> None:
    model, opt, ex = _executor(log_url, "ok")
    with open_store(log_url, run="ok") as store:
        (info,) = [r for r in store.runs() if r.name == "ok"]
        assert info.status == "running" and info.pid == os.getpid()
    ex.close()
    with pytest.raises(RuntimeError):
        model, opt, ex = _executor(log_url, "boom")
        with ex:
            raise RuntimeError("the training loop died")
    statuses = {r["name"]: r["status"] for r in cli.runs(log_url)["runs"]}
    assert statuses == {"default": "finished", "ok": "finished", "boom": "crashed"}


def test_the_run_comes_from_kasmina_run_unless_named(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KASMINA_RUN", "from-env")
    _, _, ex = _executor(sqlite_url, None)
    assert ex.store.run == "from-env"
    ex.close()
    _, _, ex = _executor(sqlite_url, "named")
    assert ex.store.run == "named"
    ex.close()
    # A store handed in keeps its own run; the environment does not move it.
    with open_store(sqlite_url, run="named") as store:
        ex = kasmina.Executor(Net(), sites=SITES, db=store, secret=SECRET, catalogue=_catalogue())
        assert ex.store is store
        ex.close()
    assert kasmina.replay(sqlite_url).seeds == {}  # the from-env run: its executor grew no seed
    with open_store(sqlite_url) as store:
        assert {r.name for r in store.runs()} == {"default", "from-env", "named"}


def test_a_killed_run_reads_as_crashed(sqlite_url: str) -> None:
    code = ("from kasmina.events import migrate; import os; "
            f"s = migrate.open_log({sqlite_url!r}, run='killed'); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with open_store(sqlite_url, run="killed") as store:
        (info,) = [r for r in store.runs() if r.name == "killed"]
    assert info.status == "running" and info.effective_status == "crashed"


def test_kasmina_runs_reports_each_run(log_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from kasmina.cli import main

    for run, rng in (("alpha", 0), ("beta", 3)):
        assert main(["simulate", "--db", log_url, "--run", run, "--seeds", "3", "--steps", "120", "--rng", str(rng),
                     "--quiet", "--json"]) == 0
    capsys.readouterr()
    assert main(["runs", "--db", log_url, "--json"]) == 0
    report = {r["name"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert set(report) == {"default", "alpha", "beta"}
    for name in ("alpha", "beta"):
        row = report[name]
        with open_store(log_url, run=name) as store:
            seeds = replay(store).seeds
            culls = sum(1 for e in store.read() if e.data.get("to_stage") == "CULLED")
            assert row["events"] == store.head()[0]
        stages: dict[str, int] = {}
        for state in seeds.values():
            stages[state.stage.name] = stages.get(state.stage.name, 0) + 1
        assert row["seeds"] == stages and row["culls"] == culls and row["status"] == "finished"
        assert row["steps"] is not None and 0 < row["steps"] <= 120 and row["first"] <= row["last"]
    assert report["default"]["events"] == 0
    assert main(["verify", "--db", log_url, "--all-runs"]) == 0
    capsys.readouterr()
    assert main(["follow", "--db", log_url, "--all-runs", "--from-start", "--interval", "0.05",
                 "--idle-timeout", "0.3", "--json"]) == 0
    *lines, summary = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {line["run"] for line in lines} == {"alpha", "beta"}
    for name in ("alpha", "beta"):
        with open_store(log_url, run=name) as store:
            assert summary["runs"][name]["digest"] == replay(store).digest
            assert summary["runs"][name]["position"] == store.head()[0]
    assert main(["replay", "--db", log_url, "--run", "beta", "--json"]) == 0
    replayed = json.loads(capsys.readouterr().out)
    with open_store(log_url, run="beta") as store:
        assert (replayed["run"], replayed["digest"]) == ("beta", replay(store).digest)


# -- the 0003 migration -------------------------------------------------------------------------

def _fixture_rows(sql: str = "SELECT position, stream_id, version, event_type, schema_version, command_id, "
                                "recorded_at, payload, prev_hash, hash FROM kasmina_events ORDER BY position"
                  ) -> list[tuple]:
    conn = sqlite3.connect(FIXTURE)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _old_log(url: str, tmp_path: Path) -> None:
    """A log at 0002 holding the fixture's events, as the pre-runs code wrote them."""
    if url.startswith("sqlite"):
        shutil.copy(FIXTURE, url.removeprefix("sqlite:///"))
        return
    migrate.upgrade(url, "0002_seed_contributions")
    store = open_store(url, check_schema=False)
    try:
        raw = store.engine.raw_connection()
        raw.cursor().executemany(
            "INSERT INTO kasmina_events (position, stream_id, version, event_type, schema_version, command_id, "
            "recorded_at, payload, prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s, (%s || '+00')::timestamptz, "
            "%s, %s, %s)", _fixture_rows())
        raw.cursor().executemany(
            "INSERT INTO kasmina_snapshots (stream_id, version, position, state_schema, state, created_at) "
            "VALUES (%s, %s, %s, %s, %s, (%s || '+00')::timestamptz)",
            _fixture_rows("SELECT stream_id, version, position, state_schema, state, created_at FROM kasmina_snapshots"))
        raw.commit()
        raw.close()
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_upgrade_keeps_an_old_log_as_the_default_run_and_downgrades_back(
        backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    _old_log(url, tmp_path)
    assert migrate.current(url) == "0002_seed_contributions"
    with pytest.raises(SchemaMismatch, match="older than this kasmina"):
        open_store(url)
    migrate.upgrade(url)
    with open_store(url) as store:
        assert verify(store) == FIXTURE_EVENTS
        assert replay(store).digest == FIXTURE_DIGEST
        assert cli.replay(url)["decisions_digest"] == FIXTURE_DECISIONS
        snapshot = store.latest_snapshot("sim.layer0", state_schema=STATE_SCHEMA)
        assert snapshot is not None and (snapshot.version, snapshot.position) == (22, 38)
        (info,) = store.runs()
        assert (info.name, info.last_position) == (DEFAULT_RUN, FIXTURE_EVENTS)
        # The old log goes on where it stopped, in its one chain.
        store.append(EXECUTOR_STREAM, [NewEvent("run_note", {"after": "upgrade"})])
        assert verify(store) == FIXTURE_EVENTS + 1
        assert cli.audit(url)["seeds"][0]["run"] == DEFAULT_RUN

    # Down while it holds one run: the events come back as they were, one appended since.
    migrate.downgrade(url, "0002_seed_contributions")
    assert migrate.current(url) == "0002_seed_contributions"
    with open_store(url, check_schema=False) as store, store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT position, hash FROM kasmina_events ORDER BY position").all()
        views = conn.exec_driver_sql("SELECT COUNT(*) FROM seed_current_stage").scalar()
    assert [tuple(r) for r in rows[:FIXTURE_EVENTS]] == [(r[0], r[9]) for r in _fixture_rows()]
    assert len(rows) == FIXTURE_EVENTS + 1 and views == 3

    # Up again, then a second run: now down is refused, naming it, and nothing changes.
    migrate.upgrade(url)
    with migrate.open_log(url, run="second") as other:
        other.append(EXECUTOR_STREAM, [NewEvent("run_note", {})])
    with pytest.raises(SchemaMismatch, match=r"refused: the log holds runs other than 'default': 'second' \(1 events\)"):
        migrate.downgrade(url, "0002_seed_contributions")
    assert migrate.current(url) == "0003_runs"
    with open_store(url, run="second") as store:
        assert verify(store) == 1
