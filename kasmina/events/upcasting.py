"""Upcasters: events written by an older schema version still replay.

Each entry maps ``(event_type, from_version)`` to a pure function that returns the event
one version newer; :func:`upcast` applies them step by step. Stored rows are never
rewritten (the log is append-only), so old events are upcast every time they are read.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

CURRENT_SCHEMA = 2

Upcaster = Callable[[Mapping[str, Any]], tuple[str, Mapping[str, Any]]]


def _stage_changed_v1(data: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """Schema 1 called the deciding gate's reason ``why`` and had no ``passed`` field."""
    new = {k: v for k, v in data.items() if k != "why"}
    new["reason"] = data.get("why", "")
    new.setdefault("passed", True if data.get("gate") else None)
    return "stage_changed", new


UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("stage_changed", 1): _stage_changed_v1,
}


def upcast(event_type: str, data: Mapping[str, Any], schema_version: int) -> tuple[str, Mapping[str, Any]]:
    if schema_version > CURRENT_SCHEMA:
        raise ValueError(
            f"event schema {schema_version} is newer than this kasmina understands ({CURRENT_SCHEMA})"
        )
    while schema_version < CURRENT_SCHEMA:
        step = UPCASTERS.get((event_type, schema_version))
        if step is not None:
            event_type, data = step(data)
        schema_version += 1
    return event_type, data
