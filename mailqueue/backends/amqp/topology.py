"""The objects one AMQP queue has on the broker: their names, their arguments,
and declaring them (how and why: :mod:`mailqueue.backends.amqp`).

At open: the exchange, the queue and its binding (in quorum mode the
dead-letter queue too). Lazily, once per connection, before the first
publish into them: ``<queue>.dead`` and the retry tiers ``<queue>.retry.<ms>``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aio_pika.abc import AbstractExchange, AbstractRobustChannel, ExchangeType

from mailqueue.backends.amqp.driver import translate
from mailqueue.backends.amqp.link import Link
from mailqueue.errors import QueueError

__all__ = ["Topology"]


class Topology:
    """The names and arguments of one queue's broker objects.

    Args:
        queue: the queue consumers read.
        exchange: the exchange to publish to; ``""`` for the default exchange.
        exchange_type: type of ``exchange``.
        routing_key: binding and publish key.
        quorum: declare quorum queues.
        tier_min: shortest retry tier, seconds.
        tier_max: longest retry tier is the largest ``tier_min * 2**k`` not above it.
    """

    def __init__(
        self,
        *,
        queue: str,
        exchange: str,
        exchange_type: str,
        routing_key: str,
        quorum: bool,
        tier_min: float,
        tier_max: float,
    ) -> None:
        self.queue = queue
        self.exchange = exchange
        self.exchange_type = exchange_type
        self.routing_key = routing_key
        self.quorum = quorum
        first = max(1, round(tier_min * 1000))
        #: Delay tiers in milliseconds, shortest first.
        self.tiers: tuple[int, ...] = tuple(
            first * 2**k for k in range(64) if first * 2**k <= max(first, tier_max * 1000)
        )
        self._declared: set[str] = set()
        self._declaring = asyncio.Lock()

    @property
    def dead_queue(self) -> str:
        """Name of the dead-letter queue, ``<queue>.dead``."""
        return f"{self.queue}.dead"

    def tier_queue(self, tier_ms: int) -> str:
        """Name of the retry queue of a tier, ``<queue>.retry.<ms>``."""
        return f"{self.queue}.retry.{tier_ms}"

    def tier_for(self, remaining_ms: int) -> int:
        """The largest tier not longer than ``remaining_ms`` (the shortest if none is)."""
        fitting = [tier for tier in self.tiers if tier <= remaining_ms]
        return fitting[-1] if fitting else self.tiers[0]

    def queue_arguments(self, *, dead: bool = False) -> dict[str, Any] | None:
        """The arguments of the main queue (or, with ``dead``, of the dead-letter queue)."""
        if not self.quorum:
            return None
        arguments: dict[str, Any] = {"x-queue-type": "quorum"}
        if not dead:
            # Over a broker-side delivery limit (RabbitMQ 4 sets one by default)
            # a message goes to the dead-letter queue instead of being dropped.
            arguments.update(
                {
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.dead_queue,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                }
            )
        return arguments

    def tier_arguments(self, tier_ms: int) -> dict[str, Any]:
        """The arguments of a retry tier's queue: its TTL, and dead-lettering back to the exchange."""
        arguments: dict[str, Any] = {
            "x-message-ttl": tier_ms,
            "x-dead-letter-exchange": self.exchange,
            "x-dead-letter-routing-key": self.routing_key,
        }
        if self.quorum:
            arguments.update(
                {
                    "x-queue-type": "quorum",
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                }
            )
        return arguments

    async def declare(self, channel: AbstractRobustChannel) -> AbstractExchange:
        """Declare what the queue needs at open; return the exchange to publish to.

        Forgets which lazily declared queues exist (on a new connection they are declared again).
        """
        if self.exchange:
            exchange: AbstractExchange = await channel.declare_exchange(
                self.exchange, ExchangeType(self.exchange_type), durable=True
            )
        else:
            exchange = channel.default_exchange
        if self.quorum:
            await _declare(channel, self.dead_queue, self.queue_arguments(dead=True))
        queue = await channel.declare_queue(self.queue, durable=True, arguments=self.queue_arguments())
        if self.exchange:
            await queue.bind(exchange, self.routing_key)
        return exchange

    def forget(self, name: str | None = None) -> None:
        """Forget that queue ``name`` (or, without a name, every lazily declared queue) was declared."""
        if name is None:
            self._declared.clear()
        else:
            self._declared.discard(name)

    async def ensure(self, link: Link, name: str, arguments: dict[str, Any] | None) -> None:
        """Declare queue ``name`` on the publishing channel unless done already (once at a time).

        Raises:
            QueueError: the queue is not open, not connected, or the declare failed.
        """
        if name in self._declared:
            return
        async with self._declaring:
            if name in self._declared:
                return
            channel = link.channel
            if channel is None:
                raise QueueError("amqp queue is not open")
            if channel.is_closed:
                raise QueueError(
                    f"amqp queue could not declare {name!r}: not connected to the broker (reconnecting)"
                )
            with translate(f"declare queue {name!r}"):
                async with asyncio.timeout(link.confirm_timeout):
                    await _declare(channel, name, arguments)
            self._declared.add(name)


async def _declare(channel: AbstractRobustChannel, name: str, arguments: dict[str, Any] | None) -> None:
    await channel.declare_queue(name, durable=True, arguments=arguments)
