"""The application's handle on mailqueue: submit, look up, re-send.

::

    async with MailQueue.from_settings() as mq:
        record = await mq.submit(
            Mail(subject="Invoice", html="<p>Attached.</p>", to=[Recipient(address="a@example.com")]),
            [Attachment("invoice.pdf", Path("invoice.pdf"), "application/pdf")],
        )
        print(record.id, record.status)

``submit`` returns only once the mail is recorded in the Store and the queue
has durably accepted it: from then on it is delivered, or ends ``failed`` or
``dead`` in the Store, never silently lost.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal, Self

from mailqueue import metrics
from mailqueue.batching import Batcher
from mailqueue.errors import (
    AttachmentNotFoundError,
    BackendError,
    MailQueueError,
    QueueError,
    StoreError,
    ValidationError,
)
from mailqueue.logs import bind_mail_id
from mailqueue.maintenance import NOT_YET_PUBLISHED, AttachmentSweep, Maintenance, publish
from mailqueue.maintenance import PUBLISH_PENDING as PUBLISH_PENDING
from mailqueue.maintenance import SUBMIT_GRACE as SUBMIT_GRACE
from mailqueue.message import Attachment, AttachmentRef, Mail, allow_special_domains
from mailqueue.mime import make_message_id
from mailqueue.protocols import AttachmentStore, BackendContext, BatchStore, InspectableStore, Queue, Store
from mailqueue.records import (
    RESEND_DEFAULT,
    ActivityBucket,
    MailRecord,
    RecipientOutcome,
    RecipientState,
    RecordQuery,
    RecordUpdate,
    Status,
    iter_records,
)
from mailqueue.settings import RetentionSettings, Settings, SuppressionSettings, load_settings
from mailqueue.suppression import Suppression
from mailqueue.suppression_list import Suppressions

__all__ = ["MailQueue"]

logger = logging.getLogger("mailqueue.client")

_CHUNK = 256 * 1024


#: Most records one group commit inserts, most marks one statement clears.
BATCH_MAX = 256
#: Seconds the marks of confirmed submits wait to be cleared together.
CLEAR_LINGER = 0.2


async def _chunks(
    content: bytes | Path | BinaryIO | AsyncIterable[bytes] | Iterable[bytes],
) -> AsyncIterator[bytes]:
    if isinstance(content, bytes | bytearray | memoryview):
        data = bytes(content)
        for start in range(0, len(data), _CHUNK):
            yield data[start : start + _CHUNK]
    elif isinstance(content, Path):
        with content.open("rb") as fh:
            while chunk := await asyncio.to_thread(fh.read, _CHUNK):
                yield chunk
    elif isinstance(content, io.IOBase) or hasattr(content, "read"):
        reader: BinaryIO = content  # type: ignore[assignment]
        while chunk := await asyncio.to_thread(reader.read, _CHUNK):
            yield chunk
    elif isinstance(content, AsyncIterable):
        async for chunk in content:
            yield chunk
    else:
        for chunk in content:
            yield chunk


class MailQueue:
    """Submit mail, see its state, re-send it.

    Open it (``async with`` or :meth:`open`) before use: that connects the
    Store, the AttachmentStore and the Queue, in that order.

    Args:
        store: the record of every mail.
        queue: where accepted mails wait for a worker.
        attachments: where attachment bytes are kept.
        message_id_domain: right-hand side of generated Message-IDs.
        max_attachment_bytes: largest attachment :meth:`submit` accepts.
        suppression: the suppression list's settings (default: on, accept mail with
            suppressed recipients, keep hard bounces for ever).
    """

    def __init__(
        self,
        *,
        store: Store,
        queue: Queue,
        attachments: AttachmentStore,
        message_id_domain: str = "mailqueue.local",
        max_attachment_bytes: int | None = None,
        suppression: SuppressionSettings | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.attachments = attachments
        self.message_id_domain = message_id_domain
        self.max_attachment_bytes = max_attachment_bytes
        #: The sweeps and retention this instance's methods of the same names delegate to.
        self.maintenance = Maintenance(store, queue, attachments)
        suppression = suppression or SuppressionSettings()
        #: The suppression list (of the Store, when it keeps one): add, remove, list, check.
        self.suppressions = Suppressions(
            store, enabled=suppression.enabled, hard_bounce_ttl=suppression.hard_bounce_ttl
        )
        #: :meth:`submit` refuses a mail with a suppressed recipient (``suppression.reject_on_submit``).
        self.reject_suppressed = suppression.reject_on_submit
        self._opened: list[Store | Queue | AttachmentStore] = []
        self._adds: Batcher[MailRecord, MailRecord] | None = None
        self._clears: Batcher[str, None] | None = None
        if isinstance(store, BatchStore):
            self._adds = Batcher(self._add_many, BATCH_MAX)
            # nobody waits for a clear: gather them for a while, one UPDATE per batch
            self._clears = Batcher(self._clear_marks, BATCH_MAX, linger=CLEAR_LINGER)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> MailQueue:
        """Build (not open) a MailQueue from settings (default: :func:`load_settings`)."""
        from mailqueue import registry

        settings = settings or load_settings()
        allow_special_domains(settings.allowed_special_domains)
        store = registry.create_store(settings.store.get_secret_value())
        context = BackendContext(store=store)
        return cls(
            store=store,
            queue=registry.create_queue(settings.queue.get_secret_value(), context=context),
            attachments=registry.create_attachment_store(
                settings.attachments.get_secret_value(), context=context
            ),
            message_id_domain=settings.message_id_domain or _domain_from_sender(settings),
            max_attachment_bytes=settings.api.max_attachment_bytes,
            suppression=settings.suppression,
        )

    @classmethod
    def from_urls(
        cls, *, store: str, queue: str, attachments: str, message_id_domain: str = "mailqueue.local"
    ) -> MailQueue:
        """Build (not open) a MailQueue from backend URLs."""
        from mailqueue import registry

        store_backend = registry.create_store(store)
        context = BackendContext(store=store_backend)
        return cls(
            store=store_backend,
            queue=registry.create_queue(queue, context=context),
            attachments=registry.create_attachment_store(attachments, context=context),
            message_id_domain=message_id_domain,
        )

    async def open(self) -> None:
        """Open the Store, then the AttachmentStore and the Queue (which may use the Store)."""
        for backend in (self.store, self.attachments, self.queue):
            if backend in self._opened:
                continue
            try:
                await backend.open()
            except BaseException:
                await self.close()
                raise
            self._opened.append(backend)

    async def close(self) -> None:
        """Close what :meth:`open` opened, in reverse order (after the pending writes)."""
        for batcher in (self._adds, self._clears):
            if batcher is not None:
                await batcher.drain()
        await self.suppressions.drain()
        while self._opened:
            backend = self._opened.pop()
            try:
                await backend.close()
            except Exception:
                logger.exception("closing %s failed", type(backend).__name__)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def store_attachment(
        self, attachment: Attachment, *, max_bytes: int | None = None
    ) -> AttachmentRef:
        """Stream one attachment into the AttachmentStore and return its reference.

        Raises:
            AttachmentTooLargeError: over ``max_bytes`` (default: the instance's limit); nothing kept.
            ValidationError: bad file name or content type; nothing kept.
        """
        limit = max_bytes if max_bytes is not None else self.max_attachment_bytes
        stored = await self.attachments.put(_chunks(attachment.content), max_bytes=limit)
        try:
            return AttachmentRef(
                key=stored.key,
                filename=attachment.filename,
                content_type=attachment.content_type,
                size=stored.size,
                sha256=stored.sha256,
            )
        except ValidationError as exc:
            await self.attachments.delete(stored.key)
            raise ValidationError([(f"attachment.{field}", reason) for field, reason in exc.errors]) from None

    async def discard_attachments(self, refs: Iterable[AttachmentRef]) -> list[AttachmentRef]:
        """Delete attachments that no mail will refer to, such as those stored with
        :meth:`store_attachment` for a request that was then refused. Best effort: one that
        cannot be deleted is logged, and :meth:`sweep_attachments` removes it later.

        Returns:
            The references that could not be deleted (empty if all went).
        """
        kept: list[AttachmentRef] = []
        for ref in refs:
            try:
                await self.attachments.delete(ref.key)
            except MailQueueError as exc:
                logger.warning("could not delete attachment key=%s of a refused mail: %s", ref.key, exc)
                kept.append(ref)
        return kept

    async def open_attachment(self, ref: AttachmentRef) -> AsyncGenerator[bytes, None]:
        """Open a stored attachment (of a mail's ``attachments``) and return its bytes, chunk by chunk.

        The attachment is opened by this call, not by the first chunk, so that a
        caller learns that it is gone before it starts an answer. Read the
        chunks to the end, or close them (``aclose()``).

        Raises:
            AttachmentNotFoundError: the bytes are no longer stored (deleted after
                sending, or by retention).
            AttachmentError: the AttachmentStore failed.
        """
        chunks = self._read_attachment(ref.key)
        await anext(chunks)  # the opening marker; a missing attachment raises here
        return chunks

    async def has_attachment(self, ref: AttachmentRef) -> bool:
        """True if the bytes of an attachment (of a mail's ``attachments``) are still stored.

        Raises:
            AttachmentError: the AttachmentStore failed.
        """
        try:
            chunks = await self.open_attachment(ref)
        except AttachmentNotFoundError:
            return False
        await chunks.aclose()
        return True

    async def _read_attachment(self, key: str) -> AsyncGenerator[bytes, None]:
        """The AttachmentStore's chunks of ``key``, after a first ``b""`` that says it is open
        (its first chunk read): :meth:`open_attachment` takes that one, so the generator has
        started and closing it closes the store's reader too."""
        reader = self.attachments.read(key)
        chunks = aiter(reader)
        try:
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                first = b""
            yield b""
            if first:
                yield first
            async for chunk in chunks:
                yield chunk
        finally:
            close = getattr(reader, "aclose", None)
            if close is not None:
                await close()

    async def find_by_idempotency_key(self, key: str) -> MailRecord | None:
        """The record submitted with this idempotency key, if any."""
        found = await self.store.find(RecordQuery(idempotency_key=key, include_deleted=True, limit=1))
        return found[0] if found else None

    async def submit(
        self,
        mail: Mail,
        attachments: Sequence[Attachment] = (),
        *,
        idempotency_key: str | None = None,
    ) -> MailRecord:
        """Accept a mail: store its attachments, record it, queue it.

        Attachments already in ``mail.attachments`` (stored earlier with
        :meth:`store_attachment`) are kept; those in ``attachments`` are
        streamed in now. If the mail's idempotency key was seen before, the
        existing record is returned and nothing new is stored or sent.

        Returns:
            The Store's record (status ``queued`` for a new mail). Recipients on the
            suppression list are recorded too and left out when the mail is sent
            (:meth:`suppressed` tells which).

        Raises:
            ValidationError: bad input, or (with ``reject_suppressed``) a recipient is
                suppressed, naming its field (``to[0]``, ``cc[1]``, ...); nothing kept.
            AttachmentError: an attachment could not be stored; nothing kept.
            StoreError: the record could not be written; nothing kept.
            QueueError: the queue did not confirm. The record exists (``queued``)
                and will be re-published by the sweeper; tell the caller it failed.
        """
        with bind_mail_id(mail.id):
            return await self._submit(mail, attachments, idempotency_key)

    async def _submit(
        self, mail: Mail, attachments: Sequence[Attachment], idempotency_key: str | None
    ) -> MailRecord:
        key = idempotency_key or mail.idempotency_key
        if key is not None:
            existing = await self.find_by_idempotency_key(key)
            if existing is not None:
                return await self.ensure_queued(existing)
        if self.reject_suppressed:
            await self._refuse_suppressed(mail)
        stored: list[AttachmentRef] = []
        try:
            for attachment in attachments:
                stored.append(await self.store_attachment(attachment))
            if not stored and key == mail.idempotency_key:
                # nothing new from the caller: the (frozen) mail was validated when it was made
                if mail.message_id is None:
                    message_id = make_message_id(mail.id, self.message_id_domain)
                    mail = mail.model_copy(update={"message_id": message_id})
            else:
                update: dict[str, object] = {"attachments": mail.attachments + tuple(stored)}
                if key is not None:
                    update["idempotency_key"] = key
                if mail.message_id is None:
                    update["message_id"] = make_message_id(mail.id, self.message_id_domain)
                if len(update["attachments"]) > 100:  # type: ignore[arg-type]
                    raise ValidationError([("attachments", "at most 100 attachments are allowed")])
                # model_copy() would skip validation, and the key comes from the caller
                mail = Mail.parse(mail.model_dump() | update)
            # Marked unpublished until the queue confirms: should the answer to this
            # COMMIT be lost (the caller then sees an error), a repeat with the key
            # or the sweeper still publishes it.
            new = MailRecord.new(mail).evolve(last_error=NOT_YET_PUBLISHED)
            if self._adds is not None and key is None:
                # committed together with the records of concurrent submits (group commit)
                record = await self._adds.submit(new)
            else:
                record = await self.store.add(new)
        except BaseException:
            await self.discard_attachments(stored)
            raise
        if record.id != mail.id:
            # Another submit with the same idempotency key won the race.
            await self.discard_attachments(stored)
            return await self.ensure_queued(record)
        try:
            # In a task of its own: a confirmed publish waits several times (channel lock, write,
            # confirm), and each wake-up would otherwise resume the caller's whole stack (a web
            # framework's is deep); cancelling this submit cancels the task too.
            await asyncio.ensure_future(self.publish(mail))
        except QueueError as exc:
            await self._mark_unpublished(mail.id, exc)
            raise
        if self._clears is not None:
            # Recorded and confirmed: the answer need not wait for the mark to go; it is cleared
            # with those of concurrent submits. Should that fail, the sweeper publishes a second
            # copy, which workers drop.
            self._clears.submit(mail.id)
        else:
            try:
                await self.store.update(
                    mail.id, RecordUpdate(last_error="", expect=frozenset({Status.QUEUED}))
                )
            except BackendError as exc:
                # queued all the same; the sweeper may publish a second copy, which workers drop
                logger.warning("mail id=%s is queued but its mark could not be cleared: %s", mail.id, exc)
        metrics.MAILS_ACCEPTED.inc()
        return record.evolve(last_error="")

    async def suppressed(self, mail: Mail) -> dict[str, Suppression]:
        """The suppression list's entries for the mail's recipients (to, cc, bcc) that
        suppress now, by address as the mail gives it; empty if the list is off.

        Raises:
            StoreError: the store failed.
        """
        return await self.suppressions.check(r.address for r in mail.recipients)

    async def _refuse_suppressed(self, mail: Mail) -> None:
        found = await self.suppressed(mail)
        if not found:
            return
        errors = [
            (f"{kind}[{index}]", f"{r.address} is on the suppression list ({found[r.address].reason})")
            for kind, recipients in (("to", mail.to), ("cc", mail.cc), ("bcc", mail.bcc))
            for index, r in enumerate(recipients)
            if r.address in found
        ]
        raise ValidationError(errors)

    async def ensure_queued(self, record: MailRecord) -> MailRecord:
        """Publish again a record whose first publish was not confirmed.

        A submit repeated with the same idempotency key calls this, so that
        its success still means "recorded and durably queued". Records that
        were published (or have been tried by a worker) are returned as they are.

        Raises:
            QueueError: the queue did not confirm this time either.
        """
        return await self.maintenance.ensure_queued(record)

    async def sweep(self, *, older_than: float = 60.0, page: int = 500) -> int:
        """Publish again every mail whose publish was not confirmed.

        A submit that failed after the record was committed (the queue was
        down: the API answered 503, ``submit`` raised ``QueueError``) leaves the
        record ``queued`` and marked ``publish not confirmed``. This finds such
        records accepted at least ``older_than`` seconds ago (so that a submit
        still in progress is left alone), publishes each and clears the mark.
        Workers run it every ``worker.sweep_interval`` seconds; ``mailqueue
        sweep`` runs it once. Publishing a mark that was set although the
        message did reach the queue makes a second copy, which the worker
        drops through the Store.

        Returns:
            How many mails were published.

        Raises:
            QueueError: the queue still does not confirm (the rest wait for the next sweep).
            StoreError: the store cannot be read.
        """
        if self._clears is not None:
            await self._clears.drain()  # marks of mails this instance published are not swept
        return await self.maintenance.sweep(older_than=older_than, page=page)

    async def sweep_stale(
        self, *, older_than: float, action: Literal["unknown", "resend"] = "unknown", page: int = 500
    ) -> int:
        """Settle the mails left ``sending`` for at least ``older_than`` seconds.

        A worker that died mid-send leaves its mail ``sending``; if its
        delivery never comes back (a broker lost it, a lease ran out without
        redelivery), nothing else will move the mail. With ``action``
        ``unknown`` (DESIGN's rule: an SMTP outcome that is not known is not
        resent automatically) the mail becomes ``unknown`` and an ``unknown``
        attempt says why; ``resend`` publishes it again and makes it
        ``queued`` (it may then arrive twice). Each change is conditional on
        the record still being ``sending`` with the ``updated_at`` it was read
        with, so a worker that is still sending it, or took it up again, wins.
        Workers call this with twice ``worker.sending_lease``.

        Returns:
            How many mails were settled.

        Raises:
            QueueError: (``resend``) the queue did not confirm; the rest wait for the next sweep.
            StoreError: the store failed.
        """
        return await self.maintenance.sweep_stale(older_than=older_than, action=action, page=page)

    async def sweep_attachments(
        self,
        *,
        attachments_after: float | None,
        orphans_after: float | None,
        dry_run: bool = False,
        page: int = 500,
    ) -> AttachmentSweep:
        """Delete the attachments no mail needs any more.

        Those of mails finished (``sent``, ``failed``, ``dead``, ``unknown``)
        at least ``attachments_after`` seconds ago, and those no mail refers
        to (an upload whose request failed afterwards) stored at least
        ``orphans_after`` seconds ago; ``None`` turns either rule off. Only
        attachment stores that can list their keys
        (:class:`~mailqueue.protocols.ListableAttachmentStore`) are swept.

        Returns:
            What was removed (or, with ``dry_run``, would be).

        Raises:
            StoreError: the store failed.
            BackendError: the attachment store cannot be listed.
        """
        return await self.maintenance.sweep_attachments(
            attachments_after=attachments_after,
            orphans_after=orphans_after,
            dry_run=dry_run,
            page=page,
        )

    async def prune(
        self,
        *,
        older_than: float,
        hard: bool = False,
        statuses: Iterable[Status] | None = None,
        dry_run: bool = False,
        page: int = 500,
    ) -> int:
        """Soft-delete (``is_deleted``) or delete old finished records, a page at a time.

        Records in ``statuses`` (default: every finished state) created and
        last changed more than ``older_than`` seconds ago. Soft deletion hides
        them from :meth:`select`, ``resend`` and ``mailqueue status``; hard
        deletion removes the rows, their attempts and their attachments
        (soft-deleted records included), ``page`` records per transaction.
        ``queued``, ``sending`` and ``retrying`` mails are never pruned.

        Returns:
            How many records were pruned (or, with ``dry_run``, would be).

        Raises:
            ConfigurationError: an in-flight status was asked for, or (``hard``)
                the store cannot delete records.
            StoreError: the store failed.
        """
        return await self.maintenance.prune(
            older_than=older_than, hard=hard, statuses=statuses, dry_run=dry_run, page=page
        )

    async def apply_retention(self, settings: RetentionSettings) -> int:
        """One retention pass as configured: sweep attachments, then soft-delete
        old records if ``records_after`` is set. Workers run it every ``retention.interval``.

        Returns:
            How many attachments and records were removed.
        """
        return await self.maintenance.apply_retention(settings)

    async def _add_many(self, records: list[MailRecord]) -> list[MailRecord | Exception]:
        assert isinstance(self.store, BatchStore)
        try:
            added: list[MailRecord | Exception] = [*await self.store.add_many(records)]
        except StoreError:
            # one bad record (an id taken) must not fail the others: each on its own
            results = await asyncio.gather(*(self.store.add(r) for r in records), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException) and not isinstance(result, Exception):
                    raise result from None
            return [r for r in results if isinstance(r, MailRecord | Exception)]
        return added

    async def _clear_marks(self, mail_ids: list[str]) -> list[Exception | None]:
        assert isinstance(self.store, BatchStore)
        try:
            await self.store.clear_last_error(mail_ids, expected=NOT_YET_PUBLISHED)
        except BackendError as exc:
            # queued all the same; the sweeper may publish second copies, which workers drop
            logger.warning("%d queued mails keep their publish mark: %s", len(mail_ids), exc)
        return [None] * len(mail_ids)

    async def _mark_unpublished(self, mail_id: str, exc: QueueError) -> None:
        try:
            await self.store.update(
                mail_id,
                RecordUpdate(last_error=f"{PUBLISH_PENDING}: {exc}", expect=frozenset({Status.QUEUED})),
            )
        except BackendError:
            logger.error("mail id=%s: could not note that its publish was not confirmed", mail_id)

    async def publish(self, mail: Mail) -> None:
        """Put a recorded mail on the queue.

        Raises:
            QueueError: the queue did not confirm.
        """
        await publish(self.queue, mail)

    async def status(self, mail_id: str) -> MailRecord | None:
        """The record of a mail, with its attempt history, or ``None``."""
        return await self.store.get(mail_id)

    async def find(self, query: RecordQuery) -> list[MailRecord]:
        """One page of records: at most ``query.limit`` matching ``query``, in its
        order, without history (every match, page by page: :meth:`select`).

        Raises:
            StoreError: the store failed.
        """
        return await self.store.find(query)

    @property
    def can_count(self) -> bool:
        """True if the store can count records (:meth:`count`, :meth:`count_by_status`,
        :meth:`activity`), i.e. it is an :class:`~mailqueue.protocols.InspectableStore`."""
        return isinstance(self.store, InspectableStore)

    async def count(self, query: RecordQuery, *, cap: int = 10_000) -> int | None:
        """How many records match ``query`` (its ``limit``, ``order`` and cursors
        ignored), counting no further than ``cap``; ``None`` if the store cannot count.

        Raises:
            StoreError: the store failed.
        """
        if not isinstance(self.store, InspectableStore):
            return None
        return await self.store.count(query, cap=cap)

    async def count_by_status(self) -> dict[Status, int] | None:
        """How many mails are in each status (every status a key, in :class:`Status`
        order, deleted ones left out); ``None`` if the store cannot count.

        Raises:
            StoreError: the store failed.
        """
        if not isinstance(self.store, InspectableStore):
            return None
        counts = await self.store.count_by_status()
        return {status: counts.get(status, 0) for status in Status}

    async def activity(self, *, since: datetime, bucket: timedelta) -> list[ActivityBucket] | None:
        """Mails accepted, sent and failed per ``bucket`` from ``since`` on (see
        :meth:`InspectableStore.activity <mailqueue.protocols.InspectableStore.activity>`);
        ``None`` if the store cannot count.

        Raises:
            ValueError: a bad ``bucket``, or too many buckets.
            StoreError: the store failed.
        """
        if not isinstance(self.store, InspectableStore):
            return None
        return await self.store.activity(since=since, bucket=bucket)

    async def delete(self, mail_id: str) -> bool:
        """Mark a mail deleted (``is_deleted``), whatever its status.

        A deleted mail is hidden from :meth:`select`, ``resend`` and ``mailqueue
        status``; its record and attachments stay until ``mailqueue prune --hard``
        or retention removes them.

        Returns:
            ``False`` if there is no mail with this id.

        Raises:
            StoreError: the store failed.
        """
        return await self.store.update(mail_id, RecordUpdate(is_deleted=True))

    async def select(
        self,
        *,
        ids: Sequence[str] | None = None,
        statuses: Iterable[Status] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        recipient: str | None = None,
        subject: str | None = None,
        code: int | None = None,
        page_size: int = 500,
    ) -> AsyncIterator[MailRecord]:
        """Every record matching the criteria, newest first, read page by page.

        The criteria are those of :class:`~mailqueue.records.RecordQuery`:
        ``recipient`` and ``subject`` are case-insensitive substrings of a
        recipient address and of the subject, ``code`` the last SMTP reply code.
        """
        query = RecordQuery(
            ids=tuple(ids) if ids is not None else None,
            statuses=frozenset(statuses) if statuses is not None else None,
            since=since,
            until=until,
            recipient=recipient,
            subject=subject,
            code=code,
            limit=page_size,
        )
        async for record in iter_records(self.store, query):
            yield record

    async def resend(
        self,
        *,
        ids: Sequence[str] | None = None,
        statuses: Iterable[Status] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        recipient: str | None = None,
        subject: str | None = None,
        code: int | None = None,
        dry_run: bool = False,
        progress: Callable[[MailRecord], None] | None = None,
    ) -> list[MailRecord]:
        """Queue mails again, keeping their Message-ID.

        Without ``ids``, picks ``failed`` and ``dead`` mails (or ``statuses``);
        every other criterion (see :meth:`select`) narrows the choice further.
        Recipients already delivered are not sent again, except for a mail
        that is ``sent`` as a whole and was asked for explicitly (by id or
        status): then every recipient gets it again.

        Returns:
            The records selected (with ``dry_run``, nothing is changed).
        """
        chosen = frozenset(statuses) if statuses is not None else (None if ids else frozenset(RESEND_DEFAULT))
        selected: list[MailRecord] = []
        async for record in self.select(
            ids=ids,
            statuses=chosen,
            since=since,
            until=until,
            recipient=recipient,
            subject=subject,
            code=code,
        ):
            if record.is_deleted:
                continue
            selected.append(record)
            if not dry_run:
                await self._requeue(record)
            if progress is not None:
                progress(record)
        return selected

    async def _requeue(self, record: MailRecord) -> None:
        if record.status is Status.SENT:
            recipients = tuple(RecipientOutcome(r.address) for r in record.recipients)
        else:
            recipients = tuple(
                r if r.state is RecipientState.SENT else RecipientOutcome(r.address)
                for r in record.recipients
            )
        mail, message_id = record.mail, None
        if mail.message_id is None:
            # A row adopted from the original service's table has none: made now, kept in the
            # Store with the change, and the same on every later attempt.
            message_id = make_message_id(mail.id, self.message_id_domain)
            mail = mail.model_copy(update={"message_id": message_id})
        changed = await self.store.update(
            record.id,
            RecordUpdate(
                status=Status.QUEUED,
                recipients=recipients,
                next_attempt_at=None,
                message_id=message_id,
                expect=frozenset({record.status}),
            ),
        )
        if not changed:
            raise StoreError(f"mail {record.id} changed while being re-sent; nothing was queued for it")
        await self.publish(mail)


def _domain_from_sender(settings: Settings) -> str:
    from urllib.parse import parse_qs, urlsplit

    query = parse_qs(urlsplit(settings.sender.get_secret_value()).query)
    address = (query.get("from") or [""])[0]
    _, _, domain = address.rpartition("@")
    return domain or "mailqueue.local"
