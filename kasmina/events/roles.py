"""Database roles for a shared PostgreSQL log: who may write where (``kasmina db grant``).

The migration's role (the *admin*) owns the tables and is not subject to row-level
security, so training jobs and auditors get roles of their own:

* a **job** role may create runs, which it then owns, append to and snapshot them, and
  read them back; row-level security hides every other role's runs from it and refuses
  its writes into them;
* an **auditor** role reads every run (it is listed in ``kasmina_auditors``, which the
  policies consult) and may write nothing: it holds ``SELECT`` only.

:func:`grant` makes a role exactly one of the two (granting one kind takes back what the
other kind had) and may be run again at no harm; :func:`revoke` takes everything back.
Both return the statements they ran, for the CLI to print. The policies themselves are
made by migration ``0003_runs`` (docs/postgres.md, "Who may write where").
"""

from __future__ import annotations

from typing import Any

from kasmina.errors import BadDatabaseURL, KasminaError
from kasmina.events.urls import parse, redact

#: The columns a job may give when it creates a run: not ``run_id`` (the sequence's: one
#: picked by hand would make a later run's insert collide) nor ``owner`` (its default,
#: ``current_user``, is what row-level security checks).
RUN_COLUMNS_INSERTED = ("name", "created_at", "updated_at", "config", "host", "pid", "status", "last_position",
                        "last_hash")
#: What ``mark_run`` and an append update in a run's row; the rest of it (name, owner,
#: created_at) a job may not change once the row exists.
RUN_COLUMNS_UPDATED = ("updated_at", "config", "host", "pid", "status", "last_position", "last_hash")
#: The columns a job may give when it appends: not ``tx``, whose default (the writing
#: transaction's id) is the order across runs; a hand-picked one below a follower's cursor
#: would hide the event from every follower of all runs.
EVENT_COLUMNS_INSERTED = ("run_id", "position", "stream_id", "version", "event_type", "schema_version",
                          "command_id", "recorded_at", "payload", "prev_hash", "hash")
_READ_ONLY = ("alembic_version", "kasmina_auditors")
_TABLES = ("alembic_version", "kasmina_runs", "kasmina_auditors", "kasmina_events", "kasmina_snapshots")
#: Postgres 15 is the first whose views can run with the caller's rights (security_invoker).
INVOKER_VIEWS_SINCE = 150000
_MAX_NAME = 63  # NAMEDATALEN - 1: Postgres truncates longer names, so a longer one names another role


def grant(url: str, role: str, *, auditor: bool = False) -> list[str]:
    """Give ``role`` what a training job needs on the log at ``url`` (or, with ``auditor``,
    read-only access to every run); run as the log's admin. Returns the statements run."""
    return _apply(url, role, "grant --auditor" if auditor else "grant",
                  lambda ctx: _auditor_statements(ctx) if auditor else _job_statements(ctx))


def revoke(url: str, role: str) -> list[str]:
    """Take back everything :func:`grant` gave ``role`` (its runs and their events stay)."""
    return _apply(url, role, "revoke", _revoke_statements)


# -- the statements ---------------------------------------------------------------------

class _Context:
    """What the statements are built from: the role, the schema and the server."""

    def __init__(self, role: str, schema: str, sequence: str | None, views: list[str], invoker_views: bool,
                 has_writes: bool, is_auditor: bool) -> None:
        from psycopg import sql

        self.sql = sql
        self.role = sql.Identifier(role)
        self.role_name = role
        self.schema_name = schema
        self.schema = sql.Identifier(schema)
        self.sequence = sequence  # regclass text, already quoted by the server
        self.views = views
        self.invoker_views = invoker_views
        self.has_writes = has_writes
        self.is_auditor = is_auditor

    def table(self, name: str) -> Any:
        return self.sql.Identifier(self.schema_name, name)

    def on(self, privileges: str, names: tuple[str, ...] | list[str]) -> Any:
        sql = self.sql
        return sql.SQL("GRANT {} ON {} TO {}").format(
            sql.SQL(privileges), sql.SQL(", ").join(self.table(n) for n in names), self.role)

    def off(self, privileges: str, names: tuple[str, ...] | list[str]) -> Any:
        sql = self.sql
        return sql.SQL("REVOKE {} ON {} FROM {}").format(
            sql.SQL(privileges), sql.SQL(", ").join(self.table(n) for n in names), self.role)

    def sequence_stmt(self, verb: str) -> list[Any]:
        if self.sequence is None:
            return []
        sql = self.sql
        middle = "TO" if verb == "GRANT" else "FROM"
        return [sql.SQL(f"{verb} USAGE ON SEQUENCE {{}} {middle} {{}}").format(sql.SQL(self.sequence), self.role)]

    def auditors(self, insert: bool) -> Any:
        sql = self.sql
        if insert:
            return sql.SQL("INSERT INTO {} (role_name) VALUES ({}) ON CONFLICT DO NOTHING").format(
                self.table("kasmina_auditors"), sql.Literal(self.role_name))
        return sql.SQL("DELETE FROM {} WHERE role_name = {}").format(
            self.table("kasmina_auditors"), sql.Literal(self.role_name))


def _job_statements(ctx: _Context) -> list[Any]:
    sql = ctx.sql
    out = []
    if ctx.is_auditor:  # a job is not an auditor: it would read every run
        out.append(ctx.auditors(insert=False))
    out += [
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ctx.schema, ctx.role),
        ctx.on("SELECT", _READ_ONLY),
        ctx.on(f"SELECT, INSERT ({', '.join(RUN_COLUMNS_INSERTED)}), UPDATE ({', '.join(RUN_COLUMNS_UPDATED)})",
               ("kasmina_runs",)),
        *ctx.sequence_stmt("GRANT"),
        ctx.on(f"SELECT, INSERT ({', '.join(EVENT_COLUMNS_INSERTED)})", ("kasmina_events",)),
        ctx.on("SELECT, INSERT", ("kasmina_snapshots",)),
    ]
    # Before 15 a view runs with its owner's rights, past row-level security: a job reading
    # one would see every run, so it gets none (the admin and auditors still query them).
    if ctx.views:
        out.append(ctx.on("SELECT", ctx.views) if ctx.invoker_views else ctx.off("ALL", ctx.views))
    return out


def _auditor_statements(ctx: _Context) -> list[Any]:
    sql = ctx.sql
    out = []
    if ctx.has_writes:  # an auditor writes nothing: take back a job's (or anyone's) writes
        out.append(ctx.off("INSERT, UPDATE, DELETE, TRUNCATE", _TABLES))
        out += ctx.sequence_stmt("REVOKE")
    out += [
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ctx.schema, ctx.role),
        ctx.on("SELECT", _TABLES + tuple(ctx.views)),
        ctx.auditors(insert=True),
    ]
    return out


def _revoke_statements(ctx: _Context) -> list[Any]:
    sql = ctx.sql
    return [
        ctx.auditors(insert=False),
        ctx.off("ALL", _TABLES + tuple(ctx.views)),
        *ctx.sequence_stmt("REVOKE"),
        sql.SQL("REVOKE USAGE ON SCHEMA {} FROM {}").format(ctx.schema, ctx.role),
    ]


# -- running them -----------------------------------------------------------------------

def _check_role_name(role: object) -> str:
    if not isinstance(role, str) or not role or len(role.encode()) > _MAX_NAME or "\x00" in role:
        raise KasminaError(f"a database role name is 1-{_MAX_NAME} bytes without NUL, got {role!r}")
    return role


def _apply(url: str, role: str, action: str, build: Any) -> list[str]:
    from kasmina.events import open_store
    from kasmina.events.sql import SQLEventStore

    role = _check_role_name(role)
    if parse(url).backend != "postgresql":
        raise BadDatabaseURL(f"db {action}: database roles exist on PostgreSQL only, not {redact(url)}; "
                             "a SQLite or memory log is as open as its file")
    # Not bound to a run: the caller may see none (and then must not be granting anything).
    store = open_store(url, check_schema=False)
    assert isinstance(store, SQLEventStore)
    try:
        store.check_schema()  # refuses, in one line, a database that is not a Kasmina log at head
        with store._errors(f"db {action}"), store.engine.connect() as conn, conn.begin():
            raw = conn.connection.dbapi_connection
            ctx = _context(raw, role, action, redact(url))
            statements = build(ctx)
            texts = []
            with raw.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
                    texts.append(statement.as_string(raw))
        return texts
    finally:
        store.close()


def _context(raw: Any, role: str, action: str, where: str) -> _Context:
    with raw.cursor() as cursor:
        cursor.execute(
            "SELECT n.nspname, c.relowner::regrole::text, pg_has_role(current_user, c.relowner, 'USAGE'), "
            "current_user, pg_get_serial_sequence(c.oid::regclass::text, 'run_id'), "
            "current_setting('server_version_num')::int "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = to_regclass('kasmina_runs')")
        schema, owner, admin, me, sequence, version = cursor.fetchone()
        if not admin:
            raise KasminaError(f"db {action} must be run as the log's admin role {owner!r} (the owner of its "
                               f"tables), not as {me!r}")
        cursor.execute("SELECT rolsuper, rolbypassrls, pg_has_role(rolname, %s::regrole, 'MEMBER') "
                       "FROM pg_roles WHERE rolname = %s", (owner, role))
        found = cursor.fetchone()
        if found is None:
            raise KasminaError(f"db {action}: no database role {role!r} on the server of {where}; create it "
                               f"first (CREATE ROLE {_quote(role)} LOGIN PASSWORD '...')")
        superuser, bypass, member = found
        if action != "revoke" and (superuser or bypass or member):
            why = ("is a superuser" if superuser else "has BYPASSRLS" if bypass
                   else f"is (or may become) the admin role {owner!r}")
            raise KasminaError(f"db {action}: role {role!r} {why}, so row-level security does not apply to it; "
                               "give each job and auditor a plain role of its own")
        cursor.execute("SELECT c.relname FROM pg_class c WHERE c.relkind = 'v' AND c.relnamespace = %s::regnamespace "
                       "AND c.relname = ANY(%s)", (_quote(schema), list(_view_names())))
        present = {row[0] for row in cursor.fetchall()}
        views = [name for name in _view_names() if name in present]
        cursor.execute("SELECT bool_or(has_table_privilege(%s, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') "
                       "OR has_any_column_privilege(%s, c.oid, 'INSERT, UPDATE')) "
                       "FROM pg_class c WHERE c.relnamespace = %s::regnamespace AND c.relname = ANY(%s)",
                       (role, role, _quote(schema), list(_TABLES)))
        has_writes = bool(cursor.fetchone()[0])
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {_quote(schema)}.kasmina_auditors WHERE role_name = %s)",
                       (role,))
        is_auditor = bool(cursor.fetchone()[0])
    return _Context(role, schema, sequence, views, version >= INVOKER_VIEWS_SINCE, has_writes, is_auditor)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _view_names() -> tuple[str, ...]:
    from kasmina.migrations import views

    return views.NAMES + views.RUN_NAMES
