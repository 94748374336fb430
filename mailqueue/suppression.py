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
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from mailqueue.batching import Batcher
from mailqueue.errors import ConfigurationError
from mailqueue.message import check_address
from mailqueue.records import utcnow

if TYPE_CHECKING:
    from mailqueue.protocols import Store, SuppressionStore

__all__ = [
    "HARD_BOUNCE_CODES",
    "HARD_BOUNCE_TEXTS",
    "MAX_PAGE",
    "Suppression",
    "SuppressionQuery",
    "SuppressionReason",
    "Suppressions",
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


#: Most lookups of concurrent sends and submits answered by one query.
_LOOKUP_BATCH = 64


class Suppressions:
    """The suppression list of one Store, with mailqueue's rules: what the sending
    chain, :class:`~mailqueue.MailQueue`, the HTTP API, the CLI and the bounce
    intake use (none of them reaches the Store's table directly).

    Lookups made at the same time (concurrent sends or submits) are answered by
    one query (group commit, :class:`~mailqueue.batching.Batcher`).

    Args:
        store: the Store; without the :class:`~mailqueue.protocols.SuppressionStore`
            capability nothing is suppressed and changes raise :class:`ConfigurationError`.
        enabled: ``False``: :meth:`check` suppresses nothing (the list is still kept).
        hard_bounce_ttl: seconds an entry added by :meth:`record_hard_bounce` lasts;
            ``None``: for ever.
    """

    def __init__(self, store: Store, *, enabled: bool = True, hard_bounce_ttl: float | None = None) -> None:
        from mailqueue.protocols import SuppressionStore

        self._store: SuppressionStore | None = store if isinstance(store, SuppressionStore) else None
        self.enabled = enabled
        self.hard_bounce_ttl = hard_bounce_ttl
        self._lookups: Batcher[tuple[str, ...], dict[str, Suppression]] = Batcher(self._lookup, _LOOKUP_BATCH)

    @property
    def available(self) -> bool:
        """True if the Store keeps a suppression list."""
        return self._store is not None

    def _checked_store(self) -> SuppressionStore:
        if self._store is None:
            raise ConfigurationError("this store keeps no suppression list (it is not a SuppressionStore)")
        return self._store

    async def _lookup(self, batches: list[tuple[str, ...]]) -> list[dict[str, Suppression]]:
        store = self._checked_store()
        found = await store.get_suppressions(sorted({a for batch in batches for a in batch}), now=utcnow())
        return [{a: found[a] for a in batch if a in found} for batch in batches]

    async def check(self, addresses: Iterable[str]) -> dict[str, Suppression]:
        """The entries that suppress those of ``addresses`` now, keyed by the address
        as given (compared normalised). Empty when the list is off or unavailable;
        an address that is not valid is simply not suppressed.

        Raises:
            StoreError: the store failed.
        """
        if not self.enabled or self._store is None:
            return {}
        normal: dict[str, str] = {}
        for address in addresses:
            try:
                normal[address] = normalize_address(address)
            except ValueError:
                continue
        if not normal:
            return {}
        found = await self._lookups.call(tuple(sorted(set(normal.values()))))
        return {given: found[key] for given, key in normal.items() if key in found}

    async def add(
        self,
        address: str,
        reason: SuppressionReason | str,
        *,
        mail_id: str | None = None,
        text: str = "",
        expires_at: datetime | None = None,
    ) -> Suppression:
        """Suppress ``address`` (normalised), replacing any entry it has: the last add wins.

        Raises:
            ValueError: an invalid address (or one with CR/LF), an unknown reason,
                an ``expires_at`` that is not in the future.
            ConfigurationError: the store keeps no suppression list.
            StoreError: the store failed.
        """
        entry = make_entry(address, reason, mail_id=mail_id, text=text, expires_at=expires_at)
        return await self._checked_store().add_suppression(entry)

    async def add_many(self, entries: Sequence[Suppression]) -> int:
        """Store entries made (and so checked) with :func:`make_entry`, one after another.

        Raises:
            ConfigurationError: the store keeps no suppression list.
            StoreError: the store failed (the entries before it are stored).
        """
        store = self._checked_store()
        for entry in entries:
            await store.add_suppression(entry)
        return len(entries)

    async def record_hard_bounce(self, address: str, mail_id: str | None, text: str) -> Suppression | None:
        """Suppress ``address`` because its mailbox does not exist (reason ``hard_bounce``,
        expiring after ``hard_bounce_ttl``), with the mail and reply or DSN text that said
        so. For the sending chain and for bounce intake; the caller decides that it is a
        hard bounce (:func:`is_hard_bounce` for an SMTP reply).

        Returns:
            The entry, or ``None`` if the address is not valid or the store keeps no list.

        Raises:
            StoreError: the store failed.
        """
        if self._store is None:
            return None
        expires_at = (
            None if self.hard_bounce_ttl is None else utcnow() + timedelta(seconds=self.hard_bounce_ttl)
        )
        try:
            entry = make_entry(
                address, SuppressionReason.HARD_BOUNCE, mail_id=mail_id, text=text, expires_at=expires_at
            )
        except ValueError as exc:
            logger.warning("not suppressing %r after a hard bounce: %s", address, exc)
            return None
        stored = await self._store.add_suppression(entry)
        logger.warning("suppressed %s: hard bounce of mail id=%s: %s", stored.address, mail_id, stored.text)
        return stored

    async def remove(self, address: str) -> bool:
        """Take ``address`` off the list; ``False`` if it was not on it. Later mails to it
        are sent; mails that ended with it suppressed are not re-sent (``mailqueue resend`` can).

        Raises:
            ValueError: not a valid address.
            ConfigurationError: the store keeps no suppression list.
            StoreError: the store failed.
        """
        return await self._checked_store().remove_suppression(normalize_address(address))

    async def list(self, query: SuppressionQuery) -> list[Suppression]:
        """A page of entries (see :class:`SuppressionQuery`), at most :data:`MAX_PAGE`.

        Raises:
            ConfigurationError: the store keeps no suppression list.
            StoreError: the store failed.
        """
        if not 0 < query.limit <= MAX_PAGE or query.offset < 0:
            raise ValueError(f"limit must be 1 to {MAX_PAGE} and offset not negative")
        return await self._checked_store().list_suppressions(query)

    async def count(self, query: SuppressionQuery) -> int:
        """How many entries match ``query``.

        Raises:
            ConfigurationError: the store keeps no suppression list.
            StoreError: the store failed.
        """
        return await self._checked_store().count_suppressions(query)

    async def drain(self) -> None:
        """Wait for the lookups in progress."""
        await self._lookups.drain()


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
