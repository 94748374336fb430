"""The Store contract's records: add and get, the idempotency key, liveness, URL options."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from mailqueue.errors import StoreError
from mailqueue.message import MAX_HEADERS, Mail, Recipient, new_id
from mailqueue.protocols import BackendContext, Store
from mailqueue.records import MailRecord, RecipientOutcome, RecipientState, RecordQuery, RecordUpdate, Status
from mailqueue.testing.options import URLOptionsCheck
from mailqueue.testing.store.data import (
    assert_same_time,
    found_ids,
    make_attempt,
    make_mail,
    make_record,
    rich_mail,
)

__all__ = ["RecordsConformance"]


class RecordsConformance(URLOptionsCheck):
    """Adding and reading records, the idempotency key, ``ping`` and ``close``, the URL options."""

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

    async def test_extra_headers_round_trip(self, store: Store) -> None:
        headers = (
            ("References", " ".join(f"<msg.{i}@mail.example.com>" for i in range(30))),
            *(
                (f"X-Tag-{i % 3}", f'Wert {i}: Grüße, "quoted" =?not-encoded?= 😀' * 10)
                for i in range(MAX_HEADERS - 1)
            ),
        )
        mail = make_mail(headers=headers)
        await store.add(MailRecord.new(mail))
        got = await store.get(mail.id)
        assert got is not None
        assert got.mail.headers == headers
        assert got.mail == mail
        (found,) = await store.find(RecordQuery(ids=(mail.id,)))
        assert found.mail.headers == headers
        plain = make_mail()
        await store.add(MailRecord.new(plain))
        got = await store.get(plain.id)
        assert got is not None
        assert got.mail.headers == ()

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
        assert sorted(await found_ids(store, RecordQuery())) == sorted([first.id, other.id])
        assert await found_ids(store, RecordQuery(idempotency_key="key-1")) == [first.id]

    async def test_idempotency_key_concurrent_adds_make_one_record(self, store: Store) -> None:
        records = [make_record(idempotency_key="same-key", subject=f"try {i}") for i in range(10)]
        results = await asyncio.gather(*(store.add(record) for record in records))
        winners = {result.id for result in results}
        assert len(winners) == 1
        (winner,) = winners
        assert winner in {record.id for record in records}
        assert await found_ids(store, RecordQuery()) == [winner]
        for record in records:
            if record.id != winner:
                assert await store.get(record.id) is None

    async def test_existing_record_returned_for_key_has_its_history(self, store: Store) -> None:
        first = await store.add(make_record(idempotency_key="k"))
        assert await store.update(first.id, RecordUpdate(status=Status.RETRYING, attempt=make_attempt(1)))
        again = await store.add(make_record(idempotency_key="k"))
        assert again.id == first.id
        assert again.status is Status.RETRYING
        assert [a.number for a in again.history] == [1]

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
