"""Runs: many training jobs in one log, each with its own positions, streams and hash chain.

Revision ID: 0003_runs
Revises: 0002_seed_contributions

Upgrade: the existing events become run 1, ``default``; their positions, versions and
hashes are unchanged, so an old log verifies as before. Their ``tx`` is 0, before
anything written later. On Postgres the tables are altered in place (the append-only
trigger stays; ALTER TABLE fires no row triggers) and row-level security is switched
on; SQLite cannot change a primary key, so there the tables are rebuilt by copy.

Downgrade: refused while any run but ``default`` has events, since one run's log cannot
hold them (their positions and hash chains would collide).
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

from kasmina.migrations import appendonly, views

revision = "0003_runs"
down_revision = "0002_seed_contributions"
branch_labels = None
depends_on = None

Payload = sa.JSON
GENESIS = "0" * 64

_EVENT_COLUMNS = ("position, stream_id, version, event_type, schema_version, command_id, recorded_at, "
                  "payload, prev_hash, hash")
_SNAPSHOT_COLUMNS = "stream_id, version, position, state_schema, state, created_at"


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _event_columns() -> list[sa.Column]:
    return [
        sa.Column("stream_id", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("schema_version", sa.SmallInteger, nullable=False),
        sa.Column("command_id", sa.String(255), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", Payload, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    ]


def _snapshot_columns() -> list[sa.Column]:
    return [
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("state_schema", sa.SmallInteger, nullable=False),
        sa.Column("state", Payload, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    ]


def _command_index(runs: bool) -> None:
    op.create_index("ix_kasmina_events_command_id", "kasmina_events",
                    ["run_id", "command_id"] if runs else ["command_id"],
                    sqlite_where=sa.text("command_id IS NOT NULL"),
                    postgresql_where=sa.text("command_id IS NOT NULL"))


def _copy(table: str, new_columns: list, columns: str, select: str) -> None:
    """Rebuild ``table`` as ``new_columns`` holding ``SELECT select FROM table``."""
    op.create_table(f"{table}_new", *new_columns)
    op.execute(f"INSERT INTO {table}_new ({columns}) SELECT {select} FROM {table}")
    op.drop_table(table)
    op.rename_table(f"{table}_new", table)


def _run_fk(table: str) -> sa.ForeignKey:
    return sa.ForeignKey("kasmina_runs.run_id", name=f"fk_{table}_run")


# -- upgrade --------------------------------------------------------------------------------

def _create_runs() -> None:
    op.create_table(
        "kasmina_runs",
        sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("config", Payload, nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("pid", sa.Integer, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(128), nullable=True,
                  server_default=sa.text("current_user") if _postgres() else None),
        sa.Column("last_position", sa.BigInteger, nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("name", name="uq_kasmina_runs_name"),
        sa.CheckConstraint("status IN ('running', 'finished', 'crashed')", name="ck_kasmina_runs_status"),
    )
    op.create_table("kasmina_auditors", sa.Column("role_name", sa.String(128), primary_key=True))
    bind = op.get_bind()
    first, last = bind.execute(sa.text("SELECT MIN(recorded_at), MAX(recorded_at) FROM kasmina_events")).one()
    tail = bind.execute(sa.text("SELECT position, hash FROM kasmina_events ORDER BY position DESC LIMIT 1")).first()
    now = datetime.now(timezone.utc)
    first, last = (datetime.fromisoformat(t) if isinstance(t, str) else t for t in (first, last))  # SQLite: text
    runs = sa.table("kasmina_runs", sa.column("name"), sa.column("created_at", sa.DateTime(timezone=True)),
                    sa.column("updated_at", sa.DateTime(timezone=True)), sa.column("status"),
                    sa.column("last_position"), sa.column("last_hash"))
    # run_id comes from the key's own sequence (1), so later runs do not collide with it.
    bind.execute(runs.insert().values(
        name="default", created_at=first or now, updated_at=last or now, status="finished",
        last_position=tail[0] if tail else 0, last_hash=tail[1] if tail else GENESIS))


def _events_up() -> None:
    if _postgres():
        op.execute("ALTER TABLE kasmina_events ADD COLUMN run_id INTEGER NOT NULL DEFAULT 1")
        op.execute("ALTER TABLE kasmina_events ALTER COLUMN run_id DROP DEFAULT")
        op.execute("ALTER TABLE kasmina_events ADD COLUMN tx BIGINT NOT NULL DEFAULT 0")
        # Every later row gets its writing transaction's id (see kasmina/events/postgres.py).
        op.execute("ALTER TABLE kasmina_events ALTER COLUMN tx SET DEFAULT (pg_current_xact_id()::text::bigint)")
        op.execute("ALTER TABLE kasmina_events DROP CONSTRAINT kasmina_events_pkey")
        op.execute("ALTER TABLE kasmina_events ADD CONSTRAINT kasmina_events_pkey PRIMARY KEY (run_id, position)")
        op.drop_constraint("uq_kasmina_events_stream_version", "kasmina_events")
        op.create_unique_constraint("uq_kasmina_events_stream_version", "kasmina_events",
                                    ["run_id", "stream_id", "version"])
        op.drop_index("ix_kasmina_events_command_id", "kasmina_events")
        op.create_foreign_key("fk_kasmina_events_run", "kasmina_events", "kasmina_runs", ["run_id"], ["run_id"])
    else:
        appendonly.drop()
        _copy("kasmina_events", [
            sa.Column("run_id", sa.Integer, _run_fk("kasmina_events"), primary_key=True, autoincrement=False),
            sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
            *_event_columns(),
            sa.Column("tx", sa.BigInteger, nullable=False),
            sa.UniqueConstraint("run_id", "stream_id", "version", name="uq_kasmina_events_stream_version"),
        ], f"run_id, {_EVENT_COLUMNS}, tx", f"1, {_EVENT_COLUMNS}, 0")
        appendonly.create()
    _command_index(runs=True)
    op.create_index("ix_kasmina_events_tx", "kasmina_events", ["tx", "run_id", "position"])


def _snapshots_up() -> None:
    # A cache, small next to the events: rebuilt by copy on both backends.
    _copy("kasmina_snapshots", [
        sa.Column("run_id", sa.Integer, _run_fk("kasmina_snapshots"), primary_key=True, autoincrement=False),
        sa.Column("stream_id", sa.String(255), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        *_snapshot_columns(),
    ], f"run_id, {_SNAPSHOT_COLUMNS}", f"1, {_SNAPSHOT_COLUMNS}")
    op.create_index("ix_kasmina_snapshots_position", "kasmina_snapshots", ["run_id", "stream_id", "position"])


#: Row-level security (Postgres): a role sees and writes the runs it owns; a role listed in
#: kasmina_auditors reads every run. Privileges decide who may write at all (docs/postgres.md).
#: The tables' owner (the role that ran the migration) is not subject to these policies.
_AUDITOR = "EXISTS (SELECT 1 FROM kasmina_auditors a WHERE a.role_name = current_user)"
_OWN_RUN = "run_id IN (SELECT o.run_id FROM kasmina_runs o WHERE o.owner = current_user)"
_POLICIES = (
    ("kasmina_runs", "read", "SELECT", f"USING (owner = current_user OR {_AUDITOR})"),
    ("kasmina_runs", "create", "INSERT", "WITH CHECK (owner = current_user)"),
    ("kasmina_runs", "update", "UPDATE", "USING (owner = current_user) WITH CHECK (owner = current_user)"),
    ("kasmina_events", "read", "SELECT", f"USING ({_OWN_RUN} OR {_AUDITOR})"),
    ("kasmina_events", "append", "INSERT", f"WITH CHECK ({_OWN_RUN})"),
    ("kasmina_snapshots", "read", "SELECT", f"USING ({_OWN_RUN} OR {_AUDITOR})"),
    ("kasmina_snapshots", "save", "INSERT", f"WITH CHECK ({_OWN_RUN})"),
)
_RLS_TABLES = ("kasmina_runs", "kasmina_events", "kasmina_snapshots")


def upgrade() -> None:
    views.drop(views.NAMES)
    _create_runs()
    _events_up()
    _snapshots_up()
    if _postgres():
        for table in _RLS_TABLES:
            op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        for table, name, action, rule in _POLICIES:
            op.execute(f"CREATE POLICY {table}_{name} ON {table} FOR {action} {rule}")
    views.create(views.NAMES + views.RUN_NAMES, runs=True)


# -- downgrade ------------------------------------------------------------------------------

def _refuse_many_runs() -> None:
    rows = op.get_bind().execute(sa.text(
        "SELECT r.name, COUNT(*) FROM kasmina_events e JOIN kasmina_runs r ON r.run_id = e.run_id "
        "WHERE r.name <> 'default' GROUP BY r.name ORDER BY r.name")).all()
    if rows:
        from kasmina.errors import SchemaMismatch

        held = ", ".join(f"{name!r} ({count} events)" for name, count in rows[:10])
        more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
        raise SchemaMismatch(
            f"downgrade below 0003_runs refused: the log holds runs other than 'default': {held}{more}; "
            "a log before runs holds one run only")


def downgrade() -> None:
    _refuse_many_runs()
    views.drop(views.NAMES + views.RUN_NAMES)
    if _postgres():
        for table, name, _, _ in _POLICIES:
            op.execute(f"DROP POLICY IF EXISTS {table}_{name} ON {table}")
        for table in _RLS_TABLES:
            op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.execute("DELETE FROM kasmina_snapshots WHERE run_id <> 1")
    op.drop_index("ix_kasmina_snapshots_position", "kasmina_snapshots")
    _copy("kasmina_snapshots", [
        sa.Column("stream_id", sa.String(255), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        *_snapshot_columns(),
    ], _SNAPSHOT_COLUMNS, _SNAPSHOT_COLUMNS)
    op.create_index("ix_kasmina_snapshots_position", "kasmina_snapshots", ["stream_id", "position"])
    op.drop_index("ix_kasmina_events_tx", "kasmina_events")
    op.drop_index("ix_kasmina_events_command_id", "kasmina_events")
    if _postgres():
        op.drop_constraint("fk_kasmina_events_run", "kasmina_events", type_="foreignkey")
        op.execute("ALTER TABLE kasmina_events DROP CONSTRAINT kasmina_events_pkey")
        op.execute("ALTER TABLE kasmina_events ADD CONSTRAINT kasmina_events_pkey PRIMARY KEY (position)")
        op.drop_constraint("uq_kasmina_events_stream_version", "kasmina_events")
        op.create_unique_constraint("uq_kasmina_events_stream_version", "kasmina_events", ["stream_id", "version"])
        op.execute("ALTER TABLE kasmina_events DROP COLUMN tx")
        op.execute("ALTER TABLE kasmina_events DROP COLUMN run_id")
    else:
        appendonly.drop()
        _copy("kasmina_events", [
            # INTEGER: the position is the rowid again, as 0001 made it.
            sa.Column("position", sa.Integer, primary_key=True, autoincrement=False),
            *_event_columns(),
            sa.UniqueConstraint("stream_id", "version", name="uq_kasmina_events_stream_version"),
        ], _EVENT_COLUMNS, _EVENT_COLUMNS)
        appendonly.create()
    _command_index(runs=False)
    op.drop_table("kasmina_auditors")
    op.drop_table("kasmina_runs")
    views.create(views.NAMES, runs=False)
