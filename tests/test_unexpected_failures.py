"""Whatever an attempt raises is an attempt: recorded, backed off, ``dead`` after ``max_attempts``.

Found from outside: a mail whose rendering raised (a row adopted from the
original table had no Message-ID) was retried 39 times in 45 s with
``max_attempts=3``, its record stuck ``sending`` with no error. Here such a
mail goes through a real worker on MariaDB with the ``sql`` queue and with
RabbitMQ, beside a good mail, and a real SMTP server.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import aio_pika
import pytest
import sqlalchemy as sa
from brokers import delete_amqp_objects, read_all
from conftest import _run
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from mailqueue import Mail, MailQueue, Recipient, Status, WorkerSettings
from mailqueue.backends.amqp import KEY_HEADER, REASON_HEADER
from mailqueue.backends.smtp import SMTPSender
from mailqueue.envelope import encode_envelope
from mailqueue.records import MailRecord
from mailqueue.sending.limits import RateLimiter
from mailqueue.sql import schema
from mailqueue.testing.smtpd import SMTPTestServer
from mailqueue.worker import Worker

pytestmark = [pytest.mark.mysql]

SETTINGS = WorkerSettings(concurrency=2, retry_base=0.05, retry_max=0.2, max_attempts=3, shutdown_timeout=5)


@pytest.fixture(params=["sql", "amqp"])
def queue_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The ``sql`` queue on the Store's database, or a RabbitMQ queue of the test's own."""
    if request.param == "sql":
        yield "sql://?poll=0.05"
        return
    rabbitmq_url: str = request.getfixturevalue("rabbitmq_url")
    name = f"mq_poison_{secrets.token_hex(4)}"
    yield f"{rabbitmq_url}?queue={name}&exchange={name}"
    _run(delete_amqp_objects(rabbitmq_url, name))


def _mail(address: str, subject: str) -> Mail:
    return Mail(subject=subject, html="<p>hi</p>", to=[Recipient(address=address)])


async def _dead_letters(queue_url: str, mysql_url: str) -> list[tuple[str, str]]:
    """(key, reason) of every message in the dead-letter place of ``queue_url``."""
    if queue_url.startswith("sql:"):
        engine = create_async_engine(mysql_url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                table = schema.queue
                rows = await conn.execute(
                    sa.select(table.c.msg_key, table.c.dead_reason).where(table.c.state == "dead")
                )
                return [(str(key), str(reason)) for key, reason in rows]
        finally:
            await engine.dispose()
    name = queue_url.split("queue=")[1].split("&")[0]
    connection = await aio_pika.connect(queue_url.split("?")[0])
    try:
        messages = await read_all(await connection.channel(), f"{name}.dead")
        return [(str(m.headers[KEY_HEADER]), str(m.headers[REASON_HEADER])) for m in messages]
    finally:
        await connection.close()


async def test_a_mail_that_cannot_be_rendered_counts_its_attempts_and_ends_dead(
    queue_url: str, mysql_url: str
) -> None:
    async with (
        SMTPTestServer() as server,
        MailQueue.from_urls(store=mysql_url, queue=queue_url, attachments="sql://") as mq,
    ):
        good = await mq.submit(_mail("good@example.com", "good"))
        # Recorded and published without a Message-ID: rendering it raises ValueError.
        poison = _mail("poison@example.com", "poison")
        assert poison.message_id is None
        await mq.store.add(MailRecord.new(poison))
        await mq.queue.publish(poison.id, encode_envelope(poison))
        sender = SMTPSender.from_url(server.url(from_address="noreply@example.com", timeout="2"))
        async with sender:
            worker = Worker(
                queue=mq.queue, store=mq.store, attachments=mq.attachments, sender=sender, settings=SETTINGS
            )
            task = asyncio.create_task(worker.run())
            try:
                async with asyncio.timeout(30):
                    while True:
                        record = await mq.status(poison.id)
                        assert record is not None
                        if record.status is Status.DEAD:
                            break
                        await asyncio.sleep(0.02)
                # no loop after the verdict: nothing more is attempted
                await asyncio.sleep(0.5)
            finally:
                worker.stop()
                await asyncio.wait_for(task, 10)
        record = await mq.status(poison.id)
        sent = await mq.status(good.id)
        dead = await _dead_letters(queue_url, mysql_url)
    assert record is not None
    assert record.status is Status.DEAD
    assert record.attempts == SETTINGS.max_attempts
    assert [a.outcome for a in record.history] == ["error"] * SETTINGS.max_attempts
    assert all("message_id is not set" in a.reply for a in record.history), record.history
    assert "unexpected error: ValueError" in record.last_error
    assert worker.counts["error"] == SETTINGS.max_attempts
    assert worker.counts["dead"] == 1
    assert [key for key, _ in dead] == [poison.id]
    assert "attempts exhausted" in dead[0][1]
    # the good mail was delivered beside it, once; the poison never reached the server
    assert sent is not None
    assert sent.status is Status.SENT
    assert [m.recipients for m in server.messages] == [("good@example.com",)]


class _BrokenLimiter(RateLimiter):
    """A rate limiter whose every acquire fails as a bug would (before the mail is claimed)."""

    async def acquire(self) -> float:
        raise RuntimeError("limiter bug")


async def test_an_unexpected_failure_before_the_claim_counts_too(mysql_url: str) -> None:
    async with (
        SMTPTestServer() as server,
        MailQueue.from_urls(store=mysql_url, queue="sql://?poll=0.05", attachments="sql://") as mq,
    ):
        mail = await mq.submit(_mail("a@example.com", "limited"))
        sender = SMTPSender.from_url(server.url(from_address="noreply@example.com", timeout="2"))
        async with sender:
            worker = Worker(
                queue=mq.queue,
                store=mq.store,
                attachments=mq.attachments,
                sender=sender,
                settings=SETTINGS,
                limiter=_BrokenLimiter(""),
            )
            task = asyncio.create_task(worker.run())
            try:
                async with asyncio.timeout(30):
                    while (record := await mq.status(mail.id)) is None or not record.status.final:
                        await asyncio.sleep(0.02)
            finally:
                worker.stop()
                await asyncio.wait_for(task, 10)
        record = await mq.status(mail.id)
    assert record is not None
    assert record.status is Status.DEAD
    assert [a.outcome for a in record.history] == ["error"] * SETTINGS.max_attempts
    assert "RuntimeError: limiter bug" in record.last_error
    assert server.messages == []
