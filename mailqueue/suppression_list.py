"""The suppression list of a Store, with mailqueue's rules (:mod:`mailqueue.suppression`).

:class:`Suppressions` is what :class:`~mailqueue.MailQueue` (its ``suppressions``),
the sending chain's suppression step, the HTTP API, the CLI and the bounce
intake use; none of them reaches the Store's table directly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from mailqueue import metrics
from mailqueue.batching import Batcher
from mailqueue.errors import ConfigurationError
from mailqueue.protocols import Store, SuppressionStore
from mailqueue.records import utcnow
from mailqueue.suppression import (
    MAX_PAGE,
    Suppression,
    SuppressionQuery,
    SuppressionReason,
    make_entry,
    normalize_address,
)

__all__ = ["Suppressions"]

logger = logging.getLogger("mailqueue.suppression")


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
        stored = await self._checked_store().add_suppression(entry)
        metrics.SUPPRESSIONS_ADDED.labels(reason=stored.reason.value).inc()
        return stored

    async def add_many(self, entries: Sequence[Suppression]) -> int:
        """Store entries made (and so checked) with :func:`make_entry`, one after another.

        Raises:
            ConfigurationError: the store keeps no suppression list.
            StoreError: the store failed (the entries before it are stored).
        """
        store = self._checked_store()
        for entry in entries:
            await store.add_suppression(entry)
            metrics.SUPPRESSIONS_ADDED.labels(reason=entry.reason.value).inc()
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
        metrics.SUPPRESSIONS_ADDED.labels(reason=stored.reason.value).inc()
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
