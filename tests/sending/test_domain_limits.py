"""Limits per recipient domain, against the real SMTP test server.

A mail spanning two groups goes as two transactions; a group's slot that is not
free defers its recipients without holding a worker slot nor counting an
attempt; a group's 421 slows that group only; the limit is shared through Redis.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from mailqueue import Mail, MailQueue, Recipient, Status, Worker
from mailqueue.errors import ConfigurationError
from mailqueue.protocols import OutgoingMessage
from mailqueue.records import RecipientState
from mailqueue.sending.account_limit import AccountLimit
from mailqueue.sending.domains import DomainLimitStep, LocalDomainLimiter
from mailqueue.sending.limits import parse_rate
from mailqueue.sending.pipeline import build_sender, find_link, links
from mailqueue.settings import Settings, load_settings
from mailqueue.testing.smtpd import Fault, ReceivedMessage, SMTPTestServer


def sample(name: str, group: str) -> float:
    return REGISTRY.get_sample_value(name, {"group": group}) or 0.0


@pytest.fixture
async def server() -> AsyncIterator[SMTPTestServer]:
    async with SMTPTestServer() as smtpd:
        yield smtpd


def settings_for(
    server: SMTPTestServer, domain_limits: dict[str, Any], top: dict[str, Any] | None = None, **worker: Any
) -> Settings:
    top = {"store": "memory://", "queue": "memory://", "attachments": "memory://", **(top or {})}
    return load_settings(
        sender=server.url(from_address="a@example.com", timeout="5"),
        message_id_domain="example.com",
        domain_limits=domain_limits,
        worker={"concurrency": 8, "retry_base": 0.05, "retry_max": 0.2, "shutdown_timeout": 5, **worker},
        retention={"interval": 0},
        **top,
    )


async def submit(mq: MailQueue, *addresses: str) -> str:
    mail = Mail(subject="s", html="<p>x</p>", to=[Recipient(address=a) for a in addresses])
    return (await mq.submit(mail)).id


async def wait_sent(mq: MailQueue, ids: list[str], longest: float) -> float:
    """Seconds until every mail of ``ids`` is ``sent`` (fails after ``longest``)."""
    started = time.monotonic()
    left = set(ids)
    while left:
        assert time.monotonic() - started < longest, f"{len(left)} mail(s) not sent in {longest} s"
        for mail_id in list(left):
            record = await mq.status(mail_id)
            if record is not None and record.status is Status.SENT:
                left.discard(mail_id)
        if left:
            await asyncio.sleep(0.02)
    return time.monotonic() - started


def test_the_setting_names_groups_and_refuses_what_cannot_be_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILQUEUE_DOMAIN_LIMITS", '{"yahoo": {"domains": ["yahoo.com"], "rate": "5/s"}}')
    assert load_settings().domain_limits["yahoo"].rate == "5/s"
    monkeypatch.delenv("MAILQUEUE_DOMAIN_LIMITS")
    settings = load_settings(
        domain_limits={
            "google": {"domains": ["Gmail.com.", "googlemail.com"], "rate": "20/s;3000/h"},
            "default": {"rate": "50/s"},
        }
    )
    assert settings.domain_limits["google"].domains == ["gmail.com", "googlemail.com"]
    assert settings.domain_limits["default"].domains == []
    for bad, says in [
        ({"google": {"rate": "1/s"}}, "lists no domains"),
        ({"Google": {"domains": ["gmail.com"]}}, "group name 'Google'"),
        ({"a": {"domains": ["x.com"]}, "b": {"domains": ["X.com"]}}, "in groups 'a' and 'b'"),
        ({"a": {"domains": ["not a domain"]}}, "is not a domain"),
        ({"a": {"domains": ["x.com"], "rate": "fast"}}, "N/unit"),
        ({"a": {"domains": ["x.com"], "speed": "1/s"}}, "speed"),
    ]:
        with pytest.raises(ConfigurationError, match=says):
            load_settings(domain_limits=bad)


async def test_slots_not_free_now_are_reserved_one_after_another() -> None:
    """Mails told to come back are spread over the coming slots, not all sent back at the next one;
    when one comes back, the sends so far are checked again as they ended."""
    now = [100.0]
    limiter = LocalDomainLimiter("unit", parse_rate("2/s"), clock=lambda: now[0])
    first = [await limiter.reserve(f"m{n}", 0.1) for n in range(6)]
    assert [wait for wait, _ in first] == [0, 0, 1.0, 1.0, 2.0, 2.0]
    assert [bool(token) for _, token in first] == [True, True, False, False, False, False]  # 2 to send now
    assert await limiter.reserve("m4", 0.1) == (2.0, "")  # asking again early keeps the reservation
    now[0] = 100.3
    await limiter.done(first[0][1])  # m0's send ended late: it counts from 100.3
    now[0] = 101.0
    wait, token = await limiter.reserve("m2", 0.1)  # its slot has come
    assert wait == 0
    assert token
    # m3's slot has come too, but m0 ended at 100.3: the sends allow the next one at 101.3 only
    assert await limiter.reserve("m3", 0.1) == (pytest.approx(0.3), "")
    assert await limiter.reserve("new", 0.1) == (2.0, "")  # behind m4 and m5, not before them
    now[0] = 101.3
    wait, token = await limiter.reserve("m3", 0.1)
    assert wait == 0
    assert token


def test_without_domain_limits_there_is_no_link_and_with_them_it_sits_between_dkim_and_verp() -> None:
    plain = load_settings(sender="memory://?from=a@example.com")
    assert find_link(build_sender(plain).sender, DomainLimitStep) is None
    limited = load_settings(
        sender="memory://?from=a@example.com",
        domain_limits={"google": {"domains": ["gmail.com"], "rate": "1/s"}},
        bounces={"domain": "bounces.example.com"},
    )
    chain = [type(link).__name__ for link in links(build_sender(limited).sender)]
    assert chain == ["DomainLimitStep", "VERPStep", "AccountLimit", "MemorySender"]


async def test_a_mail_to_two_groups_goes_as_two_transactions(server: SMTPTestServer) -> None:
    settings = settings_for(
        server, {"google": {"domains": ["gmail.com", "googlemail.com"], "rate": "10/s"}, "default": {}}
    )
    mq = MailQueue.from_settings(settings)
    worker = Worker.from_settings(settings, mq)
    async with mq, worker.sender:
        task = asyncio.create_task(worker.run())
        mail_id = await submit(mq, "ann@gmail.com", "bob@example.org", "cy@sub.googlemail.com")
        await wait_sent(mq, [mail_id], 10)
        worker.stop()
        await task
        record = await mq.status(mail_id)
    assert record is not None
    assert [r.state for r in record.recipients] == [RecipientState.SENT] * 3
    assert record.attempts == 1
    assert sorted(m.recipients for m in server.messages) == [
        ("ann@gmail.com", "cy@sub.googlemail.com"),
        ("bob@example.org",),
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "backends",
    ["memory", "embedded", pytest.param("mariadb+rabbitmq", marks=[pytest.mark.mysql, pytest.mark.rabbitmq])],
)
async def test_a_deferred_group_is_not_a_failed_attempt_and_its_mail_comes_back(
    server: SMTPTestServer, backends: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    top = {}
    queue_name = ""
    if backends == "embedded":  # the default: SQLite store, sql queue
        top = {
            "store": f"sqlite+aiosqlite:///{tmp_path}/mq.db",
            "queue": "sql://?poll=0.05",
            "attachments": f"file://{tmp_path}/attachments",
        }
    elif backends == "mariadb+rabbitmq":
        queue_name = f"mq_domains_{secrets.token_hex(4)}"
        rabbitmq = request.getfixturevalue("rabbitmq_url")
        top = {
            "store": request.getfixturevalue("mysql_url"),
            "queue": f"{rabbitmq}?queue={queue_name}&exchange={queue_name}",
            "attachments": "sql://",
        }
    try:
        await _deferral_is_no_failed_attempt(server, top)
    finally:
        if queue_name:
            from brokers import delete_amqp_objects

            await delete_amqp_objects(request.getfixturevalue("rabbitmq_url"), queue_name)


async def _deferral_is_no_failed_attempt(server: SMTPTestServer, top: dict[str, Any]) -> None:
    # max_attempts=1: a failed attempt would end the mail; a 30 s backoff would outlast the test
    settings = settings_for(
        server,
        {"slow": {"domains": ["slow.com"], "rate": "1/2s"}},
        top,
        max_attempts=1,
        retry_base=30,
        retry_max=60,
    )
    mq = MailQueue.from_settings(settings)
    worker = Worker.from_settings(settings, mq)
    deferred_before = sample("mailqueue_domain_deferred_total", "slow")
    async with mq, worker.sender:
        task = asyncio.create_task(worker.run())
        first = await submit(mq, "a@slow.com")
        await wait_sent(mq, [first], 5)
        both = await submit(mq, "b@slow.com", "c@fast.com")
        only_slow = await submit(mq, "d@slow.com")
        await asyncio.sleep(0.5)
        waiting = await mq.status(both)
        took = await wait_sent(mq, [both, only_slow], 10)
        worker.stop()
        await task
        records = {i: await mq.status(i) for i in (first, both, only_slow)}
    assert waiting is not None
    assert waiting.status is Status.RETRYING
    by_address = {r.address: r for r in waiting.recipients}
    assert by_address["c@fast.com"].state is RecipientState.SENT  # not held back by slow.com
    assert by_address["b@slow.com"].state is RecipientState.PENDING
    assert by_address["b@slow.com"].code == 451
    assert "domain limit slow: next slot in" in by_address["b@slow.com"].reply
    assert waiting.attempts == 1  # the attempt that sent to fast.com
    assert waiting.next_attempt_at is not None
    # max_attempts=1, yet nothing died: waiting for a slot is not a failed attempt
    assert {r.status for r in records.values() if r is not None} == {Status.SENT}
    assert [h.outcome for h in records[both].history] == ["partial", "sent"]  # type: ignore[union-attr]
    assert [h.outcome for h in records[only_slow].history] == ["sent"]  # type: ignore[union-attr]
    assert sample("mailqueue_domain_deferred_total", "slow") - deferred_before >= 2
    assert worker.counts["slot_wait"] >= 2
    assert 2.0 <= took < 8  # b and d each waited for a slot of 1/2s, and not for a backoff
    arrivals = [m.recipients for m in server.messages]
    assert sorted(arrivals) == [("a@slow.com",), ("b@slow.com",), ("c@fast.com",), ("d@slow.com",)]


async def test_a_mail_that_would_wait_beyond_max_age_ends_dead(server: SMTPTestServer) -> None:
    settings = settings_for(server, {"slow": {"domains": ["slow.com"], "rate": "1/h"}}, max_age=60)
    mq = MailQueue.from_settings(settings)
    worker = Worker.from_settings(settings, mq)
    async with mq, worker.sender:
        task = asyncio.create_task(worker.run())
        first = await submit(mq, "a@slow.com")
        await wait_sent(mq, [first], 5)
        late = await submit(mq, "b@slow.com")
        for _ in range(250):
            record = await mq.status(late)
            if record is not None and record.status.final:
                break
            await asyncio.sleep(0.02)
        worker.stop()
        await task
        sent = await mq.status(first)
    assert sent is not None
    assert sent.status is Status.SENT
    assert record is not None
    assert record.status is Status.DEAD  # its slot is an hour away, its max_age a minute
    assert "domain limit slow: next slot in" in record.last_error
    assert [m.recipients for m in server.messages] == [("a@slow.com",)]


async def test_a_groups_421_slows_that_group_only(server: SMTPTestServer) -> None:
    server.faults.append(Fault("rcpt", address="ann@gmail.com", reply="421 4.7.28 unusual rate, try later"))
    settings = settings_for(
        server,
        {
            "google": {"domains": ["gmail.com"], "rate": "50/s"},
            "other": {"domains": ["other.org"], "rate": "50/s"},
        },
        rate="100/s",
        throttle={"pause": 0.05, "increase_after": 1000},
    )
    mq = MailQueue.from_settings(settings)
    worker = Worker.from_settings(settings, mq)
    step = find_link(worker.sender, DomainLimitStep)
    account = find_link(worker.sender, AccountLimit)
    assert step is not None
    assert account is not None
    google, other = step.groups["google"], step.groups["other"]
    throttled_before = sample("mailqueue_domain_throttled_total", "google")
    async with mq, worker.sender:
        task = asyncio.create_task(worker.run())
        ids = [await submit(mq, "ann@gmail.com", "bob@fast.com")]
        await wait_sent(mq, ids, 10)
        ids.append(await submit(mq, "zed@other.org"))
        await wait_sent(mq, ids, 10)
        worker.stop()
        await task
    print(f"after a 421 from gmail.com: google factor {google.factor}, other {other.factor}")
    assert google.factor == 0.5  # slowed down
    assert sample("mailqueue_domain_rate_per_second", "google") == 25.0
    assert other.factor == 1.0  # the other group is not
    assert sample("mailqueue_domain_rate_per_second", "other") == 50.0
    assert account.factor == 1.0  # nor the account
    assert worker.limiter.factor == 1.0  # (the worker's pace, with one sender)
    assert sample("mailqueue_domain_throttled_total", "google") - throttled_before == 1
    assert sorted(r for m in server.messages for r in m.recipients) == [
        "ann@gmail.com",
        "bob@fast.com",
        "zed@other.org",
    ]


async def run_mails(settings: Settings, batches: dict[str, int], longest: float) -> dict[str, float]:
    """Submit ``count`` mails to each domain of ``batches`` and run a worker; seconds until
    each domain's mails are all sent."""
    mq = MailQueue.from_settings(settings)
    worker = Worker.from_settings(settings, mq)
    async with mq, worker.sender:
        ids = {
            domain: [await submit(mq, f"u{n}@{domain}") for n in range(count)]
            for domain, count in batches.items()
        }
        task = asyncio.create_task(worker.run())
        took = dict(
            zip(ids, await asyncio.gather(*(wait_sent(mq, i, longest) for i in ids.values())), strict=True)
        )
        worker.stop()
        await task
        records = [await mq.status(i) for group in ids.values() for i in group]
    assert all(r is not None and r.attempts == 1 for r in records)  # deferrals were no attempts
    return took


@pytest.mark.slow
async def test_a_throttled_domain_does_not_hold_back_the_others(server: SMTPTestServer) -> None:
    """200 mails to a domain limited to 20/s and 200 to another: the others go at full speed."""
    groups = {"slow": {"domains": ["slow.com"], "rate": "20/s"}, "fast": {"domains": ["fast.com"]}}
    alone = await run_mails(settings_for(server, groups), {"fast.com": 200}, 20)
    server.messages.clear()
    arrivals: list[float] = []

    class Stamped(list[ReceivedMessage]):
        def append(self, item: ReceivedMessage) -> None:
            if item.recipients[0].endswith("@slow.com"):
                arrivals.append(time.monotonic())
            super().append(item)

    server.messages = Stamped()
    mixed = await run_mails(
        settings_for(server, groups, max_attempts=1), {"slow.com": 200, "fast.com": 200}, 30
    )
    span = max(arrivals) - min(arrivals)
    ordered = sorted(arrivals)
    densest = max(bisect.bisect_right(ordered, t + 1.0) - i for i, t in enumerate(ordered))
    print(
        f"most slow.com arrivals in any 1 s: {densest}; "
        f"200 to fast.com alone: {alone['fast.com']:.2f} s; with 200 to slow.com (20/s) at concurrency 8: "
        f"fast.com {mixed['fast.com']:.2f} s, slow.com {mixed['slow.com']:.2f} s (arrivals over {span:.2f} s)"
    )
    received = collections.Counter(r for m in server.messages for r in m.recipients)
    assert len(received) == 400
    assert set(received.values()) == {1}  # each delivered exactly once
    assert span >= (200 - 20) / 20 - 0.5  # slow.com kept to 20/s
    assert densest <= 20  # as the server counts: by arrival (a slot counts from when its send ended)
    assert mixed["fast.com"] < mixed["slow.com"] / 3  # not behind the slow ones
    assert mixed["fast.com"] < alone["fast.com"] * 2 + 1.0  # near full speed


@pytest.mark.redis
async def test_workers_share_a_groups_limit_through_redis(server: SMTPTestServer, redis_url: str) -> None:
    """Two workers with their own chains, one group limit of 10/s between them."""
    name = f"test-{secrets.token_hex(4)}"
    settings = settings_for(
        server, {name: {"domains": ["shared.com"], "rate": "10/s"}}, rate_store=redis_url, concurrency=4
    )
    mq = MailQueue.from_settings(settings)
    workers = [Worker.from_settings(settings, mq) for _ in range(2)]
    steps = [find_link(w.sender, DomainLimitStep) for w in workers]
    assert steps[0] is not None
    assert steps[1] is not None
    arrivals: list[float] = []

    class Stamped(list[ReceivedMessage]):
        def append(self, item: ReceivedMessage) -> None:
            arrivals.append(time.monotonic())
            super().append(item)

    server.messages = Stamped()
    try:
        async with mq, workers[0].sender, workers[1].sender:
            ids = [await submit(mq, f"u{n}@shared.com") for n in range(30)]
            tasks = [asyncio.create_task(w.run()) for w in workers]
            await wait_sent(mq, ids, 20)
            for w in workers:
                w.stop()
            await asyncio.gather(*tasks)
            # one worker's throttle slows the other's view of the group too
            await steps[0].groups[name].limiter.throttled(0.0)
            wait, _ = await steps[1].groups[name].limiter.reserve("after-throttle", 0.0)
    finally:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(redis_url)
        async for key in client.scan_iter(f"mq:rl:domain:{name}:*"):
            await client.delete(key)
        await client.aclose()
    span = max(arrivals) - min(arrivals)
    ordered = sorted(arrivals)
    densest = max(bisect.bisect_right(ordered, t + 1.0) - i for i, t in enumerate(ordered))
    print(
        f"30 mails to one group at 10/s by two workers: {span:.2f} s, most in any 1 s {densest}; "
        f"sent by each {[w.counts['sent'] for w in workers]}"
    )
    assert densest <= 10
    assert all(w.counts["sent"] > 0 for w in workers)  # both sent
    assert span >= 1.8  # 10 at once, then 10/s for both together (not 10/s each)
    assert wait > 0  # the factor halved in Redis: the slots of the last second are used up


@pytest.mark.redis
async def test_reservations_are_shared_and_spread_through_redis(redis_url: str) -> None:
    import redis.asyncio as aioredis

    from mailqueue.sending.redis_limits import RedisRateLimiter

    name = f"domain:test-{secrets.token_hex(4)}"
    one, two = (RedisRateLimiter(redis_url, name, parse_rate("2/s"), account_metrics=False) for _ in range(2))
    client = aioredis.Redis.from_url(redis_url)
    try:
        first = [await (one if n % 2 else two).reserve(f"m{n}", 0.1) for n in range(6)]
        early = await two.reserve("m4", 0.1)  # asked of the other process: the same reservation
        ttl = await client.pttl(f"mq:rl:{name}:2/1")
        await one.done(first[1][1])
        sent = await client.zrange(f"mq:rl:{name}:2/1:sent", 0, -1)
    finally:
        async for key in client.scan_iter(f"mq:rl:{name}:*"):
            await client.delete(key)
        await client.aclose()
        await one.close()
        await two.close()
    assert [bool(token) for _, token in first] == [True, True, False, False, False, False]
    assert [round(wait) for wait, _ in first] == [0, 0, 1, 1, 2, 2]  # one slot each, one after another
    assert 1.5 < early[0] <= 2.0
    assert early[1] == ""
    assert ttl > 2500  # kept until the last reservation's window is over
    assert sorted(s.decode() for s in sent) == sorted(token for _, token in first[:2])  # sends only


async def test_a_server_refusal_beside_a_deferral_is_a_failed_attempt(server: SMTPTestServer) -> None:
    server.faults.append(Fault("rcpt", address="b@other.org", reply="450 4.2.0 mailbox busy", times=None))
    settings = settings_for(server, {"slow": {"domains": ["slow.com"], "rate": "1/h"}}, max_attempts=1)
    mq = MailQueue.from_settings(settings)
    worker = Worker.from_settings(settings, mq)
    async with mq, worker.sender:
        task = asyncio.create_task(worker.run())
        first = await submit(mq, "a@slow.com")
        await wait_sent(mq, [first], 5)
        mixed = await submit(mq, "c@slow.com", "b@other.org")
        for _ in range(250):
            record = await mq.status(mixed)
            if record is not None and record.status.final:
                break
            await asyncio.sleep(0.02)
        worker.stop()
        await task
    assert record is not None
    assert record.status is Status.DEAD  # b's 450 was a real refusal: the one attempt allowed is spent
    assert record.attempts == 1


async def test_a_groups_throttle_neither_fails_over_nor_opens_the_accounts_circuit(
    server: SMTPTestServer,
) -> None:
    from mailqueue.sending.accounts import AccountRouter

    server.faults.append(Fault("rcpt", address="ann@gmail.com", reply="421 4.7.28 unusual rate", times=1))
    async with SMTPTestServer() as backup:
        accounts = [
            {"url": server.url(from_address="a@example.com"), "name": "primary"},
            {"url": backup.url(from_address="a@example.com"), "name": "backup"},
        ]
        settings = settings_for(
            server,
            {"google": {"domains": ["gmail.com"], "rate": "50/s"}},
            {"senders": accounts},
            throttle={"pause": 0.05, "breaker_failures": 1},
        )
        mq = MailQueue.from_settings(settings)
        worker = Worker.from_settings(settings, mq)
        router = find_link(worker.sender, AccountRouter)
        assert router is not None
        async with mq, worker.sender:
            task = asyncio.create_task(worker.run())
            mail_id = await submit(mq, "ann@gmail.com")
            await wait_sent(mq, [mail_id], 10)
            worker.stop()
            await task
        assert backup.messages == []  # not moved to the other account
    primary = router.accounts[0]
    assert primary.breaker.state.name == "CLOSED"  # one account failure would have opened it
    assert primary.factor == 1.0
    assert [m.recipients for m in server.messages] == [("ann@gmail.com",)]


async def test_a_step_without_groups_for_the_recipients_passes_the_message_on(server: SMTPTestServer) -> None:
    settings = settings_for(server, {"google": {"domains": ["gmail.com"], "rate": "1/s"}})
    step = find_link(build_sender(settings).sender, DomainLimitStep)
    assert step is not None
    assert step.group_of("x@GMAIL.com") == "google"
    assert step.group_of("x@mail.gmail.com") == "google"
    assert step.group_of("x@notgmail.com") is None
    message = OutgoingMessage("m-pass", b"Subject: s\r\n\r\nb\r\n", "a@example.com", ["x@a.org", "y@b.org"])
    async with step:
        result = await step.send(message)
        again = await step.send(OutgoingMessage("m-2", message.data, "a@example.com", ["z@gmail.com"]))
        deferred = await step.send(OutgoingMessage("m-3", message.data, "a@example.com", ["w@gmail.com"]))
    assert result.accepted == ["x@a.org", "y@b.org"]
    assert again.accepted == ["z@gmail.com"]
    assert [m.recipients for m in server.messages] == [("x@a.org", "y@b.org"), ("z@gmail.com",)]
    reply = deferred.replies["w@gmail.com"]
    assert reply.code == 451
    assert reply.retry_after is not None
    assert 0.5 < reply.retry_after <= 1.0
