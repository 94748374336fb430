"""Adaptive throttling and several accounts, against real aiosmtpd servers.

Reply classification, AIMD slow-down and recovery under a 421 storm, "try
again in N seconds" pauses, failover on connection/auth failures with the
circuit breaker, no failover on a recipient's 5xx, round-robin.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import secrets
import time
from collections.abc import AsyncIterator

import pytest
from conftest import reachable, service_missing
from proc_helpers import free_port
from prometheus_client import REGISTRY

from mailqueue import Mail, MailQueue, Recipient, Status, Worker, WorkerSettings
from mailqueue.backends.memory import MemoryQueue
from mailqueue.backends.smtp import SMTPSender
from mailqueue.errors import PermanentDeliveryError, TransientDeliveryError
from mailqueue.protocols import OutgoingMessage
from mailqueue.sending.account_limit import AccountLimit, AccountLimiter, LocalAccountLimiter, WorkerPace
from mailqueue.sending.accounts import Account, AccountRouter
from mailqueue.sending.limits import parse_rate
from mailqueue.sending.pipeline import build_sender, find_link
from mailqueue.sending.throttle import (
    AIMDParams,
    CircuitBreaker,
    ErrorClass,
    classify,
    classify_reply,
    retry_after,
)
from mailqueue.settings import load_settings
from mailqueue.stores.memory import MemoryAttachmentStore, MemoryStore
from mailqueue.testing.smtpd import Fault, SMTPTestServer

REDIS = os.environ.get("MAILQUEUE_TEST_REDIS", "127.0.0.1:6379")
FAST = WorkerSettings(concurrency=2, retry_base=0.02, retry_max=0.05, max_attempts=50, shutdown_timeout=5)


def sample(name: str, account: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"account": account})


@pytest.mark.parametrize(
    ("code", "reply", "expected"),
    [
        (421, "4.7.0 Try again later, closing connection", ErrorClass.THROTTLE),
        (421, "Service not available", ErrorClass.THROTTLE),
        (451, "4.7.1 Rate limited, try again in 30 seconds", ErrorClass.THROTTLE),
        (450, "4.7.1 too many messages", ErrorClass.THROTTLE),
        (451, "Temporary local problem - please try again later", ErrorClass.THROTTLE),
        (451, "4.3.0 local error in processing", ErrorClass.OTHER),
        (451, "4.3.0 cannot generate a queue file", ErrorClass.OTHER),
        (451, "4.4.1 ratelimit exceeded", ErrorClass.THROTTLE),
        (452, "4.3.1 account sending quota exceeded", ErrorClass.QUOTA),
        (535, "5.7.8 Authentication credentials invalid", ErrorClass.AUTH),
        (530, "5.7.0 Authentication required", ErrorClass.AUTH),
        (550, "5.4.5 Daily user sending quota exceeded", ErrorClass.QUOTA),
        (554, "5.7.1 message content rejected", ErrorClass.OTHER),
        (550, "5.1.1 no such user", ErrorClass.OTHER),
        (None, "connection refused", ErrorClass.CONNECTION),
    ],
)
def test_classification(code: int | None, reply: str, expected: ErrorClass) -> None:
    assert classify_reply(code, reply) is expected


def test_classify_exceptions_and_retry_after() -> None:
    assert classify(TransientDeliveryError("Connection refused")) is ErrorClass.CONNECTION
    assert classify(PermanentDeliveryError("5.7.1 spam", 554)) is ErrorClass.OTHER
    assert retry_after("451 4.7.1 try again in 30 seconds") == 30.0
    assert retry_after("421 please retry in 2 minutes") == 120.0
    assert retry_after("Try again in 1.5s") == 1.5
    assert retry_after("451 4.3.0 try again later") is None


def test_breaker_opens_half_opens_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker("b-unit", failures=2, cooldown=10, clock=lambda: now[0])
    breaker.failure()
    assert breaker.allow()
    breaker.failure()
    assert sample("mailqueue_account_circuit_state", "b-unit") == 2
    assert not breaker.allow()
    now[0] = 11
    assert breaker.allow()  # the one trial
    assert sample("mailqueue_account_circuit_state", "b-unit") == 1
    assert not breaker.allow()
    breaker.failure()  # trial failed: open again
    assert sample("mailqueue_account_circuit_state", "b-unit") == 2
    now[0] = 22
    assert breaker.allow()
    breaker.success()
    assert sample("mailqueue_account_circuit_state", "b-unit") == 0


def message(n: int = 0, *recipients: str) -> OutgoingMessage:
    return OutgoingMessage(
        mail_id=f"m{n}",
        data=f"From: a@example.com\r\nSubject: {n}\r\n\r\nbody {n}\r\n".encode(),
        envelope_from="a@example.com",
        recipients=list(recipients or [f"user{n}@example.com"]),
    )


def account(
    name: str,
    url: str,
    rate: str = "",
    params: AIMDParams | None = None,
    failures: int = 2,
    limiter: AccountLimiter | None = None,
) -> Account:
    return Account(
        name,
        AccountLimit(
            SMTPSender.from_url(url), name, limiter or LocalAccountLimiter(name, parse_rate(rate), params)
        ),
        CircuitBreaker(name, failures=failures, cooldown=60),
    )


@pytest.fixture
async def primary() -> AsyncIterator[SMTPTestServer]:
    async with SMTPTestServer() as smtpd:
        yield smtpd


@pytest.fixture
async def backup() -> AsyncIterator[SMTPTestServer]:
    async with SMTPTestServer() as smtpd:
        yield smtpd


@pytest.mark.parametrize("state", ["local", pytest.param("redis", marks=pytest.mark.redis)])
async def test_throttle_storm_slows_the_account_then_recovers(primary: SMTPTestServer, state: str) -> None:
    params = AIMDParams(decrease=0.5, floor=0.1, increase=0.25, increase_after=2, pause=0.05)
    storm = Fault("mail", reply="421 4.7.0 rate limited, try again later", disconnect=True, times=4)
    primary.faults.append(storm)
    name = f"test-storm-{secrets.token_hex(4)}"
    url = primary.url(from_address="a@example.com", timeout="2")
    limiter: AccountLimiter | None = None
    if state == "redis":
        if not reachable(REDIS):
            service_missing(f"Redis at {REDIS}")
        from mailqueue.sending.redis_limits import RedisRateLimiter

        limiter = RedisRateLimiter(f"redis://{REDIS}/0", name, parse_rate("20/s"), params)
    storm_account = account(name, url, "20/s", params, 100, limiter)
    sender = AccountRouter([storm_account])
    store, queue, attachments = MemoryStore(), MemoryQueue(), MemoryAttachmentStore()
    mq = MailQueue(store=store, queue=queue, attachments=attachments, message_id_domain="example.com")
    async with mq, sender:
        worker = Worker(queue=queue, store=store, attachments=attachments, sender=sender, settings=FAST)
        seen: list[float] = []

        async def watch() -> None:
            while True:
                seen.append(sample("mailqueue_account_rate_per_second", name) or 0.0)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        task = asyncio.create_task(worker.run())
        ids = [
            (
                await mq.submit(
                    Mail(subject=f"s{n}", html="<p>x</p>", to=[Recipient(address=f"u{n}@example.com")])
                )
            ).id
            for n in range(20)
        ]
        for _ in range(400):
            done = [await mq.status(i) for i in ids]
            if all(r is not None and r.status is Status.SENT for r in done):
                break
            await asyncio.sleep(0.025)
        worker.stop()
        await task
        watcher.cancel()
        ids_received = [
            str(email.message_from_bytes(m.data, policy=email.policy.default)["Message-ID"])
            for m in primary.messages
        ]
        expected = [str(r.mail.message_id) for r in done if r is not None]
    if state == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(f"redis://{REDIS}/0")
        await client.delete(f"mq:rl:{name}:aimd")
        await client.aclose()
    print(f"{state}: rate gauge: start {seen[0]}/s, lowest {min(seen)}/s, end {seen[-1]}/s")
    assert sorted(ids_received) == sorted(expected)  # every mail delivered exactly once
    assert min(seen) <= 20 * 0.5**2  # at least two multiplicative decreases showed
    assert sample("mailqueue_account_rate_per_second", name) == 20.0  # back to the configured rate
    assert (sample("mailqueue_account_throttled_total", name) or 0) >= 4


@pytest.mark.slow
async def test_try_again_in_n_seconds_is_honoured(primary: SMTPTestServer) -> None:
    primary.faults.append(Fault("mail", reply="451 4.7.1 Rate limited, try again in 1 seconds"))
    sender = AccountRouter([account("pause", primary.url(from_address="a@example.com"))])
    async with sender:
        with pytest.raises(TransientDeliveryError):
            await sender.send(message(1))
        started = time.monotonic()
        result = await sender.send(message(2))
        waited = time.monotonic() - started
    print(f"second send waited {waited:.2f} s after 'try again in 1 seconds'")
    assert result.accepted == ["user2@example.com"]
    assert 0.9 <= waited < 3
    assert len(primary.messages) == 1


async def test_refused_connection_fails_over_and_opens_the_breaker(backup: SMTPTestServer) -> None:
    closed = f"smtp://127.0.0.1:{free_port()}?from=a@example.com&timeout=1"
    sender = AccountRouter(
        [account("dead-primary", closed), account("live-backup", backup.url(from_address="b@example.com"))]
    )
    async with sender:
        for n in range(4):
            assert (await sender.send(message(n))).accepted == [f"user{n}@example.com"]
    assert len(backup.messages) == 4
    assert {m.envelope_from for m in backup.messages} == {"b@example.com"}
    assert sample("mailqueue_account_circuit_state", "dead-primary") == 2
    assert sample("mailqueue_account_circuit_state", "live-backup") == 0
    # two failures opened the breaker; later mails skipped the primary entirely
    assert sample("mailqueue_account_failovers_total", "dead-primary") == 2


async def test_refused_password_fails_over() -> None:
    async with SMTPTestServer(auth=("user", "secret")) as guarded, SMTPTestServer() as spare:
        wrong = guarded.url(from_address="a@example.com").replace("smtp://", "smtp://user:wrong@")
        sender = AccountRouter(
            [account("bad-auth", wrong), account("spare", spare.url(from_address="a@x.org"))]
        )
        async with sender:
            await sender.send(message(1))
        assert len(spare.messages) == 1
        assert guarded.messages == []
        assert sample("mailqueue_account_failovers_total", "bad-auth") == 1


async def test_recipient_refusal_does_not_fail_over(primary: SMTPTestServer, backup: SMTPTestServer) -> None:
    primary.faults.append(Fault("rcpt", reply="550 5.1.1 no such user", address="gone@example.com"))
    sender = AccountRouter(
        [
            account("rcpt-primary", primary.url(from_address="a@example.com")),
            account("rcpt-backup", backup.url(from_address="a@example.com")),
        ]
    )
    async with sender:
        result = await sender.send(message(1, "gone@example.com", "here@example.com"))
        assert result.replies["gone@example.com"].code == 550
        assert result.accepted == ["here@example.com"]
        primary.faults.append(Fault("data", reply="554 5.7.1 content rejected"))
        with pytest.raises(PermanentDeliveryError):
            await sender.send(message(2))
    assert backup.messages == []
    assert sample("mailqueue_account_failovers_total", "rcpt-primary") is None
    assert sample("mailqueue_account_circuit_state", "rcpt-primary") == 0


async def test_round_robin_splits_across_accounts(primary: SMTPTestServer, backup: SMTPTestServer) -> None:
    sender = AccountRouter(
        [
            account("rr-1", primary.url(from_address="a@example.com")),
            account("rr-2", backup.url(from_address="a@example.com")),
        ],
        "round_robin",
    )
    async with sender:
        await asyncio.gather(*(sender.send(message(n)) for n in range(10)))
    assert (len(primary.messages), len(backup.messages)) == (5, 5)


async def test_every_account_down_is_transient() -> None:
    closed = [f"smtp://127.0.0.1:{free_port()}?from=a@example.com&timeout=1" for _ in range(2)]
    sender = AccountRouter([account("down-1", closed[0]), account("down-2", closed[1])])
    async with sender:
        with pytest.raises(TransientDeliveryError):
            await sender.send(message(1))


async def test_build_sender_keeps_the_single_sender_as_it_was(primary: SMTPTestServer) -> None:
    url = primary.url(from_address="a@example.com")
    plain, limiter = build_sender(load_settings(sender=url, worker={"rate": "5/s"}))
    assert isinstance(plain, AccountLimit)  # one sender: the worker's limit, throttled
    assert isinstance(plain.inner, SMTPSender)
    assert isinstance(plain.limiter, WorkerPace)
    assert plain.limiter.limiter is limiter
    assert [str(w) for w in limiter.windows] == ["5/1s"]
    several, unlimited = build_sender(
        load_settings(
            senders=[{"url": url, "name": "one", "rate": "3/s"}, {"url": url}],
            sender_strategy="round_robin",
        )
    )
    assert isinstance(several, AccountRouter)
    assert unlimited.unlimited
    assert [a.name for a in several.accounts] == ["one", "account2"]
    # each account: its own limit and throttle around its own wire sender
    first = several.accounts[0].sender
    assert isinstance(first, AccountLimit)
    assert isinstance(first.inner, SMTPSender)
    assert isinstance(first.limiter, LocalAccountLimiter)
    assert [str(w) for w in first.limiter.windows] == ["3/1s"]
    assert several.accounts[0].factor == 1.0
    async with several:
        results = await asyncio.gather(*(several.send(message(n)) for n in range(2)))
    assert all(r.accepted for r in results)


def test_serve_mode_worker_uses_the_accounts(primary: SMTPTestServer) -> None:
    from mailqueue.contrib.litestar_app import MailQueuePlugin

    url = primary.url(from_address="a@example.com")
    memory = {"store": "memory://", "queue": "memory://", "attachments": "memory://"}
    plugin = MailQueuePlugin(
        load_settings(**memory, senders=[{"url": url, "name": "serve-a"}, {"url": url, "name": "serve-b"}]),
        worker=True,
    )
    # (inside the suppression step, the outermost link: the memory store keeps a list)
    router = find_link(plugin.sender, AccountRouter)
    assert router is not None
    assert [a.name for a in router.accounts] == ["serve-a", "serve-b"]
    plain = MailQueuePlugin(load_settings(**memory, sender=url), worker=True)
    limit = find_link(plain.sender, AccountLimit)
    assert limit is not None
    assert isinstance(limit.inner, SMTPSender)


async def test_account_limit_is_a_link_that_slows_its_account_and_passes_the_outcome_on(
    primary: SMTPTestServer,
) -> None:
    params = AIMDParams(decrease=0.5, floor=0.1, pause=0.01)
    limit = AccountLimit(
        SMTPSender.from_url(primary.url(from_address="a@example.com")),
        "link-a",
        LocalAccountLimiter("link-a", parse_rate("10/s"), params),
    )
    primary.faults.append(Fault("rcpt", reply="450 4.7.1 too many recipients, slow down", address="t@x.org"))
    async with limit:
        result = await limit.send(message(1, "t@x.org", "ok@x.org"))  # a throttle reply to one recipient
        assert result.replies["t@x.org"].code == 450  # the outcome is passed on unchanged
        assert result.accepted == ["ok@x.org"]
        assert limit.factor == 0.5
        primary.faults.append(Fault("mail", reply="451 4.7.1 rate limited"))
        with pytest.raises(TransientDeliveryError):  # a throttle failure is raised unchanged
            await limit.send(message(2))
        assert limit.factor == 0.25
        primary.faults.append(Fault("data", reply="554 5.7.1 content rejected"))
        with pytest.raises(PermanentDeliveryError):  # not a throttle reply: the pace stays
            await limit.send(message(3))
        assert limit.factor == 0.25
    assert sample("mailqueue_account_throttled_total", "link-a") == 2
    account_a = Account("link-a", limit, CircuitBreaker("link-a"))
    assert account_a.factor == 0.25  # what the router and the dashboard read


async def test_a_single_account_does_not_promise_a_next_one(
    primary: SMTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    primary.faults.append(Fault("mail", reply="451 4.7.1 rate limited"))
    sender = AccountRouter([account("only-one", primary.url(from_address="a@example.com"))])
    async with sender:
        with caplog.at_level("WARNING", logger="mailqueue.accounts"), pytest.raises(TransientDeliveryError):
            await sender.send(message(1))
    [line] = [r.getMessage() for r in caplog.records if r.name == "mailqueue.accounts"]
    assert "only-one failed" in line
    assert line.endswith("no other account to try")
    assert "trying the next one" not in line


async def test_a_single_sender_slows_down_and_pauses_on_throttle_replies(primary: SMTPTestServer) -> None:
    """Without ``senders`` or a ``rate_store`` the worker's own ``worker.rate`` is throttled."""
    storm = Fault("mail", reply="451 4.7.1 rate limited, try again in 0.3 seconds", times=3)
    primary.faults.append(storm)
    settings = load_settings(
        store="memory://",
        queue="memory://",
        attachments="memory://",
        sender=primary.url(from_address="a@example.com"),
        message_id_domain="example.com",
        worker={
            "rate": "40/s",
            "concurrency": 1,
            "retry_base": 0.01,
            "retry_max": 0.05,
            "throttle": {"decrease": 0.5, "floor": 0.1, "increase": 0.5, "increase_after": 3, "pause": 0.05},
        },
        retention={"interval": 0},
    )
    mq = MailQueue.from_settings(settings)
    worker = Worker.from_settings(settings, mq)
    assert find_link(worker.sender, AccountLimit) is not None
    throttled_before = sample("mailqueue_account_throttled_total", "default") or 0
    factors: list[float] = []
    async with mq, worker.sender:
        task = asyncio.create_task(worker.run())
        ids = []
        for n in range(12):
            mail = Mail(subject=f"s{n}", html="<p>x</p>", to=[Recipient(address=f"u{n}@example.com")])
            ids.append((await mq.submit(mail)).id)
        started = time.monotonic()
        for _ in range(600):
            factors.append(worker.limiter.factor)
            done = [await mq.status(i) for i in ids]
            if all(r is not None and r.status is Status.SENT for r in done):
                break
            await asyncio.sleep(0.01)
        took = time.monotonic() - started
        worker.stop()
        await task
    print(
        f"single sender: factor lowest {min(factors)}, end {worker.limiter.factor}; 12 mails in {took:.2f} s"
    )
    assert len(primary.messages) == 12  # each delivered exactly once
    assert min(factors) <= 0.25  # at least two decreases reached the worker's limiter
    assert worker.limiter.factor == 1.0  # and it recovered
    assert (
        took >= 0.6
    )  # the "try again in 0.3 seconds" pauses were honoured (three of them, some overlapping)
    assert (sample("mailqueue_account_throttled_total", "default") or 0) - throttled_before == 3
