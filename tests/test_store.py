"""The event-store contract (kasmina/events/store.py), written once and run against every
backend: the in-memory reference, a SQLite file and a real PostgreSQL server.

The second half holds what only SQL databases have: append-only triggers, tamper
detection behind their back, Alembic migrations and drift, schema checks and the views.
Nothing is mocked: every SQL test talks to a real database (see conftest.py).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import MetaData, inspect, text
from sqlalchemy import exc as sa_exc

from kasmina.errors import (
    BadDatabaseURL, DatabaseNotFound, LogCorrupted, SchemaMismatch, StaleVersion, StoreError,
)
from kasmina.events import EventStore, NewEvent, PendingAppend, Snapshot, migrate, open_store, schema
from kasmina.events.hashing import GENESIS
from kasmina.events.sql import SQLEventStore
from kasmina.events.upcasting import CURRENT_SCHEMA
from kasmina.lifecycle import events as lev
from kasmina.lifecycle.gates import GateInputs, evaluate_all
from kasmina.lifecycle.machine import gates_for
from kasmina.lifecycle.stages import Stage
from kasmina.rebuild import replay_seed, verify

KASMINA_TABLES = {"kasmina_events", "kasmina_snapshots", "kasmina_runs", "kasmina_auditors"}
KASMINA_VIEWS = {"seed_transitions", "seed_current_stage", "seed_gate_verdicts", "command_refusals",
                 "seed_contributions", "seed_generations"}


# -- helpers ----------------------------------------------------------------------------------

def note(**data: object) -> NewEvent:
    """A neutral event: ``evolve`` accepts it on any seed, so ``verify`` passes on it."""
    return NewEvent(lev.ANNOTATION_WARNING, dict(data))


def backend(store: EventStore) -> str:
    """``memory``, ``sqlite`` or ``postgres``: the fixture parameter that made this store."""
    if not isinstance(store, SQLEventStore):
        return "memory"
    return {"sqlite": "sqlite", "postgresql": "postgres"}[store.engine.dialect.name]


def as_new(event: lev.Event) -> NewEvent:
    return NewEvent(event.type, dict(event.data))


def transition(source: Stage, dest: Stage, *, step: int, reason: str, inputs: GateInputs | None = None,
               **extra: object) -> NewEvent:
    """A ``stage_changed`` event built exactly as the executor builds it (with real gate verdicts)."""
    verdicts = evaluate_all(gates_for(source, dest), inputs) if inputs is not None else ()
    return as_new(lev.stage_changed(source, dest, step=step, reason=reason, verdicts=verdicts,
                                    inputs=inputs, **extra))


G0_OK = GateInputs(blueprint_known=True, parameters={"alpha": 0.5})


def germinate(step: int, blueprint: str = "bp-conv") -> NewEvent:
    return transition(Stage.DORMANT, Stage.GERMINATED, step=step, reason="germinate", inputs=G0_OK,
                      blueprint_id=blueprint, parameters={"alpha": 0.5})


def count_rows(store: EventStore) -> int:
    return sum(1 for _ in store.read(raw=True))


def verify_problem(store: EventStore) -> LogCorrupted | None:
    """What ``verify`` finds wrong, or None. Its traceback is dropped on purpose: it holds
    verify's suspended ``read()`` generator, whose open read transaction would otherwise live
    until a later garbage collection (on Postgres it also holds a lock on kasmina_events)."""
    try:
        verify(store)
    except LogCorrupted as e:
        e.__traceback__ = None
        return e
    return None


def assert_untouched(store: EventStore, head: tuple[int, str], streams: list[str]) -> None:
    assert store.head() == head
    assert store.streams() == streams
    assert count_rows(store) == head[0]


# -- positions, versions, head ----------------------------------------------------------------

def test_empty_log(store: EventStore) -> None:
    assert store.head() == (0, GENESIS)
    assert store.streams() == []
    assert store.stream_version("nope") == 0
    assert list(store.read()) == []
    assert verify(store) == 0


def test_positions_gap_free_versions_per_stream(store: EventStore) -> None:
    r1 = store.append("zeta", [note(i=1), note(i=2)])
    r2 = store.append("alpha", [note(i=3)])
    r3 = store.append("zeta", [note(i=4), note(i=5), note(i=6)])
    r4 = store.append("mid", [note(i=7)])
    assert [r.positions for r in (r1, r2, r3, r4)] == [(1, 2), (3,), (4, 5, 6), (7,)]
    assert [r.version for r in (r1, r2, r3, r4)] == [2, 1, 5, 1]
    assert not any(r.duplicate for r in (r1, r2, r3, r4))
    assert [e.version for e in r3.events] == [3, 4, 5]

    events = list(store.read())
    assert [e.position for e in events] == list(range(1, 8))
    assert [e.data["i"] for e in events] == list(range(1, 8))
    for stream in ("zeta", "alpha", "mid"):
        versions = [e.version for e in events if e.stream_id == stream]
        assert versions == list(range(1, len(versions) + 1))
        assert store.stream_version(stream) == versions[-1]
    assert store.stream_version("absent") == 0

    position, last_hash = store.head()
    assert position == 7 == events[-1].position
    assert last_hash == events[-1].hash == r4.events[-1].hash
    assert store.streams() == ["alpha", "mid", "zeta"]
    # Each event is chained to the one before it.
    assert events[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(events, events[1:]))


def test_append_result_matches_what_is_read(store: EventStore) -> None:
    result = store.append("s", [note(a=1), NewEvent("blend_config", {"alpha": 0.25})], command_id="c-1")
    read = tuple(store.read())
    # recorded_at is compared as an instant (naive = UTC, as kasmina/events/hashing.py reads it);
    # that it comes back tz-aware is checked separately below.
    assert [_utc(e.recorded_at) for e in read] == [e.recorded_at for e in result.events]
    assert [e._replace(recorded_at=None) for e in read] == [e._replace(recorded_at=None) for e in result.events]
    assert all(e.command_id == "c-1" and e.schema_version == CURRENT_SCHEMA for e in result.events)
    assert all(e.recorded_at.tzinfo is not None for e in result.events)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def test_recorded_at_reads_back_timezone_aware(store: EventStore, request: pytest.FixtureRequest) -> None:
    store.append("s", [note()])
    (event,) = store.read()
    assert event.recorded_at.tzinfo is not None
    assert abs(datetime.now(timezone.utc) - event.recorded_at) < timedelta(minutes=5)


# -- optimistic concurrency -------------------------------------------------------------------

def test_stale_expected_version_writes_nothing(store: EventStore) -> None:
    store.append("s", [note(), note()], expected_version=0)
    before = store.head()
    for stale in (0, 1, 3):
        with pytest.raises(StaleVersion) as info:
            store.append("s", [note(bad=True)], expected_version=stale, command_id=f"stale-{stale}")
        assert (info.value.stream_id, info.value.expected, info.value.actual) == ("s", stale, 2)
        assert store.find_command(f"stale-{stale}") == ()
    assert_untouched(store, before, ["s"])
    with pytest.raises(StaleVersion):
        store.append("new-stream", [note()], expected_version=1)
    assert_untouched(store, before, ["s"])

    ok = store.append("s", [note(good=True)], expected_version=2)
    assert ok.positions == (3,) and ok.version == 3
    assert store.append("t", [note()], expected_version=0).version == 1


def test_append_many_is_all_or_nothing(store: EventStore) -> None:
    store.append("a", [note()])
    before = store.head()
    batches = [
        PendingAppend("b", [note(), note()], expected_version=0, command_id="ok-1"),
        PendingAppend("c", [note()]),
        PendingAppend("a", [note()], expected_version=7),  # stale: a is at 1
    ]
    with pytest.raises(StaleVersion):
        store.append_many(batches)
    assert_untouched(store, before, ["a"])
    assert store.find_command("ok-1") == ()

    results = store.append_many([
        PendingAppend("b", [note(), note()], expected_version=0),
        PendingAppend("a", [note()], expected_version=1),
        PendingAppend("b", [note()], expected_version=2),  # sees the first batch of this call
    ])
    assert [r.positions for r in results] == [(2, 3), (4,), (5,)]
    assert [r.version for r in results] == [2, 2, 3]
    assert [e.version for e in store.read(stream_id="b")] == [1, 2, 3]
    assert verify(store) == 5


# -- idempotency ------------------------------------------------------------------------------

def test_same_command_id_twice_is_a_noop(store: EventStore) -> None:
    first = store.append("s", [note(n=1), note(n=2)], command_id="cmd-1")
    store.append("other", [note()])
    before = store.head()
    again = store.append("s", [note(n=99)], command_id="cmd-1")
    assert again.duplicate is True
    assert again.positions == first.positions == (1, 2)
    assert again.version == first.version == 2
    assert again.stream_id == "s"
    assert_untouched(store, before, ["other", "s"])
    # A duplicate wins over a stale expected_version and over a different stream: nothing written.
    assert store.append("s", [note()], command_id="cmd-1", expected_version=0).duplicate
    assert store.append("elsewhere", [note()], command_id="cmd-1").positions == (1, 2)
    assert_untouched(store, before, ["other", "s"])
    assert store.find_command("cmd-1") == (1, 2)
    # Inside append_many, against the log: the duplicate batch is skipped, the rest is written.
    results = store.append_many([PendingAppend("s", [note()], command_id="cmd-1"),
                                 PendingAppend("s", [note()], command_id="cmd-2")])
    assert results[0].duplicate and results[0].positions == (1, 2)
    assert not results[1].duplicate and results[1].positions == (4,)
    assert count_rows(store) == 4


def test_duplicate_command_inside_one_append_many_writes_once(store: EventStore) -> None:
    results = store.append_many([
        PendingAppend("a", [note(n=1), note(n=2)], command_id="dup"),
        PendingAppend("b", [note(n=3)], command_id="dup"),
        PendingAppend("c", [note(n=4)], command_id="other"),
    ])
    assert results[0].positions == (1, 2) and not results[0].duplicate
    assert results[1].positions == (1, 2)  # the original positions, nothing new
    assert results[2].positions == (3,)
    assert store.streams() == ["a", "c"]
    assert [e.data["n"] for e in store.read()] == [1, 2, 4]
    assert store.find_command("dup") == (1, 2)
    assert verify(store) == 3


def test_duplicate_command_inside_one_append_many_is_flagged(store: EventStore) -> None:
    results = store.append_many([PendingAppend("a", [note()], command_id="dup"),
                                 PendingAppend("b", [note()], command_id="dup")])
    assert results[1].duplicate is True


# -- reads ------------------------------------------------------------------------------------

def test_read_filters(store: EventStore) -> None:
    for stream in ["a", "a", "b", "a", "b", "c"]:
        store.append(stream, [note(s=stream)])

    def positions(**kw: object) -> list[int]:
        return [e.position for e in store.read(**kw)]  # type: ignore[arg-type]

    assert positions() == [1, 2, 3, 4, 5, 6]
    assert positions(stream_id="a") == [1, 2, 4]
    assert positions(stream_id="b") == [3, 5]
    assert positions(stream_id="none") == []
    assert positions(after=2) == [3, 4, 5, 6]
    assert positions(upto=4) == [1, 2, 3, 4]
    assert positions(after=1, upto=4) == [2, 3, 4]
    assert positions(after=6) == [] and positions(after=100) == []
    assert positions(upto=0) == []
    assert positions(stream_id="a", after=2) == [4]
    assert positions(stream_id="a", upto=3) == [1, 2]
    assert [e.version for e in store.read(stream_id="a", after_version=1)] == [2, 3]
    assert positions(stream_id="a", after_version=1, upto=3) == [2]
    assert positions(stream_id="a", after_version=3) == []
    assert all(e.stream_id == "a" for e in store.read(stream_id="a"))


def test_old_schema_events_are_upcast_on_read(store: EventStore) -> None:
    v1 = NewEvent(lev.STAGE_CHANGED, {"from_stage": "UNKNOWN", "to_stage": "DORMANT", "step": 0,
                                      "gate": None, "why": "registered"}, schema_version=1)
    store.append("seed-1", [v1])
    store.append("seed-1", [note(x=1)])

    raw = list(store.read(raw=True))
    assert raw[0].schema_version == 1
    assert raw[0].data["why"] == "registered" and "reason" not in raw[0].data

    current = list(store.read())
    assert current[0].schema_version == CURRENT_SCHEMA == 2
    assert current[0].type == lev.STAGE_CHANGED
    assert current[0].data["reason"] == "registered" and "why" not in current[0].data
    assert current[0].data["passed"] is None
    assert (current[0].position, current[0].hash) == (raw[0].position, raw[0].hash)
    assert current[1] == raw[1]  # a current-schema event is untouched
    assert list(store.read(stream_id="seed-1", raw=True))[0].schema_version == 1
    # The stored row is never rewritten: the chain is over the raw v1 event, and replay upcasts.
    assert verify(store) == 2
    assert replay_seed(store, "seed-1").stage is Stage.DORMANT


# -- payloads ---------------------------------------------------------------------------------

PAYLOAD = {
    "nested": {"deep": {"deeper": [1, 2, {"x": None}]}, "empty": {}, "list": []},
    "floats": [0.1, -2.5, 3.141592653589793, 1e-7, 123456.0, 2.0 ** -30],
    "ints": [0, -1, 2 ** 53 + 1, 2 ** 62, 2 ** 64 + 1, -(2 ** 70)],  # beyond 64 bits: kept whole by the decoder
    "none": None, "yes": True, "no": False,
    "text": "naïve — 模型 🌱 \"quoted\" \\ back\nslash\ttab",
    "mixed": [True, None, "s", 1, 1.5, {"k": [False]}],
    "ключ": "unicode key",
}


def test_payload_round_trip(store: EventStore) -> None:
    result = store.append("s", [NewEvent("annotation_warning", PAYLOAD)])
    (event,) = store.read()
    assert event.data == PAYLOAD == result.events[0].data
    assert json.dumps(event.data, sort_keys=True) == json.dumps(PAYLOAD, sort_keys=True)  # types kept
    assert event.data["yes"] is True and event.data["no"] is False and event.data["none"] is None
    assert verify(store) == 1


def test_payload_is_copied_not_shared(store: EventStore) -> None:
    data = {"list": [1, 2]}
    store.append("s", [NewEvent("annotation_warning", data)])
    data["list"].append(3)
    assert next(iter(store.read())).data == {"list": [1, 2]}
    assert verify(store) == 1


@pytest.mark.parametrize("value", [1e16, 1e300, -0.0], ids=["1e16", "1e300", "minus-zero"])
def test_exponent_and_signed_zero_floats_survive(store: EventStore, value: float,
                                                 request: pytest.FixtureRequest) -> None:
    store.append("s", [note(v=value)])
    assert verify_problem(store) is None
    (event,) = store.read()
    assert repr(event.data["v"]) == repr(value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_non_json_payload_refused_and_nothing_written(store: EventStore, bad: float) -> None:
    store.append("s", [note(ok=1)])
    before = store.head()
    with pytest.raises(StoreError, match="not plain JSON"):
        store.append("s", [note(fine=1), note(x={"deep": [bad]})])
    with pytest.raises(StoreError):
        store.append_many([PendingAppend("t", [note()]), PendingAppend("s", [note(x=bad)])])
    assert_untouched(store, before, ["s"])
    assert store.stream_version("s") == 1


# -- snapshots --------------------------------------------------------------------------------

def test_snapshots(store: EventStore) -> None:
    assert store.latest_snapshot("a", state_schema=1) is None
    snaps = [Snapshot("a", 2, 2, 1, {"v": 2, "nested": {"x": [1, None]}}),
             Snapshot("a", 5, 7, 1, {"v": 5}),
             Snapshot("a", 6, 9, 2, {"v": 6}),
             Snapshot("b", 3, 8, 1, {"v": 3})]
    for snap in snaps:
        store.save_snapshot(snap)

    def latest(stream: str, state_schema: int = 1, upto: int | None = None) -> int | None:
        found = store.latest_snapshot(stream, state_schema=state_schema, upto=upto)
        return None if found is None else found.version

    assert store.latest_snapshot("a", state_schema=1) == snaps[1]
    assert latest("a", upto=7) == 5 and latest("a", upto=6) == 2 and latest("a", upto=2) == 2
    assert latest("a", upto=1) is None
    assert latest("a", 2) == 6 and latest("a", 2, upto=8) is None
    assert latest("a", 3) is None
    assert latest("b") == 3 and latest("c") is None
    assert store.latest_snapshot("a", state_schema=1, upto=2) == snaps[0]

    # Saving the same (stream, version) again is harmless; the first one stays.
    store.save_snapshot(snaps[1])
    store.save_snapshot(Snapshot("a", 5, 7, 1, {"v": "other"}))
    assert store.latest_snapshot("a", state_schema=1) == snaps[1]


# -- commands ---------------------------------------------------------------------------------

def test_find_command_and_command_ids_since(store: EventStore) -> None:
    start = datetime.now(timezone.utc) - timedelta(seconds=1)
    store.append("a", [note(), note()], command_id="c1")
    store.append("a", [note()])
    time.sleep(0.02)
    middle = datetime.now(timezone.utc)
    time.sleep(0.02)
    r2 = store.append("b", [note()], command_id="c2")

    assert store.find_command("c1") == (1, 2)
    assert store.find_command("c2") == (4,)
    assert store.find_command("never") == ()
    assert store.command_ids_since(start) == {"c1", "c2"}
    assert store.command_ids_since(middle) == {"c2"}
    assert store.command_ids_since(r2.events[0].recorded_at) == {"c2"}  # "at or after"
    assert store.command_ids_since(datetime.now(timezone.utc) + timedelta(minutes=1)) == set()


def test_command_ids_since_with_a_non_utc_timestamp(store: EventStore, request: pytest.FixtureRequest) -> None:
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    store.append("a", [note()], command_id="c1")
    east = timezone(timedelta(hours=5))
    west = timezone(timedelta(hours=-5))
    assert store.command_ids_since(before.astimezone(east)) == {"c1"}
    assert store.command_ids_since((before + timedelta(minutes=10)).astimezone(west)) == set()


# -- the hash chain ---------------------------------------------------------------------------

def test_verify_counts_a_good_log(store: EventStore) -> None:
    store.append("seed-1", [transition(Stage.UNKNOWN, Stage.DORMANT, step=0, reason="registered")])
    store.append(lev.EXECUTOR_STREAM, [NewEvent(lev.COMMAND_ACCEPTED, {"seed_id": "seed-1"})],
                 command_id="cmd-germinate")
    store.append("seed-1", [germinate(10)], command_id="cmd-germinate-seed", expected_version=1)
    store.append("seed-2", [transition(Stage.UNKNOWN, Stage.DORMANT, step=0, reason="registered"),
                            note(text="slow site")])
    store.append("seed-1", [NewEvent(lev.BLEND_CONFIG, {"alpha": 0.1, "steps": 100})])
    assert verify(store) == 6 == store.head()[0]
    state = replay_seed(store, "seed-1")
    assert state.stage is Stage.GERMINATED and state.generation == 1 and state.blueprint_id == "bp-conv"


# == SQL-only =================================================================================

@pytest.fixture(params=["sqlite", "postgres"])
def sql_url(request: pytest.FixtureRequest) -> str:
    """An EMPTY, not yet migrated SQL database (a missing file for SQLite)."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


#: A SQL-only test: the conftest's migrated ``store``/``backend_url``, without the memory param.
sql_only = pytest.mark.parametrize("backend_url", ["sqlite", "postgres"], indirect=True)


def is_pg(store: SQLEventStore) -> bool:
    return store.engine.dialect.name == "postgresql"


def raw_sql(store: SQLEventStore, *statements: str, **params: object) -> None:
    with store.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement), params)


@sql_only
def test_update_delete_truncate_refused_by_the_database(store: SQLEventStore) -> None:
    store.append("s", [note(n=1), note(n=2)])
    refused = ["UPDATE kasmina_events SET stream_id = 'x'",
               "UPDATE kasmina_events SET payload = payload WHERE position = 1",
               "DELETE FROM kasmina_events WHERE position = 2",
               "DELETE FROM kasmina_events"]
    if is_pg(store):
        refused.append("TRUNCATE kasmina_events")
    for statement in refused:
        with pytest.raises(sa_exc.DBAPIError, match="append-only"):
            raw_sql(store, statement)
    assert [e.data["n"] for e in store.read()] == [1, 2]
    assert verify(store) == 2


def _disable_guard(store: SQLEventStore) -> None:
    if is_pg(store):
        raw_sql(store, "ALTER TABLE kasmina_events DISABLE TRIGGER kasmina_events_append_only")
    else:
        raw_sql(store, "DROP TRIGGER kasmina_events_no_update", "DROP TRIGGER kasmina_events_no_delete")


@sql_only
def test_tampered_payload_is_detected(store: SQLEventStore) -> None:
    for n in range(4):
        store.append(f"s{n % 2}", [note(amount=n)])
    assert verify(store) == 4
    _disable_guard(store)
    cast = "CAST(:p AS JSONB)" if is_pg(store) else ":p"
    raw_sql(store, f"UPDATE kasmina_events SET payload = {cast} WHERE position = 3",
            p=json.dumps({"amount": 1000}))
    assert next(iter(store.read(after=2))).data == {"amount": 1000}  # the edit took effect
    problem = verify_problem(store)
    assert isinstance(problem, LogCorrupted)
    assert problem.position == 3
    assert "hash" in problem.problem


@sql_only
def test_deleted_event_is_detected(store: SQLEventStore) -> None:
    for n in range(4):
        store.append("s", [note(n=n)])
    _disable_guard(store)
    raw_sql(store, "DELETE FROM kasmina_events WHERE position = 2")
    problem = verify_problem(store)
    assert isinstance(problem, LogCorrupted)
    assert problem.position == 2


# -- migrations -------------------------------------------------------------------------------

def _objects(url: str) -> tuple[set[str], set[str]]:
    store = open_store(url, check_schema=False)
    assert isinstance(store, SQLEventStore)
    try:
        with store.engine.connect() as conn:
            found = inspect(conn)
            return set(found.get_table_names()), set(found.get_view_names())
    finally:
        store.close()


def test_upgrade_downgrade_upgrade(sql_url: str) -> None:
    migrate.upgrade(sql_url)
    assert migrate.current(sql_url) == schema.SCHEMA_REVISION
    tables, views = _objects(sql_url)
    assert KASMINA_TABLES <= tables and views == KASMINA_VIEWS
    migrate.upgrade(sql_url)  # already at head: a no-op
    with open_store(sql_url) as store:
        store.append("s", [note()])

    migrate.downgrade(sql_url, "base")
    tables, views = _objects(sql_url)
    assert not tables & KASMINA_TABLES and not views
    assert migrate.current(sql_url) is None
    with pytest.raises(SchemaMismatch, match="kasmina db upgrade"):
        open_store(sql_url)

    migrate.upgrade(sql_url)
    assert migrate.current(sql_url) == schema.SCHEMA_REVISION
    with open_store(sql_url) as store:
        assert store.head() == (0, GENESIS)  # the old log is gone, the head row is back
        assert store.append("s", [note(), note()]).positions == (1, 2)
        assert verify(store) == 2


@sql_only
def test_models_match_migrations(store: SQLEventStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn)
        # Views are not in the metadata and compare_metadata does not reflect views, so
        # nothing needs filtering: the JSON/JSONB variant and the index names compare clean.
        assert compare_metadata(context, schema.metadata) == []
        # ...and the comparison is live: against empty metadata every Kasmina table is "extra".
        removed = {d[1].name for d in compare_metadata(context, MetaData()) if d[0] == "remove_table"}
        assert removed == KASMINA_TABLES


# -- schema checks and URLs -------------------------------------------------------------------

@sql_only
def test_unknown_newer_revision_is_refused(store: SQLEventStore) -> None:
    url = store.url
    raw_sql(store, "UPDATE alembic_version SET version_num = '9999_from_the_future'")
    with pytest.raises(SchemaMismatch, match="newer"):
        open_store(url)
    with pytest.raises(SchemaMismatch, match="newer"):
        migrate.upgrade(url)
    assert migrate.current(url) == "9999_from_the_future"  # upgrade did not touch it


def test_database_without_schema(sql_url: str) -> None:
    if sql_url.startswith("sqlite"):
        path = sql_url.removeprefix("sqlite:///")
        sqlite3.connect(path).close()  # an existing but empty SQLite file
        assert Path(path).exists()
    with pytest.raises(SchemaMismatch, match="kasmina db upgrade"):
        open_store(sql_url)
    assert migrate.current(sql_url) is None


def test_missing_sqlite_file_is_not_created(sqlite_url: str, tmp_path: Path) -> None:
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    with pytest.raises(DatabaseNotFound):
        open_store(sqlite_url)
    assert not path.exists()
    with pytest.raises(DatabaseNotFound):
        migrate.current(sqlite_url)
    with pytest.raises(DatabaseNotFound):
        migrate.downgrade(sqlite_url, "base")
    assert not path.exists()
    with pytest.raises(DatabaseNotFound):  # upgrade creates the file, but not its folder
        migrate.upgrade(f"sqlite:///{tmp_path}/no/such/dir/log.db")
    assert list(tmp_path.iterdir()) == []


MALFORMED = ["not a url", "mysql://x/y", "sqlite://", "", "   ", "sqlite:///:memory:",
             "postgresql://localhost", "sqlite:///x\x00.db"]


@pytest.mark.parametrize("url", MALFORMED)
def test_malformed_urls_open_store(url: str) -> None:
    with pytest.raises(BadDatabaseURL):
        open_store(url)


@pytest.mark.parametrize("url", MALFORMED)
def test_malformed_urls_migrate(url: str) -> None:
    with pytest.raises(BadDatabaseURL):
        migrate.upgrade(url)
    with pytest.raises(BadDatabaseURL):
        migrate.downgrade(url, "base")


# -- the shipped views ------------------------------------------------------------------------

@sql_only
def test_views(store: SQLEventStore) -> None:
    s = store
    s.append("seed-1", [transition(Stage.UNKNOWN, Stage.DORMANT, step=0, reason="registered")])
    s.append("seed-1", [germinate(10)], command_id="cmd-a")
    s.append("seed-2", [transition(Stage.UNKNOWN, Stage.DORMANT, step=0, reason="registered")])
    s.append("seed-1", [transition(Stage.GERMINATED, Stage.CULLED, step=20, reason="loss diverged"),
                        transition(Stage.CULLED, Stage.EMBARGOED, step=20, reason="embargo",
                                   embargo_until_step=50),
                        note(text="not a transition"),
                        transition(Stage.EMBARGOED, Stage.RESETTING, step=50, reason="embargo over"),
                        transition(Stage.RESETTING, Stage.DORMANT, step=51, reason="reset done")])
    s.append("seed-2", [germinate(60, "bp-mlp")], command_id="cmd-b")
    s.append("seed-1", [germinate(70)], command_id="cmd-c")
    s.append(lev.EXECUTOR_STREAM, [NewEvent(lev.COMMAND_REFUSED, {"seed_id": "seed-9", "reason": "unknown seed",
                                                                  "detail": "no such site"})],
             command_id="cmd-d")
    assert verify(s) == 11  # the log is one the executor could have written

    with s.engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT position, seed_id, from_stage, to_stage, gate, reason, command_id, recorded_at "
            "FROM seed_transitions ORDER BY position")).all()
        current = conn.execute(text(
            "SELECT seed_id, stage, generation, since_position FROM seed_current_stage ORDER BY seed_id")).all()
        refusals = conn.execute(text("SELECT position, seed_id, reason, detail, command_id "
                                     "FROM command_refusals")).all()
        verdicts = conn.execute(text("SELECT position, seed_id, gate, passed FROM seed_gate_verdicts "
                                     "ORDER BY position")).all()

    assert [tuple(r[:7]) for r in rows] == [
        (1, "seed-1", "UNKNOWN", "DORMANT", None, "registered", None),
        (2, "seed-1", "DORMANT", "GERMINATED", "G0_SANITY", "germinate", "cmd-a"),
        (3, "seed-2", "UNKNOWN", "DORMANT", None, "registered", None),
        (4, "seed-1", "GERMINATED", "CULLED", None, "loss diverged", None),
        (5, "seed-1", "CULLED", "EMBARGOED", None, "embargo", None),
        (7, "seed-1", "EMBARGOED", "RESETTING", None, "embargo over", None),
        (8, "seed-1", "RESETTING", "DORMANT", None, "reset done", None),
        (9, "seed-2", "DORMANT", "GERMINATED", "G0_SANITY", "germinate", "cmd-b"),
        (10, "seed-1", "DORMANT", "GERMINATED", "G0_SANITY", "germinate", "cmd-c"),
    ]
    assert all(isinstance(r.from_stage, str) and isinstance(r.to_stage, str) for r in rows)
    assert all(r.recorded_at is not None for r in rows)
    assert [tuple(r) for r in current] == [("seed-1", "GERMINATED", 2, 10), ("seed-2", "GERMINATED", 1, 9)]
    assert [tuple(r) for r in refusals] == [(11, "seed-9", "unknown seed", "no such site", "cmd-d")]
    assert [tuple(r) for r in verdicts] == [(2, "seed-1", "G0_SANITY", 1), (9, "seed-2", "G0_SANITY", 1),
                                            (10, "seed-1", "G0_SANITY", 1)]

