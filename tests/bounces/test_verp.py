"""VERP return paths: the address, and the sending-chain step that gives each recipient its own."""

from __future__ import annotations

import base64
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mailqueue.backends.memory import MemorySender
from mailqueue.errors import PermanentDeliveryError, TransientDeliveryError, UnknownDeliveryError
from mailqueue.protocols import OutgoingMessage, SendResult
from mailqueue.sending.accounts import AccountRouter
from mailqueue.sending.pipeline import build_sender, find_link
from mailqueue.sending.step import SendingStep
from mailqueue.sending.verp import VERPStep, parse_verp, recipient_tag, verp_address
from mailqueue.settings import load_settings
from mailqueue.testing.smtpd import Fault, SMTPTestServer

MAIL_ID = "018f2c3a4b5c6d7e8f90a1b2c3d4e5f6"


def test_a_verp_address_names_its_mail_and_recipient_in_lowercase() -> None:
    path = verp_address("News.Letter", MAIL_ID, "Ann@Example.net", "Bounces.Example.com", b"k")
    local, _, domain = path.partition("@")
    assert path == path.lower()
    assert domain == "bounces.example.com"
    assert local.startswith(f"news.letter+{MAIL_ID}.")
    for seen in (path, path.upper(), f"<{path}>"):
        verp = parse_verp(seen, "bounces.example.com")
        assert verp is not None
        assert verp.mail_id == MAIL_ID
        assert verp.matches("ann@example.net", b"k")
        assert not verp.matches("bob@example.net", b"k")
        assert not verp.matches("ann@example.net", b"other key")


@pytest.mark.parametrize(
    "address",
    [
        f"news+{MAIL_ID}.abcdefgh@example.org",  # another domain
        f"news+{MAIL_ID}@bounces.example.com",  # no tag
        f"news-{MAIL_ID}.abcdefgh@bounces.example.com",  # no +
        "postmaster@bounces.example.com",
        f"news+{MAIL_ID}.abc1@bounces.example.com",  # not a tag: 1 is no base32 digit, too short
        "",
    ],
)
def test_anything_else_is_not_a_verp_address(address: str) -> None:
    assert parse_verp(address, "bounces.example.com") is None


def test_the_tag_depends_on_the_secret_and_not_on_the_case_of_the_address() -> None:
    assert recipient_tag(MAIL_ID, "A@x.net") == recipient_tag(MAIL_ID, "a@x.net")
    assert recipient_tag(MAIL_ID, "a@x.net", b"one") != recipient_tag(MAIL_ID, "a@x.net", b"two")
    assert recipient_tag(MAIL_ID, "a@x.net") != recipient_tag(MAIL_ID, "b@x.net")


def message(*recipients: str, sender: str = "news@example.com") -> OutgoingMessage:
    return OutgoingMessage(MAIL_ID, b"Subject: s\r\n\r\nbody\r\n", sender, list(recipients))


async def test_through_the_account_router_every_account_keeps_the_verp_return_path() -> None:
    async with SMTPTestServer() as first, SMTPTestServer() as second:
        settings = load_settings(
            senders=[
                {"url": first.url(from_address="news@example.com"), "name": "one"},
                {"url": second.url(from_address="other@example.org"), "name": "two"},
            ],
            sender_strategy="round_robin",
            bounces={"domain": "bounces.example.com"},
        )
        chain = build_sender(settings)
        assert isinstance(chain.sender, VERPStep)
        assert find_link(chain.sender, AccountRouter) is not None
        async with chain.sender:
            result = await chain.sender.send(message("a@example.net", "b@example.net"))
        assert sorted(result.accepted) == ["a@example.net", "b@example.net"]
        received = first.messages + second.messages
        assert len(first.messages) == len(second.messages) == 1  # one transaction each, in turn
        for got in received:
            (rcpt,) = got.recipients
            assert got.envelope_from == verp_address("news", MAIL_ID, rcpt, "bounces.example.com")


async def test_without_verp_the_router_still_gives_each_account_its_own_envelope_sender() -> None:
    async with SMTPTestServer() as first:
        settings = load_settings(senders=[{"url": first.url(from_address="news@example.com")}])
        chain = build_sender(settings)
        assert isinstance(chain.sender, AccountRouter)
        async with chain.sender:
            await chain.sender.send(message("a@example.net"))
        assert first.messages[0].envelope_from == "news@example.com"


class Failing(SendingStep):
    """Inner sender that raises ``error`` for the transaction to ``address``."""

    def __init__(self, inner: MemorySender, address: str, error: Exception) -> None:
        super().__init__(inner)
        self.address = address
        self.error = error

    async def send(self, message: OutgoingMessage) -> SendResult:
        if list(message.recipients) == [self.address]:
            raise self.error
        return await self.inner.send(message)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (TransientDeliveryError("4.4.2 connection lost"), 451),
        (TransientDeliveryError("4.3.0 try later", 421), 421),
        (PermanentDeliveryError("5.6.0 content refused", 554), 554),
    ],
)
async def test_a_later_transactions_failure_becomes_that_recipients_reply(
    error: Exception, code: int
) -> None:
    wire = MemorySender(from_address="news@example.com")
    step = VERPStep(Failing(wire, "b@example.net", error), domain="bounces.example.com")
    async with step:
        result = await step.send(message("a@example.net", "b@example.net", "c@example.net"))
    assert result.accepted == ["a@example.net", "c@example.net"]
    assert result.replies["b@example.net"].code == code
    assert [m.recipients for m in wire.sent] == [["a@example.net"], ["c@example.net"]]


async def test_the_first_transactions_failure_and_a_loss_after_the_dot_are_the_mails() -> None:
    wire = MemorySender(from_address="news@example.com")
    step = VERPStep(
        Failing(wire, "a@example.net", TransientDeliveryError("4.4.2 refused")), domain="bounces.example.com"
    )
    async with step:
        with pytest.raises(TransientDeliveryError):
            await step.send(message("a@example.net", "b@example.net"))
    assert wire.sent == []
    lost = VERPStep(
        Failing(wire, "b@example.net", UnknownDeliveryError("lost after the dot")),
        domain="bounces.example.com",
    )
    async with lost:
        with pytest.raises(UnknownDeliveryError):
            await lost.send(message("a@example.net", "b@example.net", "c@example.net"))
    assert [m.recipients for m in wire.sent] == [["a@example.net"]]  # nothing after the loss


async def test_a_recipient_refused_at_rcpt_is_in_the_merged_result() -> None:
    async with SMTPTestServer(
        faults=[Fault("rcpt", "550 5.1.1 no such user", address="b@example.net")]
    ) as smtpd:
        settings = load_settings(
            sender=smtpd.url(from_address="news@example.com"), bounces={"domain": "bounces.example.com"}
        )
        chain = build_sender(settings)
        async with chain.sender:
            result = await chain.sender.send(message("a@example.net", "b@example.net"))
    assert result.accepted == ["a@example.net"]
    assert (result.replies["b@example.net"].code, result.replies["b@example.net"].reply) == (
        550,
        "5.1.1 no such user",
    )


async def test_with_dkim_each_recipients_transaction_carries_the_one_signature_and_verifies(
    tmp_path: Path,
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    (tmp_path / "ed1.key").write_bytes(base64.b64encode(seed))
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    record = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(public)

    def dns(name: bytes, timeout: float = 5) -> bytes | None:
        return record if name.decode().rstrip(".").lower() == "ed1._domainkey.example.com" else None

    async with SMTPTestServer() as smtpd:
        settings = load_settings(
            sender=smtpd.url(from_address="news@example.com"),
            dkim=[
                {
                    "domain": "example.com",
                    "selector": "ed1",
                    "key_file": str(tmp_path / "ed1.key"),
                    "algorithm": "ed25519-sha256",
                }
            ],
            bounces={"domain": "bounces.example.com"},
        )
        chain = build_sender(settings)
        data = b"From: news@example.com\r\nTo: a@example.net\r\nSubject: s\r\n\r\nbody\r\n"
        async with chain.sender:
            result = await chain.sender.send(
                OutgoingMessage(MAIL_ID, data, "news@example.com", ["a@example.net", "b@example.net"])
            )
    assert sorted(result.accepted) == ["a@example.net", "b@example.net"]
    first, second = smtpd.messages
    assert first.envelope_from != second.envelope_from  # a return path each
    assert first.data == second.data  # signed once, the same bytes to both
    assert first.data.startswith(b"DKIM-Signature:")
    assert dkim.DKIM(first.data).verify(dnsfunc=dns)
