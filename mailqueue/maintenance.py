"""Housekeeping on the Store, the Queue and the AttachmentStore.

:class:`Maintenance` publishes again the mails whose publish was not
confirmed (:meth:`~Maintenance.sweep`), settles mails a dead worker left
``sending`` (:meth:`~Maintenance.sweep_stale`), deletes attachments no mail
needs any more (:meth:`~Maintenance.sweep_attachments`) and retires old
finished records (:meth:`~Maintenance.prune`)::

    maintenance = Maintenance(store, queue, attachments)  # opened backends
    await maintenance.sweep(older_than=60)
    await maintenance.apply_retention(settings.retention)

Workers run it from their sweep loop, ``mailqueue sweep`` and ``mailqueue
prune`` from the command line, and :class:`~mailqueue.client.MailQueue`
delegates its methods of the same names to it. Every change is a
compare-and-set on the record, so a worker that is really still busy with a
mail always wins the race.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterable
from datetime import datetime, timedelta
from typing import Final, Literal

from mailqueue import metrics
from mailqueue.envelope import encode_envelope
from mailqueue.errors import AttachmentError, BackendError, ConfigurationError, QueueError
from mailqueue.message import Mail
from mailqueue.protocols import (
    AttachmentStore,
    ListableAttachmentStore,
    PrunableStore,
    PurgeableAttachmentStore,
    Queue,
    Store,
)
from mailqueue.records import (
    FINISHED,
    IN_FLIGHT,
    Attempt,
    MailRecord,
    RecordQuery,
    RecordUpdate,
    Status,
    iter_pages,
    iter_records,
    utcnow,
)
from mailqueue.settings import RetentionSettings, WorkerSettings

__all__ = [
    "CLOCK_SLACK",
    "NOT_YET_PUBLISHED",
    "PUBLISH_PENDING",
    "SUBMIT_GRACE",
    "AttachmentSweep",
    "Maintenance",
    "Sweeper",
    "publish",
]

logger = logging.getLogger("mailqueue.maintenance")

#: ``last_error`` of a record whose first publish was not confirmed.
PUBLISH_PENDING: Final = "publish not confirmed"
#: ``last_error`` of a record its submit is still publishing (or died publishing).
NOT_YET_PUBLISHED: Final = f"{PUBLISH_PENDING}: not yet"
#: Seconds a repeated submit waits for the first one to publish its record before publishing it itself.
SUBMIT_GRACE: Final = 3.0
#: Records created this long before the oldest stored attachment are still
#: read when looking for references to it (clocks of API hosts may differ).
CLOCK_SLACK: Final = timedelta(hours=1)


async def publish(queue: Queue, mail: Mail) -> None:
    """Put a recorded mail on the queue.

    Raises:
        QueueError: the queue did not confirm.
    """
    try:
        await queue.publish(mail.id, encode_envelope(mail))
    except QueueError:
        raise
    except BackendError as exc:
        raise QueueError(str(exc)) from exc


@dataclasses.dataclass(frozen=True, slots=True)
class AttachmentSweep:
    """What :meth:`Maintenance.sweep_attachments` removed (or, with ``dry_run``, would remove).

    Attributes:
        finished: attachments of mails finished ``attachments_after`` ago.
        orphans: attachments no mail refers to, ``orphans_after`` old.
        kept: attachments old enough to be looked at but still needed.
        incomplete: unfinished uploads a crash left, ``orphans_after`` old
            (:class:`~mailqueue.protocols.PurgeableAttachmentStore`; not
            counted by a dry run).
        supported: ``False`` if the attachment store cannot list its keys
            (nothing was swept).
    """

    finished: int = 0
    orphans: int = 0
    kept: int = 0
    supported: bool = True
    incomplete: int = 0


class Maintenance:
    """Sweeps and retention over opened backends (it opens and closes nothing).

    Args:
        store: the record of every mail.
        queue: where mails are published again.
        attachments: where attachment bytes are kept.
    """

    def __init__(self, store: Store, queue: Queue, attachments: AttachmentStore) -> None:
        self.store = store
        self.queue = queue
        self.attachments = attachments

    # --- unconfirmed publishes -------------------------------------------------------------

    async def ensure_queued(self, record: MailRecord) -> MailRecord:
        """Publish again a record whose first publish was not confirmed.

        A record still marked by the submit that made it is waited for (that
        submit is publishing right now) for up to :data:`SUBMIT_GRACE`
        seconds after its creation. Records that were published (or have been
        tried by a worker) are returned as they are.

        Returns:
            The record, its mark cleared if it was published now.

        Raises:
            QueueError: the queue did not confirm this time either.
            StoreError: the store failed.
        """
        if record.last_error == NOT_YET_PUBLISHED:
            record = await self._wait_for_submit(record)
        if not (
            record.status is Status.QUEUED
            and record.attempts == 0
            and record.last_error.startswith(PUBLISH_PENDING)
        ):
            return record
        await publish(self.queue, record.mail)
        await self.store.update(record.id, RecordUpdate(last_error="", expect=frozenset({Status.QUEUED})))
        return record.evolve(last_error="")

    async def _wait_for_submit(self, record: MailRecord) -> MailRecord:
        """A record still marked by the submit that made it: that submit is
        publishing right now (wait for it), or it died not knowing its record
        was committed (publish it once :data:`SUBMIT_GRACE` has passed)."""
        deadline = record.created_at + timedelta(seconds=SUBMIT_GRACE)
        while record.last_error == NOT_YET_PUBLISHED and utcnow() < deadline:
            await asyncio.sleep(0.05)
            fresh = await self.store.get(record.id)
            if fresh is None:
                break
            record = fresh
        return record

    async def sweep(self, *, older_than: float = 60.0, page: int = 500) -> int:
        """Publish again every mail whose publish was not confirmed.

        See :meth:`MailQueue.sweep <mailqueue.client.MailQueue.sweep>`.

        Returns:
            How many mails were published.

        Raises:
            QueueError: the queue still does not confirm (the rest wait for the next sweep).
            StoreError: the store cannot be read.
        """
        until = utcnow() - timedelta(seconds=older_than)
        query = RecordQuery(statuses=frozenset({Status.QUEUED}), until=until, limit=page)
        published = 0
        async for record in iter_records(self.store, query):
            if record.attempts == 0 and record.last_error.startswith(PUBLISH_PENDING):
                await self.ensure_queued(record)
                published += 1
                logger.info("mail id=%s published again by the sweeper", record.id)
        return published

    # --- mails stuck sending ---------------------------------------------------------------

    async def sweep_stale(
        self, *, older_than: float, action: Literal["unknown", "resend"] = "unknown", page: int = 500
    ) -> int:
        """Settle the mails left ``sending`` for at least ``older_than`` seconds.

        See :meth:`MailQueue.sweep_stale <mailqueue.client.MailQueue.sweep_stale>`.

        Returns:
            How many mails were settled.

        Raises:
            ConfigurationError: ``action`` is neither ``unknown`` nor ``resend``.
            QueueError: (``resend``) the queue did not confirm; the rest wait for the next sweep.
            StoreError: the store failed.
        """
        if action not in ("unknown", "resend"):
            raise ConfigurationError(f"stale sending action must be 'unknown' or 'resend', not {action!r}")
        cutoff = utcnow() - timedelta(seconds=older_than)
        query = RecordQuery(statuses=frozenset({Status.SENDING}), include_deleted=True, limit=page)
        settled = 0
        async for record in iter_records(self.store, query):
            if record.updated_at < cutoff and await self.settle_stale(record, action):
                settled += 1
        return settled

    async def settle_stale(self, record: MailRecord, action: Literal["unknown", "resend"]) -> bool:
        """Settle one mail read ``sending``: mark it ``unknown``, or publish it and make it ``queued``.

        The change is made only if nobody touched the record since it was
        read (same status and ``updated_at``): a worker that is still sending
        it, or claimed it again, wins.

        Returns:
            Whether the record was changed.

        Raises:
            QueueError: (``resend``) the queue did not confirm; nothing changed.
            StoreError: the store failed.
        """
        now = utcnow()
        held = (now - record.updated_at).total_seconds()
        why = f"sending for {held:.0f} s without an outcome; its worker is presumed dead"
        attempt = Attempt(record.attempts + 1, record.updated_at, now, "unknown", None, why)
        sending = frozenset({Status.SENDING})
        if action == "unknown":
            error = (
                f"{why}: maybe delivered, not sent again automatically (mailqueue resend --status unknown)"
            )
            change = RecordUpdate(
                status=Status.UNKNOWN,
                attempt=attempt,
                last_error=error,
                expect=sending,
                expect_updated_at=record.updated_at,
            )
            if not await self.store.update(record.id, change):
                return False
            logger.warning("mail id=%s: %s; marked unknown", record.id, why)
            return True
        # Publish first: if the publish fails, nothing changed; if the record is
        # changed by someone else meanwhile, the worker's dedup drops this copy.
        await publish(self.queue, record.mail)
        change = RecordUpdate(
            status=Status.QUEUED,
            attempt=attempt,
            last_error=f"{why}; queued again",
            expect=sending,
            expect_updated_at=record.updated_at,
        )
        if not await self.store.update(record.id, change):
            return False
        logger.warning("mail id=%s: %s; queued again (it may arrive twice)", record.id, why)
        return True

    # --- retention -------------------------------------------------------------------------

    async def sweep_attachments(
        self,
        *,
        attachments_after: float | None,
        orphans_after: float | None,
        dry_run: bool = False,
        page: int = 500,
    ) -> AttachmentSweep:
        """Delete old attachments of finished mails and orphaned uploads.

        See :meth:`MailQueue.sweep_attachments <mailqueue.client.MailQueue.sweep_attachments>`.

        Returns:
            What was removed (or, with ``dry_run``, would be).

        Raises:
            StoreError: the store failed.
            BackendError: the attachment store cannot be listed.
        """
        store = self.attachments
        incomplete = 0
        if orphans_after is not None and not dry_run and isinstance(store, PurgeableAttachmentStore):
            try:
                incomplete = await store.purge_incomplete(older_than=orphans_after)
            except (AttachmentError, BackendError) as exc:
                logger.warning("could not remove unfinished uploads (%s); trying again next time", exc)
            if incomplete:
                logger.info("attachments swept: %d unfinished upload(s)", incomplete)
        if not isinstance(store, ListableAttachmentStore):
            logger.info(
                "the attachment store %s cannot list its keys; attachments are not swept", type(store)
            )
            return AttachmentSweep(supported=False, incomplete=incomplete)
        ages = [age for age in (attachments_after, orphans_after) if age is not None]
        if not ages:
            return AttachmentSweep(incomplete=incomplete)
        now = utcnow()
        candidates = {key: at async for key, at in store.list_keys(before=now - timedelta(seconds=min(ages)))}
        if not candidates:
            return AttachmentSweep(incomplete=incomplete)
        # A record refers only to attachments stored before it was created.
        since = min(candidates.values()) - CLOCK_SLACK
        finished_cutoff = (
            now - timedelta(seconds=attachments_after) if attachments_after is not None else None
        )
        needed: set[str] = set()
        expired: set[str] = set()
        # Mails still in flight are read whatever their age (there are few), the others
        # from the oldest candidate on; a mail seen twice is judged the same way twice.
        in_flight = RecordQuery(statuses=IN_FLIGHT, include_deleted=True, limit=page)
        recent = RecordQuery(since=since, include_deleted=True, limit=page)
        async for records in _chain(iter_pages(self.store, in_flight), iter_pages(self.store, recent)):
            for record in records:
                keys = [ref.key for ref in record.mail.attachments if ref.key in candidates]
                if not keys:
                    continue
                done = (
                    finished_cutoff is not None
                    and record.status.final
                    and record.updated_at < finished_cutoff
                )
                (expired if done else needed).update(keys)
        expired -= needed
        orphan_cutoff = now - timedelta(seconds=orphans_after) if orphans_after is not None else None
        orphans = {
            key
            for key, stored_at in candidates.items()
            if key not in needed
            and key not in expired
            and orphan_cutoff is not None
            and stored_at < orphan_cutoff
        }
        if not dry_run:
            for key in sorted(expired | orphans):
                try:
                    await store.delete(key)
                except (AttachmentError, BackendError) as exc:
                    logger.warning(
                        "could not delete attachment key=%s (%s); trying again next time", key, exc
                    )
                    expired.discard(key)
                    orphans.discard(key)
        result = AttachmentSweep(
            finished=len(expired), orphans=len(orphans), kept=len(needed), incomplete=incomplete
        )
        if result.finished or result.orphans:
            logger.info(
                "attachments %s: %d of finished mails, %d orphaned",
                "to sweep" if dry_run else "swept",
                result.finished,
                result.orphans,
            )
        return result

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

        See :meth:`MailQueue.prune <mailqueue.client.MailQueue.prune>`.

        Returns:
            How many records were pruned (or, with ``dry_run``, would be).

        Raises:
            ConfigurationError: an in-flight status was asked for, or (``hard``)
                the store cannot delete records.
            StoreError: the store failed.
        """
        chosen = _prunable(statuses)
        if hard and not isinstance(self.store, PrunableStore):
            raise ConfigurationError(
                f"the store {type(self.store).__name__} cannot delete records (prune --hard)"
            )
        cutoff = utcnow() - timedelta(seconds=older_than)
        query = RecordQuery(statuses=chosen, until=cutoff, include_deleted=hard, limit=page)
        count = 0
        async for records in iter_pages(self.store, query):
            # soft deletion stamps ``updated_at``: a deleted record is judged by its creation alone
            old = [
                r for r in records if (hard and r.is_deleted) or (r.updated_at < cutoff and not r.is_deleted)
            ]
            if dry_run:
                count += len(old)
            elif hard:
                count += await self._delete(old, chosen)
            elif isinstance(self.store, PrunableStore):
                count += len(await self.store.delete_records([r.id for r in old], statuses=chosen, soft=True))
            else:
                for record in old:
                    change = RecordUpdate(is_deleted=True, expect=frozenset({record.status}))
                    if await self.store.update(record.id, change):
                        count += 1
        if count:
            logger.info(
                "%s %d record(s) older than %s",
                "would prune" if dry_run else ("deleted" if hard else "soft-deleted"),
                count,
                _stamp(cutoff),
            )
        return count

    async def _delete(self, records: list[MailRecord], statuses: frozenset[Status]) -> int:
        if not records:
            return 0
        store = self.store
        assert isinstance(store, PrunableStore)
        deleted = set(await store.delete_records([r.id for r in records], statuses=statuses))
        for record in records:
            if record.id not in deleted:
                continue
            for ref in record.mail.attachments:
                try:
                    await self.attachments.delete(ref.key)
                except (AttachmentError, BackendError) as exc:
                    # left as an orphan: the attachment sweep removes it later
                    logger.warning("could not delete attachment key=%s of a pruned mail (%s)", ref.key, exc)
        return len(deleted)

    async def apply_retention(self, settings: RetentionSettings) -> int:
        """One retention pass as configured: sweep attachments, then soft-delete
        old records if ``records_after`` is set. Workers run it every ``retention.interval``.

        Returns:
            How many attachments and records were removed.

        Raises:
            StoreError: the store failed.
            BackendError: the attachment store cannot be listed.
        """
        swept = await self.sweep_attachments(
            attachments_after=settings.attachments_after, orphans_after=settings.orphans_after
        )
        pruned = 0
        if settings.records_after is not None:
            pruned = await self.prune(older_than=settings.records_after)
        return swept.finished + swept.orphans + swept.incomplete + pruned


async def _chain(*sources: AsyncIterator[list[MailRecord]]) -> AsyncIterator[list[MailRecord]]:
    for source in sources:
        async for records in source:
            yield records


def _prunable(statuses: Iterable[Status] | None) -> frozenset[Status]:
    chosen = FINISHED if statuses is None else frozenset(statuses)
    refused = chosen & IN_FLIGHT
    if refused:
        names = ", ".join(sorted(s.value for s in refused))
        raise ConfigurationError(f"mails in flight ({names}) are never pruned")
    return chosen


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


#: A worker's sweeps log as the worker (operators read them among its lines).
_worker_logger = logging.getLogger("mailqueue.worker")


class Sweeper:
    """A worker's periodic maintenance (:meth:`run`, one task of the worker): every
    ``sweep_interval`` seconds publish again the mails whose publish was not confirmed
    (:meth:`Maintenance.sweep`), then settle mails stuck ``sending``
    (:meth:`Maintenance.sweep_stale`) and, every ``retention.interval``, apply the
    retention rules (:meth:`Maintenance.apply_retention`). Failures are logged, never raised,
    and tried again at the next sweep; what was done is added to ``counts`` (``swept``,
    ``stale``).
    """

    def __init__(
        self,
        maintenance: Maintenance,
        settings: WorkerSettings,
        retention: RetentionSettings | None,
        counts: Counter[str],
    ) -> None:
        self.maintenance = maintenance
        self.settings = settings
        self.retention = retention
        self.counts = counts
        self._retained_at: float | None = None
        self._swept_since: float | None = None

    async def run(self) -> None:
        """Sweep every ``sweep_interval`` seconds (never, if it is 0)."""
        interval = self.settings.sweep_interval
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))  # workers spread out
            try:
                published = await self.maintenance.sweep(older_than=self.settings.sweep_after)
            except BackendError as exc:
                _worker_logger.warning("sweeping for unpublished mail failed (%s); trying again later", exc)
                continue
            self.counts["swept"] += published
            metrics.SWEPT.inc(published)
            if published:
                _worker_logger.warning(
                    "the sweeper published %d mail(s) whose publish was not confirmed", published
                )
            await self._recover_and_retain()

    async def _recover_and_retain(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._swept_since is None:
            self._swept_since = now - self.settings.sweep_interval
        stale_after = 2 * self.settings.sending_lease
        # Only once this worker has run that long itself: after an outage of every
        # worker, deliveries handed back now get their chance before a verdict.
        if self.settings.stale_sending != "off" and now - self._swept_since >= stale_after:
            stale = self.maintenance.sweep_stale(older_than=stale_after, action=self.settings.stale_sending)
            self.counts["stale"] += await _sweep_step("stale sending", stale)
        keep = self.retention
        if (
            keep
            and keep.interval > 0
            and (self._retained_at is None or now - self._retained_at >= keep.interval)
        ):
            self._retained_at = now
            await _sweep_step("retention", self.maintenance.apply_retention(keep))


async def _sweep_step(what: str, step: Awaitable[int]) -> int:
    """Run one sweep; log (never raise) a failure, which the next sweep tries again."""
    try:
        done = await step
    except BackendError as exc:
        _worker_logger.warning("sweep (%s) failed (%s); trying again later", what, exc)
        return 0
    except Exception:
        _worker_logger.exception("sweep (%s) failed unexpectedly; trying again later", what)
        return 0
    if done:
        _worker_logger.warning("sweep (%s) handled %d mail(s)", what, done)
    return done
