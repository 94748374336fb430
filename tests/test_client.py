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
