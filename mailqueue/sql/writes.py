"""The SQL store's inserts and removals: new records (one, or the API's group
commits), the API's clearing of marks, and the deletion of records (see
:class:`~mailqueue.sql.store.SQLStore` for the contracts; the changes of
records are in :mod:`mailqueue.sql.changes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mailqueue.errors import StoreError
from mailqueue.records import Attempt, MailRecord, Status, utcnow
from mailqueue.sql import schema
from mailqueue.sql.database import Database, uid_params
from mailqueue.sql.fastpath import execute_direct, format_insert
from mailqueue.sql.reads import by_key
from mailqueue.sql.rows import ERROR_CHARS, attempt_of, attempt_values, clip, record_of, row_values

__all__ = ["add", "add_many", "clear_last_error", "delete_records"]

email = schema.email
email_attempt = schema.email_attempt

#: One statement object for every insert, so that its compiled form is cached.
_INSERT = email.insert()


def _clear_marks(rows: int) -> sa.Update:
    """Set ``last_error`` to ``""`` (at ``updated_at`` = ``t``) on those of the records
    ``u0`` .. ``u<rows-1>`` whose status is ``s`` and ``last_error`` is ``e``."""
    return (
        email.update()
        .where(
            email.c.uid.in_(uid_params(rows)),
            email.c.status == sa.bindparam("s", type_=email.c.status.type),
            email.c.last_error == sa.bindparam("e", type_=email.c.last_error.type),
        )
        .values(last_error="", updated_at=sa.bindparam("t", type_=email.c.updated_at.type))
    )


async def add(db: Database, record: MailRecord) -> MailRecord:
    """:meth:`SQLStore.add <mailqueue.sql.store.SQLStore.add>`."""
    key = record.mail.idempotency_key
    values = row_values(record, db.db_time)

    def stored_attempt(attempt: Attempt) -> Attempt:
        return attempt_of(attempt_values(0, attempt, db.db_time))

    async def work(engine: AsyncEngine) -> MailRecord:
        if key is not None and (existing := await by_key(engine, key)) is not None:
            return existing
        try:
            async with engine.begin() as connection:
                # parameters apart from the statement: its compiled form is cached
                result = await connection.execute(_INSERT, values)
                assert result.inserted_primary_key is not None
                email_id = result.inserted_primary_key[0]
                if record.history:
                    await connection.execute(
                        email_attempt.insert(),
                        [attempt_values(email_id, a, db.db_time) for a in record.history],
                    )
        except sa.exc.IntegrityError:
            # a concurrent add with the same key won the race
            if key is not None and (existing := await by_key(engine, key)) is not None:
                return existing
            raise StoreError(f"a record with id {record.id!r} exists already") from None
        stored = {**values, "id": email_id}
        return record_of(stored, tuple(stored_attempt(a) for a in record.history), mail=record.mail)

    return await db.run(f"add record {record.id}", work)


async def add_many(db: Database, records: Sequence[MailRecord]) -> list[MailRecord]:
    """:meth:`SQLStore.add_many <mailqueue.sql.store.SQLStore.add_many>`."""
    if any(r.mail.idempotency_key is not None or r.history for r in records):
        raise StoreError("add_many takes records without idempotency key or history")
    if not records:
        return []
    rows = [row_values(r, db.db_time) for r in records]

    async def insert(connection: AsyncConnection) -> None:
        if connection.dialect.driver == "asyncmy":
            # positional rows straight to the driver (the table's types need no bind
            # processing there), on MariaDB bound in bulk. A column NULL in every row is
            # left out (a bulk bind needs a type for each parameter): none that can be
            # NULL has a default.
            names = [name for name in rows[0] if any(row[name] is not None for row in rows)]
            quote = connection.dialect.identifier_preparer.quote
            statement = format_insert(tuple(quote(name) for name in names))
            await execute_direct(
                connection, statement, [tuple([row[name] for name in names]) for row in rows], many=True
            )
        else:
            await connection.execute(_INSERT, rows)

    async def work(engine: AsyncEngine) -> list[MailRecord]:
        try:
            await db.inserts.run(engine, insert)
        except sa.exc.IntegrityError:
            raise StoreError("a record with one of these ids exists already") from None
        return [record_of(values, mail=r.mail) for values, r in zip(rows, records, strict=True)]

    return await db.run(f"add {len(records)} records", work)


async def clear_last_error(db: Database, mail_ids: Sequence[str], expected: str) -> None:
    """:meth:`SQLStore.clear_last_error <mailqueue.sql.store.SQLStore.clear_last_error>`."""
    if not mail_ids:
        return
    # the id list padded (repeating the last id) to a power of two: a few compiled statements
    ids = list(mail_ids)
    ids += ids[-1:] * ((1 << (len(ids) - 1).bit_length()) - len(ids))
    params: dict[str, Any] = {f"u{i}": mail_id for i, mail_id in enumerate(ids)}
    params.update(t=db.db_time(utcnow()), s=Status.QUEUED.value, e=clip(expected, ERROR_CHARS))

    async def clear(connection: AsyncConnection) -> None:
        await db.prepare(("clear", len(ids)), lambda: _clear_marks(len(ids))).run(connection, params)

    async def work(engine: AsyncEngine) -> None:
        await db.writes.run(engine, clear)

    await db.run(f"clear the marks of {len(mail_ids)} records", work)


async def delete_records(
    db: Database, mail_ids: Sequence[str], statuses: frozenset[Status], soft: bool
) -> list[str]:
    """:meth:`SQLStore.delete_records <mailqueue.sql.store.SQLStore.delete_records>`."""
    if not mail_ids or not statuses:
        return []
    chosen = sa.and_(email.c.uid.in_(list(mail_ids)), email.c.status.in_(sorted(s.value for s in statuses)))
    if soft:
        chosen = sa.and_(chosen, email.c.is_deleted == 0)

    async def work(engine: AsyncEngine) -> list[str]:
        async with engine.begin() as connection:
            if engine.dialect.name == "sqlite":
                # this first write takes SQLite's write lock: the rows read next are the rows changed
                await connection.execute(email.update().where(chosen).values(updated_at=db.db_time(utcnow())))
            # FOR UPDATE (MySQL/PostgreSQL): nobody changes or adds an attempt to these rows meanwhile
            locked = sa.select(email.c.id, email.c.uid).where(chosen).with_for_update()
            rows = (await connection.execute(locked)).all()
            if not rows:
                return []
            row_ids = [row.id for row in rows]
            if soft:
                await connection.execute(
                    email.update()
                    .where(email.c.id.in_(row_ids))
                    .values(is_deleted=1, updated_at=db.db_time(utcnow()))
                )
            else:
                await connection.execute(email_attempt.delete().where(email_attempt.c.email_id.in_(row_ids)))
                await connection.execute(email.delete().where(email.c.id.in_(row_ids)))
            return [str(row.uid) for row in rows]

    return await db.run("delete records", work)
