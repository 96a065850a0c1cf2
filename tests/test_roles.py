"""Who may write where, enforced by PostgreSQL itself (kasmina/events/roles.py, docs/postgres.md).

Real roles, made for each test with random names (roles are cluster-wide) and dropped
afterwards, also when the test fails. The admin (user ``postgres``, who ran the migration)
grants them; everything else is done while connected AS those roles, so what is proved is
what the database enforces (privileges and row-level security), not what Kasmina's code
chooses to do.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

from kasmina.errors import BadDatabaseURL, KasminaError, PermissionDenied, StoreError
from kasmina.events import NewEvent, Snapshot, UnknownRun, migrate, open_store
from kasmina.events.roles import grant, revoke
from kasmina.events.sql import SQLEventStore, _Statements
from kasmina.lifecycle.events import COMMAND_REFUSED, EXECUTOR_STREAM, RUN_NOTE
from kasmina.rebuild import verify

from conftest import _admin


def as_role(url: str, role: str) -> str:
    return make_url(url).set(username=role).render_as_string(hide_password=False)


def raw(url: str) -> psycopg.Connection[Any]:
    """A plain psycopg connection (autocommit) on ``url``, for hand-written SQL."""
    return psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                           autocommit=True, connect_timeout=5)


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text, repr(text)
    return text


def _drop_roles(url: str | None, names: list[str]) -> None:
    """Drop roles made by a test (and, first, their privileges in the database at ``url``)."""
    with _admin() as admin:
        existing = [r for (r,) in admin.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names,))]
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)", (names,))
    if not existing:
        return
    quoted = psycopg.sql.SQL(", ").join(psycopg.sql.Identifier(r) for r in existing)
    if url is not None:
        with raw(url) as conn:  # privileges live in the database: DROP ROLE refuses while they do
            conn.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(quoted))
    with _admin() as admin:
        admin.execute(psycopg.sql.SQL("DROP ROLE {}").format(quoted))


def _create_role(kind: str, name: str | None = None) -> str:
    role = name or f"kasmina_{kind}_{secrets.token_hex(4)}"
    with _admin() as admin:
        admin.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN").format(psycopg.sql.Identifier(role)))
    return role


@pytest.fixture
def make_role(pg_url: str) -> Iterator[Any]:
    """``make_role(kind)`` creates a LOGIN role ``kasmina_<kind>_<hex>``; all are dropped after."""
    made: list[str] = []

    def make(kind: str, name: str | None = None) -> str:
        made.append(name or f"kasmina_{kind}_{secrets.token_hex(4)}")
        return _create_role(kind, made[-1])

    try:
        yield make
    finally:
        _drop_roles(pg_url, made)


def feed(store: Any, expected: int, timeout_s: float = 20.0) -> list[Any]:
    """``read_all`` once it holds ``expected`` events. The order across runs gives only what
    lies below every open transaction on the server (docs/postgres.md), and other sessions
    (other test runs) may hold one open for a moment: a follower waits, so does this."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = list(store.read_all())
        if len(got) >= expected or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


class World:
    """A migrated log in a schema of its own, with two jobs' runs (each written as its own
    role), a third job, an auditor and a role that was granted nothing. Built once for the
    module: no test changes runs a and b (their writes into them are refused)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.roles: list[str] = []
        self.schema = make_url(url).query["options"].split("=", 1)[1]
        migrate.upgrade(url)
        self.a, self.b, self.c, self.auditor, self.nobody = (
            self._role("job"), self._role("job"), self._role("job"), self._role("audit"), self._role("none"))
        for job in (self.a, self.b, self.c):
            grant(url, job)
        grant(url, self.auditor, auditor=True)
        self.heads = {"run-a": self._write(self.a, "run-a", 3), "run-b": self._write(self.b, "run-b", 2)}
        with raw(url) as conn:
            self.ids = dict(conn.execute("SELECT name, run_id FROM kasmina_runs").fetchall())

    def _role(self, kind: str) -> str:
        self.roles.append(_create_role(kind))
        return self.roles[-1]

    def url_of(self, role: str) -> str:
        return as_role(self.url, role)

    def _write(self, role: str, run: str, notes: int) -> int:
        with migrate.open_log(self.url_of(role), run=run) as store:
            store.append(EXECUTOR_STREAM, [NewEvent(RUN_NOTE, {"note": f"{run} {i}"}) for i in range(notes)])
            last = store.append(EXECUTOR_STREAM, [NewEvent(COMMAND_REFUSED, {
                "seed_id": f"{run}.seed", "reason": "unknown seed", "detail": run})])
            return last.positions[-1]


@pytest.fixture(scope="module")
def world(pg_database: str) -> Iterator[World]:
    """Built in a schema of its own in the session's database (``search_path`` set through
    the URL), which the ``pg_url`` resets of other tests (they drop ``public``) leave alone;
    a database of its own would cost seconds to create and drop."""
    schema = f"kasmina_roles_{secrets.token_hex(4)}"
    with raw(pg_database) as conn:
        conn.execute(psycopg.sql.SQL("CREATE SCHEMA {}").format(psycopg.sql.Identifier(schema)))
    url = make_url(pg_database).update_query_dict({"options": f"-csearch_path={schema}"})
    built = World.__new__(World)
    try:
        built.__init__(url.render_as_string(hide_password=False))  # type: ignore[misc]
        yield built
    finally:
        with raw(pg_database) as conn:
            conn.execute(psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(psycopg.sql.Identifier(schema)))
        _drop_roles(pg_database, getattr(built, "roles", []))


# -- a job ----------------------------------------------------------------------------------

def test_job_writes_and_reads_back_its_own_run(world: World) -> None:
    url = world.url_of(world.c)
    with migrate.open_log(url, run="run-c") as store:
        store.append(EXECUTOR_STREAM, [NewEvent(RUN_NOTE, {"note": "c"})] * 3)
        store.save_snapshot(Snapshot(EXECUTOR_STREAM, 3, 3, 1, {"note": "c"}))
    with open_store(url, run="run-c") as store:
        assert store.head()[0] == 3 and verify(store) == 3
        assert store.latest_snapshot(EXECUTOR_STREAM, state_schema=1) is not None
        (info,) = store.runs()
        assert (info.name, info.owner, info.status) == ("run-c", world.c, "running")
        store.mark_run("finished", config={"lr": 0.1})
        assert (store.runs()[0].status, store.runs()[0].config) == ("finished", {"lr": 0.1})
        assert [e.event.position for e in feed(store, 3)] == [1, 2, 3]
    with migrate.open_log(url, run="run-c") as again:  # reopening its own run, and a second one
        again.append(EXECUTOR_STREAM, [NewEvent(RUN_NOTE, {"note": "resumed"})])
        assert verify(again) == 4
        with again.for_run("run-c2", create=True) as second:
            second.append(EXECUTOR_STREAM, [NewEvent(RUN_NOTE, {"note": "second"})])
            assert verify(second) == 1
        assert [r.name for r in again.runs()] == ["run-c", "run-c2"]


def test_job_cannot_see_another_jobs_run(world: World) -> None:
    url = world.url_of(world.a)
    with pytest.raises(UnknownRun) as caught:
        open_store(url, run="run-b")
    assert "run-b" in one_line(caught.value) and "run-a" in str(caught.value)  # lists only what it sees
    with pytest.raises(UnknownRun):  # nor the admin's default run
        open_store(url, run="default")
    with pytest.raises(UnknownRun, match="belongs to another database role"):  # nor take over B's name
        migrate.open_log(url, run="run-b")
    with open_store(url, run="run-a") as store:
        assert [(e.run, e.event.position) for e in feed(store, 4)] == [("run-a", p) for p in range(1, 5)]
    with raw(url) as conn:
        assert conn.execute("SELECT count(*) FROM kasmina_events").fetchone() == (4,)
        assert conn.execute("SELECT count(*) FROM kasmina_snapshots WHERE run_id <> %s",
                            (world.ids["run-a"],)).fetchone() == (0,)
        assert conn.execute("SELECT name FROM kasmina_runs").fetchall() == [("run-a",)]
        assert conn.execute("SELECT DISTINCT run FROM command_refusals").fetchall() == [("run-a",)]
        assert conn.execute("SELECT DISTINCT run FROM seed_transitions").fetchall() == []
        # An UPDATE of B's row finds nothing to update: the row is not there for A.
        assert conn.execute("UPDATE kasmina_runs SET status = 'crashed' WHERE run_id = %s",
                            (world.ids["run-b"],)).rowcount == 0
    with raw(world.url) as admin:
        assert admin.execute("SELECT status FROM kasmina_runs WHERE name = 'run-b'").fetchone() == ("running",)


def test_job_cannot_append_into_another_jobs_run(world: World) -> None:
    url, b_id = world.url_of(world.a), world.ids["run-b"]
    row = (b_id, 99, EXECUTOR_STREAM, 99, RUN_NOTE, 1, None, '{"note": "forged"}', "0" * 64, "f" * 64)
    insert = ("INSERT INTO kasmina_events (run_id, position, stream_id, version, event_type, schema_version, "
              "command_id, recorded_at, payload, prev_hash, hash) "
              "VALUES (%s, %s, %s, %s, %s, %s, %s, now(), %s, %s, %s)")
    with raw(url) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security policy"):
            conn.execute(insert, row)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security policy"):
            conn.execute("INSERT INTO kasmina_snapshots (run_id, stream_id, version, position, state_schema, "
                         "state, created_at) VALUES (%s, 'x', 1, 1, 1, '{}', now())", (b_id,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):  # owner: no privilege
            conn.execute("INSERT INTO kasmina_runs (name, created_at, updated_at, status, owner, last_position, "
                         "last_hash) VALUES ('planted', now(), now(), 'running', %s, 0, '')", (world.b,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            conn.execute("UPDATE kasmina_runs SET owner = %s WHERE name = 'run-a'", (world.b,))
        # Nor pick what the database assigns: the order across runs, a run's id.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            conn.execute(insert.replace("hash) ", "hash, tx) ").replace("%s)", "%s, 0)"),
                         (world.ids["run-a"], *row[1:]))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            conn.execute("INSERT INTO kasmina_runs (run_id, name, created_at, updated_at, status, last_position, "
                         "last_hash) VALUES (1000, 'chosen-id', now(), now(), 'running', 0, '')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            conn.execute("INSERT INTO kasmina_auditors VALUES (current_user)")
    # A store handle aimed at B's run id by hand: the database still refuses, in one line.
    with open_store(url, run="run-a") as store:
        assert isinstance(store, SQLEventStore)
        store._bound = _Statements("postgresql", b_id)
        with pytest.raises(PermissionDenied, match="row-level security") as caught:
            store.append(EXECUTOR_STREAM, [NewEvent(RUN_NOTE, {"note": "forged"})])
        one_line(caught.value)
    with open_store(world.url_of(world.b), run="run-b") as b:
        assert verify(b) == world.heads["run-b"]


def test_job_cannot_change_or_delete_events(world: World) -> None:
    with raw(world.url_of(world.a)) as conn:
        for statement in ("UPDATE kasmina_events SET event_type = 'edited'", "DELETE FROM kasmina_events",
                          "TRUNCATE kasmina_events", "DELETE FROM kasmina_runs", "DELETE FROM kasmina_snapshots"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute(statement)
    with raw(world.url) as admin:  # even the admin, who holds every privilege, meets the trigger
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            admin.execute("UPDATE kasmina_events SET event_type = 'edited'")


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """``kasmina ARGV --json``: exit 0 and the JSON it printed (the last object for ``follow``)."""
    import json

    from kasmina.cli import main

    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    decoder, at, found = json.JSONDecoder(), 0, None
    while at < len(out.rstrip()):  # ``follow`` prints a line per event before its summary
        found, end = decoder.raw_decode(out, at)
        at = end + (len(out[end:]) - len(out[end:].lstrip()))
    return found


def test_job_runs_the_whole_log_commands_over_its_own_runs(world: World,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Found in review: ``runs``, ``audit`` and the ``--all-runs`` commands bound the
    ``default`` run first, which a job's role cannot see, and refused it every time."""
    url = world.url_of(world.a)
    assert [r["name"] for r in _cli(capsys, "runs", "--db", url)["runs"]] == ["run-a"]
    audit = _cli(capsys, "audit", "--db", url)
    assert (audit["runs"], audit["events"], audit["refusals"]) == (
        1, world.heads["run-a"], [{"reason": "unknown seed", "count": 1}])
    verified = _cli(capsys, "verify", "--db", url, "--all-runs")
    assert verified == {"ok": True, "runs": {"run-a": {"ok": True, "events": world.heads["run-a"]}}}
    assert list(_cli(capsys, "replay", "--db", url, "--all-runs")["runs"]) == ["run-a"]
    followed = _cli(capsys, "follow", "--db", url, "--all-runs", "--from-start", "--idle-timeout", "0.5")
    assert {run: r["position"] for run, r in followed["runs"].items()} == {"run-a": world.heads["run-a"]}


# -- an auditor -----------------------------------------------------------------------------

def test_auditor_reads_every_run(world: World) -> None:
    url = world.url_of(world.auditor)
    with open_store(url) as store:
        runs = {r.name: r for r in store.runs()}  # other tests may have added runs of their own
        assert {"default", "run-a", "run-b"} <= set(runs) and runs["run-a"].owner == world.a
        everything = feed(store, sum(r.last_position for r in runs.values()))
        assert {(e.run, e.event.position) for e in everything} == {
            (name, p) for name, r in runs.items() for p in range(1, r.last_position + 1)}
        for name, info in runs.items():
            with store.for_run(name) as run:
                assert verify(run) == info.last_position
                assert info.last_position == world.heads.get(name, info.last_position)
    with raw(url) as conn:
        assert conn.execute("SELECT run, detail FROM command_refusals WHERE run LIKE 'run-_' ORDER BY run"
                            ).fetchall() == [("run-a", "run-a"), ("run-b", "run-b")]
        for view in ("seed_transitions", "seed_current_stage", "seed_gate_verdicts", "seed_contributions",
                     "seed_generations"):
            conn.execute(f"SELECT * FROM {view}").fetchall()


def test_auditor_writes_nothing(world: World) -> None:
    url = world.url_of(world.auditor)
    with raw(url) as conn:
        for statement in (
                f"INSERT INTO kasmina_events (run_id, position, stream_id, version, event_type, schema_version, "
                f"recorded_at, payload, prev_hash, hash) VALUES ({world.ids['run-a']}, 9, 'x', 1, 'x', 1, now(), "
                "'{}', '', '')",
                "INSERT INTO kasmina_runs (name, created_at, updated_at, status, last_position, last_hash) "
                "VALUES ('audit', now(), now(), 'running', 0, '')",
                "UPDATE kasmina_runs SET status = 'crashed'",
                "DELETE FROM kasmina_auditors",
                "INSERT INTO kasmina_snapshots (run_id, stream_id, version, position, state_schema, state, "
                f"created_at) VALUES ({world.ids['run-a']}, 'x', 1, 1, 1, '{{}}', now())"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute(statement)
    with pytest.raises(PermissionDenied, match="permission denied for table kasmina_runs") as caught:
        migrate.open_log(url, run="audit-run")
    one_line(caught.value)
    with open_store(url, run="run-a") as store:
        with pytest.raises(PermissionDenied, match="permission denied for table kasmina_events") as caught:
            store.append(EXECUTOR_STREAM, [NewEvent(RUN_NOTE, {"note": "auditor was here"})])
        one_line(caught.value)
        with pytest.raises(PermissionDenied, match="permission denied for table kasmina_runs") as caught:
            store.mark_run("crashed")
        one_line(caught.value)
        assert verify(store) == world.heads["run-a"]


def test_role_without_grant_gets_one_line(world: World) -> None:
    # Without USAGE on the schema the tables are invisible to the role: the store says so
    # and how to get it, rather than "not a Kasmina log yet". One line either way.
    for attempt in (lambda url: open_store(url), lambda url: migrate.open_log(url, run="sneaky")):
        with pytest.raises(PermissionDenied) as caught:
            attempt(world.url_of(world.nobody))
        message = one_line(caught.value)
        assert f"role {world.nobody!r} may not use schema {world.schema!r}" in message, message
        assert f"kasmina db grant --db URL {world.nobody}" in message
    with raw(world.url_of(world.nobody)) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for schema"):
            conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}.kasmina_events").format(
                psycopg.sql.Identifier(world.schema)))


# -- the grant helper -----------------------------------------------------------------------

def _privileges(url: str, role: str) -> dict[str, bool]:
    with raw(url) as conn:
        row = conn.execute(
            "SELECT has_table_privilege(%(r)s, 'kasmina_events', 'SELECT'), "
            "has_any_column_privilege(%(r)s, 'kasmina_events', 'INSERT'), "
            "has_any_column_privilege(%(r)s, 'kasmina_runs', 'UPDATE'), "
            "has_table_privilege(%(r)s, 'seed_transitions', 'SELECT'), "
            "EXISTS (SELECT 1 FROM kasmina_auditors WHERE role_name = %(r)s)", {"r": role}).fetchone()
    return dict(zip(("read", "append", "update_runs", "views", "auditor"), row))


def test_grant_is_idempotent_and_makes_a_role_one_kind(pg_url: str, make_role: Any) -> None:
    migrate.upgrade(pg_url)
    role = make_role("job")
    first = grant(pg_url, role)
    assert grant(pg_url, role) == first  # twice is fine, and the same
    assert any(s.startswith("GRANT SELECT, INSERT (run_id, position,") and "kasmina_events" in s
               for s in first), first
    assert not any("DELETE" in s or "TRUNCATE" in s or "ALL" in s for s in first), first
    assert _privileges(pg_url, role) == {"read": True, "append": True, "update_runs": True, "views": True,
                                         "auditor": False}
    audit = grant(pg_url, role, auditor=True)  # a job made an auditor loses its writes
    assert audit[0].startswith("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON"), audit
    assert grant(pg_url, role, auditor=True) == audit[-3:]  # nothing left to take back
    assert _privileges(pg_url, role) == {"read": True, "append": False, "update_runs": False, "views": True,
                                         "auditor": True}
    with raw(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM kasmina_auditors").fetchone() == (1,)
    grant(pg_url, role)  # and back: no longer an auditor
    assert _privileges(pg_url, role)["auditor"] is False
    revoked = revoke(pg_url, role)
    assert revoke(pg_url, role) == revoked
    assert _privileges(pg_url, role) == dict.fromkeys(("read", "append", "update_runs", "views", "auditor"), False)
    with pytest.raises(StoreError) as caught:  # see test_role_without_grant_gets_one_line
        open_store(as_role(pg_url, role))
    one_line(caught.value)


def test_grant_and_revoke_from_the_cli(pg_url: str, make_role: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from kasmina.cli import main

    migrate.upgrade(pg_url)
    role = make_role("job")
    assert main(["db", "grant", "--db", pg_url, role]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:-1] == grant(pg_url, role)  # one statement a line, as run
    assert lines[-1].startswith(f"role {role!r} has a job's rights (its own runs) on postgresql://")
    assert _cli(capsys, "db", "grant", "--db", pg_url, role, "--auditor")["kind"] == "auditor"
    assert _privileges(pg_url, role)["auditor"] is True
    assert main(["db", "revoke", "--db", pg_url, role]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"role {role!r} has no rights on ")
    assert not any(_privileges(pg_url, role).values())
    assert main(["db", "grant", "--db", pg_url, "no_such_role_here"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err


def test_grant_quotes_the_role_name(pg_url: str, make_role: Any) -> None:
    migrate.upgrade(pg_url)
    odd = make_role("odd", f'kasmina job "{secrets.token_hex(3)}"; DROP TABLE kasmina_events; --')
    statements = grant(pg_url, odd, auditor=True)
    assert any('"kasmina job ""' in s for s in statements), statements
    assert _privileges(pg_url, odd)["auditor"] is True
    with raw(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('kasmina_events') IS NOT NULL").fetchone() == (True,)


def test_grant_refusals_are_one_line(pg_url: str, sqlite_url: str, make_role: Any) -> None:
    with pytest.raises(BadDatabaseURL, match="PostgreSQL only") as caught:
        grant(sqlite_url, "anyone")
    one_line(caught.value)
    with pytest.raises(StoreError, match="not a Kasmina log yet") as caught:  # not migrated
        grant(pg_url, "anyone")
    one_line(caught.value)
    migrate.upgrade(pg_url)
    for bad in ("", "x" * 64, "a\x00b"):
        with pytest.raises(KasminaError, match="role name"):
            grant(pg_url, bad)
    missing = f"kasmina_missing_{secrets.token_hex(4)}"
    with pytest.raises(KasminaError, match=f"no database role '{missing}'") as caught:
        grant(pg_url, missing)
    one_line(caught.value)
    with pytest.raises(KasminaError, match="superuser") as caught:  # RLS would not apply to it
        grant(pg_url, "postgres", auditor=True)
    one_line(caught.value)
    job, other = make_role("job"), make_role("job")
    grant(pg_url, job)
    with pytest.raises(KasminaError, match="must be run as the log's admin role 'postgres'") as caught:
        grant(as_role(pg_url, job), other)  # a job cannot hand out rights
    one_line(caught.value)
