"""Command security: Esper-compatible HMAC signing, keys with rotation, verification.

Why one package: the signing recipe, the keys and the refusal reasons must agree exactly
between whoever signs (a controller, ``kasmina`` tooling, tests) and the executor that
verifies, so they live together and are defined once.

    ring = Keyring.from_env()                      # KASMINA_SECRET / KASMINA_SECRETS
    sign(cmd, b"secret")                           # or ring.sign(cmd, "k2")
    reason = Verifier(ring).check(cmd)             # None, or e.g. "stale_command"
"""

from __future__ import annotations

from kasmina.security.keys import ENV_SECRET, ENV_SECRETS, KeyConfigError, Keyring, parse_secrets
from kasmina.security.signing import (
    KEY_ID_ANNOTATION,
    SIGNATURE_ANNOTATION,
    sign,
    signature_of,
    signed_payload,
)
from kasmina.security.verify import (
    DEFAULT_LIMITS,
    INVALID_SIGNATURE,
    ISSUED_IN_FUTURE,
    MAX_ANNOTATION_VALUE_CHARS,
    MAX_ANNOTATIONS,
    MAX_COMMAND_BYTES,
    MAX_COMMAND_ID_CHARS,
    MAX_NONCES,
    MISSING_COMMAND_ID,
    MISSING_SIGNATURE,
    MISSING_TIMESTAMP,
    NONCE_REPLAYED,
    OVERSIZED_COMMAND,
    REASON_MESSAGES,
    REASONS,
    STALE_COMMAND,
    UNKNOWN_KEY,
    VERIFIER_UNAVAILABLE,
    NonceLedger,
    Verifier,
    VerifierLimits,
)

__all__ = [
    # signing
    "sign", "signature_of", "signed_payload", "SIGNATURE_ANNOTATION", "KEY_ID_ANNOTATION",
    # keys
    "Keyring", "KeyConfigError", "parse_secrets", "ENV_SECRET", "ENV_SECRETS",
    # verification
    "Verifier", "NonceLedger", "VerifierLimits", "DEFAULT_LIMITS",
    "MAX_COMMAND_BYTES", "MAX_ANNOTATION_VALUE_CHARS", "MAX_ANNOTATIONS", "MAX_COMMAND_ID_CHARS",
    "MAX_NONCES",
    # reasons
    "REASONS", "REASON_MESSAGES",
    "VERIFIER_UNAVAILABLE", "OVERSIZED_COMMAND", "MISSING_SIGNATURE", "UNKNOWN_KEY",
    "INVALID_SIGNATURE", "MISSING_COMMAND_ID", "NONCE_REPLAYED", "MISSING_TIMESTAMP",
    "STALE_COMMAND", "ISSUED_IN_FUTURE",
]
