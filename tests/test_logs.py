"""Structured logs: kv and JSON lines, the mail id on every line about a mail, no secrets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from proc_helpers import eventually, free_port, mailqueue

from mailqueue import Mail, MailQueue, Recipient, Status, Worker, WorkerSettings, load_settings
from mailqueue.backends.memory import MemoryQueue
from mailqueue.backends.smtp import SMTPSender
from mailqueue.cli import _configure_logging
from mailqueue.logs import bind_mail_id, configure_logging
from mailqueue.stores.memory import MemoryAttachmentStore, MemoryStore
from mailqueue.testing.smtpd import Fault, SMTPTestServer

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
def test_kv_timestamp_and_any_case_bearer() -> None:
    out = io.StringIO()
    configure_logging("INFO", "kv", stream=out)
    record = logging.LogRecord("mailqueue.test", logging.INFO, __file__, 1, "BeArEr s3cr3t-t0k", None, None)
    for created in (1_764_409_526.1946, 1_764_409_527.0004):  # the second's prefix is made anew
        record.created = created
        logging.getLogger("mailqueue.test").handle(record)
    first, second = out.getvalue().splitlines()
    assert first.startswith("ts=2025-11-29T09:45:26.194+00:00 level=info")
    assert second.startswith("ts=2025-11-29T09:45:27.000+00:00 ")
    assert "s3cr3t-t0k" not in out.getvalue()
    assert "BeArEr ***" in first


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
def test_cli_logging_hides_the_accounts_and_rate_store_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(
        senders=[
            {"url": "smtp://main:first-S3cret@127.0.0.1:2525?from=a@example.com", "name": "main"},
            {"url": "smtp://backup:second-S3cret@127.0.0.1:2526?from=a@example.com", "name": "backup"},
        ],
        worker={"rate": "5/s", "rate_store": "redis://:redis-S3cret@127.0.0.1:6379/0"},
        log_format="kv",
    )
    _configure_logging(settings)
    log.error("refused: first-S3cret second-S3cret redis-S3cret")
    err = capsys.readouterr().err
    assert "level=error" in err
    assert "first-S3cret" not in err
    assert "second-S3cret" not in err
    assert "redis-S3cret" not in err


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


@pytest.mark.slow
async def test_worker_process_json_logs_metrics_and_no_password(tmp_path: Path) -> None:
    """``mailqueue worker --log-format json`` as a process: JSON lines, mail ids, no SMTP password."""
    password = "Sup3r-Secret-pw"
    port = free_port()
    async with SMTPTestServer(auth=("mailer", password)) as server:
        # the first MAIL FROM is deferred with the password in the reply: it must not reach the log
        server.faults.append(Fault("mail", reply=f"451 4.7.0 try later, {password} is throttled"))
        env = {
            "MAILQUEUE_STORE": f"sqlite+aiosqlite:///{tmp_path}/mq.db",
            "MAILQUEUE_QUEUE": "sql://?poll=0.05",
            "MAILQUEUE_ATTACHMENTS": f"file://{tmp_path}/att",
            "MAILQUEUE_SENDER": server.url(from_address="noreply@example.com", timeout="5"),
            "MAILQUEUE_WORKER__METRICS_PORT": str(port),
            "MAILQUEUE_WORKER__RETRY_BASE": "0.1",
            "MAILQUEUE_WORKER__RETRY_MAX": "0.2",
        }
        top = {k.removeprefix("MAILQUEUE_").lower(): v for k, v in env.items() if "__" not in k}
        settings = load_settings(**top)
        async with MailQueue.from_settings(settings) as mq:
            ids = []
            for i in range(2):
                mail = Mail(subject=f"n{i}", html="<p>x</p>", to=[Recipient(address=f"u{i}@example.com")])
                ids.append((await mq.submit(mail)).id)
            argv = ("worker", "--log-format", "json")
            async with mailqueue(tmp_path, *argv, env=env, log=tmp_path / "w.log") as proc:

                async def all_sent() -> bool:
                    records = [await mq.status(i) for i in ids]
                    return all(r is not None and r.status is Status.SENT for r in records)

                await eventually(all_sent, "both mails sent")
                async with httpx.AsyncClient() as http:
                    scrape = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                    ready = await http.get(f"http://127.0.0.1:{port}/health/ready")
                await proc.stop()
        log_text = (tmp_path / "w.log").read_text(encoding="utf-8")
    assert ready.status_code == 200
    assert 'mailqueue_mails_finished_total{status="sent"} 2.0' in scrape
    assert 'mailqueue_retries_total{code="451",reply_class="4xx"} 1.0' in scrape
    assert password not in log_text
    lines = [json.loads(line) for line in log_text.splitlines() if line.strip()]
    assert lines, log_text
    about = [line for line in lines if "status=" in line["msg"]]
    assert {line["mail_id"] for line in about} == set(ids)
    assert any("***" in line["msg"] for line in about)  # the refusal, with the password hidden
    # uvloop is installed in the test environment (mailqueue[speedups]): the worker runs on it
    assert {"event loop: uvloop"} <= {line["msg"] for line in lines}
