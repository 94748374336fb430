"""End to end with a real Postfix: mailqueue sends through it to a mailbox that does not exist,
Postfix accepts, then bounces; its own DSN travels to the VERP return path, which a transport
map relays to mailqueue's bounce listener, and the recipient ends ``bounced`` with it.

Postfix is installed by the test when missing (Debian package, as root); when it cannot be
installed or started the test is skipped on a developer machine and fails in CI.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import service_missing
from postfix import LOCAL_DOMAIN, PostfixInstance, PostfixUnavailable, ensure_postfix, free_port
from proc_helpers import eventually

from mailqueue import Mail, MailQueue, Recipient, Status, Worker, metrics
from mailqueue.bounces.listener import listener_from_settings
from mailqueue.records import RecipientState
from mailqueue.sending.verp import verp_address
from mailqueue.settings import load_settings

pytestmark = pytest.mark.slow

BOUNCE_DOMAIN = "bounces.example.com"


@pytest.fixture(scope="module")
def postfix_installed() -> None:
    try:
        ensure_postfix()
    except PostfixUnavailable as exc:
        service_missing(f"Postfix ({exc})")


@pytest.fixture
def listener_port() -> int:
    return free_port()


@pytest.fixture
def postfix(postfix_installed: None, listener_port: int) -> Iterator[PostfixInstance]:
    instance = PostfixInstance(bounce_domain=BOUNCE_DOMAIN, listener_port=listener_port)
    try:
        instance.start()
    except PostfixUnavailable as exc:
        instance.stop()
        service_missing(f"Postfix ({exc})")
    try:
        yield instance
    finally:
        instance.stop()


async def test_postfixs_own_bounce_marks_the_recipient_bounced(
    postfix: PostfixInstance, listener_port: int, tmp_path: Path
) -> None:
    started = time.monotonic()
    settings = load_settings(
        store=f"sqlite+aiosqlite:///{tmp_path}/mq.db",
        queue="sql://",
        attachments=f"file://{tmp_path}/attachments",
        sender=f"smtp://127.0.0.1:{postfix.port}/?from=news@example.com&starttls=false",
        bounces={"domain": BOUNCE_DOMAIN, "secret": "s3cret", "listen": f"127.0.0.1:{listener_port}"},
        retention={"interval": 0},
    )
    before = metrics.BOUNCES.labels(kind="hard")._value.get()
    async with MailQueue.from_settings(settings) as mq:
        listener = listener_from_settings(settings, mq.store)
        worker = Worker.from_settings(settings, mq)
        async with listener, worker.sender:
            run = asyncio.create_task(worker.run())
            try:
                mail = Mail(
                    subject="hello",
                    html="<p>hi</p>",
                    to=[Recipient(address=f"no-such-mailbox@{LOCAL_DOMAIN}")],
                )
                mail_id = (await mq.submit(mail)).id

                async def bounced() -> bool:
                    record = await mq.status(mail_id)
                    return record is not None and record.recipients[0].state is RecipientState.BOUNCED

                await eventually(
                    bounced, lambda: f"the bounce recorded; Postfix log:\n{postfix.log}", within=60
                )
            finally:
                worker.stop()
                await run
        record = await mq.status(mail_id)
    elapsed = time.monotonic() - started
    assert record is not None
    outcome = record.recipients[0]
    assert outcome.reply.startswith("5.1.1 ")
    assert 'unknown user: "no-such-mailbox"' in outcome.reply
    assert record.status is Status.BOUNCED
    assert [a.outcome for a in record.history] == ["sent", "bounced"]
    assert record.history[-1].reply == outcome.reply
    assert metrics.BOUNCES.labels(kind="hard")._value.get() == before + 1
    # Postfix saw the VERP return path, and relayed its bounce to it
    return_path = verp_address("news", mail_id, f"no-such-mailbox@{LOCAL_DOMAIN}", BOUNCE_DOMAIN, b"s3cret")
    assert f"from=<{return_path}>" in postfix.log
    assert f"to=<{return_path}>, relay=127.0.0.1[127.0.0.1]:{listener_port}" in postfix.log
    relayed = [line for line in postfix.log.splitlines() if f":{listener_port}," in line]
    print(f"postfix round trip: {elapsed:.1f} s", *relayed, sep="\n")
