"""MailQueue (the client) on in-memory backends: what submit keeps and refuses."""

from __future__ import annotations

import pytest

from mailqueue import Attachment, Mail, MailQueue, RecordQuery, ValidationError


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
