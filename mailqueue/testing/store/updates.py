"""The Store contract's ``update``: fields, history, compare-and-set, status and marks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from mailqueue.message import Recipient, new_id
from mailqueue.protocols import BatchUpdateStore, Store
from mailqueue.records import (
    MailRecord,
    RecipientOutcome,
    RecipientState,
    RecordQuery,
    RecordUpdate,
    Status,
    utcnow,
)
from mailqueue.testing.store.data import (
    add_records,
    assert_same_time,
    found_ids,
    make_attempt,
    make_record,
    rich_mail,
)

__all__ = ["UpdatesConformance"]


class UpdatesConformance:
    """``update``: every field, the history, ``expect`` (compare-and-set), ``is_ok``, soft delete."""

    # --- update --------------------------------------------------------------------

    async def test_update_every_field(self, store: Store) -> None:
        record = await store.add(
            make_record(to=(Recipient(address="a@example.com"), Recipient(address="b@example.com")))
        )
        before = utcnow()
        sent_at = utcnow()
        retry_at = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
        outcomes = (
            RecipientOutcome("a@example.com", RecipientState.SENT, 250, "2.0.0 OK"),
            RecipientOutcome("b@example.com", RecipientState.FAILED, 550, "5.1.1 Ünknown user"),
        )
        attempt = make_attempt(1, "partial", code=250, reply="2.0.0 queued as 1234", recipients=outcomes)
        changed = await store.update(
            record.id,
            RecordUpdate(
                status=Status.SENT,
                attempt=attempt,
                recipients=outcomes,
                remark="Not Found: a.pdf",
                last_error="550 5.1.1 user unknown",
                last_code=550,
                sent_at=sent_at,
                next_attempt_at=retry_at,
            ),
        )
        assert changed is True
        got = await store.get(record.id)
        assert got is not None
        assert got.status is Status.SENT
        assert got.is_ok is True
        assert got.attempts == 1
        assert got.recipients == outcomes
        assert got.remark == "Not Found: a.pdf"
        assert got.last_error == "550 5.1.1 user unknown"
        assert got.last_code == 550
        assert_same_time(got.sent_at, sent_at)
        assert_same_time(got.next_attempt_at, retry_at)
        assert before - timedelta(seconds=1) < got.updated_at <= utcnow()
        assert got.mail == record.mail
        assert_same_time(got.created_at, record.created_at)
        (stored,) = got.history
        assert (stored.number, stored.outcome, stored.code, stored.reply, stored.recipients) == (
            1,
            "partial",
            250,
            "2.0.0 queued as 1234",
            outcomes,
        )
        assert_same_time(stored.started_at, attempt.started_at)
        assert_same_time(stored.finished_at, attempt.finished_at)

    async def test_update_leaves_unset_fields(self, store: Store) -> None:
        record = await store.add(make_record())
        assert await store.update(
            record.id, RecordUpdate(status=Status.RETRYING, remark="r", last_error="e", last_code=421)
        )
        assert await store.update(record.id, RecordUpdate(status=Status.SENDING))
        got = await store.get(record.id)
        assert got is not None
        assert (got.status, got.remark, got.last_error, got.last_code) == (Status.SENDING, "r", "e", 421)
        assert got.recipients == record.recipients
        assert got.attempts == 0
        assert got.history == ()

    async def test_update_gives_a_mail_without_one_its_message_id(self, store: Store) -> None:
        mail = rich_mail().model_copy(update={"message_id": None})
        record = await store.add(MailRecord.new(mail))
        assert (await store.get(record.id)).mail.message_id is None  # type: ignore[union-attr]
        message_id = f"<{record.id}@example.com>"
        assert await store.update(record.id, RecordUpdate(status=Status.QUEUED, message_id=message_id))
        got = await store.get(record.id)
        assert got is not None
        assert got.mail.message_id == message_id
        assert got.mail.model_copy(update={"message_id": None}) == mail
        if isinstance(store, BatchUpdateStore):
            assert (await store.get_many([record.id]))[record.id].mail.message_id == message_id
            # the same in a group of changes
            other = await store.add(MailRecord.new(mail.model_copy(update={"id": new_id()})))
            given = f"<{other.id}@example.com>"
            assert await store.update_many([(other.id, RecordUpdate(message_id=given))]) == [True]
            got = await store.get(other.id)
            assert got is not None
            assert got.mail.message_id == given

    async def test_update_missing_record_is_false(self, store: Store) -> None:
        assert await store.update(new_id(), RecordUpdate(status=Status.SENT)) is False
        assert await store.update(new_id(), RecordUpdate(attempt=make_attempt(1))) is False
        assert await store.find(RecordQuery()) == []

    async def test_history_in_order_and_attempts_never_go_down(self, store: Store) -> None:
        record = await store.add(make_record())
        numbers = [1, 2, 5, 3]
        for number in numbers:
            assert await store.update(
                record.id, RecordUpdate(attempt=make_attempt(number, reply=f"try {number}"))
            )
        got = await store.get(record.id)
        assert got is not None
        assert [a.number for a in got.history] == numbers
        assert [a.reply for a in got.history] == [f"try {n}" for n in numbers]
        assert got.attempts == 5

    async def test_history_belongs_to_its_record(self, store: Store) -> None:
        first, second = await add_records(store, 2)
        assert await store.update(first.id, RecordUpdate(attempt=make_attempt(1)))
        assert await store.update(second.id, RecordUpdate(attempt=make_attempt(7)))
        got_first, got_second = await store.get(first.id), await store.get(second.id)
        assert got_first is not None
        assert got_second is not None
        assert [a.number for a in got_first.history] == [1]
        assert [a.number for a in got_second.history] == [7]

    async def test_expect_compare_and_set(self, store: Store) -> None:
        record = await store.add(make_record())
        assert await store.update(
            record.id, RecordUpdate(status=Status.SENDING, expect=frozenset({Status.QUEUED}))
        )
        refused = RecordUpdate(
            status=Status.SENT,
            attempt=make_attempt(1),
            remark="no",
            expect=frozenset({Status.QUEUED, Status.RETRYING}),
        )
        assert await store.update(record.id, refused) is False
        got = await store.get(record.id)
        assert got is not None
        assert (got.status, got.attempts, got.history, got.remark) == (Status.SENDING, 0, (), "")
        assert await store.update(
            record.id, RecordUpdate(status=Status.SENT, expect=frozenset({Status.SENDING}))
        )
        assert await store.update(record.id, RecordUpdate(remark="x", expect=frozenset())) is False

    async def test_expect_lets_exactly_one_concurrent_claim_win(self, store: Store) -> None:
        record = await store.add(make_record())
        claim = RecordUpdate(
            status=Status.SENDING, attempt=make_attempt(1), expect=frozenset({Status.QUEUED})
        )
        results = await asyncio.gather(*(store.update(record.id, claim) for _ in range(10)))
        assert sorted(results) == [False] * 9 + [True]
        got = await store.get(record.id)
        assert got is not None
        assert got.status is Status.SENDING
        assert len(got.history) == 1

    async def test_expect_updated_at_refuses_a_changed_record(self, store: Store) -> None:
        old = utcnow() - timedelta(hours=1)
        record = await store.add(make_record().evolve(status=Status.SENDING, updated_at=old))
        (seen,) = await store.find(RecordQuery(ids=(record.id,)))
        claim = RecordUpdate(status=Status.SENDING, expect=frozenset({Status.SENDING}))
        assert await store.update(record.id, claim)
        stale = RecordUpdate(
            status=Status.UNKNOWN, expect=frozenset({Status.SENDING}), expect_updated_at=seen.updated_at
        )
        assert await store.update(record.id, stale) is False
        (now_seen,) = await store.find(RecordQuery(ids=(record.id,)))
        assert now_seen.status is Status.SENDING
        fresh = RecordUpdate(
            status=Status.UNKNOWN, expect=frozenset({Status.SENDING}), expect_updated_at=now_seen.updated_at
        )
        assert await store.update(record.id, fresh)
        got = await store.get(record.id)
        assert got is not None
        assert got.status is Status.UNKNOWN

    # --- status, long texts, soft delete ----------------------------------------------

    async def test_is_ok_follows_status(self, store: Store) -> None:
        record = await store.add(make_record())
        for status in Status:
            assert await store.update(record.id, RecordUpdate(status=status))
            got = await store.get(record.id)
            assert got is not None
            assert got.status is status
            assert got.is_ok is (status is Status.SENT)

    async def test_long_remark_and_error_kept_or_cut(self, store: Store) -> None:
        record = await store.add(make_record())
        remark = "Not Found: " + "ä" * 200
        error = "5" * 3000
        assert await store.update(record.id, RecordUpdate(remark=remark, last_error=error))
        got = await store.get(record.id)
        assert got is not None
        assert got.remark in (remark, remark[:100])
        assert got.last_error in (error, error[:1000])

    async def test_soft_delete(self, store: Store) -> None:
        kept, deleted = await add_records(store, 2)
        assert await store.update(deleted.id, RecordUpdate(is_deleted=True))
        assert await found_ids(store, RecordQuery()) == [kept.id]
        assert sorted(await found_ids(store, RecordQuery(include_deleted=True))) == sorted(
            [kept.id, deleted.id]
        )
        got = await store.get(deleted.id)
        assert got is not None
        assert got.is_deleted is True
        assert await store.update(deleted.id, RecordUpdate(is_deleted=False))
        assert len(await store.find(RecordQuery())) == 2
