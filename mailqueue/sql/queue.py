"""A durable queue in the Store's own database: ``sql://``.

URL: ``sql://?queue=<name>&poll=<seconds>&lease=<seconds>&batch=<n>``

- ``queue``: queue name, up to 64 characters (default ``mailqueue``); several
  queues share the table, each sees only its rows.
- ``poll``: longest pause between two looks at an empty queue (default 0.5);
  an idle consumer backs off from 10 ms up to it.
- ``lease``: visibility timeout in seconds (default 300): a delivery not
  settled within it is handed out again (its consumer is presumed dead).
- ``batch``: most rows claimed by one query (default 10); a consumer never
  claims more than ``prefetch`` minus what it holds.

Capabilities: ``delay=True``, ``shared=True``, ``depth=True``. Works on
SQLite (3.35+), MariaDB/MySQL 8 and PostgreSQL, in table ``mailqueue_queue``
of :mod:`mailqueue.sql.schema`, which the Store's migrations create (this
backend creates nothing). Built from a URL it uses the Store's engine
(``context.store.engine``, read when the queue is opened, so open the store
first); built directly it takes ``engine=``. It never disposes the engine.

How it works: a row is ready when ``state='ready' AND available_at <= now``
(epoch milliseconds, Python clock). Claiming a row pushes ``available_at`` one
lease into the future, stamps a fresh random ``lease`` token and counts
``deliveries``, so delayed rows, ready rows and rows whose lease expired are
all found on one index. Claims are atomic under concurrent consumers in any
number of processes: ``SELECT ... FOR UPDATE SKIP LOCKED`` then ``UPDATE`` in
one transaction (MariaDB, PostgreSQL), or a single
``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING`` (SQLite, whose
writers are serialized; use WAL mode for several processes).

Settling is conditional on the lease token: ``ack`` deletes the row (the acks
of concurrent deliveries together, in one transaction), ``retry``
and ``release`` make it ready again (later or now), ``dead`` sets
``state='dead'`` and ``dead_reason`` (the row stays, never redelivered). A
delivery whose lease expired and was claimed again by another consumer no
longer owns the row, so settling it is a no-op that leaves the other claim
alone; settling twice is a no-op too. A publish returns once committed, and
wakes consumers of the same instance at once; other processes see it at their
next poll.

On SQLite each of these operations is one statement (``RETURNING`` says what
it changed), run in autocommit mode on one connection the queue keeps from
the engine's pool while open: one trip to the driver's thread each, and the
write lock held for that statement only (see :class:`_SQLiteLine`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, suppress
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mailqueue.backends._base import (
    BaseDelivery,
    Number,
    OptionsModel,
    Whole,
    parse_options,
    translate_errors,
)
from mailqueue.batching import Batcher
from mailqueue.errors import ConfigurationError, QueueError, ValidationError
from mailqueue.protocols import BackendContext, QueueCapabilities, ResourceMixin, Store
from mailqueue.sql.schema import queue as table

__all__ = ["SQLConsumer", "SQLDelivery", "SQLQueue", "SQLQueueOptions"]

logger = logging.getLogger(__name__)

_MIN_POLL = 0.01
_READY = "ready"
_DEAD = "dead"


class SQLQueueOptions(OptionsModel):
    """The options of an ``sql://`` queue URL (see the module docstring)."""

    queue: str = "mailqueue"
    poll: Number = 0.5
    lease: Number = 300.0
    batch: Whole = 10


_T = table.name
#: SQLite: the queue's statements, one each (see _SQLiteLine).
_SQLITE_PUBLISH = (
    f"INSERT INTO {_T} (queue, msg_key, body, available_at, lease, deliveries, state, dead_reason,"
    f" created_at) VALUES (?, ?, ?, ?, NULL, 0, '{_READY}', '', ?)"
)
_SQLITE_CLAIM = (
    f"UPDATE {_T} SET lease = ?, available_at = ?, deliveries = deliveries + 1"
    f" WHERE id IN (SELECT id FROM {_T} WHERE queue = ? AND state = '{_READY}' AND available_at <= ?"
    " ORDER BY available_at, id LIMIT ?) RETURNING id, msg_key, body, deliveries"
)


@functools.lru_cache(maxsize=64)
def _sqlite_ack(count: int) -> str:
    """Delete ``count`` rows by id, each only while still under its lease; the ids first
    so that SQLite finds the rows by primary key."""
    ids = ", ".join("?" * count)
    pairs = ", ".join(["(?, ?)"] * count)
    return (
        f"DELETE FROM {_T} WHERE id IN ({ids}) AND state = '{_READY}'"
        f" AND (id, lease) IN (VALUES {pairs}) RETURNING id, lease"
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _translate(action: str) -> AbstractContextManager[None]:
    """Turn any exception of the database or its driver into :class:`QueueError`."""
    return translate_errors(QueueError, f"sql queue could not {action}")


class SQLDelivery(BaseDelivery):
    """A row claimed by :meth:`SQLQueue.consume`; owned until settled or its lease expires."""

    __slots__ = ("_body", "_consumer", "_deliveries", "_id", "_key", "_lease", "_queue")

    def __init__(
        self,
        queue: SQLQueue,
        consumer: SQLConsumer,
        row_id: int,
        key: str,
        body: bytes,
        deliveries: int,
        lease: str,
    ) -> None:
        super().__init__()
        self._queue = queue
        self._consumer = consumer
        self._id = row_id
        self._key = key
        self._body = body
        self._deliveries = deliveries
        self._lease = lease

    @property
    def key(self) -> str:
        """The key it was published under."""
        return self._key

    @property
    def body(self) -> bytes:
        """The payload exactly as published."""
        return self._body

    @property
    def redelivered(self) -> bool:
        """True if the row was claimed before (``deliveries > 1``)."""
        return self._deliveries > 1

    async def ack(self) -> None:
        """Delete the row.

        A no-op if already settled or if the lease expired and another
        consumer claimed the row since.

        Raises:
            QueueError: the database failed; the delivery stays unsettled.
        """

        async def delete() -> None:
            # acks of concurrent deliveries are deleted together, one statement and one commit
            if not await self._queue._acks.call((self._id, self._lease)):
                self._claimed_again("ack")

        await self._settle("ack", delete)

    async def retry(self, delay: float) -> None:
        """Make the row ready again ``delay`` seconds from now (same no-op rules as :meth:`ack`)."""
        await self._settle("retry", self._update(self._ready_again(delay), "retry"))
        if delay <= 0:
            self._queue._wake_all()

    async def dead(self, reason: str) -> None:
        """Set ``state='dead'`` and ``dead_reason`` (cut to 1000 characters); no-op rules of :meth:`ack`."""
        statement = sa.update(table).values(state=_DEAD, dead_reason=reason[:1000], lease=None)
        await self._settle("dead", self._update(statement, "dead"))

    async def release(self) -> None:
        """Make the row ready again now (same no-op rules as :meth:`ack`)."""
        await self._settle("release", self._update(self._ready_again(0.0), "release"))
        self._queue._wake_all()

    def _ready_again(self, delay: float, *, uncount: bool = False) -> sa.Update:
        values: dict[str, Any] = {"lease": None, "available_at": _now_ms() + int(max(delay, 0.0) * 1000)}
        if uncount:
            values["deliveries"] = table.c.deliveries - 1
        return sa.update(table).values(values)

    def _update(self, statement: sa.Update, action: str) -> Callable[[], Awaitable[None]]:
        """The settle step: ``statement`` on this row, only while it is still under this lease."""

        async def step() -> None:
            held = statement.where(
                table.c.id == self._id, table.c.lease == self._lease, table.c.state == _READY
            )
            if not await self._queue._update(held, action):
                self._claimed_again(action)

        return step

    def _claimed_again(self, action: str) -> None:
        logger.warning(
            "sql queue: %s of %r ignored: its lease expired and it was claimed again", action, self._key
        )

    def _on_settled(self, *, done: bool) -> None:
        self._queue._forget(self)
        self._consumer._forget(self)

    async def _give_back(self, *, uncount: bool) -> None:
        """Release, on close; ``uncount`` for rows claimed but never handed out."""
        try:
            await self._settle("release", self._update(self._ready_again(0.0, uncount=uncount), "release"))
        except QueueError as exc:
            # The lease will expire and the row come back anyway.
            logger.warning("sql queue: could not release %r on close: %s", self._key, exc)


class SQLConsumer:
    """The async iterator returned by :meth:`SQLQueue.consume`.

    A cancelled ``__anext__`` loses nothing (a claim under way completes into
    the iterator's buffer) and leaves the iterator usable; ``aclose()`` may be
    called from another task and ends a waiting ``__anext__``.
    """

    def __init__(self, queue: SQLQueue, prefetch: int) -> None:
        self._queue = queue
        self._prefetch = prefetch
        self._buffer: deque[SQLDelivery] = deque()
        self._owned: set[SQLDelivery] = set()
        self._wake = asyncio.Event()
        self._claiming: asyncio.Task[None] | None = None
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SQLDelivery:
        queue = self._queue
        idle = min(_MIN_POLL, queue.poll)
        while True:
            if self._closed or queue._closed:
                raise StopAsyncIteration
            if self._buffer:
                return self._buffer.popleft()
            room = self._prefetch - len(self._owned)
            timeout: float | None = None
            if room > 0:
                if self._claiming is None:
                    self._wake.clear()
                    self._claiming = asyncio.create_task(self._claim(min(room, queue.batch)))
                claiming = self._claiming
                try:
                    # Shielded: if the caller gives up waiting, the rows still land in the buffer.
                    await asyncio.shield(claiming)
                finally:
                    if claiming.done():
                        self._claiming = None
                if self._buffer:
                    idle = min(_MIN_POLL, queue.poll)
                    continue
                timeout, idle = idle, min(idle * 2, queue.poll)
            else:
                self._wake.clear()
            with suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _forget(self, delivery: SQLDelivery) -> None:
        """``delivery`` is settled: it no longer counts against ``prefetch``."""
        self._owned.discard(delivery)
        self._wake.set()

    async def _claim(self, limit: int) -> None:
        for delivery in await self._queue._claim(self, limit):
            self._buffer.append(delivery)
            self._owned.add(delivery)

    async def aclose(self) -> None:
        """Stop consuming; give back rows claimed but not yet handed out.

        Deliveries already handed out stay owned until settled (or the queue
        is closed, or their lease expires).
        """
        self._halt()
        await self._drain()

    def _halt(self) -> None:
        """Hand out nothing more, and wake a waiting ``__anext__`` so that it sees it."""
        self._closed = True
        self._wake.set()

    async def _drain(self) -> None:
        if self._claiming is not None:
            with suppress(Exception):
                await self._claiming
        while self._buffer:
            await self._buffer.popleft()._give_back(uncount=True)
        self._queue._consumers.discard(self)


class _SQLiteLine:
    """The queue's own connection to an SQLite database, in autocommit mode.

    Every queue operation on SQLite is one statement (``RETURNING`` tells what
    it changed), so each is its own transaction, costs one trip to the
    driver's thread where the pooled path costs five to twelve (cursor,
    execute, fetch, close, commit, the pool's rollback, a second statement),
    and holds the write lock for that one statement. SQLite lets one writer
    in at a time whatever the number of connections, so one connection loses
    nothing; the statements of concurrent callers queue on it. The connection
    comes from the engine's pool, so it has the engine's settings (WAL,
    ``busy_timeout``, ``synchronous``): a commit here is exactly as durable as
    the Store's.
    """

    def __init__(self, conn: AsyncConnection, driver: Any) -> None:
        self._conn = conn
        self._driver = driver

    @classmethod
    async def open(cls, engine: AsyncEngine) -> _SQLiteLine:
        conn = await engine.connect()
        try:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            raw = await conn.get_raw_connection()
            return cls(conn, raw.driver_connection)
        except BaseException:
            await conn.close()
            raise

    async def close(self) -> None:
        """Give the connection back to the pool (which resets its isolation level)."""
        await self._conn.close()

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run one statement, in a transaction of its own, and return its rows.

        Raises:
            sqlite3.Error: it failed (nothing changed).
        """
        return [tuple(row) for row in await self._driver.execute_fetchall(sql, params)]

    async def update(self, statement: sa.Update) -> int:
        """Run an UPDATE (compiled for SQLite) and return how many rows it changed."""
        compiled = statement.returning(table.c.id).compile(dialect=self._conn.dialect)
        params = compiled.construct_params()
        positions = compiled.positiontup or []
        return len(await self.fetch(compiled.string, [params[name] for name in positions]))


class SQLQueue(ResourceMixin):
    """A :class:`~mailqueue.protocols.Queue` in table ``mailqueue_queue`` (see the module docstring).

    Args:
        engine: the database (an SQLAlchemy ``AsyncEngine``); or
        store: a Store whose ``engine`` attribute is read in :meth:`open`.
        queue: the queue's name in the table.
        poll: longest idle pause between looks, seconds.
        lease: visibility timeout, seconds.
        batch: most rows claimed per query.

    Raises:
        ConfigurationError: neither or both of ``engine`` and ``store``, or a bad value.
    """

    capabilities = QueueCapabilities(delay=True, shared=True, depth=True)
    #: The URL's options.
    url_options: ClassVar[type[OptionsModel]] = SQLQueueOptions

    def __init__(
        self,
        *,
        engine: AsyncEngine | None = None,
        store: Store | None = None,
        queue: str = "mailqueue",
        poll: float = 0.5,
        lease: float = 300.0,
        batch: int = 10,
    ) -> None:
        if (engine is None) == (store is None):
            raise ConfigurationError("sql queue needs exactly one of engine= or store=")
        if not 0 < len(queue) <= 64:
            raise ConfigurationError("option 'queue' must be 1 to 64 characters")
        if not poll > 0:
            raise ConfigurationError("option 'poll' must be a positive number of seconds")
        if not lease > 0:
            raise ConfigurationError("option 'lease' must be a positive number of seconds")
        if batch < 1:
            raise ConfigurationError("option 'batch' must be at least 1")
        self.queue = queue
        self.poll = poll
        self.lease = lease
        self.batch = batch
        self._given_engine = engine
        self._store = store
        self._engine: AsyncEngine | None = None
        self._line: _SQLiteLine | None = None
        self._closed = True
        self._consumers: set[SQLConsumer] = set()
        self._unsettled: dict[SQLDelivery, None] = {}
        self._acks: Batcher[tuple[int, str], bool] = Batcher(self._delete, 500)

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext) -> Self:
        """Build from ``sql://?queue=&poll=&lease=&batch=`` on ``context.store``'s database.

        Raises:
            ConfigurationError: not ``sql://``, an unknown or bad option, or no store.
        """
        if urlsplit(url).scheme != "sql":
            raise ConfigurationError(f"not an sql:// URL: {url!r}")
        options = parse_options(url, SQLQueueOptions)
        if context.store is None:
            raise ConfigurationError("the sql:// queue uses the store's database, but there is no store")
        return cls(store=context.store, **options.model_dump())

    async def open(self) -> None:
        """Take the engine and check that the table can be read.

        Raises:
            ConfigurationError: the store has no SQLAlchemy ``engine`` (e.g. a memory store, or not opened).
            QueueError: the database is unreachable or the table is missing (run the store's migrations).
        """
        if not self._closed:
            return
        engine = self._given_engine or getattr(self._store, "engine", None)
        if not isinstance(engine, AsyncEngine):
            raise ConfigurationError(
                "the sql:// queue needs a store with an SQLAlchemy engine (an SQL store, opened first)"
            )
        with _translate("reach table mailqueue_queue (are the store's migrations applied?)"):
            async with engine.connect() as conn:
                await conn.execute(sa.select(table.c.id).where(table.c.queue == self.queue).limit(1))
            if engine.dialect.name == "sqlite":
                self._line = await _SQLiteLine.open(engine)
        self._engine = engine
        self._closed = False

    async def close(self) -> None:
        """Stop every consumer and release every unsettled delivery for redelivery; idempotent.

        A release that fails is logged: the row comes back when its lease expires.
        """
        if self._closed:
            return
        self._closed = True
        consumers = list(self._consumers)
        for consumer in consumers:
            consumer._halt()
        for consumer in consumers:
            await consumer._drain()
        for delivery in list(self._unsettled):
            await delivery._give_back(uncount=False)
        for delivery in list(self._unsettled):
            # Could not be released: its lease will expire; settling it later does nothing.
            delivery._drop()
        await self._acks.drain()
        line, self._line = self._line, None
        if line is not None:
            with suppress(Exception):
                await line.close()
        self._engine = None

    async def publish(self, key: str, body: bytes, *, delay: float = 0.0) -> None:
        """Insert and commit the message, ready ``delay`` seconds from now.

        Raises:
            ValidationError: ``key`` is empty or longer than 64 characters.
            QueueError: not open, or the database failed (nothing was queued).
        """
        if not 0 < len(key) <= 64:
            raise ValidationError([("key", "must be 1 to 64 characters")])
        now = _now_ms()
        available_at = now + int(max(delay, 0.0) * 1000)
        if self._line is not None:
            with _translate("publish"):
                await self._line.fetch(_SQLITE_PUBLISH, (self.queue, key, bytes(body), available_at, now))
            if delay <= 0:
                self._wake_all()
            return
        statement = sa.insert(table).values(
            queue=self.queue,
            msg_key=key,
            body=bytes(body),
            available_at=available_at,
            lease=None,
            deliveries=0,
            state=_READY,
            dead_reason="",
            created_at=now,
        )
        with _translate("publish"):
            async with self._connect() as conn, conn.begin():
                await conn.execute(statement)
        if delay <= 0:
            self._wake_all()

    def consume(self, *, prefetch: int) -> SQLConsumer:
        """Return an async iterator of deliveries, at most ``prefetch`` unsettled at once.

        Its ``__anext__`` raises :class:`QueueError` when a claim fails (the
        iterator stays usable); it stops when its ``aclose()`` is called or
        the queue is closed.

        Raises:
            ValueError: ``prefetch`` is less than 1.
            QueueError: the queue is not open.
        """
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        if self._closed:
            raise QueueError("sql queue is not open")
        consumer = SQLConsumer(self, prefetch)
        self._consumers.add(consumer)
        return consumer

    async def depth(self) -> int:
        """Rows of this queue waiting, ready or delayed; rows under a live lease are not counted.

        Raises:
            QueueError: not open, or the database failed.
        """
        now = _now_ms()
        statement = (
            sa.select(sa.func.count())
            .select_from(table)
            .where(
                table.c.queue == self.queue,
                table.c.state == _READY,
                sa.or_(table.c.lease.is_(None), table.c.available_at <= now),
            )
        )
        with _translate("count"):
            async with self._connect() as conn:
                return int((await conn.execute(statement)).scalar_one())

    # --- internals ---------------------------------------------------------

    def _connect(self) -> AsyncConnection:
        if self._engine is None:
            raise QueueError("sql queue is not open")
        return self._engine.connect()

    def _wake_all(self) -> None:
        for consumer in self._consumers:
            consumer._wake.set()

    async def _update(self, statement: sa.Update, action: str) -> int:
        """Run one UPDATE in a transaction of its own; return how many rows it changed.

        Raises:
            QueueError: not open, or the database failed.
        """
        with _translate(action):
            if self._line is not None:
                return await self._line.update(statement)
            async with self._connect() as conn, conn.begin():
                return int((await conn.execute(statement)).rowcount)

    def _forget(self, delivery: SQLDelivery) -> None:
        """``delivery`` is settled: nothing to give back on close."""
        self._unsettled.pop(delivery, None)

    async def _delete(self, leases: list[tuple[int, str]]) -> list[bool]:
        """Delete the rows still held under these leases, in one transaction; report each."""
        if self._line is not None:
            params = [*(row_id for row_id, _ in leases), *(v for lease in leases for v in lease)]
            with _translate("ack"):
                deleted = await self._line.fetch(_sqlite_ack(len(leases)), params)
            gone = {(int(row_id), str(lease)) for row_id, lease in deleted}
            return [lease in gone for lease in leases]
        # the ids first, so that the rows are found (and locked) by the primary key alone
        held = sa.and_(
            table.c.id.in_(sorted({row_id for row_id, _ in leases})),
            sa.tuple_(table.c.id, table.c.lease).in_(leases),
            table.c.state == _READY,
        )
        with _translate("ack"):
            async with self._connect() as conn:
                if conn.dialect.name in ("mysql", "mariadb"):
                    # as in _claim: lock the rows read, not the gaps between them
                    await conn.execution_options(isolation_level="READ COMMITTED")
                async with conn.begin():
                    if conn.dialect.name == "sqlite":
                        # the first write takes SQLite's write lock: the rows read next are the rows deleted
                        await conn.execute(sa.update(table).where(held).values(lease=table.c.lease))
                    found = await conn.execute(
                        sa.select(table.c.id, table.c.lease).where(held).with_for_update()
                    )
                    mine = {(int(row_id), str(lease)) for row_id, lease in found.all()}
                    if mine:
                        await conn.execute(sa.delete(table).where(table.c.id.in_(sorted(i for i, _ in mine))))
        return [lease in mine for lease in leases]

    async def _claim(self, consumer: SQLConsumer, limit: int) -> list[SQLDelivery]:
        now = _now_ms()
        token = secrets.token_hex(16)
        ready = (
            table.c.queue == self.queue,
            table.c.state == _READY,
            table.c.available_at <= now,
        )
        claimed = {
            "lease": token,
            "available_at": now + int(self.lease * 1000),
            "deliveries": table.c.deliveries + 1,
        }
        rows: list[tuple[int, str, bytes, int]]
        with _translate("claim messages"):
            if self._line is not None:
                params = (token, now + int(self.lease * 1000), self.queue, now, limit)
                rows = [(r[0], r[1], r[2], r[3]) for r in await self._line.fetch(_SQLITE_CLAIM, params)]
                return self._handed_out(consumer, token, rows)
            async with self._connect() as conn:
                if conn.dialect.name == "sqlite":
                    candidates = (
                        sa.select(table.c.id)
                        .where(*ready)
                        .order_by(table.c.available_at, table.c.id)
                        .limit(limit)
                    )
                    statement = (
                        sa.update(table)
                        .where(table.c.id.in_(candidates))
                        .values(claimed)
                        .returning(table.c.id, table.c.msg_key, table.c.body, table.c.deliveries)
                    )
                    async with conn.begin():
                        rows = [tuple(row) for row in (await conn.execute(statement)).all()]
                else:
                    if conn.dialect.name in ("mysql", "mariadb"):
                        # InnoDB then locks only the rows it claims, not the gaps
                        # (REPEATABLE READ would), which would block concurrent publishes.
                        await conn.execution_options(isolation_level="READ COMMITTED")
                    async with conn.begin():
                        found = (
                            await conn.execute(
                                sa.select(table.c.id, table.c.msg_key, table.c.body, table.c.deliveries)
                                .where(*ready)
                                .order_by(table.c.available_at, table.c.id)
                                .limit(limit)
                                .with_for_update(skip_locked=True)
                            )
                        ).all()
                        if found:
                            await conn.execute(
                                sa.update(table)
                                .where(table.c.id.in_([row.id for row in found]))
                                .values(claimed)
                            )
                    rows = [(row.id, row.msg_key, row.body, row.deliveries + 1) for row in found]
        return self._handed_out(consumer, token, rows)

    def _handed_out(
        self, consumer: SQLConsumer, token: str, rows: list[tuple[int, str, bytes, int]]
    ) -> list[SQLDelivery]:
        deliveries = [
            SQLDelivery(self, consumer, int(row_id), key, bytes(body), int(count), token)
            for row_id, key, body, count in sorted(rows, key=lambda row: row[0])
        ]
        for delivery in deliveries:
            self._unsettled[delivery] = None
        return deliveries
