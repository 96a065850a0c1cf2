"""The tamper-evident hash chain over the event log.

Each event's hash covers its previous event's hash and every stored field, in a canonical
JSON form that survives a round trip through the JSON text columns of SQLite and Postgres
(sorted keys, microsecond UTC timestamps). ``kasmina verify`` recomputes it.
"""

from __future__ import annotations

import hashlib
from json.encoder import encode_basestring_ascii as _string
from datetime import datetime, timezone
from typing import Any, Mapping

from kasmina.lifecycle.state import canonical_json

GENESIS = "0" * 64


def timestamp_text(moment: datetime) -> str:
    """UTC, microseconds, no offset: naive datetimes are taken to be UTC already."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds")


def event_hash(prev_hash: str, *, position: int, stream_id: str, version: int, event_type: str,
               schema_version: int, command_id: str | None, timestamp: str, payload_text: str) -> str:
    """The chain step, from texts the store already has (its hot path: no JSON encoding).

    The hashed body is exactly ``canonical_json([position, stream_id, version, event_type,
    schema_version, command_id, timestamp, payload])``, spelled out with the same escaping.
    """
    cid = "null" if command_id is None else _string(command_id)
    body = (f"[{position},{_string(stream_id)},{version},{_string(event_type)},{schema_version},"
            f"{cid},{_string(timestamp)},{payload_text}]")
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


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
    """The chain step from a stored event's fields (what ``verify`` recomputes)."""
    return event_hash(prev_hash, position=position, stream_id=stream_id, version=version, event_type=event_type,
                      schema_version=schema_version, command_id=command_id, timestamp=timestamp_text(recorded_at),
                      payload_text=canonical_json(payload))
