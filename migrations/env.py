"""Alembic environment for Kasmina's event log.

``kasmina db upgrade`` builds the Alembic config in code and hands its open connection over
in ``config.attributes["connection"]``, so the SQLite PRAGMAs and the transaction are the
store's own. Running ``alembic`` by hand with ``-x url=...`` also works.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from kasmina.events.schema import metadata

config = context.config


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database URL: pass -x url=... or use 'kasmina db upgrade --db URL'")
    with create_engine(url).connect() as conn:
        _run(conn)
