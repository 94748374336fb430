"""The ``mailqueue`` command.

Whatever crosses a process boundary (the embedded default end to end, where
settings are found, the worker and its signals, a re-send picked up by a
running worker) runs ``python -m mailqueue`` as a real process, in a
temporary working folder, with every ``MAILQUEUE_*`` variable of the outer
environment removed. Arguments and exit codes are checked in-process with
click's ``CliRunner``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from proc_helpers import clean_env, eventually, run_program

from mailqueue import __version__, registry
from mailqueue.cli import _uvicorn_options, main
from mailqueue.protocols import Store
from mailqueue.records import MailRecord, Status
from mailqueue.settings import Settings
from mailqueue.sql import migrate
from mailqueue.testing.smtpd import Fault, SMTPTestServer

MAIL_ID = re.compile(r"[0-9a-f]{32}")
#: Short waits so that a worker notices new mail and stops at once.
FAST = {
    "MAILQUEUE_QUEUE": "sql://?poll=0.05",
    "MAILQUEUE_WORKER__RETRY_BASE": "0.05",
    "MAILQUEUE_WORKER__RETRY_MAX": "0.1",
    "MAILQUEUE_WORKER__SHUTDOWN_TIMEOUT": "5",
}
#: Generous limits for things that normally take a fraction of a second.
WITHIN = 20.0


# --- helpers -------------------------------------------------------------------


def mailqueue(
    cwd: Path, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mailqueue ARGS`` in ``cwd`` and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "mailqueue", *args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def invoke(args: list[str], env: Mapping[str, str] | None = None) -> Result:
    """Run the command in this process (working folder: the current one)."""
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("MAILQUEUE_")}
    return CliRunner().invoke(main, args, env={**unset, **(env or {})}, catch_exceptions=False)


@contextlib.contextmanager
def worker_process(cwd: Path, env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A ``mailqueue worker`` process, its output in ``cwd/../worker.log``; killed if still running."""
    with (cwd.parent / "worker.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailqueue", "worker"],
            cwd=cwd,
            env=clean_env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop_worker(proc: subprocess.Popen[bytes], cwd: Path) -> None:
    """SIGTERM: the worker drains and exits 0."""
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=WITHIN)
    assert code == 0, (cwd.parent / "worker.log").read_text()


def wait_until(condition: Callable[[], bool], what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + WITHIN
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{log.read_text() if log else ''}")
        time.sleep(0.05)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def listed(result: Result) -> list[str]:
    """Ids printed by ``resend`` (one ``id<TAB>status<TAB>subject`` line each)."""
    return [line.split("\t")[0] for line in result.stdout.splitlines() if line]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in the (empty) temporary folder, as a person would in a fresh directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- 1. the embedded default, end to end ----------------------------------------


def test_embedded_default_end_to_end(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    document = tmp_path / "Rechnung März 42.pdf"
    content = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\r\n.\r\n\x00end"
    document.write_bytes(content)

    upgraded = mailqueue(app, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"database is at revision {migrate.head_revision()}" in upgraded.stdout
    assert (app / "mailqueue.db").is_file()

    sent = mailqueue(
        app,
        "send",
        "--to",
        "Ann <ann@example.com>",
        "--subject",
        "Invoice 42 — €",
        "--html",
        "<p>Your invoice is attached.</p>",
        "--attach",
        str(document),
    )
    assert sent.returncode == 0, sent.stderr
    mail_id = sent.stdout.strip()
    assert MAIL_ID.fullmatch(mail_id), sent.stdout
    assert len(files_under(app / "attachments")) == 1  # stored under a generated key
    assert not (app / "outbox").exists()  # nothing is sent before a worker runs

    eml = app / "outbox" / f"{mail_id}.eml"
    with worker_process(app, FAST) as worker:
        wait_until(eml.exists, "the worker to write the .eml", tmp_path / "worker.log")
        stop_worker(worker, app)

    message = parse(eml.read_bytes())
    assert message["Subject"] == "Invoice 42 — €"
    (to,) = message["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Ann", "ann@example.com")
    html = message.get_body(("html",))
    assert html is not None
    assert "<p>Your invoice is attached.</p>" in html.get_content()
    (attachment,) = list(message.iter_attachments())
    assert attachment.get_filename() == "Rechnung März 42.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_payload(decode=True) == content

    envelope = json.loads((app / "outbox" / f"{mail_id}.json").read_text())
    assert envelope["mail_id"] == mail_id
    assert envelope["recipients"] == ["ann@example.com"]
    assert envelope["envelope_from"] == message["From"].addresses[0].addr_spec
    assert envelope["size"] == eml.stat().st_size

    shown = mailqueue(app, "show", mail_id)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^status:\s+sent$", shown.stdout, re.M), shown.stdout
    assert re.search(r"^attempts:\s+1$", shown.stdout, re.M), shown.stdout
    assert "ann@example.com" in shown.stdout
    assert files_under(app / "attachments") == []  # deleted once sent


# --- 2. where the settings come from ---------------------------------------------


def test_config_file_before_or_after_the_subcommand_and_from_the_environment(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "note.txt").write_text("attached")
    (app / "custom.yaml").write_text(
        f"store: sqlite+aiosqlite:///{tmp_path / 'data' / 'custom.db'}\n"
        f"attachments: file://{tmp_path / 'files'}\n"
        f"sender: outbox://{tmp_path / 'mail-out'}?from=noreply@example.org\n"
        "queue: sql://?poll=0.05\n"
        "worker: {shutdown_timeout: 5, retry_base: 0.05}\n"
    )
    mail = ["--to", "a@example.com", "--subject", "s", "--html", "<p>x</p>", "--attach", "note.txt"]

    before = mailqueue(app, "--config", "custom.yaml", "send", *mail)
    after = mailqueue(app, "send", "--config", str(app / "custom.yaml"), *mail)
    assert before.returncode == 0, before.stderr
    assert after.returncode == 0, after.stderr
    ids = [before.stdout.strip(), after.stdout.strip()]
    assert all(MAIL_ID.fullmatch(i) for i in ids)
    assert ids[0] != ids[1]

    assert (tmp_path / "data" / "custom.db").is_file()
    assert len(files_under(tmp_path / "files")) == 2
    # nothing of the embedded default appeared in the working folder
    assert sorted(p.name for p in app.iterdir()) == ["custom.yaml", "note.txt"]

    from_env = {"MAILQUEUE_CONFIG": str(app / "custom.yaml")}
    with worker_process(app, from_env) as worker:
        wait_until(
            lambda: all((tmp_path / "mail-out" / f"{i}.eml").exists() for i in ids),
            "both mails in the configured outbox",
            tmp_path / "worker.log",
        )
        stop_worker(worker, app)
    for mail_id in ids:
        message = parse((tmp_path / "mail-out" / f"{mail_id}.eml").read_bytes())
        assert message["From"].addresses[0].addr_spec == "noreply@example.org"
        assert str(message["Message-ID"]).endswith("@example.org>")  # domain of the configured from
    assert not (app / "outbox").exists()

    shown = mailqueue(app, "show", ids[0], env=from_env)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^status:\s+sent$", shown.stdout, re.M), shown.stdout
    assert files_under(tmp_path / "files") == []


def test_the_environment_wins_over_the_config_file(in_tmp: Path) -> None:
    (in_tmp / "f.yaml").write_text(f"store: sqlite+aiosqlite:///{in_tmp / 'from-file.db'}\n")
    result = invoke(
        ["--config", "f.yaml", "send", "--to", "a@example.com", "--subject", "s", "--html", "x"],
        {"MAILQUEUE_STORE": f"sqlite+aiosqlite:///{in_tmp / 'from-env.db'}"},
    )
    assert result.exit_code == 0, result.output
    assert (in_tmp / "from-env.db").is_file()
    assert not (in_tmp / "from-file.db").exists()


def test_config_after_the_subcommand_beats_mailqueue_config(in_tmp: Path) -> None:
    (in_tmp / "a.yaml").write_text("store: sqlite+aiosqlite:///./a.db\n")
    (in_tmp / "b.yaml").write_text("store: sqlite+aiosqlite:///./b.db\n")
    result = invoke(
        ["send", "--config", "a.yaml", "--to", "a@example.com", "--subject", "s", "--html", "x"],
        {"MAILQUEUE_CONFIG": "b.yaml"},
    )
    assert result.exit_code == 0, result.output
    assert (in_tmp / "a.db").is_file()
    assert not (in_tmp / "b.db").exists()


@pytest.mark.parametrize("where", ["before", "after"])
def test_db_upgrade_uses_the_config_file(in_tmp: Path, where: str) -> None:
    (in_tmp / "f.yaml").write_text("store: sqlite+aiosqlite:///./custom.db\n")
    args = (
        ["--config", "f.yaml", "db", "upgrade"]
        if where == "before"
        else ["db", "upgrade", "--config", "f.yaml"]
    )
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert f"revision {migrate.head_revision()}" in result.stdout
    assert (in_tmp / "custom.db").is_file()
    assert not (in_tmp / "mailqueue.db").exists()


# --- 3. resend ----------------------------------------------------------------------


async def run_async(cwd: Path, *args: str, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m mailqueue ARGS`` without blocking the event loop."""
    return await run_program(sys.executable, "-m", "mailqueue", *args, cwd=cwd, env=env)


@contextlib.asynccontextmanager
async def async_worker(cwd: Path, env: Mapping[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    with (cwd / "worker.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailqueue", "worker", cwd=cwd, env=clean_env(env), stdout=log, stderr=log
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def wait_status(store: Store, mail_id: str, status: Status, log: Path) -> MailRecord:
    seen: list[MailRecord | None] = [None]

    async def reached() -> MailRecord | None:
        seen[0] = record = await store.get(mail_id)
        return record if record is not None and record.status is status else None

    def what() -> str:
        record = seen[0]
        return f"mail {mail_id} to be {status}; it is {record and record.status}\n{log.read_text()}"

    found: MailRecord = await eventually(reached, what, within=WITHIN)
    return found


async def test_resend_selects_and_requeues_a_failed_mail(in_tmp: Path) -> None:
    log = in_tmp / "worker.log"

    async def cli(*args: str) -> Result:
        return await asyncio.to_thread(invoke, list(args), env)

    async with SMTPTestServer(faults=[Fault("data_end", reply="550 5.7.1 no", times=1)]) as server:
        env = {
            **FAST,
            "MAILQUEUE_SENDER": server.url(from_address="noreply@example.com", timeout="5"),
            "MAILQUEUE_LOG_LEVEL": "WARNING",
        }
        store = registry.create_store(f"sqlite+aiosqlite:///{in_tmp / 'mailqueue.db'}")
        async with store, async_worker(in_tmp, env) as worker:
            first = await cli("send", "--to", "a@example.com", "--subject", "first", "--html", "<p>1</p>")
            assert first.exit_code == 0, first.output
            a = first.stdout.strip()
            failed = await wait_status(store, a, Status.FAILED, log)  # 550 after the dot: for good
            assert (failed.attempts, failed.last_code) == (1, 550)
            second = await cli("send", "--to", "b@example.com", "--subject", "second", "--html", "<p>2</p>")
            assert second.exit_code == 0, second.output
            b = second.stdout.strip()
            sent_b = await wait_status(store, b, Status.SENT, log)
            assert len(server.messages) == 1

            dry = await cli("resend", "--dry-run")
            assert dry.exit_code == 0, dry.output
            assert dry.stdout.splitlines() == [f"{a}\tfailed\tfirst"]
            assert "would re-send 1 mail(s)" in dry.stderr
            unchanged = await store.get(a)
            assert unchanged is not None
            assert (unchanged.status, unchanged.attempts) == (Status.FAILED, 1)

            # selection: by status, by id, by time (UTC when no zone is given)
            assert listed(await cli("resend", "--dry-run", "--status", "sent")) == [b]
            assert listed(await cli("resend", "--dry-run", "--id", b)) == [b]
            assert set(listed(await cli("resend", "--dry-run", "--id", a, "--id", b))) == {a, b}
            both = ("--status", "failed", "--status", "sent")
            naive_utc = sent_b.created_at.astimezone(UTC).replace(tzinfo=None).isoformat()
            code, out, err = await run_async(
                in_tmp, "resend", "--dry-run", *both, "--since", naive_utc, env={**env, "TZ": "Asia/Tokyo"}
            )
            assert code == 0, err
            assert [line.split("\t")[0] for line in out.splitlines()] == [b]
            until = sent_b.created_at.isoformat()
            assert listed(await cli("resend", "--dry-run", *both, "--until", until)) == [a]
            # by recipient and subject (any case) and by the last reply code
            assert listed(await cli("resend", "--dry-run", *both, "--recipient", "A@EXAMPLE")) == [a]
            assert listed(await cli("resend", "--dry-run", *both, "--subject", "SECOND")) == [b]
            assert listed(await cli("resend", "--dry-run", *both, "--code", "550")) == [a]
            assert listed(await cli("resend", "--dry-run", "--subject", "second")) == []  # b is sent
            tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            nothing = await cli("resend", "--dry-run", *both, "--since", tomorrow)
            assert nothing.exit_code == 0, nothing.output
            assert listed(nothing) == []
            assert "would re-send 0 mail(s)" in nothing.stderr
            assert len(server.messages) == 1  # dry runs sent nothing

            again = await cli("resend")
            assert again.exit_code == 0, again.output
            assert listed(again) == [a]
            assert "re-sent 1 mail(s)" in again.stderr
            resent = await wait_status(store, a, Status.SENT, log)
            assert resent.attempts == 2
            assert [h.outcome for h in resent.history] == ["permanent", "sent"]
            assert resent.mail.message_id == failed.mail.message_id
            assert len(server.messages) == 2  # b was not sent again
            received = parse(server.messages[1].data)
            assert server.messages[1].recipients == ("a@example.com",)
            assert received["Message-ID"] == failed.mail.message_id

            shown = await cli("show", a)
            assert shown.exit_code == 0, shown.output
            assert re.search(r"^status:\s+sent$", shown.stdout, re.M), shown.stdout
            assert re.search(r"^attempts:\s+2$", shown.stdout, re.M), shown.stdout
            assert "550" in shown.stdout  # the first attempt's reply is in the history

            worker.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(worker.wait(), WITHIN) == 0, log.read_text()


async def test_sweep_publishes_a_mail_accepted_while_the_queue_was_down(in_tmp: Path) -> None:
    from mailqueue import Mail, MailQueue, QueueError

    store_url = f"sqlite+aiosqlite:///{in_tmp / 'mailqueue.db'}"
    urls = {"store": store_url, "queue": "sql://", "attachments": "file://./attachments"}
    async with MailQueue.from_urls(**urls) as mq:
        await mq.queue.close()  # the queue is down while the mail is accepted
        with pytest.raises(QueueError):
            await mq.submit(Mail(subject="late", html="<p>x</p>", to=[{"address": "a@example.com"}]))
    env = {"MAILQUEUE_STORE": store_url}
    too_recent = await asyncio.to_thread(invoke, ["sweep"], env)
    assert too_recent.exit_code == 0, too_recent.output
    assert "published 0 mail(s)" in too_recent.stderr
    swept = await asyncio.to_thread(invoke, ["sweep", "--older-than", "0"], env)
    assert swept.exit_code == 0, swept.output
    assert "published 1 mail(s)" in swept.stderr
    again = await asyncio.to_thread(invoke, ["sweep", "--older-than", "0"], env)
    assert "published 0 mail(s)" in again.stderr
    async with MailQueue.from_urls(**urls) as mq:
        assert await mq.queue.depth() == 1


def test_resend_with_a_bad_time_is_a_usage_error(in_tmp: Path) -> None:
    result = invoke(["resend", "--since", "yesterday"])
    assert result.exit_code == 2
    assert "'yesterday' is not an ISO 8601 time" in result.stderr


def test_resend_with_a_code_that_is_no_smtp_code_is_a_usage_error(in_tmp: Path) -> None:
    result = invoke(["resend", "--code", "99"])
    assert result.exit_code == 2
    assert "--code" in result.stderr
    assert list(in_tmp.iterdir()) == []


def test_resend_with_an_unknown_status_is_a_usage_error(in_tmp: Path) -> None:
    result = invoke(["resend", "--status", "lost"])
    assert result.exit_code == 2
    assert "'lost'" in result.stderr
    assert "--status" in result.stderr
    assert list(in_tmp.iterdir()) == []


# --- 4. errors a person can act on ------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [("bogus_key: 1\n", "bogus_key"), ("worker: {concurency: 3}\n", "worker.concurency")],
)
def test_unknown_key_in_the_config_file_is_named(in_tmp: Path, yaml_text: str, key: str) -> None:
    (in_tmp / "f.yaml").write_text(yaml_text)
    result = invoke(["--config", "f.yaml", "show", "0" * 32])
    assert result.exit_code == 2
    assert key in result.stderr
    assert not (in_tmp / "mailqueue.db").exists()


def test_unknown_nested_key_in_the_environment_is_named(in_tmp: Path) -> None:
    result = invoke(["show", "0" * 32], {"MAILQUEUE_WORKER__CONCURENCY": "3"})
    assert result.exit_code == 2
    assert "worker.concurency" in result.stderr


def test_invalid_setting_value_is_named(in_tmp: Path) -> None:
    result = invoke(["worker"], {"MAILQUEUE_WORKER__RATE": "fast"})
    assert result.exit_code == 2
    assert "worker.rate" in result.stderr


def test_the_api_keeps_idle_connections_longer_than_common_clients_do() -> None:
    # longer than httpx (5 s), an ALB (60 s) and Go's http.Transport (90 s) keep idle connections
    assert _uvicorn_options(Settings(), access_log=False)["timeout_keep_alive"] == 100
    tuned = Settings.model_validate({"api": {"keep_alive_timeout": 120}})
    assert _uvicorn_options(tuned, access_log=False)["timeout_keep_alive"] == 120


def test_a_keep_alive_timeout_of_zero_is_refused(in_tmp: Path) -> None:
    result = invoke(["api"], {"MAILQUEUE_API__KEEP_ALIVE_TIMEOUT": "0"})
    assert result.exit_code == 2
    assert "api.keep_alive_timeout" in result.stderr


def test_missing_config_file(in_tmp: Path) -> None:
    result = invoke(["--config", "nowhere.yaml", "show", "0" * 32])
    assert result.exit_code == 2
    assert "nowhere.yaml" in result.stderr
    assert "does not exist" in result.stderr
    from_env = invoke(["show", "0" * 32], {"MAILQUEUE_CONFIG": "nowhere.yaml"})
    assert from_env.exit_code == 2
    assert "nowhere.yaml" in from_env.stderr


def test_config_file_that_is_not_a_mapping(in_tmp: Path) -> None:
    (in_tmp / "f.yaml").write_text("- just\n- a list\n")
    result = invoke(["--config", "f.yaml", "show", "0" * 32])
    assert result.exit_code == 2
    assert "f.yaml" in result.stderr


def test_unknown_queue_scheme_suggests_the_right_one(tmp_path: Path) -> None:
    result = mailqueue(
        tmp_path,
        "send",
        "--to",
        "a@example.com",
        "--subject",
        "s",
        "--html",
        "x",
        env={"MAILQUEUE_QUEUE": "sqll://"},
    )
    assert result.returncode != 0
    assert "did you mean 'sql'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mailqueue.db").exists()  # refused before anything was opened


@pytest.mark.parametrize(
    ("option", "value"),
    [("--to", "ann@@example.com"), ("--cc", "Bob <bob@>"), ("--bcc", "no-at-sign.example.com")],
)
def test_invalid_recipient_is_refused(in_tmp: Path, option: str, value: str) -> None:
    args = ["send", "--subject", "s", "--html", "x"]
    if option != "--to":
        args += ["--to", "a@example.com"]
    result = invoke([*args, option, value])
    assert result.exit_code == 2
    assert "address" in result.stderr
    assert list(in_tmp.iterdir()) == []  # nothing stored, nothing queued


def test_header_injection_in_the_subject_is_refused(in_tmp: Path) -> None:
    result = invoke(["send", "--to", "a@example.com", "--subject", "hi\r\nBcc: x@example.com", "--html", "x"])
    assert result.exit_code == 2
    assert "subject" in result.stderr
    assert list(in_tmp.iterdir()) == []


def test_send_needs_a_body(in_tmp: Path) -> None:
    result = invoke(["send", "--to", "a@example.com", "--subject", "s"])
    assert result.exit_code == 2
    assert "--html" in result.stderr


def test_send_with_a_missing_attachment_file(in_tmp: Path) -> None:
    args = ["send", "--to", "a@example.com", "--subject", "s", "--html", "x", "--attach", "nope.pdf"]
    result = invoke(args)
    assert result.exit_code == 2
    assert "nope.pdf" in result.stderr
    assert list(in_tmp.iterdir()) == []


def test_send_reads_the_body_from_a_file_and_honours_the_idempotency_key(in_tmp: Path) -> None:
    (in_tmp / "body.html").write_text("<p>from a file</p>", encoding="utf-8")
    args = ["send", "--to", "a@example.com", "--subject", "s", "--html-file", "body.html"]
    first = invoke([*args, "--idempotency-key", "order-7"])
    again = invoke([*args, "--idempotency-key", "order-7"])
    other = invoke(args)
    assert first.exit_code == again.exit_code == other.exit_code == 0, first.output + again.output
    assert MAIL_ID.fullmatch(first.stdout.strip())
    assert again.stdout == first.stdout
    assert other.stdout != first.stdout


def test_show_unknown_id(in_tmp: Path) -> None:
    result = invoke(["show", "0" * 32])
    assert result.exit_code == 1
    assert "no mail with id" in result.stderr
    assert "0" * 32 in result.stderr


def test_db_upgrade_refuses_a_store_without_sql(in_tmp: Path) -> None:
    result = invoke(["db", "upgrade"], {"MAILQUEUE_STORE": "memory://"})
    assert result.exit_code == 2
    assert "memory" in result.stderr


def test_plugins_lists_the_built_in_schemes(in_tmp: Path) -> None:
    result = invoke(["plugins"])
    assert result.exit_code == 0, result.output
    rows = {(line.split()[0], line.split()[1], line.split()[-1]) for line in result.stdout.splitlines()}
    built_in = {
        ("queues", "memory"),
        ("queues", "sql"),
        ("senders", "smtp"),
        ("senders", "smtps"),
        ("senders", "outbox"),
        ("senders", "memory"),
        ("stores", "memory"),
        ("stores", "sqlite+aiosqlite"),
        ("stores", "mysql+asyncmy"),
        ("stores", "postgresql+asyncpg"),
        ("attachment_stores", "file"),
        ("attachment_stores", "sql"),
        ("attachment_stores", "memory"),
    }
    assert {(group, scheme, "(mailqueue)") for group, scheme in built_in} <= rows


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(flag: str) -> None:
    result = invoke([flag])
    assert result.exit_code == 0
    for command in ("worker", "send", "show", "resend", "db", "plugins"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.M), result.stdout


def test_version(tmp_path: Path) -> None:
    result = mailqueue(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    # mailqueue/_version.py, as the build reads it (not the metadata of whatever copy is installed)
    assert result.stdout == f"mailqueue, version {__version__}\n"


# --- 5. worker options ---------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_worker_concurrency_must_be_a_positive_number(in_tmp: Path, value: str) -> None:
    result = invoke(["worker", "--concurrency", value])
    assert result.exit_code == 2
    assert "--concurrency" in result.stderr
    assert list(in_tmp.iterdir()) == []


def test_resend_with_a_bad_time_changes_nothing_and_names_the_option(in_tmp: Path) -> None:
    result = invoke(["resend", "--since", "yesterday"])
    assert result.exit_code == 2
    assert "'yesterday' is not an ISO 8601 time" in result.stderr
    assert "'--since'" in result.stderr
    assert list(in_tmp.iterdir()) == []  # nothing opened, created or migrated


@pytest.mark.parametrize(
    "value", ["ann@example.com, bob@example.com", "Ann <ann@example.com> junk", "not an address"]
)
def test_a_recipient_option_takes_exactly_one_address(in_tmp: Path, value: str) -> None:
    result = invoke(["send", "--subject", "s", "--html", "x", "--to", value])
    assert result.exit_code == 2
    assert "'--to'" in result.stderr
    assert repr(value) in result.stderr
    assert list(in_tmp.iterdir()) == []


def test_an_invalid_cc_is_named(in_tmp: Path) -> None:
    result = invoke(["send", "--subject", "s", "--html", "x", "--to", "a@example.com", "--cc", "x@@y"])
    assert result.exit_code == 2
    assert "'--cc'" in result.stderr


def test_an_explicit_config_option_beats_mailqueue_config(in_tmp: Path) -> None:
    (in_tmp / "a.yaml").write_text("store: sqlite+aiosqlite:///./a.db\n")
    (in_tmp / "b.yaml").write_text("store: sqlite+aiosqlite:///./b.db\n")
    result = invoke(
        ["--config", "a.yaml", "send", "--to", "a@example.com", "--subject", "s", "--html", "x"],
        {"MAILQUEUE_CONFIG": "b.yaml"},
    )
    assert result.exit_code == 0, result.output
    assert (in_tmp / "a.db").is_file()
    assert not (in_tmp / "b.db").exists()
