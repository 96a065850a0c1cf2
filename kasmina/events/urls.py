"""Database URLs: the default, validation with one-line errors, and password redaction."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from kasmina.errors import BadDatabaseURL

ENV_VAR = "KASMINA_DB"
DEFAULT_URL = "sqlite:///kasmina.db"
_SQLITE = {"sqlite", "sqlite+pysqlite"}
_POSTGRES = {"postgresql", "postgres", "postgresql+psycopg"}
#: Longest URL accepted: long enough for any real DSN, short enough to refuse garbage.
MAX_URL_LENGTH = 2048


@dataclass(frozen=True, slots=True)
class ParsedURL:
    backend: str  # "sqlite" | "postgresql" | "memory"
    url: URL | None
    text: str

    @property
    def sqlite_path(self) -> str:
        assert self.url is not None and self.backend == "sqlite"
        return str(self.url.database)


def default_url() -> str:
    return os.environ.get(ENV_VAR) or DEFAULT_URL


def redact(url: str | URL) -> str:
    """The URL with any password hidden, for messages and logs."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return "<malformed URL>"
    if any(key.lower() in _PASSWORD_KEYS for key in parsed.query):
        parsed = parsed.set(query={k: "***" if k.lower() in _PASSWORD_KEYS else v for k, v in parsed.query.items()})
    return parsed.render_as_string(hide_password=True)


#: Query parameters libpq reads a password from (``postgresql://h/db?password=...``).
_PASSWORD_KEYS = frozenset({"password", "passwd", "pwd"})


def _masked(text: str) -> str:
    """A URL text that did not parse, with everything between ``scheme://`` and the last
    ``@`` (where a ``user:password`` would be) shown as ``***``: its structure is unknown, so
    all of it may be the password, and it must not reach a message."""
    start = text.find("://")
    start = 0 if start < 0 else start + 3
    at = text.rfind("@")
    return text if at < start else f"{text[:start]}***{text[at:]}"


def parse(text: str) -> ParsedURL:
    hint = "expected sqlite:///PATH or postgresql://USER@HOST[:PORT]/DB"
    if not isinstance(text, str) or not text.strip():
        raise BadDatabaseURL(f"empty database URL: {hint}")
    if len(text) > MAX_URL_LENGTH or any(ord(ch) < 32 for ch in text):
        raise BadDatabaseURL(f"malformed database URL (too long or control characters): {hint}")
    text = text.strip()
    if text in ("memory://", "memory:"):
        return ParsedURL("memory", None, "memory://")
    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as e:
        raise BadDatabaseURL(f"malformed database URL {_masked(text)!r}: {hint}") from e
    driver = url.drivername.lower()
    if driver in _SQLITE:
        if not url.database or url.database == ":memory:":
            raise BadDatabaseURL(
                f"SQLite URL {_masked(text)!r} names no file: {hint} (use memory:// for a throwaway log)"
            )
        return ParsedURL("sqlite", url.set(drivername="sqlite+pysqlite"), text)
    if driver in _POSTGRES:
        if not url.database:
            raise BadDatabaseURL(f"PostgreSQL URL {redact(url)!r} names no database: {hint}")
        if url.port is not None and not 0 < url.port < 65536:
            raise BadDatabaseURL(f"PostgreSQL URL {redact(url)!r} has port {url.port} out of range")
        return ParsedURL("postgresql", url.set(drivername="postgresql+psycopg"), text)
    raise BadDatabaseURL(f"unsupported database {url.drivername!r} in {redact(url)!r}: {hint}")
