"""The bounce listener end to end in-process: a worker sends with VERP return paths to a real
SMTP server, reports come back over SMTP to the listener and are recorded on the mail."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiosmtplib
import pytest
from proc_helpers import eventually
from reports import arf, dsn

from mailqueue import Mail, MailQueue, Recipient, Status, SuppressionQuery, SuppressionReason, Worker, metrics
from mailqueue.bounces.listener import BounceListener, listener_from_settings
from mailqueue.records import RecipientState, RecordQuery, RecordUpdate
from mailqueue.sending.verp import parse_verp, verp_address
from mailqueue.settings import Settings, load_settings
from mailqueue.testing.smtpd import SMTPTestServer

DOMAIN = "bounces.example.com"


@dataclass
class Rig:
    settings: Settings
    mq: MailQueue
    smtpd: SMTPTestServer
    listener: BounceListener

    async def send(self, *addresses: str) -> str:
        """Submit a mail to ``addresses``, let a worker send it; its id."""
        mail = Mail(subject="hello", html="<p>hi</p>", to=[Recipient(address=a) for a in addresses])
        mail_id = (await self.mq.submit(mail)).id
        worker = Worker.from_settings(self.settings, self.mq)
        async with worker.sender:
            run = asyncio.create_task(worker.run())
            try:
                await eventually(lambda: self._finished(mail_id), f"mail {mail_id} sent")
            finally:
                worker.stop()
                await run
        return mail_id

    async def _finished(self, mail_id: str) -> bool:
        record = await self.mq.status(mail_id)
        return record is not None and record.status.final

    def return_path(self, recipient: str) -> str:
        return next(m.envelope_from for m in self.smtpd.messages if m.recipients == (recipient,))

    async def report(self, to: list[str], data: bytes, *, mail_from: str = "") -> tuple[int, str]:
        """Deliver ``data`` to the listener; the reply to DATA (or the first refusal)."""
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.listener.port, start_tls=False)
        async with smtp:
            await smtp.mail(mail_from)
            for address in to:
                try:
                    await smtp.rcpt(address)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    return exc.code, exc.message
            try:
                reply = await smtp.data(data)
            except aiosmtplib.SMTPResponseException as exc:
                return exc.code, exc.message
            return reply.code, reply.message


@pytest.fixture(params=["memory", "sqlite", "mysql", "postgres"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """The worker, the listener and a real SMTP server over one Store: in memory, or SQL."""
    store = "memory://" if request.param == "memory" else request.getfixturevalue(f"{request.param}_url")
    async with SMTPTestServer() as smtpd:
        settings = load_settings(
            store=store,
            queue="memory://",
            attachments="memory://",
            sender=smtpd.url(from_address="news@example.com"),
            bounces={"domain": DOMAIN, "secret": "s3cret", "max_bytes": 64 * 1024},
            retention={"interval": 0},
        )
        async with MailQueue.from_settings(settings) as mq:
            listener = listener_from_settings(settings, mq.store, listen="127.0.0.1:0")
            async with listener:
                yield Rig(settings, mq, smtpd, listener)


def bounces(kind: str) -> float:
    return metrics.BOUNCES.labels(kind=kind)._value.get()


async def test_each_recipient_gets_its_own_transaction_and_verp_return_path(rig: Rig) -> None:
    mail_id = await rig.send("a@example.net", "B@example.net")
    assert sorted(m.recipients for m in rig.smtpd.messages) == [("B@example.net",), ("a@example.net",)]
    paths = {rig.return_path("a@example.net"), rig.return_path("B@example.net")}
    assert len(paths) == 2
    for path in paths:
        assert path == path.lower()
        assert path.startswith(f"news+{mail_id}.")
        assert path.endswith(f"@{DOMAIN}")
        verp = parse_verp(path.upper(), DOMAIN)  # an MTA may fold the case
        assert verp is not None
        assert verp.mail_id == mail_id
    # the same bytes to both: one rendering, the envelope alone differs
    assert len({m.data for m in rig.smtpd.messages}) == 1


async def test_a_hard_bounce_marks_its_recipient_bounced_and_keeps_the_mail_sent(rig: Rig) -> None:
    mail_id = await rig.send("gone@example.net", "here@example.net")
    before = bounces("hard")
    path = rig.return_path("gone@example.net")
    code, reply = await rig.report([path], dsn(path, "gone@example.net"))
    assert (code, reply) == (250, "2.0.0 OK: hard")
    record = await rig.mq.status(mail_id)
    assert record is not None
    assert record.status is Status.SENT  # it reached here@example.net
    states = {r.address: (r.state, r.code, r.reply) for r in record.recipients}
    assert states["here@example.net"][0] is RecipientState.SENT
    assert states["gone@example.net"] == (
        RecipientState.BOUNCED,
        550,
        "5.1.1 550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown",
    )
    last = record.history[-1]
    assert (last.outcome, last.code) == ("bounced", 550)
    assert last.reply.startswith("5.1.1 ")
    assert bounces("hard") == before + 1
    assert [r.id for r in await rig.mq.find(RecordQuery(recipient="gone@example.net"))] == [mail_id]
    # the address is suppressed, with the mail and the report's text; the other one is not
    listed = await rig.mq.suppressions.list(SuppressionQuery())
    assert [(e.address, e.reason, e.mail_id) for e in listed] == [
        ("gone@example.net", SuppressionReason.HARD_BOUNCE, mail_id)
    ]
    assert listed[0].text.startswith("5.1.1 550 5.1.1 <gone@example.net>")
    # and the next mail to it is not sent
    next_id = await rig.send("gone@example.net")
    record = await rig.mq.status(next_id)
    assert record is not None
    assert record.status is Status.FAILED
    assert [r.state for r in record.recipients] == [RecipientState.SUPPRESSED]


async def test_a_mail_whose_every_recipient_bounced_becomes_bounced_once(rig: Rig) -> None:
    mail_id = await rig.send("gone@example.net")
    path = rig.return_path("gone@example.net")
    report = dsn(path, "gone@example.net", diagnostic='X-Postfix; unknown user: "gone"')
    assert (await rig.report([path], report))[0] == 250
    record = await rig.mq.status(mail_id)
    assert record is not None
    assert record.status is Status.BOUNCED
    assert record.recipients[0].state is RecipientState.BOUNCED
    assert record.recipients[0].reply == '5.1.1 unknown user: "gone"'
    found = await rig.mq.find(RecordQuery(statuses=frozenset({Status.BOUNCED})))
    assert [r.id for r in found] == [mail_id]
    attempts = len(record.history)
    # the MTA delivers the same report again: recorded once
    assert (await rig.report([path], report))[0] == 250
    again = await rig.mq.status(mail_id)
    assert again is not None
    assert len(again.history) == attempts


async def test_a_delay_warning_is_recorded_without_changing_the_recipient(rig: Rig) -> None:
    mail_id = await rig.send("slow@example.net")
    before = bounces("soft")
    path = rig.return_path("slow@example.net")
    report = dsn(path, "slow@example.net", status="4.4.1", action="delayed", diagnostic="X-Postfix; timeout")
    assert await rig.report([path], report) == (250, "2.0.0 OK: soft")
    record = await rig.mq.status(mail_id)
    assert record is not None
    assert record.status is Status.SENT
    assert record.recipients[0].state is RecipientState.SENT
    assert (record.history[-1].outcome, record.history[-1].reply) == ("delayed", "4.4.1 timeout")
    assert bounces("soft") == before + 1


async def test_a_complaint_marks_its_recipient_complained(rig: Rig) -> None:
    mail_id = await rig.send("angry@example.net")
    before = bounces("complaint")
    path = rig.return_path("angry@example.net")
    # sent to the provider's feedback address: the VERP is the Original-Mail-From
    code, _ = await rig.report(
        [f"fbl@{DOMAIN}"], arf(f"fbl@{DOMAIN}", "angry@example.net", original_mail_from=path)
    )
    assert code == 250
    record = await rig.mq.status(mail_id)
    assert record is not None
    assert record.status is Status.SENT
    assert record.recipients[0].state is RecipientState.COMPLAINED
    assert record.history[-1].outcome == "complained"
    assert record.history[-1].reply == "feedback-type abuse"
    assert bounces("complaint") == before + 1
    listed = await rig.mq.suppressions.list(SuppressionQuery())
    assert [(e.address, e.reason, e.mail_id, e.text) for e in listed] == [
        ("angry@example.net", SuppressionReason.COMPLAINT, mail_id, "feedback-type abuse")
    ]


async def test_a_report_for_another_domain_is_refused_at_rcpt(rig: Rig) -> None:
    mail_id = await rig.send("a@example.net")
    path = rig.return_path("a@example.net")
    other = path.replace(DOMAIN, "example.org")
    code, message = await rig.report([other], dsn(other, "a@example.net"))
    assert code == 550
    assert "5.7.1" in message
    record = await rig.mq.status(mail_id)
    assert record is not None
    assert (record.status, record.recipients[0].state, len(record.history)) == (
        Status.SENT,
        RecipientState.SENT,
        1,
    )


async def test_a_report_over_the_size_limit_is_refused_and_changes_nothing(rig: Rig) -> None:
    mail_id = await rig.send("a@example.net")
    path = rig.return_path("a@example.net")
    huge = dsn(path, "a@example.net").replace(b"I'm sorry", (b"x" * 76 + b"\r\n") * 1400 + b"I'm sorry")
    code, _ = await rig.report([path], huge)
    assert code == 552
    record = await rig.mq.status(mail_id)
    assert record is not None
    assert (record.status, record.recipients[0].state, len(record.history)) == (
        Status.SENT,
        RecipientState.SENT,
        1,
    )


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda r: r.replace(b"Status: 5.1.1", b"Status: five"), id="bad-status"),
        pytest.param(lambda r: r.replace(b"message/delivery-status", b"text/plain"), id="no-report-part"),
        pytest.param(lambda r: r.replace(b"--B0", b"--XX"), id="broken-mime"),
        pytest.param(lambda r: r.replace(b"delivery-status;", b"nonsense;"), id="unknown-report-type"),
    ],
)
async def test_a_malformed_report_is_refused_and_changes_nothing(rig: Rig, mangle: object) -> None:
    mail_id = await rig.send("a@example.net")
    path = rig.return_path("a@example.net")
    assert callable(mangle)
    code, message = await rig.report([path], mangle(dsn(path, "a@example.net")))
    assert code == 550
    assert "5.6.0" in message
    record = await rig.mq.status(mail_id)
    assert record is not None
    assert (record.status, record.recipients[0].state, len(record.history)) == (
        Status.SENT,
        RecipientState.SENT,
        1,
    )


async def test_a_forged_report_for_a_mail_that_does_not_exist_is_ignored_and_logged(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    mail_id = await rig.send("a@example.net")
    path = rig.return_path("a@example.net")
    before = bounces("unmatched")
    forged = path.replace(mail_id, "0" * 32)
    with caplog.at_level(logging.WARNING, logger="mailqueue.bounces"):
        assert (await rig.report([forged], dsn(forged, "a@example.net")))[0] == 250
    assert f"no mail with id {'0' * 32}" in caplog.text
    # the right mail id with a tag of no recipient (made without the secret)
    tag = path.partition("@")[0].rpartition(".")[2]
    wrong = path.replace(f".{tag}@", ".aaaaaaaa@")
    assert wrong != path
    assert (await rig.report([wrong], dsn(wrong, "a@example.net")))[0] == 250
    assert bounces("unmatched") == before + 2
    record = await rig.mq.status(mail_id)
    assert record is not None
    assert (record.status, record.recipients[0].state, len(record.history)) == (
        Status.SENT,
        RecipientState.SENT,
        1,
    )


async def test_a_non_standard_bounce_is_identified_by_its_verp_address_alone(rig: Rig) -> None:
    mail_id = await rig.send("gone@example.net")
    path = rig.return_path("gone@example.net")
    plain = (
        f"From: postmaster@old-mta.example.net\r\nTo: {path}\r\nSubject: failure notice\r\n\r\n"
        "Sorry, we were unable to deliver your message.\r\n<someone-else@example.net>: 5.1.1 mailbox gone\r\n"
    ).encode()
    assert await rig.report([path], plain) == (250, "2.0.0 OK: hard")
    record = await rig.mq.status(mail_id)
    assert record is not None
    assert record.status is Status.BOUNCED
    assert record.recipients[0].reply == "5.1.1 failure notice"
    # an out-of-office reply, and anything not sent with the null return path, is no bounce
    vacation = f"To: {path}\r\nSubject: Out of office\r\n\r\nback monday, 5.1.1\r\n".encode()
    assert await rig.report([path], vacation) == (250, "2.0.0 OK: nothing to record")
    assert await rig.report([path], plain, mail_from="someone@example.net") == (
        250,
        "2.0.0 OK: nothing to record",
    )


async def test_a_report_for_a_mail_still_being_sent_is_deferred(rig: Rig) -> None:
    mail = Mail(subject="s", html="<p>x</p>", to=[Recipient(address="a@example.net")])
    mail_id = (await rig.mq.submit(mail)).id  # queued: no worker ran
    path = verp_address("news", mail_id, "a@example.net", DOMAIN, b"s3cret")
    code, message = await rig.report([path], dsn(path, "a@example.net"))
    assert (code, message) == (451, "4.3.0 the mail is still being sent; try again later")
    record = await rig.mq.status(mail_id)
    assert record is not None
    assert (record.status, len(record.history)) == (Status.QUEUED, 0)
    # retrying (another recipient waits for its next attempt): that attempt would write every
    # recipient from the copy it read before, so the report waits too
    await rig.mq.store.update(mail_id, RecordUpdate(status=Status.RETRYING))
    assert await rig.report([path], dsn(path, "a@example.net")) == (
        451,
        "4.3.0 the mail is still being sent; try again later",
    )
    record = await rig.mq.status(mail_id)
    assert record is not None
    assert (record.status, len(record.history)) == (Status.RETRYING, 0)
