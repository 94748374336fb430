"""The publishing side of an AMQP queue: every publish is persistent, mandatory
and confirmed (``basic.ack``) within ``confirm_timeout``; a delayed one goes
into the retry tier that fits, a dead letter into ``<queue>.dead``."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, DeliveryMode, HeadersType
from pamqp.commands import Basic

from mailqueue.backends.amqp.driver import UnroutableError, translate
from mailqueue.backends.amqp.headers import DEAD_AT_HEADER, DUE_HEADER, KEY_HEADER, REASON_HEADER, now_ms
from mailqueue.backends.amqp.link import Link
from mailqueue.backends.amqp.topology import Topology
from mailqueue.errors import QueueError

__all__ = ["AMQPPublisher"]

logger = logging.getLogger("mailqueue.backends.amqp")


class AMQPPublisher:
    """Publishes on the queue's publishing channel (``Link.channel``).

    Args:
        link: the queue's connection state.
        topology: the queue's broker objects.
    """

    def __init__(self, link: Link, topology: Topology) -> None:
        self._link = link
        self._topology = topology

    async def publish(
        self, headers: HeadersType, body: bytes, delay: float, *, action: str, due: int | None = None
    ) -> None:
        """Publish now (``delay <= 0`` and no ``due``) or into the retry tier that fits.

        Args:
            headers: the message's headers (the key at least); ``due`` is added to them.
            body: the payload.
            delay: seconds from now until it is due.
            action: what is being done, for error messages (``publish 'key'``).
            due: the absolute due time (epoch milliseconds) instead of ``delay``.

        Raises:
            QueueError: not open, or not confirmed (nack, returned as unroutable,
                ``confirm_timeout``, connection lost).
        """
        self._link.require_connection()
        topology = self._topology
        if due is None and delay > 0:
            due = now_ms() + math.ceil(delay * 1000)
        if due is None:
            await self._send(self._link.exchange, topology.routing_key, headers, body, action)
            return
        headers[DUE_HEADER] = due
        tier = topology.tier_for(due - now_ms())
        await self._send_to_queue(
            topology.tier_queue(tier), topology.tier_arguments(tier), headers, body, action
        )

    async def publish_dead(self, key: str, body: bytes, reason: str) -> None:
        """Publish a dead letter to ``<queue>.dead`` with ``reason``.

        Raises:
            QueueError: not open, or not confirmed.
        """
        headers: HeadersType = {KEY_HEADER: key, REASON_HEADER: reason, DEAD_AT_HEADER: now_ms()}
        arguments = self._topology.queue_arguments(dead=True)
        await self._send_to_queue(self._topology.dead_queue, arguments, headers, body, f"dead-letter {key!r}")

    async def _send_to_queue(
        self, name: str, arguments: dict[str, Any] | None, headers: HeadersType, body: bytes, action: str
    ) -> None:
        """Publish straight to one of our satellite queues, declaring it first (once)."""
        await self._topology.ensure(self._link, name, arguments)
        try:
            await self._send(None, name, headers, body, action)
        except UnroutableError:
            # Deleted since we declared it (e.g. by an operator): the broker
            # returned the message, so it is safe to declare again and resend.
            logger.warning("amqp queue: %r is gone; declaring it again", name)
            self._topology.forget(name)
            await self._topology.ensure(self._link, name, arguments)
            await self._send(None, name, headers, body, action)

    async def _send(
        self,
        exchange: AbstractExchange | None,
        routing_key: str,
        headers: HeadersType,
        body: bytes,
        action: str,
    ) -> None:
        """One confirmed, mandatory, persistent publish (``exchange=None``: the default exchange)."""
        channel = self._link.channel
        if self._link.closed or channel is None:
            raise QueueError("amqp queue is not open")
        target = exchange if exchange is not None else channel.default_exchange
        message = aio_pika.Message(
            body,
            headers=headers,
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=uuid.uuid4().hex,
            app_id="mailqueue",
        )
        with translate(action):
            async with asyncio.timeout(self._link.confirm_timeout):
                result = await target.publish(message, routing_key, mandatory=True)
            if not isinstance(result, Basic.Ack):
                raise QueueError(f"amqp queue could not {action}: the broker did not confirm it ({result!r})")
