"""Recovery and retention: mails stuck ``sending``, old attachments, old records.

The functions take an open :class:`~mailqueue.client.MailQueue`; use them
through its methods (:meth:`~mailqueue.client.MailQueue.sweep_stale`,
:meth:`~mailqueue.client.MailQueue.sweep_attachments`,
:meth:`~mailqueue.client.MailQueue.prune`). Workers run them from their
sweep loop, ``mailqueue sweep --stale`` and ``mailqueue prune`` from the
command line. Every change is a compare-and-set on the record, so a worker
that is really still busy with a mail always wins the race.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal

from mailqueue.errors import AttachmentError, BackendError, ConfigurationError
from mailqueue.protocols import ListableAttachmentStore, PrunableStore, PurgeableAttachmentStore
from mailqueue.records import (
    FINISHED,
    IN_FLIGHT,
    Attempt,
    MailRecord,
    RecordQuery,
    RecordUpdate,
    Status,
    iter_pages,
    utcnow,
)

if TYPE_CHECKING:
    from mailqueue.client import MailQueue

__all__ = [
    "FINISHED",
    "IN_FLIGHT",
    "AttachmentSweep",
    "prune",
    "sweep_attachments",
    "sweep_stale",
]

logger = logging.getLogger("mailqueue.retention")

#: Records created this long before the oldest stored attachment are still
#: read when looking for references to it (clocks of API hosts may differ).
CLOCK_SLACK: Final = timedelta(hours=1)


async def _chain(*sources: AsyncIterator[list[MailRecord]]) -> AsyncIterator[list[MailRecord]]:
    for source in sources:
        async for records in source:
            yield records


async def sweep_stale(
    mq: MailQueue, *, older_than: float, action: Literal["unknown", "resend"], page: int = 500
) -> int:
    """Settle mails left ``sending`` for ``older_than`` seconds (see :meth:`MailQueue.sweep_stale`)."""
    if action not in ("unknown", "resend"):
        raise ConfigurationError(f"stale sending action must be 'unknown' or 'resend', not {action!r}")
    cutoff = utcnow() - timedelta(seconds=older_than)
    query = RecordQuery(statuses=frozenset({Status.SENDING}), include_deleted=True, limit=page)
    settled = 0
    async for records in iter_pages(mq.store, query):
        for record in records:
            if record.updated_at < cutoff and await _settle_stale(mq, record, action):
                settled += 1
    return settled


async def _settle_stale(mq: MailQueue, record: MailRecord, action: Literal["unknown", "resend"]) -> bool:
    now = utcnow()
    held = (now - record.updated_at).total_seconds()
    why = f"sending for {held:.0f} s without an outcome; its worker is presumed dead"
    attempt = Attempt(record.attempts + 1, record.updated_at, now, "unknown", None, why)
    # Only if nobody touched the record since it was read: a worker that is
    # still sending (or claimed it again) changed ``updated_at``.
    sending = frozenset({Status.SENDING})
    if action == "unknown":
        error = f"{why}: maybe delivered, not sent again automatically (mailqueue resend --status unknown)"
        change = RecordUpdate(
            status=Status.UNKNOWN,
            attempt=attempt,
            last_error=error,
            expect=sending,
            expect_updated_at=record.updated_at,
        )
        if not await mq.store.update(record.id, change):
            return False
        logger.warning("mail id=%s: %s; marked unknown", record.id, why)
        return True
    # Publish first: if the publish fails, nothing changed; if the record is
    # changed by someone else meanwhile, the worker's dedup drops this copy.
    await mq.publish(record.mail)
    change = RecordUpdate(
        status=Status.QUEUED,
        attempt=attempt,
        last_error=f"{why}; queued again",
        expect=sending,
        expect_updated_at=record.updated_at,
    )
    if not await mq.store.update(record.id, change):
        return False
    logger.warning("mail id=%s: %s; queued again (it may arrive twice)", record.id, why)
    return True


@dataclasses.dataclass(frozen=True, slots=True)
class AttachmentSweep:
    """What :func:`sweep_attachments` removed (or, with ``dry_run``, would remove).

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


async def sweep_attachments(
    mq: MailQueue,
    *,
    attachments_after: float | None,
    orphans_after: float | None,
    dry_run: bool = False,
    page: int = 500,
) -> AttachmentSweep:
    """Delete old attachments of finished mails and orphaned uploads.

    See :meth:`MailQueue.sweep_attachments`.
    """
    store = mq.attachments
    incomplete = 0
    if orphans_after is not None and not dry_run and isinstance(store, PurgeableAttachmentStore):
        try:
            incomplete = await store.purge_incomplete(older_than=orphans_after)
        except (AttachmentError, BackendError) as exc:
            logger.warning("could not remove unfinished uploads (%s); trying again next time", exc)
        if incomplete:
            logger.info("attachments swept: %d unfinished upload(s)", incomplete)
    if not isinstance(store, ListableAttachmentStore):
        logger.info("the attachment store %s cannot list its keys; attachments are not swept", type(store))
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
    finished_cutoff = now - timedelta(seconds=attachments_after) if attachments_after is not None else None
    needed: set[str] = set()
    expired: set[str] = set()
    # Mails still in flight are read whatever their age (there are few), the others
    # from the oldest candidate on; a mail seen twice is judged the same way twice.
    in_flight = RecordQuery(statuses=IN_FLIGHT, include_deleted=True, limit=page)
    recent = RecordQuery(since=since, include_deleted=True, limit=page)
    async for records in _chain(iter_pages(mq.store, in_flight), iter_pages(mq.store, recent)):
        for record in records:
            keys = [ref.key for ref in record.mail.attachments if ref.key in candidates]
            if not keys:
                continue
            done = (
                finished_cutoff is not None
                and record.status in FINISHED
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
                logger.warning("could not delete attachment key=%s (%s); trying again next time", key, exc)
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


def _prunable(statuses: Iterable[Status] | None) -> frozenset[Status]:
    chosen = FINISHED if statuses is None else frozenset(statuses)
    refused = chosen & IN_FLIGHT
    if refused:
        names = ", ".join(sorted(s.value for s in refused))
        raise ConfigurationError(f"mails in flight ({names}) are never pruned")
    return chosen


async def prune(
    mq: MailQueue,
    *,
    older_than: float,
    hard: bool = False,
    statuses: Iterable[Status] | None = None,
    dry_run: bool = False,
    page: int = 500,
) -> int:
    """Soft- or hard-delete old finished records (see :meth:`MailQueue.prune`)."""
    chosen = _prunable(statuses)
    if hard and not isinstance(mq.store, PrunableStore):
        raise ConfigurationError(f"the store {type(mq.store).__name__} cannot delete records (prune --hard)")
    cutoff = utcnow() - timedelta(seconds=older_than)
    query = RecordQuery(statuses=chosen, until=cutoff, include_deleted=hard, limit=page)
    count = 0
    async for records in iter_pages(mq.store, query):
        # soft deletion stamps ``updated_at``: a deleted record is judged by its creation alone
        old = [r for r in records if (hard and r.is_deleted) or (r.updated_at < cutoff and not r.is_deleted)]
        if dry_run:
            count += len(old)
        elif hard:
            count += await _delete(mq, old, chosen)
        elif isinstance(mq.store, PrunableStore):
            count += len(await mq.store.delete_records([r.id for r in old], statuses=chosen, soft=True))
        else:
            for record in old:
                change = RecordUpdate(is_deleted=True, expect=frozenset({record.status}))
                if await mq.store.update(record.id, change):
                    count += 1
    if count:
        logger.info(
            "%s %d record(s) older than %s",
            "would prune" if dry_run else ("deleted" if hard else "soft-deleted"),
            count,
            _stamp(cutoff),
        )
    return count


async def _delete(mq: MailQueue, records: list[MailRecord], statuses: frozenset[Status]) -> int:
    if not records:
        return 0
    store = mq.store
    assert isinstance(store, PrunableStore)
    deleted = set(await store.delete_records([r.id for r in records], statuses=statuses))
    for record in records:
        if record.id not in deleted:
            continue
        for ref in record.mail.attachments:
            try:
                await mq.attachments.delete(ref.key)
            except (AttachmentError, BackendError) as exc:
                # left as an orphan: the attachment sweep removes it later
                logger.warning("could not delete attachment key=%s of a pruned mail (%s)", ref.key, exc)
    return len(deleted)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
