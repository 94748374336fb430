"""The three topics of a Kafka queue (main, retry, dead): check that they exist,
or create those missing when the queue's ``create`` option says so."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiokafka.admin import NewTopic  # type: ignore[import-untyped]

from mailqueue.backends.kafka.clients import DRIVER_ERRORS, KafkaClients, translate
from mailqueue.errors import QueueError

__all__ = ["ensure_topics"]

logger = logging.getLogger("mailqueue.backends.kafka")

#: The broker's error code for a topic that exists already (another instance was first).
_TOPIC_ALREADY_EXISTS = 36


async def ensure_topics(clients: KafkaClients, topics: Sequence[str], *, queue: str) -> None:
    """Check that ``topics`` exist; create the missing ones if the ``create`` option is set.

    Args:
        clients: the queue's driver clients (and options).
        topics: the topic names.
        queue: the queue's main topic, for messages.

    Raises:
        QueueError: the brokers did not answer within ``timeout``, a topic is
            missing and ``create`` is false, or creating one failed.
    """
    options = clients.options
    admin = clients.admin()
    try:
        with translate(queue, "reach the brokers"):
            async with asyncio.timeout(options.timeout):
                await admin.start()
        with translate(queue, "list topics"):
            async with asyncio.timeout(options.timeout):
                existing = set(await admin.list_topics())
        missing = [name for name in topics if name not in existing]
        if not missing:
            return
        if not options.create:
            raise QueueError(
                f"kafka topic(s) {', '.join(missing)} do not exist: create them "
                f"(see docs/backends/kafka.md) or add create=true to the queue URL"
            )
        new = [NewTopic(name, options.partitions, options.replication) for name in missing]
        with translate(queue, f"create topics {', '.join(missing)}"):
            async with asyncio.timeout(options.timeout):
                response = await admin.create_topics(new)
        for name, code, *_ in getattr(response, "topic_errors", []):
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise QueueError(f"kafka queue could not create topic {name!r}: error code {code}")
        logger.info("kafka queue: created topics %s", ", ".join(missing))
    except TimeoutError:
        raise QueueError(
            f"kafka queue {queue!r}: the brokers did not answer within {options.timeout} s"
        ) from None
    finally:
        with contextlib.suppress(*DRIVER_ERRORS):
            await admin.close()
