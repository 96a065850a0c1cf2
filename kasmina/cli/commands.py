"""What each CLI command does, as plain functions returning data (no printing, no exit).

The parser in ``kasmina.cli`` calls these and renders the result as a table or JSON; tests
call them directly. None of them imports torch, except :func:`blueprints` (the catalogue's
blueprints are torch code).
"""

from __future__ import annotations

from typing import Any, Callable

from kasmina.errors import KasminaError, LogCorrupted, UnknownSeed
from kasmina.events import EventStore, open_store, redact
from kasmina.events.runs import resolve as resolve_run
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


def db_grant(url: str, role: str, *, auditor: bool = False, revoke: bool = False) -> dict[str, Any]:
    """``kasmina db grant`` / ``revoke``: a role's rights on a shared PostgreSQL log."""
    from kasmina.events import roles

    statements = roles.revoke(url, role) if revoke else roles.grant(url, role, auditor=auditor)
    kind = "none" if revoke else "auditor" if auditor else "job"
    return {"database": redact(url), "role": role, "kind": kind, "statements": statements}


def simulate(url: str, *, seeds: int, steps: int, rng: int, run: str | None = None,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    from kasmina.events import migrate
    from kasmina.simulate import run as simulate_run

    if seeds < 1 or steps < 1:
        raise KasminaError("--seeds and --steps must be at least 1")
    # A new SQLite file is created and migrated; an existing log is never migrated here.
    store = migrate.open_log(url, run=resolve_run(run), config={"simulate": {"seeds": seeds, "steps": steps,
                                                                             "rng": rng}})
    try:
        report = simulate_run(store, seeds=seeds, steps=steps, rng=rng, progress=progress)
        store.mark_run("finished")
    except BaseException:
        store.mark_run("crashed")
        raise
    finally:
        store.close()
    return {"database": redact(url), "run": store.run, **report.to_dict()}


def simulate_runs(url: str, *, runs: int, seeds: int, steps: int, rng: int, prefix: str | None = None,
                  progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """A sweep: ``runs`` runs written at once, one process each (see :func:`kasmina.simulate.run_many`)."""
    from kasmina.simulate import run_many

    return run_many(url, runs=runs, seeds=seeds, steps=steps, rng=rng, prefix=prefix or "sim", progress=progress)


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


def _open(url: str, run: str | None) -> EventStore:
    """The named run (else $KASMINA_RUN, else ``default``) of the log at ``url``."""
    return open_store(url, run=resolve_run(run))


def _open_log(url: str) -> EventStore:
    """The whole log, no run bound: a job's role sees its own runs, an auditor's every run,
    and neither needs a ``default`` run to exist or be theirs."""
    return open_store(url, bind_run=False)


def _each_run(url: str, run: str | None, all_runs: bool, one: Callable[[EventStore], dict[str, Any]]
              ) -> dict[str, Any]:
    """``one(store)`` for the named run, or with ``all_runs`` for every run, keyed by name."""
    with (_open_log(url) if all_runs else _open(url, run)) as store:
        if not all_runs:
            return {"run": store.run, **one(store)}
        return {"runs": {info.name: one(store.for_run(info.name)) for info in store.runs()}}


def history(url: str, seed_id: str, run: str | None = None) -> dict[str, Any]:
    with _open(url, run) as store:
        rows = [_event_row(e) for e in store.read(stream_id=seed_id)]
        refusals = [_event_row(e) for e in store.read(stream_id=ev.EXECUTOR_STREAM)
                    if e.data.get("seed_id") == seed_id]
        if not rows and not refusals:
            known = [s for s in store.streams() if s != ev.EXECUTOR_STREAM]
            hint = f" (seeds in this log: {', '.join(known[:10])}{' ...' if len(known) > 10 else ''})" if known \
                else " (the log has no seeds)"
            where = redact(url) if store.run == "default" else f"run {store.run!r} of {redact(url)}"
            raise UnknownSeed(f"no seed {seed_id!r} in {where}{hint}")
    return {"run": store.run, "seed_id": seed_id, "events": sorted(rows + refusals, key=lambda r: r["position"])}


def replay(url: str, to_position: int | None = None, run: str | None = None,
           all_runs: bool = False) -> dict[str, Any]:
    from kasmina.rebuild import decisions_digest
    from kasmina.rebuild import replay as do_replay

    if to_position is not None and to_position < 0:
        raise KasminaError(f"--to-position must be >= 0, got {to_position}")

    def one(store: EventStore) -> dict[str, Any]:
        result = do_replay(store, to_position=to_position)
        decided = decisions_digest(store, to_position=result.position)
        return {"position": result.position, "digest": result.digest, "decisions_digest": decided,
                "seeds": {sid: s.to_dict() for sid, s in sorted(result.seeds.items())}}

    return _each_run(url, run, all_runs, one)


def verify(url: str, run: str | None = None, all_runs: bool = False) -> dict[str, Any]:
    from kasmina.rebuild import verify as do_verify

    def one(store: EventStore) -> dict[str, Any]:
        try:
            return {"ok": True, "events": do_verify(store)}
        except LogCorrupted as e:
            return {"ok": False, "position": e.position, "problem": e.problem}

    found = _each_run(url, run, all_runs, one)
    if all_runs:
        found["ok"] = all(r["ok"] for r in found["runs"].values())
    return found


def runs(url: str) -> dict[str, Any]:
    """Every run: status, steps, seeds by their current stage, culls, events, first and last time."""
    with _open_log(url) as store:
        infos = store.runs()
        stages: dict[str, dict[str, int]] = {}
        for name, stage, count in _query(store, "SELECT run, stage, COUNT(*) FROM seed_current_stage "
                                                "GROUP BY run, stage ORDER BY run, stage")[1]:
            stages.setdefault(name, {})[stage] = int(count)
        moves = {name: (int(culls or 0), steps) for name, culls, steps in _query(
            store, "SELECT run, SUM(CASE WHEN to_stage = 'CULLED' THEN 1 ELSE 0 END), MAX(step) "
                   "FROM seed_transitions GROUP BY run")[1]}
        times = {name: (first, last) for name, first, last in _query(
            store, "SELECT r.name, MIN(e.recorded_at), MAX(e.recorded_at) FROM kasmina_events e "
                   "JOIN kasmina_runs r ON r.run_id = e.run_id GROUP BY r.name")[1]}
    rows = []
    for info in infos:
        culls, steps = moves.get(info.name, (0, None))
        first, last = times.get(info.name, (None, None))
        rows.append({"name": info.name, "status": info.effective_status, "steps": steps,
                     "seeds": stages.get(info.name, {}), "culls": culls, "events": info.last_position,
                     "first": _plain(first), "last": _plain(last), "created_at": info.created_at.isoformat(),
                     "host": info.host, "pid": info.pid, "owner": info.owner})
    return {"database": redact(url), "runs": rows}


def status(url: str, run: str | None = None) -> dict[str, Any]:
    """Every site of the run at the newest step its log records (what ``ex.status()`` shows live)."""
    from kasmina.status import log_status

    with _open(url, run) as store:
        return {"database": redact(url), **log_status(store).to_dict()}


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


def audit(url: str, query: str | None = None, run: str | None = None) -> dict[str, Any]:
    """A summary from the shipped views (every run's, or the named run's), or the rows of a
    read-only SQL query (which sees every run: the views have a ``run`` column)."""
    with _open_log(url) as store:
        if query is not None:
            if not _without_leading_comments(query).lower().startswith(_READ_ONLY_STARTS):
                raise KasminaError("audit --query runs read-only queries only (SELECT, WITH or EXPLAIN)")
            columns, rows = _query(store, query)
            return {"columns": columns, "rows": [list(map(_plain, r)) for r in rows]}
        if run is not None:
            store.for_run(run)  # an unknown run is one line, not an empty summary
        where, params = ("WHERE run = :run", {"run": run}) if run is not None else ("", {})
        also = "AND run = :run" if run is not None else ""
        _, seeds = _query(store, "SELECT run, seed_id, stage, generation, since_step, since_position "
                                 f"FROM seed_current_stage {where} ORDER BY run, seed_id", params)
        _, culls = _query(store, "SELECT gate, reason, COUNT(*) FROM seed_transitions WHERE to_stage = 'CULLED' "
                                 f"{also} GROUP BY gate, reason ORDER BY COUNT(*) DESC, reason", params)
        _, refusals = _query(store, f"SELECT reason, COUNT(*) FROM command_refusals {where} GROUP BY reason "
                                    "ORDER BY COUNT(*) DESC, reason", params)
        _, contributions = _query(store, "SELECT run, seed_id, step, stage, to_stage, loss_with, loss_without, "
                                         f"contribution, threshold FROM seed_contributions {where} "
                                         "ORDER BY run, position", params)
        infos = [i for i in store.runs() if run is None or i.name == run]
    return {
        "database": redact(url), "run": run, "runs": len(infos), "events": sum(i.last_position for i in infos),
        "head_hash": infos[0].last_hash if len(infos) == 1 else None,
        "seeds": [dict(zip(("run", "seed_id", "stage", "generation", "since_step", "since_position"), r))
                  for r in seeds],
        "culls": [{"gate": g, "reason": r, "count": n} for g, r, n in culls],
        "refusals": [{"reason": r, "count": n} for r, n in refusals],
        "contributions": [dict(zip(("run", "seed_id", "step", "stage", "to_stage", "loss_with", "loss_without",
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
