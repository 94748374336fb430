"""Structured logs: kv and JSON lines, the mail id on every line about a mail, no secrets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from mailqueue import Mail, MailQueue, Recipient, Status, Worker, WorkerSettings, load_settings
from mailqueue.backends.memory import MemoryQueue
from mailqueue.backends.smtp import SMTPSender
from mailqueue.cli import _configure_logging
from mailqueue.logs import bind_mail_id, configure_logging
from mailqueue.stores.memory import MemoryAttachmentStore, MemoryStore
from mailqueue.testing.smtpd import SMTPTestServer

log = logging.getLogger("mailqueue.test")


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root")
def test_kv_lines_carry_mail_id_and_hide_url_passwords_and_secrets() -> None:
    out = io.StringIO()
    configure_logging("INFO", "kv", secrets=["hunter2-token"], stream=out)
    with bind_mail_id("01MAILID"):
        log.warning("cannot reach %s", "amqp://guest:s3cr3t@127.0.0.1:5672/")
    log.info("token %s and header Bearer abc.def-123", "hunter2-token")
    try:
        raise RuntimeError("failed with smtp://user:pa55word@127.0.0.1:25")
    except RuntimeError:
        log.exception("boom")
    first, second, third = out.getvalue().splitlines()[:3]
    assert "mail_id=01MAILID" in first
    assert "level=warning" in first
    assert "logger=mailqueue.test" in first
    assert 'msg="cannot reach amqp://guest:***@127.0.0.1:5672/"' in first
    assert "mail_id" not in second
    assert "hunter2-token" not in second
    assert "Bearer ***" in second
    assert "exc=" in third  # the traceback is on the same line, escaped
    text = out.getvalue()
    for secret in ("s3cr3t", "hunter2-token", "pa55word", "abc.def-123"):
        assert secret not in text


@pytest.mark.usefixtures("restore_root")
def test_json_lines() -> None:
    out = io.StringIO()
    configure_logging("DEBUG", "json", stream=out)
    with bind_mail_id("01JSON"):
        log.debug("sending to %s", "postgresql://app:topsecret@db/mail")
    line = json.loads(out.getvalue().splitlines()[0])
    assert line["mail_id"] == "01JSON"
    assert line["level"] == "debug"
    assert line["msg"] == "sending to postgresql://app:***@db/mail"
    assert set(line) == {"ts", "level", "logger", "mail_id", "msg"}


@pytest.mark.usefixtures("restore_root")
def test_cli_logging_hides_the_settings_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(
        sender="smtp://mailer:p%40ss-w0rd@127.0.0.1:2525?from=a@example.com",
        api={"tokens": ["tok-abcdef-123456"]},
        log_format="kv",
    )
    _configure_logging(settings)
    # a library may print a secret without the URL around it, decoded
    log.error("login refused for mailer / p@ss-w0rd; token tok-abcdef-123456")
    err = capsys.readouterr().err
    assert "level=error" in err
    assert "p@ss-w0rd" not in err
    assert "tok-abcdef-123456" not in err


@pytest.mark.usefixtures("restore_root")
async def test_worker_lines_about_a_mail_carry_its_id() -> None:
    out = io.StringIO()
    configure_logging("INFO", "kv", stream=out)
    async with SMTPTestServer() as server:
        store, queue, attachments = MemoryStore(), MemoryQueue(), MemoryAttachmentStore()
        sender = SMTPSender.from_url(server.url(from_address="noreply@example.com", timeout="2"))
        async with store, queue, attachments, sender:
            mq = MailQueue(store=store, queue=queue, attachments=attachments)
            work = Worker(
                queue=queue, store=store, attachments=attachments, sender=sender, settings=WorkerSettings()
            )
            task = asyncio.create_task(work.run())
            record = await mq.submit(
                Mail(subject="Hi", html="<p>x</p>", to=[Recipient(address="a@b.example")])
            )
            for _ in range(200):
                current = await store.get(record.id)
                if current is not None and current.status is Status.SENT:
                    break
                await asyncio.sleep(0.02)
            work.stop()
            await asyncio.wait_for(task, 10)
    lines = [line for line in out.getvalue().splitlines() if "status=sent" in line]
    assert lines, out.getvalue()
    assert all(f"mail_id={record.id}" in line for line in lines)
    started = next(line for line in out.getvalue().splitlines() if "worker started" in line)
    assert "mail_id=" not in started
