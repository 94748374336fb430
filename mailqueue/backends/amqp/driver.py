"""Where the AMQP queue meets aio-pika and aiormq: their failures in our words,
closing channels and connections quietly, and acks written together.

:func:`write_acks` reaches under aiormq's public API (``ChannelFrame.marshall``,
``Channel.create_future``, ``Channel.write_queue`` of aiormq 7; the tests run
with aiormq 7.2); with an aiormq that lacks them it sends one ``basic.ack`` at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import AbstractChannel
from pamqp.commands import Basic

from mailqueue.backends._base import translate_errors
from mailqueue.errors import QueueError

__all__ = [
    "SETTLE_TIMEOUT",
    "UnroutableError",
    "close_channel_quietly",
    "close_connection_quietly",
    "fail_future",
    "really_cancelled",
    "translate",
    "write_acks",
]

logger = logging.getLogger("mailqueue.backends.amqp")

#: Seconds an ack, a requeue or a close may take.
SETTLE_TIMEOUT: Final = 5.0
#: aiormq's writer takes several frames as one chunk (``ChannelFrame.marshall``, aiormq 7).
_CHANNEL_FRAME: Final[Any] = getattr(aiormq.abc, "ChannelFrame", None)
_FRAMES_TOGETHER: Final = hasattr(_CHANNEL_FRAME, "marshall") and hasattr(aiormq.Channel, "create_future")


class UnroutableError(QueueError):
    """The broker returned a mandatory message: no queue was bound to take it."""


@contextmanager
def translate(action: str) -> Iterator[None]:
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
        raise UnroutableError(f"amqp queue could not {action}: the broker returned it as unroutable") from exc
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


async def write_acks(channel: AbstractChannel, tags: list[int]) -> None:
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


def fail_future(future: asyncio.Future[None], exc: BaseException) -> None:
    """Fail ``future`` with ``exc`` unless it is done, marking the exception retrieved."""
    if not future.done():
        future.set_exception(exc)
        future.exception()  # nobody may wait for it any more (timed out): no "never retrieved"


def really_cancelled() -> bool:
    """The current task is being cancelled (not merely handed a driver's CancelledError)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def close_channel_quietly(channel: AbstractRobustChannel) -> None:
    """Close ``channel``, logging (not raising) a failure."""
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT):
            await channel.close()
    except Exception as exc:
        logger.debug("amqp queue: closing a channel failed: %s", exc)


async def close_connection_quietly(connection: aio_pika.RobustConnection) -> None:
    """Close ``connection``, logging (not raising) a failure."""
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT):
            await connection.close()
    except Exception as exc:
        logger.debug("amqp queue: closing the connection failed: %s", exc)
