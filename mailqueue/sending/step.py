"""The base of every link of the sending chain that wraps another Sender."""

from __future__ import annotations

from mailqueue.protocols import OutgoingMessage, ResourceMixin, Sender, SendResult

__all__ = ["SendingStep"]


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
