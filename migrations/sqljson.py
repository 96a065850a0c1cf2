"""SQL that reads JSON payload keys, per dialect: shared by the migrations that define views."""

from __future__ import annotations

from alembic import op


def field(path: str) -> str:
    """One payload key (``"reason"``) or nested key (``"inputs.contribution"``) as text."""
    keys = path.split(".")
    if op.get_bind().dialect.name == "postgresql":
        head = "".join(f"->'{k}'" for k in keys[:-1])
        return f"payload{head}->>'{keys[-1]}'"
    return f"json_extract(payload, '$.{path}')"


def flag(name: str) -> str:
    """A JSON boolean as 1/0 on both dialects (SQLite's json_extract already gives 1/0)."""
    if op.get_bind().dialect.name == "postgresql":
        return f"CASE payload->>'{name}' WHEN 'true' THEN 1 WHEN 'false' THEN 0 END"
    return f"json_extract(payload, '$.{name}')"
