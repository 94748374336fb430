"""Readiness: one check of the store and the queue, for every probe.

The worker's ``/health/ready`` (``mailqueue worker``'s metrics port) and the
API's ``/health/ready`` both ask :func:`check`; each reports and logs the
result its own way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mailqueue.errors import MailQueueError
from mailqueue.protocols import Queue, Store

__all__ = ["CHECK_TIMEOUT", "Health", "check"]

#: Seconds a check may take before it counts as failed.
CHECK_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Health:
    """What :func:`check` found.

    Attributes:
        checks: ``store`` and ``queue``, each ``ok`` or ``unavailable``.
        errors: for each check that failed, why (a backend error or a ``TimeoutError``).
    """

    checks: dict[str, str]
    errors: dict[str, MailQueueError | TimeoutError] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.errors


async def _probe(
    call: Callable[[], Awaitable[object]], within: float
) -> MailQueueError | TimeoutError | None:
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
        async with asyncio.timeout(within):
            await call()
    except (MailQueueError, TimeoutError) as exc:
        return exc
    return None


async def check(store: Store, queue: Queue, *, within: float = CHECK_TIMEOUT) -> Health:
    """Ask the store (``ping``) and the queue (``depth``) at the same time, each within ``within`` seconds.

    Raises:
        Exception: whatever else a backend raised (a bug, not an outage), once both have answered.
    """
    found = await asyncio.gather(
        _probe(store.ping, within), _probe(queue.depth, within), return_exceptions=True
    )
    checks: dict[str, str] = {}
    errors: dict[str, MailQueueError | TimeoutError] = {}
    for name, result in zip(("store", "queue"), found, strict=True):
        if isinstance(result, BaseException) and not isinstance(result, MailQueueError | TimeoutError):
            raise result
        checks[name] = "ok" if result is None else "unavailable"
        if result is not None:
            errors[name] = result
    return Health(checks, errors)
