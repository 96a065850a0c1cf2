"""``kasmina telemetry tail``: follow the telemetry streams in Redis as packets arrive."""

from __future__ import annotations

import time
from typing import Any, Iterator

from kasmina import leyline
from kasmina.errors import KasminaError


def describe(stream: str, packet: leyline.TelemetryPacket) -> dict[str, Any]:
    """A JSON-ready summary of one packet."""
    return {
        "stream": stream,
        "packet_id": packet.packet_id,
        "priority": packet.system_health.indicators.get("priority", "").removeprefix("MESSAGE_PRIORITY_"),
        "level": leyline.TelemetryLevel.Name(packet.level).removeprefix("TELEMETRY_LEVEL_"),
        "step": packet.system_health.indicators.get("step", ""),
        "events": [{"type": e.description, "level": leyline.TelemetryLevel.Name(e.level).removeprefix("TELEMETRY_LEVEL_"),
                    **dict(e.attributes)} for e in packet.events],
        "metrics": {f"{m.name}{'[' + m.attributes['seed_id'] + ']' if 'seed_id' in m.attributes else ''}": m.value
                    for m in packet.metrics},
    }


def tail(url: str, streams: list[str], *, count: int | None = None, from_start: bool = False,
         idle_timeout_s: float | None = None, block_ms: int = 500) -> Iterator[dict[str, Any]]:
    """Yield packets from ``streams`` as they arrive (oldest first with ``from_start``)."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2.0)
        client.ping()
    except (redis.RedisError, ValueError, OSError) as e:
        raise KasminaError(f"cannot reach Redis at {url}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    cursors = {s: ("0-0" if from_start else "$") for s in streams}
    seen, last_seen = 0, time.monotonic()
    try:
        while count is None or seen < count:
            try:
                batch = client.xread(cursors, block=block_ms, count=100)
            except redis.RedisError as e:
                raise KasminaError(f"lost Redis at {url}: {str(e).splitlines()[0]}") from e
            if not batch:
                if idle_timeout_s is not None and time.monotonic() - last_seen > idle_timeout_s:
                    return
                continue
            last_seen = time.monotonic()
            for stream, entries in batch:
                name = stream.decode() if isinstance(stream, bytes) else stream
                for entry_id, fields in entries:
                    cursors[name] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    yield describe(name, leyline.TelemetryPacket.FromString(fields[b"packet"]))
                    seen += 1
                    if count is not None and seen >= count:
                        return
    finally:
        client.close()
