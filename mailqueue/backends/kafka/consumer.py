"""The consuming side of a Kafka queue: one group member per iterator of
:meth:`~mailqueue.backends.kafka.KafkaQueue.consume`, its fetch loop, commits and
rebalances, and the deliveries it hands out (how it works: :mod:`mailqueue.backends.kafka`)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, Self

from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]

from mailqueue.backends._base import BaseDelivery
from mailqueue.backends.kafka.clients import DRIVER_ERRORS, KafkaClients
from mailqueue.backends.kafka.offsets import HandedOut, Partition
from mailqueue.backends.kafka.publisher import KafkaPublisher
from mailqueue.backends.kafka.records import (
    DUE_HEADER,
    PUBLISHED_HEADER,
    REDELIVERED_HEADER,
    Record,
    header,
    now_ms,
)
from mailqueue.errors import QueueError

__all__ = ["KafkaConsumer", "KafkaDelivery"]

logger = logging.getLogger("mailqueue.backends.kafka")


class KafkaDelivery(BaseDelivery):
    """A record handed out by :meth:`~mailqueue.backends.kafka.KafkaQueue.consume`; settle it once.

    Settling is a no-op once settled, after the queue was closed, or when the
    record's partition was taken away by a rebalance (the next owner reads it).
    """

    __slots__ = ("_consumer", "_part", "_record", "_redelivered")

    def __init__(self, consumer: KafkaConsumer, record: Record, part: Partition, redelivered: bool) -> None:
        super().__init__()
        self._consumer = consumer
        self._record = record
        self._part = part
        self._redelivered = redelivered

    @property
    def key(self) -> str:
        """The key it was published under (the mail id)."""
        return self._record.key

    @property
    def body(self) -> bytes:
        """The payload exactly as published."""
        return self._record.body

    @property
    def redelivered(self) -> bool:
        """True for records re-published by retry/release/close, or handed out before by this queue."""
        return self._redelivered

    async def ack(self) -> None:
        """Mark the record finished; its offset is committed with the next batch."""
        await self._settle("ack")

    async def retry(self, delay: float) -> None:
        """Re-publish to the retry topic, due ``delay`` seconds from now, then mark finished.

        Raises:
            QueueError: the re-publish was not acknowledged; the delivery stays unsettled.
        """
        await self._settle(
            "retry", lambda: self._consumer._publisher.republish(self._record, max(delay, 0.0))
        )

    async def release(self) -> None:
        """Re-publish to the retry topic, due now, then mark finished (see :meth:`retry`)."""
        await self.retry(0.0)

    async def dead(self, reason: str) -> None:
        """Publish to the dead topic with ``reason`` in a header, then mark finished.

        Raises:
            QueueError: the publish was not acknowledged; the delivery stays unsettled.
        """
        await self._settle("dead", lambda: self._consumer._publisher.dead(self._record, reason))

    def _live(self) -> bool:
        """Not settled (or being settled), queue open, partition still ours."""
        return not self.settled and self._gone() is None

    def _gone(self) -> str | None:
        if self._consumer._owns(self._record.tp, self._part):
            return None
        return "its partition moved or the queue closed (the next owner reads it)"

    def _on_settled(self, *, done: bool) -> None:
        self._consumer._finished(self, self._part, self._record.offset if done else None)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        try:
            await self._consumer._revoked(set(revoked))
        except Exception:  # never into the driver's coordinator
            logger.exception("kafka queue: draining revoked partitions failed")

    async def on_partitions_assigned(self, assigned: Any) -> None:
        try:
            self._consumer._assigned(set(assigned))
        except Exception:
            logger.exception("kafka queue: taking assigned partitions failed")


class KafkaConsumer:
    """The async iterator returned by :meth:`~mailqueue.backends.kafka.KafkaQueue.consume`:
    one member of the group.

    A cancelled ``__anext__`` loses nothing and leaves the iterator usable;
    ``aclose()`` may be called from any task and ends a waiting ``__anext__``.
    ``__anext__`` raises :class:`~mailqueue.errors.QueueError` when joining or
    fetching failed (the iterator stays usable) and waits while the broker is
    unreachable.

    Made by :meth:`~mailqueue.backends.kafka.KafkaQueue.consume`, with what it uses of the queue:

    Args:
        prefetch: most deliveries handed out and not settled at once.
        clients: makes the group member; its ``options`` are the queue's.
        publisher: re-publishes retried, released and dead records.
        handed: the records the queue's consumers handed out lately.
        queue_closed: tells whether the queue was closed.
        on_stopped: called with this consumer once it has left the group.
    """

    def __init__(
        self,
        *,
        prefetch: int,
        clients: KafkaClients,
        publisher: KafkaPublisher,
        handed: HandedOut,
        queue_closed: Callable[[], bool],
        on_stopped: Callable[[KafkaConsumer], None],
    ) -> None:
        self._prefetch = prefetch
        self._clients = clients
        self._options = clients.options
        self._publisher = publisher
        self._topic = publisher.topic
        self._retry_topic = publisher.retry_topic
        self._handed = handed
        self._queue_closed = queue_closed
        self._on_stopped = on_stopped
        self._client: Any = None
        self._parts: dict[Any, Partition] = {}
        self._revoking: set[Any] = set()
        # Fetched and due, oldest (publish or due time) first; and retry records not yet due.
        self._ready: list[tuple[int, int, Record, Partition]] = []
        self._held: list[tuple[float, int, Record, Partition]] = []
        self._order = itertools.count()
        self._out: dict[KafkaDelivery, None] = {}
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._settled = asyncio.Event()
        self._stop = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._committing: asyncio.Task[None] | None = None
        self._last_commit = time.monotonic()
        self._error: QueueError | None = None
        self._closed = False
        self._task = asyncio.create_task(self._run(), name=f"mailqueue-kafka-fetch-{self._topic}")

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> KafkaDelivery:
        while True:
            if self._closed or self._queue_closed():
                raise StopAsyncIteration
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            due_in = self._promote()
            if self._ready and len(self._out) < self._prefetch:
                _, _, record, part = heapq.heappop(self._ready)
                self._room.set()
                return self._hand_out(record, part)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(due_in):
                    await self._wake.wait()

    async def aclose(self) -> None:
        """Stop handing out; give back records fetched but not handed out.

        Deliveries already handed out can still be settled: the group
        membership lasts until they are (at most ``drain`` seconds), then
        offsets are committed and the member leaves. With none out, this
        returns once the member has left.
        """
        if self._closed:
            if not self._out:
                await self._wait_stopped()
            return
        self._halt()
        if not self._live_out():
            await self._wait_stopped()

    # --- handing out and settling -----------------------------------------

    def _hand_out(self, record: Record, part: Partition) -> KafkaDelivery:
        seen = self._handed.seen(record)
        delivery = KafkaDelivery(self, record, part, record.marked or seen)
        self._out[delivery] = None
        return delivery

    def _halt(self) -> None:
        """Hand out nothing more, and wake every wait so that it sees it."""
        self._closed = True
        self._wake.set()
        self._room.set()
        self._settled.set()

    def _owns(self, tp: Any, part: Partition) -> bool:
        """A record of partition ``tp`` fetched under the assignment ``part`` is still ours."""
        return not self._queue_closed() and self._client is not None and self._parts.get(tp) is part

    def _live_out(self) -> list[KafkaDelivery]:
        return [d for d in self._out if d._live()]

    def _finished(self, delivery: KafkaDelivery, part: Partition, offset: int | None) -> None:
        """``delivery`` is settled; its record at ``offset`` of ``part`` is finished (committable),
        or with ``offset=None`` left to the partition's next owner."""
        self._out.pop(delivery, None)
        if offset is not None:
            part.outstanding.pop(offset, None)
        self._wake.set()
        self._settled.set()

    def _promote(self) -> float | None:
        """Move due retry records to the ready buffer; seconds until the next is due."""
        now = time.monotonic()
        while self._held and self._held[0][0] <= now:
            _, _, record, part = heapq.heappop(self._held)
            heapq.heappush(self._ready, (record.since, next(self._order), record, part))
        return self._held[0][0] - now if self._held else None

    # --- fetching -----------------------------------------------------------

    def _take(self, tp: Any, records: list[Any]) -> None:
        part = self._parts.get(tp)
        if part is None or tp in self._revoking or self._closed:
            return  # not taken: nothing past them is committed; the owner reads them again
        wall_ms = now_ms()
        now = time.monotonic()
        for raw in records:
            if part.fetched_to is not None and raw.offset < part.fetched_to:
                logger.warning(
                    "kafka queue: offsets of %s-%d went back from %d to %d (topic recreated?); starting over",
                    tp.topic,
                    tp.partition,
                    part.fetched_to,
                    raw.offset,
                )
                self._forget_partitions({tp})
                self._handed.forget(tp)
                part = self._parts[tp] = Partition()
            part.outstanding[raw.offset] = None
            part.fetched_to = raw.offset + 1
            headers = raw.headers
            due_ms = 0
            if tp.topic == self._retry_topic:
                with contextlib.suppress(TypeError, ValueError):
                    due_ms = int(header(headers, DUE_HEADER) or b"0")
            published = raw.timestamp * 1_000_000
            with contextlib.suppress(TypeError, ValueError):
                published = int(header(headers, PUBLISHED_HEADER) or published)
            record = Record(
                tp=tp,
                offset=raw.offset,
                key=(raw.key or b"").decode("utf-8", "replace"),
                body=bytes(raw.value or b""),
                marked=header(headers, REDELIVERED_HEADER) == b"1",
                since=max(published, due_ms * 1_000_000),
            )
            if due_ms > wall_ms:
                heapq.heappush(self._held, (now + (due_ms - wall_ms) / 1000, next(self._order), record, part))
            else:
                heapq.heappush(self._ready, (record.since, next(self._order), record, part))

    def _forget_partitions(self, tps: set[Any]) -> None:
        """Drop buffered and held records of ``tps`` (they stay unfinished, so uncommitted)."""
        ready = [item for item in self._ready if item[2].tp not in tps]
        if len(ready) != len(self._ready):
            heapq.heapify(ready)
            self._ready = ready
        held = [item for item in self._held if item[2].tp not in tps]
        if len(held) != len(self._held):
            heapq.heapify(held)
            self._held = held

    def _apply_pauses(self, client: Any) -> int:
        """Pause what must not be fetched now; return how many records may be taken."""
        options = self._options
        room = 0 if self._closed else max(self._prefetch, options.batch) - len(self._ready)
        assigned = client.assignment()
        want: set[Any] = set()
        for tp in assigned:
            if room <= 0 or (tp.topic == self._retry_topic and len(self._held) >= options.hold):
                want.add(tp)
        paused = client.paused()
        if want - paused:
            client.pause(*(want - paused))
        if (paused & assigned) - want:
            client.resume(*((paused & assigned) - want))
        return room

    async def _run(self) -> None:
        options = self._options
        failures = 0
        try:
            while not self._closed:
                if self._client is None:
                    client = self._clients.member()
                    try:
                        async with asyncio.timeout(options.timeout):
                            await client.start()
                        # Subscribed after start(), which would otherwise wait for the first assignment.
                        client.subscribe([self._topic, self._retry_topic], listener=_Listener(self))
                    except (*DRIVER_ERRORS, TimeoutError) as exc:
                        await self._stop_client(client)
                        failures += 1
                        self._fail(f"could not join group {options.group!r}: {type(exc).__name__}: {exc}")
                        await self._sleep(min(30.0, 0.5 * 2.0 ** min(failures, 6)))
                        continue
                    self._client = client
                client = self._client
                room = self._apply_pauses(client)
                wait = options.poll
                if room <= 0:
                    # Everything paused: wait for room, but keep polling (max_poll_interval).
                    self._room.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(options.poll):
                            await self._room.wait()
                    wait = 0
                try:
                    batch = await self._poll(client, wait, min(options.batch, max(room, 1)))
                except TimeoutError:
                    batch = {}  # an empty poll is harmless, the next one asks again
                    logger.warning(
                        "kafka queue %s: a fetch outlasted its timeout; polling again", self._topic
                    )
                except DRIVER_ERRORS as exc:
                    failures += 1
                    self._fail(f"fetch failed: {type(exc).__name__}: {exc}")
                    await self._sleep(min(30.0, 0.5 * 2.0 ** min(failures, 6)))
                    continue
                failures = 0
                for tp, records in batch.items():
                    self._take(tp, records)
                if batch:
                    self._wake.set()
                self._maybe_commit()
            await self._linger()
        finally:
            await self._shutdown()

    async def _linger(self) -> None:
        """After aclose(): keep polling while handed-out deliveries may still be settled."""
        client = self._client
        if client is None:
            return
        self._forget_partitions(set(self._parts))
        deadline = time.monotonic() + self._options.drain
        while self._live_out() and not self._queue_closed() and time.monotonic() < deadline:
            self._apply_pauses(client)
            with contextlib.suppress(*DRIVER_ERRORS, TimeoutError):
                await self._poll(client, self._options.poll, 1)
            self._maybe_commit()

    async def _poll(self, client: Any, wait: float, max_records: int) -> dict[Any, list[Any]]:
        """``getmany`` waiting ``wait`` seconds, bounded by ``wait + timeout`` (TimeoutError past it).

        aiokafka's getmany was seen waiting far past its timeout_ms (a test run hung in it for 15
        minutes while four members of one group were closing): neither the fetch loop nor, through
        it, aclose() may wait on it for ever.
        """
        async with asyncio.timeout(wait + self._options.timeout):
            batch: dict[Any, list[Any]] = await client.getmany(
                timeout_ms=int(wait * 1000), max_records=max_records
            )
        return batch

    async def _shutdown(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            if self._committing is not None:
                with contextlib.suppress(Exception):
                    await self._committing
            await self._commit(client)
            await self._stop_client(client)
        self._out.clear()
        self._ready.clear()
        self._held.clear()
        self._parts.clear()
        self._wake.set()
        self._settled.set()
        self._on_stopped(self)

    async def _stop_client(self, client: Any) -> None:
        try:
            async with asyncio.timeout(self._options.timeout):
                await client.stop()
        except (*DRIVER_ERRORS, TimeoutError) as exc:
            logger.warning("kafka queue: leaving group %r failed: %s", self._options.group, exc)

    async def _wait_stopped(self) -> None:
        self._stop.set()
        await asyncio.wait({self._task})

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    def _fail(self, message: str) -> None:
        logger.warning("kafka queue %s: %s", self._topic, message)
        self._error = QueueError(f"kafka queue {self._topic!r}: {message}")
        self._wake.set()

    # --- commits and rebalances ----------------------------------------------

    def _maybe_commit(self) -> None:
        if self._committing is not None or self._client is None:
            return
        if time.monotonic() - self._last_commit < self._options.commit_interval:
            return
        if not any(part.target() not in (None, part.committed) for part in self._parts.values()):
            return
        self._last_commit = time.monotonic()
        self._committing = asyncio.create_task(self._commit(self._client))
        self._committing.add_done_callback(self._commit_done)

    def _commit_done(self, task: asyncio.Task[None]) -> None:
        self._committing = None
        if not task.cancelled():
            task.exception()  # _commit logs its own failures

    async def _commit(self, client: Any, only: set[Any] | None = None) -> None:
        """Commit the lowest unfinished offset of every assigned partition that moved."""
        async with self._commit_lock:
            assigned = client.assignment()
            offsets: dict[Any, int] = {}
            parts: dict[Any, Partition] = {}
            for tp, part in self._parts.items():
                target = part.target()
                if tp in assigned and (only is None or tp in only) and target not in (None, part.committed):
                    offsets[tp], parts[tp] = target, part
            if not offsets:
                return
            try:
                async with asyncio.timeout(self._options.timeout):
                    await client.commit(offsets)
            except (*DRIVER_ERRORS, TimeoutError) as exc:
                logger.warning(
                    "kafka queue %s: commit failed (%s: %s); will retry",
                    self._topic,
                    type(exc).__name__,
                    exc,
                )
                return
            for tp, part in parts.items():
                part.committed = offsets[tp]

    async def _revoked(self, revoked: set[Any]) -> None:
        """Rebalance: drain handed-out deliveries of ``revoked``, commit, forget them."""
        if not revoked:
            return
        self._revoking |= revoked
        try:
            self._forget_partitions(revoked)
            deadline = time.monotonic() + self._options.drain
            while not self._queue_closed():
                waiting = [d for d in self._live_out() if d._record.tp in revoked]
                remaining = deadline - time.monotonic()
                if not waiting:
                    break
                if remaining <= 0:
                    logger.warning(
                        "kafka queue %s: rebalance: %d deliveries still unsettled after %.1f s; "
                        "the next owner of their partitions reads them again",
                        self._topic,
                        len(waiting),
                        self._options.drain,
                    )
                    break
                self._settled.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._settled.wait()
            client = self._client
            if client is not None:
                await self._commit(client, revoked)
        finally:
            for tp in revoked:
                self._parts.pop(tp, None)
            self._revoking -= revoked
            self._wake.set()

    def _assigned(self, assigned: set[Any]) -> None:
        for tp in assigned:
            self._parts[tp] = Partition()
        topic = self._topic
        if not any(tp.topic == topic for tp in assigned):
            logger.warning(
                "more worker instances than partitions of %s; this one is idle%s",
                topic,
                " (it handles retries only)" if assigned else "",
            )
        self._wake.set()
