"""Conformance suite of the :class:`~mailqueue.protocols.Store` contract.

Subclass :class:`StoreConformance` in a test module and provide a ``store``
fixture that yields an OPENED store, empty at the start of each test::

    class TestMyStore(StoreConformance):
        @pytest.fixture
        async def store(self) -> AsyncIterator[Store]:
            async with MyStore(...) as store:
                yield store

The tests need pytest-asyncio (``asyncio_mode = "auto"``).

Optionally provide ``backend_url``, a URL that ``type(store).from_url(url,
context=backend_context)`` accepts: the suite then checks that an unknown URL
option is refused with the valid ones listed (see
:mod:`mailqueue.testing.options`). Without it (the default ``None``, e.g. for
a store whose URL query belongs to its driver) that test is skipped.

What a store may do differently and still conform:

- times may be kept to the second only, cut (never rounded): they are
  compared with :func:`assert_same_time`;
- ``remark`` may be cut to 100 characters, ``last_error`` to 1000.

Everything else is compared exactly. Points the suite pins down beyond the
docstrings of :class:`~mailqueue.protocols.Store`: ``add`` of an id that is
taken (without a taken idempotency key) raises
:class:`~mailqueue.errors.StoreError`; ``find`` takes ``since`` as inclusive
and ``until`` as exclusive; the history lists attempts in the order they were
added; a closed store raises :class:`~mailqueue.errors.StoreError`.

The optional capabilities (:class:`~mailqueue.protocols.PrunableStore`,
:class:`~mailqueue.protocols.InspectableStore`, :class:`~mailqueue.protocols.BatchStore`,
:class:`~mailqueue.protocols.BatchUpdateStore`) are tested when the store has
them and skipped otherwise.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mailqueue.errors import StoreError
from mailqueue.message import AttachmentRef, Mail, Recipient, new_id
from mailqueue.protocols import (
    BackendContext,
    BatchStore,
    BatchUpdateStore,
    InspectableStore,
    PrunableStore,
    Store,
)
from mailqueue.records import (
    Attempt,
    MailRecord,
    RecipientOutcome,
    RecipientState,
    RecordQuery,
    RecordUpdate,
    Status,
    utcnow,
)
from mailqueue.testing.options import URLOptionsCheck

__all__ = ["StoreConformance", "assert_same_time", "make_mail", "make_record", "rich_mail"]


def assert_same_time(got: datetime | None, expected: datetime) -> None:
    """``got`` is ``expected``, timezone-aware UTC, possibly cut to the second."""
    assert got is not None, f"expected {expected}, got None"
    assert got.utcoffset() == timedelta(0), f"{got!r} is not timezone-aware UTC"
    assert timedelta(0) <= expected - got < timedelta(seconds=1), f"{got} is not {expected}"


def make_mail(**changes: Any) -> Mail:
    """A small valid mail; keyword arguments replace its fields."""
    fields: dict[str, Any] = {
        "subject": "Hello",
        "html": "<p>Hello</p>",
        "to": (Recipient(address="to@example.com"),),
    }
    fields.update(changes)
    return Mail(**fields)


def make_record(**changes: Any) -> MailRecord:
    """A new ``queued`` record of :func:`make_mail` with ``changes`` applied to the mail."""
    return MailRecord.new(make_mail(**changes))


def rich_mail() -> Mail:
    """A mail using every field: cc, bcc, reply-to, attachments, non-ASCII text."""
    return Mail(
        message_id="<abc.123@mail.example.com>",
        subject="Grüße aus Köln — 你好 📨",
        html="<p>Ünïcödé ✓ 日本語 🚀</p>",
        text="Ünïcödé ✓ 日本語 🚀",
        sender_name="Zoë Support",
        to=(Recipient(address="alice@example.com", name="Alice Ärger"), Recipient(address="bob@example.org")),
        cc=(Recipient(address="carol@example.net", name="Carol, C."),),
        bcc=(Recipient(address="dave@example.com", name="Dave"),),
        reply_to=(Recipient(address="help@example.com", name="Help Desk"),),
        attachments=(
            AttachmentRef(
                key="k1-abc_DEF",
                filename="Bericht März.pdf",
                content_type="application/pdf",
                size=1234,
                sha256="a" * 64,
            ),
            AttachmentRef(key="k2", filename="photo.png", content_type="image/png", size=0, sha256="0" * 64),
        ),
        idempotency_key="order-4711/confirmation",
    )


def _attempt(number: int, outcome: str = "transient", **changes: Any) -> Attempt:
    started = utcnow()
    fields: dict[str, Any] = {
        "number": number,
        "started_at": started,
        "finished_at": started + timedelta(milliseconds=250),
        "outcome": outcome,
        "code": 451,
        "reply": "4.7.1 Try again later",
    }
    fields.update(changes)
    return Attempt(**fields)


async def _add_many(store: Store, count: int, **changes: Any) -> list[MailRecord]:
    return [await store.add(make_record(**changes)) for _ in range(count)]


async def _ids(store: Store, query: RecordQuery) -> list[str]:
    return [record.id for record in await store.find(query)]


def _inspectable(store: Store) -> InspectableStore:
    if not isinstance(store, InspectableStore):
        pytest.skip("the store cannot count or report activity (optional InspectableStore)")
    return store


def _refused(address: str, reply: str) -> RecipientOutcome:
    return RecipientOutcome(address, RecipientState.FAILED, 550, reply)


class StoreConformance(URLOptionsCheck):
    """The Store contract, one test per point. Needs an opened ``store`` fixture."""

    # --- add and get ---------------------------------------------------------------

    async def test_unknown_url_option_is_refused_with_the_valid_names(
        self, store: Store, backend_url: str | None, backend_context: BackendContext
    ) -> None:
        self.check_url_options(store, backend_url, backend_context)

    async def test_add_get_round_trip(self, store: Store) -> None:
        mail = rich_mail()
        record = MailRecord.new(mail)
        added = await store.add(record)
        assert added.id == mail.id
        assert added.mail == mail

        got = await store.get(mail.id)
        assert got is not None
        assert got.mail == mail
        assert got.mail.model_dump() == mail.model_dump()
        assert got.status is Status.QUEUED
        assert got.attempts == 0
        assert got.recipients == tuple(
            RecipientOutcome(address, RecipientState.PENDING)
            for address in ("alice@example.com", "bob@example.org", "carol@example.net", "dave@example.com")
        )
        assert got.remark == ""
        assert got.last_error == ""
        assert got.last_code is None
        assert got.sent_at is None
        assert got.next_attempt_at is None
        assert got.is_deleted is False
        assert got.is_ok is False
        assert got.history == ()
        assert_same_time(got.created_at, record.created_at)
        assert_same_time(got.updated_at, record.updated_at)

    async def test_add_returns_what_get_returns(self, store: Store) -> None:
        record = make_record(sender_name="Ops")
        added = await store.add(record)
        assert added == await store.get(record.id)

    async def test_longest_body_round_trip(self, store: Store) -> None:
        # 65535 characters of up to 4 UTF-8 bytes each: far over 64 KiB
        html = ("é📨a" * (Mail.BODY_MAX // 3 + 1))[: Mail.BODY_MAX]
        text = ("ß" * Mail.BODY_MAX)[: Mail.BODY_MAX]
        mail = make_mail(html=html, text=text, subject="s" * Mail.SUBJECT_MAX)
        await store.add(MailRecord.new(mail))
        got = await store.get(mail.id)
        assert got is not None
        assert got.mail.html == html
        assert got.mail.text == text
        assert got.mail.subject == "s" * Mail.SUBJECT_MAX

    async def test_many_recipients_round_trip(self, store: Store) -> None:
        to = tuple(Recipient(address=f"user{i}@example.com", name=f"Üser Nümber {i}" * 5) for i in range(100))
        mail = make_mail(to=to)
        await store.add(MailRecord.new(mail))
        got = await store.get(mail.id)
        assert got is not None
        assert got.mail.to == to
        assert [r.address for r in got.recipients] == [r.address for r in to]

    async def test_get_missing_is_none(self, store: Store) -> None:
        assert await store.get(new_id()) is None
        await store.add(make_record())
        assert await store.get("no-such-id") is None

    async def test_add_same_id_twice_refused(self, store: Store) -> None:
        record = make_record(subject="first")
        await store.add(record)
        second = MailRecord.new(make_mail(id=record.id, subject="second"))
        with pytest.raises(StoreError):
            await store.add(second)
        got = await store.get(record.id)
        assert got is not None
        assert got.mail.subject == "first"

    async def test_add_keeps_given_state(self, store: Store) -> None:
        sent_at = datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
        record = make_record().evolve(
            status=Status.SENT,
            attempts=2,
            remark="imported",
            last_error="451 busy",
            last_code=451,
            sent_at=sent_at,
            is_deleted=True,
        )
        await store.add(record)
        got = await store.get(record.id)
        assert got is not None
        assert (got.status, got.attempts, got.remark, got.last_error, got.last_code, got.is_deleted) == (
            Status.SENT,
            2,
            "imported",
            "451 busy",
            451,
            True,
        )
        assert got.is_ok is True
        assert_same_time(got.sent_at, sent_at)

    # --- idempotency key -----------------------------------------------------------

    async def test_idempotency_key_returns_existing(self, store: Store) -> None:
        first = await store.add(make_record(idempotency_key="key-1", subject="first"))
        again = await store.add(make_record(idempotency_key="key-1", subject="second"))
        assert again.id == first.id
        assert again.mail.subject == "first"
        other = await store.add(make_record(idempotency_key="key-2"))
        assert other.id != first.id
        assert sorted(await _ids(store, RecordQuery())) == sorted([first.id, other.id])
        assert await _ids(store, RecordQuery(idempotency_key="key-1")) == [first.id]

    async def test_idempotency_key_concurrent_adds_make_one_record(self, store: Store) -> None:
        records = [make_record(idempotency_key="same-key", subject=f"try {i}") for i in range(10)]
        results = await asyncio.gather(*(store.add(record) for record in records))
        winners = {result.id for result in results}
        assert len(winners) == 1
        (winner,) = winners
        assert winner in {record.id for record in records}
        assert await _ids(store, RecordQuery()) == [winner]
        for record in records:
            if record.id != winner:
                assert await store.get(record.id) is None

    async def test_existing_record_returned_for_key_has_its_history(self, store: Store) -> None:
        first = await store.add(make_record(idempotency_key="k"))
        assert await store.update(first.id, RecordUpdate(status=Status.RETRYING, attempt=_attempt(1)))
        again = await store.add(make_record(idempotency_key="k"))
        assert again.id == first.id
        assert again.status is Status.RETRYING
        assert [a.number for a in again.history] == [1]

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
        attempt = _attempt(1, "partial", code=250, reply="2.0.0 queued as 1234", recipients=outcomes)
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
        assert await store.update(new_id(), RecordUpdate(attempt=_attempt(1))) is False
        assert await store.find(RecordQuery()) == []

    async def test_history_in_order_and_attempts_never_go_down(self, store: Store) -> None:
        record = await store.add(make_record())
        numbers = [1, 2, 5, 3]
        for number in numbers:
            assert await store.update(
                record.id, RecordUpdate(attempt=_attempt(number, reply=f"try {number}"))
            )
        got = await store.get(record.id)
        assert got is not None
        assert [a.number for a in got.history] == numbers
        assert [a.reply for a in got.history] == [f"try {n}" for n in numbers]
        assert got.attempts == 5

    async def test_history_belongs_to_its_record(self, store: Store) -> None:
        first, second = await _add_many(store, 2)
        assert await store.update(first.id, RecordUpdate(attempt=_attempt(1)))
        assert await store.update(second.id, RecordUpdate(attempt=_attempt(7)))
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
            attempt=_attempt(1),
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
        claim = RecordUpdate(status=Status.SENDING, attempt=_attempt(1), expect=frozenset({Status.QUEUED}))
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

    async def test_get_many_reads_those_that_exist(self, store: Store) -> None:
        if not isinstance(store, BatchUpdateStore):
            pytest.skip("the store cannot read records in batches (optional BatchUpdateStore)")
        first = await store.add(make_record().evolve(history=(_attempt(1),), attempts=1))
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
            status=Status.SENT, attempt=_attempt(1, "sent"), remark="ok", expect=frozenset({Status.SENDING})
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
                attempt=_attempt(n + 2, "sent", code=250, reply=f"ok {n}"),
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
        claim = RecordUpdate(status=Status.SENDING, attempt=_attempt(1), expect=frozenset({Status.QUEUED}))
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
        sent = await store.add(make_record().evolve(status=Status.SENT, history=(_attempt(1, "sent"),)))
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
        kept, deleted = await _add_many(store, 2)
        assert await store.update(deleted.id, RecordUpdate(is_deleted=True))
        assert await _ids(store, RecordQuery()) == [kept.id]
        assert sorted(await _ids(store, RecordQuery(include_deleted=True))) == sorted([kept.id, deleted.id])
        got = await store.get(deleted.id)
        assert got is not None
        assert got.is_deleted is True
        assert await store.update(deleted.id, RecordUpdate(is_deleted=False))
        assert len(await store.find(RecordQuery())) == 2

    # --- find ----------------------------------------------------------------------

    async def test_find_newest_first_without_history(self, store: Store) -> None:
        records = await _add_many(store, 5)
        assert await store.update(records[2].id, RecordUpdate(attempt=_attempt(1)))
        found = await store.find(RecordQuery())
        assert [r.id for r in found] == sorted((r.id for r in records), reverse=True)
        assert all(r.history == () for r in found)
        by_id = {r.id: r for r in found}
        assert by_id[records[2].id].attempts == 1
        assert by_id[records[0].id].mail == records[0].mail

    async def test_find_by_status(self, store: Store) -> None:
        records = await _add_many(store, 4)
        assert await store.update(records[0].id, RecordUpdate(status=Status.FAILED))
        assert await store.update(records[1].id, RecordUpdate(status=Status.DEAD))
        assert await store.update(records[2].id, RecordUpdate(status=Status.SENT))
        failed = await _ids(store, RecordQuery(statuses=frozenset({Status.FAILED, Status.DEAD})))
        assert failed == sorted([records[0].id, records[1].id], reverse=True)
        assert await _ids(store, RecordQuery(statuses=frozenset({Status.QUEUED}))) == [records[3].id]
        assert await _ids(store, RecordQuery(statuses=frozenset({Status.UNKNOWN}))) == []
        assert await _ids(store, RecordQuery(statuses=frozenset())) == []

    async def test_find_by_ids(self, store: Store) -> None:
        records = await _add_many(store, 4)
        wanted = (records[3].id, records[1].id, new_id())
        assert await _ids(store, RecordQuery(ids=wanted)) == sorted(
            [records[1].id, records[3].id], reverse=True
        )
        assert await _ids(store, RecordQuery(ids=())) == []

    async def test_find_by_time(self, store: Store) -> None:
        base = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
        records = []
        for minute in range(5):
            record = make_record().evolve(created_at=base + timedelta(minutes=minute))
            records.append(await store.add(record))
        since = await _ids(store, RecordQuery(since=base + timedelta(minutes=2)))
        assert sorted(since) == sorted(r.id for r in records[2:])
        until = await _ids(store, RecordQuery(until=base + timedelta(minutes=2)))
        assert sorted(until) == sorted(r.id for r in records[:2])
        window = await _ids(
            store,
            RecordQuery(since=base + timedelta(minutes=1), until=base + timedelta(minutes=3, seconds=30)),
        )
        assert sorted(window) == sorted(r.id for r in records[1:4])
        assert await _ids(store, RecordQuery(since=base + timedelta(hours=1))) == []
        oldest = await _ids(store, RecordQuery(since=base + timedelta(minutes=1), order="oldest", limit=2))
        assert oldest == sorted(r.id for r in records[1:])[:2]
        newest = await _ids(store, RecordQuery(until=base + timedelta(minutes=3), limit=2))
        assert newest == sorted((r.id for r in records[:3]), reverse=True)[:2]
        got = await store.get(records[3].id)
        assert got is not None
        assert_same_time(got.created_at, base + timedelta(minutes=3))

    async def test_find_combines_criteria_and_limit(self, store: Store) -> None:
        records = await _add_many(store, 6)
        for record in records[:4]:
            assert await store.update(record.id, RecordUpdate(status=Status.FAILED))
        assert await store.update(records[0].id, RecordUpdate(is_deleted=True))
        ids = sorted((r.id for r in records), reverse=True)
        query = RecordQuery(statuses=frozenset({Status.FAILED}), ids=tuple(ids), limit=2)
        expected = sorted((r.id for r in records[1:4]), reverse=True)
        assert await _ids(store, query) == expected[:2]

    async def test_keyset_pagination_visits_each_record_once(self, store: Store) -> None:
        records = await _add_many(store, 25)
        pages: list[list[str]] = []
        before: str | None = None
        while True:
            page = await _ids(store, RecordQuery(limit=10, before_id=before))
            if not page:
                break
            pages.append(page)
            before = page[-1]
            assert len(pages) <= 3, "pagination does not end"
        assert [len(page) for page in pages] == [10, 10, 5]
        visited = [mail_id for page in pages for mail_id in page]
        assert visited == sorted((r.id for r in records), reverse=True)

    async def test_before_id_excludes_the_cursor(self, store: Store) -> None:
        records = sorted(await _add_many(store, 3), key=lambda r: r.id)
        assert await _ids(store, RecordQuery(before_id=records[1].id)) == [records[0].id]
        assert await _ids(store, RecordQuery(before_id=records[0].id)) == []

    async def test_find_by_recipient_any_case_in_to_cc_and_bcc(self, store: Store) -> None:
        mail = make_mail(
            to=(Recipient(address="Alice.Smith@Example.com"),),
            cc=(Recipient(address="bob@corp.example.org"),),
            bcc=(Recipient(address="carol_x@example.net"),),
        )
        full = await store.add(MailRecord.new(mail))
        other = await store.add(make_record(to=(Recipient(address="carolyx@example.net"),)))
        assert await _ids(store, RecordQuery(recipient="alice.smith@example.COM")) == [full.id]
        assert await _ids(store, RecordQuery(recipient="CORP.example")) == [full.id]
        assert await _ids(store, RecordQuery(recipient="carol_x")) == [full.id]
        assert sorted(await _ids(store, RecordQuery(recipient="carol"))) == sorted([full.id, other.id])
        assert await _ids(store, RecordQuery(recipient="nobody")) == []
        assert await _ids(store, RecordQuery(recipient="%")) == []

    async def test_find_by_recipient_ignores_reply_texts(self, store: Store) -> None:
        # replies that mention the text, on more rows than a store may read at once
        for _ in range(120):
            noise = make_record(to=(Recipient(address="x@example.com"),))
            await store.add(noise.evolve(recipients=(_refused("x@example.com", "5.1.1 mailbox gone"),)))
        wanted = [
            await store.add(make_record(to=(Recipient(address=f"gone{i}@example.com"),))) for i in range(2)
        ]
        expected = sorted((r.id for r in wanted), reverse=True)
        assert await _ids(store, RecordQuery(recipient="GONE", limit=5)) == expected
        assert await _ids(store, RecordQuery(recipient="gone", limit=1)) == expected[:1]
        assert await _ids(store, RecordQuery(recipient="gone", order="oldest")) == expected[::-1]
        assert await _ids(store, RecordQuery(recipient="mailbox")) == []

    async def test_find_by_subject_any_case_and_literally(self, store: Store) -> None:
        percent = await store.add(make_record(subject="Invoice 100% paid"))
        plain = await store.add(make_record(subject="invoice 1000 paid"))
        await store.add(make_record(subject="Welcome"))
        assert sorted(await _ids(store, RecordQuery(subject="INVOICE"))) == sorted([percent.id, plain.id])
        assert await _ids(store, RecordQuery(subject="100%")) == [percent.id]
        assert await _ids(store, RecordQuery(subject="0_p")) == []
        assert await _ids(store, RecordQuery(subject="e 1000 p")) == [plain.id]
        both = sorted([percent.id, plain.id])
        assert await _ids(store, RecordQuery(subject="invoice", order="oldest", limit=1)) == both[:1]
        assert await _ids(store, RecordQuery(subject="invoice", before_id=both[1])) == both[:1]
        assert await _ids(store, RecordQuery(subject="invoice", after_id=both[0])) == both[1:]

    async def test_find_by_code(self, store: Store) -> None:
        refused, deferred, fresh = await _add_many(store, 3)
        assert await store.update(refused.id, RecordUpdate(status=Status.FAILED, last_code=550))
        assert await store.update(deferred.id, RecordUpdate(status=Status.RETRYING, last_code=421))
        assert await _ids(store, RecordQuery(code=550)) == [refused.id]
        assert await _ids(store, RecordQuery(code=421, statuses=frozenset({Status.RETRYING}))) == [
            deferred.id
        ]
        assert await _ids(store, RecordQuery(code=421, statuses=frozenset({Status.FAILED}))) == []
        assert await _ids(store, RecordQuery(code=250)) == []
        assert fresh.id not in await _ids(store, RecordQuery(code=0))

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
        assert await _ids(store, query) == [match.id]
        with_deleted = RecordQuery(recipient="ann@", subject="reset", code=550, include_deleted=True)
        assert await _ids(store, with_deleted) == sorted([match.id, deleted.id], reverse=True)

    async def test_oldest_first_pagination_with_after_id(self, store: Store) -> None:
        records = await _add_many(store, 25)
        ascending = sorted(r.id for r in records)
        assert await _ids(store, RecordQuery(order="oldest", limit=3)) == ascending[:3]
        pages: list[list[str]] = []
        after: str | None = None
        while page := await _ids(store, RecordQuery(order="oldest", limit=10, after_id=after)):
            pages.append(page)
            after = page[-1]
            assert len(pages) <= 3, "pagination does not end"
        assert [len(page) for page in pages] == [10, 10, 5]
        assert [mail_id for page in pages for mail_id in page] == ascending

    async def test_after_id_and_before_id_bound_a_range_in_either_order(self, store: Store) -> None:
        ids = sorted(r.id for r in await _add_many(store, 6))
        window = RecordQuery(after_id=ids[1], before_id=ids[4])
        assert await _ids(store, window) == [ids[3], ids[2]]
        assert await _ids(store, RecordQuery(after_id=ids[1], before_id=ids[4], order="oldest")) == ids[2:4]
        assert await _ids(store, RecordQuery(after_id=ids[3])) == [ids[5], ids[4]]
        assert await _ids(store, RecordQuery(before_id=ids[2], order="oldest")) == ids[:2]
        assert await _ids(store, RecordQuery(after_id=ids[5])) == []

    # --- InspectableStore (optional) --------------------------------------------------

    async def test_count_by_status_has_every_status(self, store: Store) -> None:
        inspectable = _inspectable(store)
        assert await inspectable.count_by_status() == dict.fromkeys(Status, 0)
        records = await _add_many(store, 6)
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
        inspectable = _inspectable(store)
        records = await _add_many(store, 7, subject="Report")
        await _add_many(store, 2, subject="Other")
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
        inspectable = _inspectable(store)
        for _ in range(3):
            noise = make_record(to=(Recipient(address="x@example.com"),))
            await store.add(noise.evolve(recipients=(_refused("x@example.com", "mailbox full"),)))
        await _add_many(store, 4, to=(Recipient(address="full.name@example.com"),))
        assert await inspectable.count(RecordQuery(recipient="FULL")) == 4
        assert await inspectable.count(RecordQuery(recipient="full"), cap=2) == 2
        assert await inspectable.count(RecordQuery(recipient="mailbox")) == 0

    async def test_activity_buckets(self, store: Store) -> None:
        inspectable = _inspectable(store)
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
        deleted = make_record().evolve(status=Status.QUEUED, created_at=later, is_deleted=True)
        await store.add(deleted)

        buckets = await inspectable.activity(since=base + timedelta(seconds=30), bucket=minute)
        assert len(buckets) in (6, 7)  # the minute may turn meanwhile
        assert [b.start for b in buckets] == [base + i * minute for i in range(len(buckets))]
        assert all(b.start.utcoffset() == timedelta(0) for b in buckets)
        got = [(b.accepted, b.sent, b.failed) for b in buckets]
        assert got[:4] == [(3, 0, 0), (0, 1, 0), (2, 1, 2), (0, 0, 0)]
        assert all(counts == (0, 0, 0) for counts in got[4:])

        hourly = await inspectable.activity(since=now - timedelta(days=1), bucket=timedelta(hours=1))
        assert len(hourly) in (25, 26)
        assert hourly[0].start == (now - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
        assert sum(b.accepted for b in hourly) == 7
        assert sum(b.sent for b in hourly) == 3
        assert sum(b.failed for b in hourly) == 2

    async def test_activity_refuses_bad_buckets(self, store: Store) -> None:
        inspectable = _inspectable(store)
        now = utcnow()
        assert await inspectable.activity(since=now + timedelta(hours=2), bucket=timedelta(hours=1)) == []
        for bucket in (timedelta(0), timedelta(seconds=-60), timedelta(milliseconds=1500)):
            with pytest.raises(ValueError, match="whole number of seconds"):
                await inspectable.activity(since=now - timedelta(hours=1), bucket=bucket)
        with pytest.raises(ValueError, match="buckets"):
            await inspectable.activity(since=now - timedelta(days=30), bucket=timedelta(seconds=1))

    # --- liveness ------------------------------------------------------------------

    async def test_ping(self, store: Store) -> None:
        await store.ping()

    async def test_closed_store_refuses_and_close_is_idempotent(self, store: Store) -> None:
        await store.close()
        await store.close()
        with pytest.raises(StoreError):
            await store.ping()
        with pytest.raises(StoreError):
            await store.get(new_id())
