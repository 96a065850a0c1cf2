"""Where packets go: in memory (default, tests, in-process use) or Redis Streams.

The Redis sink never lets Redis trouble reach training: a failed publish buffers the packet
(bounded; overflow dropped and counted) and retries no more often than every ``retry_s``,
with short socket timeouts. Each packet is published exactly once: a Lua script sets a
per-packet marker (``SET NX``) and adds the stream entry in one atomic step, so a retry of
a packet Redis already took (a timeout after the write) adds nothing.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any, Protocol

from kasmina import leyline


class Sink(Protocol):
    #: Packets that reached each stream (after any buffering).
    published: Counter[str]

    def publish(self, stream: str, packet: leyline.TelemetryPacket) -> bool: ...


class MemorySink:
    """Keeps every packet, in publish order."""

    def __init__(self) -> None:
        self.packets: list[tuple[str, leyline.TelemetryPacket]] = []
        self.published: Counter[str] = Counter()

    def publish(self, stream: str, packet: leyline.TelemetryPacket) -> bool:
        self.packets.append((stream, packet))
        self.published[stream] += 1
        return True

    def stream(self, name: str) -> list[leyline.TelemetryPacket]:
        return [p for s, p in self.packets if s == name]


# KEYS[1] marker, KEYS[2] stream; ARGV: ttl, maxlen, packet_id, priority, payload.
# The marker is set only after XADD succeeded: a refused XADD (WRONGTYPE, OOM) leaves none,
# so the packet is never taken for published.
_PUBLISH_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[2]), '*',
                      'packet_id', ARGV[3], 'priority', ARGV[4], 'packet', ARGV[5])
redis.call('SET', KEYS[1], '1', 'EX', tonumber(ARGV[1]))
return id
"""


class RedisSink:
    """Redis Streams (``XADD ... MAXLEN ~``), buffered across outages."""

    def __init__(self, url: str, *, maxlen: int = 10_000, buffer: int = 1000, retry_s: float = 1.0,
                 timeout_s: float = 0.25, dedupe_prefix: str = "kasmina:published:",
                 dedupe_ttl_s: int = 86_400, clock: Any = time.monotonic) -> None:
        self.maxlen, self.retry_s, self.timeout_s = maxlen, retry_s, timeout_s
        self.dedupe_prefix, self.dedupe_ttl_s, self.clock = dedupe_prefix, dedupe_ttl_s, clock
        self._pending: deque[tuple[str, leyline.TelemetryPacket]] = deque()
        self._capacity = buffer
        self.dropped = 0
        self.published: Counter[str] = Counter()
        self.last_error: str | None = None
        self._retry_at = 0.0
        self._client: Any = None
        self._script: Any = None
        self.url = url

    @property
    def url(self) -> str:
        return self._url

    @url.setter
    def url(self, url: str) -> None:
        import redis

        self._url = url
        if self._client is not None:
            self._client.close()
        self._client = redis.Redis.from_url(url, socket_timeout=self.timeout_s,
                                            socket_connect_timeout=self.timeout_s)
        self._script = self._client.register_script(_PUBLISH_ONCE)
        self._retry_at = 0.0

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def publish(self, stream: str, packet: leyline.TelemetryPacket) -> bool:
        """Publish (after anything still buffered); False if it had to be buffered."""
        self._pending.append((stream, packet))
        while len(self._pending) > self._capacity:
            self._pending.popleft()
            self.dropped += 1
        return self.drain() and not self._pending

    def drain(self) -> bool:
        """Try to publish what is buffered; False while Redis is away."""
        import redis

        if self._pending and self.clock() < self._retry_at:
            return False
        while self._pending:
            stream, packet = self._pending[0]
            priority = leyline.MessagePriority.Name(_priority(packet)).removeprefix("MESSAGE_PRIORITY_")
            try:
                self._script(keys=[self.dedupe_prefix + packet.packet_id, stream],
                             args=[self.dedupe_ttl_s, self.maxlen, packet.packet_id, priority,
                                   packet.SerializeToString()])
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                self.last_error = str(e).splitlines()[0] if str(e) else type(e).__name__
                self._retry_at = self.clock() + self.retry_s
                return False
            except redis.ResponseError as e:
                # Redis answered but refused this packet (wrong key type, out of memory):
                # retrying cannot help, and it must not block the packets behind it.
                self.last_error = str(e).splitlines()[0]
                self._pending.popleft()
                self.dropped += 1
                continue
            self._pending.popleft()
            self.published[stream] += 1
        self.last_error = None
        return True

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _priority(packet: leyline.TelemetryPacket) -> int:
    name = packet.system_health.indicators.get("priority", "MESSAGE_PRIORITY_NORMAL")
    return leyline.MessagePriority.Value(name) if name in leyline.MessagePriority.keys() else 2
