"""The optional ``InspectableStore`` capability: counts and activity buckets.

Each test skips when the store does not have it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from mailqueue.message import Recipient
from mailqueue.protocols import Store
from mailqueue.records import RecordQuery, RecordUpdate, Status, utcnow
from mailqueue.testing.store.data import add_records, as_inspectable, make_record, refused_outcome

__all__ = ["InspectionConformance"]


class InspectionConformance:
    """``count``, ``count_by_status`` and ``activity``, when the store can count."""

    # --- InspectableStore (optional) --------------------------------------------------

    async def test_count_by_status_has_every_status(self, store: Store) -> None:
        inspectable = as_inspectable(store)
        assert await inspectable.count_by_status() == dict.fromkeys(Status, 0)
        records = await add_records(store, 6)
        for record, status in zip(
            records, (Status.SENT, Status.SENT, Status.FAILED, Status.DEAD), strict=False
        ):
            assert await store.update(record.id, RecordUpdate(status=status))
        assert await store.update(records[1].id, RecordUpdate(is_deleted=True))
        counts = await inspectable.count_by_status()
        assert set(counts) == set(Status)
        expected = dict.fromkeys(Status, 0) | {
            Status.SENT: 1,
            Status.FAILED: 1,
            Status.DEAD: 1,
            Status.QUEUED: 2,
        }
        assert counts == expected
        assert await inspectable.count_by_status(include_deleted=True) == expected | {Status.SENT: 2}

    async def test_count_matches_find_and_stops_at_cap(self, store: Store) -> None:
        inspectable = as_inspectable(store)
        records = await add_records(store, 7, subject="Report")
        await add_records(store, 2, subject="Other")
        for record in records[:5]:
            assert await store.update(record.id, RecordUpdate(status=Status.FAILED, last_code=550))
        ids = sorted(r.id for r in records)
        failed = RecordQuery(statuses=frozenset({Status.FAILED}), limit=1, before_id=ids[0], after_id=ids[-1])
        assert await inspectable.count(failed) == 5
        assert await inspectable.count(failed, cap=3) == 3
        assert await inspectable.count(RecordQuery(subject="report", code=550)) == 5
        assert await inspectable.count(RecordQuery(subject="report")) == 7
        assert await inspectable.count(RecordQuery()) == 9
        assert await inspectable.count(RecordQuery(code=421)) == 0
        assert await inspectable.count(RecordQuery(), cap=0) == 0

    async def test_count_by_recipient_ignores_reply_texts(self, store: Store) -> None:
        inspectable = as_inspectable(store)
        for _ in range(3):
            noise = make_record(to=(Recipient(address="x@example.com"),))
            await store.add(noise.evolve(recipients=(refused_outcome("x@example.com", "mailbox full"),)))
        await add_records(store, 4, to=(Recipient(address="full.name@example.com"),))
        assert await inspectable.count(RecordQuery(recipient="FULL")) == 4
        assert await inspectable.count(RecordQuery(recipient="full"), cap=2) == 2
        assert await inspectable.count(RecordQuery(recipient="mailbox")) == 0

    async def test_activity_buckets(self, store: Store) -> None:
        inspectable = as_inspectable(store)
        minute = timedelta(minutes=1)
        now = utcnow()
        base = now.replace(second=0, microsecond=0) - 5 * minute
        later = base + 2 * minute

        async def add(status: Status, created: datetime, **times: datetime) -> None:
            changes = {"updated_at": created, **times}
            record = make_record().evolve(status=status, created_at=created, **changes)
            await store.add(record)

        await add(Status.SENT, base + timedelta(seconds=5), sent_at=base + timedelta(seconds=65))
        await add(Status.SENT, base + timedelta(seconds=59), sent_at=later + timedelta(seconds=1))
        await add(Status.FAILED, base + timedelta(seconds=10), updated_at=later + timedelta(seconds=30))
        await add(Status.DEAD, base - 30 * minute, updated_at=later)
        await add(Status.RETRYING, later, updated_at=later + timedelta(seconds=3))
        await add(Status.SENT, base - 30 * minute, sent_at=base - 20 * minute)
        # sent, then bounced: counted when it was sent and when the bounce came back
        await add(Status.BOUNCED, base - 30 * minute, sent_at=base - 20 * minute, updated_at=later)
        deleted = make_record().evolve(status=Status.QUEUED, created_at=later, is_deleted=True)
        await store.add(deleted)

        buckets = await inspectable.activity(since=base + timedelta(seconds=30), bucket=minute)
        assert len(buckets) in (6, 7)  # the minute may turn meanwhile
        assert [b.start for b in buckets] == [base + i * minute for i in range(len(buckets))]
        assert all(b.start.utcoffset() == timedelta(0) for b in buckets)
        got = [(b.accepted, b.sent, b.failed) for b in buckets]
        assert got[:4] == [(3, 0, 0), (0, 1, 0), (2, 1, 3), (0, 0, 0)]
        assert all(counts == (0, 0, 0) for counts in got[4:])

        hourly = await inspectable.activity(since=now - timedelta(days=1), bucket=timedelta(hours=1))
        assert len(hourly) in (25, 26)
        assert hourly[0].start == (now - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
        assert sum(b.accepted for b in hourly) == 8
        assert sum(b.sent for b in hourly) == 4
        assert sum(b.failed for b in hourly) == 3

    async def test_activity_refuses_bad_buckets(self, store: Store) -> None:
        inspectable = as_inspectable(store)
        now = utcnow()
        assert await inspectable.activity(since=now + timedelta(hours=2), bucket=timedelta(hours=1)) == []
        for bucket in (timedelta(0), timedelta(seconds=-60), timedelta(milliseconds=1500)):
            with pytest.raises(ValueError, match="whole number of seconds"):
                await inspectable.activity(since=now - timedelta(hours=1), bucket=bucket)
        with pytest.raises(ValueError, match="buckets"):
            await inspectable.activity(since=now - timedelta(days=30), bucket=timedelta(seconds=1))
