# What this module relies on, under the public APIs (check it when upgrading either):
# - SQLAlchemy: AsyncConnection.get_raw_connection().driver_connection (the driver's own
#   connection, kept in Connection.info, which lives as long as the DBAPI connection); a
#   compiled statement's SQLCompiler.string, .positiontup and .binds, and the types'
#   bind_processor(), to run fixed SQL text without Core's per-call work;
#   DBAPIError.instance() with dialect.loaded_dbapi.Error, to raise driver errors as Core does.
# - asyncmy: Connection.cursor() as an async context manager, execute()/executemany() in the
#   "format" paramstyle, rowcount/description/fetchall(), commit()/rollback() outside
#   SQLAlchemy's transaction, and the private _stmt_cache_size (server-side prepared
#   statements kept; read per statement; bulk-bound executemany on MariaDB).
# Tested with SQLAlchemy 2.1.9 and asyncmy 0.2.18 (MariaDB 10.11), asyncpg 0.32.0 and
# aiosqlite 0.22.1, which take the generic path (exec_driver_sql).
"""The SQL store's fast path: statements compiled once, straight to the driver, on kept connections.

The worker's reads and writes and the API's inserts are small, frequent
batches; SQLAlchemy's per-call work (cache key, compiled-cache lookup,
execution context, greenlet hop) and the pool's per-checkout round trips cost
as much as the database's own work for them. :class:`Prepared` runs a
statement's compiled text directly, :class:`KeptConnection` keeps one
connection per kind of batch. Everything here that reaches under
SQLAlchemy's public API is listed in the comment above.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.compiler import SQLCompiler

from mailqueue.errors import MailQueueError

T = TypeVar("T")

#: Where a connection's ``info`` keeps its asyncmy connection (see :func:`_driver`).
_DRIVER = "mailqueue.driver"


class Mismatch(Exception):
    """An UPDATE on MySQL/MariaDB did not match every record of its run."""


class Prepared:
    """A statement compiled once for a dialect, run without Core's per-call work.

    Executing a Core statement costs, on every call, its cache key, a lookup
    in the compiled cache and the expansion of ``IN`` lists; for the worker's
    one-row reads that was as much as the driver's own work. Here the SQL text
    and the order of its parameters are fixed; a call only applies the types'
    bind processors (e.g. SQLite's text dates). Parameters that have a value
    in the statement (constants) need not be given.

    On MySQL/MariaDB the text goes straight to the asyncmy connection under
    the SQLAlchemy connection (in its transaction): SQLAlchemy's execution
    context and greenlet hop cost about as much as asyncmy's own work, and
    asyncmy takes the same ``format`` parameters (see :func:`execute_direct`).
    Elsewhere it goes through ``exec_driver_sql``.
    """

    __slots__ = ("defaults", "direct", "names", "processors", "sql")

    def __init__(self, statement: sa.ClauseElement, dialect: sa.Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        self.names = tuple(compiled.positiontup or ())
        binds = compiled.binds
        self.defaults = {name: bind.value for name, bind in binds.items() if bind.value is not None}
        self.processors = tuple(
            binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in self.names
        )
        self.direct = dialect.driver == "asyncmy" and dialect.paramstyle == "format"

    async def run(self, connection: AsyncConnection, params: Mapping[str, Any]) -> tuple[int, Sequence[Any]]:
        """Execute; return the number of rows matched and the rows returned."""
        defaults = self.defaults
        args = []
        for name, process in zip(self.names, self.processors, strict=True):
            value = params[name] if name in params else defaults[name]
            args.append(value if process is None or value is None else process(value))
        if self.direct:
            return await execute_direct(connection, self.sql, tuple(args))
        result = await connection.exec_driver_sql(self.sql, tuple(args))
        return result.rowcount, result.all() if result.returns_rows else ()


#: A kept connection unused for longer than this is pinged before it is used again.
KEPT_IDLE_PING = 10.0
#: A kept connection older than this is replaced before use (as the pool's ``pool_recycle``).
KEPT_MAX_AGE = 3600.0
#: Server-side prepared statements asyncmy keeps on the connection of the inserts (one per
#: set of columns that are not NULL in every row of a batch: a few).
INSERT_STATEMENTS = 8


async def _driver(connection: AsyncConnection) -> Any:
    """The driver's own connection under ``connection`` (asyncmy's), kept in its ``info``,
    which lives as long as the DBAPI connection: no greenlet hop per statement."""
    driver = connection.info.get(_DRIVER)
    if driver is None:
        driver = connection.info[_DRIVER] = (await connection.get_raw_connection()).driver_connection
    return driver


async def execute_direct(
    connection: AsyncConnection, sql: str, args: Sequence[Any], *, many: bool = False
) -> tuple[int, Sequence[Any]]:
    """Execute ``sql`` (``format`` paramstyle) on the asyncmy connection under ``connection``,
    in its transaction; ``many``: once per row of ``args`` (on MariaDB with a statement cache,
    one bulk-bound statement). Return the number of rows matched and the rows returned.

    The driver's errors are raised as SQLAlchemy raises them (e.g. ``IntegrityError``), so
    that :func:`translated` turns them into :class:`StoreError` like any other.
    """
    driver = await _driver(connection)
    with _as_sqlalchemy_error(connection, sql):
        async with driver.cursor() as cursor:
            if many:
                await cursor.executemany(sql, args)
            else:
                await cursor.execute(sql, args)
            rows = await cursor.fetchall() if cursor.description else ()
            return int(cursor.rowcount), rows


@contextlib.contextmanager
def _as_sqlalchemy_error(connection: AsyncConnection, sql: str) -> Iterator[None]:
    """Raise the driver's errors in the work on asyncmy directly as SQLAlchemy raises them
    (e.g. ``OperationalError``, ``IntegrityError``), which :func:`translated` turns into
    :class:`StoreError`: a lost connection must never escape the store as the driver's own."""
    try:
        yield
    except (MailQueueError, sa.exc.SQLAlchemyError):
        raise
    except Exception as exc:
        dialect = connection.dialect
        raise sa.exc.DBAPIError.instance(
            sql, None, exc, dialect.loaded_dbapi.Error, hide_parameters=True, dialect=dialect
        ) from exc


async def _end(connection: AsyncConnection, *, commit: bool) -> None:
    """Commit (or roll back) the transaction of ``connection``, begun by SQLAlchemy or,
    for statements that went straight to asyncmy (:func:`execute_direct`), by the driver."""
    if connection.in_transaction():
        await (connection.commit() if commit else connection.rollback())
    elif connection.dialect.driver == "asyncmy":
        driver = await _driver(connection)
        with _as_sqlalchemy_error(connection, "COMMIT" if commit else "ROLLBACK"):
            await (driver.commit() if commit else driver.rollback())


async def _discard(connection: AsyncConnection) -> None:
    """Close ``connection`` for good (its state is unknown): it never returns to the pool."""
    with contextlib.suppress(Exception):
        await connection.invalidate()
    with contextlib.suppress(Exception):
        await connection.close()


class KeptConnection:
    """One connection of the store's engine kept for one kind of group commit.

    Taking a pooled connection costs a round trip (the pre-ping) and handing
    it back another (the rollback that resets it): as much as the work of the
    small batches of the worker (:meth:`SQLStore.get_many`,
    :meth:`SQLStore.update_many`) and of the API (:meth:`SQLStore.add_many`,
    :meth:`SQLStore.clear_last_error`). So each kind keeps one connection:

    - Idle: one unused for :data:`KEPT_IDLE_PING` seconds is pinged before
      use, and replaced if the ping fails (a restarted database costs no
      failed call after a quiet spell); one older than :data:`KEPT_MAX_AGE` is
      replaced.
    - Failure: a call that fails (or is cancelled) throws the connection away
      and raises (:class:`StoreError`, through the store's translation); the
      next call connects anew. Only an ``IntegrityError`` (a constraint said
      no) and :class:`Mismatch` (the store redoes the batch) leave it in
      use, rolled back.
    - Busy: a call made while the connection is in use takes a pooled one, so
      callers never wait for each other.

    ``autocommit``: each statement commits on its own (reads then see the
    newest data, with no COMMIT round trip); otherwise each call is one
    transaction, committed at its end. ``statement_cache``: on asyncmy, the
    number of server-side prepared statements the driver keeps on this
    connection (0: none, every statement goes as text); on MariaDB that makes
    ``executemany`` one bulk-bound statement.
    """

    def __init__(self, *, autocommit: bool, statement_cache: int = 0) -> None:
        self._autocommit = autocommit
        self._statement_cache = statement_cache
        self._connection: AsyncConnection | None = None
        self._busy = False
        self._opened = 0.0
        self._used = 0.0

    async def run(self, engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """``work`` on the kept connection (a pooled one if it is busy), then commit."""
        if self._busy:
            async with engine.connect() as pooled:
                if self._autocommit:
                    await pooled.execution_options(isolation_level="AUTOCOMMIT")
                return await self._call(pooled, work)
        self._busy = True
        try:
            connection = await self._connect(engine)
            try:
                result = await self._call(connection, work)
            except (sa.exc.IntegrityError, Mismatch):
                # the database's or the store's own verdict: the connection is fine once rolled back
                if not self._autocommit:
                    try:
                        await _end(connection, commit=False)
                    except BaseException:
                        await self._discard()
                        raise
                raise
            except BaseException:
                await self._discard()
                raise
            self._used = time.monotonic()
            return result
        finally:
            self._busy = False

    async def _call(self, connection: AsyncConnection, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        result = await work(connection)
        if not self._autocommit:
            await _end(connection, commit=True)
        return result

    async def _connect(self, engine: AsyncEngine) -> AsyncConnection:
        """The kept connection, pinged if it was idle, or a new one."""
        connection = self._connection
        now = time.monotonic()
        if connection is not None and now - self._opened > KEPT_MAX_AGE:
            await self._discard()
            connection = None
        elif connection is not None and now - self._used > KEPT_IDLE_PING:
            try:
                # in the call's transaction, if it has one (committed with it)
                await connection.exec_driver_sql("SELECT 1")
            except Exception:
                # gone while idle (e.g. the server restarted): a new one, as the pool's pre-ping would
                await self._discard()
                connection = None
        if connection is None:
            connection = await engine.connect()
            try:
                if self._autocommit:
                    await connection.execution_options(isolation_level="AUTOCOMMIT")
                if self._statement_cache and connection.dialect.driver == "asyncmy":
                    driver = await _driver(connection)
                    # asyncmy reads it per statement; the connection never goes back to the pool
                    if hasattr(driver, "_stmt_cache_size"):
                        driver._stmt_cache_size = self._statement_cache
            except BaseException:
                await _discard(connection)
                raise
            self._connection, self._opened = connection, now
        return connection

    async def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await _discard(connection)

    async def close(self) -> None:
        """Close the kept connection (for good: it does not go back to the pool)."""
        await self._discard()


@functools.cache
def format_insert(quoted: tuple[str, ...]) -> str:
    """``INSERT INTO email (...) VALUES (%s, ...)`` in the ``format`` paramstyle."""
    return f"INSERT INTO email ({', '.join(quoted)}) VALUES ({', '.join(['%s'] * len(quoted))})"
