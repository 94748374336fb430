"""The sending chain: a step wraps a Sender, and the chain's links can be found through it."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from mailqueue import Mail, MailQueue, Recipient, Status, Worker
from mailqueue.backends.memory import MemorySender
from mailqueue.protocols import OutgoingMessage, Sender, SendResult
from mailqueue.sending.account_limit import AccountLimit
from mailqueue.sending.accounts import AccountRouter
from mailqueue.sending.dkim import dkim_step
from mailqueue.sending.domains import domain_step
from mailqueue.sending.pipeline import STEPS, SendingStep, build_sender, find_link, links
from mailqueue.sending.suppression import SuppressionStep
from mailqueue.sending.verp import verp_step
from mailqueue.settings import load_settings


class Tagging(SendingStep):
    """A step that changes the message before the wire, as DKIM signing will."""

    async def send(self, message: OutgoingMessage) -> SendResult:
        return await self.inner.send(replace(message, data=b"X-Tag: 1\r\n" + message.data))


def message() -> OutgoingMessage:
    return OutgoingMessage("m1", b"Subject: s\r\n\r\nbody\r\n", "a@example.com", ["to@example.com"])


async def test_a_step_hands_the_changed_message_to_inner_and_opens_and_closes_it() -> None:
    wire = MemorySender(from_address="from@example.com")
    step = Tagging(wire)
    sender: Sender = step  # a step is a Sender
    assert sender.from_address == "from@example.com"
    async with step:
        result = await step.send(message())
    assert result.accepted == ["to@example.com"]
    assert [m.data for m in wire.sent] == [b"X-Tag: 1\r\nSubject: s\r\n\r\nbody\r\n"]
    assert list(links(step)) == [step, wire]


def test_the_built_in_steps_add_no_link_when_not_configured() -> None:
    # DKIM is the innermost step that changes bytes (nothing may change what it signed);
    # only the domain limits and VERP, which change the envelope alone, are inside it
    assert STEPS[-3:] == (dkim_step, domain_step, verp_step)
    settings = load_settings(sender="memory://?from=a@example.com")
    # the single sender's limit and throttle around the wire sender, and no step
    assert [type(link) for link in links(build_sender(settings).sender)] == [AccountLimit, MemorySender]


def test_the_suppression_step_wraps_the_built_in_chain_when_the_store_keeps_a_list() -> None:
    from mailqueue.protocols import BackendContext
    from mailqueue.stores.memory import MemoryStore

    settings = load_settings(sender="memory://?from=a@example.com")
    chain = build_sender(settings, context=BackendContext(store=MemoryStore()))
    assert [type(link) for link in links(chain.sender)] == [SuppressionStep, AccountLimit, MemorySender]
    # the list switched off: no step
    off = load_settings(sender="memory://?from=a@example.com", suppression={"enabled": False})
    chain = build_sender(off, context=BackendContext(store=MemoryStore()))
    assert [type(link) for link in links(chain.sender)] == [AccountLimit, MemorySender]


def test_find_link_sees_the_accounts_through_a_step() -> None:
    settings = load_settings(senders=[{"url": "memory://?from=a@example.com", "name": "one"}])
    chain = build_sender(settings)
    accounts = find_link(Tagging(chain.sender), AccountRouter)
    assert accounts is chain.sender
    assert find_link(MemorySender(), AccountRouter) is None


async def test_worker_from_settings_sends_through_the_chain_on_the_mailqueues_backends() -> None:
    settings = load_settings(
        store="memory://",
        queue="memory://",
        attachments="memory://",
        sender="memory://?from=a@example.com",
        worker={"rate": "7/s", "concurrency": 2},
        retention={"interval": 0},
    )
    mq = MailQueue.from_settings(settings)
    worker = Worker.from_settings(settings, mq)
    assert (worker.queue, worker.store, worker.attachments) == (mq.queue, mq.store, mq.attachments)
    assert (worker.settings, worker.retention) == (settings.worker, settings.retention)
    # the memory store keeps a suppression list: the step is the outermost link
    assert isinstance(worker.sender, SuppressionStep)
    assert isinstance(worker.sender.inner, AccountLimit)
    assert isinstance(worker.sender.inner.inner, MemorySender)
    assert [str(w) for w in worker.limiter.windows] == ["7/1s"]
    chain = build_sender(settings)
    again = Worker.from_settings(settings, mq, chain=chain)
    assert (again.sender, again.limiter) == (chain.sender, chain.limiter)

    async with mq, worker.sender:
        mail_id = (
            await mq.submit(Mail(subject="s", html="<p>x</p>", to=[Recipient(address="u@example.com")]))
        ).id
        run = asyncio.create_task(worker.run())
        for _ in range(200):
            record = await mq.status(mail_id)
            if record is not None and record.status is Status.SENT:
                break
            await asyncio.sleep(0.05)
        worker.stop()
        await run
    assert record is not None
    assert record.status is Status.SENT
    assert [list(m.recipients) for m in worker.sender.inner.inner.sent] == [["u@example.com"]]


def test_the_dashboard_finds_the_accounts_in_the_chain() -> None:
    from mailqueue.contrib.litestar_app import MailQueuePlugin
    from mailqueue.contrib.litestar_app.ui.views import _accounts

    memory = {"store": "memory://", "queue": "memory://", "attachments": "memory://"}
    url = "memory://?from=a@example.com"
    several = MailQueuePlugin(load_settings(**memory, senders=[{"url": url, "name": "ui-a"}]), worker=True)
    rows, _ = _accounts(several)
    assert rows is not None
    assert [(r.name, r.circuit, r.rate) for r in rows] == [("ui-a", "closed", "100%")]
    rows, note = _accounts(MailQueuePlugin(load_settings(**memory, sender=url), worker=True))
    assert rows is None
    assert note.startswith("One sender without per-account limits")
