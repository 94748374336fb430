"""The optional batch capabilities of a Store: ``BatchUpdateStore``, ``PrunableStore``, ``BatchStore``.

Each test skips when the store lacks the capability it checks.
"""

from __future__ import annotations

import asyncio

import pytest

from mailqueue.errors import StoreError
from mailqueue.protocols import BatchStore, BatchUpdateStore, PrunableStore, Store
from mailqueue.records import RecipientOutcome, RecipientState, RecordUpdate, Status, utcnow
from mailqueue.testing.store.data import assert_same_time, make_attempt, make_record

__all__ = ["BatchesConformance"]


class BatchesConformance:
    """Batched reads and writes, and deleting records, when the store has them."""

    # --- BatchUpdateStore, PrunableStore, BatchStore (optional) -------------------------

    async def test_get_many_reads_those_that_exist(self, store: Store) -> None:
        if not isinstance(store, BatchUpdateStore):
            pytest.skip("the store cannot read records in batches (optional BatchUpdateStore)")
        first = await store.add(make_record().evolve(history=(make_attempt(1),), attempts=1))
        second = await store.add(make_record(subject="Second"))
        found = await store.get_many([second.id, "0" * 32, first.id, second.id])
        assert sorted(found) == sorted([first.id, second.id])
        for record in (first, second):
            single = await store.get(record.id)
            assert single is not None
            assert found[record.id] == single.evolve(history=())
        assert await store.get_many([]) == {}

    async def test_update_many_is_update_in_order(self, store: Store) -> None:
        if not isinstance(store, BatchUpdateStore):
            pytest.skip("the store cannot change records in batches (optional BatchUpdateStore)")
        one = await store.add(make_record())
        two = await store.add(make_record())
        claim = RecordUpdate(status=Status.SENDING, expect=frozenset({Status.QUEUED, Status.RETRYING}))
        sent = RecordUpdate(
            status=Status.SENT,
            attempt=make_attempt(1, "sent"),
            remark="ok",
            expect=frozenset({Status.SENDING}),
        )
        results = await store.update_many(
            [
                (one.id, claim),
                (one.id, claim),  # the first changed it: no longer queued
                (one.id, sent),
                (two.id, sent),  # not sending: refused
                ("0" * 32, claim),
                (two.id, claim),
            ]
        )
        assert results == [True, False, True, False, False, True]
        got_one, got_two = await store.get(one.id), await store.get(two.id)
        assert got_one is not None
        assert got_two is not None
        assert (got_one.status, got_one.attempts, got_one.remark) == (Status.SENT, 1, "ok")
        assert [a.outcome for a in got_one.history] == ["sent"]
        assert (got_two.status, got_two.attempts, got_two.history) == (Status.SENDING, 0, ())
        assert await store.update_many([]) == []

    async def test_update_many_same_change_to_many_records(self, store: Store) -> None:
        if not isinstance(store, BatchUpdateStore):
            pytest.skip("the store cannot change records in batches (optional BatchUpdateStore)")
        records = [await store.add(make_record()) for _ in range(4)]
        sent = records[1].id
        assert await store.update(sent, RecordUpdate(status=Status.SENT))
        claim = RecordUpdate(status=Status.SENDING, expect=frozenset({Status.QUEUED, Status.RETRYING}))
        ids = [r.id for r in records]
        assert await store.update_many([(mail_id, claim) for mail_id in ids]) == [True, False, True, True]
        got = await store.get_many(ids)
        assert [got[mail_id].status for mail_id in ids] == [
            Status.SENDING,
            Status.SENT,
            Status.SENDING,
            Status.SENDING,
        ]
        assert await store.update_many([(mail_id, claim) for mail_id in ids]) == [False] * 4

    async def test_update_many_outcomes_of_many_records(self, store: Store) -> None:
        if not isinstance(store, BatchUpdateStore):
            pytest.skip("the store cannot change records in batches (optional BatchUpdateStore)")
        records = [await store.add(make_record()) for _ in range(3)]
        sending = RecordUpdate(status=Status.SENDING)
        for record in records:
            assert await store.update(record.id, sending)
        assert await store.update(records[1].id, RecordUpdate(status=Status.FAILED))
        finished = utcnow()
        outcomes = [
            RecordUpdate(
                status=Status.SENT,
                attempt=make_attempt(n + 2, "sent", code=250, reply=f"ok {n}"),
                recipients=(RecipientOutcome("to@example.com", RecipientState.SENT, 250, f"ok {n}"),),
                remark=f"remark {n}",
                last_error="",
                last_code=250,
                sent_at=finished,
                expect=frozenset({Status.SENDING}),
            )
            for n in range(3)
        ]
        results = await store.update_many([(r.id, o) for r, o in zip(records, outcomes, strict=True)])
        assert results == [True, False, True]
        for n in (0, 2):
            got = await store.get(records[n].id)
            assert got is not None
            assert (got.status, got.attempts, got.remark, got.last_code) == (
                Status.SENT,
                n + 2,
                f"remark {n}",
                250,
            )
            assert got.recipients == outcomes[n].recipients
            assert [(a.number, a.reply) for a in got.history] == [(n + 2, f"ok {n}")]
            assert_same_time(got.sent_at, finished)
        failed = await store.get(records[1].id)
        assert failed is not None
        assert (failed.status, failed.attempts, failed.history, failed.remark) == (Status.FAILED, 0, (), "")

    async def test_update_many_lets_exactly_one_concurrent_claim_win(self, store: Store) -> None:
        if not isinstance(store, BatchUpdateStore):
            pytest.skip("the store cannot change records in batches (optional BatchUpdateStore)")
        records = [await store.add(make_record()) for _ in range(3)]
        claim = RecordUpdate(
            status=Status.SENDING, attempt=make_attempt(1), expect=frozenset({Status.QUEUED})
        )
        batches = await asyncio.gather(
            *(store.update_many([(r.id, claim) for r in records]) for _ in range(5))
        )
        for index, record in enumerate(records):
            assert sorted(batch[index] for batch in batches) == [False] * 4 + [True]
            got = await store.get(record.id)
            assert got is not None
            assert (got.status, len(got.history)) == (Status.SENDING, 1)

    async def test_delete_records_only_in_the_given_states(self, store: Store) -> None:
        if not isinstance(store, PrunableStore):
            pytest.skip("the store cannot delete records (optional PrunableStore)")
        sent = await store.add(make_record().evolve(status=Status.SENT, history=(make_attempt(1, "sent"),)))
        queued = await store.add(make_record())
        deleted = await store.delete_records(
            [sent.id, queued.id, "0" * 32], statuses=frozenset({Status.SENT, Status.FAILED})
        )
        assert deleted == [sent.id]
        assert await store.get(sent.id) is None
        assert await store.get(queued.id) is not None
        assert await store.delete_records([sent.id], statuses=frozenset({Status.SENT})) == []

    async def test_add_many_inserts_all_as_add_would(self, store: Store) -> None:
        if not isinstance(store, BatchStore):
            pytest.skip("the store cannot add records in batches (optional BatchStore)")
        records = [make_record(subject=f"s{n}").evolve(last_error="pending") for n in range(5)]
        added = await store.add_many(records)
        assert [r.id for r in added] == [r.id for r in records]
        for record, got in zip(records, added, strict=True):
            assert got == await store.get(record.id)
            assert (got.mail, got.status, got.last_error) == (record.mail, Status.QUEUED, "pending")
        assert await store.add_many([]) == []

    async def test_add_many_is_all_or_nothing(self, store: Store) -> None:
        if not isinstance(store, BatchStore):
            pytest.skip("the store cannot add records in batches (optional BatchStore)")
        taken = await store.add(make_record())
        fresh = make_record()
        with pytest.raises(StoreError):
            await store.add_many([fresh, taken])
        assert await store.get(fresh.id) is None
        with pytest.raises(StoreError):
            await store.add_many([make_record(idempotency_key="k1")])

    async def test_clear_last_error_only_queued_with_that_error(self, store: Store) -> None:
        if not isinstance(store, BatchStore):
            pytest.skip("the store cannot clear marks in batches (optional BatchStore)")
        marked = [await store.add(make_record().evolve(last_error="mark")) for _ in range(3)]
        other = await store.add(make_record().evolve(last_error="another error"))
        assert await store.update(marked[2].id, RecordUpdate(status=Status.SENDING))
        await store.clear_last_error([r.id for r in (*marked, other)] + ["0" * 32], expected="mark")
        got = [await store.get(r.id) for r in (*marked, other)]
        assert [g.last_error for g in got if g is not None] == ["", "", "mark", "another error"]
        await store.clear_last_error([], expected="mark")
