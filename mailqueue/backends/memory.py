"""In-process queue and sender, for tests, examples and one-process experiments.

Queue URL: ``memory://`` (no options). Capabilities: ``delay=True``,
``shared=False``, ``depth=True``. Messages live in this object only and are
lost when the process exits; every instance is its own queue.

Semantics (the same as every durable backend, minus durability):

- there is no visibility timeout: a delivery handed out stays owned by its
  consumer until it is settled or the queue is closed; ``close()`` puts every
  unsettled delivery back at the head of the queue (never dead-letters it),
  and a queue opened again hands them out with ``redelivered=True``;
- delayed messages (``publish(delay=)``, ``retry(delay)``) wait in a heap of
  due times (monotonic clock);
- dead-lettered messages are kept in :attr:`MemoryQueue.dead`;
- settling a delivery a second time (or after the queue was closed) does
  nothing.

Sender URL: ``memory://?from=<address>`` (default ``mailqueue@example.com``).
:class:`MemorySender` records every message in :attr:`MemorySender.sent` and
reports every recipient accepted (``250 OK``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import ClassVar, Self, TypeVar
from urllib.parse import urlsplit

from pydantic import Field

from mailqueue.backends._base import BaseDelivery, OptionsModel, parse_options
from mailqueue.errors import ConfigurationError, QueueError, TransientDeliveryError
from mailqueue.protocols import (
    BackendContext,
    OutgoingMessage,
    QueueCapabilities,
    RecipientReply,
    ResourceMixin,
    SendResult,
)

__all__ = [
    "DeadLetter",
    "MemoryConsumer",
    "MemoryDelivery",
    "MemoryQueue",
    "MemorySender",
    "QueueOptions",
    "SenderOptions",
]

_M = TypeVar("_M", bound=OptionsModel)


class QueueOptions(OptionsModel):
    """``memory://`` as a queue takes no options."""


class SenderOptions(OptionsModel):
    """The options of ``memory://`` as a sender."""

    from_: str = Field("mailqueue@example.com", alias="from")


def _options(url: str, model: type[_M]) -> _M:
    if urlsplit(url).scheme != "memory":
        raise ConfigurationError(f"not a memory:// URL: {url!r}")
    return parse_options(url, model)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message moved to the dead-letter place by :meth:`Delivery.dead`."""

    key: str
    body: bytes
    reason: str


@dataclass(slots=True)
class _Message:
    key: str
    body: bytes
    deliveries: int = 0


class MemoryDelivery(BaseDelivery):
    """A message handed out by :meth:`MemoryQueue.consume`; settle it once."""

    __slots__ = ("_consumer", "_message", "_queue")

    def __init__(self, queue: MemoryQueue, consumer: MemoryConsumer, message: _Message) -> None:
        super().__init__()
        self._queue = queue
        self._consumer = consumer
        self._message = message

    @property
    def key(self) -> str:
        """The key it was published under."""
        return self._message.key

    @property
    def body(self) -> bytes:
        """The payload exactly as published."""
        return self._message.body

    @property
    def redelivered(self) -> bool:
        """True if the message was handed out before."""
        return self._message.deliveries > 1

    async def ack(self) -> None:
        """Remove the message for good (no-op if already settled)."""
        await self._settle("ack")

    async def retry(self, delay: float) -> None:
        """Make the message available again ``delay`` seconds from now (no-op if already settled)."""

        async def requeue() -> None:
            self._queue._put(self._message, delay)

        await self._settle("retry", requeue)

    async def dead(self, reason: str) -> None:
        """Append the message to :attr:`MemoryQueue.dead` (no-op if already settled)."""

        async def bury() -> None:
            self._queue.dead.append(DeadLetter(self.key, self.body, reason))

        await self._settle("dead", bury)

    async def release(self) -> None:
        """Put the message back at the head of the queue (no-op if already settled)."""

        async def give_back() -> None:
            self._queue._give_back(self._message)

        await self._settle("release", give_back)

    def _on_settled(self, *, done: bool) -> None:
        self._consumer._forget(self)
        self._queue._forget(self)


class MemoryConsumer:
    """The async iterator returned by :meth:`MemoryQueue.consume`.

    A cancelled ``__anext__`` loses nothing and leaves the iterator usable;
    ``aclose()`` may be called from another task and ends a waiting ``__anext__``.
    """

    def __init__(self, queue: MemoryQueue, prefetch: int) -> None:
        self._queue = queue
        self._prefetch = prefetch
        self._outstanding: set[MemoryDelivery] = set()
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> MemoryDelivery:
        queue = self._queue
        while True:
            if self._closed or not queue._open:
                raise StopAsyncIteration
            due_in = queue._promote()
            if queue._ready and len(self._outstanding) < self._prefetch:
                message = queue._ready.popleft()
                message.deliveries += 1
                delivery = MemoryDelivery(queue, self, message)
                self._outstanding.add(delivery)
                queue._unsettled[delivery] = None
                return delivery
            woken = asyncio.Event()
            queue._waiters.add(woken)
            try:
                async with asyncio.timeout(due_in):
                    await woken.wait()
            except TimeoutError:
                pass
            finally:
                queue._waiters.discard(woken)

    def _forget(self, delivery: MemoryDelivery) -> None:
        """``delivery`` is settled: it no longer counts against ``prefetch``."""
        self._outstanding.discard(delivery)

    async def aclose(self) -> None:
        """Stop consuming; deliveries already handed out stay owned until settled."""
        self._closed = True
        self._queue._wake()


class MemoryQueue(ResourceMixin):
    """An honest in-process :class:`~mailqueue.protocols.Queue`.

    Attributes:
        dead: dead-lettered messages, oldest first.
    """

    capabilities = QueueCapabilities(delay=True, shared=False, depth=True)
    #: The URL's options (none).
    url_options: ClassVar[type[OptionsModel]] = QueueOptions

    def __init__(self) -> None:
        self.dead: list[DeadLetter] = []
        self._ready: deque[_Message] = deque()
        self._delayed: list[tuple[float, int, _Message]] = []
        self._order = itertools.count()
        self._unsettled: dict[MemoryDelivery, None] = {}
        self._waiters: set[asyncio.Event] = set()
        self._open = False

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext) -> Self:
        """Build from ``memory://``.

        Raises:
            ConfigurationError: the URL is not ``memory://`` or has an option.
        """
        _options(url, QueueOptions)
        return cls()

    async def open(self) -> None:
        """Start accepting messages (again: a reopened queue keeps its messages)."""
        self._open = True

    async def close(self) -> None:
        """Stop every consumer and put unsettled deliveries back for redelivery; idempotent."""
        if not self._open:
            return
        self._open = False
        for delivery in reversed(list(self._unsettled)):
            delivery._drop()
            self._give_back(delivery._message)
        self._wake()

    async def publish(self, key: str, body: bytes, *, delay: float = 0.0) -> None:
        """Queue ``body`` under ``key``, available after ``delay`` seconds.

        Raises:
            QueueError: the queue is not open.
        """
        if not self._open:
            raise QueueError("memory queue is not open")
        self._put(_Message(key, bytes(body)), delay)

    def consume(self, *, prefetch: int) -> MemoryConsumer:
        """Return an async iterator of deliveries, at most ``prefetch`` unsettled at once.

        It waits while ``prefetch`` deliveries are unsettled, and stops when
        its ``aclose()`` is called or the queue is closed.

        Raises:
            ValueError: ``prefetch`` is less than 1.
            QueueError: the queue is not open.
        """
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        if not self._open:
            raise QueueError("memory queue is not open")
        return MemoryConsumer(self, prefetch)

    async def depth(self) -> int:
        """Messages waiting, ready or delayed (unsettled deliveries are not counted)."""
        return len(self._ready) + len(self._delayed)

    def _give_back(self, message: _Message) -> None:
        """Put ``message`` back at the head of the queue."""
        self._ready.appendleft(message)
        self._wake()

    def _forget(self, delivery: MemoryDelivery) -> None:
        """``delivery`` is settled: no longer counted as unsettled."""
        self._unsettled.pop(delivery, None)
        self._wake()

    def _put(self, message: _Message, delay: float) -> None:
        if delay > 0:
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._order), message))
        else:
            self._ready.append(message)
        self._wake()

    def _promote(self) -> float | None:
        """Move due messages to the ready queue; return seconds until the next is due."""
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            self._ready.append(heapq.heappop(self._delayed)[2])
        return self._delayed[0][0] - now if self._delayed else None

    def _wake(self) -> None:
        for waiter in self._waiters:
            waiter.set()


class MemorySender(ResourceMixin):
    """A :class:`~mailqueue.protocols.Sender` that keeps what it is given.

    Attributes:
        sent: every message sent, in order.
        from_address: the envelope sender the worker should use.
    """

    #: The URL's options.
    url_options: ClassVar[type[OptionsModel]] = SenderOptions

    def __init__(self, *, from_address: str = "mailqueue@example.com") -> None:
        self.from_address = from_address
        self.sent: list[OutgoingMessage] = []
        self._open = False

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext) -> Self:
        """Build from ``memory://?from=<address>``.

        Raises:
            ConfigurationError: not a ``memory://`` URL, unknown option, or empty ``from``.
        """
        address = _options(url, SenderOptions).from_
        if not address:
            raise ConfigurationError("option 'from' of memory:// must not be empty")
        return cls(from_address=address)

    async def open(self) -> None:
        """Start accepting messages."""
        self._open = True

    async def close(self) -> None:
        """Stop accepting messages; idempotent."""
        self._open = False

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Record ``message`` and report every recipient accepted with ``250 OK``.

        Raises:
            TransientDeliveryError: the sender is not open.
        """
        if not self._open:
            raise TransientDeliveryError("memory sender is not open")
        self.sent.append(message)
        return SendResult({rcpt: RecipientReply(250, "OK") for rcpt in message.recipients})
