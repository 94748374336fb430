"""The deliverability features together, as a deployment runs them: ``mailqueue serve`` (API and
worker) on MariaDB and RabbitMQ, DKIM keys, VERP return paths, the bounce listener and the
suppression list, against a real SMTP server.

One mail is DKIM-signed (verified with dkimpy), carries a generated text part and goes out with a
VERP return path per recipient; its refused recipient (550 5.1.1) is suppressed, and the next mail
to that address is answered ``suppressed`` at submit and never reaches the wire. A DSN that comes
back for the delivered recipient marks it ``bounced`` and suppresses it too.
"""

from __future__ import annotations

import base64
import json
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import dkim
import httpx
import pytest
from brokers import delete_amqp_objects
from conftest import _run
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from proc_helpers import eventually, free_port, mailqueue, parse, wait_ready
from reports import dsn
from test_commands import deliver

from mailqueue.testing.smtpd import Fault, SMTPTestServer

pytestmark = pytest.mark.slow

BOUNCES = "bounces.example.com"


@pytest.fixture
def amqp_queue(rabbitmq_url: str) -> Iterator[str]:
    name = f"mq_deliv_{secrets.token_hex(4)}"
    yield f"{rabbitmq_url}?queue={name}&exchange={name}"
    _run(delete_amqp_objects(rabbitmq_url, name))


async def test_signed_verp_mail_suppression_and_bounces_on_mariadb_and_rabbitmq(
    tmp_path: Path, mysql_url: str, amqp_queue: str
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    (tmp_path / "ed1.key").write_bytes(base64.b64encode(seed))
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    txt = {"ed1._domainkey.example.com": b"v=DKIM1; k=ed25519; p=" + base64.b64encode(public)}

    def dns(name: bytes, timeout: float = 5) -> bytes | None:
        return txt.get(name.decode().rstrip(".").lower())

    refused = Fault("rcpt", reply="550 5.1.1 <gone@example.net>: user unknown", address="gone@example.net")
    async with SMTPTestServer(faults=[refused]) as smtp:
        # ports picked once the SMTP server has its own (it could take a port picked before)
        port, listen = free_port(), free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            "MAILQUEUE_STORE": mysql_url,
            "MAILQUEUE_QUEUE": amqp_queue,
            "MAILQUEUE_ATTACHMENTS": "sql://",
            "MAILQUEUE_SENDER": smtp.url(from_address="news@example.com"),
            "MAILQUEUE_DKIM": json.dumps(
                [
                    {
                        "domain": "example.com",
                        "selector": "ed1",
                        "key_file": str(tmp_path / "ed1.key"),
                        "algorithm": "ed25519-sha256",
                    }
                ]
            ),
            "MAILQUEUE_BOUNCES__DOMAIN": BOUNCES,
            "MAILQUEUE_BOUNCES__SECRET": "s3cret",
            "MAILQUEUE_BOUNCES__LISTEN": f"127.0.0.1:{listen}",
            "MAILQUEUE_LOG_LEVEL": "INFO",
        }
        log = tmp_path / "serve.log"
        async with mailqueue(tmp_path, "serve", "--port", str(port), env=env, log=log) as serve:
            await wait_ready(serve, base)
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:

                async def record(mail_id: str) -> dict[str, object]:
                    data: dict[str, object] = (await client.get(f"/api/email/{mail_id}")).json()["data"]
                    return data

                async def status_is(mail_id: str, *status: str) -> bool:
                    return (await record(mail_id))["status"] in status

                first = await client.post(
                    "/api/email/send",
                    json={
                        "title": "Your invoice",
                        "content": "<p>Hello <b>Ann</b>, see <a href='https://example.com/i/1'>#1</a></p>",
                        "sender_name": "Billing",
                        "receiver": ["ann@example.net", "gone@example.net"],
                    },
                )
                assert first.status_code == 200, first.text
                first_id = first.json()["data"]["id"]
                await eventually(lambda: status_is(first_id, "sent"), "the first mail sent", serve)

                # signed, with a text part, and a VERP return path for each recipient
                (message,) = smtp.messages  # gone@ was refused at RCPT: one transaction arrived
                assert message.recipients == ("ann@example.net",)
                assert message.envelope_from.startswith(f"news+{first_id}.")
                assert message.envelope_from.endswith(f"@{BOUNCES}")
                assert dkim.DKIM(message.data).verify(dnsfunc=dns)
                tampered = message.data.replace(b"Your invoice", b"Your lnvoice")
                assert not dkim.DKIM(tampered).verify(dnsfunc=dns)  # the check can fail
                plain = parse(message.data).get_body(preferencelist=("plain",))
                assert plain is not None
                assert "#1 <https://example.com/i/1>" in plain.get_content()

                # the refused mailbox is on the suppression list, with the reply and the mail
                listed = (await client.get("/api/suppressions", params={"address": "gone@"})).json()["data"]
                (entry,) = listed["items"]
                assert entry["address"] == "gone@example.net"
                assert entry["reason"] == "hard_bounce"
                assert entry["mail_id"] == first_id
                assert "5.1.1" in entry["text"]

                # the next mail to it is answered suppressed, ends failed, and reaches no wire
                second = await client.post(
                    "/api/email/send",
                    json={
                        "title": "Again",
                        "content": "<p>x</p>",
                        "sender_name": "B",
                        "receiver": "gone@example.net",
                    },
                )
                assert second.status_code == 200, second.text
                assert second.json()["data"]["suppressed"] == [
                    {"address": "gone@example.net", "reason": "hard_bounce"}
                ]
                second_id = second.json()["data"]["id"]
                await eventually(lambda: status_is(second_id, "failed"), "the second mail failed", serve)
                (recipient,) = (await record(second_id))["recipients"]  # type: ignore[misc]
                assert recipient["state"] == "suppressed"
                assert len(smtp.messages) == 1

                # a DSN that comes back later for ann@ marks her bounced and suppresses her
                path = message.envelope_from
                assert await deliver(listen, path, dsn(path, "ann@example.net")) == (250, "2.0.0 OK: hard")
                bounced = await record(first_id)
                states = {r["address"]: r["state"] for r in bounced["recipients"]}  # type: ignore[attr-defined]
                assert states == {"ann@example.net": "bounced", "gone@example.net": "failed"}
                listed = (await client.get("/api/suppressions", params={"address": "ann@"})).json()["data"]
                assert [e["reason"] for e in listed["items"]] == ["hard_bounce"]
            await serve.stop(signal.SIGTERM)
