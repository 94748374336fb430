"""The Store contract's ``find``: criteria, order and keyset pagination."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mailqueue.message import Recipient, new_id
from mailqueue.protocols import Store
from mailqueue.records import MailRecord, RecordQuery, RecordUpdate, Status
from mailqueue.testing.store.data import (
    add_records,
    assert_same_time,
    found_ids,
    make_attempt,
    make_mail,
    make_record,
    refused_outcome,
)

__all__ = ["QueriesConformance"]


class QueriesConformance:
    """``find``: each criterion, their combination, order, pagination."""

    # --- find ----------------------------------------------------------------------

    async def test_find_newest_first_without_history(self, store: Store) -> None:
        records = await add_records(store, 5)
        assert await store.update(records[2].id, RecordUpdate(attempt=make_attempt(1)))
        found = await store.find(RecordQuery())
        assert [r.id for r in found] == sorted((r.id for r in records), reverse=True)
        assert all(r.history == () for r in found)
        by_id = {r.id: r for r in found}
        assert by_id[records[2].id].attempts == 1
        assert by_id[records[0].id].mail == records[0].mail

    async def test_find_by_status(self, store: Store) -> None:
        records = await add_records(store, 4)
        assert await store.update(records[0].id, RecordUpdate(status=Status.FAILED))
        assert await store.update(records[1].id, RecordUpdate(status=Status.DEAD))
        assert await store.update(records[2].id, RecordUpdate(status=Status.SENT))
        failed = await found_ids(store, RecordQuery(statuses=frozenset({Status.FAILED, Status.DEAD})))
        assert failed == sorted([records[0].id, records[1].id], reverse=True)
        assert await found_ids(store, RecordQuery(statuses=frozenset({Status.QUEUED}))) == [records[3].id]
        assert await found_ids(store, RecordQuery(statuses=frozenset({Status.UNKNOWN}))) == []
        assert await found_ids(store, RecordQuery(statuses=frozenset())) == []

    async def test_find_by_ids(self, store: Store) -> None:
        records = await add_records(store, 4)
        wanted = (records[3].id, records[1].id, new_id())
        assert await found_ids(store, RecordQuery(ids=wanted)) == sorted(
            [records[1].id, records[3].id], reverse=True
        )
        assert await found_ids(store, RecordQuery(ids=())) == []

    async def test_find_by_time(self, store: Store) -> None:
        base = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
        records = []
        for minute in range(5):
            record = make_record().evolve(created_at=base + timedelta(minutes=minute))
            records.append(await store.add(record))
        since = await found_ids(store, RecordQuery(since=base + timedelta(minutes=2)))
        assert sorted(since) == sorted(r.id for r in records[2:])
        until = await found_ids(store, RecordQuery(until=base + timedelta(minutes=2)))
        assert sorted(until) == sorted(r.id for r in records[:2])
        window = await found_ids(
            store,
            RecordQuery(since=base + timedelta(minutes=1), until=base + timedelta(minutes=3, seconds=30)),
        )
        assert sorted(window) == sorted(r.id for r in records[1:4])
        assert await found_ids(store, RecordQuery(since=base + timedelta(hours=1))) == []
        oldest = await found_ids(
            store, RecordQuery(since=base + timedelta(minutes=1), order="oldest", limit=2)
        )
        assert oldest == sorted(r.id for r in records[1:])[:2]
        newest = await found_ids(store, RecordQuery(until=base + timedelta(minutes=3), limit=2))
        assert newest == sorted((r.id for r in records[:3]), reverse=True)[:2]
        got = await store.get(records[3].id)
        assert got is not None
        assert_same_time(got.created_at, base + timedelta(minutes=3))

    async def test_find_combines_criteria_and_limit(self, store: Store) -> None:
        records = await add_records(store, 6)
        for record in records[:4]:
            assert await store.update(record.id, RecordUpdate(status=Status.FAILED))
        assert await store.update(records[0].id, RecordUpdate(is_deleted=True))
        ids = sorted((r.id for r in records), reverse=True)
        query = RecordQuery(statuses=frozenset({Status.FAILED}), ids=tuple(ids), limit=2)
        expected = sorted((r.id for r in records[1:4]), reverse=True)
        assert await found_ids(store, query) == expected[:2]

    async def test_keyset_pagination_visits_each_record_once(self, store: Store) -> None:
        records = await add_records(store, 25)
        pages: list[list[str]] = []
        before: str | None = None
        while True:
            page = await found_ids(store, RecordQuery(limit=10, before_id=before))
            if not page:
                break
            pages.append(page)
            before = page[-1]
            assert len(pages) <= 3, "pagination does not end"
        assert [len(page) for page in pages] == [10, 10, 5]
        visited = [mail_id for page in pages for mail_id in page]
        assert visited == sorted((r.id for r in records), reverse=True)

    async def test_before_id_excludes_the_cursor(self, store: Store) -> None:
        records = sorted(await add_records(store, 3), key=lambda r: r.id)
        assert await found_ids(store, RecordQuery(before_id=records[1].id)) == [records[0].id]
        assert await found_ids(store, RecordQuery(before_id=records[0].id)) == []

    async def test_find_by_recipient_any_case_in_to_cc_and_bcc(self, store: Store) -> None:
        mail = make_mail(
            to=(Recipient(address="Alice.Smith@Example.com"),),
            cc=(Recipient(address="bob@corp.example.org"),),
            bcc=(Recipient(address="carol_x@example.net"),),
        )
        full = await store.add(MailRecord.new(mail))
        other = await store.add(make_record(to=(Recipient(address="carolyx@example.net"),)))
        assert await found_ids(store, RecordQuery(recipient="alice.smith@example.COM")) == [full.id]
        assert await found_ids(store, RecordQuery(recipient="CORP.example")) == [full.id]
        assert await found_ids(store, RecordQuery(recipient="carol_x")) == [full.id]
        assert sorted(await found_ids(store, RecordQuery(recipient="carol"))) == sorted([full.id, other.id])
        assert await found_ids(store, RecordQuery(recipient="nobody")) == []
        assert await found_ids(store, RecordQuery(recipient="%")) == []

    async def test_find_by_recipient_ignores_reply_texts(self, store: Store) -> None:
        # replies that mention the text, on more rows than a store may read at once
        for _ in range(120):
            noise = make_record(to=(Recipient(address="x@example.com"),))
            await store.add(
                noise.evolve(recipients=(refused_outcome("x@example.com", "5.1.1 mailbox gone"),))
            )
        wanted = [
            await store.add(make_record(to=(Recipient(address=f"gone{i}@example.com"),))) for i in range(2)
        ]
        expected = sorted((r.id for r in wanted), reverse=True)
        assert await found_ids(store, RecordQuery(recipient="GONE", limit=5)) == expected
        assert await found_ids(store, RecordQuery(recipient="gone", limit=1)) == expected[:1]
        assert await found_ids(store, RecordQuery(recipient="gone", order="oldest")) == expected[::-1]
        assert await found_ids(store, RecordQuery(recipient="mailbox")) == []

    async def test_find_by_subject_any_case_and_literally(self, store: Store) -> None:
        percent = await store.add(make_record(subject="Invoice 100% paid"))
        plain = await store.add(make_record(subject="invoice 1000 paid"))
        await store.add(make_record(subject="Welcome"))
        assert sorted(await found_ids(store, RecordQuery(subject="INVOICE"))) == sorted(
            [percent.id, plain.id]
        )
        assert await found_ids(store, RecordQuery(subject="100%")) == [percent.id]
        assert await found_ids(store, RecordQuery(subject="0_p")) == []
        assert await found_ids(store, RecordQuery(subject="e 1000 p")) == [plain.id]
        both = sorted([percent.id, plain.id])
        assert await found_ids(store, RecordQuery(subject="invoice", order="oldest", limit=1)) == both[:1]
        assert await found_ids(store, RecordQuery(subject="invoice", before_id=both[1])) == both[:1]
        assert await found_ids(store, RecordQuery(subject="invoice", after_id=both[0])) == both[1:]

    async def test_find_by_code(self, store: Store) -> None:
        refused, deferred, fresh = await add_records(store, 3)
        assert await store.update(refused.id, RecordUpdate(status=Status.FAILED, last_code=550))
        assert await store.update(deferred.id, RecordUpdate(status=Status.RETRYING, last_code=421))
        assert await found_ids(store, RecordQuery(code=550)) == [refused.id]
        assert await found_ids(store, RecordQuery(code=421, statuses=frozenset({Status.RETRYING}))) == [
            deferred.id
        ]
        assert await found_ids(store, RecordQuery(code=421, statuses=frozenset({Status.FAILED}))) == []
        assert await found_ids(store, RecordQuery(code=250)) == []
        assert fresh.id not in await found_ids(store, RecordQuery(code=0))

    async def test_new_filters_combine_with_the_others(self, store: Store) -> None:
        match = await store.add(make_record(subject="Reset", to=(Recipient(address="ann@example.com"),)))
        wrong_subject = await store.add(
            make_record(subject="Hello", to=(Recipient(address="ann@example.com"),))
        )
        deleted = await store.add(make_record(subject="Reset", to=(Recipient(address="ann@example.com"),)))
        for record in (match, wrong_subject, deleted):
            assert await store.update(record.id, RecordUpdate(status=Status.FAILED, last_code=550))
        assert await store.update(deleted.id, RecordUpdate(is_deleted=True))
        query = RecordQuery(recipient="ann@", subject="reset", code=550, statuses=frozenset({Status.FAILED}))
        assert await found_ids(store, query) == [match.id]
        with_deleted = RecordQuery(recipient="ann@", subject="reset", code=550, include_deleted=True)
        assert await found_ids(store, with_deleted) == sorted([match.id, deleted.id], reverse=True)

    async def test_oldest_first_pagination_with_after_id(self, store: Store) -> None:
        records = await add_records(store, 25)
        ascending = sorted(r.id for r in records)
        assert await found_ids(store, RecordQuery(order="oldest", limit=3)) == ascending[:3]
        pages: list[list[str]] = []
        after: str | None = None
        while page := await found_ids(store, RecordQuery(order="oldest", limit=10, after_id=after)):
            pages.append(page)
            after = page[-1]
            assert len(pages) <= 3, "pagination does not end"
        assert [len(page) for page in pages] == [10, 10, 5]
        assert [mail_id for page in pages for mail_id in page] == ascending

    async def test_after_id_and_before_id_bound_a_range_in_either_order(self, store: Store) -> None:
        ids = sorted(r.id for r in await add_records(store, 6))
        window = RecordQuery(after_id=ids[1], before_id=ids[4])
        assert await found_ids(store, window) == [ids[3], ids[2]]
        assert (
            await found_ids(store, RecordQuery(after_id=ids[1], before_id=ids[4], order="oldest")) == ids[2:4]
        )
        assert await found_ids(store, RecordQuery(after_id=ids[3])) == [ids[5], ids[4]]
        assert await found_ids(store, RecordQuery(before_id=ids[2], order="oldest")) == ids[:2]
        assert await found_ids(store, RecordQuery(after_id=ids[5])) == []
