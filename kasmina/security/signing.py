"""HMAC-SHA256 command signing, byte-compatible with Esper's Leyline signing.

Why this exact recipe: Esper controllers (Tamiyo) sign an ``AdaptationCommand`` by
serializing it with ``deterministic=True`` (canonical field order, map entries sorted by
key) *without* ``annotations["signature"]``, taking HMAC-SHA256 over those bytes with the
shared secret, and storing the standard base64 (with padding) of the digest in
``annotations["signature"]``. Kasmina must accept commands signed that way and produce
commands Esper accepts, so the payload and encoding here must not drift.

Key rotation (a Kasmina addition): when a key id is used it is carried in
``annotations["key_id"]`` and is set *before* signing, so it is covered by the signature
(an attacker cannot re-point a command at another key). With a single plain key no
``key_id`` annotation is added, which keeps the bytes identical to Esper's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from kasmina.leyline import AdaptationCommand

SIGNATURE_ANNOTATION = "signature"
KEY_ID_ANNOTATION = "key_id"

__all__ = [
    "KEY_ID_ANNOTATION",
    "SIGNATURE_ANNOTATION",
    "key_bytes",
    "sign",
    "signature_of",
    "signed_payload",
]


def key_bytes(key: bytes | bytearray | str) -> bytes:
    """A secret as bytes (str is UTF-8, like Esper's env secret); empty keys are refused
    because an empty HMAC key signs anything anyone can forge."""
    if isinstance(key, str):
        raw = key.encode("utf-8")
    elif isinstance(key, (bytes, bytearray)):
        raw = bytes(key)
    else:
        raise TypeError(f"a signing key must be bytes or str, not {type(key).__name__}")
    if not raw:
        raise ValueError("a signing key must not be empty")
    return raw


def signed_payload(cmd: AdaptationCommand) -> bytes:
    """The bytes the signature covers: the deterministic serialization of ``cmd`` without
    ``annotations["signature"]``. ``cmd`` itself is not modified (a copy is serialized)."""
    if SIGNATURE_ANNOTATION not in cmd.annotations:
        return cmd.SerializeToString(deterministic=True)
    unsigned = AdaptationCommand()
    unsigned.CopyFrom(cmd)
    del unsigned.annotations[SIGNATURE_ANNOTATION]
    return unsigned.SerializeToString(deterministic=True)


def _digest(payload: bytes, key: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def signature_of(cmd: AdaptationCommand, key: bytes | bytearray | str) -> str:
    """Base64 (standard alphabet, padded) HMAC-SHA256 of :func:`signed_payload`."""
    return base64.b64encode(_digest(signed_payload(cmd), key_bytes(key))).decode("ascii")


def sign(cmd: AdaptationCommand, key: bytes | bytearray | str, *,
         key_id: str | None = None) -> AdaptationCommand:
    """Sign ``cmd`` in place and return it.

    With ``key_id`` the id is written to ``annotations["key_id"]`` first (so it is signed);
    without it any stale ``key_id`` annotation is removed, so the annotation always names
    the key that made the signature. Any previous signature is replaced.
    """
    raw = key_bytes(key)
    if key_id is not None:
        if not isinstance(key_id, str) or not key_id:
            raise ValueError("key_id must be a non-empty string")
        cmd.annotations[KEY_ID_ANNOTATION] = key_id
    elif KEY_ID_ANNOTATION in cmd.annotations:
        del cmd.annotations[KEY_ID_ANNOTATION]
    cmd.annotations[SIGNATURE_ANNOTATION] = base64.b64encode(
        _digest(signed_payload(cmd), raw)).decode("ascii")
    return cmd
