"""Engines of the SQL backends: create the async engine of a store URL (checked
by :mod:`mailqueue.sql.url`), and turn the database's errors into ours.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from mailqueue.backends._base import translate_errors
from mailqueue.errors import ConfigurationError, StoreError
from mailqueue.sql.url import parse_url, split_options

__all__ = ["engine_for", "make_engine", "translated"]


def _sqlite_on_connect(dbapi_connection: Any, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout = 30000")
        # WAL is kept in the file: only a new database needs switching. The
        # switch fails at once, without waiting, while another connection
        # writes; that one is then switching (or has switched) it already.
        cursor.execute("PRAGMA journal_mode")
        if cursor.fetchone()[0] != "wal":
            try:
                cursor.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    raise
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def make_engine(
    url: str | URL, *, pool_size: int | None = None, echo: bool = False, single_use: bool = False
) -> AsyncEngine:
    """Create the async engine for a store URL (see :func:`parse_url`).

    SQLite connections get WAL, a 30 s busy timeout and ``synchronous =
    NORMAL``, and the database file's folder is created; server connections
    are checked before use. Statement parameters never appear in error
    messages (they hold mail contents).

    Args:
        url: the database URL, without mailqueue's query options.
        pool_size: connections kept in the pool.
        echo: log every statement.
        single_use: no pool (one-off jobs such as ``mailqueue db upgrade``).

    Raises:
        ConfigurationError: see :func:`parse_url`; also if the SQLite folder
            cannot be created.
    """
    parsed = parse_url(url)
    dialect_name = parsed.get_dialect().name
    options: dict[str, Any] = {"echo": echo, "hide_parameters": True}
    if single_use:
        options["poolclass"] = NullPool
    elif pool_size is not None:
        options["pool_size"] = pool_size
    if dialect_name == "sqlite":
        database = parsed.database or ""
        if database.startswith("file:"):
            database = urlsplit(database).path
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"cannot create the folder of the SQLite database: {exc}") from None
    else:
        options["pool_pre_ping"] = True
        options["pool_recycle"] = 3600
    engine = create_async_engine(parsed, **options)
    if dialect_name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
    return engine


def translated(action: str) -> contextlib.AbstractContextManager[None]:
    """Turn any exception of the database or its driver into :class:`StoreError`."""
    return translate_errors(StoreError, action)


@contextlib.asynccontextmanager
async def engine_for(url_or_engine: str | URL | AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """The given engine, or a one-off engine for a store URL (mailqueue's options checked,
    then left out), disposed at the end."""
    if isinstance(url_or_engine, AsyncEngine):
        yield url_or_engine
        return
    engine = make_engine(split_options(url_or_engine)[0], single_use=True)
    try:
        yield engine
    finally:
        await engine.dispose()
