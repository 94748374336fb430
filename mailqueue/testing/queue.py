"""Conformance suite for :class:`~mailqueue.protocols.Queue` backends.

Subclass :class:`QueueConformance` in a test module and provide the fixtures::

    class TestMyQueue(QueueConformance):
        @pytest.fixture
        async def queue(self) -> AsyncIterator[Queue]:
            async with MyQueue(queue=unique_name()) as q:   # opened, empty
                yield q

        @pytest.fixture
        def queue_factory(self, ...) -> QueueFactory:      # needed if capabilities.shared
            ...  # an async callable returning another OPENED instance on the same
                 # queue as ``queue`` (as another process would have); the fixture
                 # closes whatever it made at teardown (close is idempotent).

        @pytest.fixture
        def dead_letters(self, ...) -> DeadLetters:        # optional
            ...  # an async callable returning the (key, body, reason) of every
                 # message dead-lettered on that queue, where the backend keeps them.

        @pytest.fixture
        def backend_url(self, ...) -> str:                 # optional
            ...  # a URL that ``type(queue).from_url(url, context=backend_context)``
                 # accepts; override ``backend_context`` too if the backend needs one.

Each test needs its own empty queue (the suite's keys are under 32
characters and unique). Skips are decided by ``queue.capabilities`` only: ``delay`` (retry and
publish delays are honoured), ``shared`` (several instances on one queue;
then ``queue_factory`` is required), ``depth``, ``ordered``.

Guarantees tested, beyond the Protocol docstrings:

- key and body come back exactly (300 KB, non-UTF-8 bytes included);
- order (if ``capabilities.ordered``): messages published one after another
  without delay by one publisher are delivered in publish order to a single
  consumer that uses ``prefetch=1`` and settles each before asking for the
  next. Nothing is promised across consumers, after redelivery or for
  delayed messages;
- ``consume(prefetch=n)`` never has more than ``n`` unsettled deliveries out,
  and hands out the next one when one is settled;
- ``ack`` removes, ``release`` gives back now (``redelivered=True``),
  ``retry(d)`` gives back no earlier than ``d`` seconds later, ``dead`` never
  comes back; settling a second time is harmless and changes nothing;
- ``aclose()`` on the iterator stops it; deliveries it handed out can still
  be settled, and messages it had fetched but not handed out are consumable
  at once by another consumer, even after waits on it were cancelled;
- ``close()`` of the queue ends its consumers and gives unsettled deliveries
  back (never dead-letters them); settling them afterwards is harmless;
- settling is once, even when settles race: of ``ack``, ``release``,
  ``retry`` and ``dead`` called at once on one delivery, the first one
  started decides, the others do nothing;
- (with ``backend_url``) ``from_url`` refuses an unknown URL option with a
  :class:`~mailqueue.errors.ConfigurationError` that names it and lists the
  valid options (see :mod:`mailqueue.testing.options`);
  ``publish`` on a closed queue raises :class:`~mailqueue.errors.QueueError`;
- ``depth()`` counts waiting messages, ready or delayed, not those handed
  out and unsettled;
- four concurrent consumers (four instances when shared) receive 200
  messages exactly once when they ack each.

Class attributes tune the waits for slow backends: ``timeout`` (how long an
expected delivery may take), ``quiet`` (how long to watch for a delivery that
must not come), ``delay`` (the delay used in delay tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import ClassVar, Self

import pytest

from mailqueue.errors import QueueError
from mailqueue.protocols import BackendContext, Delivery, Queue
from mailqueue.testing.options import URLOptionsCheck

__all__ = ["DeadLetters", "QueueConformance", "QueueFactory", "Reader", "aclose"]

#: Returns another opened instance on the same queue as the ``queue`` fixture.
QueueFactory = Callable[[], Awaitable[Queue]]
#: Returns ``(key, body, reason)`` of every message dead-lettered on the queue.
DeadLetters = Callable[[], Awaitable[list[tuple[str, bytes, str]]]]


def _key(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


async def _next_or_end(iterator: AsyncIterator[Delivery]) -> Delivery | None:
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return None


class Reader:
    """Pulls from one ``consume()`` iterator without ever cancelling a pending ``__anext__``.

    Waiting for "nothing arrives" leaves the request pending, so the next
    :meth:`next` picks up what it eventually returns: backends whose iterator
    is an async generator (which a cancelled ``__anext__`` would finish) are
    tested fairly.
    """

    def __init__(self, queue: Queue, prefetch: int, timeout: float) -> None:
        self.iterator = queue.consume(prefetch=prefetch)
        self.timeout = timeout
        self._pending: asyncio.Task[Delivery | None] | None = None

    async def _wait(self, within: float) -> tuple[bool, Delivery | None]:
        if self._pending is None:
            self._pending = asyncio.create_task(_next_or_end(self.iterator))
        done, _ = await asyncio.wait({self._pending}, timeout=within)
        if not done:
            return False, None
        result = self._pending.result()
        self._pending = None
        return True, result

    async def next(self) -> Delivery:
        """The next delivery; fail the test if none comes within ``timeout`` or the iterator ends."""
        done, delivery = await self._wait(self.timeout)
        if not done:
            pytest.fail(f"no delivery within {self.timeout} s")
        if delivery is None:
            pytest.fail("the consume iterator ended")
        return delivery

    async def nothing(self, within: float) -> None:
        """Fail the test if a delivery arrives within ``within`` seconds."""
        done, delivery = await self._wait(within)
        if done:
            pytest.fail(f"unexpected delivery {delivery.key!r}" if delivery else "the consume iterator ended")

    async def ended(self) -> None:
        """Fail the test unless the iterator stops within ``timeout``."""
        done, delivery = await self._wait(self.timeout)
        assert done, f"the consume iterator did not stop within {self.timeout} s"
        assert delivery is None, f"got {delivery.key!r} instead of the end of the iterator"

    async def close(self) -> None:
        """Cancel a pending request, then ``aclose()`` the iterator."""
        if self._pending is not None:
            self._pending.cancel()
            await asyncio.wait({self._pending})
            if not self._pending.cancelled():
                self._pending.exception()
            self._pending = None
        await aclose(self.iterator)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def aclose(iterator: AsyncIterator[Delivery]) -> None:
    """Close a ``consume()`` iterator (which must have an ``aclose`` method)."""
    close: Callable[[], Awaitable[object]] | None = getattr(iterator, "aclose", None)
    assert close is not None, "the iterator returned by consume() must have an aclose() method"
    await close()


class QueueConformance(URLOptionsCheck):
    """The contract of :class:`~mailqueue.protocols.Queue`; see the module docstring."""

    timeout: ClassVar[float] = 10.0
    quiet: ClassVar[float] = 0.4
    delay: ClassVar[float] = 0.6

    @pytest.fixture
    def queue_factory(self) -> QueueFactory | None:
        """Default: no second instance (override for shared backends)."""
        return None

    @pytest.fixture
    def dead_letters(self) -> DeadLetters | None:
        """Default: dead letters cannot be inspected (override where the backend keeps them)."""
        return None

    def reader(self, queue: Queue, prefetch: int = 1) -> Reader:
        """A :class:`Reader` on a new ``consume(prefetch=)`` iterator of ``queue``."""
        return Reader(queue, prefetch, self.timeout)

    @staticmethod
    def _factory(queue: Queue, queue_factory: QueueFactory | None) -> QueueFactory:
        if not queue.capabilities.shared:
            pytest.skip("queue is not shared")
        if queue_factory is None:
            pytest.fail("capabilities.shared is True but the test class provides no queue_factory fixture")
        return queue_factory

    # --- bytes and order ----------------------------------------------------

    async def test_round_trip_preserves_key_and_bytes(self, queue: Queue) -> None:
        sent = {
            _key("text"): b"hello, world",
            _key("big"): os.urandom(300 * 1024),
            _key("binary"): bytes(range(256)) + b"\xff\xfe\x00\x80\xc3\x28",
            _key("empty"): b"",
        }
        for key, body in sent.items():
            await queue.publish(key, body)
        received: dict[str, bytes] = {}
        async with self.reader(queue, prefetch=len(sent)) as reader:
            for _ in sent:
                delivery = await reader.next()
                assert delivery.redelivered is False
                received[delivery.key] = delivery.body
                await delivery.ack()
        assert received.keys() == sent.keys()
        for key, body in sent.items():
            assert type(received[key]) is bytes
            assert received[key] == body, f"body of {key!r} changed"

    async def test_immediate_messages_come_in_publish_order(self, queue: Queue) -> None:
        if not queue.capabilities.ordered:
            pytest.skip("queue does not keep publish order")
        keys = [_key(f"m{i}") for i in range(12)]
        for key in keys:
            await queue.publish(key, key.encode())
        got = []
        async with self.reader(queue, prefetch=1) as reader:
            for _ in keys:
                delivery = await reader.next()
                got.append(delivery.key)
                assert delivery.body == delivery.key.encode()
                await delivery.ack()
        assert got == keys

    # --- prefetch and settling ----------------------------------------------

    async def test_prefetch_bounds_unsettled_deliveries(self, queue: Queue) -> None:
        keys = [_key(f"p{i}") for i in range(5)]
        for key in keys:
            await queue.publish(key, b"x")
        async with self.reader(queue, prefetch=2) as reader:
            first, second = await reader.next(), await reader.next()
            await reader.nothing(self.quiet)
            await first.ack()
            third = await reader.next()
            await reader.nothing(self.quiet)
            await second.ack()
            await third.ack()
            fourth, fifth = await reader.next(), await reader.next()
            await fourth.ack()
            await fifth.ack()
            await reader.nothing(self.quiet)
        got = [d.key for d in (first, second, third, fourth, fifth)]
        assert sorted(got) == sorted(keys)

    async def test_ack_removes(self, queue: Queue) -> None:
        await queue.publish(_key("ack"), b"once")
        async with self.reader(queue) as reader:
            delivery = await reader.next()
            await delivery.ack()
            await reader.nothing(self.quiet)
        async with self.reader(queue) as reader:
            await reader.nothing(self.quiet)
        if queue.capabilities.depth:
            assert await queue.depth() == 0

    async def test_release_redelivers_now(self, queue: Queue) -> None:
        key, body = _key("release"), b"\x00again\xff"
        await queue.publish(key, body)
        async with self.reader(queue) as reader:
            first = await reader.next()
            assert first.redelivered is False
            await first.release()
            again = await reader.next()
            assert (again.key, again.body, again.redelivered) == (key, body, True)
            await again.ack()
            await reader.nothing(self.quiet)

    async def test_retry_comes_back_after_delay(self, queue: Queue) -> None:
        key = _key("retry")
        await queue.publish(key, b"later")
        async with self.reader(queue) as reader:
            first = await reader.next()
            started = time.monotonic()
            await first.retry(self.delay)
            again = await reader.next()
            waited = time.monotonic() - started
            assert (again.key, again.body, again.redelivered) == (key, b"later", True)
            if queue.capabilities.delay:
                # 20 ms of slack for clocks with millisecond resolution.
                assert waited >= self.delay - 0.02, f"came back after {waited:.3f} s, before {self.delay} s"
            await again.ack()

    async def test_publish_with_delay(self, queue: Queue) -> None:
        if not queue.capabilities.delay:
            pytest.skip("queue does not honour delays")
        late, now = _key("late"), _key("now")
        started = time.monotonic()
        await queue.publish(late, b"late", delay=self.delay)
        await queue.publish(now, b"now")
        async with self.reader(queue, prefetch=2) as reader:
            first = await reader.next()
            assert first.key == now
            await first.ack()
            second = await reader.next()
            waited = time.monotonic() - started
            assert second.key == late
            assert second.redelivered is False
            assert waited >= self.delay - 0.02, f"delivered after {waited:.3f} s, before {self.delay} s"
            await second.ack()

    async def test_dead_is_never_redelivered(self, queue: Queue, dead_letters: DeadLetters | None) -> None:
        bad, good = _key("dead"), _key("alive")
        await queue.publish(bad, b"\xde\xad")
        await queue.publish(good, b"ok")
        async with self.reader(queue) as reader:
            # in either order where the queue does not keep publish order
            for _ in range(2):
                delivery = await reader.next()
                assert delivery.key in (bad, good)
                if delivery.key == bad:
                    await delivery.dead("550 no such user")
                else:
                    await delivery.ack()
            await reader.nothing(self.quiet)
        if queue.capabilities.depth:
            assert await queue.depth() == 0
        if dead_letters is not None:
            assert await dead_letters() == [(bad, b"\xde\xad", "550 no such user")]

    async def test_settling_twice_is_harmless(self, queue: Queue, dead_letters: DeadLetters | None) -> None:
        acked, released = _key("acked"), _key("released")
        await queue.publish(acked, b"a")
        await queue.publish(released, b"r")
        async with self.reader(queue) as reader:
            # in either order where the queue does not keep publish order
            for _ in range(2):
                delivery = await reader.next()
                assert delivery.key in (acked, released)
                if delivery.key == acked:
                    await delivery.ack()
                    await delivery.ack()
                    await delivery.release()
                    await delivery.retry(0)
                    await delivery.dead("too late")
                else:
                    await delivery.release()
                    await delivery.ack()
                    await delivery.dead("too late")
                    again = await reader.next()
                    assert (again.key, again.redelivered) == (released, True)
                    await again.ack()
                    await again.release()
            await reader.nothing(self.quiet)
        if dead_letters is not None:
            assert await dead_letters() == []

    async def test_racing_settles_settle_once(self, queue: Queue, dead_letters: DeadLetters | None) -> None:
        gone, back = _key("race-ack"), _key("race-release")
        await queue.publish(gone, b"a")
        await queue.publish(back, b"r")
        async with self.reader(queue) as reader:
            # in either order where the queue does not keep publish order
            for _ in range(2):
                delivery = await reader.next()
                assert delivery.key in (gone, back)
                if delivery.key == gone:
                    await asyncio.gather(
                        delivery.ack(), delivery.release(), delivery.retry(0), delivery.dead("raced")
                    )
                else:
                    await asyncio.gather(delivery.release(), delivery.ack(), delivery.dead("raced"))
                    again = await reader.next()
                    assert (again.key, again.redelivered) == (back, True)
                    await asyncio.gather(again.ack(), again.ack(), again.retry(0))
            await reader.nothing(self.quiet)
        if queue.capabilities.depth:
            assert await queue.depth() == 0
        if dead_letters is not None:
            assert await dead_letters() == []

    # --- configuration ----------------------------------------------------------

    async def test_unknown_url_option_is_refused_with_the_valid_names(
        self, queue: Queue, backend_url: str | None, backend_context: BackendContext
    ) -> None:
        self.check_url_options(queue, backend_url, backend_context)

    # --- stopping -------------------------------------------------------------

    async def test_aclose_stops_the_iterator(self, queue: Queue) -> None:
        keys = [_key(f"c{i}") for i in range(3)]
        for key in keys:
            await queue.publish(key, b"c")
        iterator = queue.consume(prefetch=3)
        first = await asyncio.wait_for(anext(iterator), self.timeout)
        await aclose(iterator)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(iterator), self.timeout)
        await first.ack()
        async with self.reader(queue, prefetch=3) as reader:
            rest = {(await reader.next()).key, (await reader.next()).key}
            await reader.nothing(self.quiet)
        assert rest == set(keys) - {first.key}

    async def test_cancelled_waits_then_aclose_lose_nothing(self, queue: Queue) -> None:
        keys = {_key(f"w{i}") for i in range(3)}
        for key in sorted(keys):
            await queue.publish(key, b"w")
        iterator = queue.consume(prefetch=3)
        received: list[Delivery] = []
        # Waits cut short at random points (as a stopping worker does), then aclose().
        for _ in range(300):
            try:
                received.append(await asyncio.wait_for(anext(iterator), 0.002))
            except TimeoutError:
                continue
            except StopAsyncIteration:
                break
            if len(received) == len(keys):
                break
        await aclose(iterator)
        for delivery in received:
            await delivery.ack()
        rest = keys - {delivery.key for delivery in received}
        async with self.reader(queue, prefetch=3) as reader:
            for _ in rest:
                delivery = await reader.next()
                assert delivery.key in rest
                await delivery.ack()
            await reader.nothing(self.quiet)

    async def test_close_ends_waiting_consumer(self, queue: Queue) -> None:
        reader = self.reader(queue)
        await reader.nothing(self.quiet)
        await queue.close()
        await reader.ended()
        await reader.close()
        await queue.close()
        with pytest.raises(QueueError):
            await queue.publish(_key("closed"), b"x")

    async def test_close_gives_unsettled_back_to_another_instance(
        self, queue: Queue, queue_factory: QueueFactory | None, dead_letters: DeadLetters | None
    ) -> None:
        other = await self._factory(queue, queue_factory)()
        key = _key("orphan")
        await queue.publish(key, b"orphan")
        reader = self.reader(queue)
        held = await reader.next()
        async with self.reader(other) as elsewhere:
            await elsewhere.nothing(self.quiet)
            await queue.close()
            await reader.close()
            await held.ack()  # after close: harmless, the message was given back
            again = await elsewhere.next()
            assert (again.key, again.body, again.redelivered) == (key, b"orphan", True)
            await again.ack()
            await elsewhere.nothing(self.quiet)
        if dead_letters is not None:
            assert await dead_letters() == []

    # --- depth ----------------------------------------------------------------

    async def test_depth_counts_waiting_messages(self, queue: Queue) -> None:
        if not queue.capabilities.depth:
            pytest.skip("queue cannot tell its depth")
        assert await queue.depth() == 0
        await queue.publish(_key("d1"), b"1")
        await queue.publish(_key("d2"), b"2")
        await queue.publish(_key("later"), b"3", delay=60)
        assert await queue.depth() == 3
        async with self.reader(queue) as reader:
            held = await reader.next()
            assert await queue.depth() == 2
            await held.ack()
            assert await queue.depth() == 2
            held = await reader.next()
            await held.ack()
            assert await queue.depth() == 1

    # --- concurrency ----------------------------------------------------------

    async def test_concurrent_consumers_get_each_message_once(
        self, queue: Queue, queue_factory: QueueFactory | None
    ) -> None:
        if queue.capabilities.shared:
            factory = self._factory(queue, queue_factory)
            queues = [queue, *[await factory() for _ in range(3)]]
        else:
            queues = [queue] * 4
        keys = [_key(f"n{i}") for i in range(200)]
        seen: list[str] = []
        iterators = [q.consume(prefetch=5) for q in queues]

        all_seen = asyncio.Event()

        async def consume(iterator: AsyncIterator[Delivery]) -> None:
            async for delivery in iterator:
                seen.append(delivery.key)
                await delivery.ack()
                if len(set(seen)) == len(keys):
                    all_seen.set()

        tasks = [asyncio.create_task(consume(iterator)) for iterator in iterators]
        try:
            for key in keys:
                await queue.publish(key, key.encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_seen.wait(), self.timeout * 3)
            await asyncio.sleep(self.quiet)  # time for a duplicate to show up
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            for iterator in iterators:
                await aclose(iterator)
        for task in tasks:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
        assert sorted(seen) == sorted(keys)
