"""PostgreSQL backend: one log shared by several processes (ranks, followers, auditors).

Total, gap-free order with many writers: every append takes one transaction-scoped advisory
lock (``pg_advisory_xact_lock``) before it reads the last position, and holds it until
commit. Writers therefore commit in position order, so a reader that has seen position N can never
later find an N-1 that committed after it (the failure mode of plain sequences, which also
leave gaps on rollback). See https://www.postgresql.org/docs/current/explicit-locking.html#ADVISORY-LOCKS.
"""

from __future__ import annotations

from sqlalchemy import Engine, create_engine

from kasmina.events import codec
from kasmina.events.sql import SQLEventStore
from kasmina.events.urls import ParsedURL

CONNECT_TIMEOUT_S = 5


def make_engine(parsed: ParsedURL) -> Engine:
    assert parsed.url is not None
    return create_engine(
        parsed.url,
        pool_pre_ping=True,
        json_deserializer=codec.loads,  # jsonb payloads: psycopg decodes them with it (replay speed)
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "kasmina"},
    )


class PostgresEventStore(SQLEventStore):
    dialect_label = "postgresql"
