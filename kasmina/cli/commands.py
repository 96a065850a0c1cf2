"""What each CLI command does, as plain functions returning data (no printing, no exit).

The parser in ``kasmina.cli`` calls these and renders the result as a table or JSON; tests
call them directly. None of them imports torch, except :func:`blueprints` (the catalogue's
blueprints are torch code).
"""

from __future__ import annotations

from typing import Any, Callable

from kasmina.errors import KasminaError, LogCorrupted, UnknownSeed
from kasmina.events import EventStore, open_store, redact
from kasmina.lifecycle import events as ev

#: SQL keywords that may start a query passed to ``kasmina audit --query`` (read-only).
_READ_ONLY_STARTS = ("select", "with", "explain")


def db_upgrade(url: str, revision: str = "head") -> dict[str, Any]:
    from kasmina.events import migrate

    migrate.upgrade(url, revision)
    return {"database": redact(url), "revision": migrate.current(url)}


def db_downgrade(url: str, revision: str) -> dict[str, Any]:
    from kasmina.events import migrate

    migrate.downgrade(url, revision)
    return {"database": redact(url), "revision": migrate.current(url)}


def db_current(url: str) -> dict[str, Any]:
    from kasmina.events import migrate
    from kasmina.events.schema import SCHEMA_REVISION

    found = migrate.current(url)
    return {"database": redact(url), "revision": found, "expected": SCHEMA_REVISION,
            "up_to_date": found == SCHEMA_REVISION}


def simulate(url: str, *, seeds: int, steps: int, rng: int,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    from kasmina.events import migrate, parse
    from kasmina.simulate import run

    if seeds < 1 or steps < 1:
        raise KasminaError("--seeds and --steps must be at least 1")
    parsed = parse(url)
    if parsed.backend == "sqlite":
        import os

        if not os.path.exists(parsed.sqlite_path):
            migrate.upgrade(url)  # a new log file for a new simulation; existing ones are never migrated here
    with open_store(url) as store:
        report = run(store, seeds=seeds, steps=steps, rng=rng, progress=progress)
    return {"database": redact(url), **report.to_dict()}


def _event_row(e: Any) -> dict[str, Any]:
    d = e.data
    return {
        "position": e.position, "version": e.version, "step": d.get("step"), "event": e.type,
        "from_stage": d.get("from_stage"), "to_stage": d.get("to_stage"), "gate": d.get("gate"),
        "passed": d.get("passed"), "reason": d.get("reason") or d.get("mode") or d.get("message"),
        "command_id": e.command_id, "recorded_at": e.recorded_at.isoformat(sep=" ", timespec="seconds"),
        **_contribution(d.get("inputs")),
    }


def _contribution(inputs: Any) -> dict[str, Any]:
    """The counterfactual a gate was given (empty when none was measured)."""
    if not isinstance(inputs, dict) or inputs.get("contribution") is None:
        return {}
    return {k: inputs.get(k) for k in ("contribution", "loss_with", "loss_without", "contribution_threshold")}


def history(url: str, seed_id: str) -> dict[str, Any]:
    with open_store(url) as store:
        rows = [_event_row(e) for e in store.read(stream_id=seed_id)]
        refusals = [_event_row(e) for e in store.read(stream_id=ev.EXECUTOR_STREAM)
                    if e.data.get("seed_id") == seed_id]
        if not rows and not refusals:
            known = [s for s in store.streams() if s != ev.EXECUTOR_STREAM]
            hint = f" (seeds in this log: {', '.join(known[:10])}{' ...' if len(known) > 10 else ''})" if known \
                else " (the log has no seeds)"
            raise UnknownSeed(f"no seed {seed_id!r} in {redact(url)}{hint}")
    return {"seed_id": seed_id, "events": sorted(rows + refusals, key=lambda r: r["position"])}


def replay(url: str, to_position: int | None = None) -> dict[str, Any]:
    from kasmina.rebuild import decisions_digest
    from kasmina.rebuild import replay as do_replay

    if to_position is not None and to_position < 0:
        raise KasminaError(f"--to-position must be >= 0, got {to_position}")
    with open_store(url) as store:
        result = do_replay(store, to_position=to_position)
        decided = decisions_digest(store, to_position=result.position)
    return {"position": result.position, "digest": result.digest, "decisions_digest": decided,
            "seeds": {sid: s.to_dict() for sid, s in sorted(result.seeds.items())}}


def verify(url: str) -> dict[str, Any]:
    from kasmina.rebuild import verify as do_verify

    with open_store(url) as store:
        try:
            count = do_verify(store)
        except LogCorrupted as e:
            return {"ok": False, "position": e.position, "problem": e.problem}
    return {"ok": True, "events": count}


def _query(store: EventStore, sql: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
    """Rows of a read-only query. ``params`` given: Kasmina's own SQL with bound parameters;
    none: a user's query, passed to the driver as written (a ``:word`` or ``%`` in it is
    text, not a placeholder), and any error in it is one line, not "database unavailable"."""
    from sqlalchemy import text

    from kasmina.events.sql import SQLEventStore

    if not isinstance(store, SQLEventStore):
        raise KasminaError("audit queries need an SQL database (sqlite:/// or postgresql://)")
    with store._read("audit query") as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        else:
            conn.exec_driver_sql("PRAGMA query_only = ON")
        try:
            if params is not None:
                result = conn.execute(text(sql), params)
                return list(result.keys()), [tuple(r) for r in result]
            return _user_query(conn, sql)
        finally:
            if conn.dialect.name != "postgresql" and not conn.invalidated:
                conn.exec_driver_sql("PRAGMA query_only = OFF")


def _user_query(conn: Any, sql: str) -> tuple[list[str], list[tuple]]:
    """Run a user's query on the driver's own cursor: with no parameters there are no
    placeholders, so ``:word`` and ``%`` are plain text; a mistake in it is one line."""
    dbapi = conn.dialect.loaded_dbapi
    cursor = conn.connection.cursor()
    try:
        if conn.dialect.name == "postgresql":
            # A prepared statement holds exactly one command: 'SELECT 1; COMMIT; DROP ...'
            # cannot end the read-only transaction (sqlite3 refuses several statements itself).
            cursor.execute(sql, prepare=True)
        else:
            cursor.execute(sql)
        columns = [d[0] for d in cursor.description or ()]
        return columns, [tuple(r) for r in cursor.fetchall()]
    except (dbapi.ProgrammingError, dbapi.DataError, dbapi.NotSupportedError, dbapi.IntegrityError,
            dbapi.InternalError, dbapi.Warning) as e:
        raise KasminaError(f"audit query failed: {' '.join(str(e).split()) or type(e).__name__}") from e
    except dbapi.OperationalError as e:
        # sqlite3 reports query mistakes as OperationalError; PostgreSQL a cancelled query
        # (a statement timeout) as QueryCanceled. Neither means the database is away.
        if conn.dialect.name == "sqlite" or type(e).__name__ == "QueryCanceled":
            raise KasminaError(f"audit query failed: {' '.join(str(e).split())}") from e
        raise
    finally:
        cursor.close()


def _without_leading_comments(sql: str) -> str:
    """The query after any leading ``-- ...`` lines and ``/* ... */`` blocks."""
    text = sql.lstrip()
    while text.startswith(("--", "/*")):
        end = text.find("\n") if text.startswith("--") else text.find("*/")
        if end < 0:
            return ""
        text = text[end + (1 if text.startswith("--") else 2):].lstrip()
    return text


def audit(url: str, query: str | None = None) -> dict[str, Any]:
    """A summary from the shipped views, or the rows of a read-only SQL query."""
    with open_store(url) as store:
        if query is not None:
            if not _without_leading_comments(query).lower().startswith(_READ_ONLY_STARTS):
                raise KasminaError("audit --query runs read-only queries only (SELECT, WITH or EXPLAIN)")
            columns, rows = _query(store, query)
            return {"columns": columns, "rows": [list(map(_plain, r)) for r in rows]}
        _, seeds = _query(store, "SELECT seed_id, stage, generation, since_step, since_position "
                                 "FROM seed_current_stage ORDER BY seed_id")
        _, culls = _query(store, "SELECT gate, reason, COUNT(*) FROM seed_transitions WHERE to_stage = 'CULLED' "
                                 "GROUP BY gate, reason ORDER BY COUNT(*) DESC, reason")
        _, refusals = _query(store, "SELECT reason, COUNT(*) FROM command_refusals GROUP BY reason "
                                    "ORDER BY COUNT(*) DESC, reason")
        _, contributions = _query(store, "SELECT seed_id, step, stage, to_stage, loss_with, loss_without, "
                                         "contribution, threshold FROM seed_contributions ORDER BY position")
        head, head_hash = store.head()
    return {
        "database": redact(url), "events": head, "head_hash": head_hash,
        "seeds": [dict(zip(("seed_id", "stage", "generation", "since_step", "since_position"), r)) for r in seeds],
        "culls": [{"gate": g, "reason": r, "count": n} for g, r, n in culls],
        "refusals": [{"reason": r, "count": n} for r, n in refusals],
        "contributions": [dict(zip(("seed_id", "step", "stage", "to_stage", "loss_with", "loss_without",
                                    "contribution", "threshold"), map(_plain, r))) for r in contributions],
    }


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def blueprints() -> dict[str, Any]:
    """Every blueprint of the default catalogue: what it fits, its parameters, its checksum."""
    from kasmina.catalogue import Catalogue

    catalogue = Catalogue()
    rows = []
    for blueprint_id in catalogue.names():
        bp = catalogue.get(blueprint_id)
        rows.append({
            "id": blueprint_id, "version": bp.version, "description": bp.description,
            "kinds": sorted(k.value for k in bp.kinds),
            "parameters": {name: {"low": low, "high": high, "integer": name in bp.integer_parameters}
                           for name, (low, high) in sorted(bp.parameter_bounds.items())},
            "default_blend": bp.default_blend,  # None: the executor's default
            "fallback": blueprint_id == catalogue.fallback_blueprint_id,
            "checksum": catalogue.checksum(blueprint_id),
        })
    return {"blueprints": rows}
