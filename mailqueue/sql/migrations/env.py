"""Alembic environment of mailqueue's migrations.

:func:`mailqueue.sql.migrate.upgrade` (and so ``mailqueue db upgrade`` and
``SQLStore.open()``) runs Alembic programmatically: it opens a connection of
the store's async engine, takes a migration lock, and hands the synchronous
side of the connection in ``config.attributes["connection"]`` from inside
``AsyncConnection.run_sync``.

For Alembic's own command line (e.g. ``alembic revision --autogenerate`` while
developing mailqueue), give the database as ``sqlalchemy.url``; the async
engine is then created here and the migrations run through ``run_sync``.
Offline (``--sql``) mode is not supported.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from mailqueue.sql.schema import VERSION_TABLE, metadata


def run_migrations(connection: Connection) -> None:
    """Run the migrations on a synchronous connection (inside ``run_sync``)."""
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_with_url(url: str) -> None:
    """Create the async engine for ``url`` and run the migrations through ``run_sync``."""
    from mailqueue.sql.engine import make_engine

    engine = make_engine(url, single_use=True)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def main() -> None:
    """Alembic's entry point: pick the connection given by the caller, or the configured URL."""
    if context.is_offline_mode():
        raise RuntimeError("mailqueue's migrations cannot run in offline (--sql) mode")
    connection = context.config.attributes.get("connection")
    if isinstance(connection, Connection):
        run_migrations(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("run mailqueue's migrations with `mailqueue db upgrade` or set sqlalchemy.url")
    asyncio.run(run_with_url(url))


main()
