"""Metrics, health and supervision on real components.

A worker started like ``mailqueue worker`` (``run_worker``) on the embedded
default (SQL queue and store on SQLite) delivers to an in-process aiosmtpd
server; its own ``/metrics`` endpoint is scraped over HTTP and the counters
compared before and after. The queue is made unreachable by renaming its
table, which is what a dropped or broken database looks like to it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import service_missing
from faultproxy import FaultProxy
from http_helpers import serve
from proc_helpers import eventually, free_port
from prometheus_client.parser import text_string_to_metric_families

from mailqueue import Mail, MailQueue, Recipient, Status, Worker, WorkerSettings, load_settings
from mailqueue.backends.memory import MemoryQueue
from mailqueue.backends.smtp import SMTPSender
from mailqueue.cli import run_worker
from mailqueue.contrib.litestar_app import create_app
from mailqueue.protocols import Consumer, Delivery
from mailqueue.records import MailRecord, RecordQuery
from mailqueue.settings import Settings
from mailqueue.stores.memory import MemoryAttachmentStore, MemoryStore
from mailqueue.testing.smtpd import Fault, SMTPTestServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a text exposition, keyed by (name, labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def mail(address: str, subject: str = "Hello") -> Mail:
    return Mail(subject=subject, html="<p>Hi</p>", to=[Recipient(address=address)])


async def rename_queue_table(db: Path, old: str, new: str) -> None:
    """Rename a table of the app's SQLite database from another connection.

    In a thread: the app runs on this event loop, and a transaction of its worker left open at
    an await can only end while the loop runs (blocking the loop here waited out the lock)."""

    def rename() -> None:
        with sqlite3.connect(db, timeout=10) as connection:
            connection.execute(f"ALTER TABLE {old} RENAME TO {new}")

    await asyncio.to_thread(rename)


@pytest.fixture
async def server() -> AsyncIterator[SMTPTestServer]:
    async with SMTPTestServer() as smtpd:
        yield smtpd


def embedded(tmp_path: Path, sender: str, **worker: Any) -> Settings:
    return load_settings(
        store=f"sqlite+aiosqlite:///{tmp_path}/mailqueue.db",
        queue="sql://?poll=0.05",
        attachments=f"file://{tmp_path}/attachments",
        sender=sender,
        worker={"retry_base": 0.05, "retry_max": 0.2, "sweep_interval": 0, "health_interval": 0.2} | worker,
    )


async def test_worker_metrics_health_and_recovery(tmp_path: Path, server: SMTPTestServer) -> None:
    port = free_port()
    settings = embedded(
        tmp_path, server.url(from_address="noreply@example.com", timeout="2"), metrics_port=port
    )
    base = f"http://127.0.0.1:{port}"
    worker = asyncio.create_task(run_worker(settings, install_signal_handlers=False))
    async with MailQueue.from_settings(settings) as mq, httpx.AsyncClient(base_url=base) as http:

        async def scrape() -> Samples:
            response = await http.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            return parse(response.text)

        async def up() -> bool:
            try:
                return (await http.get("/health/live")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(up, "worker metrics endpoint", within=10)
        before = await scrape()
        server.faults.append(Fault("mail", reply="451 4.3.0 try later", times=1))
        ids = [(await mq.submit(mail(f"user{i}@example.com"))).id for i in range(3)]

        async def all_sent() -> bool:
            records = [await mq.status(i) for i in ids]
            return all(r is not None and r.status is Status.SENT for r in records)

        await eventually(all_sent, "three mails sent", within=10)
        after = await scrape()

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("mailqueue_mails_accepted_total") == 3
        assert delta("mailqueue_mails_finished_total", status="sent") == 3
        assert delta("mailqueue_mails_finished_total", status="failed") == 0
        assert delta("mailqueue_retries_total", reply_class="4xx", code="451") == 1
        assert delta("mailqueue_send_duration_seconds_count") == 4  # three sends and the refused one
        assert delta("mailqueue_delivery_latency_seconds_count") == 3
        assert delta("mailqueue_delivery_latency_seconds_sum") > 0
        assert value(after, "mailqueue_worker_in_flight") == 0
        assert value(after, "mailqueue_worker_ready") == 1
        assert value(after, "mailqueue_smtp_connections") >= 1
        assert value(after, "mailqueue_queue_depth") == 0
        assert value(after, "mailqueue_queue_oldest_age_seconds") == 0
        assert len(server.messages) == 3
        assert (await http.get("/health/ready")).status_code == 200
        assert (await http.get("/nothing")).status_code == 404

        # the queue's table disappears: not ready; it comes back: ready again, by itself
        db = tmp_path / "mailqueue.db"
        await rename_queue_table(db, "mailqueue_queue", "mailqueue_queue_away")

        async def ready_is(code: int) -> bool:
            return (await http.get("/health/ready")).status_code == code

        await eventually(lambda: ready_is(503), "readiness 503", within=10)
        assert value(await scrape(), "mailqueue_worker_ready") == 0
        await rename_queue_table(db, "mailqueue_queue_away", "mailqueue_queue")
        await eventually(lambda: ready_is(200), "readiness back to 200", within=10)

        async def gauge_ready() -> bool:
            return value(await scrape(), "mailqueue_worker_ready") == 1

        await eventually(gauge_ready, "mailqueue_worker_ready back to 1", within=10)
        late = await mq.submit(mail("late@example.com"))

        async def late_sent() -> bool:
            record = await mq.status(late.id)
            return record is not None and record.status is Status.SENT

        await eventually(late_sent, "a mail sent after the outage", within=10)
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker


async def test_api_metrics_and_readiness(tmp_path: Path) -> None:
    settings = embedded(tmp_path, "outbox://" + str(tmp_path / "outbox"))
    async with serve(create_app(settings)) as client:
        before = parse((await client.get("/metrics")).text)
        for i in range(2):
            response = await client.post(
                "/api/email/send",
                json={
                    "title": f"Hi {i}",
                    "content": "<p>x</p>",
                    "receiver": "ann@example.com",
                    "sender_name": "B",
                },
            )
            assert response.status_code == 200, response.text
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        after = parse(response.text)
        accepted = "mailqueue_mails_accepted_total"
        assert value(after, accepted) - value(before, accepted) == 2
        assert value(after, "mailqueue_queue_oldest_age_seconds") >= 0
        assert (await client.get("/health/ready")).status_code == 200
        db = tmp_path / "mailqueue.db"
        await rename_queue_table(db, "mailqueue_queue", "mailqueue_queue_away")
        answer = await client.get("/health/ready")
        assert answer.status_code == 503
        assert answer.json()["data"]["checks"]["queue"] == "unavailable"
        await rename_queue_table(db, "mailqueue_queue_away", "mailqueue_queue")
        assert (await client.get("/health/ready")).status_code == 200


class _Exploding:
    """A consumer iterator that raises something no backend should: a bug."""

    def __init__(self, inner: Consumer) -> None:
        self.inner = inner

    def __aiter__(self) -> _Exploding:
        return self

    async def __anext__(self) -> Delivery:
        raise RuntimeError("consumer bug")

    async def aclose(self) -> None:
        await self.inner.aclose()


class FlakyQueue(MemoryQueue):
    """A MemoryQueue whose first consumer raises a non-BackendError."""

    broken = 1

    def consume(self, *, prefetch: int) -> Any:
        inner = super().consume(prefetch=prefetch)
        if self.broken:
            self.broken -= 1
            return _Exploding(inner)
        return inner


class FlakyStore(MemoryStore):
    """A MemoryStore whose first find() raises a non-BackendError (the sweeper reads with it)."""

    broken = 1

    async def find(self, query: RecordQuery) -> list[MailRecord]:
        if self.broken:
            self.broken -= 1
            raise RuntimeError("store bug")
        return await super().find(query)


async def test_supervision_restarts_consumer_and_sweeper(server: SMTPTestServer) -> None:
    from prometheus_client import REGISTRY

    def restarts(component: str) -> float:
        sample = REGISTRY.get_sample_value("mailqueue_worker_restarts_total", {"component": component})
        return sample or 0.0

    consumer_before, sweeper_before = restarts("consumer"), restarts("sweeper")
    store, queue, attachments = FlakyStore(), FlakyQueue(), MemoryAttachmentStore()
    sender = SMTPSender.from_url(server.url(from_address="noreply@example.com", timeout="2"))
    settings = WorkerSettings(restart_base=0.05, sweep_interval=0.05, sweep_after=0, health_interval=0.1)
    async with store, queue, attachments, sender:
        mq = MailQueue(store=store, queue=queue, attachments=attachments)
        work = Worker(queue=queue, store=store, attachments=attachments, sender=sender, settings=settings)
        task = asyncio.create_task(work.run())
        record = await mq.submit(mail("ann@example.com"))

        async def sent() -> bool:
            current = await store.get(record.id)
            return current is not None and current.status is Status.SENT

        await eventually(sent, "delivery after the consumer's restart", within=10)
        await eventually(lambda: restarts("sweeper") > sweeper_before, "sweeper restart", within=10)
        assert restarts("consumer") - consumer_before == 1
        assert work.ready
        work.stop()
        await asyncio.wait_for(task, 10)
    assert len(server.messages) == 1


DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _metric_names() -> set[str]:
    """Every series name the default registry's families expose, labelled children or not."""
    from prometheus_client import REGISTRY

    import mailqueue.metrics
    import mailqueue.sending.redis_limits
    import mailqueue.sending.throttle  # noqa: F401  (these modules define them)

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    return {
        family.name + suffix for family in REGISTRY.collect() for suffix in suffixes.get(family.type, [""])
    }


def _names_in(expr: str) -> set[str]:
    import re

    return set(re.findall(r"\bmailqueue_[a-z_]+", expr))


def test_dashboard_panels_name_existing_metrics() -> None:
    import json

    known = _metric_names()
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        names = _names_in(expr)
        assert names, f"panel expression names no mailqueue metric: {expr}"
        assert names <= known, f"unknown metric(s) {names - known} in {expr}"


def test_alert_rules_are_valid_and_name_existing_metrics() -> None:
    import shutil
    import subprocess

    import yaml

    known = _metric_names()
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yaml").read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert _names_in(rule["expr"]) <= known, rule["alert"]
    promtool = shutil.which("promtool")
    if promtool is None:
        service_missing("promtool (Debian package prometheus; scripts/services.sh installs it)")
        return
    result = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus-alerts.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.mysql
async def test_worker_recovers_when_its_database_link_is_cut(
    tmp_path: Path, server: SMTPTestServer, mysql_url: str
) -> None:
    from urllib.parse import urlsplit

    direct = urlsplit(mysql_url)
    proxy = FaultProxy(direct.port or 3306, host=direct.hostname or "127.0.0.1")
    proxy.start()
    proxied = direct._replace(netloc=f"root@{proxy.address}").geturl()
    port = free_port()
    common: dict[str, Any] = {
        "queue": "sql://?poll=0.05",
        "attachments": f"file://{tmp_path}/attachments",
        "sender": server.url(from_address="noreply@example.com", timeout="2"),
    }
    worker_settings = load_settings(
        store=proxied,
        worker={"retry_base": 0.05, "sweep_interval": 0, "health_interval": 0.2, "metrics_port": port},
        **common,
    )
    worker = asyncio.create_task(run_worker(worker_settings, install_signal_handlers=False))
    async with (
        MailQueue.from_settings(load_settings(store=mysql_url, **common)) as mq,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
    ):

        async def ready_is(code: int) -> bool:
            try:
                return (await http.get("/health/ready")).status_code == code
            except httpx.TransportError:
                return False

        async def sent(mail_id: str) -> bool:
            record = await mq.status(mail_id)
            return record is not None and record.status is Status.SENT

        await eventually(lambda: ready_is(200), "worker ready", within=10)
        first = await mq.submit(mail("before@example.com"))
        await eventually(lambda: sent(first.id), "mail sent before the cut", within=10)

        proxy.cut()
        await eventually(lambda: ready_is(503), "not ready while the database link is cut", within=10)
        assert value(parse((await http.get("/metrics")).text), "mailqueue_worker_ready") == 0
        during = await mq.submit(mail("during@example.com"))  # accepted: the API side still reaches it
        await asyncio.sleep(0.5)
        assert not await sent(during.id)

        proxy.restore()
        await eventually(lambda: ready_is(200), "ready again once the link is back", within=20)
        await eventually(lambda: sent(during.id), "the mail accepted during the cut is sent", within=20)
        assert value(parse((await http.get("/metrics")).text), "mailqueue_worker_ready") == 1
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    proxy.stop()
    assert len(server.messages) == 2


@pytest.mark.mysql
async def test_api_readiness_follows_its_database_link(tmp_path: Path, mysql_url: str) -> None:
    from urllib.parse import urlsplit

    direct = urlsplit(mysql_url)
    proxy = FaultProxy(direct.port or 3306, host=direct.hostname or "127.0.0.1")
    proxy.start()
    settings = load_settings(
        store=direct._replace(netloc=f"root@{proxy.address}").geturl(),
        queue="sql://",
        attachments=f"file://{tmp_path}/attachments",
        sender="outbox://" + str(tmp_path / "outbox"),
    )
    async with serve(create_app(settings)) as client:
        assert (await client.get("/health/ready")).status_code == 200
        proxy.cut()
        answer = await client.get("/health/ready")
        assert answer.status_code == 503
        assert answer.json()["data"]["checks"] == {"store": "unavailable", "queue": "unavailable"}
        assert (await client.get("/metrics")).status_code == 200  # metrics still answer
        proxy.restore()

        async def ready() -> bool:
            return (await client.get("/health/ready")).status_code == 200

        await eventually(ready, "the API ready again", within=20)
    proxy.stop()


async def test_smtp_pool_metrics(server: SMTPTestServer) -> None:
    from prometheus_client import REGISTRY

    from mailqueue.protocols import OutgoingMessage

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    def message(n: int) -> OutgoingMessage:
        data = f"Subject: {n}\r\nFrom: a@example.com\r\n\r\nbody\r\n".encode()
        return OutgoingMessage(f"id{n}", data, "noreply@example.com", ["ann@example.com"])

    before = sample("mailqueue_smtp_reconnects_total")
    sender = SMTPSender.from_url(server.url(from_address="noreply@example.com", timeout="2"))
    async with sender:
        await sender.send(message(1))
        assert sample("mailqueue_smtp_connections") == 1
        # the server drops the idle pooled connection: the next send reconnects once and succeeds
        server.faults.append(Fault("mail", reply="421 4.4.2 idle too long", disconnect=True))
        result = await sender.send(message(2))
        assert result.accepted == ["ann@example.com"]
        assert sample("mailqueue_smtp_reconnects_total") - before == 1
        assert sample("mailqueue_smtp_connections") == 1
    assert sample("mailqueue_smtp_connections") == 0
    assert len(server.messages) == 2
