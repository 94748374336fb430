"""health.check: the one readiness check behind the worker's and the API's /health/ready."""

from __future__ import annotations

import asyncio

import pytest

from mailqueue import health
from mailqueue.backends.memory import MemoryQueue
from mailqueue.errors import StoreError
from mailqueue.stores.memory import MemoryStore


class HangingQueue(MemoryQueue):
    """A queue whose broker does not answer."""

    async def depth(self) -> int:
        await asyncio.sleep(3600)
        return 0


class BrokenQueue(MemoryQueue):
    """A queue with a bug: not an outage, so it is not hidden as one."""

    async def depth(self) -> int:
        raise RuntimeError("bug")


async def test_everything_answers() -> None:
    async with MemoryStore() as store, MemoryQueue() as queue:
        found = await health.check(store, queue)
    assert found.ok
    assert found.checks == {"store": "ok", "queue": "ok"}
    assert found.errors == {}


async def test_each_failure_is_named_with_its_reason() -> None:
    store = MemoryStore()  # not open: ping raises StoreError
    async with HangingQueue() as queue:
        found = await health.check(store, queue, within=0.1)
    assert not found.ok
    assert found.checks == {"store": "unavailable", "queue": "unavailable"}
    assert isinstance(found.errors["store"], StoreError)
    assert isinstance(found.errors["queue"], TimeoutError)


async def test_the_checks_run_together_within_one_timeout() -> None:
    class HangingStore(MemoryStore):
        async def ping(self) -> None:
            await asyncio.sleep(3600)

    loop = asyncio.get_running_loop()
    started = loop.time()
    async with HangingStore() as store, HangingQueue() as queue:
        found = await health.check(store, queue, within=0.3)
    assert loop.time() - started < 0.55
    assert found.checks == {"store": "unavailable", "queue": "unavailable"}


async def test_an_unexpected_error_is_raised() -> None:
    async with MemoryStore() as store, BrokenQueue() as queue:
        with pytest.raises(RuntimeError, match="bug"):
            await health.check(store, queue)
