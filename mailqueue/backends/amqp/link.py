"""What the parts of one AMQP queue share: whether the queue is open, the robust
connection with the publishing channel and exchange, the timeouts, and the
background tasks (connecting and closing them too)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustChannel
from yarl import URL

from mailqueue.backends.amqp.driver import close_channel_quietly, close_connection_quietly, translate
from mailqueue.errors import QueueError
from mailqueue.registry import redact_url

__all__ = ["Link"]


class Link:
    """The connection state of one queue, read by its publisher and consumers.

    Args:
        url: the broker's URL (with the driver's options only).
        connect_timeout: seconds to connect and declare (and to start a consumer).
        confirm_timeout: seconds to wait for a publisher confirm (and a declare).
    """

    def __init__(self, url: str, *, connect_timeout: float, confirm_timeout: float) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.confirm_timeout = confirm_timeout
        #: False from a successful :meth:`open` until the queue starts closing.
        self.closed = True
        self.connection: aio_pika.RobustConnection | None = None
        self.channel: AbstractRobustChannel | None = None
        self.exchange: AbstractExchange | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(
        self, declare: Callable[[AbstractRobustChannel], Awaitable[AbstractExchange]], *, what: str
    ) -> None:
        """Connect (robust connection), open the publishing channel and ``declare`` the topology
        on it, all within ``connect_timeout``; then the queue is open.

        Raises:
            QueueError: the broker is unreachable, refused the login, or ``declare`` failed.
        """
        where = redact_url(self.url)
        connection = aio_pika.RobustConnection(URL(self.url))
        try:
            with translate(f"connect to {where} and {what}"):
                async with asyncio.timeout(self.connect_timeout):
                    await connection.connect(timeout=self.connect_timeout)
                    channel = connection.channel(publisher_confirms=True, on_return_raises=True)
                    await channel.initialize()
                    exchange = await declare(channel)
        except BaseException:
            await close_connection_quietly(connection)
            raise
        self.connection, self.channel, self.exchange = connection, channel, exchange
        self.closed = False

    async def close(self) -> None:
        """Cancel the background tasks, close the publishing channel and the connection.

        The queue is marked :attr:`closed` (and its consumers are shut down) before.
        """
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        if self.channel is not None:
            await close_channel_quietly(self.channel)
        if self.connection is not None:
            await close_connection_quietly(self.connection)
        self.connection = self.channel = self.exchange = None

    def require_connection(self) -> aio_pika.RobustConnection:
        """The connection of the open queue.

        Raises:
            QueueError: the queue is not open.
        """
        if self.closed or self.connection is None:
            raise QueueError("amqp queue is not open")
        return self.connection

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in a background task, cancelled when the queue closes."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
