"""The suppression list at send time: the hard-bounce code table, the step, and the
whole path through a worker and a real SMTP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY

from mailqueue import Mail, MailQueue, Recipient, Status, Worker
from mailqueue.backends.memory import MemorySender
from mailqueue.errors import ConfigurationError, TransientDeliveryError
from mailqueue.protocols import OutgoingMessage
from mailqueue.records import MailRecord, RecipientState, utcnow
from mailqueue.sending.suppression import SuppressionStep
from mailqueue.settings import Settings, load_settings
from mailqueue.stores.memory import MemoryStore
from mailqueue.suppression import (
    HARD_BOUNCE_CODES,
    SuppressionQuery,
    SuppressionReason,
    is_hard_bounce,
    make_entry,
    normalize_address,
)
from mailqueue.suppression_list import Suppressions
from mailqueue.testing.smtpd import Fault, SMTPTestServer

# --- the code table: each row --------------------------------------------------------

HARD = [
    (550, "5.1.1 <x@example.com>: Recipient address rejected: User unknown in virtual mailbox table"),
    (550, "5.1.2 Host or domain name not found. Name service error"),
    (553, "5.1.3 Bad recipient address syntax"),
    (556, "5.1.10 Recipient address has null MX"),
    (550, "5.01.001 zero-padded subject and detail"),
    # provider texts without an enhanced status code
    (550, "Requested action not taken: mailbox unavailable"),
    (550, "No such user here"),
    (550, "User unknown"),
    (550, "unknown user: x"),
    (550, "The email account that you tried to reach does not exist"),
    (551, "no such mailbox"),
    (550, "Mailbox not found"),
    (550, "Invalid recipient"),
]
NOT_HARD = [
    # policy and reputation refusals: the mailbox exists
    (550, "5.7.1 Service unavailable, Client host [1.2.3.4] blocked using Spamhaus"),
    (550, "5.7.1 <x@example.com>: Relay access denied; user unknown"),
    (554, "5.7.1 Message rejected: mailbox unavailable for policy reasons"),
    (550, "5.7.26 Unauthenticated email from example.com is not accepted (DMARC)"),
    (550, "5.7.606 Access denied, banned sending IP"),
    # other permanent troubles that do not say "no such mailbox"
    (552, "5.2.2 Mailbox full"),
    (550, "5.2.1 Mailbox disabled, not accepting messages"),
    (554, "5.4.6 Routing loop detected"),
    (550, "5.1.6 Recipient mailbox has moved"),
    (550, "Message rejected as spam"),
    # not permanent: a transient 4xx, even with x.1.1, is tried again, never suppressed
    (450, "4.1.1 User unknown (try again later)"),
    (451, "4.2.0 mailbox unavailable"),
    (250, "2.1.5 Ok"),
    (None, "connection lost"),
]


def test_every_code_of_the_table_has_a_row() -> None:
    codes = {reply.split()[0] for _, reply in HARD}
    assert set(HARD_BOUNCE_CODES) <= codes


@pytest.mark.parametrize(("code", "reply"), HARD)
def test_hard_bounce(code: int, reply: str) -> None:
    assert is_hard_bounce(code, reply)


@pytest.mark.parametrize(("code", "reply"), NOT_HARD)
def test_not_a_hard_bounce(code: int | None, reply: str) -> None:
    assert not is_hard_bounce(code, reply)


# --- addresses and entries -------------------------------------------------------------


def test_addresses_are_lower_cased_whole() -> None:
    assert normalize_address("  John.Doe@Example.COM ") == "john.doe@example.com"


@pytest.mark.parametrize(
    "bad", ["a@example.com\r\nBcc: x@example.com", "a@example.com\n", "a\x00@example.com", "no-at-sign", ""]
)
def test_control_characters_and_invalid_addresses_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="address"):
        make_entry(bad, "manual")


def test_entry_checks_reason_and_expiry() -> None:
    with pytest.raises(
        ValueError, match="reason: must be one of hard_bounce, complaint, manual, unsubscribe"
    ):
        make_entry("a@example.com", "bounced")
    with pytest.raises(ValueError, match="expires_at"):
        make_entry("a@example.com", "manual", expires_at=utcnow() - timedelta(seconds=1))
    entry = make_entry("A@Example.com", "complaint", text="line1\r\nline2")
    assert (entry.address, entry.reason, entry.text) == (
        "a@example.com",
        SuppressionReason.COMPLAINT,
        "line1  line2",
    )


async def test_a_store_without_the_capability_suppresses_nothing_and_refuses_changes() -> None:
    suppressions = Suppressions(object())  # type: ignore[arg-type]
    assert not suppressions.available
    assert await suppressions.check(["a@example.com"]) == {}
    with pytest.raises(ConfigurationError, match="no suppression list"):
        await suppressions.add("a@example.com", "manual")


# --- the step --------------------------------------------------------------------------


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as memory:
        yield memory


def outgoing(*recipients: str) -> OutgoingMessage:
    return OutgoingMessage("m-1", b"Subject: s\r\n\r\nbody\r\n", "from@example.com", list(recipients))


async def test_the_step_leaves_out_suppressed_recipients(store: MemoryStore) -> None:
    suppressions = Suppressions(store)
    await suppressions.add("Gone@Example.com", "hard_bounce")
    wire = MemorySender(from_address="from@example.com")
    step = SuppressionStep(wire, suppressions)
    async with step:
        result = await step.send(outgoing("gone@example.com", "ok@example.com"))
    assert [list(m.recipients) for m in wire.sent] == [["ok@example.com"]]
    assert result.accepted == ["ok@example.com"]
    assert result.replies["gone@example.com"].suppressed == "hard_bounce"
    assert result.replies["gone@example.com"].permanent


async def test_all_suppressed_never_reaches_the_wire(store: MemoryStore) -> None:
    suppressions = Suppressions(store)
    await suppressions.add("a@example.com", "complaint")
    await suppressions.add("b@example.com", "unsubscribe")
    wire = MemorySender(from_address="from@example.com")
    step = SuppressionStep(wire, suppressions)
    async with step:
        result = await step.send(outgoing("a@example.com", "b@example.com"))
    assert wire.sent == []
    assert {a: r.suppressed for a, r in result.replies.items()} == {
        "a@example.com": "complaint",
        "b@example.com": "unsubscribe",
    }


async def test_an_expired_entry_no_longer_suppresses(store: MemoryStore) -> None:
    suppressions = Suppressions(store)
    entry = make_entry("a@example.com", "hard_bounce", created_at=utcnow() - timedelta(days=2))
    await store.add_suppression(
        type(entry)(entry.address, entry.reason, None, "", entry.created_at, utcnow() - timedelta(days=1))
    )
    wire = MemorySender(from_address="from@example.com")
    async with SuppressionStep(wire, suppressions) as step:
        result = await step.send(outgoing("a@example.com"))
    assert result.accepted == ["a@example.com"]


async def test_an_unreadable_list_is_a_transient_failure(store: MemoryStore) -> None:
    suppressions = Suppressions(store)
    wire = MemorySender(from_address="from@example.com")
    step = SuppressionStep(wire, suppressions)
    await step.open()
    await store.close()
    with pytest.raises(TransientDeliveryError, match="suppression list could not be read"):
        await step.send(outgoing("a@example.com"))
    assert wire.sent == []


async def test_concurrent_lookups_share_one_query(store: MemoryStore) -> None:
    calls = 0
    real = store.get_suppressions

    async def counting(addresses: list[str], *, now: object) -> dict[str, object]:
        nonlocal calls
        calls += 1
        return await real(addresses, now=now)  # type: ignore[arg-type,return-value]

    store.get_suppressions = counting  # type: ignore[method-assign,assignment]
    suppressions = Suppressions(store)
    await suppressions.add("x3@example.com", "manual")
    results = await asyncio.gather(*(suppressions.check([f"x{n}@example.com"]) for n in range(20)))
    assert [list(r) for r in results if r] == [["x3@example.com"]]
    # made in the same event-loop turn: one query for all 20
    assert calls == 1


# --- end to end: a worker, the chain, a real SMTP server -------------------------------


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"reason": "hard_bounce"}) or 0.0


def settings_for(server: SMTPTestServer, **suppression: object) -> Settings:
    return load_settings(
        store="memory://",
        queue="memory://",
        attachments="memory://",
        sender=server.url(from_address="from@example.com"),
        worker={"concurrency": 2, "retry_base": 0.05, "retry_max": 0.1},
        retention={"interval": 0},
        suppression=suppression,
    )


async def finished(mq: MailQueue, mail_id: str) -> MailRecord:
    for _ in range(200):
        record = await mq.status(mail_id)
        if record is not None and record.status.final:
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"mail {mail_id} did not finish: {record}")


def mail(*addresses: str) -> Mail:
    return Mail(subject="s", html="<p>x</p>", to=[Recipient(address=a) for a in addresses])


async def test_a_hard_bounce_suppresses_and_the_next_mail_is_not_sent() -> None:
    async with SMTPTestServer() as server:
        server.faults.append(
            Fault(
                "rcpt",
                address="gone@example.com",
                reply="550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown",
                times=None,
            )
        )
        settings = settings_for(server, hard_bounce_ttl=3600)
        left_out = sample("mailqueue_recipients_suppressed_total")
        added = sample("mailqueue_suppressions_added_total")
        mq = MailQueue.from_settings(settings)
        worker = Worker.from_settings(settings, mq)
        async with mq, worker.sender:
            run = asyncio.create_task(worker.run())
            try:
                first = await mq.submit(mail("Gone@example.com", "ok@example.com"))
                record = await finished(mq, first.id)
                assert record.status is Status.SENT
                states = {r.address: (r.state, r.code) for r in record.recipients}
                assert states == {
                    "Gone@example.com": (RecipientState.FAILED, 550),
                    "ok@example.com": (RecipientState.SENT, 250),
                }
                entries = await mq.suppressions.list(SuppressionQuery())
                assert [(e.address, e.reason, e.mail_id) for e in entries] == [
                    ("gone@example.com", SuppressionReason.HARD_BOUNCE, first.id)
                ]
                assert "5.1.1" in entries[0].text
                assert "User unknown" in entries[0].text
                assert entries[0].expires_at is not None
                assert timedelta(minutes=59) < entries[0].expires_at - utcnow() <= timedelta(hours=1)
                assert await mq.suppressed(mail("GONE@example.com")) == {"GONE@example.com": entries[0]}

                # the next mail to it: not sent, outcome suppressed, the mail failed
                second = await mq.submit(mail("gone@example.com"))
                record = await finished(mq, second.id)
                assert record.status is Status.FAILED
                assert not record.is_ok
                assert [(r.state, r.reply) for r in record.recipients] == [
                    (RecipientState.SUPPRESSED, "suppressed: hard_bounce")
                ]
                assert record.last_code is None
                assert record.history[-1].outcome == "suppressed"
                assert "every recipient is suppressed" in record.last_error

                # a mail to it and another: sent to the other only
                third = await mq.submit(mail("gone@example.com", "ok@example.com"))
                record = await finished(mq, third.id)
                assert record.status is Status.SENT
                assert [r.state for r in record.recipients] == [
                    RecipientState.SUPPRESSED,
                    RecipientState.SENT,
                ]
            finally:
                worker.stop()
                await run
    rcpts = [m.recipients for m in server.messages]
    assert rcpts == [("ok@example.com",), ("ok@example.com",)]
    assert sample("mailqueue_recipients_suppressed_total") - left_out == 2
    assert sample("mailqueue_suppressions_added_total") - added == 1


async def test_policy_refusals_do_not_suppress() -> None:
    async with SMTPTestServer() as server:
        server.faults.append(Fault("rcpt", reply="550 5.7.1 Client host blocked; user unknown", times=None))
        settings = settings_for(server)
        mq = MailQueue.from_settings(settings)
        worker = Worker.from_settings(settings, mq)
        async with mq, worker.sender:
            run = asyncio.create_task(worker.run())
            try:
                record = await finished(mq, (await mq.submit(mail("a@example.com"))).id)
            finally:
                worker.stop()
                await run
            assert record.status is Status.FAILED
            assert await mq.suppressions.count(SuppressionQuery()) == 0


async def test_off_suppresses_nothing_and_adds_nothing() -> None:
    async with SMTPTestServer() as server:
        server.faults.append(Fault("rcpt", address="gone@example.com", reply="550 5.1.1 no such user"))
        settings = settings_for(server, enabled=False)
        mq = MailQueue.from_settings(settings)
        worker = Worker.from_settings(settings, mq)
        async with mq, worker.sender:
            await mq.suppressions.add("listed@example.com", "manual")
            run = asyncio.create_task(worker.run())
            try:
                record = await finished(
                    mq, (await mq.submit(mail("listed@example.com", "gone@example.com"))).id
                )
            finally:
                worker.stop()
                await run
            assert [r.state for r in record.recipients] == [RecipientState.SENT, RecipientState.FAILED]
            assert await mq.suppressions.count(SuppressionQuery()) == 1
    assert [m.recipients for m in server.messages] == [("listed@example.com",)]


async def test_removing_an_address_sends_later_mails_and_resend_sends_the_old_one() -> None:
    async with SMTPTestServer() as server:
        settings = settings_for(server)
        mq = MailQueue.from_settings(settings)
        worker = Worker.from_settings(settings, mq)
        async with mq, worker.sender:
            await mq.suppressions.add("ann@example.com", "unsubscribe")
            run = asyncio.create_task(worker.run())
            try:
                old = await finished(mq, (await mq.submit(mail("ann@example.com"))).id)
                assert old.status is Status.FAILED
                assert await mq.suppressions.remove("Ann@Example.com")
                later = await finished(mq, (await mq.submit(mail("ann@example.com"))).id)
                assert later.status is Status.SENT
                # the old mail stays failed until it is re-sent
                assert (await finished(mq, old.id)).status is Status.FAILED
                assert [r.id for r in await mq.resend(ids=[old.id])] == [old.id]
                for _ in range(200):
                    record = await mq.status(old.id)
                    if record is not None and record.status is Status.SENT:
                        break
                    await asyncio.sleep(0.05)
                assert record is not None
                assert [r.state for r in record.recipients] == [RecipientState.SENT]
            finally:
                worker.stop()
                await run
    assert [m.recipients for m in server.messages] == [("ann@example.com",), ("ann@example.com",)]


async def test_a_refused_transaction_keeps_the_suppressed_recipients_suppressed() -> None:
    async with SMTPTestServer() as server:
        server.faults.append(Fault("data", reply="554 5.7.1 message rejected", times=None))
        settings = settings_for(server)
        mq = MailQueue.from_settings(settings)
        worker = Worker.from_settings(settings, mq)
        async with mq, worker.sender:
            await mq.suppressions.add("gone@example.com", "complaint")
            run = asyncio.create_task(worker.run())
            try:
                record = await finished(mq, (await mq.submit(mail("gone@example.com", "ok@example.com"))).id)
            finally:
                worker.stop()
                await run
            assert record.status is Status.FAILED
            assert [(r.state, r.code) for r in record.recipients] == [
                (RecipientState.SUPPRESSED, None),
                (RecipientState.FAILED, 554),
            ]
            assert record.last_code == 554
            # a policy refusal of the whole mail suppresses nobody
            assert await mq.suppressions.count(SuppressionQuery()) == 1
