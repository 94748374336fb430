"""The consuming side of an AMQP queue: one channel per :meth:`~mailqueue.backends.amqp.AMQPQueue.consume`
iterator with ``basic.qos(prefetch)`` and manual acks, the deliveries it hands
out, and the messages that came back before they were due, sent on to their
next tier (how it works: :mod:`mailqueue.backends.amqp`)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Final, Self

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustQueue, HeadersType
from aio_pika.exceptions import ChannelInvalidStateError
from aiormq.abc import AbstractChannel

from mailqueue.backends._base import BaseDelivery, SettleKind
from mailqueue.backends.amqp.driver import (
    SETTLE_TIMEOUT,
    close_channel_quietly,
    fail_future,
    really_cancelled,
    translate,
    write_acks,
)
from mailqueue.backends.amqp.headers import DUE_HEADER, KEY_HEADER, REDELIVERED_HEADER, now_ms, text
from mailqueue.backends.amqp.link import Link
from mailqueue.backends.amqp.publisher import AMQPPublisher
from mailqueue.backends.amqp.topology import Topology
from mailqueue.errors import QueueError

__all__ = ["AMQPConsumer", "AMQPDelivery"]

logger = logging.getLogger("mailqueue.backends.amqp")

#: Seconds to wait before giving back a message that could not be sent on to its next tier.
_REROUTE_PAUSE: Final = 1.0


class AMQPDelivery(BaseDelivery):
    """A message handed out by :meth:`~mailqueue.backends.amqp.AMQPQueue.consume`;
    owned until settled or its channel is gone."""

    __slots__ = ("_body", "_channel", "_consumer", "_due", "_key", "_redelivered", "_tag")

    def __init__(
        self, consumer: AMQPConsumer, message: AbstractIncomingMessage, channel: AbstractChannel
    ) -> None:
        super().__init__()
        headers = message.headers or {}
        self._consumer = consumer
        self._channel = channel
        self._tag = message.delivery_tag or 0
        self._key = text(headers.get(KEY_HEADER)) or message.message_id or ""
        self._body = bytes(message.body)
        self._redelivered = bool(message.redelivered) or bool(headers.get(REDELIVERED_HEADER))
        due = headers.get(DUE_HEADER)
        self._due = int(due) if isinstance(due, int | float) and not isinstance(due, bool) else None

    @property
    def key(self) -> str:
        """The key it was published under (header ``x-mailqueue-key``, else the ``message_id``)."""
        return self._key

    @property
    def body(self) -> bytes:
        """The payload exactly as published."""
        return self._body

    @property
    def redelivered(self) -> bool:
        """RabbitMQ's ``redelivered`` flag, or the message is a copy made by ``retry``."""
        return self._redelivered

    async def ack(self) -> None:
        """Remove the message for good (``basic.ack``).

        A no-op if already settled, if the queue was closed or if the channel
        it came on is gone (the broker requeued it).
        """
        await self._settle("ack")

    async def retry(self, delay: float) -> None:
        """Publish a copy due ``delay`` seconds from now (confirmed), then ack this one.

        A ``delay`` of 0 or less is :meth:`release`. No-op rules of :meth:`ack`.

        Raises:
            QueueError: the copy was not confirmed; the delivery stays unsettled.
        """
        if delay <= 0:
            await self.release()
            return

        async def publish_copy() -> None:
            headers: HeadersType = {KEY_HEADER: self._key, REDELIVERED_HEADER: True}
            await self._consumer._publisher.publish(headers, self._body, delay, action=f"retry {self._key!r}")

        await self._settle("retry", publish_copy)

    async def dead(self, reason: str) -> None:
        """Publish a copy to ``<queue>.dead`` with the reason (confirmed), then ack this one.

        No-op rules of :meth:`ack`.

        Raises:
            QueueError: the copy was not confirmed; the delivery stays unsettled.
        """

        async def publish_dead() -> None:
            await self._consumer._publisher.publish_dead(self._key, self._body, reason)

        await self._settle("dead", publish_dead)

    async def release(self) -> None:
        """Give the message back for immediate redelivery (``basic.nack(requeue=True)``).

        No-op rules of :meth:`ack`.
        """
        await self._settle("release")

    # --- internals ---------------------------------------------------------

    @property
    def _stale(self) -> bool:
        return self._channel.is_closed or self._consumer._link.closed

    def _gone(self) -> str | None:
        return "its channel is closed (the broker requeued it)" if self._stale else None

    async def _complete(self, kind: SettleKind) -> None:
        if kind == "release":
            await self._give_back()
        else:
            await self._basic_ack()

    def _on_settled(self, *, done: bool) -> None:
        self._consumer._settled(self)

    async def _basic_ack(self) -> None:
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT):
                await self._consumer._ack(self._channel, self._tag)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and really_cancelled():
                raise
            # Not acked: the broker redelivers it once the channel closes (at-least-once).
            logger.warning("amqp queue: ack of %r failed (%s); it will be redelivered", self._key, exc)

    async def _give_back(self) -> None:
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT):
                await self._channel.basic_nack(self._tag, requeue=True)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and really_cancelled():
                raise
            logger.debug(
                "amqp queue: requeue of %r failed (%s); the broker requeues it anyway", self._key, exc
            )


class AMQPConsumer:
    """The async iterator returned by :meth:`~mailqueue.backends.amqp.AMQPQueue.consume`.

    The consumer starts on the first ``__anext__`` (a failure raises
    :class:`QueueError`; the next call tries again). A cancelled ``__anext__``
    loses nothing and leaves the iterator usable; ``aclose()`` may be called
    from another task and ends a waiting ``__anext__``. While the broker is
    unreachable ``__anext__`` waits for the robust connection to come back.

    Made by :meth:`~mailqueue.backends.amqp.AMQPQueue.consume`, with what it uses of the queue:

    Args:
        prefetch: ``basic.qos`` prefetch count of its channel.
        link: the queue's connection state.
        publisher: re-publishes retried, dead and early messages.
        topology: the queue's broker objects.
        on_closed: called with this consumer once its channel is closed.
    """

    def __init__(
        self,
        *,
        prefetch: int,
        link: Link,
        publisher: AMQPPublisher,
        topology: Topology,
        on_closed: Callable[[AMQPConsumer], None],
    ) -> None:
        self._link = link
        self._publisher = publisher
        self._topology = topology
        self._on_closed = on_closed
        self._prefetch = prefetch
        self._buffer: deque[AMQPDelivery] = deque()
        self._outstanding: set[AMQPDelivery] = set()
        self._wake = asyncio.Event()
        self._closed = False
        self._starting: asyncio.Task[None] | None = None
        self._channel: AbstractRobustChannel | None = None
        self._amqp_queue: AbstractRobustQueue | None = None
        self._tag: str | None = None
        self._channel_closed = False
        self._rerouting = 0
        self._rerouted = asyncio.Event()
        self._acks: list[tuple[AbstractChannel, int, asyncio.Future[None]]] = []
        self._acking = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> AMQPDelivery:
        while True:
            if self._closed or self._link.closed:
                raise StopAsyncIteration
            if self._tag is None:
                await self._start()
                continue
            while self._buffer:
                delivery = self._buffer.popleft()
                if delivery._stale:
                    continue  # fetched on a channel that is gone: the broker has it again
                self._outstanding.add(delivery)
                return delivery
            self._wake.clear()
            await self._wake.wait()

    async def aclose(self) -> None:
        """Stop consuming and give back deliveries fetched but not handed out.

        Deliveries already handed out stay owned until settled (or the queue
        is closed); the channel closes once they all are.
        """
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._starting is not None and not self._starting.done():
            with suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._starting), self._link.connect_timeout)
        if self._amqp_queue is not None and self._tag is not None:
            try:
                async with asyncio.timeout(SETTLE_TIMEOUT):
                    await self._amqp_queue.cancel(self._tag)
            except Exception as exc:
                logger.debug("amqp queue: cancelling consumer failed: %s", exc)
        while self._buffer:
            delivery = self._buffer.popleft()
            if not delivery._stale:
                await delivery._give_back()
        # Let delayed messages being moved to their next tier finish (their ack needs the channel).
        with suppress(TimeoutError):
            async with asyncio.timeout(self._link.confirm_timeout + SETTLE_TIMEOUT):
                while self._rerouting:
                    self._rerouted.clear()
                    await self._rerouted.wait()
        if not self._outstanding:
            await self._close_channel()

    # --- internals ---------------------------------------------------------

    async def _start(self) -> None:
        if self._starting is None:
            self._starting = asyncio.create_task(self._setup())
        starting = self._starting
        try:
            # Shielded: a caller that stops waiting does not abort the start.
            await asyncio.shield(starting)
        finally:
            if starting.done() and (starting.cancelled() or starting.exception() is not None):
                self._starting = None

    async def _setup(self) -> None:
        topology = self._topology
        connection = self._link.require_connection()
        if connection.transport is None or not connection.connected.is_set():
            raise QueueError(
                f"amqp queue could not start consuming {topology.queue!r}: not connected (reconnecting)"
            )
        channel = connection.channel(publisher_confirms=False)
        try:
            with translate(f"start consuming {topology.queue!r}"):
                async with asyncio.timeout(self._link.connect_timeout):
                    await channel.initialize()
                    await channel.set_qos(prefetch_count=self._prefetch)
                    amqp_queue = await channel.declare_queue(
                        topology.queue, durable=True, arguments=topology.queue_arguments()
                    )
                    tag = await amqp_queue.consume(self._on_message, no_ack=False)
        except BaseException:
            await close_channel_quietly(channel)
            raise
        self._channel, self._amqp_queue, self._tag = channel, amqp_queue, tag
        if self._closed or self._link.closed:
            self._closed = True
            await self._close_channel()

    def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Not a coroutine function: aio-pika then calls it from a callback instead of
        # running it in a task of its own, one task fewer per message.
        try:
            channel = message.channel
        except ChannelInvalidStateError:
            return  # the channel closed before we saw it: the broker requeued it
        delivery = AMQPDelivery(self, message, channel)
        if self._closed or self._link.closed:
            self._link.spawn(delivery._give_back())
            return
        if delivery._due is not None and delivery._due > now_ms():
            self._rerouting += 1
            self._link.spawn(self._reroute_counted(delivery))
            return
        self._buffer.append(delivery)
        self._wake.set()

    async def _reroute_counted(self, delivery: AMQPDelivery) -> None:
        try:
            await self._reroute(delivery)
        finally:
            self._rerouting -= 1
            self._rerouted.set()

    async def _reroute(self, delivery: AMQPDelivery) -> None:
        """Send a message that came back early into the next fitting tier, then ack it."""
        assert delivery._due is not None
        headers: HeadersType = {KEY_HEADER: delivery._key}
        if delivery._redelivered:
            headers[REDELIVERED_HEADER] = True
        try:
            await self._publisher.publish(
                headers, delivery._body, 0.0, due=delivery._due, action=f"delay {delivery._key!r}"
            )
        except QueueError as exc:
            logger.warning("amqp queue: %s; trying again in %.0f s", exc, _REROUTE_PAUSE)
            await asyncio.sleep(_REROUTE_PAUSE)
            await delivery._give_back()
            return
        await delivery._basic_ack()

    async def _ack(self, channel: AbstractChannel, tag: int) -> None:
        """``basic.ack`` of one delivery, written together with the acks asked for in the
        same event-loop turn (deliveries recorded by one Store commit finish together):
        one write to the socket for them instead of one each. Each ack is its own frame."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks.append((channel, tag, future))
        if not self._acking:
            self._acking = True
            self._link.spawn(self._send_acks())
        await future

    async def _send_acks(self) -> None:
        try:
            while self._acks:
                batch, self._acks = self._acks, []
                by_channel: dict[AbstractChannel, list[tuple[int, asyncio.Future[None]]]] = {}
                for channel, tag, future in batch:
                    by_channel.setdefault(channel, []).append((tag, future))
                for channel, items in by_channel.items():
                    try:
                        await write_acks(channel, [tag for tag, _ in items])
                    except (Exception, asyncio.CancelledError) as exc:
                        for _, future in items:
                            fail_future(future, exc)
                        if isinstance(exc, asyncio.CancelledError) and really_cancelled():
                            raise
                    else:
                        for _, future in items:
                            if not future.done():
                                future.set_result(None)
        finally:
            self._acking = False
            left, self._acks = self._acks, []
            for _, _, future in left:
                fail_future(future, QueueError("amqp queue: the acks were not sent (closing)"))

    def _settled(self, delivery: AMQPDelivery) -> None:
        self._outstanding.discard(delivery)
        if self._closed and not self._outstanding and not self._channel_closed:
            self._link.spawn(self._close_channel())

    async def _close_channel(self) -> None:
        if self._channel_closed:
            return
        self._channel_closed = True
        self._on_closed(self)
        if self._channel is not None:
            await close_channel_quietly(self._channel)

    async def _shutdown(self) -> None:
        """Queue close: stop and close the channel; the broker requeues every unsettled delivery."""
        self._closed = True
        self._wake.set()
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with suppress(BaseException):
                await self._starting
        self._buffer.clear()
        await self._close_channel()
