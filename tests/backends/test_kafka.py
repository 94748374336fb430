"""The ``kafka://`` queue against Tansu: the Queue conformance suite over one and
three partitions, and what is particular to Kafka (contiguous commits,
non-blocking retries, rebalances, long handlers, broker restarts)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from brokers import Tansu, tansu_binary

from mailqueue.backends.kafka import REASON_HEADER, KafkaDelivery, KafkaOptions, KafkaQueue
from mailqueue.errors import ConfigurationError, QueueError, ValidationError
from mailqueue.protocols import BackendContext, Delivery, Queue
from mailqueue.registry import create_queue
from mailqueue.testing.queue import DeadLetters, QueueConformance, QueueFactory, aclose

pytestmark = pytest.mark.kafka

# Tansu answers a group join after about half the session timeout: keep it short.
FAST = (
    "idempotence=false&create=true&session_timeout=1&heartbeat=0.1&fetch_wait=0.05&poll=0.05"
    "&commit_interval=0.1&timeout=10&drain=5&rebalance_timeout=1&metadata_max_age=2"
)


def _name(label: str) -> str:
    return f"{label}-{secrets.token_hex(5)}"


def kafka_url(
    bootstrap: str, topic: str, *, partitions: int = 1, group: str | None = None, extra: str = ""
) -> str:
    group = group or f"g-{topic}"
    url = f"kafka://{bootstrap}/{topic}?{FAST}&partitions={partitions}&group={group}"
    return f"{url}&{extra}" if extra else url


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic``, partition by partition (no group, nothing committed)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(await _partitions(consumer, topic))]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        records: list[Any] = []
        deadline = time.monotonic() + 10
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


async def _partitions(consumer: Any, topic: str) -> set[int]:
    deadline = time.monotonic() + 10
    while True:
        await consumer._client.force_metadata_update()
        found = consumer.partitions_for_topic(topic)
        if found:
            return set(found)
        assert time.monotonic() < deadline, f"topic {topic} has no partitions"
        await asyncio.sleep(0.1)


class KafkaBackend:
    """Opens queues on one fresh topic and group, closes them all at the end."""

    def __init__(self, bootstrap: str, partitions: int, extra: str = "") -> None:
        self.bootstrap = bootstrap
        self.topic = _name("t")
        self.url = kafka_url(bootstrap, self.topic, partitions=partitions, extra=extra)
        self.queues: list[KafkaQueue] = []

    async def make(self) -> KafkaQueue:
        queue = KafkaQueue.from_url(self.url, context=BackendContext())
        await queue.open()
        self.queues.append(queue)
        return queue

    async def dead_letters(self) -> list[tuple[str, bytes, str]]:
        return [
            (r.key.decode(), r.value or b"", dict(r.headers)[REASON_HEADER].decode())
            for r in await read_topic(self.bootstrap, f"{self.topic}.dead")
        ]

    async def close(self) -> None:
        for queue in self.queues:
            await queue.close()


class _KafkaConformance(QueueConformance):
    partitions: ClassVar[int] = 1
    # Several members joining at once need several rounds on Tansu (its SyncGroup fails whenever a
    # follower's request arrives before the leader's, and each round takes about 2 s): the
    # four-instance test took from 6 to 59 s here, so it gets three times 40 s.
    timeout: ClassVar[float] = 40.0
    # Longer than a group join (about 1 s here), so that a delayed message is not already due when
    # the consumer gets its partitions.
    delay: ClassVar[float] = 2.0

    @pytest.fixture
    async def backend(self, kafka_bootstrap: str) -> AsyncIterator[KafkaBackend]:
        backend = KafkaBackend(kafka_bootstrap, self.partitions)
        try:
            yield backend
        finally:
            await backend.close()

    @pytest.fixture
    async def queue(self, backend: KafkaBackend) -> Queue:
        return await backend.make()

    @pytest.fixture
    def queue_factory(self, backend: KafkaBackend) -> QueueFactory:
        return backend.make

    @pytest.fixture
    def dead_letters(self, backend: KafkaBackend) -> DeadLetters:
        return backend.dead_letters

    @pytest.fixture
    def backend_url(self, backend: KafkaBackend) -> str:
        return backend.url


class TestKafkaOnePartition(_KafkaConformance):
    partitions = 1


class TestKafkaThreePartitions(_KafkaConformance):
    partitions = 3


# --- URL ------------------------------------------------------------------------


def test_from_url_reads_hosts_topic_and_options() -> None:
    queue = create_queue("kafka://k1:9093,k2,[::1]:9094/mail.out?group=workers&batch=50&idempotence=false")
    assert isinstance(queue, KafkaQueue)
    assert queue.bootstrap_servers == ["k1:9093", "k2:9092", "[::1]:9094"]
    assert (queue.topic, queue.retry_topic, queue.dead_topic) == (
        "mail.out",
        "mail.out.retry",
        "mail.out.dead",
    )
    assert (queue.options.group, queue.options.batch, queue.options.idempotence) == ("workers", 50, False)
    assert queue.options.create is False
    assert queue.capabilities.delay
    assert queue.capabilities.shared
    assert not queue.capabilities.depth

    defaults = KafkaQueue.from_url("kafka://k1/q", context=BackendContext())
    assert defaults.options == KafkaOptions(retry_topic="q.retry", dead_topic="q.dead")
    assert defaults.options.idempotence is True
    assert defaults.options.group == "mailqueue"

    named = KafkaQueue.from_url(
        "kafka://k1/q?retry_topic=later&dead_topic=graveyard&create=yes&partitions=6&replication=3",
        context=BackendContext(),
    )
    assert (named.retry_topic, named.dead_topic) == ("later", "graveyard")
    assert (named.options.create, named.options.partitions, named.options.replication) == (True, 6, 3)

    sasl = KafkaQueue.from_url(
        "kafka://user:s%40cret@k1/q?sasl_mechanism=scram-sha-512", context=BackendContext()
    )
    assert sasl.options.security_protocol == "SASL_PLAINTEXT"
    assert sasl._clients.common()["sasl_plain_password"] == "s@cret"
    assert sasl._clients.common()["sasl_mechanism"] == "SCRAM-SHA-512"
    assert "s@cret" not in repr(sasl.options)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("kafka://k1/q?colour=red", "'colour'"),
        ("kafka://k1/q?batch=0", "'batch'"),
        ("kafka://k1/q?batch=many", "'batch'"),
        ("kafka://k1/q?idempotence=maybe", "'idempotence'"),
        ("kafka://k1/q?timeout=-1", "'timeout'"),
        ("kafka://k1/q?session_timeout=2&heartbeat=3", "'heartbeat'"),
        ("kafka://k1/q?security_protocol=SSH", "'security_protocol'"),
        ("kafka://k1/q?retry_topic=a%20b", "'retry_topic'"),
        ("kafka://k1/q?dead_topic=q", "different"),
        ("kafka://k1/", "topic"),
        ("kafka://k1/bad%20topic", "topic"),
        ("kafka:///q", "host"),
        ("kafka://k1:port/q", "port"),
        ("kafka://k1:70000/q", "port"),
        ("kafka://u:p@k1/q?security_protocol=SSL", "SASL"),
        ("amqp://k1/q", "kafka://"),
    ],
)
def test_from_url_refuses_bad_urls(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        KafkaQueue.from_url(url, context=BackendContext())


# --- topics -----------------------------------------------------------------------


async def test_missing_topic_without_create_fails_clearly(kafka_bootstrap: str) -> None:
    topic = _name("absent")
    url = kafka_url(kafka_bootstrap, topic).replace("create=true", "create=false")
    queue = KafkaQueue.from_url(url, context=BackendContext())
    with pytest.raises(QueueError, match=f"{topic}.*create=true"):
        await queue.open()
    with pytest.raises(QueueError):
        await queue.publish("k", b"x")
    # Created by an operator (here: by another queue with create=true), it opens.
    async with KafkaQueue.from_url(kafka_url(kafka_bootstrap, topic), context=BackendContext()) as creator:
        assert creator.capabilities.ordered is True
    async with queue:
        with pytest.raises(ValidationError):
            await queue.publish("", b"x")
        await queue.publish("k", b"x")


# --- commits ------------------------------------------------------------------------


async def committed(bootstrap: str, group: str, tp: Any) -> int | None:
    """The group's committed offset of ``tp``, read by a plain consumer that joins nothing."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        offset: int | None = await consumer.committed(tp)
        return offset
    finally:
        await consumer.stop()


async def wait_committed(bootstrap: str, group: str, tp: Any, expected: int, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while (offset := await committed(bootstrap, group, tp)) != expected:
        assert time.monotonic() < deadline, f"committed offset is {offset}, not {expected}"
        await asyncio.sleep(0.05)


async def take(iterator: AsyncIterator[Delivery], count: int, within: float = 15) -> list[Delivery]:
    async with asyncio.timeout(within):
        return [await anext(iterator) for _ in range(count)]


async def test_commit_stops_at_the_first_unfinished_offset(kafka_bootstrap: str) -> None:
    backend = KafkaBackend(kafka_bootstrap, 1)
    try:
        queue = await backend.make()
        keys = [_name(f"c{i}") for i in range(5)]
        for key in keys:
            await queue.publish(key, b"x")
        iterator = queue.consume(prefetch=5)
        deliveries = await take(iterator, 5)
        assert [d.key for d in deliveries] == keys  # offsets 0..4
        group, tp = queue.options.group, TopicPartition(queue.topic, 0)
        for n in (0, 2, 3):
            await deliveries[n].ack()
        await wait_committed(kafka_bootstrap, group, tp, 1)
        await asyncio.sleep(10 * queue.options.commit_interval)  # several commit rounds
        assert await committed(kafka_bootstrap, group, tp) == 1
        await deliveries[1].ack()
        await wait_committed(kafka_bootstrap, group, tp, 4)
        await deliveries[4].release()  # finished too: re-published to the retry topic
        await wait_committed(kafka_bootstrap, group, tp, 5)
        again = await take(iterator, 1)
        assert (again[0].key, again[0].redelivered) == (keys[4], True)
        await again[0].ack()
        await aclose(iterator)
    finally:
        await backend.close()


# --- retries ----------------------------------------------------------------------


async def test_retries_with_different_delays_do_not_block_each_other(kafka_bootstrap: str) -> None:
    backend = KafkaBackend(kafka_bootstrap, 1)
    try:
        queue = await backend.make()
        slow, fast = _name("slow"), _name("fast")
        await queue.publish(slow, b"s")
        await queue.publish(fast, b"f")
        iterator = queue.consume(prefetch=2)
        first, second = await take(iterator, 2)
        assert (first.key, second.key) == (slow, fast)
        started = time.monotonic()
        await first.retry(3.0)
        await second.retry(0.3)
        (again,) = await take(iterator, 1)
        assert again.key == fast
        assert 0.28 <= time.monotonic() - started < 2.5
        await again.ack()
        (last,) = await take(iterator, 1)
        assert last.key == slow
        assert time.monotonic() - started >= 2.98
        await last.ack()
        await aclose(iterator)
    finally:
        await backend.close()


# --- long handlers, rebalances, idle instances ----------------------------------------


async def test_long_handler_does_not_lose_the_partition(kafka_bootstrap: str) -> None:
    # max_poll_interval of 1 s: a consumer that stopped polling while a delivery is held would leave.
    backend = KafkaBackend(kafka_bootstrap, 1, extra="max_poll_interval=1")
    try:
        queue = await backend.make()
        held_key, other_key = _name("held"), _name("other")
        await queue.publish(held_key, b"h")
        iterator = queue.consume(prefetch=1)
        (held,) = await take(iterator, 1)
        waiting = asyncio.ensure_future(anext(iterator))
        await queue.publish(other_key, b"o")
        await asyncio.sleep(3.0)  # the "SMTP send": three poll intervals
        assert not waiting.done()  # prefetch=1: nothing more while one is out
        await held.ack()
        other = await asyncio.wait_for(waiting, 10)
        assert (other.key, other.redelivered) == (other_key, False)
        await other.ack()
        # Both commits succeed: the member never left the group, nothing comes again.
        await wait_committed(kafka_bootstrap, queue.options.group, TopicPartition(queue.topic, 0), 2)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(iterator), 1.0)
        await aclose(iterator)
    finally:
        await backend.close()


async def test_rebalance_drains_and_shares_without_duplicates(kafka_bootstrap: str) -> None:
    # rebalance_timeout above the hold below: the broker waits for the draining member.
    backend = KafkaBackend(kafka_bootstrap, 3, extra="rebalance_timeout=8")
    try:
        first_queue = await backend.make()
        second_queue = await backend.make()
        keys = [_name(f"r{i}") for i in range(30)]
        for key in keys:
            await first_queue.publish(key, key.encode())
        acked: list[tuple[str, str]] = []
        first = first_queue.consume(prefetch=4)
        held = await take(first, 4)
        second = second_queue.consume(prefetch=4)
        assert isinstance(first, type(second))
        # The second member's join makes the first one drain: it waits for the held deliveries.
        deadline = time.monotonic() + 10
        while not first._revoking:
            assert time.monotonic() < deadline, "no rebalance started"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # settled well inside the drain
        for delivery in held:
            await delivery.ack()
            acked.append(("first", delivery.key))

        async def work(name: str, iterator: AsyncIterator[Delivery]) -> None:
            async for delivery in iterator:
                acked.append((name, delivery.key))
                await delivery.ack()

        tasks = [asyncio.create_task(work("first", first)), asyncio.create_task(work("second", second))]
        deadline = time.monotonic() + 20
        while len({key for _, key in acked}) < len(keys) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # time for a duplicate to show up
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        await aclose(first)
        await aclose(second)
        got = [key for _, key in acked]
        assert sorted(got) == sorted(keys), "lost or duplicated deliveries"
        assert {name for name, key in acked if key not in {d.key for d in held}} == {"first", "second"}
    finally:
        await backend.close()


async def test_late_settle_after_the_partition_moved_is_a_no_op(kafka_bootstrap: str) -> None:
    backend = KafkaBackend(kafka_bootstrap, 1, extra="drain=0.3")
    try:
        first_queue = await backend.make()
        second_queue = await backend.make()
        key = _name("late")
        await first_queue.publish(key, b"l")
        first = first_queue.consume(prefetch=1)
        (held,) = await take(first, 1)
        assert isinstance(held, KafkaDelivery)
        await aclose(first)  # lingers 0.3 s for the held delivery, then leaves
        second = second_queue.consume(prefetch=1)
        (again,) = await take(second, 1)
        assert again.key == key  # read again by the next owner: never committed
        for settle in (held.ack(), held.retry(0), held.release(), held.dead("late")):
            await settle  # no-ops, no exceptions
        await again.ack()
        await aclose(second)
        assert await backend.dead_letters() == []
    finally:
        await backend.close()


async def test_idle_instance_warns(kafka_bootstrap: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mailqueue.backends.kafka")
    backend = KafkaBackend(kafka_bootstrap, 1)
    try:
        # One partition in the main topic (and one in the retry topic): the second instance gets no
        # main-topic partition.
        queues = [await backend.make() for _ in range(2)]
        iterators = [queue.consume(prefetch=1) for queue in queues]
        expected = f"more worker instances than partitions of {backend.topic}; this one is idle"
        deadline = time.monotonic() + 15
        while not any(r.getMessage().startswith(expected) for r in caplog.records):
            assert time.monotonic() < deadline, "no idle warning"
            await asyncio.sleep(0.05)
        for iterator in iterators:
            await aclose(iterator)
    finally:
        await backend.close()


# --- faults -------------------------------------------------------------------------


async def _next_skipping_errors(iterator: AsyncIterator[Delivery], deadline: float) -> Delivery:
    """The next delivery; QueueErrors (broker away) are retried, as the worker does."""
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "the consumer did not resume"
        try:
            return await asyncio.wait_for(anext(iterator), remaining)
        except QueueError:
            await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_broker_restart_fails_publishes_then_recovers(tansu: Tansu, tmp_path: Any) -> None:
    binary = tansu_binary()
    assert binary is not None  # the session's broker runs, so the binary is there
    broker = Tansu(binary, log=tmp_path / "tansu.log")
    broker.start()
    timeout = 3.0
    queue = KafkaQueue.from_url(
        kafka_url(broker.bootstrap, _name("fault"), extra=f"timeout={timeout}"), context=BackendContext()
    )
    try:
        await queue.open()
        iterator = queue.consume(prefetch=4)
        await queue.publish("before", b"1")
        (first,) = await take(iterator, 1)
        assert first.key == "before"
        await first.ack()
        assert await queue.depth() is None  # the readiness check passes while the broker answers

        await asyncio.to_thread(broker.stop)
        started = time.monotonic()
        with pytest.raises(QueueError):
            await queue.publish("during", b"2")
        assert time.monotonic() - started < timeout + 2
        started = time.monotonic()
        with pytest.raises(QueueError):
            await queue.depth()  # and fails while it does not
        assert time.monotonic() - started < timeout + 2

        # Same port, memory forgotten: create=true makes the topics again; the queue is not reopened.
        await asyncio.to_thread(broker.start)
        deadline = time.monotonic() + 30
        while True:
            try:
                await queue.publish("after", b"3")
                break
            except QueueError:
                assert time.monotonic() < deadline, "publishing did not recover"
                await asyncio.sleep(0.5)
        deadline = time.monotonic() + 30
        while True:
            delivery = await _next_skipping_errors(iterator, deadline)
            await delivery.ack()
            if delivery.key == "after":
                assert delivery.body == b"3"
                break
            # "during" may still arrive: a publish that timed out is not known to be lost.
            assert delivery.key == "during"
        await aclose(iterator)
    finally:
        await queue.close()
        await asyncio.to_thread(broker.stop)
