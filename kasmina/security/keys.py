"""Signing keys: one plain key (Esper-compatible) or several keys with ids (rotation).

Why a keyring rather than one secret: rotating a shared HMAC secret without downtime needs
a window in which both the old and the new key verify. Commands name their key with the
signed ``annotations["key_id"]``; a command without one uses the plain key (or the
configured default), exactly as a single-secret Esper controller expects.

Environment (read by :meth:`Keyring.from_env`):

* ``KASMINA_SECRET``: the single plain key, UTF-8. Empty or unset means "no plain key".
* ``KASMINA_SECRETS``: keys with ids, formatted ``kid1=secret1,kid2=secret2``. Entries are
  separated by ``,`` and split at the *first* ``=`` (so a secret may contain ``=``, but not
  ``,``). Leading/trailing whitespace around each entry and key id is ignored. Every entry
  needs a non-empty key id and secret, and key ids must be unique; anything else raises
  :class:`KeyConfigError` naming the entry index (0-based), never its content.

Secret material never appears in ``repr``/``str`` or in error messages.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator, Mapping

from kasmina.errors import KasminaError
from kasmina.security.signing import key_bytes, sign

if TYPE_CHECKING:
    from kasmina.leyline import AdaptationCommand

ENV_SECRET = "KASMINA_SECRET"
ENV_SECRETS = "KASMINA_SECRETS"

__all__ = ["ENV_SECRET", "ENV_SECRETS", "KeyConfigError", "Keyring", "parse_secrets"]


class KeyConfigError(KasminaError, ValueError):
    """Malformed key configuration; the message names the problem, never a secret."""


def _check_key_id(key_id: object) -> str:
    if not isinstance(key_id, str) or not key_id or key_id != key_id.strip():
        raise KeyConfigError("a key id must be a non-empty string without surrounding whitespace")
    return key_id


def parse_secrets(text: str, *, source: str = ENV_SECRETS) -> dict[str, bytes]:
    """Parse ``kid1=secret1,kid2=secret2`` into ``{kid: secret bytes}`` (see module doc)."""
    keys: dict[str, bytes] = {}
    for index, entry in enumerate(text.split(",")):
        entry = entry.strip()
        kid, sep, secret = entry.partition("=")
        kid = kid.strip()
        if not sep or not kid or not secret:
            raise KeyConfigError(
                f"{source}: entry {index} is malformed; expected kid=secret "
                f"(non-empty key id and secret, entries separated by ',')")
        if kid in keys:
            raise KeyConfigError(f"{source}: entry {index} repeats the key id of an earlier entry")
        keys[kid] = secret.encode("utf-8")
    return keys


class Keyring:
    """One plain key and/or keys with ids; ``bool(keyring)`` is False when it holds none.

    ``Keyring(b"secret")`` or ``Keyring("secret")``: a single plain key.
    ``Keyring({"k1": b"old", "k2": b"new"}, default="k2")``: rotation; commands without a
    ``key_id`` verify with ``default`` (if given).
    ``Keyring()``: empty, so a :class:`~kasmina.security.Verifier` refuses everything.

    Keys can be added and removed at run time (:meth:`add`, :meth:`remove`) so a running
    verifier picks up a rotation without being rebuilt.
    """

    __slots__ = ("_plain", "_keys", "_default")

    def __init__(self, source: bytes | bytearray | str | Mapping[str, bytes | bytearray | str] | None = None,
                 *, default: str | None = None) -> None:
        self._plain: bytes | None = None
        self._keys: dict[str, bytes] = {}
        self._default: str | None = None
        if isinstance(source, Mapping):
            for kid, key in source.items():
                self._keys[_check_key_id(kid)] = key_bytes(key)
        elif source is not None:
            self._plain = key_bytes(source)
        if default is not None:
            self.default = default

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 default: str | None = None) -> Keyring:
        """Build from ``KASMINA_SECRET`` / ``KASMINA_SECRETS`` (``environ`` defaults to
        ``os.environ``); an empty result is allowed and means "fail closed"."""
        env = os.environ if environ is None else environ
        ring = cls(parse_secrets(env[ENV_SECRETS]) if env.get(ENV_SECRETS, "").strip() else None)
        plain = env.get(ENV_SECRET, "")
        if plain:
            ring._plain = key_bytes(plain)
        if default is not None:
            ring.default = default
        return ring

    # -- lookup -------------------------------------------------------------------------

    def resolve(self, key_id: str | None) -> bytes | None:
        """The key for ``key_id`` (None if unknown); without an id, the plain key, else the
        default key, else None."""
        if key_id is not None:
            return self._keys.get(key_id)
        if self._plain is not None:
            return self._plain
        return self._keys.get(self._default) if self._default is not None else None

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Ids of the keys held (sorted); never the secrets."""
        return tuple(sorted(self._keys))

    @property
    def has_plain_key(self) -> bool:
        return self._plain is not None

    @property
    def default(self) -> str | None:
        return self._default

    @default.setter
    def default(self, key_id: str | None) -> None:
        if key_id is not None and key_id not in self._keys:
            raise KeyConfigError("the default key id is not in the keyring")
        self._default = key_id

    # -- rotation -----------------------------------------------------------------------

    def add(self, key_id: str, key: bytes | bytearray | str) -> None:
        """Add (or replace) the key ``key_id``."""
        self._keys[_check_key_id(key_id)] = key_bytes(key)

    def remove(self, key_id: str) -> None:
        """Retire ``key_id``: commands naming it are refused from now on (``unknown_key``)."""
        if key_id not in self._keys:
            raise KeyError("no such key id in the keyring")
        del self._keys[key_id]
        if self._default == key_id:
            self._default = None

    def sign(self, cmd: AdaptationCommand, key_id: str | None = None) -> AdaptationCommand:
        """Sign ``cmd`` with ``key_id``, else the plain key, else the default key (whose id
        is then written into the command)."""
        if key_id is None and self._plain is not None:
            return sign(cmd, self._plain)
        kid = key_id if key_id is not None else self._default
        key = self._keys.get(kid) if kid is not None else None
        if kid is None or key is None:
            raise KeyConfigError("no key to sign with: unknown key id, or no plain/default key")
        return sign(cmd, key, key_id=kid)

    # -- container protocol (no secrets) ------------------------------------------------

    def __bool__(self) -> bool:
        return self._plain is not None or bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys) + (self._plain is not None)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self.key_ids)

    def __repr__(self) -> str:
        return (f"Keyring(plain_key={self._plain is not None}, key_ids={list(self.key_ids)!r}, "
                f"default={self._default!r})")

    __str__ = __repr__
