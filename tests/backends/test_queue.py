"""The Queue conformance suite over the built-in queues, and what is particular to ``memory://``."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import pytest
import sqlalchemy as sa
from conftest import sql_engine
from sqlalchemy.ext.asyncio import AsyncEngine

from mailqueue.backends.memory import DeadLetter, MemoryQueue, MemorySender
from mailqueue.errors import ConfigurationError, QueueError, TransientDeliveryError
from mailqueue.protocols import BackendContext, Delivery, OutgoingMessage, Queue, Sender, Store
from mailqueue.sql import schema
from mailqueue.sql.queue import SQLQueue
from mailqueue.testing.options import assert_unknown_option_refused
from mailqueue.testing.queue import DeadLetters, QueueConformance, QueueFactory, aclose


def _key() -> str:
    return f"k-{secrets.token_hex(6)}"


async def _next(iterator: AsyncIterator[Delivery]) -> Delivery:
    return await anext(iterator)


async def create_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(schema.metadata.create_all)


@dataclass
class EngineStore:
    """What the sql queue takes from a Store: its ``engine`` (read when the queue is opened)."""

    engine: AsyncEngine | None


@dataclass
class Backend:
    """Makes opened instances of one queue, and reads its dead letters."""

    make: Callable[[], Awaitable[Queue]]
    dead_letters: DeadLetters
    shared: bool
    url: str
    context: BackendContext


@pytest.fixture(
    params=[
        "memory",
        "sql-sqlite",
        pytest.param("sql-mysql", marks=pytest.mark.mysql),
        pytest.param("sql-postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest) -> str | None:
    """``None`` for the memory queue, else the URL of a database for the sql queue."""
    # Resolved in a sync fixture: the database fixtures run their own event loop.
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue(f"{request.param.removeprefix('sql-')}_url")
    return url


@pytest.fixture
async def backend(database_url: str | None) -> AsyncIterator[Backend]:
    if database_url is None:
        memory = MemoryQueue()

        async def make_memory() -> Queue:
            await memory.open()
            return memory

        async def memory_dead() -> list[tuple[str, bytes, str]]:
            return [(d.key, d.body, d.reason) for d in memory.dead]

        yield Backend(make_memory, memory_dead, shared=False, url="memory://", context=BackendContext())
        await memory.close()
        return

    url = database_url
    name = f"t-{secrets.token_hex(6)}"  # tests never see each other's rows
    engines: list[AsyncEngine] = []
    queues: list[SQLQueue] = []

    async def make_sql() -> Queue:
        engines.append(engine := sql_engine(url))  # one engine each, like separate processes
        if len(engines) == 1:
            await create_tables(engine)
        queue = SQLQueue(engine=engine, queue=name, poll=0.05)
        await queue.open()
        queues.append(queue)
        return queue

    async def sql_dead() -> list[tuple[str, bytes, str]]:
        t = schema.queue
        statement = (
            sa.select(t.c.msg_key, t.c.body, t.c.dead_reason)
            .where(t.c.queue == name, t.c.state == "dead")
            .order_by(t.c.id)
        )
        async with engines[0].connect() as conn:
            return [(key, bytes(body), reason) for key, body, reason in await conn.execute(statement)]

    url_context = BackendContext(store=cast(Store, EngineStore(None)))
    try:
        yield Backend(
            make_sql, sql_dead, shared=True, url=f"sql://?queue={name}&poll=0.05", context=url_context
        )
    finally:
        for queue in queues:
            await queue.close()
        for engine in engines:
            await engine.dispose()


class TestQueueConformance(QueueConformance):
    @pytest.fixture
    async def queue(self, backend: Backend) -> Queue:
        return await backend.make()

    @pytest.fixture
    def queue_factory(self, backend: Backend) -> QueueFactory | None:
        return backend.make if backend.shared else None

    @pytest.fixture
    def dead_letters(self, backend: Backend) -> DeadLetters | None:
        return backend.dead_letters

    @pytest.fixture
    def backend_url(self, backend: Backend) -> str:
        return backend.url

    @pytest.fixture
    def backend_context(self, backend: Backend) -> BackendContext:
        return backend.context


# --- what the built-in queues add to the suite ----------------------------------


async def test_aclose_from_another_task_ends_a_waiting_consumer(backend: Backend) -> None:
    queue = await backend.make()
    iterator = queue.consume(prefetch=1)
    waiting = asyncio.create_task(_next(iterator))
    done, _ = await asyncio.wait({waiting}, timeout=0.2)
    assert not done
    await aclose(iterator)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 5)
    await queue.publish(_key(), b"after")
    assert await queue.depth() == 1  # nobody took it


async def test_cancelled_waits_keep_the_iterator_usable(backend: Backend) -> None:
    queue = await backend.make()
    iterator = queue.consume(prefetch=2)
    keys = [_key() for _ in range(10)]
    got: list[str] = []
    for key in keys:
        await queue.publish(key, b"x")
        for _ in range(2000):  # cut waits short until the message arrives
            try:
                delivery = await asyncio.wait_for(anext(iterator), 0.002)
            except TimeoutError:
                continue
            got.append(delivery.key)
            await delivery.ack()
            break
    assert got == keys
    assert await queue.depth() == 0


# --- memory:// specifics ------------------------------------------------------


async def test_memory_queue_close_keeps_unsettled_for_reopen() -> None:
    queue = MemoryQueue()
    async with queue:
        await queue.publish("a", b"1")
        await queue.publish("b", b"2")
        await queue.publish("c", b"3")
        iterator = queue.consume(prefetch=2)
        first, second = await anext(iterator), await anext(iterator)
        assert [first.key, second.key] == ["a", "b"]
        await first.dead("bounced")
    assert await queue.depth() == 2  # "b" went back, never to the dead letters
    with pytest.raises(StopAsyncIteration):
        await anext(iterator)
    await second.ack()  # after close: no-op
    async with queue:
        iterator = queue.consume(prefetch=1)
        again = await anext(iterator)
        assert (again.key, again.body, again.redelivered) == ("b", b"2", True)
        await again.ack()
        last = await anext(iterator)
        assert (last.key, last.redelivered) == ("c", False)
        await last.ack()
        assert await queue.depth() == 0
    assert queue.dead == [DeadLetter("a", b"1", "bounced")]


async def test_memory_queue_refuses_use_when_not_open() -> None:
    queue = MemoryQueue()
    with pytest.raises(QueueError):
        await queue.publish("a", b"1")
    with pytest.raises(QueueError):
        queue.consume(prefetch=1)
    async with queue:
        with pytest.raises(ValueError, match="prefetch"):
            queue.consume(prefetch=0)


def test_memory_queue_from_url() -> None:
    queue = MemoryQueue.from_url("memory://", context=BackendContext())
    assert isinstance(queue, Queue)
    assert queue.capabilities.shared is False
    with pytest.raises(ConfigurationError, match="'queue'"):
        MemoryQueue.from_url("memory://?queue=x", context=BackendContext())
    with pytest.raises(ConfigurationError):
        MemoryQueue.from_url("sql://", context=BackendContext())


async def test_memory_sender_records_and_accepts_everyone() -> None:
    sender = MemorySender.from_url("memory://?from=noreply@example.org", context=BackendContext())
    assert isinstance(sender, Sender)
    assert sender.from_address == "noreply@example.org"
    message = OutgoingMessage(
        "m1", b"Subject: hi\r\n\r\nhi\r\n", "noreply@example.org", ["a@x.org", "b@y.org"]
    )
    with pytest.raises(TransientDeliveryError):
        await sender.send(message)
    async with sender:
        result = await sender.send(message)
    assert sender.sent == [message]
    assert result.accepted == ["a@x.org", "b@y.org"]
    assert {(r.code, r.reply) for r in result.replies.values()} == {(250, "OK")}


def test_memory_sender_refuses_unknown_options_listing_the_valid_ones() -> None:
    assert_unknown_option_refused(MemorySender, "memory://?from=noreply@example.org")


def test_memory_sender_from_url_options() -> None:
    assert (
        MemorySender.from_url("memory://", context=BackendContext()).from_address == "mailqueue@example.com"
    )
    with pytest.raises(ConfigurationError, match="'form'"):
        MemorySender.from_url("memory://?form=a@b.c", context=BackendContext())
    with pytest.raises(ConfigurationError, match="from"):
        MemorySender.from_url("memory://?from=", context=BackendContext())
