"""Running programs from tests: a clean environment, a non-blocking run, and
``mailqueue`` service processes (started, polled, stopped)."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import inspect
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailqueue import Mail, MailQueue, Recipient
from mailqueue.errors import QueueError
from mailqueue.testing.smtpd import SMTPTestServer

#: Generous limits for things that normally take a fraction of a second.
WITHIN = 30.0


def clean_env(settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """The outer environment without any MAILQUEUE_* variable, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILQUEUE_")}
    env.update(settings or {})
    return env


async def run_program(*argv: str, cwd: Path, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Run a program to its end (60 s at most) without blocking the event loop.

    Returns:
        exit code, stdout, stderr.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=clean_env(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Process:
    """A running ``mailqueue`` command and where its output goes."""

    proc: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def output(self) -> str:
        return await asyncio.to_thread(self.log.read_text, "utf-8", "replace")

    async def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n--- {self.log.name} ---\n{await self.output()}", pytrace=False)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig``: the process shuts down gracefully and exits 0."""
        self.proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.proc.wait(), WITHIN)
        except TimeoutError:
            await self.fail(f"pid {self.pid} did not exit within {WITHIN} s of signal {sig}")
        if code != 0:
            await self.fail(f"pid {self.pid} exited with {code} after signal {sig}")


@contextlib.asynccontextmanager
async def mailqueue(
    cwd: Path, *args: str, env: Mapping[str, str] | None = None, log: Path
) -> AsyncIterator[Process]:
    """``python -m mailqueue ARGS`` in ``cwd``, its output in ``log``; killed if still running at the end."""
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailqueue", *args, cwd=cwd, env=clean_env(env), stdout=out, stderr=out
        )
    try:
        yield Process(proc, log)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def wait_ready(service: Process, base_url: str) -> None:
    """Poll ``/health/ready`` until it answers 200."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WITHIN
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        while True:
            if service.proc.returncode is not None:
                await service.fail(f"the service exited with {service.proc.returncode} before it was ready")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/health/ready")).status_code == 200:
                    return
            if loop.time() > deadline:
                await service.fail("the service was not ready in time")
            await asyncio.sleep(0.05)


async def eventually(
    condition: Callable[[], Any],
    what: str | Callable[[], str] = "the condition",
    service: Process | None = None,
    *,
    within: float = WITHIN,
    every: float = 0.05,
    retry: tuple[type[BaseException], ...] = (),
) -> Any:
    """Call ``condition()`` (sync or async) every ``every`` seconds until it returns something
    true, and return that; after ``within`` seconds fail the test (with ``service``'s output).

    ``what`` names what is awaited; a function is called at the deadline (to say what was last seen).

    An exception of a type in ``retry`` counts as "not yet"; past the deadline it is raised.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
        except retry:
            if loop.time() > deadline:
                raise
        else:
            if result:
                return result
            if loop.time() > deadline:
                awaited = what if isinstance(what, str) else what()
                if service is not None:
                    await service.fail(f"timed out waiting for {awaited}")
                pytest.fail(f"timed out waiting for {awaited}")
        await asyncio.sleep(every)


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


# --- mail through real worker processes (test_broker_processes.py, test_faults.py) ---------

#: Concurrency of the workers that settings_env configures.
CONCURRENCY = 4


def settings_env(store: str, queue: str, server: SMTPTestServer, **extra: str) -> dict[str, str]:
    env = {
        "MAILQUEUE_STORE": store,
        "MAILQUEUE_QUEUE": queue,
        "MAILQUEUE_ATTACHMENTS": "sql://",
        "MAILQUEUE_SENDER": server.url(from_address="noreply@example.com", timeout="5"),
        "MAILQUEUE_WORKER__CONCURRENCY": str(CONCURRENCY),
        "MAILQUEUE_WORKER__SHUTDOWN_TIMEOUT": "10",
        "MAILQUEUE_WORKER__RETRY_BASE": "0.2",
        "MAILQUEUE_WORKER__RETRY_MAX": "1",
        # a copy re-read after a crash (Kafka cannot tell) waits this long
        "MAILQUEUE_WORKER__SENDING_LEASE": "3",
        "MAILQUEUE_LOG_LEVEL": "INFO",
    }
    env.update({f"MAILQUEUE_{k.upper()}": v for k, v in extra.items()})
    return env


def mails(count: int, tag: str) -> list[Mail]:
    return [
        Mail(
            subject=f"{tag} {n}",
            html=f"<p>{tag} {n}</p>",
            sender_name="Broker test",
            to=[Recipient(address=f"{tag}{n}@example.com", name=f"User {n}")],
        )
        for n in range(count)
    ]


async def submit_until_accepted(mq: MailQueue, mail: Mail, within: float = 60) -> str:
    """Submit as a client does while the broker comes back: a refused submit
    (QueueError) is repeated with its idempotency key, which publishes the same
    record rather than making a second one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return (await mq.submit(mail, idempotency_key=mail.id)).id
        except QueueError:
            if loop.time() > deadline:
                pytest.fail("publishing never worked again after the restart")
            await asyncio.sleep(0.5)


def worker_counts(log: str) -> dict[str, int]:
    """The ``counts=`` a worker logs when it stops."""
    match = re.search(r"worker stopped counts=(\{.*\})", log)
    assert match, log[-2000:]
    return {k: int(v) for k, v in re.findall(r"'(\w+)': (\d+)", match.group(1))}
