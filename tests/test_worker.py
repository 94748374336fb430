"""The worker end to end: MailQueue.submit -> queue -> Worker -> real SMTP server -> Store.

Each scenario runs on in-memory queue/store/attachments (honest backends
that pass the conformance suites) and on the SQL queue, store and attachment
store on a real database, with a real aiosmtplib sender talking to an
in-process aiosmtpd server that misbehaves on demand.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import pytest
from proc_helpers import eventually

from mailqueue import (
    Attachment,
    AttachmentNotFoundError,
    Mail,
    MailQueue,
    MailRecord,
    Recipient,
    RecipientState,
    Status,
    Worker,
    WorkerSettings,
)
from mailqueue.backends.memory import MemoryDelivery, MemoryQueue
from mailqueue.backends.smtp import SMTPSender
from mailqueue.envelope import encode_envelope
from mailqueue.errors import StoreError
from mailqueue.mime import html_to_text
from mailqueue.protocols import AttachmentStore, Queue, Store
from mailqueue.records import RecordUpdate
from mailqueue.stores.memory import MemoryAttachmentStore, MemoryStore
from mailqueue.testing.smtpd import Fault, SMTPTestServer

FAST = WorkerSettings(concurrency=4, retry_base=0.05, retry_max=0.2, max_attempts=4, shutdown_timeout=5)


@dataclass
class Rig:
    """A submitted-mail pipeline with a worker running in the background."""

    mq: MailQueue
    server: SMTPTestServer
    sender: SMTPSender
    worker: Worker
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.worker.run())

    async def stop(self) -> None:
        self.worker.stop()
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)

    async def until(self, mail_id: str, done: Callable[[MailRecord], bool], within: float = 10) -> MailRecord:
        """Wait until the record satisfies ``done``; fail after ``within`` seconds."""
        seen: list[MailRecord | None] = [None]

        async def there() -> MailRecord | None:
            seen[0] = record = await self.mq.status(mail_id)
            return record if record is not None and done(record) else None

        found: MailRecord = await eventually(
            there, lambda: f"mail {mail_id} to get there; last seen: {seen[0]}", within=within, every=0.02
        )
        return found

    async def final(self, mail_id: str) -> MailRecord:
        return await self.until(mail_id, lambda r: r.status.final)

    async def run_until_sent(self, ids: Sequence[str]) -> None:
        """Start the worker, wait until every mail of ``ids`` is ``sent``, stop it."""
        self.start()
        try:
            for mail_id in ids:
                assert (await self.final(mail_id)).status is Status.SENT
        finally:
            await self.stop()


def mail(*addresses: str, subject: str = "Hello", **extra: object) -> Mail:
    return Mail(
        subject=subject,
        html="<p>Hi there</p>",
        sender_name="Billing",
        to=[Recipient(address=a, name=a.split("@")[0].title()) for a in addresses],
        **extra,
    )


@pytest.fixture(params=["memory", "sql-sqlite", "sql-mysql"])
async def backends(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Store, Queue, AttachmentStore]]:
    """(store, queue, attachments), opened: all in memory, or all SQL on one database."""
    if request.param == "memory":
        store: Store = MemoryStore()
        queue: Queue = MemoryQueue()
        attachments: AttachmentStore = MemoryAttachmentStore()
    else:
        from mailqueue.protocols import BackendContext
        from mailqueue.sql.attachments import SQLAttachmentStore
        from mailqueue.sql.queue import SQLQueue
        from mailqueue.sql.store import SQLStore

        url = request.getfixturevalue(f"{request.param.removeprefix('sql-')}_url")
        store = SQLStore.from_url(url, context=BackendContext())
        context = BackendContext(store=store)
        queue = SQLQueue.from_url("sql://?poll=0.05", context=context)
        attachments = SQLAttachmentStore.from_url("sql://", context=context)
    await store.open()
    await attachments.open()
    await queue.open()
    yield store, queue, attachments
    await queue.close()
    await attachments.close()
    await store.close()


@pytest.fixture
async def server() -> AsyncIterator[SMTPTestServer]:
    async with SMTPTestServer() as smtpd:
        yield smtpd


@pytest.fixture
async def rig(backends: tuple[Store, Queue, AttachmentStore], server: SMTPTestServer) -> AsyncIterator[Rig]:
    store, queue, attachments = backends
    mq = MailQueue(store=store, queue=queue, attachments=attachments, message_id_domain="example.com")
    sender = SMTPSender.from_url(server.url(from_address="noreply@example.com", timeout="1"))
    await sender.open()
    worker = Worker(queue=queue, store=store, attachments=attachments, sender=sender, settings=FAST)
    rig = Rig(mq, server, sender, worker)
    rig.start()
    yield rig
    await rig.stop()
    await sender.close()


def received_ids(server: SMTPTestServer) -> list[str]:
    """The Message-ID of every message the server accepted, in order."""
    return [
        str(email.message_from_bytes(m.data, policy=email.policy.default)["Message-ID"])
        for m in server.messages
    ]


async def test_delivers_with_attachments_and_records_everything(rig: Rig) -> None:
    pdf = b"%PDF-1.4 fake invoice \x00\xff" * 1000
    record = await rig.mq.submit(
        mail("ann@example.com", "bob@example.com", cc=[Recipient(address="carol@example.com")]),
        [
            Attachment("invoice 42.pdf", pdf, "application/pdf"),
            Attachment("notes.txt", b"hello", "text/plain"),
        ],
    )
    assert record.status is Status.QUEUED
    done = await rig.final(record.id)
    assert done.status is Status.SENT
    assert done.is_ok
    assert done.attempts == 1
    assert done.sent_at is not None
    assert [r.state for r in done.recipients] == [RecipientState.SENT] * 3
    assert [a.outcome for a in done.history] == ["sent"]
    (received,) = rig.server.messages
    assert received.envelope_from == "noreply@example.com"
    assert received.recipients == ("ann@example.com", "bob@example.com", "carol@example.com")
    parsed = email.message_from_bytes(received.data, policy=email.policy.default)
    assert parsed["Message-ID"] == done.mail.message_id == f"<{record.id}@example.com>"
    assert parsed["From"].addresses[0].display_name == "Billing"
    parts = {p.get_filename(): p.get_content() for p in parsed.iter_attachments()}
    assert parts == {"invoice 42.pdf": pdf, "notes.txt": "hello"}
    # the mail gave no text: a text/plain alternative was made from its HTML
    plain = parsed.get_body(preferencelist=("plain",))
    assert plain is not None
    assert plain.get_content().replace("\r\n", "\n") == html_to_text(done.mail.html)
    # attachments are deleted once the mail is sent (just after it is recorded)
    for ref in done.mail.attachments:
        for _ in range(100):
            try:
                async for _chunk in rig.mq.attachments.read(ref.key):
                    pass
            except AttachmentNotFoundError:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail(f"attachment {ref.filename} was not deleted")


@pytest.mark.parametrize(
    "reply", ["421 4.7.0 try again later", "450 4.2.1 mailbox busy", "451 4.3.0 local error"]
)
async def test_transient_reply_is_retried_and_delivered_once(rig: Rig, reply: str) -> None:
    rig.server.faults.append(Fault("mail", reply=reply, disconnect=reply.startswith("421"), times=2))
    record = await rig.mq.submit(mail("ann@example.com"))
    done = await rig.final(record.id)
    assert done.status is Status.SENT
    assert done.attempts == 3
    assert [a.outcome for a in done.history] == ["transient", "transient", "sent"]
    assert done.history[0].code == int(reply[:3])
    assert received_ids(rig.server) == [done.mail.message_id]


async def test_permanent_reply_fails_without_retry(rig: Rig) -> None:
    rig.server.faults.append(Fault("data_end", reply="550 5.7.1 message refused", times=None))
    record = await rig.mq.submit(mail("ann@example.com"))
    done = await rig.final(record.id)
    assert done.status is Status.FAILED
    assert not done.is_ok
    assert done.attempts == 1
    assert done.last_code == 550
    assert "message refused" in done.last_error
    assert [r.state for r in done.recipients] == [RecipientState.FAILED]
    await asyncio.sleep(0.3)  # a retry would have happened by now
    assert (await rig.mq.status(record.id)).attempts == 1  # type: ignore[union-attr]


async def test_one_refused_recipient_of_three(rig: Rig) -> None:
    rig.server.faults.append(
        Fault("rcpt", address="bob@example.com", reply="550 5.1.1 no such user", times=None)
    )
    record = await rig.mq.submit(mail("ann@example.com", "bob@example.com", "carol@example.com"))
    done = await rig.final(record.id)
    assert done.status is Status.SENT
    states = {r.address: (r.state, r.code) for r in done.recipients}
    assert states == {
        "ann@example.com": (RecipientState.SENT, 250),
        "bob@example.com": (RecipientState.FAILED, 550),
        "carol@example.com": (RecipientState.SENT, 250),
    }
    (received,) = rig.server.messages
    assert received.recipients == ("ann@example.com", "carol@example.com")


async def test_deferred_recipient_is_retried_alone(rig: Rig) -> None:
    rig.server.faults.append(Fault("rcpt", address="bob@example.com", reply="450 4.2.0 greylisted", times=1))
    record = await rig.mq.submit(mail("ann@example.com", "bob@example.com"))
    done = await rig.final(record.id)
    assert done.status is Status.SENT
    assert [a.outcome for a in done.history] == ["partial", "sent"]
    assert [m.recipients for m in rig.server.messages] == [("ann@example.com",), ("bob@example.com",)]


async def test_disconnect_during_data_is_retried(rig: Rig) -> None:
    rig.server.faults.append(Fault("data_body", after=10))
    # big enough that the client is still writing when the server hangs up
    big = Attachment("big.bin", b"\x00" * (8 * 1024 * 1024), "application/octet-stream")
    record = await rig.mq.submit(mail("ann@example.com"), [big])
    done = await rig.final(record.id)
    assert done.status is Status.SENT
    assert [a.outcome for a in done.history] == ["transient", "sent"]
    assert len(rig.server.messages) == 1


async def test_stall_after_final_dot_is_unknown_and_not_retried(rig: Rig) -> None:
    rig.server.faults.append(Fault("data_end", stall=3, disconnect=True))
    record = await rig.mq.submit(mail("ann@example.com"))
    done = await rig.final(record.id)
    assert done.status is Status.UNKNOWN
    assert not done.is_ok
    assert [a.outcome for a in done.history] == ["unknown"]
    await asyncio.sleep(0.3)
    assert (await rig.mq.status(record.id)).attempts == 1  # type: ignore[union-attr]


async def test_attempts_exhausted_ends_dead(rig: Rig) -> None:
    rig.server.faults.append(Fault("mail", reply="451 4.3.0 try later", times=None))
    record = await rig.mq.submit(mail("ann@example.com"))
    done = await rig.final(record.id)
    assert done.status is Status.DEAD
    assert done.attempts == FAST.max_attempts
    assert rig.server.messages == []
    if isinstance(rig.mq.queue, MemoryQueue):
        assert [d.key for d in rig.mq.queue.dead] == [record.id]


async def test_missing_attachment_is_remarked_like_the_original(rig: Rig) -> None:
    ref = await rig.mq.store_attachment(Attachment("gone.pdf", b"x" * 10, "application/pdf"))
    await rig.mq.attachments.delete(ref.key)  # lost before the worker gets to it
    record = await rig.mq.submit(mail("ann@example.com", attachments=[ref]))
    done = await rig.final(record.id)
    assert done.status is Status.SENT
    assert done.remark == "Not Found: gone.pdf"
    parsed = email.message_from_bytes(rig.server.messages[0].data, policy=email.policy.default)
    assert list(parsed.iter_attachments()) == []


async def test_missing_attachment_policy_fail(
    backends: tuple[Store, Queue, AttachmentStore], server: SMTPTestServer
) -> None:
    store, queue, attachments = backends
    mq = MailQueue(store=store, queue=queue, attachments=attachments, message_id_domain="example.com")
    settings = FAST.model_copy(update={"missing_attachment": "fail"})
    async with SMTPSender.from_url(server.url(from_address="noreply@example.com")) as sender:
        rig = Rig(
            mq,
            server,
            sender,
            Worker(queue=queue, store=store, attachments=attachments, sender=sender, settings=settings),
        )
        ref = await mq.store_attachment(Attachment("gone.pdf", b"x", "application/pdf"))
        await attachments.delete(ref.key)
        record = await mq.submit(mail("ann@example.com", attachments=[ref]))
        rig.start()
        done = await rig.final(record.id)
        await rig.stop()
    assert done.status is Status.FAILED
    assert done.remark == "Not Found: gone.pdf"
    assert server.messages == []


async def test_redelivered_envelope_is_not_sent_twice(rig: Rig) -> None:
    record = await rig.mq.submit(mail("ann@example.com"))
    await rig.final(record.id)
    # the broker hands the same message out again (e.g. a lost ack)
    await rig.mq.queue.publish(record.id, encode_envelope(record.mail))
    await rig.mq.queue.publish(record.id, encode_envelope(record.mail))
    await asyncio.sleep(0.3)
    assert len(rig.server.messages) == 1
    assert rig.worker.counts["skipped"] == 2


async def test_invalid_payload_is_dead_lettered(rig: Rig) -> None:
    await rig.mq.queue.publish("garbage", b"{not json")
    record = await rig.mq.submit(mail("ann@example.com"))
    await rig.final(record.id)  # the worker goes on after the bad message
    for _ in range(50):
        if rig.worker.counts["invalid"]:
            break
        await asyncio.sleep(0.02)
    assert rig.worker.counts["invalid"] == 1


async def test_resend_failed_mail_keeps_message_id(rig: Rig) -> None:
    rig.server.faults.append(Fault("data_end", reply="554 5.7.1 rejected", times=1))
    record = await rig.mq.submit(mail("ann@example.com"))
    failed = await rig.final(record.id)
    assert failed.status is Status.FAILED
    selected = await rig.mq.resend(dry_run=True)
    assert [r.id for r in selected] == [record.id]
    assert (await rig.mq.status(record.id)).status is Status.FAILED  # type: ignore[union-attr]
    await rig.mq.resend(ids=[record.id])
    done = await rig.until(record.id, lambda r: r.status is Status.SENT)
    assert done.attempts == 2
    assert received_ids(rig.server) == [record.mail.message_id]


async def test_idempotency_key_sends_once(rig: Rig) -> None:
    first = await rig.mq.submit(mail("ann@example.com"), idempotency_key="order-7")
    again = await rig.mq.submit(mail("ann@example.com", subject="other"), idempotency_key="order-7")
    assert again.id == first.id
    await rig.final(first.id)
    await asyncio.sleep(0.2)
    assert len(rig.server.messages) == 1


async def test_rate_limit_holds_in_every_window(
    backends: tuple[Store, Queue, AttachmentStore], server: SMTPTestServer
) -> None:
    store, queue, attachments = backends
    mq = MailQueue(store=store, queue=queue, attachments=attachments, message_id_domain="example.com")
    settings = FAST.model_copy(update={"rate": "4/s;6/2s", "concurrency": 8})
    async with SMTPSender.from_url(server.url(from_address="noreply@example.com")) as sender:
        worker = Worker(queue=queue, store=store, attachments=attachments, sender=sender, settings=settings)
        ids = [(await mq.submit(mail("ann@example.com"))).id for _ in range(9)]
        rig = Rig(mq, server, sender, worker)
        rig.start()
        records = [await rig.until(i, lambda r: r.status is Status.SENT, within=20) for i in ids]
        await rig.stop()
    starts = sorted(r.history[-1].started_at for r in records)
    # The limiter lets the 5th send go the moment the 1st is a window old (monotonic clock);
    # the recorded start is read from the wall clock just after, and stores keep milliseconds:
    # two such readings can land a few microseconds inside the window. A window shortened by
    # 10 ms tells a real excess (a 5th send within 0.99 s) from that.
    slack = timedelta(milliseconds=10)
    for i, t in enumerate(starts):
        assert sum(1 for u in starts[i:] if u < t + timedelta(seconds=1) - slack) <= 4
        assert sum(1 for u in starts[i:] if u < t + timedelta(seconds=2) - slack) <= 6


async def test_stop_releases_queued_work_and_loses_nothing(
    backends: tuple[Store, Queue, AttachmentStore], server: SMTPTestServer
) -> None:
    store, queue, attachments = backends
    mq = MailQueue(store=store, queue=queue, attachments=attachments, message_id_domain="example.com")
    server.faults.append(Fault("data_end", stall=0.1, times=None))  # a slow server
    ids = [(await mq.submit(mail("ann@example.com"))).id for _ in range(30)]
    async with SMTPSender.from_url(server.url(from_address="noreply@example.com")) as sender:
        first = Worker(queue=queue, store=store, attachments=attachments, sender=sender, settings=FAST)
        rig = Rig(mq, server, sender, first)
        rig.start()
        while len(server.messages) < 5:
            await asyncio.sleep(0.01)
        await rig.stop()  # mid-batch
        stopped_at = len(server.messages)
        assert stopped_at < 30
        statuses = {(await mq.status(i)).status for i in ids}  # type: ignore[union-attr]
        assert statuses <= {Status.SENT, Status.QUEUED}, statuses  # nothing stuck, nothing dead
        second = Worker(queue=queue, store=store, attachments=attachments, sender=sender, settings=FAST)
        rig2 = Rig(mq, server, sender, second)
        rig2.start()
        for i in ids:
            await rig2.until(i, lambda r: r.status is Status.SENT, within=20)
        await rig2.stop()
    got = received_ids(server)
    assert sorted(got) == sorted(f"<{i}@example.com>" for i in ids)  # each exactly once


async def test_nothing_left_to_send_is_settled_without_sending(rig: Rig) -> None:
    # A record whose recipients were all settled, but whose status was not
    # (a worker died between the two): the redelivery must not send again.
    from mailqueue import RecipientOutcome
    from mailqueue.mime import make_message_id

    m = mail("ann@example.com", "bob@example.com")
    m = m.model_copy(update={"message_id": make_message_id(m.id, "example.com")})
    record = MailRecord.new(m).evolve(
        recipients=(
            RecipientOutcome("ann@example.com", RecipientState.SENT, 250, "ok"),
            RecipientOutcome("bob@example.com", RecipientState.FAILED, 550, "no such user"),
        )
    )
    await rig.mq.store.add(record)
    await rig.mq.publish(m)
    done = await rig.final(m.id)
    assert done.status is Status.SENT
    assert [a.outcome for a in done.history] == ["skipped"]
    assert rig.server.messages == []


async def _copy_of_a_mail_being_sent(rig: Rig) -> Mail:
    """A mail recorded ``sending`` (another delivery holds it) and a fresh,
    not redelivered copy of it published; returns once the worker deferred it."""
    from mailqueue import RecordUpdate
    from mailqueue.mime import make_message_id

    # MariaDB keeps updated_at to the second: a lease of 2 s defers for at least 1 s.
    rig.worker.settings = FAST.model_copy(update={"sending_lease": 2.0})
    m = mail("ann@example.com")
    m = m.model_copy(update={"message_id": make_message_id(m.id, "example.com")})
    await rig.mq.store.add(MailRecord.new(m))
    assert await rig.mq.store.update(m.id, RecordUpdate(status=Status.SENDING))
    await rig.mq.publish(m)
    for _ in range(250):
        if rig.worker.counts["deferred"]:
            break
        await asyncio.sleep(0.02)
    assert rig.worker.counts["deferred"] == 1
    assert rig.server.messages == []
    assert (await rig.mq.status(m.id)).status is Status.SENDING  # type: ignore[union-attr]
    return m


async def test_second_copy_of_a_mail_being_sent_is_not_sent(rig: Rig) -> None:
    # A publish repeated after a lost confirm: one delivery is sending the mail;
    # the fresh copy waits out that delivery's lease and then finds it sent.
    from mailqueue import RecordUpdate

    m = await _copy_of_a_mail_being_sent(rig)
    finished = RecordUpdate(status=Status.SENT, expect=frozenset({Status.SENDING}))
    assert await rig.mq.store.update(m.id, finished)
    await rig.until(m.id, lambda r: rig.worker.counts["skipped"] == 1, within=10)
    assert rig.server.messages == []
    assert rig.worker.counts["sent"] == 0


async def test_copy_of_a_mail_whose_sender_died_is_sent_after_the_lease(rig: Rig) -> None:
    # The delivery that set ``sending`` never finishes (its worker died, and the
    # queue could not mark the copy redelivered, as Kafka after a crash): once
    # the lease is over, the copy sends the mail, once.
    m = await _copy_of_a_mail_being_sent(rig)
    done = await rig.final(m.id)
    assert done.status is Status.SENT
    assert len(rig.server.messages) == 1
    assert rig.worker.counts["deferred"] == 1


async def test_copies_of_a_mail_in_the_workers_hands_wait_for_it_and_are_not_sent(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    # The mail published three times (publishes repeated after lost confirms): while one copy
    # is being sent (a slow server), the two others wait for it in this worker, one after the
    # other, then find the mail sent.
    caplog.set_level(logging.INFO, logger="mailqueue.worker")
    rig.server.faults.append(Fault("mail", stall=0.6))  # within the sender's timeout of 1 s
    record = await rig.mq.submit(mail("ann@example.com"))
    for _ in range(2):
        await rig.mq.publish(record.mail)
    assert (await rig.final(record.id)).status is Status.SENT

    async def both_done() -> bool:
        return rig.worker.counts["skipped"] == 2 and not rig.worker._handling

    await eventually(both_done, "both copies to be skipped, and done with", within=10, every=0.02)
    assert len(rig.server.messages) == 1
    assert rig.worker.counts["deferred"] == 2
    assert caplog.text.count("is being handled by this worker already") == 2


# --- group commit (a Store that can change records in batches) ---------------------


class AckLog:
    """A Queue wrapper that notes every ack, by key, in order."""

    def __init__(self, inner: MemoryQueue) -> None:
        self.inner = inner
        self.acked: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def consume(self, *, prefetch: int) -> AsyncIterator[object]:
        log = self.acked
        inner = self.inner.consume(prefetch=prefetch)

        class Noted:
            def __init__(self, delivery: MemoryDelivery) -> None:
                self.delivery = delivery

            def __getattr__(self, name: str) -> object:
                return getattr(self.delivery, name)

            async def ack(self) -> None:
                await self.delivery.ack()
                log.append(self.delivery.key)

        class Consumer:
            def __aiter__(self) -> Consumer:
                return self

            async def __anext__(self) -> Noted:
                return Noted(await inner.__anext__())

            async def aclose(self) -> None:
                await inner.aclose()

        return Consumer()


class FailingCommits(MemoryStore):
    """A MemoryStore whose batch commits holding an outcome fail ``times`` times (changing nothing)."""

    def __init__(self, times: int, acks: AckLog) -> None:
        super().__init__()
        self.times = times
        self.acks = acks
        self.failed: list[list[str]] = []
        self.acked_when_failed: list[str] = []

    async def update_many(self, changes: Sequence[tuple[str, RecordUpdate]]) -> list[bool]:
        ids = [mail_id for mail_id, change in changes if change.attempt is not None]
        if ids and self.times > 0:
            self.times -= 1
            self.failed.append(ids)
            self.acked_when_failed += [i for i in ids if i in self.acks.acked]
            raise StoreError("commit failed (injected)")
        return await super().update_many(changes)


async def test_failed_batch_commit_acks_none_and_sends_nothing_twice(server: SMTPTestServer) -> None:
    queue = AckLog(MemoryQueue())
    store = FailingCommits(times=3, acks=queue)
    attachments = MemoryAttachmentStore()
    async with store, queue.inner, attachments:
        mq = MailQueue(
            store=store, queue=queue.inner, attachments=attachments, message_id_domain="example.com"
        )
        ids = [(await mq.submit(mail(f"user{n}@example.com"))).id for n in range(12)]
        sender = SMTPSender.from_url(server.url(from_address="noreply@example.com", timeout="1"))
        async with sender:
            worker = Worker(
                queue=queue,  # type: ignore[arg-type]
                store=store,
                attachments=attachments,
                sender=sender,
                settings=FAST,
            )
            await Rig(mq, server, sender, worker).run_until_sent(ids)
    assert store.failed, "no batch commit failed: the test proved nothing"
    assert store.acked_when_failed == []
    assert sorted(queue.acked) == sorted(ids)  # each acked once, after its outcome was committed
    assert len(server.messages) == len(ids)  # the outcomes were recorded again, not sent again
    assert worker.counts["record_retried"] >= 1


class ReadLog(MemoryStore):
    """A MemoryStore that notes the ids of each batch read (``get_many``)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[list[str]] = []

    async def get_many(self, mail_ids: Sequence[str]) -> dict[str, MailRecord]:
        self.reads.append(list(mail_ids))
        return await super().get_many(mail_ids)


async def test_deliveries_dispatched_together_read_their_records_in_one_call(server: SMTPTestServer) -> None:
    """A burst the queue has ready is dispatched in one turn; its reads go as one Store call."""
    from prometheus_client import REGISTRY

    def observed() -> tuple[float, float]:
        labels = {"op": "read"}
        count = REGISTRY.get_sample_value("mailqueue_store_batch_size_count", labels) or 0.0
        return count, REGISTRY.get_sample_value("mailqueue_store_batch_size_sum", labels) or 0.0

    store, queue, attachments = ReadLog(), MemoryQueue(), MemoryAttachmentStore()
    async with store, queue, attachments:
        mq = MailQueue(store=store, queue=queue, attachments=attachments, message_id_domain="example.com")
        ids = [(await mq.submit(mail(f"user{n}@example.com"))).id for n in range(8)]
        sender = SMTPSender.from_url(server.url(from_address="noreply@example.com", timeout="1"))
        async with sender:
            settings = FAST.model_copy(update={"concurrency": 8})
            worker = Worker(
                queue=queue, store=store, attachments=attachments, sender=sender, settings=settings
            )
            before = observed()
            await Rig(mq, server, sender, worker).run_until_sent(ids)
    assert store.reads == [ids]
    count, total = observed()
    assert (count - before[0], total - before[1]) == (1, 8)  # mailqueue_store_batch_size{op="read"}


async def test_recorded_mail_is_sent_as_the_store_has_it(rig: Rig) -> None:
    """The worker takes only the id from the envelope when the Store has the mail."""
    stored = mail("ann@example.com", subject="From the Store", message_id="<kept.1@example.com>")
    await rig.mq.store.add(MailRecord.new(stored))
    await rig.mq.queue.publish(stored.id, b'{"v":1,"mail":{"id":"%s","subject":7}}' % stored.id.encode())
    done = await rig.final(stored.id)
    assert done.status is Status.SENT
    (message,) = [email.message_from_bytes(m.data, policy=email.policy.default) for m in rig.server.messages]
    assert (message["Subject"], message["Message-ID"]) == ("From the Store", "<kept.1@example.com>")
    assert rig.worker.counts["invalid"] == 0


@pytest.mark.parametrize(
    "body",
    [
        b'{"v":1,"mail":{"id":"0000abcd","subject":7}}',  # no record, and not a mail
        b'{"v":2,"mail":{"id":"0000abcd"}}',
        b'{"v":true,"mail":{"id":"0000abcd"}}',
        b'{"v":1,"mail":{"id":"../etc"}}',
        b'{"v":1,"mail":[]}',
        b"\xff\xfe",
    ],
)
async def test_envelope_without_record_or_id_is_dead_lettered(rig: Rig, body: bytes) -> None:
    await rig.mq.queue.publish("bad", body)
    for _ in range(100):
        if rig.worker.counts["invalid"]:
            break
        await asyncio.sleep(0.02)
    assert rig.worker.counts["invalid"] == 1
    assert await rig.mq.status("0000abcd") is None
    assert rig.server.messages == []
