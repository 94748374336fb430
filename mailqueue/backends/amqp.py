"""RabbitMQ queue: ``amqp://`` and ``amqps://`` (aio-pika, robust connection).

URL: ``amqp://user:password@host:port/vhost?queue=mailqueue&exchange=mailqueue``
(``amqps://`` for TLS; the vhost is the URL-quoted path, ``/`` when empty).

mailqueue's options:

- ``queue``: the durable queue consumers read (default ``mailqueue``).
- ``exchange``: the durable exchange messages are published to (default
  ``mailqueue``); empty (``exchange=``) publishes through the broker's default
  exchange and binds nothing.
- ``exchange_type``: ``direct`` (default), ``topic``, ``fanout`` or
  ``headers``: must match an exchange that already exists.
- ``routing_key``: the key the queue is bound and published with (default:
  the queue's name).
- ``quorum``: ``true`` declares quorum queues (main, dead-letter and retry
  tiers) for clusters; default ``false`` (classic queues).
- ``confirm_timeout``: seconds a publish waits for the broker's confirm
  before it fails (default 30).
- ``connect_timeout``: seconds :meth:`AMQPQueue.open` and the start of a
  consumer may take (default 10).
- ``tier_min`` / ``tier_max``: the retry delay tiers, ``tier_min * 2**k``
  seconds up to ``tier_max`` (default 0.1 and 14400: eighteen tiers from
  0.1 s to 3.6 h).

Options handed to aio-pika / aiormq unchanged: ``heartbeat`` (seconds,
default 60), ``reconnect_interval`` (seconds between reconnection attempts,
default 5), ``name`` (connection name shown by the broker), ``auth``
(``plain`` or ``external``), and for ``amqps://`` ``cafile``, ``capath``,
``cadata``, ``keyfile``, ``certfile`` and ``no_verify_ssl`` (``1`` turns off
certificate verification, which is on by default). Any other option is a
:class:`~mailqueue.errors.ConfigurationError`.

Capabilities: ``delay=True``, ``shared=True``, ``depth=True``,
``ordered=True``.

Topology: :meth:`AMQPQueue.open` declares what the original service
declared, one durable exchange, one durable queue and one binding (the
routing key), nothing else. Declared lazily, on first use:
``<queue>.dead`` (durable dead-letter queue, never consumed here) and
``<queue>.retry.<ms>`` (one per delay tier: a durable queue with
``x-message-ttl=<ms>`` whose expired messages are dead-lettered back to the
exchange with the routing key). In quorum mode the dead-letter queue is
declared at open as well, because the main queue dead-letters into it
(``x-dead-letter-strategy=at-least-once``) any message over a broker-side
delivery limit.

Publishing: persistent messages (``delivery_mode=2``), the key in header
``x-mailqueue-key`` (``message_id`` is unique per publish: aiormq matches
returned messages to their publish by it), publisher confirms and
``mandatory`` on a channel opened with ``on_return_raises=True`` (without it
aio-pika reports an unroutable message as a success). ``publish`` returns
only after the broker's ``basic.ack``; a ``nack``, a return, a timeout or a
lost connection raise :class:`~mailqueue.errors.QueueError`.

Delays without plugins: a delayed message carries its absolute due time
(``x-mailqueue-due``, epoch milliseconds) and is published into the tier
queue of the largest tier not longer than the time left (the smallest tier if
less is left). TTL expiry happens only at the head of a queue, which is why a
tier queue only ever holds one delay. When a message comes back into the main
queue before it is due, the consumer publishes it into the next fitting tier
(confirmed) and then acks it, without handing it out; messages longer than the
largest tier hop through it again. A delay is honoured to within about
``tier_min`` late, never early (on one clock: publishers' and consumers'
clocks must agree, e.g. NTP).

Consuming: each :meth:`AMQPQueue.consume` opens a channel of its own with
``basic.qos(prefetch_count=prefetch)`` and manual acks. ``ack`` is
``basic.ack``; ``release`` is ``basic.nack(requeue=True)`` (RabbitMQ then sets
``redelivered``); ``retry(d)`` publishes a copy marked
``x-mailqueue-redelivered`` through the tiers, confirmed, and then acks the
original; ``dead(reason)`` publishes a copy to ``<queue>.dead`` with header
``x-mailqueue-dead-reason``, confirmed, then acks. Nothing is ever rejected
without requeue. ``aclose()`` cancels the consumer and gives back what it
fetched but did not hand out; closing the queue closes the channels, so the
broker requeues every unsettled delivery. A delivery settled twice, after the
queue was closed or after a reconnection (its channel is gone and the broker
has requeued it) is left alone. The connection is robust: after a broker
restart it reconnects, restores the topology and the consumers, and a waiting
``__anext__`` resumes; a consumer that cannot start raises
:class:`~mailqueue.errors.QueueError`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Annotated, Any, ClassVar, Final, Self
from urllib.parse import urlencode, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustQueue,
    DeliveryMode,
    ExchangeType,
    HeadersType,
)
from aiormq.abc import AbstractChannel
from pamqp.commands import Basic
from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError
from yarl import URL

from mailqueue.backends._base import (
    BaseDelivery,
    Flag,
    OptionsModel,
    SettleKind,
    parse_options,
    translate_errors,
    url_query,
)
from mailqueue.errors import ConfigurationError, QueueError
from mailqueue.protocols import BackendContext, QueueCapabilities, ResourceMixin
from mailqueue.registry import redact_url

__all__ = ["AMQPConsumer", "AMQPDelivery", "AMQPOptions", "AMQPQueue"]

logger = logging.getLogger(__name__)

KEY_HEADER: Final = "x-mailqueue-key"
DUE_HEADER: Final = "x-mailqueue-due"
REDELIVERED_HEADER: Final = "x-mailqueue-redelivered"
REASON_HEADER: Final = "x-mailqueue-dead-reason"
DEAD_AT_HEADER: Final = "x-mailqueue-dead-at"

_OPTIONS: Final = (
    "queue",
    "exchange",
    "exchange_type",
    "routing_key",
    "quorum",
    "confirm_timeout",
    "connect_timeout",
    "tier_min",
    "tier_max",
)
_DRIVER_OPTIONS: Final = (
    "heartbeat",
    "reconnect_interval",
    "name",
    "auth",
    "cafile",
    "capath",
    "cadata",
    "keyfile",
    "certfile",
    "no_verify_ssl",
)


def _seconds(value: Any) -> Any:
    """A number of seconds, at least 0 (the queue checks its own for more)."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise PydanticCustomError("option", "is not a number: {value}", {"value": repr(value)}) from None
    if isinstance(number, float | int) and not (math.isfinite(number) and number >= 0):
        raise PydanticCustomError("option", "must be a positive number: {value}", {"value": repr(value)})
    return number


def _driver_seconds(value: str) -> str:
    """A number of seconds handed to the driver as written."""
    _seconds(value)
    return value


def _heartbeat(value: str) -> str:
    # aiormq would silently turn a bad value into 0: no heartbeats at all.
    if not (value.isdigit() and int(value) < 65535):
        raise PydanticCustomError("option", "must be 0 to 65534 seconds", {})
    return value


def _zero_or_one(value: str) -> str:
    if value not in ("0", "1"):
        raise PydanticCustomError("option", "must be 0 or 1", {})
    return value


def _auth(value: str) -> str:
    if value.lower() not in ("plain", "external"):
        raise PydanticCustomError("option", "must be plain or external", {})
    return value


_Seconds = Annotated[float, BeforeValidator(_seconds)]


class AMQPOptions(OptionsModel):
    """The options of an ``amqp://`` or ``amqps://`` URL (see the module docstring).

    mailqueue's own options become :class:`AMQPQueue`'s arguments (their values
    are checked there); the driver's (``heartbeat`` to ``no_verify_ssl``) stay in
    the URL handed to aio-pika.
    """

    queue: str = "mailqueue"
    exchange: str = "mailqueue"
    exchange_type: str = "direct"
    routing_key: str | None = None
    quorum: Flag = False
    confirm_timeout: _Seconds = 30.0
    connect_timeout: _Seconds = 10.0
    tier_min: _Seconds = 0.1
    tier_max: _Seconds = 14400.0
    heartbeat: Annotated[str, AfterValidator(_heartbeat)] | None = None
    reconnect_interval: Annotated[str, AfterValidator(_driver_seconds)] | None = None
    name: str | None = None
    auth: Annotated[str, AfterValidator(_auth)] | None = None
    cafile: str | None = None
    capath: str | None = None
    cadata: str | None = None
    keyfile: str | None = None
    certfile: str | None = None
    no_verify_ssl: Annotated[str, AfterValidator(_zero_or_one)] | None = None


assert tuple(AMQPOptions.model_fields) == _OPTIONS + _DRIVER_OPTIONS


_EXCHANGE_TYPES: Final = ("direct", "topic", "fanout", "headers")
_SETTLE_TIMEOUT: Final = 5.0
#: aiormq's writer takes several frames as one chunk (``ChannelFrame.marshall``, aiormq 7).
_CHANNEL_FRAME: Final[Any] = getattr(aiormq.abc, "ChannelFrame", None)
_FRAMES_TOGETHER: Final = hasattr(_CHANNEL_FRAME, "marshall") and hasattr(aiormq.Channel, "create_future")
_REROUTE_PAUSE: Final = 1.0


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    return None


class _UnroutableError(QueueError):
    """The broker returned a mandatory message: no queue was bound to take it."""


@contextmanager
def _translate(action: str) -> Iterator[None]:
    """Turn a driver failure (or a cancellation caused by a lost channel) into :class:`QueueError`.

    The failures RabbitMQ users meet get words of their own; anything else is
    translated by :func:`~mailqueue.backends._base.translate_errors`.
    """
    with translate_errors(QueueError, f"amqp queue could not {action}"), _explain(action):
        yield


@contextmanager
def _explain(action: str) -> Iterator[None]:
    try:
        yield
    except QueueError:
        raise
    except TimeoutError as exc:
        raise QueueError(f"amqp queue could not {action}: timed out") from exc
    except aiormq.exceptions.PublishError as exc:
        raise _UnroutableError(
            f"amqp queue could not {action}: the broker returned it as unroutable"
        ) from exc
    except aiormq.exceptions.DeliveryError as exc:
        raise QueueError(f"amqp queue could not {action}: the broker refused it (nack)") from exc
    except aiormq.exceptions.ChannelInvalidStateError as exc:
        raise QueueError(
            f"amqp queue could not {action}: not connected to the broker (reconnecting)"
        ) from exc
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        # aiormq cancels pending confirmations when the channel or connection closes.
        raise QueueError(f"amqp queue could not {action}: the channel was closed") from exc


class AMQPDelivery(BaseDelivery):
    """A message handed out by :meth:`AMQPQueue.consume`; owned until settled or its channel is gone."""

    __slots__ = ("_body", "_channel", "_consumer", "_due", "_key", "_redelivered", "_tag")

    def __init__(
        self, consumer: AMQPConsumer, message: AbstractIncomingMessage, channel: AbstractChannel
    ) -> None:
        super().__init__()
        headers = message.headers or {}
        self._consumer = consumer
        self._channel = channel
        self._tag = message.delivery_tag or 0
        self._key = _text(headers.get(KEY_HEADER)) or message.message_id or ""
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
            await self._consumer._queue._publish(headers, self._body, delay, action=f"retry {self._key!r}")

        await self._settle("retry", publish_copy)

    async def dead(self, reason: str) -> None:
        """Publish a copy to ``<queue>.dead`` with the reason (confirmed), then ack this one.

        No-op rules of :meth:`ack`.

        Raises:
            QueueError: the copy was not confirmed; the delivery stays unsettled.
        """

        async def publish_dead() -> None:
            await self._consumer._queue._publish_dead(self._key, self._body, reason)

        await self._settle("dead", publish_dead)

    async def release(self) -> None:
        """Give the message back for immediate redelivery (``basic.nack(requeue=True)``).

        No-op rules of :meth:`ack`.
        """
        await self._settle("release")

    # --- internals ---------------------------------------------------------

    @property
    def _stale(self) -> bool:
        return self._channel.is_closed or self._consumer._queue._closed

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
            async with asyncio.timeout(_SETTLE_TIMEOUT):
                await self._consumer._ack(self._channel, self._tag)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and _really_cancelled():
                raise
            # Not acked: the broker redelivers it once the channel closes (at-least-once).
            logger.warning("amqp queue: ack of %r failed (%s); it will be redelivered", self._key, exc)

    async def _give_back(self) -> None:
        try:
            async with asyncio.timeout(_SETTLE_TIMEOUT):
                await self._channel.basic_nack(self._tag, requeue=True)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and _really_cancelled():
                raise
            logger.debug(
                "amqp queue: requeue of %r failed (%s); the broker requeues it anyway", self._key, exc
            )


async def _write_acks(channel: AbstractChannel, tags: list[int]) -> None:
    """One ``basic.ack`` frame per tag, handed to aiormq's writer as one chunk (one socket
    write); with an aiormq that lacks the means, one ``basic_ack`` each."""
    if len(tags) == 1 or not _FRAMES_TOGETHER:
        for tag in tags:
            await channel.basic_ack(tag)
        return
    if channel.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
    driver: Any = channel
    drained: asyncio.Future[None] = driver.create_future()  # cancelled by aiormq if the channel closes
    frame = _CHANNEL_FRAME.marshall(
        channel_number=driver.number,
        frames=[Basic.Ack(delivery_tag=tag) for tag in tags],
        drain_future=drained,
    )
    await driver.write_queue.put(frame)
    await drained


def _fail(future: asyncio.Future[None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
        future.exception()  # nobody may wait for it any more (timed out): no "never retrieved"


def _really_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class AMQPConsumer:
    """The async iterator returned by :meth:`AMQPQueue.consume`.

    The consumer starts on the first ``__anext__`` (a failure raises
    :class:`QueueError`; the next call tries again). A cancelled ``__anext__``
    loses nothing and leaves the iterator usable; ``aclose()`` may be called
    from another task and ends a waiting ``__anext__``. While the broker is
    unreachable ``__anext__`` waits for the robust connection to come back.
    """

    def __init__(self, queue: AMQPQueue, prefetch: int) -> None:
        self._queue = queue
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
            if self._closed or self._queue._closed:
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
                await asyncio.wait_for(asyncio.shield(self._starting), self._queue.connect_timeout)
        if self._amqp_queue is not None and self._tag is not None:
            try:
                async with asyncio.timeout(_SETTLE_TIMEOUT):
                    await self._amqp_queue.cancel(self._tag)
            except Exception as exc:
                logger.debug("amqp queue: cancelling consumer failed: %s", exc)
        while self._buffer:
            delivery = self._buffer.popleft()
            if not delivery._stale:
                await delivery._give_back()
        # Let delayed messages being moved to their next tier finish (their ack needs the channel).
        with suppress(TimeoutError):
            async with asyncio.timeout(self._queue.confirm_timeout + _SETTLE_TIMEOUT):
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
        queue = self._queue
        connection = queue._require_connection()
        if connection.transport is None or not connection.connected.is_set():
            raise QueueError(
                f"amqp queue could not start consuming {queue.queue!r}: not connected (reconnecting)"
            )
        channel = connection.channel(publisher_confirms=False)
        try:
            with _translate(f"start consuming {queue.queue!r}"):
                async with asyncio.timeout(queue.connect_timeout):
                    await channel.initialize()
                    await channel.set_qos(prefetch_count=self._prefetch)
                    amqp_queue = await channel.declare_queue(
                        queue.queue, durable=True, arguments=queue._queue_arguments()
                    )
                    tag = await amqp_queue.consume(self._on_message, no_ack=False)
        except BaseException:
            await _close_channel_quietly(channel)
            raise
        self._channel, self._amqp_queue, self._tag = channel, amqp_queue, tag
        if self._closed or queue._closed:
            self._closed = True
            await self._close_channel()

    def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Not a coroutine function: aio-pika then calls it from a callback instead of
        # running it in a task of its own, one task fewer per message.
        try:
            channel = message.channel
        except aiormq.exceptions.ChannelInvalidStateError:
            return  # the channel closed before we saw it: the broker requeued it
        delivery = AMQPDelivery(self, message, channel)
        if self._closed or self._queue._closed:
            self._queue._spawn(delivery._give_back())
            return
        if delivery._due is not None and delivery._due > _now_ms():
            self._rerouting += 1
            self._queue._spawn(self._reroute_counted(delivery))
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
            await self._queue._publish(
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
            self._queue._spawn(self._send_acks())
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
                        await _write_acks(channel, [tag for tag, _ in items])
                    except (Exception, asyncio.CancelledError) as exc:
                        for _, future in items:
                            _fail(future, exc)
                        if isinstance(exc, asyncio.CancelledError) and _really_cancelled():
                            raise
                    else:
                        for _, future in items:
                            if not future.done():
                                future.set_result(None)
        finally:
            self._acking = False
            left, self._acks = self._acks, []
            for _, _, future in left:
                _fail(future, QueueError("amqp queue: the acks were not sent (closing)"))

    def _settled(self, delivery: AMQPDelivery) -> None:
        self._outstanding.discard(delivery)
        if self._closed and not self._outstanding and not self._channel_closed:
            self._queue._spawn(self._close_channel())

    async def _close_channel(self) -> None:
        if self._channel_closed:
            return
        self._channel_closed = True
        self._queue._consumers.discard(self)
        if self._channel is not None:
            await _close_channel_quietly(self._channel)

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


async def _close_channel_quietly(channel: AbstractRobustChannel) -> None:
    try:
        async with asyncio.timeout(_SETTLE_TIMEOUT):
            await channel.close()
    except Exception as exc:
        logger.debug("amqp queue: closing a channel failed: %s", exc)


class AMQPQueue(ResourceMixin):
    """A :class:`~mailqueue.protocols.Queue` on RabbitMQ (see the module docstring).

    Args:
        url: the broker's ``amqp://`` or ``amqps://`` URL, with only the
            options aio-pika understands (see the module docstring).
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
        if exchange_type not in _EXCHANGE_TYPES:
            raise ConfigurationError(
                f"option 'exchange_type' must be one of {', '.join(_EXCHANGE_TYPES)}, not {exchange_type!r}"
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
        first = max(1, round(tier_min * 1000))
        #: Delay tiers in milliseconds, shortest first.
        self.tiers: tuple[int, ...] = tuple(
            first * 2**k for k in range(64) if first * 2**k <= max(first, tier_max * 1000)
        )
        self._closed = True
        self._connection: aio_pika.RobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._consumers: set[AMQPConsumer] = set()
        self._declared: set[str] = set()
        self._declaring = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def dead_queue(self) -> str:
        """Name of the dead-letter queue, ``<queue>.dead``."""
        return f"{self.queue}.dead"

    def tier_queue(self, tier_ms: int) -> str:
        """Name of the retry queue of a tier, ``<queue>.retry.<ms>``."""
        return f"{self.queue}.retry.{tier_ms}"

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext) -> Self:
        """Build from an ``amqp://`` or ``amqps://`` URL (options in the module docstring).

        Raises:
            ConfigurationError: another scheme, an unknown option or a bad value.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise ConfigurationError(f"not an amqp:// or amqps:// URL: {redact_url(url)!r}")
        if not parts.hostname:
            raise ConfigurationError(f"{parts.scheme}:// URL needs a host: {redact_url(url)!r}")
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError:
            raise ConfigurationError(f"bad port in {redact_url(url)!r}") from None
        options = parse_options(url, AMQPOptions)
        driver = [(name, value) for name, value in url_query(url) if name in _DRIVER_OPTIONS]
        kwargs = options.model_dump(include=options.model_fields_set & set(_OPTIONS))
        broker_url = parts._replace(query=urlencode(driver)).geturl()
        return cls(url=broker_url, **kwargs)

    # --- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        """Connect (robust connection), open the publishing channel and declare the topology.

        Raises:
            QueueError: the broker is unreachable within ``connect_timeout``,
                refused the login, or the topology conflicts with what exists.
        """
        if not self._closed:
            return
        where = redact_url(self.url)
        connection = aio_pika.RobustConnection(URL(self.url))
        try:
            with _translate(f"connect to {where} and declare queue {self.queue!r}"):
                async with asyncio.timeout(self.connect_timeout):
                    await connection.connect(timeout=self.connect_timeout)
                    channel = connection.channel(publisher_confirms=True, on_return_raises=True)
                    await channel.initialize()
                    if self.exchange:
                        exchange: AbstractExchange = await channel.declare_exchange(
                            self.exchange, ExchangeType(self.exchange_type), durable=True
                        )
                    else:
                        exchange = channel.default_exchange
                    if self.quorum:
                        await self._declare(channel, self.dead_queue, self._queue_arguments(dead=True))
                    queue = await channel.declare_queue(
                        self.queue, durable=True, arguments=self._queue_arguments()
                    )
                    if self.exchange:
                        await queue.bind(exchange, self.routing_key)
        except BaseException:
            await _close_connection_quietly(connection)
            raise
        self._connection, self._channel, self._exchange = connection, channel, exchange
        self._declared.clear()
        self._closed = False
        logger.info("amqp queue %r open on %s", self.queue, where)

    async def close(self) -> None:
        """Stop every consumer and close the connection; idempotent.

        Closing the consumers' channels makes the broker requeue every
        delivery not yet settled (never dead-lettered); settling one later
        does nothing.
        """
        if self._closed:
            return
        self._closed = True
        for consumer in list(self._consumers):
            await consumer._shutdown()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        if self._channel is not None:
            await _close_channel_quietly(self._channel)
        if self._connection is not None:
            await _close_connection_quietly(self._connection)
        self._connection = self._channel = self._exchange = None

    # --- the Queue protocol ------------------------------------------------

    async def publish(self, key: str, body: bytes, *, delay: float = 0.0) -> None:
        """Publish ``body`` under ``key``, available after ``delay`` seconds; return once confirmed.

        Raises:
            QueueError: not open, or not confirmed (nack, returned as
                unroutable, ``confirm_timeout``, connection lost).
        """
        await self._publish({KEY_HEADER: key}, bytes(body), delay, action=f"publish {key!r}")

    def consume(self, *, prefetch: int) -> AMQPConsumer:
        """Return an async iterator of deliveries on a channel with ``basic.qos(prefetch)``.

        Raises:
            ValueError: ``prefetch`` is not 1 to 65535.
            QueueError: the queue is not open.
        """
        if not 1 <= prefetch <= 65535:
            raise ValueError("prefetch must be 1 to 65535")
        self._require_connection()
        consumer = AMQPConsumer(self, prefetch)
        self._consumers.add(consumer)
        return consumer

    async def depth(self) -> int:
        """Ready messages in the queue and its retry tiers, plus those this instance's
        consumers fetched but did not hand out; unsettled deliveries are not counted.

        Raises:
            QueueError: not open, the broker is unreachable, or the queue is missing.
        """
        connection = self._require_connection()
        transport = connection.transport
        if transport is None:
            raise QueueError("amqp queue could not count messages: not connected to the broker")
        amqp = transport.connection
        total = 0
        channel: AbstractChannel | None = None
        with _translate(f"count messages of {self.queue!r}"):
            async with asyncio.timeout(self.confirm_timeout):
                try:
                    for name in (self.queue, *map(self.tier_queue, self.tiers)):
                        if channel is None or channel.is_closed:
                            channel = await amqp.channel(publisher_confirms=False)
                        try:
                            declared = await channel.queue_declare(name, passive=True)
                        except aiormq.exceptions.ChannelNotFoundEntity:
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

    # --- internals ---------------------------------------------------------

    def _require_connection(self) -> aio_pika.RobustConnection:
        if self._closed or self._connection is None:
            raise QueueError("amqp queue is not open")
        return self._connection

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _queue_arguments(self, *, dead: bool = False) -> dict[str, Any] | None:
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

    def _tier_arguments(self, tier_ms: int) -> dict[str, Any]:
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

    def _tier_for(self, remaining_ms: int) -> int:
        """The largest tier not longer than ``remaining_ms`` (the shortest if none is)."""
        fitting = [tier for tier in self.tiers if tier <= remaining_ms]
        return fitting[-1] if fitting else self.tiers[0]

    @staticmethod
    async def _declare(channel: AbstractRobustChannel, name: str, arguments: dict[str, Any] | None) -> None:
        await channel.declare_queue(name, durable=True, arguments=arguments)

    async def _ensure(self, name: str, arguments: dict[str, Any] | None) -> None:
        if name in self._declared:
            return
        async with self._declaring:
            if name in self._declared:
                return
            channel = self._channel
            if channel is None:
                raise QueueError("amqp queue is not open")
            if channel.is_closed:
                raise QueueError(
                    f"amqp queue could not declare {name!r}: not connected to the broker (reconnecting)"
                )
            with _translate(f"declare queue {name!r}"):
                async with asyncio.timeout(self.confirm_timeout):
                    await self._declare(channel, name, arguments)
            self._declared.add(name)

    async def _publish(
        self, headers: HeadersType, body: bytes, delay: float, *, action: str, due: int | None = None
    ) -> None:
        """Publish now (``delay <= 0`` and no ``due``) or into the retry tier that fits."""
        self._require_connection()
        if due is None and delay > 0:
            due = _now_ms() + math.ceil(delay * 1000)
        if due is None:
            await self._send(self._exchange, self.routing_key, headers, body, action)
            return
        headers[DUE_HEADER] = due
        tier = self._tier_for(due - _now_ms())
        await self._send_to_queue(self.tier_queue(tier), self._tier_arguments(tier), headers, body, action)

    async def _publish_dead(self, key: str, body: bytes, reason: str) -> None:
        headers: HeadersType = {KEY_HEADER: key, REASON_HEADER: reason, DEAD_AT_HEADER: _now_ms()}
        arguments = self._queue_arguments(dead=True)
        await self._send_to_queue(self.dead_queue, arguments, headers, body, f"dead-letter {key!r}")

    async def _send_to_queue(
        self, name: str, arguments: dict[str, Any] | None, headers: HeadersType, body: bytes, action: str
    ) -> None:
        """Publish straight to one of our satellite queues, declaring it first (once)."""
        await self._ensure(name, arguments)
        try:
            await self._send(None, name, headers, body, action)
        except _UnroutableError:
            # Deleted since we declared it (e.g. by an operator): the broker
            # returned the message, so it is safe to declare again and resend.
            logger.warning("amqp queue: %r is gone; declaring it again", name)
            self._declared.discard(name)
            await self._ensure(name, arguments)
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
        channel = self._channel
        if self._closed or channel is None:
            raise QueueError("amqp queue is not open")
        target = exchange if exchange is not None else channel.default_exchange
        message = aio_pika.Message(
            body,
            headers=headers,
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=uuid.uuid4().hex,
            app_id="mailqueue",
        )
        with _translate(action):
            async with asyncio.timeout(self.confirm_timeout):
                result = await target.publish(message, routing_key, mandatory=True)
            if not isinstance(result, Basic.Ack):
                raise QueueError(f"amqp queue could not {action}: the broker did not confirm it ({result!r})")


async def _close_connection_quietly(connection: aio_pika.RobustConnection) -> None:
    try:
        async with asyncio.timeout(_SETTLE_TIMEOUT):
            await connection.close()
    except Exception as exc:
        logger.debug("amqp queue: closing the connection failed: %s", exc)
