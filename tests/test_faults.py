"""Fault injection: real ``mailqueue`` processes on MariaDB and RabbitMQ, with
the road to a service cut, hung or slowed by a :class:`FaultProxy` (the
machine's shared services are never stopped), and processes killed.

Every case counts, from the Store and from what the SMTP server received::

    accepted = sent + failed + dead + unknown       (nothing accepted is lost)

and bounds the duplicates (copies of one Message-ID beyond the first), then
prints ``FAULT <case>: accepted=.. sent=.. failed=.. dead=.. unknown=.. duplicates=..``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from conftest import _run
from faultproxy import FaultProxy
from proc_helpers import Process, eventually, free_port, mailqueue, parse, wait_ready
from test_broker_processes import _delete_amqp, mails, settings_env

from mailqueue import MailQueue, RecordQuery, Status
from mailqueue.testing.smtpd import Fault, FaultStage, SMTPTestServer

pytestmark = [pytest.mark.slow, pytest.mark.mysql, pytest.mark.rabbitmq]

FINAL = (Status.SENT, Status.FAILED, Status.DEAD, Status.UNKNOWN)


# --- helpers --------------------------------------------------------------------


@pytest.fixture
def amqp_queue_url(rabbitmq_url: str) -> Iterator[str]:
    """A RabbitMQ queue of the test's own (deleted afterwards); reconnects fast."""
    name = f"mq_fault_{secrets.token_hex(4)}"
    yield f"{rabbitmq_url}?queue={name}&exchange={name}&reconnect_interval=0.5"
    _run(_delete_amqp(rabbitmq_url, name))


def _hostport(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None, url
    assert parts.port is not None, url
    return parts.hostname, parts.port


def via(url: str, proxy: FaultProxy) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@{proxy.address}" if userinfo else proxy.address
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def proxy_to(url: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of the service of ``url``."""
    _, port = _hostport(url)
    with FaultProxy(port) as proxy:
        yield proxy


async def tally(mq: MailQueue, ids: list[str], server: SMTPTestServer) -> dict[str, int]:
    """Counts by final status of the accepted mails and duplicate arrivals; every
    mail the server received belongs to exactly one record."""
    records = {i: await mq.status(i) for i in ids}
    assert all(r is not None for r in records.values()), "an accepted mail has no record"
    statuses = collections.Counter(r.status for r in records.values() if r is not None)
    by_message_id = {str(r.mail.message_id): r for r in records.values() if r is not None}
    arrived = collections.Counter(str(parse(m.data)["Message-ID"]) for m in server.messages)
    assert set(arrived) <= set(by_message_id), "the server got mail nobody recorded"
    for message_id, record in by_message_id.items():
        if record.status is Status.SENT:
            assert arrived[message_id] >= 1, f"mail {record.id} is recorded sent but never arrived"
    # one row per mail: the Store holds exactly the accepted ids, no second record
    rows = await mq.store.find(RecordQuery(limit=100_000))
    assert sorted(r.id for r in rows) == sorted(ids), "the Store holds other rows than the accepted mails"
    counts = {"accepted": len(ids)}
    counts.update({str(s): statuses[s] for s in FINAL})
    counts["other"] = sum(n for s, n in statuses.items() if s not in FINAL)
    counts["duplicates"] = sum(n - 1 for n in arrived.values())
    return counts


def report(case: str, counts: dict[str, int], *, max_duplicates: int = 0) -> None:
    """Print the case's line and check the balance and the duplicate bound."""
    print(
        f"FAULT {case}: accepted={counts['accepted']} sent={counts['sent']} failed={counts['failed']} "
        f"dead={counts['dead']} unknown={counts['unknown']} duplicates={counts['duplicates']}"
    )
    assert counts["other"] == 0, counts
    assert counts["accepted"] == counts["sent"] + counts["failed"] + counts["dead"] + counts["unknown"]
    assert counts["duplicates"] <= max_duplicates, counts


async def all_final(mq: MailQueue, ids: list[str]) -> bool:
    for mail_id in ids:
        record = await mq.status(mail_id)
        if record is None or record.status not in FINAL:
            return False
    return True


@contextlib.asynccontextmanager
async def service(tmp_path: Path, command: str, env: dict[str, str], label: str) -> AsyncIterator[Process]:
    async with mailqueue(tmp_path, command, env=env, log=tmp_path / f"{label}.log") as proc:
        yield proc


@contextlib.asynccontextmanager
async def api(tmp_path: Path, env: dict[str, str], label: str = "api") -> AsyncIterator[tuple[Process, str]]:
    port = free_port()
    async with mailqueue(
        tmp_path, "api", "--port", str(port), env=env, log=tmp_path / f"{label}.log"
    ) as proc:
        base = f"http://127.0.0.1:{port}"
        await wait_ready(proc, base)
        yield proc, base


class OnStage(Fault):
    """Not a fault: runs ``action`` when a dialogue reaches ``stage``, the first ``times``
    times (after ``skip`` arrivals), then lets the dialogue go on normally."""

    def __init__(
        self, stage: FaultStage, action: Callable[[], None], *, times: int = 1, skip: int = 0
    ) -> None:
        super().__init__(stage, stall=1e-9, times=None)
        self.action = action
        self.left = times
        self.skip = skip

    def _matches(self, stage: str, address: str | None, count: int) -> bool:
        if stage == self.stage and self.left:
            if self.skip:
                self.skip -= 1
            else:
                self.left -= 1
                self.action()
        return False


def form(n: int, tag: str) -> dict[str, str]:
    return {
        "title": f"{tag} {n}",
        "content": f"<p>{tag} {n}</p>",
        "sender_name": "Fault test",
        "receiver": f"{tag}{n}@example.com",
    }


# --- the Store cut on the API side ----------------------------------------------------------


async def test_store_cut_on_the_api_side_answers_503_never_500(
    tmp_path: Path, mysql_url: str, amqp_queue_url: str
) -> None:
    async with (
        SMTPTestServer() as server,
        MailQueue.from_urls(store=mysql_url, queue=amqp_queue_url, attachments="sql://") as mq,
    ):
        with proxy_to(mysql_url) as db:
            env = settings_env(via(mysql_url, db), amqp_queue_url, server)
            async with (
                api(tmp_path, env) as (proc, base),
                httpx.AsyncClient(base_url=base, timeout=30) as http,
            ):
                ids = []
                for n in range(3):
                    reply = await http.post("/api/email/send", data=form(n, "before"))
                    assert reply.status_code == 200, reply.text
                    ids.append(reply.json()["data"]["id"])
                await asyncio.to_thread(db.cut)
                codes: collections.Counter[int] = collections.Counter()
                for n in range(4):
                    # with an attachment too: its storage goes through the Store's database
                    files = {"attachment[]": (f"a{n}.txt", b"hello", "text/plain")} if n % 2 else None
                    reply = await http.post("/api/email/send", data=form(n, "cut"), files=files)
                    codes[reply.status_code] += 1
                    assert reply.status_code == 503, reply.text
                    assert reply.json()["code"] == 503
                reply = await http.get(f"/api/email/{ids[0]}")
                assert reply.status_code == 503, reply.text
                await asyncio.to_thread(db.restore)
                for n in range(3):
                    reply = await http.post("/api/email/send", data=form(n, "after"))
                    assert reply.status_code == 200, reply.text
                    ids.append(reply.json()["data"]["id"])
                await proc.stop()
            async with service(tmp_path, "worker", env, "worker") as worker:
                await eventually(lambda: all_final(mq, ids), "every accepted mail to be sent", worker)
                await worker.stop()
        counts = await tally(mq, ids, server)
    report("store-cut-api", counts)
    assert counts["sent"] == 6
    assert codes == {503: 4}


# --- the Store cut while a worker runs --------------------------------------------------


async def test_store_cut_while_the_worker_runs_loses_nothing_and_sends_nothing_twice(
    tmp_path: Path, mysql_url: str, amqp_queue_url: str
) -> None:
    async with (
        SMTPTestServer(faults=[Fault("data_end", stall=0.05, times=None)]) as server,
        MailQueue.from_urls(store=mysql_url, queue=amqp_queue_url, attachments="sql://") as mq,
    ):
        with proxy_to(mysql_url) as db:
            # the Store goes away right after a 250, before the worker records it
            server.faults.insert(0, OnStage("data_end", db.cut, skip=4))
            env = settings_env(via(mysql_url, db), amqp_queue_url, server)
            ids = [(await mq.submit(m)).id for m in mails(10, "early")]
            async with service(tmp_path, "worker", env, "worker") as worker:

                async def cut() -> bool:
                    return db.mode == "cut"

                await eventually(cut, "the Store to be cut", worker)
                # accepted while the worker cannot reach the Store (the API's Store is fine)
                ids += [(await mq.submit(m)).id for m in mails(10, "during")]
                await asyncio.sleep(1.5)
                during = len(server.messages)
                await asyncio.sleep(1.0)
                # nothing is sent while the Store is away (each delivery waits for it)
                assert len(server.messages) == during
                await asyncio.to_thread(db.restore)
                await eventually(lambda: all_final(mq, ids), "every mail to be sent", worker)
                await asyncio.sleep(0.5)  # a late duplicate would arrive now
                await worker.stop()
                log = await worker.output()
        counts = await tally(mq, ids, server)
    report("store-cut-worker", counts)
    assert counts["sent"] == 20
    assert "could not record the outcome" in log, "the cut did not fall between the 250 and the record"
