"""The Kafka queue itself: :class:`KafkaQueue`, the :class:`~mailqueue.protocols.Queue`
that joins the publisher and the consumers (URL, options and how it works:
:mod:`mailqueue.backends.kafka`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar, Self

from mailqueue.backends._base import OptionsModel
from mailqueue.backends.kafka.clients import KafkaClients
from mailqueue.backends.kafka.consumer import KafkaConsumer, KafkaDelivery
from mailqueue.backends.kafka.offsets import HandedOut
from mailqueue.backends.kafka.options import TOPIC_NAME, KafkaOptions, parse_url
from mailqueue.backends.kafka.publisher import KafkaPublisher
from mailqueue.errors import ConfigurationError, QueueError, ValidationError
from mailqueue.protocols import BackendContext, QueueCapabilities, ResourceMixin

__all__ = ["KafkaQueue"]

logger = logging.getLogger("mailqueue.backends.kafka")


class KafkaQueue(ResourceMixin):
    """A :class:`~mailqueue.protocols.Queue` on a Kafka topic (see :mod:`mailqueue.backends.kafka`).

    Args:
        bootstrap_servers: ``host:port`` of one or more brokers.
        topic: the main topic.
        options: every other knob.
        username: SASL user (with ``security_protocol`` ``SASL_*``).
        password: SASL password; never logged.

    Raises:
        ConfigurationError: a bad topic name or an empty server list.
    """

    #: The URL's options.
    url_options: ClassVar[type[OptionsModel]] = KafkaOptions

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topic: str,
        *,
        options: KafkaOptions | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        options = options or KafkaOptions()
        servers = [bootstrap_servers] if isinstance(bootstrap_servers, str) else list(bootstrap_servers)
        if not servers:
            raise ConfigurationError("kafka queue needs at least one bootstrap server")
        if not TOPIC_NAME.fullmatch(topic):
            raise ConfigurationError(f"kafka:// topic is not a valid topic name: {topic!r}")
        options = options.model_copy(
            update={
                "retry_topic": options.retry_topic or f"{topic}.retry",
                "dead_topic": options.dead_topic or f"{topic}.dead",
            }
        )
        if len({topic, options.retry_topic, options.dead_topic}) != 3:
            raise ConfigurationError("kafka:// main, retry and dead topics must be three different topics")
        self.bootstrap_servers = servers
        self.topic = topic
        self.retry_topic: str = options.retry_topic or ""
        self.dead_topic: str = options.dead_topic or ""
        self.options = options
        self.capabilities = QueueCapabilities(delay=True, shared=True, depth=False, ordered=False)
        self._clients = KafkaClients(servers, options, username=username, password=password)
        self._publisher = KafkaPublisher(
            self._clients, topic=topic, retry_topic=self.retry_topic, dead_topic=self.dead_topic
        )
        self._closed = True
        self._consumers: set[KafkaConsumer] = set()
        self._handed = HandedOut()

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext) -> Self:
        """Build from ``kafka://[user:password@]host:port[,host:port...]/<topic>?<options>``.

        Raises:
            ConfigurationError: not ``kafka://``, no host or topic, an unknown or bad option.
        """
        found = parse_url(url)
        return cls(
            found.bootstrap_servers,
            found.topic,
            options=found.options,
            username=found.username,
            password=found.password,
        )

    # --- Resource ------------------------------------------------------------

    async def open(self) -> None:
        """Start the producer, check (or create) the topics, learn the partition count.

        Raises:
            QueueError: the brokers are unreachable, or a topic is missing and ``create`` is false.
        """
        if not self._closed:
            return
        partitions = await self._publisher.start()
        self._closed = False
        self.capabilities = replace(self.capabilities, ordered=partitions == 1)

    async def close(self) -> None:
        """Stop every consumer, hand unsettled deliveries back, leave the group; idempotent.

        Unsettled deliveries are re-published to the retry topic (due now,
        marked redelivered) and marked finished before the last commit; one
        whose re-publish fails stays uncommitted and is read again by the
        next owner of its partition.
        """
        if self._closed:
            return
        consumers = list(self._consumers)
        for consumer in consumers:
            consumer._halt()
        unsettled = [d for consumer in consumers for d in consumer._live_out()]

        async def give_back(delivery: KafkaDelivery) -> None:
            try:
                await delivery.release()
            except QueueError as exc:
                logger.warning("kafka queue: could not hand %r back on close: %s", delivery.key, exc)

        await asyncio.gather(*(give_back(d) for d in unsettled))
        self._closed = True
        for consumer in consumers:
            await consumer._wait_stopped()
        await self._publisher.stop()

    # --- Queue ---------------------------------------------------------------

    async def publish(self, key: str, body: bytes, *, delay: float = 0.0) -> None:
        """Send to the main topic (or, with ``delay``, to the retry topic with a due time)
        and return once the broker acknowledged it (``acks=all``).

        Raises:
            ValidationError: ``key`` is empty.
            QueueError: not open, or not acknowledged within ``timeout`` seconds.
        """
        if not key:
            raise ValidationError([("key", "must not be empty")])
        if self._closed:
            raise QueueError("kafka queue is not open")
        await self._publisher.publish(key, bytes(body), delay=delay)

    def consume(self, *, prefetch: int) -> KafkaConsumer:
        """Join the consumer group and return an async iterator of deliveries,
        at most ``prefetch`` unsettled at once.

        Raises:
            ValueError: ``prefetch`` is less than 1.
            QueueError: the queue is not open.
        """
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        if self._closed:
            raise QueueError("kafka queue is not open")
        consumer = KafkaConsumer(
            prefetch=prefetch,
            clients=self._clients,
            publisher=self._publisher,
            handed=self._handed,
            queue_closed=self._is_closed,
            on_stopped=self._consumers.discard,
        )
        self._consumers.add(consumer)
        return consumer

    async def depth(self) -> None:
        """Not known (a consumer group's lag is not a count of waiting messages
        here), so ``None`` — but only once a metadata request answered within
        ``timeout``: readiness checks call this, and an unreachable cluster
        raises :class:`~mailqueue.errors.QueueError`."""
        if self._closed:
            raise QueueError("kafka queue is not open")
        await self._publisher.check()
        return None

    def _is_closed(self) -> bool:
        return self._closed
