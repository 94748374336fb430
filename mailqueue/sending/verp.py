"""VERP: a return path per mail and recipient, so that a bounce says which it is about.

With the setting ``bounces.domain``, every mail goes out with the envelope
sender (``MAIL FROM``, the return path bounces go to)::

    <local>+<mail id>.<recipient tag>@<bounces.domain>

``<local>`` is ``bounces.local`` or the From address's local part; the mail
id is lowercase already (``[0-9a-z_-]``); the recipient tag is the first
:data:`TAG_CHARS` characters of the lowercase base32 HMAC-SHA256, keyed by
``bounces.secret``, of the mail id and the recipient address. Everything is
lowercase, so an MTA that folds the case of the address keeps it intact.
Without a secret the tag is a plain hash: it still tells the recipients of
a mail apart, but anyone who knows a mail id and an address can compute it.

A return path names one recipient, so :class:`VERPStep` sends a mail to N
recipients as N SMTP transactions (the wire sender reuses its connection)
and merges their per-recipient results. Without ``bounces.domain`` the step
is not in the chain and the envelope sender is the From address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from dataclasses import dataclass, replace

from mailqueue.errors import (
    PermanentDeliveryError,
    TransientDeliveryError,
)
from mailqueue.protocols import OutgoingMessage, RecipientReply, Sender, SendResult
from mailqueue.sending.step import SendingStep, failure_reply
from mailqueue.settings import Settings

__all__ = ["TAG_CHARS", "VERPAddress", "VERPStep", "parse_verp", "recipient_tag", "verp_address", "verp_step"]

logger = logging.getLogger("mailqueue.bounces")

#: Characters of the recipient tag (40 bits of the HMAC).
TAG_CHARS = 8

_VERP_RE = re.compile(r"^(?P<local>.+)\+(?P<id>[0-9a-z][0-9a-z_-]{0,63})\.(?P<tag>[a-z2-7]{8})$")


def recipient_tag(mail_id: str, address: str, secret: bytes = b"") -> str:
    """The tag of ``address`` among the recipients of mail ``mail_id``: :data:`TAG_CHARS`
    lowercase base32 characters (``a-z2-7``) of an HMAC-SHA256 keyed by ``secret``.

    The address is case-folded first, as the listener may see it folded.
    """
    digest = hmac.new(secret, f"{mail_id}\n{address.lower()}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:TAG_CHARS]


def verp_address(local: str, mail_id: str, address: str, domain: str, secret: bytes = b"") -> str:
    """The return path of mail ``mail_id`` to ``address``: ``local+id.tag@domain``, lowercase."""
    return f"{local.lower()}+{mail_id}.{recipient_tag(mail_id, address, secret)}@{domain.lower()}"


@dataclass(frozen=True, slots=True)
class VERPAddress:
    """What a VERP return path says: the mail id and the recipient tag."""

    mail_id: str
    tag: str

    def matches(self, address: str, secret: bytes = b"") -> bool:
        """Whether the tag is that of ``address`` (compared in constant time)."""
        return hmac.compare_digest(self.tag, recipient_tag(self.mail_id, address, secret))


def parse_verp(address: str, domain: str) -> VERPAddress | None:
    """The mail id and tag of a VERP ``address`` at ``domain`` (any case), or ``None``
    if it is not one (another domain, or a local part not of the form ``local+id.tag``)."""
    local, at, right = address.strip().strip("<>").rpartition("@")
    if not at or right.lower().rstrip(".") != domain.lower():
        return None
    found = _VERP_RE.match(local.lower())
    if found is None:
        return None
    return VERPAddress(found["id"], found["tag"])


class VERPStep(SendingStep):
    """Sends each recipient of a message in its own transaction, with its VERP return path.

    The results are merged into one :class:`~mailqueue.protocols.SendResult`. A
    delivery error of the first transaction is the message's (raised as is, as
    the wire sender would have: nobody got the mail). A transient or permanent
    error of a later one becomes that recipient's reply (its code, or 451 / 554),
    so the recipients already accepted stay accepted and only the others are
    retried or failed. An :class:`~mailqueue.errors.UnknownDeliveryError` (lost
    after the final dot) is raised wherever it happens: the mail may have been
    delivered, and nothing must be sent again.

    Args:
        inner: the next link (the account router or the wire sender).
        domain: ``bounces.domain``.
        local: left of the ``+``; default the From address's local part.
        secret: ``bounces.secret`` (``b""``: none).
    """

    def __init__(self, inner: Sender, *, domain: str, local: str | None = None, secret: bytes = b"") -> None:
        super().__init__(inner)
        self.domain = domain
        self.local = local
        self.secret = secret

    def return_path(self, mail_id: str, address: str) -> str:
        """The envelope sender of mail ``mail_id`` to ``address``."""
        local = self.local or self.from_address.rpartition("@")[0] or "bounces"
        return verp_address(local, mail_id, address, self.domain, self.secret)

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Send ``message`` to each recipient in turn with its own return path; merge the replies."""
        replies: dict[str, RecipientReply] = {}
        for position, address in enumerate(message.recipients):
            single = replace(
                message, envelope_from=self.return_path(message.mail_id, address), recipients=[address]
            )
            try:
                result = await self.inner.send(single)
            except (TransientDeliveryError, PermanentDeliveryError) as exc:
                if position == 0:
                    raise
                replies[address] = failure_reply(exc)
                continue
            replies.update(result.replies)
        return SendResult(replies)


def verp_step(inner: Sender, settings: Settings) -> Sender:
    """The :class:`VERPStep` around ``inner`` when ``bounces.domain`` is set, else ``inner``."""
    bounces = settings.bounces
    if not bounces.domain:
        return inner
    secret = bounces.secret.get_secret_value().encode() if bounces.secret is not None else b""
    return VERPStep(inner, domain=bounces.domain, local=bounces.local, secret=secret)
