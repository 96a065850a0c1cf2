"""Shared fixtures: real databases for the event-store tests (never a mocked one).

* ``pg_database`` (session): a private PostgreSQL database for this test run, named
  ``kasmina_test_<pid>_<hex>``, dropped (``WITH (FORCE)``) at the end of the session.
* ``pg_url`` (function): the URL of that database, emptied before the test (other sessions
  ended, ``public`` schema dropped and re-created), so every test starts on an EMPTY
  database: no Kasmina tables, no leftover connections, no disabled triggers.
* ``sqlite_url`` (function): ``sqlite:///<tmp_path>/log.db``; the file does not exist yet.
* ``backend_url`` (function, parametrized memory / sqlite / postgres): an empty log that
  is already migrated to the head revision by ``kasmina.events.migrate.upgrade``.
  ``memory://`` needs no migration, but each ``open_store("memory://")`` is a NEW empty
  store, so tests must keep one store object: use ``store``.
* ``store`` (function, same parameters): an opened :class:`EventStore` on ``backend_url``,
  closed after the test.

PostgreSQL is reached as user ``postgres`` on 127.0.0.1:5432, database ``test`` (override
the admin connection with ``KASMINA_TEST_PG``, a libpq conninfo string). If it cannot be
reached, tests that need it are skipped with the reason, or fail when ``CI`` is set.
Memory and SQLite tests never touch PostgreSQL.
"""

from __future__ import annotations

import os
import secrets
from typing import Any, Iterator, NoReturn

import torch

# Triton reads TRITON_INTERPRET when it is first imported (torch's dynamo imports it early),
# so without a GPU the fused-kernel tests can run in its CPU interpreter only if it is set
# now. It changes nothing else: CPU blends stay eager outside kasmina.kernels.fused.on_cpu().
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402 - after the switch above, which must precede any Triton import
from sqlalchemy.engine import URL, make_url

from kasmina.events import EventStore, migrate, open_store

PG_ADMIN = os.environ.get("KASMINA_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test")
REDIS_URL = os.environ.get("KASMINA_TEST_REDIS", "redis://127.0.0.1:6379/0")


def unreachable(service: str, where: str, error: BaseException) -> NoReturn:
    """Skip a test whose server cannot be reached, or fail it when ``CI`` is set (CI has both)."""
    reason = f"{service} not reachable at {where!r}: {type(error).__name__}: {' '.join(str(error).split())}"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {reason}")
    pytest.skip(reason)


def require_redis(url: str = REDIS_URL) -> str:
    """``url`` if the Redis server answers a ping; otherwise :func:`unreachable`."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as e:  # noqa: BLE001 - any failure to reach the server means "no Redis"
        unreachable("Redis", url, e)
    finally:
        client.close()
    return url
BACKENDS = ["memory", "sqlite", "postgres"]


def _admin():  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)


def _reset(url: str) -> None:
    """Empty a test database: end every other session on it (a leaked connection or a crashed
    worker must not block the test), then drop and re-create the public schema, which holds
    everything the migrations make (tables, views, trigger function, alembic_version).
    ~25 ms, where CREATE DATABASE costs ~400 ms."""
    import psycopg

    with psycopg.connect(PG_ADMIN, dbname=make_url(url).database, autocommit=True,
                         connect_timeout=5) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """URL of a private PostgreSQL database for this session (skip/fail if unreachable)."""
    name = f"kasmina_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        with _admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
            info = conn.info
            url = URL.create("postgresql", username=info.user, password=info.password or None,
                             host=None if info.host.startswith("/") else info.host, port=info.port,
                             database=name,
                             query={"host": info.host} if info.host.startswith("/") else {})
    except Exception as e:  # noqa: BLE001 - any failure to reach the server means "no Postgres"
        unreachable("PostgreSQL", PG_ADMIN, e)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The session's database, emptied: no Kasmina schema, no other connections."""
    _reset(pg_database)
    return pg_database


@pytest.fixture
def sqlite_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    return f"sqlite:///{tmp_path}/log.db"


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> str:
    """An empty, migrated log. Postgres is requested lazily so memory/sqlite never need it."""
    if request.param == "memory":
        return "memory://"
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    migrate.upgrade(url)
    return url


@pytest.fixture
def store(backend_url: str) -> Iterator[EventStore]:
    """An opened store on ``backend_url`` (parametrized like it), closed afterwards."""
    opened = open_store(backend_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(autouse=True, scope="session")
def _no_torch_compile() -> Iterator[None]:
    """Kasmina never compiles (Tezzeret's job in Esper): any call anywhere fails the suite."""
    import torch

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.compile was called: Kasmina must never compile")

    saved = torch.compile
    _REAL_COMPILE.append(saved)
    torch.compile = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.compile = saved  # type: ignore[assignment]


_REAL_COMPILE: list[Any] = []


@pytest.fixture
def user_compile() -> Any:
    """The real ``torch.compile``, for a test that compiles a model as a *user* would (to prove
    Kasmina's sites do not recompile it every step); Kasmina itself still never calls it."""
    return _REAL_COMPILE[0]
