"""The aiokafka clients of one Kafka queue, made from its options: what every
client shares (servers, timeouts, security), the producer, a consumer-group
member, an admin client."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]

from mailqueue.backends._base import translate_errors
from mailqueue.backends.kafka.options import KafkaOptions
from mailqueue.errors import QueueError

__all__ = ["DRIVER_ERRORS", "KafkaClients", "translate"]

#: Driver failures that publish, commit and admin calls translate: any exception, since aiokafka
#: raises more than KafkaError (OSError, ValueError, AssertionError, RuntimeError were seen).
DRIVER_ERRORS: Final = (Exception,)


def translate(queue: str, action: str) -> contextlib.AbstractContextManager[None]:
    """Any exception of the block (a timeout too) as :class:`QueueError` naming the queue's
    main topic and ``action`` (see :func:`~mailqueue.backends._base.translate_errors`)."""
    return translate_errors(QueueError, f"kafka queue {queue!r} could not {action}")


class KafkaClients:
    """Makes the driver's clients of one queue; the password is kept here only.

    Args:
        bootstrap_servers: ``host:port`` of the brokers.
        options: the queue's options.
        username: SASL user (with ``security_protocol`` ``SASL_*``).
        password: SASL password; never logged.
    """

    def __init__(
        self,
        bootstrap_servers: Sequence[str],
        options: KafkaOptions,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.bootstrap_servers = list(bootstrap_servers)
        self.options = options
        self._username = username
        self._password = password

    def common(self) -> dict[str, Any]:
        """The settings every client of the queue is made with."""
        options = self.options
        common: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": options.client_id,
            "request_timeout_ms": int((options.request_timeout or options.timeout) * 1000),
            "metadata_max_age_ms": int(options.metadata_max_age * 1000),
            "security_protocol": options.security_protocol,
        }
        if options.security_protocol in ("SSL", "SASL_SSL"):
            common["ssl_context"] = create_ssl_context(cafile=options.ssl_cafile)
        if options.security_protocol.startswith("SASL"):
            common["sasl_mechanism"] = options.sasl_mechanism
            common["sasl_plain_username"] = self._username
            common["sasl_plain_password"] = self._password
        return common

    def producer(self) -> Any:
        """A producer (not started) that waits for every in-sync replica (``acks=all``)."""
        return AIOKafkaProducer(acks="all", enable_idempotence=self.options.idempotence, **self.common())

    def member(self) -> Any:
        """A member of the workers' consumer group (not started), committing by hand."""
        options = self.options
        # The broker must wait for a member that drains its deliveries before rejoining.
        rebalance_timeout = options.rebalance_timeout or options.drain + options.session_timeout
        return AIOKafkaConsumer(
            group_id=options.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(options.session_timeout * 1000),
            heartbeat_interval_ms=int(options.heartbeat * 1000),
            max_poll_interval_ms=int(options.max_poll_interval * 1000),
            fetch_max_wait_ms=int(options.fetch_wait * 1000),
            max_poll_records=options.batch,
            rebalance_timeout_ms=int(rebalance_timeout * 1000),
            **self.common(),
        )

    def admin(self) -> Any:
        """An admin client (not started)."""
        return AIOKafkaAdminClient(**self.common())
