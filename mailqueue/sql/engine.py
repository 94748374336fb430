"""URLs and engines of the SQL backends: check a store URL, create its async engine.

The bare schemes ``sqlite:``, ``mysql:``, ``mariadb:`` and ``postgresql:``
choose the asyncio drivers; mailqueue's own query options (``migrate``,
``pool_size``, ``echo``) are taken out before SQLAlchemy sees the URL. The URL
format is described in :mod:`mailqueue.sql.store`.
"""

from __future__ import annotations

import contextlib
import importlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from mailqueue.backends._base import translate_errors
from mailqueue.errors import ConfigurationError, MissingDependencyError, StoreError

__all__ = ["make_engine", "parse_url"]

#: Bare schemes and the async driver each one means.
BARE_SCHEMES = {
    "sqlite": "sqlite+aiosqlite",
    "mysql": "mysql+asyncmy",
    "mariadb": "mariadb+asyncmy",
    "postgresql": "postgresql+asyncpg",
}
#: Optional drivers: the package to import and the extra that installs it.
_DRIVER_EXTRAS = {"asyncmy": ("asyncmy", "mysql"), "asyncpg": ("asyncpg", "postgres")}
#: Query options that mailqueue reads (and removes before SQLAlchemy sees the URL).
OPTIONS = ("migrate", "pool_size", "echo")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _bool_option(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"store URL option {name!r} must be true or false, not {value!r}")


def safe_url(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def parse_url(url: str | URL) -> URL:
    """Check an SQLAlchemy async URL and map a bare scheme to its driver.

    Returns:
        The URL to hand to SQLAlchemy, e.g. ``mysql+asyncmy://...`` for
        ``mysql://...``.

    Raises:
        ConfigurationError: not a URL, an unknown dialect, a synchronous
            driver, or an in-memory SQLite database.
        MissingDependencyError: the driver (asyncmy, asyncpg) is not installed.
    """
    parsed = checked_url(url)
    if parsed.drivername in BARE_SCHEMES:
        parsed = parsed.set(drivername=BARE_SCHEMES[parsed.drivername])
    try:
        dialect = parsed.get_dialect()
    except (sa.exc.NoSuchModuleError, sa.exc.ArgumentError):
        raise ConfigurationError(f"no SQLAlchemy dialect for store scheme {parsed.drivername!r}") from None
    if dialect.driver in _DRIVER_EXTRAS:
        package, extra = _DRIVER_EXTRAS[dialect.driver]
        try:
            importlib.import_module(package)
        except ImportError:
            raise MissingDependencyError(package, extra) from None
    if not getattr(dialect, "is_async", False):
        raise ConfigurationError(
            f"store scheme {parsed.drivername!r} is not an asyncio driver; use e.g. "
            "sqlite+aiosqlite, mysql+asyncmy or postgresql+asyncpg"
        )
    if dialect.name == "sqlite" and (
        parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
    ):
        raise ConfigurationError("an in-memory SQLite database cannot be shared; use the memory:// store")
    return parsed


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
    if isinstance(url_or_engine, AsyncEngine):
        yield url_or_engine
        return
    engine = make_engine(strip_options(checked_url(url_or_engine))[0], single_use=True)
    try:
        yield engine
    finally:
        await engine.dispose()


def checked_url(url: str | URL) -> URL:
    """:func:`sqlalchemy.engine.make_url` raising :class:`ConfigurationError`."""
    try:
        return make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigurationError("the store URL is not a valid SQLAlchemy URL") from None


def strip_options(url: URL) -> tuple[URL, dict[str, Any]]:
    """Take mailqueue's own query options out of ``url``, as keyword arguments of :class:`SQLStore`."""
    options: dict[str, Any] = {}
    for name in OPTIONS:
        if name not in url.query:
            continue
        value = url.query[name]
        if not isinstance(value, str):
            raise ConfigurationError(f"store URL option {name!r} is given more than once")
        if name == "pool_size":
            if not value.isdigit() or int(value) < 1:
                raise ConfigurationError(
                    f"store URL option 'pool_size' must be a positive integer, not {value!r}"
                )
            options[name] = int(value)
        else:
            options[name] = _bool_option(name, value)
    return url.difference_update_query(list(options)), options
