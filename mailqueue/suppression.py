"""The suppression list: addresses mailqueue does not send to, and why.

An address lands on the list by hand (``manual``, ``unsubscribe``), from a
complaint, or by itself on a hard bounce: a permanent per-recipient refusal
that means "this mailbox does not exist" (:func:`is_hard_bounce`, the table
:data:`HARD_BOUNCE_CODES`). Policy and reputation refusals (``5.7.x``) never
suppress: the mailbox exists, the sender is the problem.

Addresses are compared normalised (:func:`normalize_address`): surrounding
blanks removed, the **whole** address lower-cased. RFC 5321 lets a server
treat the local part case-sensitively, but no mailbox provider in use does,
and a list that ``John@example.com`` could slip past as ``john@`` would not
protect the sender's reputation. Entries are kept in a
:class:`~mailqueue.protocols.SuppressionStore`; an entry whose ``expires_at``
has passed no longer suppresses (and is replaced by the next ``add``).

:class:`~mailqueue.suppression_list.Suppressions` applies these rules to a Store's list.
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from mailqueue.message import check_address
from mailqueue.records import utcnow

__all__ = [
    "HARD_BOUNCE_CODES",
    "HARD_BOUNCE_TEXTS",
    "MAX_PAGE",
    "Suppression",
    "SuppressionQuery",
    "SuppressionReason",
    "is_hard_bounce",
    "make_entry",
    "normalize_address",
]

logger = logging.getLogger("mailqueue.suppression")

#: Most entries one :meth:`~mailqueue.protocols.SuppressionStore.list_suppressions` call returns.
MAX_PAGE = 1000
#: Longest SMTP/DSN text kept with an entry (longer text is cut).
TEXT_MAX = 1000


class SuppressionReason(enum.StrEnum):
    """Why an address is suppressed."""

    HARD_BOUNCE = "hard_bounce"
    COMPLAINT = "complaint"
    MANUAL = "manual"
    UNSUBSCRIBE = "unsubscribe"


@dataclass(frozen=True, slots=True)
class Suppression:
    """One entry of the suppression list.

    ``address`` is normalised (:func:`normalize_address`); ``mail_id`` and
    ``text`` are the mail and the SMTP reply or DSN text that caused it, when
    there was one; ``expires_at`` ``None`` means for ever. Times are
    timezone-aware UTC.
    """

    address: str
    reason: SuppressionReason
    mail_id: str | None = None
    text: str = ""
    created_at: datetime = field(default_factory=utcnow)
    expires_at: datetime | None = None

    def active(self, now: datetime | None = None) -> bool:
        """True if the entry suppresses at ``now`` (default: now): not expired."""
        return self.expires_at is None or self.expires_at > (now or utcnow())


@dataclass(frozen=True, slots=True)
class SuppressionQuery:
    """Which entries :meth:`~mailqueue.protocols.SuppressionStore.list_suppressions` returns.

    ``address``: case-insensitive substring of the address (``@example.com``
    finds a domain); ``reason``: exactly this reason; expired entries are
    listed too unless ``active_only``. Entries come newest first (then by
    address), ``offset`` of them skipped, at most ``limit``.
    """

    address: str | None = None
    reason: SuppressionReason | None = None
    active_only: bool = False
    limit: int = 100
    offset: int = 0


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def normalize_address(value: str) -> str:
    """The address as the suppression list keeps it: checked, blanks around it
    removed, lower-cased (local part too, see the module docs).

    Raises:
        ValueError: not a valid address, or it holds a control character (CR, LF, ...).
    """
    if _CONTROL.search(value):
        raise ValueError("address must not contain control characters (CR, LF, ...)")
    return check_address(value.strip()).lower()


#: RFC 3463 enhanced status codes (``class.subject.detail``, any class 5) that mean the
#: mailbox does not exist, and what each says. A permanent (5xx) per-recipient reply
#: carrying one of them suppresses the address (:func:`is_hard_bounce`).
HARD_BOUNCE_CODES: Final[dict[str, str]] = {
    "5.1.1": "bad destination mailbox address (user unknown)",
    "5.1.2": "bad destination system address (no such domain)",
    "5.1.3": "bad destination mailbox address syntax",
    "5.1.10": "recipient address has a null MX (RFC 7505)",
}

#: Provider texts that mean the mailbox does not exist, matched case-insensitively
#: in a permanent (5xx) reply that carries no enhanced status code of its own.
HARD_BOUNCE_TEXTS: Final[tuple[str, ...]] = (
    "user unknown",
    "unknown user",
    "no such user",
    "no such mailbox",
    "mailbox unavailable",
    "mailbox not found",
    "mailbox does not exist",
    "address does not exist",
    "account does not exist",
    "user does not exist",
    "recipient does not exist",
    "does not exist",
    "recipient address rejected: user unknown",
    "invalid recipient",
    "unknown recipient",
)

_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")


def is_hard_bounce(code: int | None, reply: str) -> bool:
    """True if a per-recipient reply means "this mailbox does not exist".

    Only a permanent reply (``code`` 5xx) can be. Its first RFC 3463 enhanced
    status code decides when it has one: one of :data:`HARD_BOUNCE_CODES` is a
    hard bounce, any other (``5.7.1`` policy, ``5.2.2`` mailbox full, ...)
    is not, whatever the text says. Without one, the text decides
    (:data:`HARD_BOUNCE_TEXTS`).
    """
    if code is None or not 500 <= code < 600:
        return False
    enhanced = _ENHANCED.search(reply)
    if enhanced is not None:
        klass, subject, detail = enhanced.groups()
        return klass == "5" and f"5.{int(subject)}.{int(detail)}" in HARD_BOUNCE_CODES
    text = reply.lower()
    return any(phrase in text for phrase in HARD_BOUNCE_TEXTS)


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` as timezone-aware UTC (naive taken as UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def clip_text(text: str) -> str:
    """``text`` cut to :data:`TEXT_MAX` characters."""
    return text if len(text) <= TEXT_MAX else text[: TEXT_MAX - 1] + "…"


def make_entry(
    address: str,
    reason: SuppressionReason | str,
    *,
    mail_id: str | None = None,
    text: str = "",
    expires_at: datetime | None = None,
    created_at: datetime | None = None,
) -> Suppression:
    """A checked entry: address normalised, reason known, ``text`` cut to :data:`TEXT_MAX`,
    ``expires_at`` (naive taken as UTC) after ``created_at`` (default: now).

    Raises:
        ValueError: what is wrong, naming the field (``address: ...``, ``reason: ...``,
            ``expires_at: ...``).
    """
    try:
        normal = normalize_address(address)
    except ValueError as exc:
        raise ValueError(f"address: {exc}") from None
    try:
        why = SuppressionReason(reason)
    except ValueError:
        choices = ", ".join(r.value for r in SuppressionReason)
        raise ValueError(f"reason: must be one of {choices}, not {reason!r}") from None
    now = as_utc(created_at) or utcnow()
    expires = as_utc(expires_at)
    if expires is not None and expires <= now:
        raise ValueError(f"expires_at: {expires.isoformat()} is not in the future")
    if mail_id is not None and (not mail_id or len(mail_id) > 64):
        raise ValueError("mail_id: must be 1 to 64 characters")
    return Suppression(
        address=normal,
        reason=why,
        mail_id=mail_id,
        text=clip_text(_CONTROL.sub(" ", text).strip()),
        created_at=now,
        expires_at=expires,
    )
