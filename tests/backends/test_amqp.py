"""The ``amqp://`` queue against the machine's RabbitMQ: conformance, topology,
delays, returns, quorum mode, failures, and broker restarts (``slow``).

Every test works on its own queue and exchange (``mqt-<random>``), deleted
with its dead-letter and retry queues at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from brokers import delete_amqp_objects, read_all
from proc_helpers import eventually

from mailqueue import registry
from mailqueue.backends.amqp import (
    DUE_HEADER,
    KEY_HEADER,
    REASON_HEADER,
    REDELIVERED_HEADER,
    AMQPQueue,
)
from mailqueue.errors import ConfigurationError, QueueError
from mailqueue.protocols import BackendContext, Delivery, Queue
from mailqueue.testing.queue import DeadLetters, QueueConformance, QueueFactory, aclose

pytestmark = pytest.mark.rabbitmq

Admin = Callable[[], Awaitable[AbstractChannel]]


def unique() -> str:
    return f"mqt-{secrets.token_hex(6)}"


def amqp_url(base: str, name: str, **options: object) -> str:
    query = {"queue": name, "exchange": name, "reconnect_interval": "0.5", **options}
    return base + "?" + "&".join(f"{key}={value}" for key, value in query.items())


@pytest.fixture
async def names(rabbitmq_url: str) -> AsyncIterator[list[str]]:
    """Names to use for queues/exchanges; all deleted (with their satellites) at teardown."""
    made: list[str] = []
    yield made
    for name in made:
        await delete_amqp_objects(rabbitmq_url, name)


@pytest.fixture
def name(names: list[str]) -> str:
    """The test's queue and exchange name."""
    made = unique()
    names.append(made)
    return made


@pytest.fixture
async def admin(rabbitmq_url: str) -> AsyncIterator[Admin]:
    """Plain aio-pika channels on the broker (closed at teardown)."""
    connection = await aio_pika.connect(rabbitmq_url)

    async def channel() -> AbstractChannel:
        return await connection.channel()

    yield channel
    await connection.close()


class TestAMQPQueue(QueueConformance):
    @pytest.fixture
    async def queue(self, rabbitmq_url: str, name: str) -> AsyncIterator[Queue]:
        async with AMQPQueue.from_url(amqp_url(rabbitmq_url, name), context=BackendContext()) as queue:
            yield queue

    @pytest.fixture
    def backend_url(self, rabbitmq_url: str, name: str) -> str:
        return amqp_url(rabbitmq_url, name)

    @pytest.fixture
    async def queue_factory(self, rabbitmq_url: str, name: str) -> AsyncIterator[QueueFactory]:
        made: list[AMQPQueue] = []

        async def factory() -> Queue:
            queue = AMQPQueue.from_url(amqp_url(rabbitmq_url, name), context=BackendContext())
            await queue.open()
            made.append(queue)
            return queue

        yield factory
        for queue in made:
            await queue.close()

    @pytest.fixture
    def dead_letters(self, admin: Admin, name: str) -> DeadLetters:
        async def read() -> list[tuple[str, bytes, str]]:
            channel = await admin()
            try:
                messages = await read_all(channel, f"{name}.dead")
            except aio_pika.exceptions.ChannelNotFoundEntity:
                return []
            finally:
                if not channel.is_closed:
                    await channel.close()
            return [(str(m.headers[KEY_HEADER]), m.body, str(m.headers[REASON_HEADER])) for m in messages]

        return read


# --- configuration --------------------------------------------------------------


def test_url_options_and_defaults() -> None:
    queue = registry.create_queue("amqp://u:secret@broker.example:5673/vh")
    assert isinstance(queue, AMQPQueue)
    assert (queue.queue, queue.exchange, queue.routing_key, queue.exchange_type, queue.quorum) == (
        "mailqueue",
        "mailqueue",
        "mailqueue",
        "direct",
        False,
    )
    assert queue.tiers[0] == 100
    assert queue.tiers[-1] == 100 * 2**17
    assert len(queue.tiers) == 18
    assert queue.url == "amqp://u:secret@broker.example:5673/vh"

    queue = AMQPQueue.from_url(
        "amqps://u:p@h/%2F?queue=q&exchange=x&routing_key=rk&quorum=true&confirm_timeout=2"
        "&connect_timeout=3&tier_min=0.5&tier_max=4&heartbeat=10&no_verify_ssl=1&reconnect_interval=1",
        context=BackendContext(),
    )
    assert (queue.queue, queue.exchange, queue.routing_key, queue.quorum) == ("q", "x", "rk", True)
    assert (queue.confirm_timeout, queue.connect_timeout, queue.tiers) == (2.0, 3.0, (500, 1000, 2000, 4000))
    # Driver options go to aio-pika; ours do not.
    assert urlsplit(queue.url).query == "heartbeat=10&no_verify_ssl=1&reconnect_interval=1"
    assert queue.tier_queue(500) == "q.retry.500"
    assert queue.dead_queue == "q.dead"

    default_exchange = AMQPQueue.from_url("amqp://h/?queue=q&exchange=", context=BackendContext())
    assert (default_exchange.exchange, default_exchange.routing_key) == ("", "q")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("amqp://h/?queu=x", "unknown option 'queu'"),
        ("amqp://h/?timeout=3", "unknown option 'timeout'"),
        ("amqp://h/?quorum=maybe", "'quorum'"),
        ("amqp://h/?confirm_timeout=soon", "'confirm_timeout'"),
        ("amqp://h/?confirm_timeout=0", "'confirm_timeout'"),
        ("amqp://h/?tier_min=-1", "'tier_min'"),
        ("amqp://h/?tier_min=2&tier_max=1", "tier_max"),
        ("amqp://h/?heartbeat=often", "'heartbeat'"),
        ("amqp://h/?heartbeat=1.5", "'heartbeat'"),
        ("amqps://h/?no_verify_ssl=yes", "'no_verify_ssl'"),
        ("amqp://h/?auth=kerberos", "'auth'"),
        ("amqp://h/?reconnect_interval=-1", "'reconnect_interval'"),
        ("amqp://h/?exchange_type=bogus", "'exchange_type'"),
        ("amqp://h/?queue=", "'queue'"),
        ("amqp://h/?exchange=&routing_key=other", "routing_key"),
        ("amqp:///?queue=x", "needs a host"),
        ("amqp://h:port/", "bad port"),
        ("http://h/", "not an amqp"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AMQPQueue.from_url(url, context=BackendContext())


def test_errors_do_not_show_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        AMQPQueue.from_url("http://user:hunter2@h/", context=BackendContext())
    assert "hunter2" not in str(caught.value)


async def test_unreachable_broker_fails_quickly() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once closed
    queue = AMQPQueue.from_url(
        f"amqp://guest:secret@127.0.0.1:{port}/?connect_timeout=3", context=BackendContext()
    )
    started = time.monotonic()
    with pytest.raises(QueueError, match="could not connect") as caught:
        await queue.open()
    assert time.monotonic() - started < 3.5
    assert "secret" not in str(caught.value)
    with pytest.raises(QueueError, match="not open"):
        await queue.publish("k", b"x")
    with pytest.raises(QueueError, match="not open"):
        queue.consume(prefetch=1)
    await queue.close()


async def test_silent_port_times_out() -> None:
    # A listener that accepts TCP but never speaks AMQP: open() must not hang.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        queue = AMQPQueue.from_url(
            f"amqp://guest:guest@127.0.0.1:{port}/?connect_timeout=1", context=BackendContext()
        )
        started = time.monotonic()
        with pytest.raises(QueueError, match="timed out"):
            await queue.open()
        assert time.monotonic() - started < 2.5


async def test_amqps_speaks_tls(rabbitmq_url: str) -> None:
    # amqps:// against the plain AMQP port: the TLS handshake fails, it never falls back to plain.
    url = rabbitmq_url.replace("amqp://", "amqps://", 1) + "?connect_timeout=3"
    with pytest.raises(QueueError, match="could not connect"):
        await AMQPQueue.from_url(url, context=BackendContext()).open()


async def test_wrong_password_is_a_queue_error(rabbitmq_url: str) -> None:
    url = rabbitmq_url.replace("guest:guest", "guest:wrong")
    with pytest.raises(QueueError):
        await AMQPQueue.from_url(url + "?connect_timeout=5", context=BackendContext()).open()


# --- topology and messages ------------------------------------------------------


async def test_topology_and_persistent_messages(rabbitmq_url: str, name: str, admin: Admin) -> None:
    async with AMQPQueue.from_url(amqp_url(rabbitmq_url, name), context=BackendContext()) as queue:
        await queue.publish("key-1", b"payload")
        channel = await admin()
        # Passive declares that fail if the entities are missing or differ.
        await channel.declare_exchange(name, aio_pika.ExchangeType.DIRECT, durable=True, passive=True)
        declared = await channel.declare_queue(name, durable=True, passive=True)
        assert declared.declaration_result.message_count == 1
        # Same arguments accepted again: durable, not auto-delete, no arguments (classic).
        await channel.declare_queue(name, durable=True)
        await channel.declare_exchange(name, aio_pika.ExchangeType.DIRECT, durable=True)
        # Nothing else is declared at start.
        for other in (f"{name}.dead", f"{name}.retry.100"):
            probe = await admin()
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                await probe.declare_queue(other, passive=True)
        (message,) = await read_all(channel, name)
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.headers[KEY_HEADER] == "key-1"
        assert message.routing_key == name
        assert message.exchange == name
        assert message.body == b"payload"
        await channel.close()


async def test_unroutable_publish_raises(rabbitmq_url: str, name: str, admin: Admin) -> None:
    async with AMQPQueue.from_url(amqp_url(rabbitmq_url, name), context=BackendContext()) as queue:
        channel = await admin()
        bound = await channel.declare_queue(name, durable=True, passive=True)
        await bound.unbind(name, name)
        with pytest.raises(QueueError, match="unroutable"):
            await queue.publish("lost", b"x")
        # The channel is still usable once routable again.
        await bound.bind(name, name)
        await queue.publish("found", b"x")
        assert [m.headers[KEY_HEADER] for m in await read_all(channel, name)] == ["found"]


async def test_routing_key_option_and_a_missing_binding(rabbitmq_url: str, name: str, admin: Admin) -> None:
    url = amqp_url(rabbitmq_url, name, routing_key="mail.out")
    async with AMQPQueue.from_url(url, context=BackendContext()) as queue:
        await queue.publish("k", b"x")
        channel = await admin()
        (message,) = await read_all(channel, name)
        assert message.routing_key == "mail.out"
    # Another instance publishing on a key nothing is bound to gets a QueueError, not a success.
    other = AMQPQueue.from_url(amqp_url(rabbitmq_url, name, routing_key="mail.out"), context=BackendContext())
    async with other:
        channel = await admin()
        bound = await channel.declare_queue(name, durable=True, passive=True)
        await bound.unbind(name, "mail.out")
        with pytest.raises(QueueError, match="unroutable"):
            await other.publish("k2", b"x")


async def test_default_exchange_mode(rabbitmq_url: str, name: str) -> None:
    url = amqp_url(rabbitmq_url, name, exchange="")
    async with AMQPQueue.from_url(url, context=BackendContext()) as queue:
        await queue.publish("k", b"x")
        await queue.publish("later", b"y", delay=0.2)
        iterator = queue.consume(prefetch=2)
        got = [await asyncio.wait_for(anext(iterator), 5) for _ in range(2)]
        assert [d.key for d in got] == ["k", "later"]
        for delivery in got:
            await delivery.ack()
        await aclose(iterator)


async def test_conflicting_existing_queue_is_a_queue_error(
    rabbitmq_url: str, name: str, admin: Admin
) -> None:
    channel = await admin()
    await channel.declare_queue(name, durable=True, arguments={"x-max-length": 10})
    with pytest.raises(QueueError, match=r"PRECONDITION_FAILED|inequivalent"):
        await AMQPQueue.from_url(amqp_url(rabbitmq_url, name), context=BackendContext()).open()


async def test_concurrent_publishers_on_one_channel(rabbitmq_url: str, name: str) -> None:
    async with AMQPQueue.from_url(amqp_url(rabbitmq_url, name), context=BackendContext()) as queue:
        keys = [f"c{i}" for i in range(400)]
        await asyncio.gather(*(queue.publish(key, key.encode()) for key in keys))
        assert await queue.depth() == len(keys)
        iterator = queue.consume(prefetch=50)
        seen = []
        for _ in keys:
            delivery = await asyncio.wait_for(anext(iterator), 5)
            assert delivery.body == delivery.key.encode()
            seen.append(delivery.key)
            await delivery.ack()
        await aclose(iterator)
        assert sorted(seen) == sorted(keys)


# --- delays -----------------------------------------------------------------------


async def next_within(iterator: AsyncIterator[Delivery], seconds: float = 10.0) -> Delivery:
    return await asyncio.wait_for(anext(iterator), seconds)


async def test_short_delay_overtakes_a_longer_one(rabbitmq_url: str, name: str) -> None:
    async with AMQPQueue.from_url(amqp_url(rabbitmq_url, name), context=BackendContext()) as queue:
        started = time.monotonic()
        await queue.publish("slow", b"3", delay=3)
        await queue.publish("quick", b"0.3", delay=0.3)
        iterator = queue.consume(prefetch=4)
        first = await next_within(iterator)
        at_first = time.monotonic() - started
        second = await next_within(iterator)
        at_second = time.monotonic() - started
        assert (first.key, second.key) == ("quick", "slow")
        assert 0.3 <= at_first < 1.5, at_first
        assert 3.0 <= at_second < 4.5, at_second
        for delivery in (first, second):
            assert delivery.redelivered is False
            await delivery.ack()
        await aclose(iterator)


async def test_long_delay_hops_through_the_largest_tier(rabbitmq_url: str, name: str, admin: Admin) -> None:
    url = amqp_url(rabbitmq_url, name, tier_min=0.1, tier_max=0.4)
    async with AMQPQueue.from_url(url, context=BackendContext()) as queue:
        assert queue.tiers == (100, 200, 400)
        started = time.monotonic()
        await queue.publish("hop", b"h", delay=1.5)
        iterator = queue.consume(prefetch=1)
        # Watch it go round: it must not be handed out while it hops (0.4 s at a time).
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pending := asyncio.ensure_future(anext(iterator))), 1.3)
        delivery = await asyncio.wait_for(pending, 5)
        waited = time.monotonic() - started
        assert delivery.key == "hop"
        assert delivery.body == b"h"
        assert 1.5 <= waited < 2.5, waited
        assert delivery.redelivered is False
        await delivery.ack()
        await aclose(iterator)
        # The tier queues that were used exist, with their TTL and dead-letter routing.
        channel = await admin()
        tier = await channel.declare_queue(
            f"{name}.retry.400",
            durable=True,
            arguments={
                "x-message-ttl": 400,
                "x-dead-letter-exchange": name,
                "x-dead-letter-routing-key": name,
            },
        )
        assert tier.declaration_result.message_count == 0


async def test_retry_carries_due_time_and_redelivered(rabbitmq_url: str, name: str, admin: Admin) -> None:
    async with AMQPQueue.from_url(amqp_url(rabbitmq_url, name), context=BackendContext()) as queue:
        await queue.publish("r", b"body")
        iterator = queue.consume(prefetch=1)
        delivery = await next_within(iterator)
        before = int(time.time() * 1000)
        await delivery.retry(60)
        assert await queue.depth() == 1
        channel = await admin()
        (copy,) = await read_all(channel, f"{name}.retry.51200")
        assert copy.headers[KEY_HEADER] == "r"
        assert copy.headers[REDELIVERED_HEADER] is True
        due = copy.headers[DUE_HEADER]
        assert isinstance(due, int)
        assert before + 60_000 <= due <= before + 61_000
        assert copy.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        await channel.close()
        await aclose(iterator)


async def test_a_message_due_later_is_not_handed_out_early(
    rabbitmq_url: str, name: str, admin: Admin
) -> None:
    # A message whose due time is still ahead when it reaches the main queue
    # (e.g. put there by hand) is routed into a tier, not handed out.
    async with AMQPQueue.from_url(amqp_url(rabbitmq_url, name), context=BackendContext()) as queue:
        channel = await admin()
        due = int(time.time() * 1000) + 1200
        exchange = await channel.get_exchange(name)
        await exchange.publish(
            aio_pika.Message(b"early", headers={KEY_HEADER: "early", DUE_HEADER: due}), routing_key=name
        )
        iterator = queue.consume(prefetch=1)
        delivery = await next_within(iterator)
        assert time.time() * 1000 >= due
        assert delivery.key == "early"
        assert delivery.redelivered is False
        await delivery.ack()
        await aclose(iterator)


async def test_a_deleted_tier_or_dead_queue_is_declared_again(
    rabbitmq_url: str, name: str, admin: Admin
) -> None:
    async with AMQPQueue.from_url(amqp_url(rabbitmq_url, name), context=BackendContext()) as queue:
        await queue.publish("first", b"1", delay=0.1)
        iterator = queue.consume(prefetch=1)
        first = await next_within(iterator)
        await first.dead("one")
        channel = await admin()
        await channel.queue_delete(f"{name}.retry.100")
        await channel.queue_delete(f"{name}.dead")
        await queue.publish("second", b"2", delay=0.1)
        second = await next_within(iterator)
        assert second.key == "second"
        await second.dead("two")
        await aclose(iterator)
        (dead,) = await read_all(channel, f"{name}.dead")
        assert dead.headers[KEY_HEADER] == "second"


# --- quorum ---------------------------------------------------------------------------


async def test_quorum_mode(rabbitmq_url: str, name: str, admin: Admin) -> None:
    url = amqp_url(rabbitmq_url, name, quorum="true")
    async with AMQPQueue.from_url(url, context=BackendContext()) as queue:
        channel = await admin()
        # Declaring again with different arguments fails, so these declares prove the types.
        await channel.declare_queue(name, durable=True, arguments=queue._topology.queue_arguments())
        await channel.declare_queue(f"{name}.dead", durable=True, arguments={"x-queue-type": "quorum"})
        await queue.publish("q1", b"one")
        await queue.publish("q2", b"two", delay=0.3)
        iterator = queue.consume(prefetch=2)
        first = await next_within(iterator)
        assert first.key == "q1"
        await first.retry(0.2)
        got = [await next_within(iterator) for _ in range(2)]
        assert {d.key for d in got} == {"q1", "q2"}
        for delivery in got:
            await delivery.ack()
        await queue.publish("q3", b"three")
        third = await next_within(iterator)
        await third.dead("bad")
        await aclose(iterator)
        tier_arguments = queue._topology.tier_arguments(200)
        assert tier_arguments["x-queue-type"] == "quorum"
        await channel.declare_queue(f"{name}.retry.200", durable=True, arguments=tier_arguments)
        (dead,) = await read_all(channel, f"{name}.dead")
        assert (dead.headers[KEY_HEADER], dead.headers[REASON_HEADER], dead.body) == ("q3", "bad", b"three")


# --- consuming edge cases -------------------------------------------------------------


async def test_settling_after_close_does_nothing_and_raises_nothing(rabbitmq_url: str, name: str) -> None:
    url = amqp_url(rabbitmq_url, name)
    queue = AMQPQueue.from_url(url, context=BackendContext())
    await queue.open()
    for key in ("a", "b", "c", "d"):
        await queue.publish(key, b"x")
    iterator = queue.consume(prefetch=4)
    held = [await next_within(iterator) for _ in range(4)]
    await queue.close()
    await held[0].ack()
    await held[1].retry(5)
    await held[2].dead("late")
    await held[3].release()
    async with AMQPQueue.from_url(url, context=BackendContext()) as again:
        iterator = again.consume(prefetch=4)
        back = [await next_within(iterator) for _ in range(4)]
        assert sorted(d.key for d in back) == ["a", "b", "c", "d"]
        assert all(d.redelivered for d in back)
        for delivery in back:
            await delivery.ack()
        await aclose(iterator)
        assert await again.depth() == 0


async def test_acks_in_one_turn_settle_exactly_those(rabbitmq_url: str, name: str) -> None:
    # Acks asked for together go to the broker in one write, each for its own delivery:
    # the ones not acked (out of order, in the middle) come back, nothing else does.
    url = amqp_url(rabbitmq_url, name)
    async with AMQPQueue.from_url(url, context=BackendContext()) as queue:
        keys = [f"k{i}" for i in range(8)]
        for key in keys:
            await queue.publish(key, b"x")
        iterator = queue.consume(prefetch=8)
        held = [await next_within(iterator) for _ in range(8)]
        kept = {"k2", "k5"}
        await asyncio.gather(*(d.ack() for d in reversed(held) if d.key not in kept))
        await aclose(iterator)
        for delivery in held:
            if delivery.key in kept:
                await delivery.release()
        iterator = queue.consume(prefetch=8)
        back = [await next_within(iterator) for _ in range(2)]
        assert sorted(d.key for d in back) == sorted(kept)
        await asyncio.gather(*(d.ack() for d in back))
        await aclose(iterator)
        assert await queue.depth() == 0


# --- broker restarts (slow) --------------------------------------------------------


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


async def broker_answers(url: str) -> bool:
    try:
        connection = await aio_pika.connect(url, timeout=2)
    except Exception:
        return False
    await connection.close()
    return True


@contextlib.asynccontextmanager
async def broker_stopped(url: str) -> AsyncIterator[None]:
    """Stop the RabbitMQ application; always start it again and wait until it answers AMQP."""
    await asyncio.to_thread(rabbitmqctl, "stop_app")
    try:
        yield
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
        deadline = time.monotonic() + 60
        while not await broker_answers(url):
            assert time.monotonic() < deadline, "RabbitMQ did not come back within 60 s"
            await asyncio.sleep(0.2)


async def publish_reconnected(queue: Queue, key: str, body: bytes) -> None:
    """Publish, retrying while the queue reconnects (it raises QueueError until then)."""

    async def published() -> bool:
        await queue.publish(key, body)
        return True

    await eventually(published, f"{key} to be published", within=30.0, every=0.2, retry=(QueueError,))


@pytest.mark.exclusive
@pytest.mark.slow
async def test_restart_keeps_confirmed_messages_and_publishing_resumes(rabbitmq_url: str, name: str) -> None:
    url = amqp_url(rabbitmq_url, name, confirm_timeout=5)
    async with AMQPQueue.from_url(url, context=BackendContext()) as queue:
        keys = [f"d{i}" for i in range(50)]
        for key in keys:
            await queue.publish(key, key.encode())
        await queue.publish("delayed", b"later", delay=2)
        async with broker_stopped(rabbitmq_url):
            with pytest.raises(QueueError):
                await queue.publish("during", b"x")
            with pytest.raises(QueueError):
                await queue.publish("during-delayed", b"x", delay=1)
            # A consumer cannot start while the broker is away: an error the worker retries, not a hang.
            starting = queue.consume(prefetch=4)
            with pytest.raises(QueueError, match="not connected"):
                await asyncio.wait_for(anext(starting), 15)
        # Publishing works again without reopening the queue.
        await publish_reconnected(queue, "after", b"after")
        iterator = starting  # the consumer that failed to start starts now
        seen: list[str] = []
        while len(seen) < len(keys) + 2:
            delivery = await next_within(iterator, 15)
            seen.append(delivery.key)
            await delivery.ack()
        await aclose(iterator)
        assert sorted(seen) == sorted([*keys, "after", "delayed"])
        assert "during" not in seen
        assert await queue.depth() == 0


@pytest.mark.exclusive
@pytest.mark.slow
async def test_consumer_resumes_across_a_restart(rabbitmq_url: str, name: str) -> None:
    url = amqp_url(rabbitmq_url, name, confirm_timeout=5)
    async with AMQPQueue.from_url(url, context=BackendContext()) as queue:
        first_keys = [f"a{i}" for i in range(20)]
        for key in first_keys:
            await queue.publish(key, b"x")
        iterator = queue.consume(prefetch=8)
        acked: list[str] = []
        for _ in range(10):
            delivery = await next_within(iterator)
            acked.append(delivery.key)
            await delivery.ack()
        held = [await next_within(iterator) for _ in range(3)]
        # A consumer waiting across the restart must not end.
        async with broker_stopped(rabbitmq_url):
            for delivery in held:  # fetched before the restart, settled during it: harmless
                await delivery.ack()
        for delivery in held:  # and again after it
            await delivery.release()
        later_keys = [f"b{i}" for i in range(10)]
        for key in later_keys:
            await publish_reconnected(queue, key, b"y")
        got: list[str] = []
        redelivered: set[str] = set()
        expected = set(first_keys + later_keys) - set(acked)
        while not expected <= set(got):
            delivery = await next_within(iterator, 20)
            got.append(delivery.key)
            if delivery.redelivered:
                redelivered.add(delivery.key)
            await delivery.ack()
        await aclose(iterator)
        # Nothing lost; the three settled across the restart came back (their acks never reached the broker).
        assert {d.key for d in held} <= redelivered
        assert set(got) <= set(first_keys + later_keys)
        assert not set(acked) & set(got)
        assert await queue.depth() == 0


def close_connections_named(connection_name: str) -> int:
    """Force-close the broker's connections whose client named itself ``connection_name``."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    pids = [line.split("\t", 1)[0] for line in listed.splitlines() if f'"{connection_name}"' in line]
    for pid in pids:
        rabbitmqctl("close_connection", pid, "mailqueue test: forced close")
    return len(pids)


@pytest.mark.slow
async def test_consumer_and_publisher_recover_from_a_dropped_connection(rabbitmq_url: str, name: str) -> None:
    url = amqp_url(rabbitmq_url, name, confirm_timeout=5, heartbeat=5) + f"&name={name}"
    async with AMQPQueue.from_url(url, context=BackendContext()) as queue:
        for key in ("k0", "k1", "k2", "k3"):
            await queue.publish(key, b"x")
        iterator = queue.consume(prefetch=2)
        held = [await next_within(iterator) for _ in range(2)]
        assert await asyncio.to_thread(close_connections_named, name) == 1
        for delivery in held:  # their channel is gone: no error, no effect
            await delivery.ack()
        await publish_reconnected(queue, "k4", b"x")
        got: list[Delivery] = []
        while {d.key for d in got} != {"k0", "k1", "k2", "k3", "k4"}:
            delivery = await next_within(iterator, 20)
            got.append(delivery)
            await delivery.ack()
        await aclose(iterator)
        assert len(got) == 5  # each once: the two settled on the dead channel came back once
        assert {d.key for d in got if d.redelivered} >= {d.key for d in held}
        assert await queue.depth() == 0
