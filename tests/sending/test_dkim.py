"""DKIM signing: mails sent through the whole chain to a real SMTP server verify with dkimpy
(DNS answered from the keys made here), RSA and Ed25519, with attachments and non-ASCII; a
changed byte does not verify; a key that cannot be used stops ``mailqueue worker``."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from proc_helpers import free_port, run_program

from mailqueue import (
    Attachment,
    Mail,
    MailQueue,
    Recipient,
    Status,
    Worker,
    check_headers,
    list_unsubscribe_headers,
)
from mailqueue.backends.memory import MemorySender
from mailqueue.backends.smtp import SMTPSender
from mailqueue.errors import ConfigurationError, PermanentDeliveryError
from mailqueue.protocols import OutgoingMessage
from mailqueue.sending.accounts import AccountRouter
from mailqueue.sending.dkim import DKIMSigner, from_domain, load_key, signed_headers
from mailqueue.sending.pipeline import build_sender, find_link
from mailqueue.settings import DKIMKeySettings, Settings, load_settings
from mailqueue.testing.smtpd import SMTPTestServer

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + bytes(range(256)) * 40 + b"\r\n.\r\n\x00\r\n%%EOF\n"


@dataclass
class Keys:
    """Key files made for one test, and the DNS TXT records that publish them."""

    folder: Path
    records: dict[str, bytes]

    def entry(self, algorithm: str, domain: str = "example.com") -> dict[str, str]:
        selector = "rsa1" if algorithm == "rsa-sha256" else "ed1"
        return {
            "domain": domain,
            "selector": selector,
            "key_file": str(self.folder / f"{selector}.key"),
            "algorithm": algorithm,
        }

    def dns(self, name: bytes, timeout: float = 5) -> bytes | None:
        """The resolver dkimpy asks: ``<selector>._domainkey.<domain>.`` -> TXT."""
        return self.records.get(name.decode().rstrip(".").lower())


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """An RSA-2048 key (PKCS#1 PEM, as ``openssl genrsa -traditional`` writes) and an Ed25519
    key (the base64 seed ``dknewkey`` writes), for example.com."""
    folder = tmp_path_factory.mktemp("dkim")
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (folder / "rsa1.key").write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    edkey = ed25519.Ed25519PrivateKey.generate()
    seed = edkey.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    (folder / "ed1.key").write_bytes(base64.b64encode(seed))
    raw = edkey.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    records = {
        "rsa1._domainkey.example.com": b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki),
        "ed1._domainkey.example.com": b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw),
    }
    return Keys(folder, records)


def verified(data: bytes, keys: Keys) -> list[bool]:
    """For each DKIM-Signature of ``data``, top first: does it verify?"""
    checker = dkim.DKIM(data)
    count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    results = []
    for index in range(count):
        try:
            results.append(bool(dkim.DKIM(data).verify(idx=index, dnsfunc=keys.dns)))
        except dkim.DKIMException:
            results.append(False)
    return results


def signature_tags(data: bytes) -> list[dict[str, str]]:
    parsed = email.message_from_bytes(data, policy=email.policy.compat32)
    tags = []
    for value in parsed.get_all("DKIM-Signature") or []:
        unfolded = re.sub(r"\s+", "", str(value))
        tags.append(dict(tag.split("=", 1) for tag in unfolded.split(";") if tag))
    return tags


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def memory(sender: str, **settings: object) -> Settings:
    return load_settings(
        store="memory://",
        queue="memory://",
        attachments="memory://",
        sender=sender,
        worker={"concurrency": 2, "retry_base": 0.05, "retry_max": 0.1},
        retention={"interval": 0},
        **settings,
    )


async def send_all(settings: Settings, mails: list[tuple[Mail, list[Attachment]]]) -> list[str]:
    """Submit ``mails`` and run a worker built from ``settings`` until each is sent."""
    mq = MailQueue.from_settings(settings)
    worker = Worker.from_settings(settings, mq)
    async with mq, worker.sender:
        ids = [(await mq.submit(mail, attachments)).id for mail, attachments in mails]
        run = asyncio.create_task(worker.run())
        try:
            for _ in range(400):
                records = [await mq.status(i) for i in ids]
                if all(r is not None and r.status is Status.SENT for r in records):
                    break
                await asyncio.sleep(0.025)
        finally:
            worker.stop()
            await run
    assert [r.status if r else None for r in records] == [Status.SENT] * len(ids)
    return ids


def international() -> tuple[Mail, list[Attachment]]:
    mail = Mail(
        subject="Grüße aus Köln: 東京の請求書 №7",
        html="<p>Sehr geehrter Herr Müller, anbei die Rechnung. 你好 🌍</p>\n<p>.leading dot</p>",
        text="Sehr geehrter Herr Müller,\r\nanbei die Rechnung.\r\n.\r\n你好",
        sender_name="Bücherei Ærøskøbing",
        to=[Recipient(address="joerg@example.org", name="Jörg Müller-Lüdenscheidt")],
        cc=[Recipient(address="kasse@example.net", name="Kasse, Ωmega")],
        reply_to=[Recipient(address="antwort@example.com", name="Antwort Ünd Co")],
    )
    return mail, [Attachment(filename="Rechnung März.pdf", content=PDF, content_type="application/pdf")]


@pytest.fixture
async def smtpd() -> AsyncIterator[SMTPTestServer]:
    async with SMTPTestServer() as server:
        yield server


# --- through the worker to a real SMTP server ---------------------------------------------------


@pytest.mark.parametrize(
    "algorithms",
    [["rsa-sha256"], ["ed25519-sha256"], ["rsa-sha256", "ed25519-sha256"]],
    ids=["rsa", "ed25519", "both"],
)
async def test_mails_received_by_the_server_verify(
    smtpd: SMTPTestServer, keys: Keys, algorithms: list[str]
) -> None:
    settings = memory(smtpd.url(from_address="noreply@example.com"), dkim=[keys.entry(a) for a in algorithms])
    plain = Mail(subject="plain", html="<p>x</p>", to=[Recipient(address="u@example.org")])
    await send_all(settings, [international(), (plain, [])])

    assert len(smtpd.messages) == 2
    for received in smtpd.messages:
        data = received.data
        assert verified(data, keys) == [True] * len(algorithms)
        tags = signature_tags(data)
        assert [t["a"] for t in tags] == algorithms
        assert {t["d"] for t in tags} == {"example.com"}
        assert {t["c"] for t in tags} == {"relaxed/relaxed"}
        assert all("l" not in t for t in tags)
        # the signed message is the message: the attachment and the text arrive as sent
        message = parse(data)
        if message["Subject"] == international()[0].subject:
            attachment = next(message.iter_attachments())
            assert attachment.get_content() == PDF
            assert attachment.get_filename() == "Rechnung März.pdf"
            assert message["To"].addresses[0].display_name == "Jörg Müller-Lüdenscheidt"

        # negative controls: one changed byte of the body, or a header added after signing
        head, _, body = data.partition(b"\r\n\r\n")
        at = len(body) // 2
        flipped = head + b"\r\n\r\n" + body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]
        assert verified(flipped, keys) == [False] * len(algorithms)
        second_from = data.replace(b"\r\nFrom:", b"\r\nFrom: evil@example.net\r\nFrom:", 1)
        assert verified(second_from, keys) == [False] * len(algorithms)
        new_subject = head + b"\r\nSubject: act now\r\n\r\n" + body
        assert verified(new_subject, keys) == [False] * len(algorithms)


async def test_one_click_unsubscribe_and_extra_headers_are_signed(smtpd: SMTPTestServer, keys: Keys) -> None:
    settings = memory(smtpd.url(from_address="noreply@example.com"), dkim=[keys.entry("rsa-sha256")])
    mail, attachments = international()
    headers = (
        *list_unsubscribe_headers("https://example.com/unsubscribe/t0k3n", "mailto:unsubscribe@example.com"),
        ("X-Kampagne", "Frühling 🌷"),
    )
    await send_all(settings, [(mail.model_copy(update={"headers": check_headers(headers)}), attachments)])
    [received] = smtpd.messages
    data = received.data
    assert verified(data, keys) == [True]
    signed = signature_tags(data)[0]["h"].lower().split(":")
    # RFC 8058 §4: both one-click headers signed (and oversigned: one added later breaks it)
    assert signed.count("list-unsubscribe") == 2
    assert signed.count("list-unsubscribe-post") == 2
    assert parse(data)["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # negative control: a receiver-side change of the unsubscribe URL breaks the signature
    changed = data.replace(b"unsubscribe/t0k3n", b"unsubscribe/other", 1)
    assert changed != data
    assert verified(changed, keys) == [False]


async def test_a_from_domain_without_a_key_goes_out_unsigned(
    smtpd: SMTPTestServer, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    settings = memory(
        smtpd.url(from_address="noreply@example.net"), dkim=[keys.entry("rsa-sha256", "example.com")]
    )
    with caplog.at_level(logging.WARNING, logger="mailqueue.dkim"):
        await send_all(settings, [international()])
    assert "no key for example.net" in caplog.text
    [received] = smtpd.messages
    assert b"DKIM-Signature" not in received.data
    assert verified(received.data, keys) == []
    assert next(parse(received.data).iter_attachments()).get_content() == PDF


async def test_the_signature_survives_a_failover_between_accounts(smtpd: SMTPTestServer, keys: Keys) -> None:
    dead = f"smtp://127.0.0.1:{free_port()}/?from=noreply@example.com&timeout=1"
    settings = memory(
        "memory://",
        senders=[
            {"url": dead, "name": "dkim-dead"},
            {"url": smtpd.url(from_address="noreply@example.com"), "name": "dkim-live"},
        ],
        dkim=[keys.entry("rsa-sha256"), keys.entry("ed25519-sha256")],
    )
    chain = build_sender(settings)
    signer = find_link(chain.sender, DKIMSigner)
    assert signer is chain.sender  # outside the router: a failover re-sends the signed bytes
    assert isinstance(signer.inner, AccountRouter)

    await send_all(settings, [international(), international()])
    assert len(smtpd.messages) == 2
    for received in smtpd.messages:
        assert verified(received.data, keys) == [True, True]  # signed once, by each key


async def test_nothing_after_the_signer_changes_the_bytes(smtpd: SMTPTestServer, keys: Keys) -> None:
    # leading dots (dot-stuffed on the wire, un-stuffed by the server) and long lines
    data = (
        b"From: A <a@example.com>\r\nTo: b@example.org\r\nSubject: dots\r\n\r\n"
        b".one\r\n..two\r\n.\r\n" + b"x" * 900 + b"\r\n"
    )
    message = OutgoingMessage("m1", data, "a@example.com", ["b@example.org"])
    key = load_key(DKIMKeySettings.model_validate(keys.entry("rsa-sha256")))
    wire = MemorySender(from_address="a@example.com")
    async with DKIMSigner(wire, [key]) as signer:
        await signer.send(message)
    [signed] = [m.data for m in wire.sent]
    assert signed.startswith(b"DKIM-Signature: ")
    assert signed.endswith(data)
    head = signed[: -len(data)]
    assert head.count(b"\n") == head.count(b"\r\n")
    assert head.endswith(b"\r\n")

    async with DKIMSigner(SMTPSender.from_url(smtpd.url(from_address="a@example.com")), [key]) as signer:
        await signer.send(message)
    [received] = smtpd.messages
    assert received.data.endswith(data)  # CRLF, leading dots: as signed
    assert received.data[: -len(data)].startswith(b"DKIM-Signature: ")
    assert verified(received.data, keys) == [True]


async def test_a_message_that_cannot_be_signed_fails_for_good_and_reaches_no_wire(keys: Keys) -> None:
    key = load_key(DKIMKeySettings.model_validate(keys.entry("ed25519-sha256")))
    wire = MemorySender(from_address="a@example.com")
    broken = b"From: a@example.com\r\nnot a header line\r\n\r\nbody\r\n"
    async with DKIMSigner(wire, [key]) as signer:
        with pytest.raises(PermanentDeliveryError, match="DKIM signing failed"):
            await signer.send(OutgoingMessage("m1", broken, "a@example.com", ["b@example.org"]))
    assert wire.sent == []


# --- headers ----------------------------------------------------------------------------------------


def test_signed_headers_oversign_what_a_reader_sees_and_leave_absent_list_headers_out() -> None:
    fields = [
        ("from", b" a@example.com"),
        ("to", b" b@example.org"),
        ("subject", b" s"),
        ("list-unsubscribe", b" <https://example.com/u>"),
        ("list-unsubscribe-post", b" List-Unsubscribe=One-Click"),
        ("x-campaign", b" 7"),
        ("received", b" from x"),
    ]
    names = signed_headers(fields)
    assert names.count("from") == 2
    assert names.count("cc") == 1  # absent, signed as absent: a Cc added later breaks it
    assert names.count("list-unsubscribe") == 2
    assert names.count("list-unsubscribe-post") == 2
    assert "list-id" not in names  # absent: a mailing list may add its own
    assert "x-campaign" not in names
    assert "received" not in names


@pytest.mark.parametrize(
    ("value", "domain"),
    [
        (b" =?utf-8?b?w5xi?= <Noreply@Example.COM>", "example.com"),
        (b' "Doe, Jane"\r\n <jane@mail.example.com>', "mail.example.com"),
        (b" plain@example.org", "example.org"),
        (b" a@example.com, b@example.net", None),
        (b" undisclosed", None),
    ],
)
def test_from_domain(value: bytes, domain: str | None) -> None:
    assert from_domain([("from", value)]) == domain


def test_two_from_headers_have_no_from_domain() -> None:
    assert from_domain([("from", b" a@example.com"), ("from", b" b@example.com")]) is None


# --- keys that cannot be used ------------------------------------------------------------------


def _pkcs8(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey, password: bytes | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _small_rsa() -> bytes:
    """A 512-bit RSA key: cryptography no longer generates one, but builds it from its primes."""
    p = 0xDDE3D76CCD51ECD8B9E7D6A4FE980A83954E2B7E16AB51EFC3157415768B2A75
    q = 0xC190E036E210464AB7E7384BDFE1251DBCF0976D6554302E1D65DF968FC7BEF1
    e = 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p,
        q,
        d,
        rsa.rsa_crt_dmp1(d, p),
        rsa.rsa_crt_dmq1(d, q),
        rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, p * q),
    )
    return _pkcs8(numbers.private_key())


BAD_KEYS: dict[str, tuple[Callable[[Path], bytes], str, str]] = {
    "missing": (lambda folder: b"", "rsa-sha256", "cannot be read: No such file or directory"),
    "not a key": (lambda folder: b"hello\n", "rsa-sha256", "holds no PEM private key"),
    "public key": (
        lambda folder: (
            ed25519.Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        ),
        "ed25519-sha256",
        "holds a public key",
    ),
    "encrypted": (
        lambda folder: _pkcs8(ed25519.Ed25519PrivateKey.generate(), b"pw"),
        "ed25519-sha256",
        "holds an encrypted key",
    ),
    "rsa key, ed25519 algorithm": (
        lambda folder: (folder / "rsa1.key").read_bytes(),
        "ed25519-sha256",
        "holds an RSA key, but its algorithm is ed25519-sha256",
    ),
    "ed25519 key, rsa algorithm": (
        lambda folder: _pkcs8(ed25519.Ed25519PrivateKey.generate()),
        "rsa-sha256",
        "holds an Ed25519 key, but its algorithm is rsa-sha256",
    ),
    "dknewkey ed25519, rsa algorithm": (
        lambda folder: (folder / "ed1.key").read_bytes(),
        "rsa-sha256",
        "holds an Ed25519 key, but its algorithm is rsa-sha256",
    ),
    "512-bit rsa": (lambda folder: _small_rsa(), "rsa-sha256", "holds a 512-bit RSA key"),
    "broken pem": (
        lambda folder: b"-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAK==\n-----END RSA PRIVATE KEY-----\n",
        "rsa-sha256",
        "holds an RSA key that cannot be read",
    ),
}


def _bad_key(keys: Keys, tmp_path: Path, case: str) -> tuple[DKIMKeySettings, str]:
    make, algorithm, expected = BAD_KEYS[case]
    path = tmp_path / "bad.key"
    if case != "missing":
        path.write_bytes(make(keys.folder))
    entry = DKIMKeySettings(domain="example.com", selector="bad", key_file=path, algorithm=algorithm)  # type: ignore[arg-type]
    return entry, expected


@pytest.mark.parametrize("case", list(BAD_KEYS))
def test_a_key_that_cannot_be_used_is_refused_naming_the_file_and_domain(
    keys: Keys, tmp_path: Path, case: str
) -> None:
    entry, expected = _bad_key(keys, tmp_path, case)
    with pytest.raises(ConfigurationError) as info:
        load_key(entry)
    message = str(info.value)
    assert expected in message
    assert str(entry.key_file) in message
    assert "domain example.com" in message


def test_good_keys_in_every_form_load(keys: Keys, tmp_path: Path) -> None:
    (tmp_path / "rsa8.pem").write_bytes(
        _pkcs8(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    )
    (tmp_path / "ed8.pem").write_bytes(_pkcs8(ed25519.Ed25519PrivateKey.generate()).replace(b"\n", b"\r\n"))
    forms = [
        (keys.folder / "rsa1.key", "rsa-sha256", 2048),  # PKCS#1
        (tmp_path / "rsa8.pem", "rsa-sha256", 2048),  # PKCS#8 (openssl genrsa / genpkey)
        (keys.folder / "ed1.key", "ed25519-sha256", 256),  # dknewkey
        (tmp_path / "ed8.pem", "ed25519-sha256", 256),  # openssl genpkey -algorithm ed25519, CRLF
    ]
    for path, algorithm, bits in forms:
        entry = DKIMKeySettings(domain="Example.COM", selector="s", key_file=path, algorithm=algorithm)  # type: ignore[arg-type]
        key = load_key(entry)
        assert (key.domain, key.bits) == ("example.com", bits)
        assert key.private_key.decode() not in repr(key)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "rsa key, ed25519 algorithm", "broken pem"])
async def test_mailqueue_worker_refuses_to_start_with_a_key_that_cannot_be_used(
    keys: Keys, tmp_path: Path, case: str
) -> None:
    entry, expected = _bad_key(keys, tmp_path, case)
    env = {
        "MAILQUEUE_STORE": "memory://",
        "MAILQUEUE_QUEUE": "memory://",
        "MAILQUEUE_ATTACHMENTS": "memory://",
        "MAILQUEUE_SENDER": "memory://?from=noreply@example.com",
        "MAILQUEUE_DKIM": json.dumps([entry.model_dump(mode="json")]),
    }
    code, out, err = await run_program(sys.executable, "-m", "mailqueue", "worker", cwd=tmp_path, env=env)
    assert code != 0, out + err
    assert expected in err, err
    assert str(entry.key_file) in err
    assert "domain example.com" in err
    assert "Traceback" not in err
