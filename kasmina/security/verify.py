"""Command verification: signature, nonce (command_id) and freshness, failing closed.

Why: a command moves a seed through its lifecycle and therefore the model being trained;
only commands a key holder signed recently, and only once, may do that.

:meth:`Verifier.check` returns ``None`` for an acceptable command or exactly one reason
string (the constants below, defined here and nowhere else). Checks run in this order, the
first failure wins:

1. ``verifier_unavailable``: the keyring is empty. Fail closed: every command is refused.
2. ``oversized_command``: more than :data:`MAX_ANNOTATIONS` annotations, an annotation
   value longer than :data:`MAX_ANNOTATION_VALUE_CHARS` characters, a ``command_id``
   longer than :data:`MAX_COMMAND_ID_CHARS` characters, or a serialized size above
   :data:`MAX_COMMAND_BYTES`. Checked before the HMAC so a huge message costs nothing.
3. ``missing_signature``: no (or an empty) ``annotations["signature"]``.
4. ``unknown_key``: ``annotations["key_id"]`` names a key the keyring does not hold, or
   the command names no key and the keyring has neither a plain nor a default key.
5. ``invalid_signature``: the signature is not the base64 HMAC of the signed payload
   (covers bad base64, wrong key, and any field changed after signing).
6. ``missing_command_id``: ``command_id`` is empty or holds a NUL character (which no
   log can store: PostgreSQL text refuses it); it is the nonce.
7. ``nonce_replayed``: the ``command_id`` is in the :class:`NonceLedger` (within its TTL).
8. ``missing_timestamp``: ``issued_at`` is unset.
9. ``issued_in_future``: ``issued_at`` more than ``future_skew_s`` ahead of the clock.
   ``stale_command``: ``issued_at`` more than ``freshness_s`` behind the clock.
   Both bounds are inclusive: exactly ``freshness_s`` old, or exactly ``future_skew_s``
   ahead, is still accepted.

Nonce policy (a deliberate difference from Esper, which registers the nonce before the
timestamp checks so a stale command consumes it): ``check`` never records anything. Only
a command that passed every check and was durably recorded in the log is remembered, by
the caller, via :meth:`Verifier.remember` / :meth:`NonceLedger.remember`. Reasons: the
ledger must be rebuildable from the log after a restart (:meth:`NonceLedger.load`), so it
can only contain what the log contains; and a forged or refused command must never burn a
legitimate command's id. A ``command_id`` already known is refused whatever else is true.
The caller must serialise check -> record -> remember (one command executor), otherwise two
copies of one command could both pass ``check`` before either is remembered.

Replay is fully closed as long as ``nonce_ttl_s >= freshness_s + future_skew_s`` (enforced
by the constructor): by the time a nonce is forgotten the command is stale anyway.

Clocks are wall-clock unix seconds (``time.time``), because ``issued_at`` is a protobuf
Timestamp issued by another machine; the clock is injectable for tests.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from kasmina.leyline import AdaptationCommand
from kasmina.security.keys import Keyring
from kasmina.security.signing import KEY_ID_ANNOTATION, SIGNATURE_ANNOTATION, signed_payload

logger = logging.getLogger(__name__)

# -- bounds -------------------------------------------------------------------------------
#: Largest accepted ``cmd.ByteSize()`` (64 KiB); real commands are a few hundred bytes.
MAX_COMMAND_BYTES = 64 * 1024
#: Longest accepted annotation value, in characters (Tamiyo's alpha_vec JSON is <= 1024).
MAX_ANNOTATION_VALUE_CHARS = 4096
#: Most annotations accepted on one command.
MAX_ANNOTATIONS = 64
#: Longest accepted ``command_id``, in characters: the log's ``command_id`` column is
#: VARCHAR(255), and a longer id could not be recorded (PostgreSQL refuses the row).
MAX_COMMAND_ID_CHARS = 255
#: Most command ids a :class:`NonceLedger` holds; beyond it the entries closest to expiry
#: are evicted. Reaching it needs > 1M accepted commands per TTL (3,333/s at 300 s).
MAX_NONCES = 1_000_000

# -- refusal reasons (the one definition) -------------------------------------------------
VERIFIER_UNAVAILABLE = "verifier_unavailable"
OVERSIZED_COMMAND = "oversized_command"
MISSING_SIGNATURE = "missing_signature"
UNKNOWN_KEY = "unknown_key"
INVALID_SIGNATURE = "invalid_signature"
MISSING_COMMAND_ID = "missing_command_id"
NONCE_REPLAYED = "nonce_replayed"
MISSING_TIMESTAMP = "missing_timestamp"
STALE_COMMAND = "stale_command"
ISSUED_IN_FUTURE = "issued_in_future"
#: Not a signature check: the executor refuses a signed command bound to another run.
WRONG_RUN = "wrong_run"
#: The annotation that binds a command to one run of a log (signed like every annotation).
RUN_ANNOTATION = "run"

REASONS: tuple[str, ...] = (
    VERIFIER_UNAVAILABLE, OVERSIZED_COMMAND, MISSING_SIGNATURE, UNKNOWN_KEY, INVALID_SIGNATURE,
    MISSING_COMMAND_ID, NONCE_REPLAYED, MISSING_TIMESTAMP, STALE_COMMAND, ISSUED_IN_FUTURE,
)

#: One human line per reason, for events and operator messages (never contains secrets).
REASON_MESSAGES: dict[str, str] = {
    VERIFIER_UNAVAILABLE: "no command signing key is configured (set KASMINA_SECRET or "
                          "KASMINA_SECRETS); every command is refused",
    OVERSIZED_COMMAND: f"the command exceeds a size limit: {MAX_COMMAND_BYTES} serialized bytes, "
                       f"{MAX_ANNOTATIONS} annotations, {MAX_ANNOTATION_VALUE_CHARS} characters per "
                       f"annotation value, {MAX_COMMAND_ID_CHARS} characters of command_id",
    MISSING_SIGNATURE: "the command carries no annotations['signature']",
    UNKNOWN_KEY: "the command's key_id is not in the keyring (or no default key exists)",
    INVALID_SIGNATURE: "the signature does not match the command (wrong key or tampered)",
    MISSING_COMMAND_ID: "the command has no usable command_id (its nonce): empty, or holding a NUL character",
    NONCE_REPLAYED: "this command_id was already executed (replay)",
    MISSING_TIMESTAMP: "the command has no issued_at timestamp",
    STALE_COMMAND: "the command was issued too long ago",
    ISSUED_IN_FUTURE: "the command's issued_at is too far in the future (clock skew)",
}

DEFAULT_NONCE_TTL_S = 300.0
DEFAULT_FRESHNESS_S = 60.0
DEFAULT_FUTURE_SKEW_S = 5.0


@dataclass(frozen=True, slots=True)
class VerifierLimits:
    """Size bounds a command must respect before its HMAC is even computed."""

    max_command_bytes: int = MAX_COMMAND_BYTES
    max_annotation_value_chars: int = MAX_ANNOTATION_VALUE_CHARS
    max_annotations: int = MAX_ANNOTATIONS
    max_command_id_chars: int = MAX_COMMAND_ID_CHARS

    def exceeded_by(self, cmd: AdaptationCommand) -> bool:
        ann = cmd.annotations
        if len(ann) > self.max_annotations or len(cmd.command_id) > self.max_command_id_chars:
            return True
        limit = self.max_annotation_value_chars
        if any(len(value) > limit for value in ann.values()):
            return True
        return cmd.ByteSize() > self.max_command_bytes


DEFAULT_LIMITS = VerifierLimits()


def _positive(name: str, value: float, *, allow_zero: bool = True) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return value


class NonceLedger:
    """Command ids accepted within the last ``ttl_s`` seconds.

    ``remember(command_id, at)`` records a command at unix time ``at`` (when it was
    recorded in the log); ``seen`` is true while ``clock() - at < ttl_s``. Memory is
    bounded: expired entries are purged on every insert (a heap ordered by expiry), and at
    most ``max_entries`` ids are held (the ones closest to expiry are evicted first and
    counted in :attr:`evicted`). Thread-safe.
    """

    def __init__(self, ttl_s: float = DEFAULT_NONCE_TTL_S, clock: Callable[[], float] = time.time,
                 *, max_entries: int = MAX_NONCES) -> None:
        self.ttl_s = _positive("ttl_s", ttl_s, allow_zero=False)
        if int(max_entries) < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = int(max_entries)
        self.clock = clock
        self.evicted = 0
        self._at: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # (expiry, command_id); may hold stale rows
        self._lock = threading.Lock()

    def seen(self, command_id: str, *, now: float | None = None) -> bool:
        """Was ``command_id`` remembered less than ``ttl_s`` ago?"""
        at = self._at.get(command_id)
        if at is None:
            return False
        return (self.clock() if now is None else now) - at < self.ttl_s

    def remember(self, command_id: str, at: float) -> None:
        """Record ``command_id`` as executed at unix time ``at`` (already-expired: ignored)."""
        if not isinstance(command_id, str) or not command_id:
            raise ValueError("command_id must be a non-empty string")
        at = float(at)
        if not math.isfinite(at):
            raise ValueError("at must be a finite unix time")
        with self._lock:
            self._insert(command_id, at, self.clock())

    def load(self, pairs: Iterable[tuple[str, float]]) -> int:
        """Rebuild after a restart from the log's ``(command_id, unix time recorded)`` pairs;
        returns how many are still live (and therefore held)."""
        loaded = 0
        with self._lock:
            now = self.clock()
            for command_id, at in pairs:
                at = float(at)
                if command_id and math.isfinite(at) and self._insert(command_id, at, now):
                    loaded += 1
        return loaded

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, command_id: object) -> bool:
        return isinstance(command_id, str) and self.seen(command_id)

    def __repr__(self) -> str:
        return f"NonceLedger(ttl_s={self.ttl_s}, entries={len(self._at)}, evicted={self.evicted})"

    # -- internals (lock held) ----------------------------------------------------------

    def _insert(self, command_id: str, at: float, now: float) -> bool:
        expiry = at + self.ttl_s
        if expiry <= now:
            return False
        self._purge(now)
        previous = self._at.get(command_id)
        if previous is not None and previous >= at:
            return True
        if previous is None:
            while len(self._at) >= self.max_entries:
                self._evict_one()
        self._at[command_id] = at
        heapq.heappush(self._heap, (expiry, command_id))
        if len(self._heap) > 2 * len(self._at) + 1024:  # many superseded rows: compact
            self._heap = [(a + self.ttl_s, c) for c, a in self._at.items()]
            heapq.heapify(self._heap)
        return True

    def _purge(self, now: float) -> None:
        heap, entries, ttl = self._heap, self._at, self.ttl_s
        while heap and heap[0][0] <= now:
            _, command_id = heapq.heappop(heap)
            at = entries.get(command_id)
            if at is not None and at + ttl <= now:
                del entries[command_id]

    def _evict_one(self) -> None:
        while self._heap:
            expiry, command_id = heapq.heappop(self._heap)
            at = self._at.get(command_id)
            if at is not None and at + self.ttl_s == expiry:
                del self._at[command_id]
                self.evicted += 1
                return


class Verifier:
    """Decides whether a command may run; see the module docstring for order and policy."""

    #: Size bounds (class default; pass ``limits=`` to override per verifier).
    limits: VerifierLimits = DEFAULT_LIMITS

    def __init__(self, keyring: Keyring, *, nonce_ttl_s: float = DEFAULT_NONCE_TTL_S,
                 freshness_s: float = DEFAULT_FRESHNESS_S, future_skew_s: float = DEFAULT_FUTURE_SKEW_S,
                 clock: Callable[[], float] = time.time, ledger: NonceLedger | None = None,
                 limits: VerifierLimits | None = None) -> None:
        if not isinstance(keyring, Keyring):
            raise TypeError(f"keyring must be a Keyring, not {type(keyring).__name__}")
        self.keyring = keyring
        self.freshness_s = _positive("freshness_s", freshness_s)
        self.future_skew_s = _positive("future_skew_s", future_skew_s)
        self.clock = clock
        self.ledger = ledger if ledger is not None else NonceLedger(nonce_ttl_s, clock)
        if self.ledger.ttl_s < self.freshness_s + self.future_skew_s:
            raise ValueError("nonce TTL must be >= freshness_s + future_skew_s, otherwise a "
                             "replay could pass once its nonce is forgotten")
        if limits is not None:
            self.limits = limits
        if not keyring:
            logger.warning("kasmina: %s", REASON_MESSAGES[VERIFIER_UNAVAILABLE])

    def check(self, cmd: AdaptationCommand) -> str | None:
        """``None`` if ``cmd`` may run, else one reason constant. Never raises on a parsed
        message, and records nothing (see :meth:`remember`)."""
        keyring = self.keyring
        if not keyring:
            return VERIFIER_UNAVAILABLE
        if self.limits.exceeded_by(cmd):
            return OVERSIZED_COMMAND
        annotations = cmd.annotations
        provided = annotations.get(SIGNATURE_ANNOTATION, "")
        if not provided:
            return MISSING_SIGNATURE
        key = keyring.resolve(annotations[KEY_ID_ANNOTATION] if KEY_ID_ANNOTATION in annotations else None)
        if key is None:
            return UNKNOWN_KEY
        expected = base64.b64encode(hmac.new(key, signed_payload(cmd), hashlib.sha256).digest())
        # Byte comparison of the canonical base64 text: bad base64 simply does not match.
        if not hmac.compare_digest(expected, provided.encode("utf-8", "surrogatepass")):
            return INVALID_SIGNATURE
        if not cmd.command_id or "\x00" in cmd.command_id:
            return MISSING_COMMAND_ID
        now = self.clock()
        if self.ledger.seen(cmd.command_id, now=now):
            return NONCE_REPLAYED
        if not cmd.HasField("issued_at"):
            return MISSING_TIMESTAMP
        issued = cmd.issued_at.seconds + cmd.issued_at.nanos / 1e9
        if issued - now > self.future_skew_s:
            return ISSUED_IN_FUTURE
        if now - issued > self.freshness_s:
            return STALE_COMMAND
        return None

    def remember(self, command_id: str, at: float | None = None) -> None:
        """Mark ``command_id`` as executed (call after the command is durably recorded)."""
        self.ledger.remember(command_id, self.clock() if at is None else at)

    def __repr__(self) -> str:
        return (f"Verifier({self.keyring!r}, freshness_s={self.freshness_s}, "
                f"future_skew_s={self.future_skew_s}, ledger={self.ledger!r})")
