"""MailQueue (the client) on in-memory backends: what submit keeps and refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailqueue import (
    Attachment,
    AttachmentNotFoundError,
    AttachmentRef,
    Mail,
    MailQueue,
    MailRecord,
    RecordQuery,
    StoreError,
    ValidationError,
)
from mailqueue.backends.memory import MemoryQueue
from mailqueue.protocols import ResourceMixin
from mailqueue.records import RecordUpdate, utcnow
from mailqueue.stores.memory import MemoryAttachmentStore, MemoryStore


@pytest.mark.parametrize("bad", ["key\r\nX-Evil: 1", "k" * 256, "two words"])
async def test_submit_validates_the_idempotency_key(bad: str) -> None:
    async with MailQueue.from_urls(store="memory://", queue="memory://", attachments="memory://") as mq:
        mail = Mail(subject="s", html="h", to=[{"address": "a@example.com"}])
        with pytest.raises(ValidationError) as info:
            await mq.submit(mail, [Attachment("a.txt", b"abc", "text/plain")], idempotency_key=bad)
        assert info.value.field == "idempotency_key"
        assert await mq.store.find(RecordQuery()) == []
        assert await mq.queue.depth() == 0


async def test_submit_sets_message_id_once_from_the_domain() -> None:
    async with MailQueue.from_urls(
        store="memory://", queue="memory://", attachments="memory://", message_id_domain="mail.example.com"
    ) as mq:
        record = await mq.submit(Mail(subject="s", html="h", to=[{"address": "a@example.com"}]))
        assert record.mail.message_id == f"<{record.id}@mail.example.com>"
        assert (await mq.status(record.id)).mail.message_id == record.mail.message_id  # type: ignore[union-attr]
        assert await mq.queue.depth() == 1


async def test_bad_attachment_name_keeps_nothing() -> None:
    async with MailQueue.from_urls(store="memory://", queue="memory://", attachments="memory://") as mq:
        mail = Mail(subject="s", html="h", to=[{"address": "a@example.com"}])
        with pytest.raises(ValidationError) as info:
            await mq.submit(mail, [Attachment("ok.txt", b"1"), Attachment("bad\r\nname.txt", b"2")])
        assert info.value.field == "attachment.filename"
        assert await mq.store.find(RecordQuery()) == []
        assert repr(mq.attachments) == "MemoryAttachmentStore(attachments=0)"


async def test_a_repeat_after_an_unconfirmed_publish_queues_the_mail() -> None:
    from mailqueue import QueueError, Status
    from mailqueue.client import PUBLISH_PENDING

    async with MailQueue.from_urls(store="memory://", queue="memory://", attachments="memory://") as mq:
        mail = Mail(subject="s", html="h", to=[{"address": "a@example.com"}])
        await mq.queue.close()  # the queue cannot confirm
        with pytest.raises(QueueError):
            await mq.submit(mail, idempotency_key="order-9")
        (record,) = await mq.store.find(RecordQuery())
        assert record.status is Status.QUEUED
        assert record.last_error.startswith(PUBLISH_PENDING)
        # still down: the repeat must not pretend success
        with pytest.raises(QueueError):
            await mq.submit(mail, idempotency_key="order-9")
        await mq.queue.open()
        again = await mq.submit(mail, idempotency_key="order-9")
        assert again.id == record.id
        assert await mq.queue.depth() == 1
        assert (await mq.status(record.id)).last_error == ""  # type: ignore[union-attr]
        # published now: a further repeat publishes nothing more
        await mq.submit(mail, idempotency_key="order-9")
        assert await mq.queue.depth() == 1


@pytest.fixture(params=["memory", "sqlite", "mysql"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


async def test_sweep_publishes_the_mails_whose_publish_failed(store_url: str) -> None:
    from mailqueue import QueueError, Status
    from mailqueue.client import PUBLISH_PENDING

    async with MailQueue.from_urls(store=store_url, queue="memory://", attachments="memory://") as mq:

        def mail(n: int) -> Mail:
            return Mail(subject=f"s{n}", html="h", to=[{"address": f"a{n}@example.com"}])

        published = await mq.submit(mail(0))
        await mq.queue.close()  # the broker is down: three submits fail after the record exists
        for n in range(1, 4):
            with pytest.raises(QueueError):
                await mq.submit(mail(n))
        failed = [r for r in await mq.store.find(RecordQuery()) if r.id != published.id]
        assert len(failed) == 3
        assert all(r.last_error.startswith(PUBLISH_PENDING) for r in failed)
        # still down: the sweep says so and changes nothing
        with pytest.raises(QueueError):
            await mq.sweep(older_than=0)
        await mq.queue.open()
        assert await mq.queue.depth() == 1  # only the mail published before the outage
        # too recent for this sweep (a submit may still be publishing)
        assert await mq.sweep(older_than=3600) == 0
        # one record per page: every page is visited
        assert await mq.sweep(older_than=0, page=1) == 3
        assert await mq.queue.depth() == 4
        for record in failed:
            now = await mq.status(record.id)
            assert now is not None
            assert (now.status, now.last_error) == (Status.QUEUED, "")
        # nothing left to sweep: nothing is published twice
        assert await mq.sweep(older_than=0) == 0
        assert await mq.queue.depth() == 4


class _CommitAnswerLost(MemoryStore):
    """A Store whose ``add`` commits, then fails as if the answer to the COMMIT was lost."""

    lose = True

    async def add(self, record: MailRecord) -> MailRecord:
        added = await super().add(record)
        if self.lose:
            self.lose = False
            raise StoreError("lost connection to the database during COMMIT")
        return added


async def test_a_repeat_after_a_lost_commit_answer_queues_the_mail_once() -> None:
    """The first submit failed not knowing its record was committed; a repeat
    with the key must publish it (or its 200 would be a false one), once."""
    from mailqueue.client import SUBMIT_GRACE

    store = _CommitAnswerLost()
    async with MailQueue(store=store, queue=MemoryQueue(), attachments=MemoryAttachmentStore()) as mq:
        mail = Mail(subject="s", html="h", to=[{"address": "a@example.com"}])
        with pytest.raises(StoreError):
            await mq.submit(mail, idempotency_key="order-10")
        assert await mq.queue.depth() == 0
        again = await mq.submit(mail, idempotency_key="order-10")
        returned = utcnow()
        # it waited for the first submit to publish, in case it was still at it: until
        # SUBMIT_GRACE after the record was made (not after this repeat began, which on a
        # busy machine can be well after the record)
        recorded = await mq.status(mail.id)
        assert recorded is not None
        assert (returned - recorded.created_at).total_seconds() >= SUBMIT_GRACE
        assert again.id == mail.id
        assert await mq.queue.depth() == 1
        assert (await mq.status(mail.id)).last_error == ""  # type: ignore[union-attr]
        await mq.submit(mail, idempotency_key="order-10")
        assert await mq.queue.depth() == 1


@pytest.fixture(params=["sqlite", "mysql"])
def sql_store_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


async def test_concurrent_submits_are_committed_together_and_each_is_queued(sql_store_url: str) -> None:
    """Group commit: every submit returns only once its own record is committed and published;
    the "not yet published" marks are cleared afterwards, in batches."""
    import asyncio

    from mailqueue import Status
    from mailqueue.client import PUBLISH_PENDING

    async with MailQueue.from_urls(store=sql_store_url, queue="memory://", attachments="memory://") as mq:
        batches: list[int] = []
        add_many = mq.store.add_many  # type: ignore[attr-defined]

        async def counting(records: list[MailRecord]) -> list[MailRecord]:
            batches.append(len(records))
            result: list[MailRecord] = await add_many(records)
            return result

        mq.store.add_many = counting  # type: ignore[attr-defined]
        mails = [Mail(subject=f"s{n}", html="h", to=[{"address": f"a{n}@example.com"}]) for n in range(40)]
        records = await asyncio.gather(*(mq.submit(mail) for mail in mails))
        assert [r.id for r in records] == [m.id for m in mails]
        assert all(r.last_error == "" for r in records)
        assert await mq.queue.depth() == 40
        assert max(batches) > 1  # some records shared a transaction
        stored = await mq.store.find(RecordQuery(limit=100))
        assert sorted(r.id for r in stored) == sorted(m.id for m in mails)
        assert all(r.status is Status.QUEUED for r in stored)
        # nothing to sweep: the marks are cleared (the sweep waits for pending clears)
        assert await mq.sweep(older_than=0) == 0
        assert not any(r.last_error.startswith(PUBLISH_PENDING) for r in await mq.store.find(RecordQuery()))
        assert await mq.queue.depth() == 40


async def test_a_taken_id_in_a_group_commit_fails_only_its_own_submit(sql_store_url: str) -> None:
    import asyncio

    async with MailQueue.from_urls(store=sql_store_url, queue="memory://", attachments="memory://") as mq:
        first = await mq.submit(Mail(subject="s", html="h", to=[{"address": "a@example.com"}]))
        again = Mail(id=first.id, subject="s", html="h", to=[{"address": "a@example.com"}])
        others = [Mail(subject=f"s{n}", html="h", to=[{"address": f"a{n}@example.com"}]) for n in range(10)]
        results = await asyncio.gather(
            *(mq.submit(m) for m in [*others[:5], again, *others[5:]]), return_exceptions=True
        )
        assert isinstance(results[5], StoreError)
        assert [r.id for r in results if isinstance(r, MailRecord)] == [m.id for m in others]
        assert await mq.queue.depth() == 11
        assert len(await mq.store.find(RecordQuery(limit=100))) == 11


async def test_resend_narrows_by_recipient_subject_and_code(store_url: str) -> None:
    from mailqueue import RecordUpdate, Status

    async with MailQueue.from_urls(store=store_url, queue="memory://", attachments="memory://") as mq:

        async def failed(subject: str, address: str, code: int) -> str:
            record = await mq.submit(Mail(subject=subject, html="h", to=[{"address": address}]))
            assert await mq.store.update(record.id, RecordUpdate(status=Status.FAILED, last_code=code))
            return record.id

        bounced = await failed("Your invoice", "Ann@Example.com", 550)
        other_code = await failed("Your invoice", "ann@example.com", 554)
        other_subject = await failed("Welcome", "ann@example.com", 550)
        other_address = await failed("Your invoice", "bob@example.com", 550)
        depth = await mq.queue.depth()

        picked = mq.select(statuses=[Status.FAILED], recipient="ANN@", subject="INVOICE", code=550)
        assert [r.id async for r in picked] == [bounced]
        dry = await mq.resend(recipient="ANN@", subject="INVOICE", code=550, dry_run=True)
        assert [r.id for r in dry] == [bounced]
        assert await mq.queue.depth() == depth
        done = await mq.resend(recipient="ANN@", subject="INVOICE", code=550)
        assert [r.id for r in done] == [bounced]
        assert await mq.queue.depth() == depth + 1
        statuses = {}
        for mail_id in (bounced, other_code, other_subject, other_address):
            record = await mq.status(mail_id)
            assert record is not None
            statuses[mail_id] = record.status
        assert statuses == {
            bounced: Status.QUEUED,
            other_code: Status.FAILED,
            other_subject: Status.FAILED,
            other_address: Status.FAILED,
        }


async def test_delete_marks_the_mail_deleted_and_hides_it(store_url: str) -> None:
    from mailqueue import RecordUpdate, Status

    async with MailQueue.from_urls(store=store_url, queue="memory://", attachments="memory://") as mq:
        gone = await mq.submit(Mail(subject="s", html="h", to=[{"address": "a@example.com"}]))
        kept = await mq.submit(Mail(subject="s", html="h", to=[{"address": "b@example.com"}]))
        for record in (gone, kept):
            assert await mq.store.update(record.id, RecordUpdate(status=Status.FAILED))
        depth = await mq.queue.depth()

        assert await mq.delete(gone.id) is True
        record = await mq.status(gone.id)
        assert record is not None
        assert record.is_deleted
        assert record.status is Status.FAILED  # the row stays as it was, only marked
        assert [r.id async for r in mq.select(statuses=[Status.FAILED])] == [kept.id]
        assert [r.id for r in await mq.resend()] == [kept.id]
        assert await mq.queue.depth() == depth + 1
        assert await mq.delete("0" * 32) is False


class _PlainStore(ResourceMixin):
    """A Store with the required methods only: it cannot count (no InspectableStore)."""

    def __init__(self) -> None:
        self._records = MemoryStore()

    async def open(self) -> None:
        await self._records.open()

    async def close(self) -> None:
        await self._records.close()

    async def add(self, record: MailRecord) -> MailRecord:
        return await self._records.add(record)

    async def get(self, mail_id: str) -> MailRecord | None:
        return await self._records.get(mail_id)

    async def find(self, query: RecordQuery) -> list[MailRecord]:
        return await self._records.find(query)

    async def update(self, mail_id: str, change: RecordUpdate) -> bool:
        return await self._records.update(mail_id, change)

    async def ping(self) -> None:
        await self._records.ping()


async def test_reads_for_a_dashboard_count_when_the_store_can(store_url: str) -> None:
    from datetime import timedelta

    from mailqueue import Status

    async with MailQueue.from_urls(store=store_url, queue="memory://", attachments="memory://") as mq:
        assert mq.can_count
        ids = [
            (await mq.submit(Mail(subject=f"s{n}", html="h", to=[{"address": "a@example.com"}]))).id
            for n in range(3)
        ]
        assert await mq.store.update(ids[0], RecordUpdate(status=Status.FAILED))
        assert await mq.delete(ids[2])
        page = await mq.find(RecordQuery(limit=2, include_deleted=True))
        # newest first: ids sort by creation time, to the millisecond (same-millisecond ids at random)
        assert [r.id for r in page] == sorted(ids, reverse=True)[:2]
        assert await mq.count(RecordQuery(statuses=frozenset({Status.QUEUED, Status.FAILED}))) == 2
        assert await mq.count(RecordQuery(), cap=1) == 1
        counts = await mq.count_by_status()
        assert counts == dict.fromkeys(Status, 0) | {Status.QUEUED: 1, Status.FAILED: 1}
        assert list(counts) == list(Status)
        activity = await mq.activity(since=utcnow() - timedelta(hours=1), bucket=timedelta(hours=1))
        assert activity is not None
        assert sum(b.accepted for b in activity) == 3


async def test_reads_for_a_dashboard_say_none_when_the_store_cannot_count() -> None:
    from datetime import timedelta

    mq = MailQueue(store=_PlainStore(), queue=MemoryQueue(), attachments=MemoryAttachmentStore())
    async with mq:
        record = await mq.submit(Mail(subject="s", html="h", to=[{"address": "a@example.com"}]))
        assert not mq.can_count
        assert [r.id for r in await mq.find(RecordQuery())] == [record.id]
        assert await mq.count(RecordQuery()) is None
        assert await mq.count_by_status() is None
        assert await mq.activity(since=utcnow(), bucket=timedelta(hours=1)) is None


@pytest.fixture(params=["memory", "file", "sql-sqlite"])
def attachments_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An AttachmentStore URL: in memory, on disk, or in a SQLite database (the sql store)."""
    if request.param == "memory":
        return "memory://"
    if request.param == "file":
        return f"file://{tmp_path / 'attachments'}"
    return "sql://"


async def _client(attachments_url: str, tmp_path: Path) -> MailQueue:
    store = f"sqlite+aiosqlite:///{tmp_path / 'mailqueue.db'}" if attachments_url == "sql://" else "memory://"
    return MailQueue.from_urls(store=store, queue="memory://", attachments=attachments_url)


async def _stored(mq: MailQueue, ref: AttachmentRef) -> bytes:
    return b"".join([chunk async for chunk in await mq.open_attachment(ref)])


async def test_open_attachment_streams_the_bytes_of_a_mail_attachment(
    attachments_url: str, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 4000  # 1 MB: several chunks
    async with await _client(attachments_url, tmp_path) as mq:
        record = await mq.submit(
            Mail(subject="s", html="h", to=[{"address": "a@example.com"}]),
            [Attachment("big.bin", data), Attachment("empty.txt", b"", "text/plain")],
        )
        big, empty = record.mail.attachments
        assert await _stored(mq, big) == data
        assert await _stored(mq, empty) == b""
        assert await mq.has_attachment(big)
        assert await mq.has_attachment(empty)
        # closed after the first chunk: the store is left as it was, the bytes readable again
        chunks = await mq.open_attachment(big)
        assert len(await anext(chunks)) > 0
        await chunks.aclose()
        assert await _stored(mq, big) == data


async def test_a_deleted_attachment_is_missing_when_opened_not_at_its_first_chunk(
    attachments_url: str, tmp_path: Path
) -> None:
    async with await _client(attachments_url, tmp_path) as mq:
        kept, gone = [await mq.store_attachment(Attachment(f"{n}.txt", b"text")) for n in "ab"]
        assert await mq.discard_attachments([gone]) == []
        with pytest.raises(AttachmentNotFoundError):
            await mq.open_attachment(gone)
        assert await mq.has_attachment(gone) is False
        assert await mq.has_attachment(kept) is True
        assert await mq.discard_attachments([gone, kept]) == []  # a missing one is no failure
        assert await mq.has_attachment(kept) is False


async def test_discard_attachments_keeps_going_and_returns_those_it_could_not_delete(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with MailQueue.from_urls(store="memory://", queue="memory://", attachments="memory://") as mq:
        first, second = [await mq.store_attachment(Attachment(f"{n}.txt", b"text")) for n in "ab"]
        await mq.attachments.close()  # a closed memory store refuses to delete, and keeps its data
        assert await mq.discard_attachments([first, second]) == [first, second]
        assert caplog.text.count("could not delete attachment key=") == 2
        await mq.attachments.open()
        assert await mq.has_attachment(first)
        assert await mq.has_attachment(second)
        assert await mq.discard_attachments([first, second]) == []
        assert not await mq.has_attachment(first)
