"""The listener as an operator runs it: ``mailqueue bounces`` alone, and inside ``mailqueue serve``
with ``bounces.listen``, as real processes."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiosmtplib
import httpx
import pytest
from proc_helpers import eventually, free_port, mailqueue, run_program, wait_ready
from reports import dsn

from mailqueue.testing.smtpd import SMTPTestServer

pytestmark = pytest.mark.slow

DOMAIN = "bounces.example.com"
FAST = {"MAILQUEUE_QUEUE": "sql://?poll=0.05", "MAILQUEUE_LOG_LEVEL": "INFO"}


async def deliver(port: int, to: str, data: bytes) -> tuple[int, str]:
    """Hand ``data`` to the listener with the null return path; the reply that ended it."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as smtp:
        await smtp.mail("")
        try:
            await smtp.rcpt(to)
        except aiosmtplib.SMTPRecipientRefused as exc:
            return exc.code, exc.message
        reply = await smtp.data(data)
        return reply.code, reply.message


async def listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def test_mailqueue_bounces_refuses_other_domains_ignores_forgeries_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {**FAST, "MAILQUEUE_BOUNCES__DOMAIN": DOMAIN}
    log = tmp_path / "bounces.log"
    async with mailqueue(tmp_path, "bounces", "--listen", f"127.0.0.1:{port}", env=env, log=log) as proc:
        await eventually(lambda: listening(port), "the listener", proc)
        code, message = await deliver(port, "x@example.org", b"Subject: x\r\n\r\nx\r\n")
        assert (code, message[:5]) == (550, "5.7.1")
        forged = f"news+{'0' * 32}.abcdefgh@{DOMAIN}"
        assert await deliver(port, forged, dsn(forged, "a@example.net")) == (250, "2.0.0 OK: unmatched")
        await proc.stop(signal.SIGTERM)
    output = log.read_text()
    assert f"no mail with id {'0' * 32}" in output
    assert "refused a report for 'x@example.org'" in output
    assert "EHLO" not in output  # aiosmtpd's own narration is turned down


async def test_mailqueue_bounces_without_a_domain_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = await run_program(sys.executable, "-m", "mailqueue", "bounces", cwd=tmp_path)
    assert code == 2
    assert "bounces.domain" in err


async def test_serve_with_bounces_listen_records_a_bounce_the_api_then_shows(tmp_path: Path) -> None:
    async with SMTPTestServer() as smtp:
        # ports picked once the SMTP server has its own (it could take a port picked before)
        port, listen = free_port(), free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **FAST,
            "MAILQUEUE_SENDER": smtp.url(from_address="news@example.com"),
            "MAILQUEUE_BOUNCES__DOMAIN": DOMAIN,
            "MAILQUEUE_BOUNCES__LISTEN": f"127.0.0.1:{listen}",
        }
        log = tmp_path / "serve.log"
        async with mailqueue(tmp_path, "serve", "--port", str(port), env=env, log=log) as serve:
            await wait_ready(serve, base)
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                reply = await client.post(
                    "/api/email/send",
                    data={"title": "t", "content": "c", "sender_name": "s", "receiver": "gone@example.net"},
                )
                assert reply.status_code == 200, reply.text
                mail_id = reply.json()["data"]["id"]

                async def sent() -> bool:
                    return bool(
                        (await client.get(f"/api/email/{mail_id}")).json()["data"]["status"] == "sent"
                    )

                await eventually(sent, "the mail sent", serve)
                (message,) = smtp.messages
                path = message.envelope_from
                assert path.startswith(f"news+{mail_id}.")
                assert await deliver(listen, path, dsn(path, "gone@example.net")) == (250, "2.0.0 OK: hard")
                data = (await client.get(f"/api/email/{mail_id}")).json()["data"]
            await serve.stop(signal.SIGTERM)
    assert data["status"] == "bounced"
    (recipient,) = data["recipients"]
    assert recipient["state"] == "bounced"
    assert recipient["reply"].startswith("5.1.1 550 5.1.1")
