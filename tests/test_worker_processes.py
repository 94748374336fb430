"""Real worker processes on MariaDB (sql queue, store and attachments): stop one
with SIGTERM mid-batch, kill one with SIGKILL; every mail still ends ``sent``
exactly once in the Store, and nothing is lost."""

from __future__ import annotations

import asyncio
import collections
import email
import email.policy
import os
import signal
import sys
from collections.abc import AsyncIterator

import pytest
from proc_helpers import eventually

from mailqueue import Mail, MailQueue, Recipient, Status
from mailqueue.testing.smtpd import Fault, SMTPTestServer

pytestmark = pytest.mark.slow

CONCURRENCY = 4
COUNT = 60


@pytest.fixture
async def server() -> AsyncIterator[SMTPTestServer]:
    # a slow server, so that a batch is really in flight when the signal comes
    async with SMTPTestServer(faults=[Fault("data_end", stall=0.05, times=None)]) as smtpd:
        yield smtpd


def worker_env(store_url: str, server: SMTPTestServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILQUEUE_")}
    env.update(
        MAILQUEUE_STORE=store_url,
        MAILQUEUE_QUEUE="sql://?poll=0.05&lease=2",
        MAILQUEUE_ATTACHMENTS="sql://",
        MAILQUEUE_SENDER=server.url(from_address="noreply@example.com", timeout="5"),
        MAILQUEUE_WORKER__CONCURRENCY=str(CONCURRENCY),
        MAILQUEUE_WORKER__SHUTDOWN_TIMEOUT="10",
        MAILQUEUE_LOG_LEVEL="WARNING",
    )
    return env


async def start_worker(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "mailqueue", "worker", env=env)


async def submit_all(mq: MailQueue) -> list[str]:
    ids = []
    for n in range(COUNT):
        mail = Mail(subject=f"mail {n}", html=f"<p>{n}</p>", to=[Recipient(address=f"user{n}@example.com")])
        ids.append((await mq.submit(mail)).id)
    return ids


async def statuses(mq: MailQueue, ids: list[str]) -> collections.Counter[Status]:
    return collections.Counter([(await mq.status(i)).status for i in ids])  # type: ignore[union-attr]


def received(server: SMTPTestServer) -> collections.Counter[str]:
    return collections.Counter(
        str(email.message_from_bytes(m.data, policy=email.policy.default)["Message-ID"])
        for m in server.messages
    )


async def drain_with_new_worker(mq: MailQueue, ids: list[str], env: dict[str, str]) -> None:
    proc = await start_worker(env)
    try:
        for _ in range(600):
            if (await statuses(mq, ids))[Status.SENT] == len(ids):
                break
            await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert (await statuses(mq, ids)) == {Status.SENT: len(ids)}


async def test_sigterm_mid_batch_loses_nothing_and_duplicates_nothing(
    mysql_url: str, server: SMTPTestServer
) -> None:
    env = worker_env(mysql_url, server)
    async with MailQueue.from_urls(store=mysql_url, queue="sql://", attachments="sql://") as mq:
        ids = await submit_all(mq)
        proc = await start_worker(env)
        await eventually(lambda: len(server.messages) >= 10, "10 mails at the server", within=30)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        after_stop = await statuses(mq, ids)
        # graceful: in-flight sends finished and were recorded, the rest went back
        assert set(after_stop) <= {Status.SENT, Status.QUEUED}, after_stop
        assert 0 < after_stop[Status.SENT] < COUNT
        assert after_stop[Status.SENT] == len(server.messages)
        await drain_with_new_worker(mq, ids, env)
        counts = received(server)
        expected = [r.mail.message_id for r in [await mq.status(i) for i in ids] if r]
        assert sorted(counts) == sorted(str(m) for m in expected)
        assert set(counts.values()) == {1}  # exactly once each


async def test_sigkill_mid_batch_loses_nothing(mysql_url: str, server: SMTPTestServer) -> None:
    env = worker_env(mysql_url, server)
    async with MailQueue.from_urls(store=mysql_url, queue="sql://", attachments="sql://") as mq:
        ids = await submit_all(mq)
        proc = await start_worker(env)
        await eventually(lambda: len(server.messages) >= 10, "10 mails at the server", within=30)
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL
        # leased deliveries come back after the lease (2 s) and are sent by another worker
        await drain_with_new_worker(mq, ids, env)
        counts = received(server)
        assert len(counts) == COUNT  # every mail arrived
        duplicates = sum(n - 1 for n in counts.values())
        # only mails in flight at the kill can arrive twice
        assert duplicates <= CONCURRENCY, counts
