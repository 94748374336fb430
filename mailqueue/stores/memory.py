"""In-process Store and AttachmentStore: everything kept in dictionaries.

URL: ``memory://`` (no options), for both the ``mailqueue.stores`` and the
``mailqueue.attachment_stores`` group.

Both pass their conformance suites; they are meant for tests and for trying
mailqueue out, not for production: the data lives as long as the object (it
survives ``close()`` and a later ``open()``, but not the process) and is
visible to this process only. Every operation completes without awaiting in
between, so concurrent tasks of one event loop see each one as atomic.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import ClassVar, Self
from urllib.parse import urlsplit

from mailqueue.backends._base import OptionsModel, parse_options
from mailqueue.errors import (
    AttachmentNotFoundError,
    AttachmentTooLargeError,
    BackendError,
    ConfigurationError,
    StoreError,
)
from mailqueue.protocols import BackendContext, ResourceMixin, StoredAttachment
from mailqueue.records import (
    ActivityBucket,
    Attempt,
    MailRecord,
    RecordQuery,
    RecordUpdate,
    Status,
    activity_range,
    utcnow,
)
from mailqueue.suppression import Suppression, SuppressionQuery

__all__ = ["MemoryAttachmentStore", "MemoryOptions", "MemoryStore"]

#: Bytes per chunk yielded by :meth:`MemoryAttachmentStore.read`.
READ_CHUNK = 64 * 1024


class MemoryOptions(OptionsModel):
    """``memory://`` as a store or attachment store takes no options."""


class _InMemory(ResourceMixin):
    """What both memory backends share: the ``memory://`` URL and open/closed state.

    The data is kept across ``close()`` and a later ``open()``; while closed,
    every operation raises :attr:`closed_error`.
    """

    #: Raised by operations on a closed backend.
    closed_error: type[BackendError] = BackendError
    #: How URL errors name this backend.
    what = "backend"
    #: The URL's options (none).
    url_options: ClassVar[type[OptionsModel]] = MemoryOptions

    def __init__(self) -> None:
        self._open = False

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext | None = None) -> Self:
        """Build the backend from ``memory://``.

        Raises:
            ConfigurationError: another scheme, or any host, path or option.
        """
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise ConfigurationError(f"{cls.what} URL must start with memory://, not {parts.scheme!r}")
        parse_options(url, MemoryOptions)
        if parts.netloc or parts.path.strip("/"):
            raise ConfigurationError(f"{cls.what} URL memory:// takes no host or path")
        return cls()

    async def open(self) -> None:
        """Make the backend usable (there is nothing to connect to)."""
        self._open = True

    async def close(self) -> None:
        """Refuse further use until opened again; the data is kept. Idempotent."""
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise self.closed_error(f"the memory {self.what} is not open")


class MemoryStore(_InMemory):
    """Mail records in a dictionary; the Store contract, in-process.

    Operations on a store that is not open raise :class:`StoreError`, like a
    database store would.
    """

    closed_error = StoreError
    what = "store"

    def __init__(self) -> None:
        super().__init__()
        self._records: dict[str, MailRecord] = {}
        self._history: dict[str, list[Attempt]] = {}
        self._keys: dict[str, str] = {}
        self._suppressions: dict[str, Suppression] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(records={len(self._records)})"

    async def add(self, record: MailRecord) -> MailRecord:
        """Keep the record, or return the existing one for a taken idempotency key.

        Raises:
            StoreError: a record with the same id exists already, or the store is not open.
        """
        self._check_open()
        key = record.mail.idempotency_key
        if key is not None and key in self._keys:
            existing = await self.get(self._keys[key])
            assert existing is not None
            return existing
        if record.id in self._records:
            raise StoreError(f"a record with id {record.id!r} exists already")
        self._records[record.id] = record.evolve(history=())
        self._history[record.id] = list(record.history)
        if key is not None:
            self._keys[key] = record.id
        return record

    async def get(self, mail_id: str) -> MailRecord | None:
        """The record with its attempts in the order they were added, or ``None``.

        Raises:
            StoreError: the store is not open.
        """
        self._check_open()
        record = self._records.get(mail_id)
        if record is None:
            return None
        return record.evolve(history=tuple(self._history[mail_id]))

    async def find(self, query: RecordQuery) -> list[MailRecord]:
        """Records matching ``query``, in ``query.order`` of their ids, without history.

        ``since`` is inclusive and ``until`` exclusive, both on ``created_at``.

        Raises:
            StoreError: the store is not open.
        """
        self._check_open()
        found: list[MailRecord] = []
        for mail_id in sorted(self._records, reverse=query.order != "oldest"):
            if len(found) >= query.limit:
                break
            if (query.before_id is not None and mail_id >= query.before_id) or (
                query.after_id is not None and mail_id <= query.after_id
            ):
                continue
            record = self._records[mail_id]
            if _matches(record, query):
                found.append(record)
        return found

    async def count(self, query: RecordQuery, *, cap: int = 10_000) -> int:
        """How many records match ``query`` (limit, order and cursors ignored), at most ``cap``.

        Raises:
            StoreError: the store is not open.
        """
        self._check_open()
        total = 0
        for record in self._records.values():
            if total >= cap:
                break
            if _matches(record, query):
                total += 1
        return total

    async def count_by_status(self, *, include_deleted: bool = False) -> dict[Status, int]:
        """How many records are in each status (every status a key).

        Raises:
            StoreError: the store is not open.
        """
        self._check_open()
        counts = dict.fromkeys(Status, 0)
        for record in self._records.values():
            if include_deleted or not record.is_deleted:
                counts[record.status] += 1
        return counts

    async def activity(self, *, since: datetime, bucket: timedelta) -> list[ActivityBucket]:
        """Mails accepted, sent and failed per ``bucket`` from ``since`` to now, oldest first.

        Soft-deleted records count too.

        Raises:
            ValueError: ``bucket`` is not a positive whole number of seconds,
                or too many buckets.
            StoreError: the store is not open.
        """
        self._check_open()
        start, slots = activity_range(since, bucket, utcnow())
        accepted, sent, failed = [0] * slots, [0] * slots, [0] * slots

        def tally(counts: list[int], when: datetime | None) -> None:
            if when is not None and when >= start:
                index = (when - start) // bucket
                if index < slots:
                    counts[index] += 1

        for record in self._records.values():
            tally(accepted, record.created_at)
            tally(sent, record.sent_at)
            if record.status in (Status.FAILED, Status.DEAD, Status.BOUNCED):
                tally(failed, record.updated_at)
        return [
            ActivityBucket(start=start + i * bucket, accepted=accepted[i], sent=sent[i], failed=failed[i])
            for i in range(slots)
        ]

    async def update(self, mail_id: str, change: RecordUpdate) -> bool:
        """Apply ``change``; ``False`` if the record is missing or its status is not in ``change.expect``.

        Raises:
            StoreError: the store is not open.
        """
        self._check_open()
        record = self._records.get(mail_id)
        if record is None or (change.expect is not None and record.status not in change.expect):
            return False
        if change.expect_updated_at is not None and record.updated_at != change.expect_updated_at:
            return False
        changes: dict[str, object] = {"updated_at": utcnow()}
        for name in (
            "status",
            "recipients",
            "remark",
            "last_error",
            "last_code",
            "sent_at",
            "next_attempt_at",
        ):
            value = getattr(change, name)
            if value is not None:
                changes[name] = value
        if change.is_deleted is not None:
            changes["is_deleted"] = change.is_deleted
        if change.message_id is not None:
            changes["mail"] = record.mail.model_copy(update={"message_id": change.message_id})
        if change.attempt is not None:
            changes["attempts"] = max(record.attempts, change.attempt.number)
            self._history[mail_id].append(change.attempt)
        self._records[mail_id] = record.evolve(**changes)
        return True

    async def get_many(self, mail_ids: Sequence[str]) -> dict[str, MailRecord]:
        """The records of those of ``mail_ids`` that exist, without history.

        Raises:
            StoreError: the store is not open.
        """
        self._check_open()
        return {mail_id: self._records[mail_id] for mail_id in mail_ids if mail_id in self._records}

    async def update_many(self, changes: Sequence[tuple[str, RecordUpdate]]) -> list[bool]:
        """Apply each change as :meth:`update` does, in order, all at once.

        Raises:
            StoreError: the store is not open (nothing is changed).
        """
        self._check_open()
        return [await self.update(mail_id, change) for mail_id, change in changes]

    async def delete_records(
        self, mail_ids: Sequence[str], *, statuses: frozenset[Status], soft: bool = False
    ) -> list[str]:
        """Forget those of ``mail_ids`` whose status is one of ``statuses``, with
        their history; with ``soft``, mark them ``is_deleted`` instead.

        Returns:
            The ids of the records deleted (or newly marked).

        Raises:
            StoreError: the store is not open.
        """
        self._check_open()
        deleted: list[str] = []
        for mail_id in mail_ids:
            record = self._records.get(mail_id)
            if record is None or record.status not in statuses or (soft and record.is_deleted):
                continue
            deleted.append(mail_id)
            if soft:
                self._records[mail_id] = record.evolve(is_deleted=True, updated_at=utcnow())
                continue
            del self._records[mail_id]
            del self._history[mail_id]
            key = record.mail.idempotency_key
            if key is not None and self._keys.get(key) == mail_id:
                del self._keys[key]
        return deleted

    async def ping(self) -> None:
        """Raise :class:`StoreError` if the store is not open."""
        self._check_open()

    # --- the suppression list (SuppressionStore) ------------------------------------

    async def add_suppression(self, entry: Suppression) -> Suppression:
        """Insert ``entry`` or replace the address's entry with it.

        Raises:
            StoreError: the store is not open.
        """
        self._check_open()
        self._suppressions[entry.address] = entry
        return entry

    async def remove_suppression(self, address: str) -> bool:
        """Delete the address's entry; ``False`` if there was none.

        Raises:
            StoreError: the store is not open.
        """
        self._check_open()
        return self._suppressions.pop(address, None) is not None

    async def get_suppressions(self, addresses: Sequence[str], *, now: datetime) -> dict[str, Suppression]:
        """The entries of ``addresses`` not expired at ``now``.

        Raises:
            StoreError: the store is not open.
        """
        self._check_open()
        found = (self._suppressions.get(address) for address in set(addresses))
        return {entry.address: entry for entry in found if entry is not None and entry.active(now)}

    async def list_suppressions(self, query: SuppressionQuery) -> list[Suppression]:
        """A page of the entries matching ``query``, newest first then by address.

        Raises:
            StoreError: the store is not open.
        """
        self._check_open()
        matching = sorted(self._matching(query), key=lambda e: e.address)
        matching.sort(key=lambda e: e.created_at, reverse=True)
        return matching[query.offset : query.offset + query.limit]

    async def count_suppressions(self, query: SuppressionQuery) -> int:
        """How many entries match ``query``.

        Raises:
            StoreError: the store is not open.
        """
        self._check_open()
        return len(self._matching(query))

    def _matching(self, query: SuppressionQuery) -> list[Suppression]:
        now = utcnow()
        return [
            entry
            for entry in self._suppressions.values()
            if (query.address is None or _contains(entry.address, query.address))
            and (query.reason is None or entry.reason is query.reason)
            and (not query.active_only or entry.active(now))
        ]


def _contains(haystack: str, needle: str) -> bool:
    return needle.lower() in haystack.lower()


def _matches(record: MailRecord, query: RecordQuery) -> bool:
    """Whether ``record`` meets every criterion of ``query`` but the cursors and limit."""
    return (
        (query.ids is None or record.id in query.ids)
        and (query.statuses is None or record.status in query.statuses)
        and (query.since is None or record.created_at >= query.since)
        and (query.until is None or record.created_at < query.until)
        and (query.idempotency_key is None or record.mail.idempotency_key == query.idempotency_key)
        and (query.include_deleted or not record.is_deleted)
        and (query.code is None or record.last_code == query.code)
        and (query.subject is None or _contains(record.mail.subject, query.subject))
        and (
            query.recipient is None
            or any(_contains(outcome.address, query.recipient) for outcome in record.recipients)
        )
    )


def new_key() -> str:
    """A new random storage key: 32 characters of ``[A-Za-z0-9_-]``, starting alphanumeric."""
    while True:
        key = secrets.token_urlsafe(24)
        if key[0].isalnum():
            return key


class MemoryAttachmentStore(_InMemory):
    """Attachment bytes in a dictionary; the AttachmentStore contract, in-process.

    Operations on a store that is not open raise :class:`BackendError`.
    """

    what = "attachment store"

    def __init__(self) -> None:
        super().__init__()
        self._blobs: dict[str, bytes] = {}
        self._stored_at: dict[str, datetime] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(attachments={len(self._blobs)})"

    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> StoredAttachment:
        """Read ``chunks`` to the end and keep them under a new key.

        Raises:
            AttachmentTooLargeError: more than ``max_bytes`` arrived; nothing
                is kept and the rest of ``chunks`` is not read.
            BackendError: the store is not open.
        """
        self._check_open()
        parts: list[bytes] = []
        size = 0
        digest = hashlib.sha256()
        async for chunk in chunks:
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise AttachmentTooLargeError(max_bytes)
            data = bytes(chunk)
            digest.update(data)
            parts.append(data)
        key = new_key()
        self._blobs[key] = b"".join(parts)
        self._stored_at[key] = utcnow()
        return StoredAttachment(key=key, size=size, sha256=digest.hexdigest())

    async def read(self, key: str) -> AsyncIterator[bytes]:
        """Yield the bytes kept under ``key`` in chunks of :data:`READ_CHUNK`.

        Raises:
            AttachmentNotFoundError: nothing is kept under ``key``.
            BackendError: the store is not open.
        """
        self._check_open()
        data = self._blobs.get(key)
        if data is None:
            raise AttachmentNotFoundError(key)
        for start in range(0, len(data), READ_CHUNK):
            yield data[start : start + READ_CHUNK]

    async def delete(self, key: str) -> None:
        """Forget ``key``; a missing key is not an error.

        Raises:
            BackendError: the store is not open.
        """
        self._check_open()
        self._blobs.pop(key, None)
        self._stored_at.pop(key, None)

    async def list_keys(self, *, before: datetime) -> AsyncIterator[tuple[str, datetime]]:
        """Yield ``(key, stored_at)`` of the attachments stored before ``before``.

        Raises:
            BackendError: the store is not open.
        """
        self._check_open()
        for key, stored_at in list(self._stored_at.items()):
            if stored_at < before:
                yield key, stored_at
