"""What is particular to the ``sql://`` queue: leases, several processes, configuration, failures.

Run as a script (``python test_sqlqueue.py URL QUEUE``) this module is the
consumer process of the multi-process test: it prints ``ready``, acks every
delivery until a line arrives on stdin, then prints the keys it got as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import conftest
import pytest
import sqlalchemy as sa
from conftest import sql_engine
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import await_

from mailqueue.errors import ConfigurationError, QueueError
from mailqueue.protocols import BackendContext, Queue, Store
from mailqueue.sql import schema
from mailqueue.sql.queue import SQLQueue

T = schema.queue


@pytest.fixture
async def engine(sql_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on each database in turn, with mailqueue's tables created."""
    engine = sql_engine(sql_url)
    async with engine.begin() as conn:
        await conn.run_sync(schema.metadata.create_all)
    yield engine
    await engine.dispose()


def queue_name() -> str:
    return f"t-{secrets.token_hex(6)}"


async def rows(engine: AsyncEngine, name: str) -> list[sa.Row[Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(sa.select(T).where(T.c.queue == name).order_by(T.c.id))
        return list(result.all())


class EngineStore:
    """The one thing the sql queue takes from a Store: its ``engine`` (set when opened)."""

    def __init__(self, engine: AsyncEngine | None) -> None:
        self.engine = engine


def context_with(store: object) -> BackendContext:
    return BackendContext(store=cast(Store, store))


# --- leases -------------------------------------------------------------------


async def test_expired_lease_is_claimed_again_and_late_settling_is_a_noop(engine: AsyncEngine) -> None:
    name = queue_name()
    first_q = SQLQueue(engine=engine, queue=name, poll=0.05, lease=2.0)
    second_q = SQLQueue(engine=engine, queue=name, poll=0.05, lease=2.0)
    async with first_q, second_q:
        await first_q.publish("k1", b"body")
        first = await asyncio.wait_for(anext(first_q.consume(prefetch=1)), 5)
        (row,) = await rows(engine, name)
        assert (row.deliveries, row.state, len(row.lease)) == (1, "ready", 32)
        assert row.available_at >= row.created_at + 2000

        # While the lease holds, nobody else gets the message.
        other = second_q.consume(prefetch=1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(other), 0.5)
        second = await asyncio.wait_for(anext(other), 5)
        assert (second.key, second.body, second.redelivered) == ("k1", b"body", True)
        (row,) = await rows(engine, name)
        assert row.deliveries == 2

        await first.ack()  # lease lost: must not delete the second consumer's claim
        await first.dead("late")
        await first.release()
        assert [(r.deliveries, r.state, r.lease) for r in await rows(engine, name)] == [
            (2, "ready", row.lease)
        ]
        await second.ack()
        assert await rows(engine, name) == []


async def test_release_keeps_count_and_unhanded_rows_are_uncounted(engine: AsyncEngine) -> None:
    name = queue_name()
    async with SQLQueue(engine=engine, queue=name, poll=0.05, batch=3) as queue:
        for key in ("a", "b", "c"):
            await queue.publish(key, b"x")
        iterator = queue.consume(prefetch=3)
        first = await anext(iterator)  # the claim fetched all three
        assert [(r.msg_key, r.deliveries, r.lease is not None) for r in await rows(engine, name)] == [
            ("a", 1, True),
            ("b", 1, True),
            ("c", 1, True),
        ]
        await iterator.aclose()
        await first.release()
        assert [(r.msg_key, r.deliveries, r.lease) for r in await rows(engine, name)] == [
            ("a", 1, None),
            ("b", 0, None),
            ("c", 0, None),
        ]
        assert await queue.depth() == 3


# --- several processes ----------------------------------------------------------


async def _consumer_process(url: str, name: str) -> None:
    engine = sql_engine(url)
    keys: list[str] = []
    async with SQLQueue(engine=engine, queue=name, poll=0.05) as queue:
        iterator = queue.consume(prefetch=10)

        async def run() -> None:
            async for delivery in iterator:
                keys.append(delivery.key)
                # a little work per message, so that one process cannot drain the queue
                # before the other's first poll when the machine is busy
                await asyncio.sleep(0.01)
                await delivery.ack()

        task = asyncio.create_task(run())
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await iterator.aclose()
        await task
    await engine.dispose()
    print(json.dumps(keys), flush=True)


@pytest.mark.slow
async def test_separate_processes_receive_each_message_once(engine: AsyncEngine) -> None:
    count = 100 if engine.dialect.name == "sqlite" else 500
    name = queue_name()
    url = engine.url.render_as_string(hide_password=False)
    # the script imports sql_engine from the tests' conftest.py, which is not in its own folder
    path = [str(Path(conftest.__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            url,
            name,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert await asyncio.wait_for(process.stdout.readline(), 30) == b"ready\n"
        keys = [f"p{i}" for i in range(count)]
        async with SQLQueue(engine=engine, queue=name, poll=0.05) as queue:
            for key in keys:
                await queue.publish(key, key.encode())
        for _ in range(400):  # until every message is acked, at most 40 s
            if not await rows(engine, name):
                break
            await asyncio.sleep(0.1)
        outputs = [await asyncio.wait_for(process.communicate(b"stop\n"), 30) for process in processes]
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert [process.returncode for process in processes] == [0, 0]
    received = [json.loads(stdout) for stdout, _ in outputs]
    assert all(received), "both processes should have consumed some messages"
    assert sorted(received[0] + received[1]) == sorted(keys)
    assert await rows(engine, name) == []


# --- configuration ---------------------------------------------------------------


async def test_from_url_uses_the_store_engine(engine: AsyncEngine) -> None:
    store = EngineStore(None)
    queue = SQLQueue.from_url("sql://?queue=orders&poll=0.05&lease=2&batch=3", context=context_with(store))
    assert isinstance(queue, Queue)
    assert (queue.queue, queue.poll, queue.lease, queue.batch) == ("orders", 0.05, 2.0, 3)
    with pytest.raises(ConfigurationError, match="engine"):
        await queue.open()  # the store is not open yet
    store.engine = engine
    async with queue:
        await queue.publish("k", b"v")
        delivery = await asyncio.wait_for(anext(queue.consume(prefetch=1)), 5)
        assert delivery.body == b"v"
        await delivery.ack()
    assert await rows(engine, "orders") == []
    default = SQLQueue.from_url("sql://", context=context_with(store))
    assert (default.queue, default.poll, default.lease, default.batch) == ("mailqueue", 0.5, 300.0, 10)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sql://?queue=a&timeout=3", "'timeout'"),
        ("sql://?poll=soon", "'poll'"),
        ("sql://?lease=0", "'lease'"),
        ("sql://?batch=0", "'batch'"),
        ("sql://?queue=" + "q" * 65, "'queue'"),
        ("memory://", "sql://"),
    ],
)
def test_from_url_rejects_bad_options(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        SQLQueue.from_url(url, context=context_with(EngineStore(None)))


async def test_needs_a_store_with_an_engine() -> None:
    with pytest.raises(ConfigurationError, match="no store"):
        SQLQueue.from_url("sql://", context=BackendContext())
    queue = SQLQueue.from_url("sql://", context=context_with(object()))  # e.g. a memory store
    with pytest.raises(ConfigurationError, match="engine"):
        await queue.open()
    with pytest.raises(ConfigurationError):
        SQLQueue(queue="x")


async def test_key_longer_than_the_column_is_refused(engine: AsyncEngine) -> None:
    async with SQLQueue(engine=engine, queue=queue_name()) as queue:
        with pytest.raises(ValueError, match="key"):
            await queue.publish("k" * 65, b"x")


# --- failures ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:///{tmp}/no/such/folder/q.db",
        "mysql+asyncmy://root@127.0.0.1:1/db",
        "postgresql+asyncpg://postgres@127.0.0.1:1/db",
    ],
    ids=["sqlite", "mysql", "postgres"],
)
async def test_unreachable_database_raises_queue_error(url: str, tmp_path: Path) -> None:
    engine = create_async_engine(url.format(tmp=tmp_path))
    try:
        queue = SQLQueue(engine=engine, queue="q")
        with pytest.raises(QueueError):
            await queue.publish("k", b"x")  # not open
        with pytest.raises(QueueError, match="could not"):
            await queue.open()
        with pytest.raises(QueueError):
            queue.consume(prefetch=1)
    finally:
        await engine.dispose()
        # aiosqlite stops the worker thread of a failed connect without waiting for it; let it
        # report back before the test's event loop closes.
        await asyncio.sleep(0.1)


async def test_missing_table_raises_queue_error(sqlite_url: str) -> None:
    engine = create_async_engine(sqlite_url)
    try:
        queue = SQLQueue(engine=engine, queue="q", poll=0.05)
        with pytest.raises(QueueError, match="migrations"):
            await queue.open()
        async with engine.begin() as conn:
            await conn.run_sync(schema.metadata.create_all)
        async with queue:
            iterator = queue.consume(prefetch=1)
            async with engine.begin() as conn:
                await conn.run_sync(schema.queue.drop)
            with pytest.raises(QueueError):
                await queue.publish("k", b"x")
            with pytest.raises(QueueError):
                await queue.depth()
            with pytest.raises(QueueError):
                await anext(iterator)
            async with engine.begin() as conn:
                await conn.run_sync(schema.queue.create)
            await queue.publish("k", b"x")  # the iterator survived the failed claim
            delivery = await asyncio.wait_for(anext(iterator), 5)
            await delivery.ack()
    finally:
        await engine.dispose()


class TcpProxy:
    """Forwards a local port to a server; :meth:`cut` drops every connection and stops listening."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        self._writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return
        self._writers.append(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in self._writers:
            writer.close()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)


@pytest.fixture(
    params=[
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def server_url(request: pytest.FixtureRequest) -> str:
    """The MariaDB, then the PostgreSQL database (resolved here: their fixtures run their own loop)."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


async def test_lost_connection_raises_queue_error(server_url: str) -> None:
    real = urlsplit(server_url)
    assert real.hostname is not None
    assert real.port is not None
    proxy = TcpProxy(real.hostname, real.port)
    port = await proxy.start()
    user = f"{real.username}@" if real.username else ""
    engine = sql_engine(urlunsplit(real._replace(netloc=f"{user}127.0.0.1:{port}")))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(schema.metadata.create_all)
        async with SQLQueue(engine=engine, queue=queue_name(), poll=0.05) as queue:
            await queue.publish("before", b"x")
            await proxy.cut()
            with pytest.raises(QueueError):
                await queue.publish("after", b"x")
            with pytest.raises(QueueError):
                await queue.depth()
    finally:
        await proxy.cut()
        await engine.dispose()


async def test_concurrent_acks_go_together_and_skip_a_lost_lease(engine: AsyncEngine) -> None:
    name = queue_name()
    first_q = SQLQueue(engine=engine, queue=name, poll=0.05, lease=1.0)
    second_q = SQLQueue(engine=engine, queue=name, poll=0.05, lease=30.0)
    async with first_q, second_q:
        await first_q.publish("late", b"x")
        first = first_q.consume(prefetch=10)
        late = await asyncio.wait_for(anext(first), 5)
        again = await asyncio.wait_for(anext(second_q.consume(prefetch=1)), 5)  # once the lease expired
        assert (again.key, again.redelivered) == ("late", True)
        for n in range(5):
            await first_q.publish(f"k{n}", b"x")
        held = [await asyncio.wait_for(anext(first), 5) for _ in range(5)]
        await asyncio.gather(late.ack(), *(d.ack() for d in held))  # one batch
        assert [(r.msg_key, r.deliveries) for r in await rows(engine, name)] == [("late", 2)]
        await again.ack()
        assert await rows(engine, name) == []


async def test_sqlite_operations_are_single_statements_on_one_connection(sqlite_url: str) -> None:
    """On SQLite the queue keeps one pooled connection in autocommit mode: a claim, a group of
    acks, a retry and a publish are one statement each (one transaction, one hold of the write
    lock); closing gives the connection back as it was."""
    engine = sql_engine(sqlite_url)
    statements: list[str] = []

    @event.listens_for(engine.sync_engine, "connect")
    def _trace(dbapi_connection: Any, record: Any) -> None:
        # every statement SQLite runs, on every connection (implicit BEGINs and COMMITs too)
        await_(dbapi_connection.driver_connection.set_trace_callback(statements.append))

    def since(mark: int) -> list[str]:
        return [s.split()[0].upper() for s in statements[mark:]]

    try:
        async with engine.begin() as conn:
            await conn.run_sync(schema.metadata.create_all)
        pool = engine.sync_engine.pool
        async with SQLQueue(engine=engine, queue=queue_name(), poll=0.05, batch=10) as queue:
            assert pool.checkedout() == 1  # type: ignore[attr-defined]
            mark = len(statements)
            await queue.publish("k0", b"x")
            assert since(mark) == ["INSERT"]
            for n in range(1, 6):
                await queue.publish(f"k{n}", b"x")
            iterator = queue.consume(prefetch=6)
            mark = len(statements)
            first = await asyncio.wait_for(anext(iterator), 5)
            assert since(mark) == ["UPDATE"]  # all six claimed at once
            held = [await asyncio.wait_for(anext(iterator), 5) for _ in range(5)]
            mark = len(statements)
            await asyncio.gather(*(d.ack() for d in held))
            assert since(mark) == ["DELETE"]
            mark = len(statements)
            await first.retry(0)
            assert since(mark) == ["UPDATE"]
            again = await asyncio.wait_for(anext(iterator), 5)
            assert (again.key, again.redelivered) == ("k0", True)
            await again.ack()
            assert await queue.depth() == 0
            await iterator.aclose()
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
        async with engine.connect() as conn:
            assert await conn.get_isolation_level() != "AUTOCOMMIT"
    finally:
        await engine.dispose()


if __name__ == "__main__":  # the consumer processes of test_separate_processes_receive_each_message_once
    asyncio.run(_consumer_process(sys.argv[1], sys.argv[2]))
