"""The service as an operator runs it: ``mailqueue serve``, ``mailqueue api`` and
``mailqueue worker`` as real processes, driven with the real ``curl`` binary
and httpx, delivering to an in-process SMTP server.

Every process runs ``python -m mailqueue`` in a temporary working folder with
every ``MAILQUEUE_*`` variable of the outer environment removed; its output
goes to a log file that a failing test prints. Also checked here: the
example deployment files in ``deploy/`` are valid settings and units.
"""

from __future__ import annotations

import asyncio
import configparser
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import service_missing
from proc_helpers import (
    eventually,
    free_port,
    mailqueue,
    parse,
    run_program,
    wait_ready,
)

from mailqueue import MailQueue, Status, registry
from mailqueue.settings import load_settings
from mailqueue.testing.smtpd import Fault, SMTPTestServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MiB = 1024 * 1024
#: Short waits, so that workers notice new mail and stop at once.
FAST = {
    "MAILQUEUE_QUEUE": "sql://?poll=0.05",
    "MAILQUEUE_WORKER__RETRY_BASE": "0.05",
    "MAILQUEUE_WORKER__SHUTDOWN_TIMEOUT": "10",
    "MAILQUEUE_LOG_LEVEL": "WARNING",
}
TOKEN = "e2e-7c4f0a9b3d2e1f60a5b8c7d6e5f4a3b2"


# --- helpers -------------------------------------------------------------------


@pytest.fixture
def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        service_missing("the curl binary")
    assert path is not None
    return path


async def curl_post(curl: str, cwd: Path, *args: str) -> tuple[int, Any]:
    """Run curl; return the HTTP status and the JSON answer."""
    code, out, err = await run_program(
        curl, "-sS", "--max-time", "60", "-w", "\n%{http_code}", *args, cwd=cwd
    )
    assert code == 0, f"curl failed ({code}): {err}"
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body)


def vm(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            number, unit = rest.split()
            assert unit == "kB"
            values[key] = int(number) * 1024
    return values


# --- serve, end to end ----------------------------------------------------------------


async def test_serve_end_to_end_with_curl_two_attachments_and_smtp(tmp_path: Path, curl: str) -> None:
    app = tmp_path / "app"
    app.mkdir()
    pdf = app / "Rechnung März 2026.pdf"
    pdf_bytes = b"%PDF-1.4\n" + bytes(range(256)) * 64 + b"\r\n.\r\n.\nFrom me\n\x00%%EOF"
    pdf.write_bytes(pdf_bytes)
    txt = app / "Résumé — notes.txt"
    txt_bytes = "Grüße aus Köln\r\n.\r\nline two\nno newline at the end ✓".encode()
    txt.write_bytes(txt_bytes)
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    async with SMTPTestServer() as smtp:
        env = {
            **FAST,
            "MAILQUEUE_SENDER": smtp.url(from_address="noreply@example.com", timeout="5"),
            "MAILQUEUE_API__TOKENS": json.dumps([TOKEN]),
        }
        async with mailqueue(app, "serve", "--port", str(port), env=env, log=tmp_path / "serve.log") as serve:
            await wait_ready(serve, base)
            status, answer = await curl_post(
                curl,
                app,
                "-H",
                f"Authorization: Bearer {TOKEN}",
                "--form-string",
                "title=Rechnung 42 — März",
                "--form-string",
                "content=<p>Ihre Rechnung liegt bei.</p>",
                "--form-string",
                "sender_name=Buchhaltung Müller",
                "--form-string",
                "receiver=ann@example.com, bob@example.org",
                "--form-string",
                "receiver_name=Ann Müller,Bob",
                "-F",
                f"attachment[]=@{pdf.name}",
                "-F",
                f"attachment[]=@{txt.name}",
                f"{base}/api/email/send",
            )
            assert status == 200, answer
            assert answer["code"] == 200
            assert answer["message"] == "success"
            mail_id = answer["data"]["id"]
            assert re.fullmatch(r"[0-9a-f]{32}", mail_id), answer

            async def arrived() -> bool:
                return len(smtp.messages) >= 1

            await eventually(arrived, "the mail at the SMTP server", serve)

            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                unauthorized = await client.get(f"/api/email/{mail_id}")
                assert unauthorized.status_code == 401
                assert unauthorized.json()["code"] == 401
                headers = {"Authorization": f"Bearer {TOKEN}"}

                async def recorded_sent() -> bool:
                    reply = await client.get(f"/api/email/{mail_id}", headers=headers)
                    assert reply.status_code == 200, reply.text
                    return bool(reply.json()["data"]["status"] == "sent")

                await eventually(recorded_sent, "GET /api/email/<id> to say sent", serve)
                view = (await client.get(f"/api/email/{mail_id}", headers=headers)).json()["data"]
            await serve.stop()

    assert view["is_ok"] is True
    assert view["attempts"] == 1
    assert [(r["address"], r["state"]) for r in view["recipients"]] == [
        ("ann@example.com", "sent"),
        ("bob@example.org", "sent"),
    ]
    assert [(a["filename"], a["size"]) for a in view["attachments"]] == [
        (pdf.name, len(pdf_bytes)),
        (txt.name, len(txt_bytes)),
    ]

    (received,) = smtp.messages
    assert received.envelope_from == "noreply@example.com"
    assert received.recipients == ("ann@example.com", "bob@example.org")
    message = parse(received.data)
    assert message["Subject"] == "Rechnung 42 — März"
    (sender,) = message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Buchhaltung Müller", "noreply@example.com")
    assert [(a.display_name, a.addr_spec) for a in message["To"].addresses] == [
        ("Ann Müller", "ann@example.com"),
        ("Bob", "bob@example.org"),
    ]
    assert re.fullmatch(r"<[^<>@\s]+@example\.com>", str(message["Message-ID"])), message["Message-ID"]
    html = message.get_body(("html",))
    assert html is not None
    assert "<p>Ihre Rechnung liegt bei.</p>" in html.get_content()
    attachments = [
        (part.get_filename(), part.get_content_type(), part.get_payload(decode=True))
        for part in message.iter_attachments()
    ]
    assert attachments == [
        (pdf.name, "application/pdf", pdf_bytes),
        (txt.name, "text/plain", txt_bytes),
    ]

    async with MailQueue.from_urls(
        store=f"sqlite+aiosqlite:///{app / 'mailqueue.db'}",
        queue="sql://",
        attachments=f"file://{app / 'attachments'}",
    ) as mq:
        record = await mq.status(mail_id)
    assert record is not None
    assert record.status is Status.SENT
    assert record.is_ok
    assert record.attempts == 1
    assert record.sent_at is not None
    assert record.mail.subject == "Rechnung 42 — März"
    assert record.mail.sender_name == "Buchhaltung Müller"
    assert record.mail.message_id is not None
    assert record.mail.message_id.strip("<>") == str(message["Message-ID"]).strip("<>")
    assert [a.filename for a in record.mail.attachments] == [pdf.name, txt.name]
    # sent: its attachments were deleted
    assert sorted(p for p in (app / "attachments").rglob("*") if p.is_file()) == []


async def test_serve_sigterm_lets_a_send_in_flight_finish(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # the server holds its reply to the final dot for a while: the send is in flight when SIGTERM comes
    async with SMTPTestServer(faults=[Fault("data_end", stall=1.5)]) as smtp:
        env = {**FAST, "MAILQUEUE_SENDER": smtp.url(from_address="noreply@example.com", timeout="10")}
        async with mailqueue(app, "serve", "--port", str(port), env=env, log=tmp_path / "serve.log") as serve:
            await wait_ready(serve, base)
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                reply = await client.post(
                    "/api/email/send",
                    data={"title": "t", "content": "c", "sender_name": "s", "receiver": "a@example.com"},
                )
                assert reply.status_code == 200, reply.text
                mail_id = reply.json()["data"]["id"]

                async def sending() -> bool:
                    return bool(
                        (await client.get(f"/api/email/{mail_id}")).json()["data"]["status"] == "sending"
                    )

                await eventually(sending, "the send to start", serve)
            assert smtp.messages == []
            await serve.stop(signal.SIGTERM)
    assert len(smtp.messages) == 1
    async with MailQueue.from_urls(
        store=f"sqlite+aiosqlite:///{app / 'mailqueue.db'}", queue="sql://", attachments="memory://"
    ) as mq:
        record = await mq.status(mail_id)
    assert record is not None
    assert record.status is Status.SENT


def readme_curl() -> list[str]:
    """The first ``curl -F ...`` command of the README's "Sending a mail" section, as argv."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Sending a mail", 1)[1].split("\n## ", 1)[0]
    for block in re.findall(r"```(?:sh|console|bash)\n(.*?)```", section, re.S):
        command = block.replace("\\\n", " ")
        for line in command.splitlines():
            if line.startswith("curl ") and "/api/email/send" in line:
                return shlex.split(line, comments=True)
    raise AssertionError("README's 'Sending a mail' section shows no curl command posting to /api/email/send")


async def test_embedded_default_with_the_readmes_curl(tmp_path: Path, curl: str) -> None:
    app = tmp_path / "app"
    app.mkdir()
    argv = readme_curl()
    assert argv[0] == "curl"
    port = free_port()
    argv = [curl] + [arg.replace("http://127.0.0.1:8100", f"http://127.0.0.1:{port}") for arg in argv[1:]]
    files = [arg.split("=@", 1)[1].split(";", 1)[0] for arg in argv if arg.startswith("attachment[]=@")]
    assert files, f"the README's curl attaches no file: {argv}"
    for name in files:
        (app / name).write_bytes(b"%PDF-1.4 example " + name.encode())

    # no MAILQUEUE_* variable and no config file at all: the embedded default
    async with mailqueue(app, "serve", "--port", str(port), log=tmp_path / "serve.log") as serve:
        await wait_ready(serve, f"http://127.0.0.1:{port}")
        code, out, err = await run_program(*argv, "-sS", "-w", "\n%{http_code}", cwd=app)
        assert code == 0, err
        body, _, status = out.rpartition("\n")
        assert status == "200", out
        answer = json.loads(body)
        assert (answer["code"], answer["message"]) == (200, "success")
        mail_id = answer["data"]["id"]
        eml = app / "outbox" / f"{mail_id}.eml"

        async def written() -> bool:
            return eml.exists()

        await eventually(written, f"{eml} to appear", serve)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            async def sent() -> bool:
                view = (await client.get(f"/api/email/{mail_id}")).json()["data"]
                return bool(view["status"] == "sent")

            await eventually(sent, "the mail to be recorded as sent", serve)
        await serve.stop(signal.SIGINT)

    message = parse(eml.read_bytes())
    assert [part.get_filename() for part in message.iter_attachments()] == [Path(f).name for f in files]
    assert (app / "mailqueue.db").is_file()
    assert (app / "attachments").is_dir()


# --- the API/worker split ----------------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", "mysql"])
async def test_api_keeps_accepting_while_the_worker_is_stopped(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    if database == "mysql":
        store, attachments = request.getfixturevalue("mysql_url"), "sql://"
    else:
        store, attachments = (
            f"sqlite+aiosqlite:///{tmp_path / 'data' / 'queue.db'}",
            f"file://{tmp_path / 'files'}",
        )
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    async with SMTPTestServer() as smtp:
        config = tmp_path / "mailqueue.yaml"
        config.write_text(
            f"store: {store}\n"
            f"attachments: {attachments}\n"
            "queue: sql://?poll=0.05\n"
            f"sender: {smtp.url(from_address='noreply@example.com', timeout='5')}\n"
            "worker: {shutdown_timeout: 10, retry_base: 0.05}\n"
            "log_level: WARNING\n"
        )
        args = ("--config", str(config))
        async with (
            mailqueue(
                app, "api", *args, "--port", str(port), "--workers", "2", log=tmp_path / "api.log"
            ) as api,
            httpx.AsyncClient(base_url=base, timeout=20) as client,
        ):
            await wait_ready(api, base)

            async def post(n: int) -> str:
                reply = await client.post(
                    "/api/email/send",
                    data={
                        "title": f"mail {n}",
                        "content": f"<p>{n}</p>",
                        "sender_name": "Split",
                        "receiver": f"r{n}@example.com",
                    },
                    files=[("attachment[]", (f"n{n}.txt", f"attachment {n}".encode(), "text/plain"))],
                )
                assert reply.status_code == 200, reply.text
                mail_id: str = reply.json()["data"]["id"]
                return mail_id

            async def status_of(mail_id: str) -> str:
                reply = await client.get(f"/api/email/{mail_id}")
                assert reply.status_code == 200, reply.text
                status: str = reply.json()["data"]["status"]
                return status

            async with mailqueue(app, "worker", *args, log=tmp_path / "worker-1.log") as worker:
                await post(0)

                async def first_arrived() -> bool:
                    return len(smtp.messages) == 1

                await eventually(first_arrived, "the first mail", worker)
                await worker.stop()

            # the worker is down (e.g. to change the SMTP password): the API keeps accepting
            ids = await asyncio.gather(*(post(n) for n in range(1, 6)))
            assert len(set(ids)) == 5
            await asyncio.sleep(0.5)
            assert len(smtp.messages) == 1
            assert [await status_of(i) for i in ids] == ["queued"] * 5

            async with mailqueue(app, "worker", *args, log=tmp_path / "worker-2.log") as worker:

                async def all_sent() -> bool:
                    return [await status_of(i) for i in ids] == ["sent"] * 5

                await eventually(all_sent, "the five mails to be sent", worker)
                await asyncio.sleep(0.3)  # a duplicate would show up now
                await worker.stop()
            await api.stop()

    assert not (app / "mailqueue.db").exists()  # every API process used the configured store
    received = [parse(m.data) for m in smtp.messages]
    assert sorted(str(m["Subject"]) for m in received) == [f"mail {n}" for n in range(6)]
    message_ids = [str(m["Message-ID"]) for m in received]
    assert len(set(message_ids)) == 6
    assert sorted(r for m in smtp.messages for r in m.recipients) == sorted(
        f"r{n}@example.com" for n in range(6)
    )
    for m in received:
        n = str(m["Subject"]).removeprefix("mail ")
        (part,) = m.iter_attachments()
        assert (part.get_filename(), part.get_payload(decode=True)) == (
            f"n{n}.txt",
            f"attachment {n}".encode(),
        )


# --- refusing to listen beyond loopback without a token ----------------------------------


@pytest.mark.parametrize("command", ["serve", "api"])
async def test_no_token_and_not_loopback_is_refused(tmp_path: Path, command: str) -> None:
    port = free_port()
    code, out, err = await run_program(
        sys.executable, "-m", "mailqueue", command, "--host", "0.0.0.0", "--port", str(port), cwd=tmp_path
    )
    assert code == 2, (out, err)
    assert "refusing to listen on '0.0.0.0' without an API token" in err
    assert "MAILQUEUE_API__TOKENS" in err
    assert "Traceback" not in err
    assert (
        await asyncio.to_thread(os.listdir, tmp_path) == []
    )  # refused before anything was opened or created
    with socket.socket() as sock:  # nothing is listening there
        assert sock.connect_ex(("127.0.0.1", port)) != 0

    # the same from the config file
    (tmp_path / "open.yaml").write_text("api: {host: 0.0.0.0}\n")
    code, out, err = await run_program(
        sys.executable, "-m", "mailqueue", command, "--config", "open.yaml", "--port", str(port), cwd=tmp_path
    )
    assert code == 2, (out, err)
    assert "refusing to listen on '0.0.0.0'" in err


async def test_with_a_token_it_listens_beyond_loopback(tmp_path: Path) -> None:
    port = free_port()
    env = {"MAILQUEUE_API__TOKENS": json.dumps([TOKEN]), "MAILQUEUE_LOG_LEVEL": "WARNING"}
    async with mailqueue(
        tmp_path, "serve", "--host", "0.0.0.0", "--port", str(port), env=env, log=tmp_path / "serve.log"
    ) as serve:
        await wait_ready(serve, f"http://127.0.0.1:{port}")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            fields = {"title": "t", "content": "c", "sender_name": "s", "receiver": "a@example.com"}
            refused = await client.post("/api/email/send", data=fields)
            assert refused.status_code == 401
            assert refused.json()["code"] == 401
            accepted = await client.post(
                "/api/email/send", data=fields, headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert accepted.status_code == 200, accepted.text
        await serve.stop()


# --- keep-alive ------------------------------------------------------------------------------


async def _get_live(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    await asyncio.wait_for(reader.readexactly(length), 10)
    return head


async def test_an_idle_connection_stays_open_for_api_keep_alive_timeout_then_closes(tmp_path: Path) -> None:
    # uvicorn's own 5 s equals httpx's idle timeout: a client reusing a connection as the server
    # closed it got a ReadError on a POST the server never saw (a CI failure); the setting is 100 s
    # by default and is honoured by the server
    port = free_port()
    env = {**FAST, "MAILQUEUE_API__KEEP_ALIVE_TIMEOUT": "2"}
    async with mailqueue(tmp_path, "api", "--port", str(port), env=env, log=tmp_path / "api.log") as api:
        await wait_ready(api, f"http://127.0.0.1:{port}")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert b" 200 " in await _get_live(reader, writer)
            await asyncio.sleep(1)
            # still open after a second of idleness: the same connection answers again
            assert b" 200 " in await _get_live(reader, writer)
            answered = asyncio.get_running_loop().time()
            assert await asyncio.wait_for(reader.read(), 10) == b""
            idle = asyncio.get_running_loop().time() - answered
        finally:
            writer.close()
        await api.stop()
    # closed by the server after the configured 2 s (uvicorn's default would be 5 s)
    assert 1.5 <= idle < 4, idle


# --- memory: uploads are streamed -----------------------------------------------------------


async def test_a_100_mib_upload_does_not_grow_the_api_process_by_more_than_30_mib(
    tmp_path: Path, curl: str
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    big = tmp_path / "big.bin"
    with big.open("wb") as f:  # sparse: costs no disk and no time to make
        f.truncate(100 * MiB)
    small = tmp_path / "small.txt"
    small.write_bytes(b"warm-up\n" * 1000)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "MAILQUEUE_API__MAX_ATTACHMENT_BYTES": str(150 * MiB),
        "MAILQUEUE_API__MAX_REQUEST_BYTES": str(160 * MiB),
        "MAILQUEUE_LOG_LEVEL": "WARNING",
    }
    fields = ["-F", "title=big", "-F", "content=x", "-F", "sender_name=s", "-F", "receiver=a@example.com"]
    async with mailqueue(app, "api", "--port", str(port), env=env, log=tmp_path / "api.log") as api:
        await wait_ready(api, base)
        # the same path once with a small file, so that what it imports and caches is in the baseline
        status, answer = await curl_post(
            curl, app, *fields, "-F", f"attachment[]=@{small}", f"{base}/api/email/send"
        )
        assert status == 200, answer
        before = vm(api.pid)
        status, answer = await curl_post(
            curl, app, *fields, "-F", f"attachment[]=@{big}", f"{base}/api/email/send"
        )
        after = vm(api.pid)
        assert status == 200, answer
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            view = (await client.get(f"/api/email/{answer['data']['id']}")).json()["data"]
        await api.stop()

    assert [(a["filename"], a["size"]) for a in view["attachments"]] == [("big.bin", 100 * MiB)]
    stored = [p.stat().st_size for p in (app / "attachments").rglob("*") if p.is_file()]
    assert 100 * MiB in stored
    growth = after["VmHWM"] - before["VmRSS"]
    print(
        f"API process RSS before {before['VmRSS'] / MiB:.1f} MiB, peak after {after['VmHWM'] / MiB:.1f} MiB: "
        f"a 100 MiB upload grew it by {growth / MiB:.1f} MiB"
    )
    assert growth <= 30 * MiB, f"the 100 MiB upload grew the API process by {growth / MiB:.1f} MiB"


# --- deploy/ ------------------------------------------------------------------------------


@pytest.fixture
def no_mailqueue_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("MAILQUEUE_"):
            monkeypatch.delenv(key)


@pytest.mark.usefixtures("no_mailqueue_env")
def test_deploy_config_files_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    api = load_settings(DEPLOY / "api.yaml")
    worker = load_settings(DEPLOY / "worker.yaml")
    for settings in (api, worker):
        assert settings.store.get_secret_value().startswith("mysql+asyncmy://")
        assert settings.queue.get_secret_value().startswith("sql://")
        assert settings.attachments.get_secret_value().startswith("sql://")
        # every URL names a backend that exists, with options it knows (nothing is connected)
        MailQueue.from_settings(settings)
    assert (api.api.host, api.api.port) == ("0.0.0.0", 8100)
    assert worker.worker.rate == "20/s;1000/h;500/d"
    assert worker.worker.concurrency >= 1
    assert worker.sender.get_secret_value().startswith(("smtp://", "smtps://"))
    registry.create_sender(worker.sender.get_secret_value())

    # tokens and passwords come from the environment file, which wins over the YAML
    monkeypatch.setenv("MAILQUEUE_API__TOKENS", '["from-the-env-file"]')
    with_token = load_settings(DEPLOY / "api.yaml")
    assert [t.get_secret_value() for t in with_token.api.tokens] == ["from-the-env-file"]
    assert with_token.api.host == "0.0.0.0"
    env_example = (DEPLOY / "mailqueue.env").read_text()
    assert "MAILQUEUE_API__TOKENS=" in env_example
    assert "MAILQUEUE_SENDER=" in env_example


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / name).read_text())
    return parser


@pytest.mark.usefixtures("no_mailqueue_env")
def test_systemd_units_and_supervisor_programs() -> None:
    worker_settings = load_settings(DEPLOY / "worker.yaml")
    # the worker may take shutdown_timeout to finish sends, plus the time to hand the rest back
    stop_needed = worker_settings.worker.shutdown_timeout + 10
    for name, command, config in [
        ("mailqueue-api.service", "api", "api.yaml"),
        ("mailqueue-worker.service", "worker", "worker.yaml"),
        ("mailqueue-bounces.service", "bounces", "worker.yaml"),
    ]:
        service = unit(name)["Service"]
        assert service["Restart"] == "always"
        assert service["KillSignal"] == "SIGTERM"
        assert float(service["TimeoutStopSec"]) > stop_needed
        assert service["EnvironmentFile"].lstrip("-").endswith("mailqueue.env")
        argv = shlex.split(service["ExecStart"])
        assert argv[0].endswith("/mailqueue")
        assert argv[1] == command
        assert argv[argv.index("--config") + 1].endswith(config)

    supervisor = unit("supervisor.conf")
    programs = {s.split(":", 1)[1]: supervisor[s] for s in supervisor.sections() if s.startswith("program:")}
    assert set(programs) == {"mailqueue-api", "mailqueue-worker"}
    for name, program in programs.items():
        assert program["autorestart"] == "true"
        assert program["stopsignal"] == "TERM"
        assert float(program["stopwaitsecs"]) > stop_needed
        command = program["command"]
        assert f"mailqueue {name.removeprefix('mailqueue-')} --config" in command
