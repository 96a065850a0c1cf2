"""The tamper-evident hash chain over the event log.

Each event's hash covers its previous event's hash and every stored field, in a canonical
JSON form that survives a round trip through the JSON text columns of SQLite and Postgres
(sorted keys, microsecond UTC timestamps). ``kasmina verify`` recomputes it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any, Mapping

from kasmina.lifecycle.state import canonical_json

GENESIS = "0" * 64


def timestamp_text(moment: datetime) -> str:
    """UTC, microseconds, no offset: naive datetimes are taken to be UTC already."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds")


def chain_hash(
    prev_hash: str,
    *,
    position: int,
    stream_id: str,
    version: int,
    event_type: str,
    schema_version: int,
    command_id: str | None,
    recorded_at: datetime,
    payload: Mapping[str, Any],
) -> str:
    body = canonical_json(
        [position, stream_id, version, event_type, schema_version, command_id,
         timestamp_text(recorded_at), payload]
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()
