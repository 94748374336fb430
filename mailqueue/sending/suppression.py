"""The suppression step: the outermost built-in link of the sending chain.

Before the wire, the message's recipients are looked up on the suppression
list (:class:`~mailqueue.suppression_list.Suppressions`, one query, shared with the
lookups of concurrent sends). A suppressed recipient is not handed on: its
reply is a 550 that says so, with ``suppressed`` set to the reason, which
the worker records as the recipient's ``suppressed`` state. When every
recipient is suppressed nothing reaches the wire (nor a connection, nor an
account's rate slot) and the mail ends ``failed``.

After the wire, a recipient that the server refused for good because its
mailbox does not exist (:func:`~mailqueue.suppression.is_hard_bounce`) is
added to the list (reason ``hard_bounce``, with the reply and mail id), when
``suppression.on_hard_bounce`` is on. A Store failure then is logged, never
raised: the mail has been handed over already.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from mailqueue import metrics
from mailqueue.errors import PermanentDeliveryError, StoreError, TransientDeliveryError
from mailqueue.protocols import BackendContext, OutgoingMessage, RecipientReply, Sender, SendResult
from mailqueue.sending.step import SendingStep
from mailqueue.settings import Settings
from mailqueue.suppression import is_hard_bounce
from mailqueue.suppression_list import Suppressions

__all__ = ["SuppressionStep", "suppression_step"]

logger = logging.getLogger("mailqueue.suppression")

#: The code of the reply made up for a suppressed recipient (permanent: not retried).
SUPPRESSED_CODE = 550


def suppressed_reply(reason: str) -> RecipientReply:
    """The reply the step gives for a recipient suppressed for ``reason``."""
    return RecipientReply(
        SUPPRESSED_CODE, f"not sent: the address is on the suppression list ({reason})", suppressed=reason
    )


class SuppressionStep(SendingStep):
    """Leaves out suppressed recipients, and suppresses those that hard-bounce.

    Args:
        inner: the rest of the chain.
        suppressions: the list to read and add to.
        on_hard_bounce: add a recipient refused because its mailbox does not exist.
    """

    def __init__(self, inner: Sender, suppressions: Suppressions, *, on_hard_bounce: bool = True) -> None:
        super().__init__(inner)
        self.suppressions = suppressions
        self.on_hard_bounce = on_hard_bounce

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Send to the recipients not suppressed; report the others as suppressed.

        A :class:`~mailqueue.errors.PermanentDeliveryError` of the wrapped sender (5xx to
        MAIL or DATA) when some recipients were suppressed becomes that reply for each
        of the others, so that the suppressed ones are still recorded as such.

        Raises:
            TransientDeliveryError: the list could not be read (the mail is retried), or
                what the wrapped sender raises.
        """
        try:
            found = await self.suppressions.check(message.recipients)
        except StoreError as exc:
            raise TransientDeliveryError(f"the suppression list could not be read: {exc}") from exc
        replies = {address: suppressed_reply(entry.reason.value) for address, entry in found.items()}
        rest = [address for address in message.recipients if address not in found]
        for entry in found.values():
            metrics.RECIPIENTS_SUPPRESSED.labels(reason=entry.reason.value).inc()
        if found:
            logger.info(
                "mail id=%s: %d recipient(s) suppressed, %d left", message.mail_id, len(found), len(rest)
            )
        if not rest:
            return SendResult(replies)
        if not found:
            result = await self.inner.send(message)
        else:
            try:
                result = await self.inner.send(replace(message, recipients=rest))
            except PermanentDeliveryError as exc:
                # refused as a whole: the others failed with that reply, the suppressed stay suppressed
                refused = RecipientReply(exc.code or SUPPRESSED_CODE, exc.reply)
                return SendResult({**dict.fromkeys(rest, refused), **replies})
        if self.on_hard_bounce:
            await self._record_hard_bounces(message.mail_id, result)
        if not found:
            return result
        return SendResult({**result.replies, **replies})

    async def _record_hard_bounces(self, mail_id: str, result: SendResult) -> None:
        for address, reply in result.replies.items():
            if reply.suppressed or not is_hard_bounce(reply.code, reply.reply):
                continue
            try:
                await self.suppressions.record_hard_bounce(address, mail_id, f"{reply.code} {reply.reply}")
            except Exception:
                # handed over (or refused) already: the outcome must still be recorded
                logger.exception("mail id=%s: could not suppress %s after a hard bounce", mail_id, address)


def suppression_step(inner: Sender, settings: Settings, context: BackendContext | None) -> Sender:
    """The step around ``inner`` for ``settings.suppression``, reading the Store of ``context``;
    ``inner`` itself when there is no Store, it keeps no suppression list, or the list is off."""
    config = settings.suppression
    store = context.store if context is not None else None
    if store is None or not config.enabled:
        return inner
    suppressions = Suppressions(store, enabled=config.enabled, hard_bounce_ttl=config.hard_bounce_ttl)
    if not suppressions.available:
        logger.info("the store keeps no suppression list: nothing is suppressed when sending")
        return inner
    return SuppressionStep(inner, suppressions, on_hard_bounce=config.on_hard_bounce)
