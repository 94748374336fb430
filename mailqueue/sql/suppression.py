"""The suppression list in SQL: the ``mailqueue_suppression`` table (revision 0004).

Functions that take the store's :class:`~mailqueue.sql.database.Database`, like
:mod:`~mailqueue.sql.reads` and :mod:`~mailqueue.sql.writes`;
:class:`~mailqueue.sql.store.SQLStore` delegates its
:class:`~mailqueue.protocols.SuppressionStore` methods to them. Times are kept
naive UTC, to the second on MySQL/MariaDB (as ``email``'s). An add is one
upsert of the database's own kind (``ON CONFLICT`` on PostgreSQL and SQLite,
``ON DUPLICATE KEY UPDATE`` on MySQL/MariaDB), so concurrent adds of one
address never fail on the unique index.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from mailqueue.sql.database import Database
from mailqueue.sql.rows import naive_utc
from mailqueue.sql.schema import suppression
from mailqueue.suppression import Suppression, SuppressionQuery, SuppressionReason

__all__ = ["add", "count", "list_entries", "lookup", "remove"]

#: Most addresses one lookup statement carries (bound parameters are limited).
_LOOKUP_CHUNK = 500


def _values(db: Database, entry: Suppression) -> dict[str, Any]:
    return {
        "address": entry.address,
        "reason": entry.reason.value,
        "mail_id": entry.mail_id,
        "text": entry.text or None,
        "created_at": db.db_time(entry.created_at),
        "expires_at": db.db_time(entry.expires_at),
    }


def _entry(row: Any) -> Suppression:
    return Suppression(
        address=row["address"],
        reason=SuppressionReason(row["reason"]),
        mail_id=row["mail_id"],
        text=row["text"] or "",
        created_at=row["created_at"].replace(tzinfo=UTC),
        expires_at=None if row["expires_at"] is None else row["expires_at"].replace(tzinfo=UTC),
    )


def _upsert(dialect: str, values: dict[str, Any]) -> sa.Executable:
    changed = {name: value for name, value in values.items() if name != "address"}
    if dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects import mysql

        mysql_insert = mysql.insert(suppression).values(**values)
        return mysql_insert.on_duplicate_key_update(**changed)
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        pg_insert = postgresql.insert(suppression).values(**values)
        return pg_insert.on_conflict_do_update(index_elements=["address"], set_=changed)
    from sqlalchemy.dialects import sqlite

    sqlite_insert = sqlite.insert(suppression).values(**values)
    return sqlite_insert.on_conflict_do_update(index_elements=["address"], set_=changed)


async def add(db: Database, entry: Suppression) -> Suppression:
    """Insert ``entry`` or replace the address's entry; return it as stored."""
    values = _values(db, entry)

    async def work(engine: AsyncEngine) -> Suppression:
        async with engine.begin() as connection:
            await connection.execute(_upsert(db.dialect_name, values))
        return _entry(values)

    return await db.run("add a suppression", work)


async def remove(db: Database, address: str) -> bool:
    """Delete the address's entry; ``False`` if there was none."""

    async def work(engine: AsyncEngine) -> bool:
        async with engine.begin() as connection:
            done = await connection.execute(suppression.delete().where(suppression.c.address == address))
        return bool(done.rowcount)

    return await db.run("remove a suppression", work)


def _active(moment: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(suppression.c.expires_at.is_(None), suppression.c.expires_at > naive_utc(moment))


async def lookup(db: Database, addresses: Sequence[str], *, now: datetime) -> dict[str, Suppression]:
    """The entries of ``addresses`` not expired at ``now``, in one query (per 500 addresses)."""
    wanted = sorted(set(addresses))
    if not wanted:
        return {}

    async def work(engine: AsyncEngine) -> dict[str, Suppression]:
        found: dict[str, Suppression] = {}
        async with engine.connect() as connection:
            for start in range(0, len(wanted), _LOOKUP_CHUNK):
                stmt = sa.select(suppression).where(
                    suppression.c.address.in_(wanted[start : start + _LOOKUP_CHUNK]), _active(now)
                )
                for row in (await connection.execute(stmt)).mappings().all():
                    found[row["address"]] = _entry(row)
        return found

    return await db.run("look up suppressions", work)


def _where(query: SuppressionQuery) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if query.address:
        where.append(suppression.c.address.contains(query.address.lower(), autoescape=True))
    if query.reason is not None:
        where.append(suppression.c.reason == query.reason.value)
    if query.active_only:
        where.append(_active(datetime.now(UTC)))
    return where


async def list_entries(db: Database, query: SuppressionQuery) -> list[Suppression]:
    """A page of the entries matching ``query``, newest first then by address."""
    stmt = (
        sa.select(suppression)
        .where(*_where(query))
        .order_by(suppression.c.created_at.desc(), suppression.c.address)
        .limit(query.limit)
        .offset(query.offset)
    )

    async def work(engine: AsyncEngine) -> list[Suppression]:
        async with engine.connect() as connection:
            return [_entry(row) for row in (await connection.execute(stmt)).mappings().all()]

    return await db.run("list suppressions", work)


async def count(db: Database, query: SuppressionQuery) -> int:
    """How many entries match ``query``."""
    stmt = sa.select(sa.func.count()).select_from(suppression).where(*_where(query))

    async def work(engine: AsyncEngine) -> int:
        async with engine.connect() as connection:
            return int((await connection.execute(stmt)).scalar_one())

    return await db.run("count suppressions", work)
