"""Rate limits and throttle state shared through the machine's Redis.

Two worker processes under one ``5/s`` limit together, a throttle reply seen
by one limiter slowing the other, and Redis down (fail closed).
"""

from __future__ import annotations

import asyncio
import collections
import email
import email.policy
import json
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import service_missing
from proc_helpers import free_port
from prometheus_client import REGISTRY

from mailqueue import Mail, MailQueue, Recipient, Status
from mailqueue.sending.limits import parse_rate
from mailqueue.sending.throttle import AIMDParams
from mailqueue.testing.smtpd import ReceivedMessage, SMTPTestServer

pytestmark = pytest.mark.redis


def most_in_window(times: list[float], width: float) -> int:
    """The largest number of ``times`` inside any window ``[t, t + width)``."""
    times = sorted(times)
    return max((sum(1 for u in times[i:] if u < t + width) for i, t in enumerate(times)), default=0)


@pytest.mark.slow
async def test_two_limiters_share_one_rate_and_one_throttle(redis_url: str) -> None:
    from mailqueue.sending.redis_limits import RedisRateLimiter

    name = f"test-{secrets.token_hex(4)}"
    params = AIMDParams(decrease=0.5, floor=0.2, increase=0.5, increase_after=1, pause=0.3)
    first = RedisRateLimiter(redis_url, name, parse_rate("5/s"), params)
    second = RedisRateLimiter(redis_url, name, parse_rate("5/s"), params)
    try:
        stamps: list[float] = []

        async def take(limiter: RedisRateLimiter) -> None:
            await limiter.acquire()
            stamps.append(time.monotonic())

        started = time.monotonic()
        await asyncio.gather(*(take(first if n % 2 else second) for n in range(12)))
        took = time.monotonic() - started
        print(f"12 sends through two limiters at 5/s took {took:.2f} s")
        assert took >= 2.0  # 5 + 5 + 2: two full windows had to pass
        assert most_in_window(stamps, 0.98) <= 5

        # a throttle reply seen by the first slows and pauses the second
        await first.throttled(None)
        assert first.factor == 0.5
        paused_at = time.monotonic()
        await second.acquire()
        assert time.monotonic() - paused_at >= 0.25
        await second.succeeded()  # increase_after=1: one clean send gives 0.5 back
        assert second.factor == 1.0
        assert REGISTRY.get_sample_value("mailqueue_account_rate_per_second", {"account": name}) == 5.0
    finally:
        await first.close()
        await second.close()


async def test_redis_down_fails_closed() -> None:
    from mailqueue.sending.redis_limits import RedisRateLimiter

    before = REGISTRY.get_sample_value("mailqueue_rate_store_errors_total") or 0.0
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", "test-down", parse_rate("5/s"))
    try:
        with pytest.raises(TimeoutError):
            # never allowed to send while the shared count cannot be read
            await asyncio.wait_for(limiter.acquire(), 1.2)
    finally:
        await limiter.close()
    errors = (REGISTRY.get_sample_value("mailqueue_rate_store_errors_total") or 0.0) - before
    print(f"rate store errors counted while Redis was down: {errors:g}")
    assert errors >= 2  # asked, waited, asked again


@pytest.mark.slow
@pytest.mark.mysql
async def test_two_worker_processes_stay_under_the_shared_rate(mysql_url: str, redis_url: str) -> None:
    count = 20
    name = f"test-{secrets.token_hex(4)}"
    async with SMTPTestServer() as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILQUEUE_")}
        env.update(
            MAILQUEUE_STORE=mysql_url,
            MAILQUEUE_QUEUE="sql://?poll=0.05&lease=5",
            MAILQUEUE_ATTACHMENTS="sql://",
            MAILQUEUE_SENDERS=json.dumps(
                [{"url": server.url(from_address="noreply@example.com", timeout="5"), "name": name}]
            ),
            MAILQUEUE_WORKER__RATE="5/s",
            MAILQUEUE_WORKER__RATE_STORE=redis_url,
            MAILQUEUE_WORKER__CONCURRENCY="4",
            MAILQUEUE_LOG_LEVEL="WARNING",
        )
        async with MailQueue.from_urls(store=mysql_url, queue="sql://", attachments="sql://") as mq:
            ids = [
                (
                    await mq.submit(
                        Mail(subject=f"m{n}", html=f"<p>{n}</p>", to=[Recipient(address=f"u{n}@example.com")])
                    )
                ).id
                for n in range(count)
            ]
            workers = [
                await asyncio.create_subprocess_exec(sys.executable, "-m", "mailqueue", "worker", env=env)
                for _ in range(2)
            ]
            arrivals: list[float] = []

            class Stamped(list[ReceivedMessage]):
                """Takes the time of each arrival as the server stores the message."""

                def append(self, item: ReceivedMessage) -> None:
                    arrivals.append(time.monotonic())
                    super().append(item)

            server.messages = Stamped()
            try:
                deadline = time.monotonic() + 40
                while len(arrivals) < count and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
            finally:
                for proc in workers:
                    proc.send_signal(signal.SIGTERM)
                codes = [await asyncio.wait_for(proc.wait(), 30) for proc in workers]
            statuses = collections.Counter([(await mq.status(i)).status for i in ids])  # type: ignore[union-attr]
        senders = collections.Counter(
            email.message_from_bytes(m.data, policy=email.policy.default)["Message-ID"]
            for m in server.messages
        )
    span = arrivals[-1] - arrivals[0]
    exact = most_in_window(arrivals, 1.0)
    ordered = sorted(arrivals)
    gap = min(b - a for a, b in zip(ordered, ordered[5:], strict=False))
    print(
        f"{count} mails by 2 processes at 5/s: span {span:.2f} s, "
        f"most in any 1.0 s window {exact}, in any 0.95 s window {most_in_window(arrivals, 0.95)}, "
        f"shortest time between arrivals 1 and 6 of a run {gap:.3f} s"
    )
    assert codes == [0, 0]
    assert statuses == {Status.SENT: count}
    assert set(senders.values()) == {1}
    assert span >= (count - 5) / 5 - 0.1  # 20 mails at 5/s: at least three more seconds after the first five
    assert exact <= 5  # as the server counts: by arrival


@pytest.mark.slow
async def test_mail_waits_while_redis_is_down_and_goes_once_it_is_back(tmp_path: Path) -> None:
    from mailqueue.backends.smtp import SMTPSender
    from mailqueue.protocols import OutgoingMessage
    from mailqueue.sending.account_limit import AccountLimit
    from mailqueue.sending.accounts import Account, AccountRouter
    from mailqueue.sending.redis_limits import RedisRateLimiter
    from mailqueue.sending.throttle import CircuitBreaker

    if shutil.which("redis-server") is None:
        service_missing("the redis-server binary")
    port = free_port()
    async with SMTPTestServer() as server:
        account = Account(
            "test-outage",
            AccountLimit(
                SMTPSender.from_url(server.url(from_address="a@example.com")),
                "test-outage",
                RedisRateLimiter(f"redis://127.0.0.1:{port}/0", "test-outage", parse_rate("5/s")),
            ),
            CircuitBreaker("test-outage"),
        )
        message = OutgoingMessage(
            mail_id="m1",
            data=b"Subject: x\r\n\r\nx\r\n",
            envelope_from="a@example.com",
            recipients=["u@x.org"],
        )
        async with AccountRouter([account]) as sender:
            sending = asyncio.create_task(sender.send(message))
            await asyncio.sleep(1.0)
            assert not sending.done()  # fail closed: nothing sent without the shared count
            assert server.messages == []
            argv = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
            redis_proc = await asyncio.create_subprocess_exec(
                "redis-server", *argv, stdout=asyncio.subprocess.DEVNULL
            )
            try:
                started = time.monotonic()
                result = await asyncio.wait_for(sending, 15)
                print(f"sent {time.monotonic() - started:.2f} s after Redis came up")
            finally:
                redis_proc.terminate()
                await redis_proc.wait()
    assert result.accepted == ["u@x.org"]
    assert len(server.messages) == 1
