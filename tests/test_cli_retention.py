"""``mailqueue prune`` and ``mailqueue sweep --stale/--attachments`` as real processes.

Records are prepared in-process on SQLite and MariaDB; the command then runs
as ``python -m mailqueue`` in an empty folder, configured by environment only.
"""

from __future__ import annotations

import configparser
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from proc_helpers import run_program

from mailqueue import Attachment, Mail, MailQueue, MailRecord, Recipient, Status
from mailqueue.cli import main
from mailqueue.errors import AttachmentNotFoundError
from mailqueue.records import utcnow

DATABASES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("mysql", id="mysql", marks=pytest.mark.mysql),
]
pytestmark = pytest.mark.slow


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "MAILQUEUE_STORE": db_url,
        "MAILQUEUE_QUEUE": "sql://",
        "MAILQUEUE_ATTACHMENTS": f"file://{tmp_path / 'attachments'}",
    }


@pytest.fixture
async def mq(env: dict[str, str]) -> AsyncIterator[MailQueue]:
    queue = MailQueue.from_urls(
        store=env["MAILQUEUE_STORE"], queue=env["MAILQUEUE_QUEUE"], attachments=env["MAILQUEUE_ATTACHMENTS"]
    )
    async with queue:
        yield queue


async def add(
    mq: MailQueue, status: Status, age: timedelta, attachments: tuple[object, ...] = ()
) -> MailRecord:
    when = utcnow() - age
    mail = Mail(
        subject=status.value,
        html="<p>x</p>",
        to=[Recipient(address="to@example.com")],
        attachments=attachments,
    )
    record = MailRecord.new(mail).evolve(status=status, created_at=when, updated_at=when)
    return await mq.store.add(record)


async def cli(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    return await run_program(sys.executable, "-m", "mailqueue", *args, cwd=work, env=env)


async def counts(tmp_path: Path, env: dict[str, str]) -> dict[str, int]:
    code, out, err = await cli(tmp_path, env, "status", "--json", "--since", "90d")
    assert code == 0, err
    return {status: n for status, n in json.loads(out)["counts"].items() if n}


async def test_prune_dry_run_soft_and_hard(mq: MailQueue, env: dict[str, str], tmp_path: Path) -> None:
    old = timedelta(days=45)
    ref = await mq.store_attachment(Attachment("a.pdf", b"%PDF", "application/pdf"))
    sent = await add(mq, Status.SENT, old, (ref,))
    failed = await add(mq, Status.FAILED, old)
    in_flight = [await add(mq, s, old) for s in (Status.QUEUED, Status.SENDING, Status.RETRYING)]
    recent = await add(mq, Status.SENT, timedelta(days=2))

    assert await counts(tmp_path, env) == {"sent": 2, "failed": 1, "queued": 1, "sending": 1, "retrying": 1}
    code, out, err = await cli(tmp_path, env, "prune", "--soft", "--older-than", "30d", "--dry-run")
    assert (code, out.strip()) == (0, "would be soft-deleted 2 mail(s)"), err
    code, out, err = await cli(
        tmp_path, env, "prune", "--soft", "--older-than", "30d", "--status", "sent,dead"
    )
    assert (code, out.strip()) == (0, "soft-deleted 1 mail(s)"), err
    code, out, err = await cli(tmp_path, env, "prune", "--soft", "--older-than", "30d")
    assert (code, out.strip()) == (0, "soft-deleted 1 mail(s)"), err
    # soft-deleted mails are not counted any more
    assert await counts(tmp_path, env) == {"sent": 1, "queued": 1, "sending": 1, "retrying": 1}

    code, out, err = await cli(tmp_path, env, "prune", "--hard", "--older-than", "30d", "--dry-run")
    assert (code, out.strip()) == (0, "would be deleted 2 mail(s)"), err
    assert await mq.status(sent.id) is not None
    code, out, err = await cli(tmp_path, env, "prune", "--hard", "--older-than", "30d", "--page-size", "1")
    assert (code, out.strip()) == (0, "deleted 2 mail(s)"), err
    assert await mq.status(sent.id) is None
    assert await mq.status(failed.id) is None
    with pytest.raises(AttachmentNotFoundError):
        async for _ in mq.attachments.read(ref.key):
            pass
    for record in [*in_flight, recent]:
        assert await mq.status(record.id) is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prune", "--older-than", "30d"], "say --soft or --hard"),
        (["prune", "--soft", "--older-than", "30d", "--status", "queued"], "never pruned"),
        (["prune", "--soft", "--older-than", "30d", "--status", "sent,bogus"], "'bogus' is not a status"),
        (["prune", "--hard", "--older-than", "soon"], "is not a duration"),
        (["sweep", "--stale-after", "60"], "--stale-after needs --stale"),
    ],
)
async def test_refused_arguments_exit_2(
    env: dict[str, str], tmp_path: Path, args: list[str], message: str
) -> None:
    code, out, err = await cli(tmp_path, env, *args)
    assert code == 2, (out, err)
    assert message in err


async def test_sweep_stale_and_attachments(mq: MailQueue, env: dict[str, str], tmp_path: Path) -> None:
    stuck = await add(mq, Status.SENDING, timedelta(hours=2))
    live = await add(mq, Status.SENDING, timedelta(seconds=1))
    code, _, err = await cli(tmp_path, env, "sweep", "--stale", "unknown", "--stale-after", "3600")
    assert code == 0, err
    assert "published 0 mail(s)" in err
    assert "marked unknown 1 mail(s) stuck sending for 3600 s or more" in err
    got = await mq.status(stuck.id)
    assert got is not None
    assert got.status is Status.UNKNOWN
    still = await mq.status(live.id)
    assert still is not None
    assert still.status is Status.SENDING

    orphan = await mq.store_attachment(Attachment("o.pdf", b"orphan", "application/pdf"))
    env = {**env, "MAILQUEUE_RETENTION__ORPHANS_AFTER": "0", "MAILQUEUE_RETENTION__ATTACHMENTS_AFTER": "off"}
    code, _out, err = await cli(tmp_path, env, "sweep", "--attachments", "--dry-run")
    assert code == 0, err
    assert "would delete 0 attachment(s) of finished mails and 1 orphaned attachment(s)" in err
    assert "published" not in err
    code, _, err = await cli(tmp_path, env, "sweep", "--attachments")
    assert code == 0, err
    assert "deleted 0 attachment(s) of finished mails and 1 orphaned attachment(s)" in err
    with pytest.raises(AttachmentNotFoundError):
        async for _ in mq.attachments.read(orphan.key):
            pass


DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_prune_timer_runs_commands_the_cli_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service = (DEPLOY / "mailqueue-prune.service").read_text()
    commands = [
        line.split("=", 1)[1].split() for line in service.splitlines() if line.startswith("ExecStart=")
    ]
    assert [c[1:3] for c in commands] == [["prune", "--soft"], ["prune", "--hard"]]
    timer = configparser.ConfigParser(interpolation=None)
    timer.read_string((DEPLOY / "mailqueue-prune.timer").read_text())
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"
    for key in [k for k in os.environ if k.startswith("MAILQUEUE_")]:
        monkeypatch.delenv(key)
    config = tmp_path / "worker.yaml"
    config.write_text(
        f"store: sqlite+aiosqlite:///{tmp_path / 'mq.db'}\nattachments: file://{tmp_path / 'a'}\n"
    )
    for command in commands:
        args = command[1:]
        args[args.index("--config") + 1] = str(config)
        result = CliRunner().invoke(main, [*args, "--dry-run"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "would be" in result.stdout
