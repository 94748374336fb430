"""The base of every link of the sending chain that wraps another Sender, and what links share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

from mailqueue.errors import DeliveryError, PermanentDeliveryError
from mailqueue.protocols import OutgoingMessage, RecipientReply, ResourceMixin, Sender, SendResult

__all__ = ["SendingStep", "failure_reply", "find_link", "links"]

_S = TypeVar("_S")


class SendingStep(ResourceMixin):
    """A Sender that wraps a Sender (``inner``): it looks at, changes or decides about a
    message, then hands it on, and returns per-recipient outcomes like any Sender.

    Subclasses override :meth:`send` (and :meth:`open`/:meth:`close` if they hold
    anything, calling these too). Opening and closing the step opens and closes
    ``inner``; the From address is ``inner``'s.
    """

    def __init__(self, inner: Sender) -> None:
        self.inner = inner

    @property
    def from_address(self) -> str:
        """The address messages are rendered with: the wrapped sender's."""
        return self.inner.from_address

    async def open(self) -> None:
        """Open ``inner``."""
        await self.inner.open()

    async def close(self) -> None:
        """Close ``inner``."""
        await self.inner.close()

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Hand ``message`` to ``inner`` unchanged (a step overrides this)."""
        return await self.inner.send(message)


def links(sender: Sender) -> Iterator[Sender]:
    """``sender`` and every Sender it wraps (through ``inner``), outermost first."""
    current: Sender | None = sender
    while current is not None:
        yield current
        current = getattr(current, "inner", None)


def find_link(sender: Sender, kind: type[_S]) -> _S | None:
    """The first link of the chain that is a ``kind`` (e.g. the
    :class:`~mailqueue.sending.accounts.AccountRouter`), or ``None``."""
    for link in links(sender):
        if isinstance(link, kind):
            return link
    return None


def failure_reply(exc: DeliveryError) -> RecipientReply:
    """The reply a step that splits a message into several transactions records for the
    recipients of one that failed: its code (451 / 554 when it has no 4xx/5xx one) and text."""
    default = 554 if isinstance(exc, PermanentDeliveryError) else 451
    code = exc.code if exc.code is not None and 400 <= exc.code < 600 else default
    return RecipientReply(code, exc.reply or str(exc))
