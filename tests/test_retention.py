"""Recovery and retention on real stores: mails stuck ``sending``, old
attachments and orphaned uploads, soft and hard pruning of records.

Each test runs on SQLite, MariaDB and PostgreSQL (store, ``sql`` queue and
``sql`` attachment store in one database); the attachment tests also on the
``file`` attachment store. The re-send scenario delivers through a real
worker to an in-process aiosmtpd server.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import secrets
import sys
from collections.abc import AsyncIterable, AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailqueue import (
    Attachment,
    Mail,
    MailQueue,
    MailRecord,
    Recipient,
    RetentionSettings,
    Status,
    Worker,
    WorkerSettings,
)
from mailqueue.backends.memory import MemoryQueue
from mailqueue.backends.smtp import SMTPSender
from mailqueue.errors import AttachmentNotFoundError, ConfigurationError
from mailqueue.protocols import (
    AttachmentStore,
    BackendContext,
    ListableAttachmentStore,
    PrunableStore,
    ResourceMixin,
    Store,
    StoredAttachment,
)
from mailqueue.records import FINISHED, IN_FLIGHT, Attempt, RecordQuery, RecordUpdate, utcnow
from mailqueue.sql import schema
from mailqueue.sql.attachments import SQLAttachmentStore
from mailqueue.sql.queue import SQLQueue
from mailqueue.sql.store import SQLStore
from mailqueue.stores.disk import FileAttachmentStore
from mailqueue.stores.memory import MemoryAttachmentStore, MemoryStore
from mailqueue.testing.smtpd import Fault, SMTPTestServer

DATABASES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("mysql", id="mysql", marks=pytest.mark.mysql),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]
HOUR = timedelta(hours=1)


def mail(subject: str = "Hello", attachments: tuple[object, ...] = ()) -> Mail:
    """A mail as ``submit`` records it (its Message-ID fixed)."""
    return Mail(
        message_id=f"<{secrets.token_hex(8)}@example.com>",
        subject=subject,
        html="<p>Hi</p>",
        to=[Recipient(address="to@example.com")],
        attachments=attachments,
    )


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture(params=["sql", "file"])
def attachment_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


async def _open(db_url: str, attachments_url: str) -> MailQueue:
    store = SQLStore.from_url(db_url)
    context = BackendContext(store=store)
    attachments: AttachmentStore
    if attachments_url == "sql://":
        attachments = SQLAttachmentStore.from_url(attachments_url, context=context)
    else:
        attachments = FileAttachmentStore.from_url(attachments_url, context=context)
    mq = MailQueue(
        store=store,
        queue=SQLQueue.from_url("sql://?poll=0.05", context=context),
        attachments=attachments,
        message_id_domain="example.com",
    )
    await mq.open()
    return mq


@pytest.fixture
async def mq(db_url: str) -> AsyncIterator[MailQueue]:
    """Store, ``sql`` queue and ``sql`` attachments in one database."""
    queue = await _open(db_url, "sql://")
    yield queue
    await queue.close()


@pytest.fixture
async def mq_files(db_url: str, attachment_kind: str, tmp_path: Path) -> AsyncIterator[MailQueue]:
    """As ``mq``, with attachments in the database or in a folder."""
    url = "sql://" if attachment_kind == "sql" else f"file://{tmp_path / 'attachments'}?fsync=false"
    queue = await _open(db_url, url)
    yield queue
    await queue.close()


async def add(
    mq: MailQueue, status: Status, *, age: timedelta = timedelta(0), **fields: object
) -> MailRecord:
    """A record in ``status``, accepted and last changed ``age`` ago."""
    when = utcnow() - age
    record = MailRecord.new(fields.pop("mail", None) or mail())  # type: ignore[arg-type]
    return await mq.store.add(record.evolve(status=status, created_at=when, updated_at=when, **fields))


async def stored(mq: MailQueue, data: bytes = b"%PDF-1.4 data") -> Attachment:
    ref = await mq.store_attachment(Attachment("a.pdf", data, "application/pdf"))
    return ref  # type: ignore[return-value]


async def exists(mq: MailQueue, key: str) -> bool:
    try:
        async for _ in mq.attachments.read(key):
            pass
    except AttachmentNotFoundError:
        return False
    return True


async def queued_messages(mq: MailQueue) -> int:
    depth = await mq.queue.depth()
    assert depth is not None
    return depth


# --- mails stuck sending ---------------------------------------------------------


async def test_stale_sending_becomes_unknown_with_a_reason(mq: MailQueue) -> None:
    stuck = await add(mq, Status.SENDING, age=HOUR)
    live = await add(mq, Status.SENDING, age=timedelta(seconds=5))
    assert await mq.sweep_stale(older_than=600, action="unknown") == 1
    got = await mq.status(stuck.id)
    assert got is not None
    assert got.status is Status.UNKNOWN
    assert "presumed dead" in got.last_error
    assert "mailqueue resend --status unknown" in got.last_error
    assert [a.outcome for a in got.history] == ["unknown"]
    assert got.attempts == 1
    untouched = await mq.status(live.id)
    assert untouched is not None
    assert untouched.status is Status.SENDING
    assert untouched.history == ()
    assert await queued_messages(mq) == 0, "unknown must not be re-sent automatically"
    assert await mq.sweep_stale(older_than=600, action="unknown") == 0


async def test_stale_sweep_loses_the_race_to_a_worker_that_claims_the_mail(mq: MailQueue) -> None:
    stuck = await add(mq, Status.SENDING, age=HOUR)
    (seen,) = await mq.store.find(RecordQuery(ids=(stuck.id,)))
    # a worker takes the mail up again between the sweep's read and its update
    assert await mq.store.update(stuck.id, RecordUpdate(status=Status.SENDING, expect=frozenset(IN_FLIGHT)))
    assert await mq.maintenance.settle_stale(seen, "unknown") is False
    assert await mq.maintenance.settle_stale(seen, "resend") is False
    got = await mq.status(stuck.id)
    assert got is not None
    assert got.status is Status.SENDING
    assert got.history == ()


async def test_only_sending_records_are_swept(mq: MailQueue) -> None:
    for status in Status:
        if status is not Status.SENDING:
            await add(mq, status, age=HOUR)
    assert await mq.sweep_stale(older_than=60, action="unknown") == 0
    assert await mq.sweep_stale(older_than=60, action="resend") == 0


async def test_stale_sending_resent_is_delivered_exactly_once(mq: MailQueue) -> None:
    stuck = await add(
        mq, Status.SENDING, age=HOUR, mail=mail("Stuck").model_copy(update={"message_id": "<x@y>"})
    )
    async with SMTPTestServer() as server:
        sender = SMTPSender.from_url(server.url(from_address="noreply@example.com", timeout="2"))
        await sender.open()
        settings = WorkerSettings(sweep_interval=0, retry_base=0.05, sending_lease=60)
        worker = Worker(
            queue=mq.queue, store=mq.store, attachments=mq.attachments, sender=sender, settings=settings
        )
        assert await mq.sweep_stale(older_than=120, action="resend") == 1
        # a second sweep (another worker's) finds nothing more to do
        assert await mq.sweep_stale(older_than=120, action="resend") == 0
        task = asyncio.create_task(worker.run())
        try:
            deadline = asyncio.get_running_loop().time() + 15
            while (got := await mq.status(stuck.id)) is not None and not got.status.final:
                assert asyncio.get_running_loop().time() < deadline, got
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # room for a duplicate to show up, if there were one
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
            await sender.close()
        assert got is not None
        assert got.status is Status.SENT
        assert [a.outcome for a in got.history] == ["unknown", "sent"]
        assert len(server.messages) == 1
        received = email.message_from_bytes(server.messages[0].data, policy=email.policy.default)
        assert received["Message-ID"] == stuck.mail.message_id


async def test_worker_sweep_loop_settles_stale_sending_after_twice_the_lease(mq: MailQueue) -> None:
    stuck = await add(mq, Status.SENDING, age=timedelta(seconds=60))
    settings = WorkerSettings(sweep_interval=0.05, sending_lease=1)
    async with SMTPTestServer() as server:
        sender = SMTPSender.from_url(server.url(from_address="noreply@example.com"))
        await sender.open()
        worker = Worker(
            queue=mq.queue, store=mq.store, attachments=mq.attachments, sender=sender, settings=settings
        )
        task = asyncio.create_task(worker.run())
        started = asyncio.get_running_loop().time()
        try:
            await asyncio.sleep(1.0)
            # the worker has not run for 2 x sending_lease yet: no verdict
            early = await mq.status(stuck.id)
            assert early is not None
            assert early.status is Status.SENDING
            while (got := await mq.status(stuck.id)) is not None and got.status is Status.SENDING:
                assert asyncio.get_running_loop().time() - started < 10
                await asyncio.sleep(0.05)
            took = asyncio.get_running_loop().time() - started
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
            await sender.close()
    assert got is not None
    assert got.status is Status.UNKNOWN
    assert took >= 1.9
    assert worker.counts["stale"] == 1
    assert server.messages == []


# --- pruning records --------------------------------------------------------------------


async def test_prune_soft_then_hard_never_touches_mails_in_flight(mq: MailQueue) -> None:
    old = timedelta(days=40)
    pruned: dict[Status, MailRecord] = {}
    for status in sorted(FINISHED):
        ref = await stored(mq, status.value.encode())
        pruned[status] = await add(
            mq,
            status,
            age=old,
            mail=mail(status.value, attachments=(ref,)),
            history=(Attempt(1, utcnow() - old, utcnow() - old, "transient", 451, "later"),),
        )
    in_flight = [await add(mq, status, age=old) for status in sorted(IN_FLIGHT)]
    recent = await add(mq, Status.SENT, age=timedelta(days=1))

    assert await mq.prune(older_than=30 * 86400, dry_run=True) == len(FINISHED)
    assert await mq.prune(older_than=30 * 86400, statuses=[Status.FAILED], dry_run=True) == 1
    assert await mq.prune(older_than=30 * 86400, page=3) == len(FINISHED)
    assert await mq.prune(older_than=30 * 86400) == 0
    listed = {r.id async for r in mq.select()}
    assert listed == {r.id for r in [*in_flight, recent]}
    assert await mq.resend(statuses=[Status.FAILED, Status.DEAD], dry_run=True) == []
    soft = await mq.status(pruned[Status.SENT].id)
    assert soft is not None
    assert soft.is_deleted
    assert soft.status is Status.SENT

    with pytest.raises(ConfigurationError, match="never pruned"):
        await mq.prune(older_than=0, statuses=[Status.SENT, Status.QUEUED])
    assert await mq.prune(older_than=30 * 86400, hard=True, dry_run=True) == len(FINISHED)
    assert await mq.prune(older_than=30 * 86400, hard=True, page=3) == len(FINISHED)
    for record in pruned.values():
        assert await mq.status(record.id) is None
        assert not await exists(mq, record.mail.attachments[0].key)
    for record in [*in_flight, recent]:
        assert await mq.status(record.id) is not None
    assert isinstance(mq.store, SQLStore)
    async with mq.store.engine.connect() as connection:
        attempts = (
            await connection.execute(sa.select(sa.func.count()).select_from(schema.email_attempt))
        ).scalar()
    assert attempts == 0


async def test_prune_skips_a_record_changed_since_it_was_read(mq: MailQueue) -> None:
    record = await add(mq, Status.FAILED, age=timedelta(days=40))
    assert isinstance(mq.store, SQLStore)
    # re-sent between the listing and the delete: the DELETE's own status check keeps it
    await mq.store.update(record.id, RecordUpdate(status=Status.QUEUED))
    assert await mq.store.delete_records([record.id], statuses=FINISHED) == []
    assert await mq.status(record.id) is not None


# --- attachments --------------------------------------------------------------------------


async def test_orphaned_upload_is_swept_only_once_old_enough(mq_files: MailQueue) -> None:
    mq = mq_files
    orphan = await stored(mq, b"orphan")
    used = await stored(mq, b"used")
    record = await add(mq, Status.QUEUED, mail=mail(attachments=(used,)))
    swept = await mq.sweep_attachments(attachments_after=None, orphans_after=30)
    assert (swept.finished, swept.orphans) == (0, 0)
    await asyncio.sleep(1.2)
    dry = await mq.sweep_attachments(attachments_after=None, orphans_after=1, dry_run=True)
    assert (dry.orphans, dry.kept) == (1, 1)
    assert await exists(mq, orphan.key)
    swept = await mq.sweep_attachments(attachments_after=None, orphans_after=1)
    assert (swept.finished, swept.orphans, swept.kept) == (0, 1, 1)
    assert not await exists(mq, orphan.key)
    assert await exists(mq, used.key), f"attachment of queued mail {record.id} must stay"


_CRASHING_UPLOAD = """
import asyncio, sys
from mailqueue.protocols import BackendContext
from mailqueue.stores.disk import FileAttachmentStore
from mailqueue.sql.store import SQLStore
from mailqueue.sql.attachments import SQLAttachmentStore

async def main(db_url, attachments_url):
    store = SQLStore.from_url(db_url)
    context = BackendContext(store=store)
    kind = SQLAttachmentStore if attachments_url == "sql://" else FileAttachmentStore
    attachments = kind.from_url(attachments_url, context=context)
    await store.open()
    await attachments.open()

    async def chunks():
        yield b"x" * (4 << 20)  # more than one chunk of either store
        print("writing", flush=True)
        await asyncio.sleep(3600)

    await attachments.put(chunks())

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_upload_cut_by_a_crash_is_swept_once_old_enough(
    mq_files: MailQueue, db_url: str, attachment_kind: str, tmp_path: Path
) -> None:
    mq = mq_files
    url = "sql://" if attachment_kind == "sql" else f"file://{tmp_path / 'attachments'}?fsync=false"
    # an API process killed in the middle of an upload: nothing of it is ever cleaned up by itself
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CRASHING_UPLOAD, db_url, url, stdout=asyncio.subprocess.PIPE
    )
    assert writer.stdout is not None
    assert await asyncio.wait_for(writer.stdout.readline(), 30) == b"writing\n"
    await asyncio.sleep(0.3)  # the first chunk is handed to the store
    writer.kill()
    await writer.wait()
    young = await mq.sweep_attachments(attachments_after=None, orphans_after=30)
    assert young.incomplete == 0
    await asyncio.sleep(1.2)
    dry = await mq.sweep_attachments(attachments_after=None, orphans_after=1, dry_run=True)
    assert dry.incomplete == 0, "a dry run removes nothing"
    swept = await mq.sweep_attachments(attachments_after=None, orphans_after=1)
    assert swept.incomplete == 1
    again = await mq.sweep_attachments(attachments_after=None, orphans_after=1)
    assert again.incomplete == 0


async def test_finished_mails_attachments_are_swept_pending_ones_kept(mq_files: MailQueue) -> None:
    mq = mq_files
    refs = {status: await stored(mq, status.value.encode()) for status in Status}
    records = {status: await add(mq, status, mail=mail(attachments=(ref,))) for status, ref in refs.items()}
    # a soft-deleted finished mail's attachment goes too
    await mq.store.update(records[Status.DEAD].id, RecordUpdate(is_deleted=True))
    await asyncio.sleep(1.1)
    kept = await mq.sweep_attachments(attachments_after=3600, orphans_after=None)
    assert (kept.finished, kept.orphans) == (0, 0)
    swept = await mq.sweep_attachments(attachments_after=0.5, orphans_after=0.5)
    assert (swept.finished, swept.orphans, swept.kept) == (len(FINISHED), 0, len(IN_FLIGHT))
    for status, ref in refs.items():
        assert await exists(mq, ref.key) is (status in IN_FLIGHT), status


async def test_worker_applies_retention_from_its_sweep_loop(mq_files: MailQueue) -> None:
    mq = mq_files
    orphan = await stored(mq, b"orphan")
    done_ref = await stored(mq, b"done")
    waiting_ref = await stored(mq, b"waiting")
    done = await add(mq, Status.FAILED, age=timedelta(days=2), mail=mail(attachments=(done_ref,)))
    waiting = await add(mq, Status.RETRYING, age=timedelta(days=2), mail=mail(attachments=(waiting_ref,)))
    await asyncio.sleep(1.1)
    keep = RetentionSettings(interval=0.2, attachments_after=1, orphans_after=1, records_after=86400)
    async with SMTPTestServer() as server:
        sender = SMTPSender.from_url(server.url(from_address="noreply@example.com"))
        await sender.open()
        worker = Worker(
            queue=mq.queue,
            store=mq.store,
            attachments=mq.attachments,
            sender=sender,
            settings=WorkerSettings(sweep_interval=0.05),
            retention=keep,
        )
        task = asyncio.create_task(worker.run())
        try:
            deadline = asyncio.get_running_loop().time() + 20
            # a pass removes attachments first, then soft-deletes records: wait for both
            while (
                await exists(mq, orphan.key)
                or await exists(mq, done_ref.key)
                or not getattr(await mq.status(done.id), "is_deleted", False)
            ):
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
            await sender.close()
    assert await exists(mq, waiting_ref.key)
    gone = await mq.status(done.id)
    assert gone is not None
    assert gone.is_deleted
    kept = await mq.status(waiting.id)
    assert kept is not None
    assert not kept.is_deleted


# --- backends without the optional capabilities -------------------------------------------


class PlainStore(ResourceMixin):
    """A third-party Store with the five contract methods only (no ``delete_records``)."""

    def __init__(self) -> None:
        self.inner = MemoryStore()

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def add(self, record: MailRecord) -> MailRecord:
        return await self.inner.add(record)

    async def get(self, mail_id: str) -> MailRecord | None:
        return await self.inner.get(mail_id)

    async def find(self, query: RecordQuery) -> list[MailRecord]:
        return await self.inner.find(query)

    async def update(self, mail_id: str, change: RecordUpdate) -> bool:
        return await self.inner.update(mail_id, change)

    async def ping(self) -> None:
        await self.inner.ping()


class PlainAttachments(ResourceMixin):
    """A third-party AttachmentStore without ``list_keys``."""

    def __init__(self) -> None:
        self.inner = MemoryAttachmentStore()

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> StoredAttachment:
        return await self.inner.put(chunks, max_bytes=max_bytes)

    def read(self, key: str) -> AsyncIterator[bytes]:
        return self.inner.read(key)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)


async def test_backends_without_optional_capabilities_keep_working() -> None:
    store, attachments = PlainStore(), PlainAttachments()
    assert isinstance(store, Store)
    assert not isinstance(store, PrunableStore)
    assert isinstance(attachments, AttachmentStore)
    assert not isinstance(attachments, ListableAttachmentStore)
    async with MailQueue(store=store, queue=MemoryQueue(), attachments=attachments) as plain:
        ref = await stored(plain, b"kept")
        old = await add(plain, Status.SENT, age=timedelta(days=40), mail=mail(attachments=(ref,)))
        live = await add(plain, Status.QUEUED, age=timedelta(days=40))
        assert await plain.prune(older_than=86400, dry_run=True) == 1
        assert await plain.prune(older_than=86400) == 1
        got = await plain.status(old.id)
        assert got is not None
        assert got.is_deleted
        with pytest.raises(ConfigurationError, match="cannot delete records"):
            await plain.prune(older_than=86400, hard=True)
        swept = await plain.sweep_attachments(attachments_after=0, orphans_after=0)
        assert not swept.supported
        assert await exists(plain, ref.key)
        still = await plain.status(live.id)
        assert still is not None
        assert not still.is_deleted


@pytest.mark.slow
async def test_a_slow_live_send_is_never_taken_for_stale(mq: MailQueue) -> None:
    # the server takes 1 s to accept the data (MariaDB may show 2 s: it keeps
    # whole seconds); the sweep (every 0.05 s) only touches mails sending for
    # 2 x sending_lease = 3 s
    settings = WorkerSettings(sweep_interval=0.05, sending_lease=1.5, stale_sending="resend")
    # ... while a mail really stuck is re-sent by the same sweep
    stuck = await add(mq, Status.SENDING, age=timedelta(seconds=60), mail=mail("Stuck"))
    async with SMTPTestServer(faults=[Fault("data_end", stall=1.0, times=None)]) as server:
        sender = SMTPSender.from_url(server.url(from_address="noreply@example.com", timeout="10"))
        await sender.open()
        worker = Worker(
            queue=mq.queue, store=mq.store, attachments=mq.attachments, sender=sender, settings=settings
        )
        task = asyncio.create_task(worker.run())
        try:
            record = await mq.submit(mail("Slow"))
            deadline = asyncio.get_running_loop().time() + 15
            seen_sending = False
            while (got := await mq.status(record.id)) is not None and not got.status.final:
                seen_sending = seen_sending or got.status is Status.SENDING
                assert asyncio.get_running_loop().time() < deadline, got
                await asyncio.sleep(0.05)
            # the stuck one is judged once the worker has run for 2 x sending_lease
            while (other := await mq.status(stuck.id)) is not None and other.status is not Status.SENT:
                assert asyncio.get_running_loop().time() < deadline, other
                await asyncio.sleep(0.05)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
            await sender.close()
    assert seen_sending
    assert got is not None
    assert got.status is Status.SENT
    assert [a.outcome for a in got.history] == ["sent"]
    resent = await mq.status(stuck.id)
    assert resent is not None
    assert [a.outcome for a in resent.history] == ["unknown", "sent"]
    subjects = sorted(
        str(email.message_from_bytes(m.data, policy=email.policy.default)["Subject"]) for m in server.messages
    )
    assert subjects == ["Slow", "Stuck"]
    assert worker.counts["stale"] == 1
