"""The AMQP queue itself: :class:`AMQPQueue`, the :class:`~mailqueue.protocols.Queue`
that joins the connection, the topology, the publisher and the consumers (URL,
options and how it works: :mod:`mailqueue.backends.amqp`)."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import ClassVar, Self
from urllib.parse import urlsplit

from aio_pika.exceptions import ChannelNotFoundEntity
from aiormq.abc import AbstractChannel

from mailqueue.backends._base import OptionsModel
from mailqueue.backends.amqp.consumer import AMQPConsumer
from mailqueue.backends.amqp.driver import translate
from mailqueue.backends.amqp.headers import KEY_HEADER
from mailqueue.backends.amqp.link import Link
from mailqueue.backends.amqp.options import EXCHANGE_TYPES, AMQPOptions, parse_url
from mailqueue.backends.amqp.publisher import AMQPPublisher
from mailqueue.backends.amqp.topology import Topology
from mailqueue.errors import ConfigurationError, QueueError
from mailqueue.protocols import BackendContext, QueueCapabilities, ResourceMixin
from mailqueue.registry import redact_url

__all__ = ["AMQPQueue"]

logger = logging.getLogger("mailqueue.backends.amqp")


class AMQPQueue(ResourceMixin):
    """A :class:`~mailqueue.protocols.Queue` on RabbitMQ (see :mod:`mailqueue.backends.amqp`).

    Args:
        url: the broker's ``amqp://`` or ``amqps://`` URL, with only the
            options aio-pika understands (see :mod:`mailqueue.backends.amqp`).
        queue: the queue consumers read.
        exchange: the exchange to publish to; ``""`` for the default exchange.
        exchange_type: type of ``exchange``.
        routing_key: binding and publish key (default: ``queue``).
        quorum: declare quorum queues.
        confirm_timeout: seconds to wait for a publisher confirm.
        connect_timeout: seconds to connect and declare (and to start a consumer).
        tier_min: shortest retry tier, seconds.
        tier_max: longest retry tier is the largest ``tier_min * 2**k`` not above it.

    Raises:
        ConfigurationError: a bad value.
    """

    capabilities = QueueCapabilities(delay=True, shared=True, depth=True, ordered=True)
    #: The URL's options.
    url_options: ClassVar[type[OptionsModel]] = AMQPOptions

    def __init__(
        self,
        *,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        queue: str = "mailqueue",
        exchange: str = "mailqueue",
        exchange_type: str = "direct",
        routing_key: str | None = None,
        quorum: bool = False,
        confirm_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        tier_min: float = 0.1,
        tier_max: float = 14400.0,
    ) -> None:
        if urlsplit(url).scheme not in ("amqp", "amqps"):
            raise ConfigurationError(f"not an amqp:// or amqps:// URL: {redact_url(url)!r}")
        for name, value in (("queue", queue), ("exchange", exchange)):
            if len(value.encode()) > 255 - (len(".retry.") + 10) or (name == "queue" and not value):
                raise ConfigurationError(f"option {name!r} must be 1 to 200 bytes ({name} {value!r})")
        if exchange_type not in EXCHANGE_TYPES:
            raise ConfigurationError(
                f"option 'exchange_type' must be one of {', '.join(EXCHANGE_TYPES)}, not {exchange_type!r}"
            )
        if not exchange and routing_key not in (None, queue):
            raise ConfigurationError(
                "with the default exchange (exchange=) the routing_key is the queue name"
            )
        for name, number in (
            ("confirm_timeout", confirm_timeout),
            ("connect_timeout", connect_timeout),
            ("tier_min", tier_min),
            ("tier_max", tier_max),
        ):
            if not (math.isfinite(number) and number > 0):
                raise ConfigurationError(
                    f"option {name!r} must be a positive number of seconds, not {number!r}"
                )
        if tier_min < 0.001 or tier_max < tier_min:
            raise ConfigurationError(
                "options 'tier_min' (at least 0.001) and 'tier_max' must satisfy tier_min <= tier_max"
            )
        self.url = url
        self.queue = queue
        self.exchange = exchange
        self.exchange_type = exchange_type
        self.routing_key = queue if routing_key is None else routing_key
        self.quorum = quorum
        self.confirm_timeout = confirm_timeout
        self.connect_timeout = connect_timeout
        self._topology = Topology(
            queue=queue,
            exchange=exchange,
            exchange_type=exchange_type,
            routing_key=self.routing_key,
            quorum=quorum,
            tier_min=tier_min,
            tier_max=tier_max,
        )
        #: Delay tiers in milliseconds, shortest first.
        self.tiers: tuple[int, ...] = self._topology.tiers
        self._link = Link(url, connect_timeout=connect_timeout, confirm_timeout=confirm_timeout)
        self._publisher = AMQPPublisher(self._link, self._topology)
        self._consumers: set[AMQPConsumer] = set()

    @property
    def dead_queue(self) -> str:
        """Name of the dead-letter queue, ``<queue>.dead``."""
        return self._topology.dead_queue

    def tier_queue(self, tier_ms: int) -> str:
        """Name of the retry queue of a tier, ``<queue>.retry.<ms>``."""
        return self._topology.tier_queue(tier_ms)

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext) -> Self:
        """Build from an ``amqp://`` or ``amqps://`` URL (options in :mod:`mailqueue.backends.amqp`).

        Raises:
            ConfigurationError: another scheme, an unknown option or a bad value.
        """
        broker_url, kwargs = parse_url(url)
        return cls(url=broker_url, **kwargs)

    # --- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        """Connect (robust connection), open the publishing channel and declare the topology.

        Raises:
            QueueError: the broker is unreachable within ``connect_timeout``,
                refused the login, or the topology conflicts with what exists.
        """
        if not self._link.closed:
            return
        await self._link.open(self._topology.declare, what=f"declare queue {self.queue!r}")
        self._topology.forget()
        logger.info("amqp queue %r open on %s", self.queue, redact_url(self.url))

    async def close(self) -> None:
        """Stop every consumer and close the connection; idempotent.

        Closing the consumers' channels makes the broker requeue every
        delivery not yet settled (never dead-lettered); settling one later
        does nothing.
        """
        if self._link.closed:
            return
        self._link.closed = True
        for consumer in list(self._consumers):
            await consumer._shutdown()
        await self._link.close()

    # --- the Queue protocol ------------------------------------------------

    async def publish(self, key: str, body: bytes, *, delay: float = 0.0) -> None:
        """Publish ``body`` under ``key``, available after ``delay`` seconds; return once confirmed.

        Raises:
            QueueError: not open, or not confirmed (nack, returned as
                unroutable, ``confirm_timeout``, connection lost).
        """
        await self._publisher.publish({KEY_HEADER: key}, bytes(body), delay, action=f"publish {key!r}")

    def consume(self, *, prefetch: int) -> AMQPConsumer:
        """Return an async iterator of deliveries on a channel with ``basic.qos(prefetch)``.

        Raises:
            ValueError: ``prefetch`` is not 1 to 65535.
            QueueError: the queue is not open.
        """
        if not 1 <= prefetch <= 65535:
            raise ValueError("prefetch must be 1 to 65535")
        self._link.require_connection()
        consumer = AMQPConsumer(
            prefetch=prefetch,
            link=self._link,
            publisher=self._publisher,
            topology=self._topology,
            on_closed=self._consumers.discard,
        )
        self._consumers.add(consumer)
        return consumer

    async def depth(self) -> int:
        """Ready messages in the queue and its retry tiers, plus those this instance's
        consumers fetched but did not hand out; unsettled deliveries are not counted.

        Raises:
            QueueError: not open, the broker is unreachable, or the queue is missing.
        """
        connection = self._link.require_connection()
        transport = connection.transport
        if transport is None:
            raise QueueError("amqp queue could not count messages: not connected to the broker")
        amqp = transport.connection
        total = 0
        channel: AbstractChannel | None = None
        with translate(f"count messages of {self.queue!r}"):
            async with asyncio.timeout(self.confirm_timeout):
                try:
                    for name in (self.queue, *map(self.tier_queue, self.tiers)):
                        if channel is None or channel.is_closed:
                            channel = await amqp.channel(publisher_confirms=False)
                        try:
                            declared = await channel.queue_declare(name, passive=True)
                        except ChannelNotFoundEntity:
                            if name == self.queue:
                                raise
                            continue  # that tier was never used
                        total += declared.message_count or 0
                finally:
                    if channel is not None and not channel.is_closed:
                        await channel.close()
        for consumer in self._consumers:
            total += sum(1 for delivery in consumer._buffer if not delivery._stale)
        return total
