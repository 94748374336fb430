"""The Alembic runner: mailqueue's schema revisions (``migrations/``, :mod:`mailqueue.sql.schema`).

:func:`upgrade` and :func:`downgrade` run Alembic programmatically on a
connection of the store's engine, under a lock in the database, so that
processes that start together migrate once; :func:`current` and
:func:`head_revision` tell where the database and this version are. Used by
:meth:`mailqueue.sql.store.SQLStore.open` and ``mailqueue db upgrade``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from mailqueue.errors import StoreError
from mailqueue.sql import schema
from mailqueue.sql.engine import engine_for, translated
from mailqueue.sql.url import safe_url

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = ["current", "downgrade", "head_revision", "upgrade"]

logger = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).parent / "migrations"
# An arbitrary constant naming mailqueue's migration lock on PostgreSQL.
_PG_LOCK_KEY = 0x6D61696C71756575
_MYSQL_LOCK_NAME = "mailqueue_migrations"
_MYSQL_LOCK_SECONDS = 600


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config())


def head_revision() -> str:
    """The newest revision of mailqueue's schema that this version knows."""
    head = _scripts().get_current_head()
    assert head is not None
    return head


def known_revision(revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


def _current_sync(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": schema.VERSION_TABLE})
    return context.get_current_revision()


async def current(url_or_engine: str | URL | AsyncEngine) -> str | None:
    """The database's schema revision, ``None`` if mailqueue never migrated it.

    Raises:
        StoreError: the database cannot be reached.
        ConfigurationError: the URL cannot be used.
    """
    async with engine_for(url_or_engine) as engine:
        with translated(f"cannot read the schema revision of {safe_url(engine.url)}"):
            async with engine.connect() as connection:
                return await connection.run_sync(_current_sync)


async def _locked(engine: AsyncEngine, work: Callable[[Connection], None]) -> None:
    """Run ``work`` on one connection while holding mailqueue's migration lock.

    PostgreSQL: a session advisory lock; MySQL/MariaDB: ``GET_LOCK``; SQLite:
    the database's write lock (``BEGIN IMMEDIATE``, the migration runs in that
    transaction). A second process waits for the first and then finds the
    schema up to date.
    """
    name = engine.dialect.name
    async with engine.connect() as connection:
        if name == "sqlite":
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                await connection.run_sync(work)
            except BaseException:
                await connection.exec_driver_sql("ROLLBACK")
                raise
            await connection.exec_driver_sql("COMMIT")
            return
        if name == "postgresql":
            lock = sa.text("SELECT pg_advisory_lock(:key)").bindparams(key=_PG_LOCK_KEY)
            unlock = sa.text("SELECT pg_advisory_unlock(:key)").bindparams(key=_PG_LOCK_KEY)
        elif name in ("mysql", "mariadb"):
            lock = sa.text("SELECT GET_LOCK(:name, :seconds)").bindparams(
                name=_MYSQL_LOCK_NAME, seconds=_MYSQL_LOCK_SECONDS
            )
            unlock = sa.text("SELECT RELEASE_LOCK(:name)").bindparams(name=_MYSQL_LOCK_NAME)
        else:
            await connection.run_sync(work)
            await connection.commit()
            return
        got = (await connection.execute(lock)).scalar()
        if name != "postgresql" and got != 1:  # GET_LOCK: 1 taken, 0 timed out
            raise StoreError(f"another process held the migration lock for over {_MYSQL_LOCK_SECONDS} s")
        await connection.commit()
        try:
            await connection.run_sync(work)
            await connection.commit()
        finally:
            try:
                await connection.rollback()
                await connection.execute(unlock)
                await connection.commit()
            except sa.exc.SQLAlchemyError:
                # the session is unusable; closing it for good releases the lock
                await connection.invalidate()


async def _migrate(url_or_engine: str | URL | AsyncEngine, revision: str, *, down: bool) -> None:
    from alembic import command

    def work(connection: Connection) -> None:
        config = _alembic_config()
        config.attributes["connection"] = connection
        if down:
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)

    async with engine_for(url_or_engine) as engine:
        safe = safe_url(engine.url)
        with translated(f"cannot migrate {safe}"):
            if not down:
                async with engine.connect() as connection:
                    now = await connection.run_sync(_current_sync)
                if now is not None and not known_revision(now):
                    raise StoreError(
                        f"{safe} is at schema revision {now!r}, which this version of mailqueue does not know"
                    )
                if now == (head_revision() if revision == "head" else revision):
                    return
            logger.info("migrating %s to schema revision %s", safe, revision)
            await _locked(engine, work)


async def upgrade(url_or_engine: str | URL | AsyncEngine, revision: str = "head") -> None:
    """Bring the database's schema up to ``revision`` (the newest by default).

    Creates mailqueue's tables in a new database, or adopts the original
    service's ``email`` table by adding columns. Running it again changes
    nothing. Concurrent calls (several processes starting at once) are
    serialized by a lock in the database; the later ones then find the schema
    up to date.

    Args:
        url_or_engine: a store URL (mailqueue's query options are checked, then ignored) or
            an open engine.
        revision: the revision to reach.

    Raises:
        StoreError: the database cannot be reached or a migration failed, or
            the database is at a revision this version does not know (a newer
            mailqueue migrated it).
        ConfigurationError: the URL cannot be used.
    """
    await _migrate(url_or_engine, revision, down=False)


async def downgrade(url_or_engine: str | URL | AsyncEngine, revision: str) -> None:
    """Take the schema back to ``revision`` (``"base"``: before mailqueue's changes).

    The ``email`` table and its original columns are always kept.

    Raises:
        StoreError: the database cannot be reached or a migration failed.
        ConfigurationError: the URL cannot be used.
    """
    await _migrate(url_or_engine, revision, down=True)
