"""The publishing side of a Kafka queue: its producer, and every publish (new
mails, retries, dead letters), each one acknowledged by the brokers
(``acks=all``) within ``timeout`` or a :class:`~mailqueue.errors.QueueError`."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final

from mailqueue.backends._base import translate_errors
from mailqueue.backends.kafka.clients import DRIVER_ERRORS, KafkaClients, translate
from mailqueue.backends.kafka.records import (
    DUE_HEADER,
    ORIGIN_HEADER,
    PUBLISHED_HEADER,
    REASON_HEADER,
    REDELIVERED_HEADER,
    Record,
    now_ms,
)
from mailqueue.backends.kafka.topology import ensure_topics
from mailqueue.errors import QueueError

__all__ = ["KafkaPublisher"]

logger = logging.getLogger("mailqueue.backends.kafka")

#: The longest dead-letter reason kept in a header.
_MAX_REASON: Final = 4000


class KafkaPublisher:
    """The producer of one queue, publishing to its main, retry and dead topics.

    Args:
        clients: makes the producer and the admin client; its ``options`` are the queue's.
        topic: the main topic.
        retry_topic: where delayed and re-published records go.
        dead_topic: where dead letters go.
    """

    def __init__(self, clients: KafkaClients, *, topic: str, retry_topic: str, dead_topic: str) -> None:
        self.topic = topic
        self.retry_topic = retry_topic
        self.dead_topic = dead_topic
        self._clients = clients
        self._options = clients.options
        self._producer: Any = None
        self._recheck = False

    async def start(self) -> int:
        """Start the producer and check (or create) the topics.

        Returns:
            The number of partitions of the main topic.

        Raises:
            QueueError: the brokers are unreachable, or a topic is missing and ``create`` is false.
        """
        producer = self._clients.producer()
        try:
            with translate(self.topic, "connect"):
                await producer.start()
            await self._ensure_topics()
            with translate(self.topic, f"read the partitions of topic {self.topic!r}"):
                partitions = await producer.partitions_for(self.topic)
        except BaseException:
            await self._stop_producer(producer)
            raise
        self._producer = producer
        return len(partitions)

    async def stop(self) -> None:
        """Stop the producer (a failure is logged); idempotent."""
        producer, self._producer = self._producer, None
        await self._stop_producer(producer)

    async def publish(self, key: str, body: bytes, *, delay: float = 0.0) -> None:
        """Send to the main topic, or with ``delay`` to the retry topic with its due time,
        and return once the brokers acknowledged it.

        Raises:
            QueueError: not started, or not acknowledged within ``timeout`` seconds.
        """
        if delay > 0:
            headers = [(DUE_HEADER, str(now_ms() + int(delay * 1000)).encode())]
            await self._send(self.retry_topic, key, body, headers)
        else:
            await self._send(self.topic, key, body, [])

    async def republish(self, record: Record, delay: float) -> None:
        """Send a copy of ``record`` to the retry topic, due in ``delay`` seconds, marked redelivered.

        Raises:
            QueueError: not acknowledged within ``timeout`` seconds.
        """
        headers = [
            (DUE_HEADER, str(now_ms() + int(delay * 1000)).encode()),
            (REDELIVERED_HEADER, b"1"),
        ]
        await self._send(self.retry_topic, record.key, record.body, headers)

    async def dead(self, record: Record, reason: str) -> None:
        """Send a copy of ``record`` to the dead topic with ``reason`` and where it came from.

        Raises:
            QueueError: not acknowledged within ``timeout`` seconds.
        """
        headers = [
            (REASON_HEADER, reason[:_MAX_REASON].encode("utf-8", "replace")),
            (ORIGIN_HEADER, f"{record.tp.topic}:{record.tp.partition}:{record.offset}".encode()),
        ]
        await self._send(self.dead_topic, record.key, record.body, headers)

    async def check(self) -> None:
        """Return once a metadata request was answered within ``timeout``.

        Raises:
            QueueError: not started, or no broker answered.
        """
        producer = self._producer
        if producer is None:
            raise QueueError("kafka queue is not open")
        timeout = self._options.timeout
        with translate_errors(QueueError, f"kafka queue {self.topic!r}: brokers unreachable"):
            try:
                async with asyncio.timeout(timeout):
                    await producer.client.fetch_all_metadata()
            except TimeoutError:
                raise QueueError(
                    f"kafka queue {self.topic!r}: no broker answered within {timeout} s"
                ) from None

    async def _ensure_topics(self) -> None:
        await ensure_topics(self._clients, [self.topic, self.retry_topic, self.dead_topic], queue=self.topic)

    async def _send(self, topic: str, key: str, body: bytes, headers: list[tuple[str, bytes]]) -> None:
        producer = self._producer
        if producer is None:
            raise QueueError("kafka queue is not open")
        if self._recheck:
            # The last publish failed: the brokers may have lost the topics (create=true makes them again).
            await self._ensure_topics()
            self._recheck = False
        timeout = self._options.timeout
        headers = [*headers, (PUBLISHED_HEADER, str(time.time_ns()).encode())]
        try:
            with translate_errors(QueueError, f"kafka queue: publish to {topic!r} failed"):
                try:
                    async with asyncio.timeout(timeout):
                        await producer.send_and_wait(topic, value=body, key=key.encode(), headers=headers)
                except TimeoutError:
                    raise QueueError(
                        f"kafka queue: publish to {topic!r} not acknowledged within {timeout} s"
                    ) from None
        except QueueError:
            self._recheck = self._options.create
            raise

    async def _stop_producer(self, producer: Any) -> None:
        if producer is None:
            return
        try:
            async with asyncio.timeout(self._options.timeout):
                await producer.stop()
        except (*DRIVER_ERRORS, TimeoutError) as exc:
            logger.warning("kafka queue %s: stopping the producer failed: %s", self.topic, exc)
