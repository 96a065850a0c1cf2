"""The database-enforced append-only guard on ``kasmina_events``, shared by the migrations
that create the table (0001) and rebuild it (0003 on SQLite, which cannot alter a key)."""

from __future__ import annotations

from alembic import op


def create() -> None:
    """Refuse UPDATE, DELETE (and on Postgres TRUNCATE) of events: not Kasmina's good manners."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
            CREATE FUNCTION kasmina_refuse_mutation() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'kasmina_events is append-only: % refused', TG_OP;
            END $$""")
        op.execute("""CREATE TRIGGER kasmina_events_append_only BEFORE UPDATE OR DELETE ON kasmina_events
                      FOR EACH ROW EXECUTE FUNCTION kasmina_refuse_mutation()""")
        op.execute("""CREATE TRIGGER kasmina_events_no_truncate BEFORE TRUNCATE ON kasmina_events
                      FOR EACH STATEMENT EXECUTE FUNCTION kasmina_refuse_mutation()""")
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(f"""CREATE TRIGGER kasmina_events_no_{action.lower()} BEFORE {action} ON kasmina_events
                           BEGIN SELECT RAISE(ABORT, 'kasmina_events is append-only: {action} refused'); END""")


def drop() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS kasmina_events_append_only ON kasmina_events")
        op.execute("DROP TRIGGER IF EXISTS kasmina_events_no_truncate ON kasmina_events")
        op.execute("DROP FUNCTION IF EXISTS kasmina_refuse_mutation()")
    else:
        op.execute("DROP TRIGGER IF EXISTS kasmina_events_no_update")
        op.execute("DROP TRIGGER IF EXISTS kasmina_events_no_delete")
