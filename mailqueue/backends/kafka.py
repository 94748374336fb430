"""A Kafka topic as the queue: ``kafka://`` (aiokafka).

URL: ``kafka://[user:password@]host1:9092,host2:9092/<topic>?<options>``
(a host without a port means 9092). Options, all optional:

- ``group``: consumer group of the workers (default ``mailqueue``).
- ``client_id``: client id shown in the broker's logs (default ``mailqueue``).
- ``idempotence``: idempotent producer (default ``true``; brokers that do not
  implement ``InitProducerId``, such as Tansu, need ``false``).
- ``batch``: most records taken by one fetch (default 100; the original
  service's ``batchNumber``).
- ``retry_topic`` / ``dead_topic``: default ``<topic>.retry`` / ``<topic>.dead``.
- ``create``: create the three topics if they are missing (default ``false``:
  an operator creates them, and :meth:`KafkaQueue.open` fails with a
  :class:`~mailqueue.errors.QueueError` naming the missing ones);
  ``partitions`` (default 1) and ``replication`` (default 1) apply to them.
- ``timeout``: seconds a publish, commit or admin call may take before it
  fails with :class:`~mailqueue.errors.QueueError` (default 30);
  ``request_timeout``: the driver's per-request timeout (default: ``timeout``).
- ``session_timeout`` (default 10), ``heartbeat`` (default 3),
  ``max_poll_interval`` (default 300), ``rebalance_timeout`` (default:
  ``drain`` + ``session_timeout``, so that a draining member is waited
  for), ``metadata_max_age`` (default 300), ``fetch_wait`` (longest
  broker-side wait of a fetch, default 0.5), ``poll`` (longest pause of the
  fetch loop, default 0.2): seconds, passed to the consumer.
- ``commit_interval``: seconds between offset commits (default 1; commits
  are batched, never one per message).
- ``drain``: seconds a rebalance (or ``aclose()``) waits for handed-out
  deliveries of revoked partitions to be settled (default 30).
- ``hold``: most not-yet-due retry records kept in memory (default 10000);
  past it the retry partitions are paused.
- ``security_protocol``: ``PLAINTEXT`` (default), ``SSL``, ``SASL_PLAINTEXT``
  or ``SASL_SSL``; ``sasl_mechanism``: ``PLAIN`` (default), ``SCRAM-SHA-256``
  or ``SCRAM-SHA-512``, with the user and password of the URL;
  ``ssl_cafile``: CA bundle (default: the system's). Certificates are verified.

Unknown options raise :class:`~mailqueue.errors.ConfigurationError`.

Capabilities: ``delay=True``, ``shared=True``, ``depth=False``;
``ordered=True`` only when the main topic has exactly one partition (known
once opened).

How it works (docs/backends/kafka.md says why):

- ``publish`` sends with ``acks=all`` (idempotent per option), key = mail id,
  and returns only once the broker acknowledged, or raises ``QueueError``
  within ``timeout``. ``publish(delay=d)`` goes to the retry topic with the
  due time in a header.
- Each ``consume()`` iterator is one member of the consumer group, subscribed
  to the main and the retry topic, with manual commits. One fetch task keeps
  calling ``getmany()`` (pausing partitions when ``prefetch`` deliveries are
  out and as many records are buffered), so a long SMTP send never stalls
  polling. Deliveries of one partition may be handled concurrently; the
  offset committed per partition is the lowest unfinished offset (the highest
  contiguous finished offset + 1).
- ``retry(delay)``/``release()`` re-publish the record to the retry topic
  (header ``mailqueue-due``: absolute due time in epoch milliseconds;
  ``mailqueue-redelivered: 1``), wait for the ack, then mark the original
  finished; ``dead(reason)`` publishes to the dead topic with the reason in
  header ``mailqueue-reason``. A retry record read before it is due waits in
  an in-memory timer heap (not counted against ``prefetch``); it is
  unfinished, so its partition's commit stops at it, and records after it
  are read again after a restart or rebalance (the worker dedups on the
  Store).
- ``Delivery.redelivered`` is true for records re-published by ``retry`` or
  ``release`` (and by ``close()``) and for records this queue object already
  handed out; a record read again after a crash or rebalance may come with
  ``False`` (Kafka cannot tell; the worker copes through the Store).
- A rebalance drains first: handed-out deliveries of revoked partitions get
  ``drain`` seconds to be settled, offsets are committed, and records fetched
  but not handed out are dropped (the next owner reads them). Settling a
  delivery whose partition moved away is a no-op.
- ``aclose()`` of an iterator stops handing out, keeps its group membership
  only while deliveries it handed out are unsettled (at most ``drain``
  seconds), then commits and leaves the group so that the records it had
  fetched go to another member at once. ``close()`` re-publishes every
  unsettled delivery to the retry topic (due now, redelivered), commits and
  leaves; a delivery whose re-publish fails stays uncommitted and is read
  again by the next owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar, Final, Self
from urllib.parse import unquote, urlsplit

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]
from pydantic import BeforeValidator, model_validator

from mailqueue.backends._base import (
    BaseDelivery,
    Flag,
    Number,
    OptionsModel,
    Whole,
    parse_options,
    translate_errors,
)
from mailqueue.errors import ConfigurationError, QueueError, ValidationError
from mailqueue.protocols import BackendContext, QueueCapabilities, ResourceMixin

__all__ = ["KafkaConsumer", "KafkaDelivery", "KafkaOptions", "KafkaQueue"]

logger = logging.getLogger(__name__)

#: Header names on retry and dead records.
DUE_HEADER: Final = "mailqueue-due"
REDELIVERED_HEADER: Final = "mailqueue-redelivered"
REASON_HEADER: Final = "mailqueue-reason"
ORIGIN_HEADER: Final = "mailqueue-origin"
PUBLISHED_HEADER: Final = "mailqueue-published"

_DEFAULT_PORT: Final = 9092
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_HANDED_MEMORY: Final = 100_000
_MAX_REASON: Final = 4000
# Driver failures that publish, commit and admin calls translate: any exception, since aiokafka
# raises more than KafkaError (OSError, ValueError, AssertionError, RuntimeError were seen).
_DRIVER_ERRORS: Final = (Exception,)


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


class KafkaOptions(OptionsModel):
    """The knobs of :class:`KafkaQueue` (see the module docstring); times in seconds.

    Also the URL's options: :meth:`KafkaQueue.from_url` reads them with
    :func:`~mailqueue.backends._base.parse_options`.

    Raises:
        ConfigurationError: a value is out of range.
    """

    group: str = "mailqueue"
    client_id: str = "mailqueue"
    idempotence: Flag = True
    batch: Whole = 100
    retry_topic: str | None = None
    dead_topic: str | None = None
    create: Flag = False
    partitions: Whole = 1
    replication: Whole = 1
    timeout: Number = 30.0
    request_timeout: Number | None = None
    session_timeout: Number = 10.0
    heartbeat: Number = 3.0
    max_poll_interval: Number = 300.0
    rebalance_timeout: Number | None = None
    metadata_max_age: Number = 300.0
    fetch_wait: Number = 0.5
    poll: Number = 0.2
    commit_interval: Number = 1.0
    drain: Number = 30.0
    hold: Whole = 10_000
    security_protocol: Annotated[str, BeforeValidator(_upper)] = "PLAINTEXT"
    sasl_mechanism: Annotated[str, BeforeValidator(_upper)] = "PLAIN"
    ssl_cafile: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.group:
            raise ConfigurationError("option 'group' of kafka:// must not be empty")
        if not self.client_id:
            raise ConfigurationError("option 'client_id' of kafka:// must not be empty")
        for name in ("retry_topic", "dead_topic"):
            value = getattr(self, name)
            if value is not None and not _TOPIC_NAME.fullmatch(value):
                raise ConfigurationError(f"option {name!r} of kafka:// is not a valid topic name: {value!r}")
        for name in ("batch", "partitions", "replication", "hold"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"option {name!r} of kafka:// must be at least 1")
        positive = (
            "timeout",
            "request_timeout",
            "session_timeout",
            "heartbeat",
            "max_poll_interval",
            "rebalance_timeout",
            "metadata_max_age",
            "fetch_wait",
            "poll",
            "commit_interval",
            "drain",
        )
        for name in positive:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigurationError(f"option {name!r} of kafka:// must be a positive number of seconds")
        if self.heartbeat >= self.session_timeout:
            raise ConfigurationError("option 'heartbeat' of kafka:// must be less than 'session_timeout'")
        if self.security_protocol not in _PROTOCOLS:
            raise ConfigurationError(
                f"option 'security_protocol' of kafka:// must be one of {', '.join(_PROTOCOLS)}"
            )
        if self.sasl_mechanism not in _MECHANISMS:
            raise ConfigurationError(
                f"option 'sasl_mechanism' of kafka:// must be one of {', '.join(_MECHANISMS)}"
            )
        return self


def _split_hosts(hosts: str) -> list[str]:
    servers = []
    for host in hosts.split(","):
        host = host.strip()
        if not host:
            raise ConfigurationError("kafka:// URL has an empty host")
        name, port = host, str(_DEFAULT_PORT)
        if host.startswith("["):
            end = host.find("]")
            if end < 0:
                raise ConfigurationError(f"kafka:// URL has a bad host {host!r}")
            name, rest = host[: end + 1], host[end + 1 :]
            if rest:
                if not rest.startswith(":"):
                    raise ConfigurationError(f"kafka:// URL has a bad host {host!r}")
                port = rest[1:]
        elif ":" in host:
            name, _, port = host.rpartition(":")
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"kafka:// URL has a bad host or port {host!r}")
        servers.append(f"{name}:{int(port)}")
    return servers


def _now_ms() -> int:
    return int(time.time() * 1000)


def _header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> bytes | None:
    for key, value in headers or ():
        if key == name:
            return value
    return None


class _Partition:
    """Bookkeeping of one assigned partition, fresh at every assignment."""

    __slots__ = ("committed", "fetched_to", "outstanding")

    def __init__(self) -> None:
        # Offsets fetched and not finished, in fetch (= offset) order.
        self.outstanding: dict[int, None] = {}
        self.fetched_to: int | None = None
        self.committed: int | None = None

    def target(self) -> int | None:
        """The offset to commit: the lowest unfinished one, or past everything fetched."""
        for offset in self.outstanding:
            return offset
        return self.fetched_to


@dataclass(frozen=True, slots=True)
class _Record:
    tp: Any  # TopicPartition
    offset: int
    key: str
    body: bytes
    marked: bool  # carries the redelivered header
    since: int  # ready since (publish or due time), epoch nanoseconds: oldest is handed out first


class KafkaDelivery(BaseDelivery):
    """A record handed out by :meth:`KafkaQueue.consume`; settle it once.

    Settling is a no-op once settled, after the queue was closed, or when the
    record's partition was taken away by a rebalance (the next owner reads it).
    """

    __slots__ = ("_consumer", "_part", "_record", "_redelivered")

    def __init__(self, consumer: KafkaConsumer, record: _Record, part: _Partition, redelivered: bool) -> None:
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
        await self._settle("retry", lambda: self._consumer._queue._republish(self._record, max(delay, 0.0)))

    async def release(self) -> None:
        """Re-publish to the retry topic, due now, then mark finished (see :meth:`retry`)."""
        await self.retry(0.0)

    async def dead(self, reason: str) -> None:
        """Publish to the dead topic with ``reason`` in a header, then mark finished.

        Raises:
            QueueError: the publish was not acknowledged; the delivery stays unsettled.
        """
        await self._settle("dead", lambda: self._consumer._queue._dead(self._record, reason))

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
    """The async iterator returned by :meth:`KafkaQueue.consume`: one member of the group.

    A cancelled ``__anext__`` loses nothing and leaves the iterator usable;
    ``aclose()`` may be called from any task and ends a waiting ``__anext__``.
    ``__anext__`` raises :class:`~mailqueue.errors.QueueError` when joining or
    fetching failed (the iterator stays usable) and waits while the broker is
    unreachable.
    """

    def __init__(self, queue: KafkaQueue, prefetch: int) -> None:
        self._queue = queue
        self._prefetch = prefetch
        self._client: Any = None
        self._parts: dict[Any, _Partition] = {}
        self._revoking: set[Any] = set()
        # Fetched and due, oldest (publish or due time) first; and retry records not yet due.
        self._ready: list[tuple[int, int, _Record, _Partition]] = []
        self._held: list[tuple[float, int, _Record, _Partition]] = []
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
        self._task = asyncio.create_task(self._run(), name=f"mailqueue-kafka-fetch-{queue.topic}")

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> KafkaDelivery:
        while True:
            if self._closed or self._queue._closed:
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

    def _hand_out(self, record: _Record, part: _Partition) -> KafkaDelivery:
        seen = self._queue._handed_before(record)
        delivery = KafkaDelivery(self, record, part, record.marked or seen)
        self._out[delivery] = None
        return delivery

    def _halt(self) -> None:
        """Hand out nothing more, and wake every wait so that it sees it."""
        self._closed = True
        self._wake.set()
        self._room.set()
        self._settled.set()

    def _owns(self, tp: Any, part: _Partition) -> bool:
        """A record of partition ``tp`` fetched under the assignment ``part`` is still ours."""
        return not self._queue._closed and self._client is not None and self._parts.get(tp) is part

    def _live_out(self) -> list[KafkaDelivery]:
        return [d for d in self._out if d._live()]

    def _finished(self, delivery: KafkaDelivery, part: _Partition, offset: int | None) -> None:
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
        queue = self._queue
        now_ms = _now_ms()
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
                queue._forget_handed(tp)
                part = self._parts[tp] = _Partition()
            part.outstanding[raw.offset] = None
            part.fetched_to = raw.offset + 1
            headers = raw.headers
            due_ms = 0
            if tp.topic == queue.retry_topic:
                with contextlib.suppress(TypeError, ValueError):
                    due_ms = int(_header(headers, DUE_HEADER) or b"0")
            published = raw.timestamp * 1_000_000
            with contextlib.suppress(TypeError, ValueError):
                published = int(_header(headers, PUBLISHED_HEADER) or published)
            record = _Record(
                tp=tp,
                offset=raw.offset,
                key=(raw.key or b"").decode("utf-8", "replace"),
                body=bytes(raw.value or b""),
                marked=_header(headers, REDELIVERED_HEADER) == b"1",
                since=max(published, due_ms * 1_000_000),
            )
            if due_ms > now_ms:
                heapq.heappush(self._held, (now + (due_ms - now_ms) / 1000, next(self._order), record, part))
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
        queue = self._queue
        room = 0 if self._closed else max(self._prefetch, queue.options.batch) - len(self._ready)
        assigned = client.assignment()
        want: set[Any] = set()
        for tp in assigned:
            if room <= 0 or (tp.topic == queue.retry_topic and len(self._held) >= queue.options.hold):
                want.add(tp)
        paused = client.paused()
        if want - paused:
            client.pause(*(want - paused))
        if (paused & assigned) - want:
            client.resume(*((paused & assigned) - want))
        return room

    async def _run(self) -> None:
        options = self._queue.options
        failures = 0
        try:
            while not self._closed:
                if self._client is None:
                    client = self._queue._new_consumer()
                    try:
                        async with asyncio.timeout(options.timeout):
                            await client.start()
                        # Subscribed after start(), which would otherwise wait for the first assignment.
                        client.subscribe(
                            [self._queue.topic, self._queue.retry_topic], listener=_Listener(self)
                        )
                    except (*_DRIVER_ERRORS, TimeoutError) as exc:
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
                        "kafka queue %s: a fetch outlasted its timeout; polling again", self._queue.topic
                    )
                except _DRIVER_ERRORS as exc:
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
        deadline = time.monotonic() + self._queue.options.drain
        while self._live_out() and not self._queue._closed and time.monotonic() < deadline:
            self._apply_pauses(client)
            with contextlib.suppress(*_DRIVER_ERRORS, TimeoutError):
                await self._poll(client, self._queue.options.poll, 1)
            self._maybe_commit()

    async def _poll(self, client: Any, wait: float, max_records: int) -> dict[Any, list[Any]]:
        """``getmany`` waiting ``wait`` seconds, bounded by ``wait + timeout`` (TimeoutError past it).

        aiokafka's getmany was seen waiting far past its timeout_ms (a test run hung in it for 15
        minutes while four members of one group were closing): neither the fetch loop nor, through
        it, aclose() may wait on it for ever.
        """
        async with asyncio.timeout(wait + self._queue.options.timeout):
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
        self._queue._consumers.discard(self)

    async def _stop_client(self, client: Any) -> None:
        try:
            async with asyncio.timeout(self._queue.options.timeout):
                await client.stop()
        except (*_DRIVER_ERRORS, TimeoutError) as exc:
            logger.warning("kafka queue: leaving group %r failed: %s", self._queue.options.group, exc)

    async def _wait_stopped(self) -> None:
        self._stop.set()
        await asyncio.wait({self._task})

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    def _fail(self, message: str) -> None:
        logger.warning("kafka queue %s: %s", self._queue.topic, message)
        self._error = QueueError(f"kafka queue {self._queue.topic!r}: {message}")
        self._wake.set()

    # --- commits and rebalances ----------------------------------------------

    def _maybe_commit(self) -> None:
        if self._committing is not None or self._client is None:
            return
        if time.monotonic() - self._last_commit < self._queue.options.commit_interval:
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
            parts: dict[Any, _Partition] = {}
            for tp, part in self._parts.items():
                target = part.target()
                if tp in assigned and (only is None or tp in only) and target not in (None, part.committed):
                    offsets[tp], parts[tp] = target, part
            if not offsets:
                return
            try:
                async with asyncio.timeout(self._queue.options.timeout):
                    await client.commit(offsets)
            except (*_DRIVER_ERRORS, TimeoutError) as exc:
                logger.warning(
                    "kafka queue %s: commit failed (%s: %s); will retry",
                    self._queue.topic,
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
            deadline = time.monotonic() + self._queue.options.drain
            while not self._queue._closed:
                waiting = [d for d in self._live_out() if d._record.tp in revoked]
                remaining = deadline - time.monotonic()
                if not waiting:
                    break
                if remaining <= 0:
                    logger.warning(
                        "kafka queue %s: rebalance: %d deliveries still unsettled after %.1f s; "
                        "the next owner of their partitions reads them again",
                        self._queue.topic,
                        len(waiting),
                        self._queue.options.drain,
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
            self._parts[tp] = _Partition()
        topic = self._queue.topic
        if not any(tp.topic == topic for tp in assigned):
            logger.warning(
                "more worker instances than partitions of %s; this one is idle%s",
                topic,
                " (it handles retries only)" if assigned else "",
            )
        self._wake.set()


class KafkaQueue(ResourceMixin):
    """A :class:`~mailqueue.protocols.Queue` on a Kafka topic (see the module docstring).

    Args:
        bootstrap_servers: ``host:port`` of one or more brokers.
        topic: the main topic.
        options: every other knob.
        username: SASL user (with ``security_protocol`` ``SASL_*``).
        password: SASL password; never logged.

    Raises:
        ConfigurationError: a bad topic name or an empty server list.
    """

    #: The URL's options.
    url_options: ClassVar[type[OptionsModel]] = KafkaOptions

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topic: str,
        *,
        options: KafkaOptions | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        options = options or KafkaOptions()
        servers = [bootstrap_servers] if isinstance(bootstrap_servers, str) else list(bootstrap_servers)
        if not servers:
            raise ConfigurationError("kafka queue needs at least one bootstrap server")
        if not _TOPIC_NAME.fullmatch(topic):
            raise ConfigurationError(f"kafka:// topic is not a valid topic name: {topic!r}")
        options = options.model_copy(
            update={
                "retry_topic": options.retry_topic or f"{topic}.retry",
                "dead_topic": options.dead_topic or f"{topic}.dead",
            }
        )
        if len({topic, options.retry_topic, options.dead_topic}) != 3:
            raise ConfigurationError("kafka:// main, retry and dead topics must be three different topics")
        self.bootstrap_servers = servers
        self.topic = topic
        self.retry_topic: str = options.retry_topic or ""
        self.dead_topic: str = options.dead_topic or ""
        self.options = options
        self.capabilities = QueueCapabilities(delay=True, shared=True, depth=False, ordered=False)
        self._username = username
        self._password = password
        self._producer: Any = None
        self._closed = True
        self._recheck = False
        self._consumers: set[KafkaConsumer] = set()
        self._handed: OrderedDict[tuple[str, int, int], None] = OrderedDict()

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext) -> Self:
        """Build from ``kafka://[user:password@]host:port[,host:port...]/<topic>?<options>``.

        Raises:
            ConfigurationError: not ``kafka://``, no host or topic, an unknown or bad option.
        """
        parts = urlsplit(url)
        if parts.scheme != "kafka":
            raise ConfigurationError("not a kafka:// URL")
        userinfo, _, hosts = parts.netloc.rpartition("@")
        username = password = None
        if userinfo:
            user, _, secret = userinfo.partition(":")
            username, password = unquote(user), unquote(secret)
        if not hosts:
            raise ConfigurationError("kafka:// URL needs at least one host:port")
        topic = unquote(parts.path.lstrip("/"))
        if not topic:
            raise ConfigurationError("kafka:// URL needs a topic: kafka://host:9092/<topic>")
        options = parse_options(url, KafkaOptions)
        if username is not None:
            if "security_protocol" not in options.model_fields_set:
                options = options.model_copy(update={"security_protocol": "SASL_PLAINTEXT"})
            if options.security_protocol not in ("SASL_PLAINTEXT", "SASL_SSL"):
                raise ConfigurationError(
                    "kafka:// URL has a user and password, so security_protocol must be "
                    "SASL_PLAINTEXT or SASL_SSL"
                )
        return cls(
            _split_hosts(hosts),
            topic,
            options=options,
            username=username,
            password=password,
        )

    # --- driver clients ------------------------------------------------------

    def _common(self) -> dict[str, Any]:
        options = self.options
        common: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": options.client_id,
            "request_timeout_ms": int((options.request_timeout or options.timeout) * 1000),
            "metadata_max_age_ms": int(options.metadata_max_age * 1000),
            "security_protocol": options.security_protocol,
        }
        if options.security_protocol in ("SSL", "SASL_SSL"):
            common["ssl_context"] = create_ssl_context(cafile=options.ssl_cafile)
        if options.security_protocol.startswith("SASL"):
            common["sasl_mechanism"] = options.sasl_mechanism
            common["sasl_plain_username"] = self._username
            common["sasl_plain_password"] = self._password
        return common

    def _new_consumer(self) -> Any:
        options = self.options
        # The broker must wait for a member that drains its deliveries before rejoining.
        rebalance_timeout = options.rebalance_timeout or options.drain + options.session_timeout
        return AIOKafkaConsumer(
            group_id=options.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(options.session_timeout * 1000),
            heartbeat_interval_ms=int(options.heartbeat * 1000),
            max_poll_interval_ms=int(options.max_poll_interval * 1000),
            fetch_max_wait_ms=int(options.fetch_wait * 1000),
            max_poll_records=options.batch,
            rebalance_timeout_ms=int(rebalance_timeout * 1000),
            **self._common(),
        )

    # --- Resource ------------------------------------------------------------

    async def open(self) -> None:
        """Start the producer, check (or create) the topics, learn the partition count.

        Raises:
            QueueError: the brokers are unreachable, or a topic is missing and ``create`` is false.
        """
        if not self._closed:
            return
        options = self.options
        producer = AIOKafkaProducer(acks="all", enable_idempotence=options.idempotence, **self._common())
        try:
            with self._translate("connect"):
                await producer.start()
            await self._ensure_topics()
            with self._translate(f"read the partitions of topic {self.topic!r}"):
                partitions = await producer.partitions_for(self.topic)
        except BaseException:
            await self._stop_producer(producer)
            raise
        self._producer = producer
        self._closed = False
        self.capabilities = replace(self.capabilities, ordered=len(partitions) == 1)

    async def close(self) -> None:
        """Stop every consumer, hand unsettled deliveries back, leave the group; idempotent.

        Unsettled deliveries are re-published to the retry topic (due now,
        marked redelivered) and marked finished before the last commit; one
        whose re-publish fails stays uncommitted and is read again by the
        next owner of its partition.
        """
        if self._closed:
            return
        consumers = list(self._consumers)
        for consumer in consumers:
            consumer._halt()
        unsettled = [d for consumer in consumers for d in consumer._live_out()]

        async def give_back(delivery: KafkaDelivery) -> None:
            try:
                await delivery.release()
            except QueueError as exc:
                logger.warning("kafka queue: could not hand %r back on close: %s", delivery.key, exc)

        await asyncio.gather(*(give_back(d) for d in unsettled))
        self._closed = True
        for consumer in consumers:
            await consumer._wait_stopped()
        producer, self._producer = self._producer, None
        await self._stop_producer(producer)

    # --- Queue ---------------------------------------------------------------

    async def publish(self, key: str, body: bytes, *, delay: float = 0.0) -> None:
        """Send to the main topic (or, with ``delay``, to the retry topic with a due time)
        and return once the broker acknowledged it (``acks=all``).

        Raises:
            ValidationError: ``key`` is empty.
            QueueError: not open, or not acknowledged within ``timeout`` seconds.
        """
        if not key:
            raise ValidationError([("key", "must not be empty")])
        if delay > 0:
            headers = [(DUE_HEADER, str(_now_ms() + int(delay * 1000)).encode())]
            await self._send(self.retry_topic, key, bytes(body), headers)
        else:
            await self._send(self.topic, key, bytes(body), [])

    def consume(self, *, prefetch: int) -> KafkaConsumer:
        """Join the consumer group and return an async iterator of deliveries,
        at most ``prefetch`` unsettled at once.

        Raises:
            ValueError: ``prefetch`` is less than 1.
            QueueError: the queue is not open.
        """
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        if self._closed:
            raise QueueError("kafka queue is not open")
        consumer = KafkaConsumer(self, prefetch)
        self._consumers.add(consumer)
        return consumer

    async def depth(self) -> None:
        """Not known (a consumer group's lag is not a count of waiting messages
        here), so ``None`` — but only once a metadata request answered within
        ``timeout``: readiness checks call this, and an unreachable cluster
        raises :class:`~mailqueue.errors.QueueError`."""
        producer = self._producer
        if producer is None or self._closed:
            raise QueueError("kafka queue is not open")
        with translate_errors(QueueError, f"kafka queue {self.topic!r}: brokers unreachable"):
            try:
                async with asyncio.timeout(self.options.timeout):
                    await producer.client.fetch_all_metadata()
            except TimeoutError:
                raise QueueError(
                    f"kafka queue {self.topic!r}: no broker answered within {self.options.timeout} s"
                ) from None
        return None

    # --- internals -----------------------------------------------------------

    def _translate(self, action: str) -> contextlib.AbstractContextManager[None]:
        """Any exception of the block (a timeout too) as :class:`QueueError`."""
        return translate_errors(QueueError, f"kafka queue {self.topic!r} could not {action}")

    async def _stop_producer(self, producer: Any) -> None:
        if producer is None:
            return
        try:
            async with asyncio.timeout(self.options.timeout):
                await producer.stop()
        except (*_DRIVER_ERRORS, TimeoutError) as exc:
            logger.warning("kafka queue %s: stopping the producer failed: %s", self.topic, exc)

    async def _ensure_topics(self) -> None:
        options = self.options
        wanted = [self.topic, self.retry_topic, self.dead_topic]
        admin = AIOKafkaAdminClient(**self._common())
        try:
            with self._translate("reach the brokers"):
                async with asyncio.timeout(options.timeout):
                    await admin.start()
            with self._translate("list topics"):
                async with asyncio.timeout(options.timeout):
                    existing = set(await admin.list_topics())
            missing = [name for name in wanted if name not in existing]
            if not missing:
                return
            if not options.create:
                raise QueueError(
                    f"kafka topic(s) {', '.join(missing)} do not exist: create them "
                    f"(see docs/backends/kafka.md) or add create=true to the queue URL"
                )
            topics = [NewTopic(name, options.partitions, options.replication) for name in missing]
            with self._translate(f"create topics {', '.join(missing)}"):
                async with asyncio.timeout(options.timeout):
                    response = await admin.create_topics(topics)
            for name, code, *_ in getattr(response, "topic_errors", []):
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (another instance was first)
                    raise QueueError(f"kafka queue could not create topic {name!r}: error code {code}")
            logger.info("kafka queue: created topics %s", ", ".join(missing))
        except TimeoutError:
            raise QueueError(
                f"kafka queue {self.topic!r}: the brokers did not answer within {options.timeout} s"
            ) from None
        finally:
            with contextlib.suppress(*_DRIVER_ERRORS):
                await admin.close()

    async def _send(self, topic: str, key: str, body: bytes, headers: list[tuple[str, bytes]]) -> None:
        producer = self._producer
        if producer is None or self._closed:
            raise QueueError("kafka queue is not open")
        if self._recheck:
            # The last publish failed: the brokers may have lost the topics (create=true makes them again).
            await self._ensure_topics()
            self._recheck = False
        timeout = self.options.timeout
        headers = [*headers, (PUBLISHED_HEADER, str(time.time_ns()).encode())]
        try:
            with translate_errors(QueueError, f"kafka queue: publish to {topic!r} failed"):
                try:
                    async with asyncio.timeout(timeout):
                        await producer.send_and_wait(topic, value=body, key=key.encode(), headers=headers)
                except TimeoutError:
                    raise QueueError(
                        f"kafka queue: publish to {topic!r} not acknowledged within {timeout} s"
                    ) from None
        except QueueError:
            self._recheck = self.options.create
            raise

    async def _republish(self, record: _Record, delay: float) -> None:
        headers = [
            (DUE_HEADER, str(_now_ms() + int(delay * 1000)).encode()),
            (REDELIVERED_HEADER, b"1"),
        ]
        await self._send(self.retry_topic, record.key, record.body, headers)

    async def _dead(self, record: _Record, reason: str) -> None:
        headers = [
            (REASON_HEADER, reason[:_MAX_REASON].encode("utf-8", "replace")),
            (ORIGIN_HEADER, f"{record.tp.topic}:{record.tp.partition}:{record.offset}".encode()),
        ]
        await self._send(self.dead_topic, record.key, record.body, headers)

    def _handed_before(self, record: _Record) -> bool:
        """Remember ``record`` as handed out; True if it was before (by any consumer of this queue)."""
        mark = (record.tp.topic, record.tp.partition, record.offset)
        if mark in self._handed:
            self._handed.move_to_end(mark)
            return True
        self._handed[mark] = None
        if len(self._handed) > _HANDED_MEMORY:
            self._handed.popitem(last=False)
        return False

    def _forget_handed(self, tp: Any) -> None:
        for mark in [m for m in self._handed if (m[0], m[1]) == (tp.topic, tp.partition)]:
            del self._handed[mark]
