"""The command line: outputs, exit codes, and one-line refusals of bad input."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from kasmina.cli import EXIT_USAGE, EXIT_USER_ERROR, EXIT_VERIFY_FAILED, main
from kasmina.events.schema import SCHEMA_REVISION
from conftest import require_redis


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def simulated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    url = f"sqlite:///{tmp_path / 'sim.db'}"
    code, out, _ = run_cli(capsys, "simulate", "--db", url, "--seeds", "6", "--steps", "250", "--rng", "5", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["events"] > 30 and len(data["final_stages"]) == 6
    return url


def test_history_shows_gates_and_reasons(simulated: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "history", "sim.layer0", "--db", simulated)
    assert code == 0
    assert "G0_SANITY" in out and "DORMANT -> GERMINATED" in out and "pass" in out
    code, out, _ = run_cli(capsys, "history", "sim.layer0", "--db", simulated, "--json")
    events = json.loads(out)["events"]
    assert [e["position"] for e in events] == sorted(e["position"] for e in events)
    assert events[0]["to_stage"] == "DORMANT"


def test_replay_digest_is_stable_and_time_travels(simulated: str, capsys: pytest.CaptureFixture[str]) -> None:
    first = json.loads(run_cli(capsys, "replay", "--db", simulated, "--json")[1])
    second = json.loads(run_cli(capsys, "replay", "--db", simulated, "--json")[1])
    assert first["digest"] == second["digest"] and len(first["seeds"]) == 6
    early = json.loads(run_cli(capsys, "replay", "--db", simulated, "--json", "--to-position", "5")[1])
    assert early["position"] == 5 and early["digest"] != first["digest"]


def test_verify_ok_then_tampered_row_named(simulated: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "verify", "--db", simulated)
    assert code == 0 and out.startswith("ok")
    path = simulated.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:  # behind the triggers' back
        conn.execute("DROP TRIGGER kasmina_events_no_update")
        conn.execute("UPDATE kasmina_events SET payload = json_set(payload, '$.reason', 'forged') WHERE position = 7")
    code, out, _ = run_cli(capsys, "verify", "--db", simulated, "--json")
    assert code == EXIT_VERIFY_FAILED
    assert json.loads(out) == {"run": "default", "ok": False, "position": 7,
                               "problem": "hash does not match the stored event (tampered?)"}


def test_audit_summary_and_read_only_query(simulated: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "audit", "--db", simulated, "--json")
    data = json.loads(out)
    assert code == 0 and len(data["seeds"]) == 6 and data["events"] > 0
    code, out, _ = run_cli(capsys, "audit", "--db", simulated, "--json", "--query",
                           "SELECT seed_id, to_stage FROM seed_transitions WHERE to_stage = 'GERMINATED'")
    assert code == 0 and all(r[1] == "GERMINATED" for r in json.loads(out)["rows"])
    code, _, err = run_cli(capsys, "audit", "--db", simulated, "--query", "DELETE FROM kasmina_events")
    assert code == EXIT_USER_ERROR and err.startswith("error: audit --query runs read-only")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_audit_query_is_passed_as_written_and_its_errors_are_one_line(
        backend: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> None:
    if backend == "sqlite":
        url = request.getfixturevalue("simulated")
    else:
        from kasmina.events import migrate

        url = request.getfixturevalue("pg_url")
        migrate.upgrade(url)
    ok = [("SELECT ':x' AS a, '50%' AS b", [[":x", "50%"]]),
          ("-- a comment first\n/* and a block */ SELECT 1 AS one", [[1]])]
    for query, rows in ok:
        code, out, err = run_cli(capsys, "audit", "--db", url, "--json", "--query", query)
        assert code == 0, err
        assert json.loads(out)["rows"] == rows
    for query, needle in [("SELECT nope FROM seed_transitions", "audit query failed"),
                          ("SELECT 1; DELETE FROM kasmina_events", "audit query failed"),
                          ("SELECT 1; COMMIT; CREATE TABLE pwned (x int)", "audit query failed"),
                          *([("SELECT pg_cancel_backend(pg_backend_pid()) AS c, pg_sleep(1) AS s",
                              "canceling statement")] if backend == "postgres" else []),
                          ("-- sneaky\nDELETE FROM kasmina_events", "read-only queries only")]:
        code, out, err = run_cli(capsys, "audit", "--db", url, "--query", query)
        assert code == EXIT_USER_ERROR and out == "", err
        assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
        assert "unavailable" not in err
    catalog = "sqlite_master WHERE name" if backend == "sqlite" else "information_schema.tables WHERE table_name"
    code, out, _ = run_cli(capsys, "audit", "--db", url, "--json", "--query",
                           f"SELECT COUNT(*) AS n FROM {catalog} = 'pwned'")
    assert json.loads(out)["rows"] == [[0]]  # nothing escaped the read-only transaction


@pytest.mark.parametrize("argv,needle", [
    (["replay", "--db", "not a url"], "malformed database URL"),
    (["verify", "--db", "mysql://u@h/db"], "unsupported database 'mysql'"),
    (["history", "x", "--db", "sqlite://"], "names no file"),
    (["audit", "--db", "postgresql://u@127.0.0.1:99999/x"], "port 99999 out of range"),
])
def test_bad_urls_are_one_line_refusals(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == EXIT_USER_ERROR and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [["history", "x"], ["replay"], ["audit"], ["verify"]])
def test_missing_database_file_is_not_created(command: list[str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.db"
    code, _, err = run_cli(capsys, *command, "--db", f"sqlite:///{path}")
    assert code == EXIT_USER_ERROR and "not found" in err and "kasmina db upgrade" in err
    assert not path.exists()


def test_unknown_seed(simulated: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "history", "no.such.site", "--db", simulated)
    assert code == EXIT_USER_ERROR and "no seed 'no.such.site'" in err and "sim.layer0" in err


def test_schema_too_new_and_too_old(simulated: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = simulated.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_future'")
        before = conn.execute("SELECT COUNT(*) FROM kasmina_events").fetchone()[0]
    for argv in (["replay"], ["simulate", "--steps", "5"], ["db", "upgrade"]):
        code, _, err = run_cli(capsys, *argv, "--db", simulated)
        assert code == EXIT_USER_ERROR and "newer than this kasmina" in err, argv
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM kasmina_events").fetchone()[0] == before
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    code, _, err = run_cli(capsys, "replay", "--db", f"sqlite:///{empty}")
    assert code == EXIT_USER_ERROR and "not a Kasmina log yet" in err


def test_usage_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "replay", "--to-position", "-3")
    assert code == EXIT_USAGE and err.startswith("error: ") and err.count("\n") == 1
    code, _, err = run_cli(capsys, "simulate", "--seeds", "banana")
    assert code == EXIT_USAGE and "banana" in err


def test_db_upgrade_downgrade_cycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    assert json.loads(run_cli(capsys, "db", "upgrade", "--db", url, "--json")[1])["revision"] == SCHEMA_REVISION
    assert json.loads(run_cli(capsys, "db", "downgrade", "base", "--db", url, "--json")[1])["revision"] is None
    assert json.loads(run_cli(capsys, "db", "current", "--db", url, "--json")[1])["up_to_date"] is False
    assert run_cli(capsys, "db", "upgrade", "--db", url)[0] == 0


def test_env_var_is_the_default_database(simulated: str, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KASMINA_DB", simulated)
    code, out, _ = run_cli(capsys, "verify")
    assert code == 0 and out.startswith("ok")


def test_log_commands_do_not_import_torch(simulated: str) -> None:
    script = (
        "import sys\n"
        "from kasmina.cli import main\n"
        f"for argv in (['history','sim.layer1'], ['replay'], ['audit'], ['verify']):\n"
        f"    assert main(argv + ['--db', {simulated!r}, '--json']) == 0\n"
        "bad = [m for m in ('torch', 'alembic') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_postgres_end_to_end(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "db", "upgrade", "--db", pg_url)[0] == 0
    code, out, _ = run_cli(capsys, "simulate", "--db", pg_url, "--seeds", "4", "--steps", "150", "--json")
    assert code == 0
    assert run_cli(capsys, "verify", "--db", pg_url)[0] == 0
    assert "G0_SANITY" in run_cli(capsys, "history", "sim.layer0", "--db", pg_url)[1]
    pg = json.loads(run_cli(capsys, "replay", "--db", pg_url, "--json")[1])
    data = json.loads(run_cli(capsys, "audit", "--db", pg_url, "--json")[1])
    assert len(data["seeds"]) == len(pg["seeds"]) == 4


@pytest.mark.slow
def test_bench_store_json_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "bench", "--store", "--events", "300", "--long-seed", "400",
                           "--backends", "sqlite", "--json")
    assert code == 0
    store = json.loads(out)["store"]
    for contender in ("sqlite", "sqlite_raw"):
        assert {"append_single_per_s", "append_batch_per_s", "replay_per_s"} <= store[contender].keys()
        assert all(store[contender][k] > 0 for k in ("append_single_per_s", "append_batch_per_s", "replay_per_s"))


def test_bench_refuses_a_bad_blend_mode_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "bench", "--blend-mode", "sideways")
    assert code == EXIT_USAGE and err.startswith("error: ") and err.count("\n") == 1


def test_telemetry_tail_prints_packets_from_redis(capsys: pytest.CaptureFixture[str]) -> None:
    import uuid

    import redis

    from kasmina.events import RecordedEvent
    from kasmina.telemetry import RedisSink, Telemetry

    require_redis("redis://127.0.0.1:6379/0")
    tag = f"cli{uuid.uuid4().hex[:8]}"
    tel = Telemetry(RedisSink("redis://127.0.0.1:6379/0", dedupe_prefix=f"{tag}:"),
                    normal_stream=f"{tag}.n", emergency_stream=f"{tag}.e")
    now = __import__("datetime").datetime.now(__import__("datetime").timezone.utc)
    tel.record([RecordedEvent(1, "s", 1, "stage_changed", {"from_stage": "DORMANT", "to_stage": "GERMINATED"},
                              2, None, now, "h", "p")])
    tel.flush(step=3)
    tel.record([RecordedEvent(2, "$executor", 1, "command_refused", {"reason": "invalid_signature"},
                              2, None, now, "h", "p")])
    tel.flush(step=4)
    try:
        code, out, _ = run_cli(capsys, "telemetry", "tail", "--normal-stream", f"{tag}.n", "--emergency-stream",
                               f"{tag}.e", "--from-start", "--count", "2", "--json")
        assert code == 0
        packets = [json.loads(line) for line in out.splitlines()]
        assert sorted((p["stream"], p["priority"]) for p in packets) == [(f"{tag}.e", "HIGH"), (f"{tag}.n", "NORMAL")]
        assert {e["type"] for p in packets for e in p["events"]} == {"stage_changed", "command_refused"}
    finally:
        client = redis.Redis()
        client.delete(f"{tag}.n", f"{tag}.e", *client.keys(f"{tag}:*"))


def test_telemetry_tail_without_redis_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "telemetry", "tail", "--redis", "redis://127.0.0.1:1/0", "--count", "1")
    assert code == EXIT_USER_ERROR and err.startswith("error: cannot reach Redis") and err.count("\n") == 1
