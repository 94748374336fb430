"""``mailqueue status``: counts, the oldest waiting mail, queue depth, failures.

Records are made through the public API (``MailQueue.submit``, ``Store.add``
and ``Store.update``) in a real SQLite or MariaDB database with the ``sql``
queue; the command runs in-process with click's ``CliRunner``, except where
the absence of a traceback is checked (a real ``python -m mailqueue``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from proc_helpers import clean_env

from mailqueue import Mail, MailQueue, Recipient
from mailqueue.cli import main
from mailqueue.records import Attempt, MailRecord, RecordUpdate, Status, utcnow
from mailqueue.reports import StatusReport, collect_status, failure_reason, render_status

SECRET = "s3cret-pw"
OUTCOME = {
    Status.SENDING: "",
    Status.RETRYING: "transient",
    Status.SENT: "sent",
    Status.FAILED: "permanent",
    Status.DEAD: "transient",
    Status.UNKNOWN: "unknown",
}
LONG_ERROR = (
    "Connection to mx.example.com timed out while waiting for the greeting; "
    "giving up after 5 attempts over 2 hours"
)


def invoke(args: list[str], env: Mapping[str, str]) -> Result:
    """Run the command in this process with only the given MAILQUEUE_* variables."""
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("MAILQUEUE_")}
    return CliRunner().invoke(main, args, env={**unset, **env}, catch_exceptions=False)


def line(result: Result, pattern: str) -> re.Match[str]:
    match = re.search(pattern, result.stdout, re.M)
    assert match is not None, f"{pattern!r} not in\n{result.stdout}"
    return match


def mail(subject: str, address: str = "a@example.com") -> Mail:
    return Mail(subject=subject, html="<p>x</p>", to=[Recipient(address=address)])


@dataclass
class Seeded:
    env: dict[str, str]
    old_queued: str
    retrying: str
    failed: tuple[str, str]


async def finish(
    mq: MailQueue, mail_id: str, status: Status, code: int | None = None, error: str = ""
) -> None:
    """Record one attempt that left the mail in ``status``, as a worker would."""
    now = utcnow()
    attempt = Attempt(1, now, now, OUTCOME[status], code, error) if OUTCOME[status] else None
    change = RecordUpdate(status=status, attempt=attempt, last_error=error, last_code=code)
    assert await mq.store.update(mail_id, change)


async def seed(store_url: str) -> Seeded:
    """Mails in every state; two of them accepted three days ago; one deleted.

    In the last 24 h: waiting 2 queued (one of them old), 1 sending, 1
    retrying; finished 1 sent, 2 failed (550, same reason but for the
    address), 1 dead (long error), 1 unknown (no code). Outside the window:
    1 failed (554). Deleted: 1 failed. 9 were submitted, so 9 are on the queue.
    """
    urls = {"store": store_url, "queue": "sql://", "attachments": "memory://"}
    three_days_ago = utcnow() - timedelta(days=3)
    async with MailQueue.from_urls(**urls) as mq:
        await mq.submit(mail("fresh queued"))
        old = MailRecord.new(mail("old queued")).evolve(created_at=three_days_ago, updated_at=three_days_ago)
        old_queued = (await mq.store.add(old)).id
        old_failure = MailRecord.new(mail("old failed")).evolve(created_at=three_days_ago)
        old_failed = (await mq.store.add(old_failure)).id
        await finish(mq, old_failed, Status.FAILED, 554, "554 5.7.1 Message rejected as spam")
        ids = {}
        for name in ("sending", "retrying", "sent", "failed1", "failed2", "dead", "unknown", "deleted"):
            ids[name] = (await mq.submit(mail(name))).id
        await finish(mq, ids["sending"], Status.SENDING)
        await finish(mq, ids["retrying"], Status.RETRYING, 421, "421 4.7.0 Try again later")
        await finish(mq, ids["sent"], Status.SENT, 250, "")
        rejected = "550 5.1.1 <{}>:  Recipient address rejected:\r\n User unknown"
        await finish(mq, ids["failed1"], Status.FAILED, 550, rejected.format("ann@example.com"))
        await finish(mq, ids["failed2"], Status.FAILED, 550, rejected.format("bob.smith@example.org"))
        await finish(mq, ids["dead"], Status.DEAD, 421, LONG_ERROR)
        await finish(mq, ids["unknown"], Status.UNKNOWN, None, "connection lost after the final dot")
        await finish(mq, ids["deleted"], Status.FAILED, 550, "550 deleted")
        assert await mq.store.update(ids["deleted"], RecordUpdate(is_deleted=True))
    env = {
        "MAILQUEUE_STORE": store_url,
        "MAILQUEUE_QUEUE": "sql://",
        "MAILQUEUE_ATTACHMENTS": "memory://",
        "MAILQUEUE_LOG_LEVEL": "WARNING",
    }
    return Seeded(env, old_queued, ids["retrying"], (ids["failed1"], ids["failed2"]))


@pytest.fixture(params=["sqlite", "mysql"])
def seeded(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Seeded:
    """The records of :func:`seed` in SQLite or MariaDB; working folder: the temporary one."""
    monkeypatch.chdir(tmp_path)
    url: str = request.getfixturevalue(f"{request.param}_url")
    return asyncio.run(seed(url))


ADDRESS_REASON = "5.1.1 <address>: Recipient address rejected: User unknown"


def test_status_prints_counts_oldest_depth_and_failures(seeded: Seeded) -> None:
    result = invoke(["status"], seeded.env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].startswith(f"oldest waiting: {seeded.old_queued} queued, accepted 3d ago ")
    assert lines[2] == "queue depth:    9"
    expected = {
        "queued": 2,
        "sending": 1,
        "retrying": 1,
        "sent": 1,
        "failed": 2,
        "dead": 1,
        "unknown": 1,
        "bounced": 0,
    }
    printed = {m[1]: int(m[2]) for m in re.finditer(r"^  (\w+)\s+(\d+)$", result.stdout, re.M)}
    assert printed == expected
    assert "finished (accepted in the last 1d, since " in result.stdout

    groups = line(result, r"^failures by reason.*\n(?:  .*\n)(?P<rows>(?:  .*\n?)+)")["rows"].splitlines()
    assert len(groups) == 3, groups
    by_reason = {row.split("Z  ", 1)[1].rsplit("  [", 1)[0]: row for row in groups}
    assert set(by_reason) == {ADDRESS_REASON, LONG_ERROR[:80], "connection lost after the final dot"}
    assert re.match(r"^\s+2\s+550\s", by_reason[ADDRESS_REASON])
    assert by_reason[ADDRESS_REASON].rsplit("[", 1)[1].rstrip("]") in seeded.failed
    assert re.match(r"^\s+1\s+421\s", by_reason[LONG_ERROR[:80]])
    assert re.match(r"^\s+1\s+-\s", by_reason["connection lost after the final dot"])
    assert "spam" not in result.stdout  # accepted three days ago
    assert "deleted" not in result.stdout


def test_status_json_is_one_document_with_stable_keys(seeded: Seeded) -> None:
    result = invoke(["status", "--json"], seeded.env)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert list(doc) == ["generated_at", "since", "counts", "oldest_waiting", "queue", "failures", "ok"]
    generated = datetime.fromisoformat(doc["generated_at"])
    assert generated - datetime.fromisoformat(doc["since"]) == timedelta(hours=24)
    assert abs(generated - datetime.now(UTC)) < timedelta(minutes=1)
    assert doc["counts"] == {
        "queued": 2,
        "sending": 1,
        "sent": 1,
        "retrying": 1,
        "failed": 2,
        "dead": 1,
        "unknown": 1,
        "bounced": 0,
    }
    oldest = doc["oldest_waiting"]
    assert set(oldest) == {"id", "status", "created_at", "age_seconds", "attempts"}
    assert (oldest["id"], oldest["status"], oldest["attempts"]) == (seeded.old_queued, "queued", 0)
    assert 3 * 86400 - 60 < oldest["age_seconds"] < 3 * 86400 + 60
    assert doc["queue"] == {"depth": 9, "error": None}
    assert doc["ok"] is True

    failures = doc["failures"]
    assert all(set(g) == {"code", "reason", "count", "last_at", "example_id"} for g in failures)
    assert {(g["code"], g["reason"], g["count"]) for g in failures} == {
        (550, ADDRESS_REASON, 2),
        (421, LONG_ERROR[:80], 1),
        (None, "connection lost after the final dot", 1),
    }
    last = [datetime.fromisoformat(g["last_at"]) for g in failures]
    assert last == sorted(last, reverse=True)  # newest first
    assert next(g["example_id"] for g in failures if g["code"] == 550) in seeded.failed

    week = json.loads(invoke(["status", "--json", "--since", "7d"], seeded.env).stdout)
    assert week["counts"]["failed"] == 3
    assert week["counts"]["queued"] == 2  # waiting mails are counted however old
    assert (554, "5.7.1 Message rejected as spam", 1) in {
        (g["code"], g["reason"], g["count"]) for g in week["failures"]
    }
    hour = json.loads(invoke(["status", "--json", "--since", "1h30m"], seeded.env).stdout)
    assert datetime.fromisoformat(hour["generated_at"]) - datetime.fromisoformat(hour["since"]) == timedelta(
        minutes=90
    )
    assert hour["counts"] == doc["counts"]


@pytest.mark.parametrize("value", ["0h", "yesterday", "24", "1.5h", "-1h", "1h 30m", ""])
def test_since_must_be_a_duration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(["status", "--since", value], {})
    assert result.exit_code == 2
    assert "'--since'" in result.stderr
    assert "is not a duration such as 30m, 24h or 7d" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing opened or created


@pytest.mark.parametrize("as_json", [False, True])
def test_an_unreachable_store_is_a_clear_error(tmp_path: Path, as_json: bool) -> None:
    env = {"MAILQUEUE_STORE": f"mysql+asyncmy://root:{SECRET}@127.0.0.1:1/mailqueue"}
    result = subprocess.run(
        [sys.executable, "-m", "mailqueue", "status", *(["--json"] if as_json else [])],
        cwd=tmp_path,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert re.fullmatch(r"Error: StoreError: cannot .*127\.0\.0\.1:1/mailqueue.*\n", result.stderr)
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr


def test_an_unreachable_queue_is_reported_and_fails(sqlite_url: str, tmp_path: Path) -> None:
    env = {
        "MAILQUEUE_STORE": sqlite_url,
        "MAILQUEUE_QUEUE": f"amqp://guest:{SECRET}@127.0.0.1:1/?connect_timeout=5",
        "MAILQUEUE_ATTACHMENTS": "memory://",
        "MAILQUEUE_LOG_LEVEL": "CRITICAL",
    }
    text = invoke(["status"], env)
    assert text.exit_code == 1
    assert re.search(r"^queue depth:    unreachable \(QueueError: .*127\.0\.0\.1:1", text.stdout, re.M)
    assert re.search(r"^  queued\s+0$", text.stdout, re.M)  # the store still answered
    doc = json.loads(invoke(["status", "--json"], env).stdout)
    assert doc["ok"] is False
    assert doc["queue"]["depth"] is None
    assert doc["queue"]["error"].startswith("QueueError: ")
    assert SECRET not in text.output + json.dumps(doc)


async def test_memory_queue_depth_is_shown() -> None:
    urls = {"store": "memory://", "queue": "memory://", "attachments": "memory://"}
    async with MailQueue.from_urls(**urls) as mq:
        first = await mq.submit(mail("one"))
        await mq.submit(mail("two"))
        now = utcnow()
        report = await collect_status(mq.store, mq.queue, since=now - timedelta(hours=1), now=now)
    assert (report.depth, report.queue_error, report.ok) == (2, None, True)
    assert report.counts[Status.QUEUED] == 2
    assert report.oldest is not None
    assert report.oldest.id == first.id
    assert "queue depth:    2" in render_status(report)


def test_a_queue_that_cannot_tell_its_depth_says_so() -> None:
    now = utcnow()
    report = StatusReport(now, now - timedelta(hours=24), dict.fromkeys(Status, 0))
    lines = render_status(report)
    assert "queue depth:    unknown (this queue cannot tell)" in lines
    assert "oldest waiting: none" in lines
    assert report.to_json()["queue"] == {"depth": None, "error": None}


@pytest.mark.parametrize(
    ("code", "error", "reason"),
    [
        (550, "550 5.1.1 <a@b.example>: no such user", "5.1.1 <address>: no such user"),
        (451, "451  4.3.0\tqueue id 4F3A2B1C9D temporarily failed", "4.3.0 queue id <id> temporarily failed"),
        (None, "", "(no error recorded)"),
        (None, "550 x", "550 x"),  # no code recorded: the text is left alone
        (552, "552 mailbox of bob@example.org is full", "mailbox of <address> is full"),
    ],
)
def test_failure_reason_normalization(code: int | None, error: str, reason: str) -> None:
    record = MailRecord.new(mail("x")).evolve(last_code=code, last_error=error)
    assert failure_reason(record) == reason
