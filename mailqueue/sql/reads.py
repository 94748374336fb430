"""The SQL store's read path: one record, the worker's batch reads, queries, counts
and the activity chart (see :class:`~mailqueue.sql.store.SQLStore` for the contracts).

Rows without a ``uid`` (written by the original service after the migration)
are left out of every query but :func:`activity`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mailqueue.records import ActivityBucket, MailRecord, RecordQuery, Status, activity_range, utcnow
from mailqueue.sql import schema
from mailqueue.sql.database import Database, uid_params
from mailqueue.sql.rows import attempt_of, naive_utc, recipient_matches, record_of

__all__ = ["activity", "by_key", "count", "count_by_status", "find", "get", "get_many", "load"]

#: The index a page of a time window is read from on MySQL/MariaDB (see ``find``).
TIME_INDEX = "ix_email_created_deleted_uid"
#: The index a subject search walks on MySQL/MariaDB (see ``find``).
SUBJECT_INDEX = "ix_email_uid_deleted_title"
#: Rows read per round when a recipient filter is checked row by row.
_RECIPIENT_BATCH = 1000

email = schema.email
email_attempt = schema.email_attempt

_UID = [column.name for column in email.columns].index("uid")


def _get_many(rows: int) -> sa.Select[Any]:
    """The rows of records ``u0`` .. ``u<rows-1>``."""
    return sa.select(email).where(email.c.uid.in_(uid_params(rows)))


async def load(connection: AsyncConnection, where: sa.ColumnElement[bool]) -> MailRecord | None:
    """The first record whose row matches ``where``, with its attempts, or ``None``."""
    row = (await connection.execute(sa.select(email).where(where))).mappings().first()
    if row is None:
        return None
    attempts = await connection.execute(
        sa.select(email_attempt).where(email_attempt.c.email_id == row["id"]).order_by(email_attempt.c.id)
    )
    return record_of(row, tuple(attempt_of(a) for a in attempts.mappings()))


async def by_key(engine: AsyncEngine, key: str) -> MailRecord | None:
    """The record whose mail has the idempotency key ``key``, or ``None``."""
    async with engine.connect() as connection:
        return await load(connection, email.c.idempotency_key == key)


async def get(db: Database, mail_id: str) -> MailRecord | None:
    """:meth:`SQLStore.get <mailqueue.sql.store.SQLStore.get>`."""

    async def work(engine: AsyncEngine) -> MailRecord | None:
        async with engine.connect() as connection:
            return await load(connection, email.c.uid == mail_id)

    return await db.run(f"read record {mail_id}", work)


async def get_many(db: Database, mail_ids: Sequence[str]) -> dict[str, MailRecord]:
    """:meth:`SQLStore.get_many <mailqueue.sql.store.SQLStore.get_many>`: one compiled
    statement per number of ids, on the connection kept for these reads."""
    wanted = list(dict.fromkeys(mail_ids))
    if not wanted:
        return {}

    async def read(connection: AsyncConnection) -> Sequence[Any]:
        stmt = db.prepare(("get", len(wanted)), lambda: _get_many(len(wanted)))
        return (await stmt.run(connection, {f"u{i}": mail_id for i, mail_id in enumerate(wanted)}))[1]

    async def work(engine: AsyncEngine) -> dict[str, MailRecord]:
        rows = await db.reads.run(engine, read)
        records = (record_of(db.row_mapping(row)) for row in rows)
        return {str(row[_UID]): record for row, record in zip(rows, records, strict=True)}

    return await db.run(f"read {len(wanted)} record(s)", work)


def conditions(query: RecordQuery) -> list[sa.ColumnElement[bool]]:
    """The WHERE of ``query`` without its cursors; a recipient is only pre-filtered."""
    where: list[sa.ColumnElement[bool]] = [email.c.uid.is_not(None)]
    if query.ids is not None:
        where.append(email.c.uid.in_(query.ids))
    if query.statuses is not None:
        where.append(email.c.status.in_(sorted(s.value for s in query.statuses)))
    # the bounds keep their microseconds: a record matches if the time it
    # is returned with (perhaps cut to the second) is in range
    if query.since is not None:
        where.append(email.c.created_at >= naive_utc(query.since))
    if query.until is not None:
        where.append(email.c.created_at < naive_utc(query.until))
    if query.idempotency_key is not None:
        where.append(email.c.idempotency_key == query.idempotency_key)
    if not query.include_deleted:
        where.append(email.c.is_deleted == 0)
    if query.code is not None:
        where.append(email.c.last_code == query.code)
    if query.subject is not None:
        where.append(email.c.title.icontains(query.subject, autoescape=True))
    if query.recipient is not None:
        # a superset: the JSON of the outcomes also holds the replies; the
        # rows are checked again in Python (recipient_matches)
        quoted = json.dumps(query.recipient, ensure_ascii=False)[1:-1]
        where.append(
            sa.or_(
                email.c.recipients.icontains(quoted, autoescape=True),
                email.c.receiver.icontains(query.recipient, autoescape=True),
            )
        )
    return where


async def find(db: Database, query: RecordQuery) -> list[MailRecord]:
    """:meth:`SQLStore.find <mailqueue.sql.store.SQLStore.find>`."""
    if query.limit < 1:
        return []
    where = conditions(query)
    newest = query.order != "oldest"
    before, after = query.before_id, query.after_id
    needle = query.recipient
    dialect = db.dialect_name
    # MariaDB/MySQL walk uq_email_uid for ORDER BY uid LIMIT n even when a
    # time window far from the newest (oldest) end holds the rows, or few
    # of them match; the window's own index, sorted, costs what the window
    # holds. Not when a status or code (with indexes of their own) is given:
    # the sweeper's "queued, older than a minute" would sort the whole table
    window_hint = (
        dialect in ("mysql", "mariadb")
        and (query.since is not None or query.until is not None)
        and query.ids is None
        and query.idempotency_key is None
        and query.statuses is None
        and query.code is None
    )
    # a subject alone is searched in an index that holds it (in uid order),
    # and only the rows of the page are read: a deferred join, since
    # MariaDB cannot check the index entries first in a descending scan
    subject_hint = (
        dialect in ("mysql", "mariadb")
        and query.subject is not None
        and query.recipient is None
        and not query.include_deleted
        and query.ids is None
        and query.statuses is None
        and query.since is None
        and query.until is None
        and query.idempotency_key is None
        and query.code is None
    )
    batch = query.limit  # false positives of the recipient pre-filter are rare: one more round

    async def work(engine: AsyncEngine) -> list[MailRecord]:
        nonlocal before, after
        found: list[MailRecord] = []
        async with engine.connect() as connection:
            while True:
                cursors = []
                if before is not None:
                    cursors.append(email.c.uid < before)
                if after is not None:
                    cursors.append(email.c.uid > after)
                order = email.c.uid.desc() if newest else email.c.uid.asc()
                if subject_hint:
                    page = (
                        sa.select(email.c.id)
                        .where(*where, *cursors)
                        .order_by(order)
                        .limit(batch)
                        .with_hint(email, f"FORCE INDEX ({SUBJECT_INDEX})", dialect_name=dialect)
                        .subquery("page")
                    )
                    stmt = sa.select(email).join(page, email.c.id == page.c.id).order_by(order)
                else:
                    stmt = sa.select(email).where(*where, *cursors).order_by(order).limit(batch)
                if window_hint:
                    stmt = stmt.with_hint(email, f"FORCE INDEX ({TIME_INDEX})", dialect_name=dialect)
                rows = (await connection.execute(stmt)).mappings().all()
                for row in rows:
                    if needle is None or recipient_matches(row, needle):
                        found.append(record_of(row))
                        if len(found) == query.limit:
                            return found
                if len(rows) < batch:
                    return found
                if newest:
                    before = rows[-1]["uid"]
                else:
                    after = rows[-1]["uid"]

    return await db.run("find records", work)


async def count(db: Database, query: RecordQuery, cap: int) -> int:
    """:meth:`SQLStore.count <mailqueue.sql.store.SQLStore.count>`."""
    if cap < 1:
        return 0
    where = conditions(query)
    needle = query.recipient

    async def work(engine: AsyncEngine) -> int:
        async with engine.connect() as connection:
            if needle is None:
                capped = sa.select(sa.literal(1).label("one")).where(*where).limit(cap).subquery()
                stmt = sa.select(sa.func.count()).select_from(capped)
                return int((await connection.execute(stmt)).scalar_one())
            total = 0
            cursor: str | None = None
            columns = (email.c.uid, email.c.recipients, email.c.receiver, email.c.receiver_name)
            while True:
                batch: sa.Select[Any] = sa.select(*columns).where(*where)
                if cursor is not None:
                    batch = batch.where(email.c.uid < cursor)
                batch = batch.order_by(email.c.uid.desc()).limit(_RECIPIENT_BATCH)
                rows = (await connection.execute(batch)).mappings().all()
                for row in rows:
                    if recipient_matches(row, needle):
                        total += 1
                        if total >= cap:
                            return total
                if len(rows) < _RECIPIENT_BATCH:
                    return total
                cursor = rows[-1]["uid"]

    return await db.run("count records", work)


async def count_by_status(db: Database, include_deleted: bool) -> dict[Status, int]:
    """:meth:`SQLStore.count_by_status <mailqueue.sql.store.SQLStore.count_by_status>`."""
    where: list[sa.ColumnElement[bool]] = [email.c.uid.is_not(None)]
    if not include_deleted:
        where.append(email.c.is_deleted == 0)
    known = sorted(s.value for s in Status)

    async def work(engine: AsyncEngine) -> dict[Status, int]:
        counts = dict.fromkeys(Status, 0)
        async with engine.connect() as connection:
            stmt = sa.select(email.c.status, sa.func.count()).where(*where).group_by(email.c.status)
            strays = False
            for status, number in (await connection.execute(stmt)).all():
                if status in known:
                    counts[Status(status)] += int(number)
                else:
                    strays = True
            if strays:
                stmt = (
                    sa.select(email.c.is_ok, sa.func.count())
                    .where(*where, email.c.status.not_in(known))
                    .group_by(email.c.is_ok)
                )
                for is_ok, number in (await connection.execute(stmt)).all():
                    counts[Status.SENT if is_ok else Status.FAILED] += int(number)
        return counts

    return await db.run("count records by status", work)


def _bucket_index(
    dialect: str, column: sa.ColumnElement[datetime], start: datetime, seconds: int
) -> sa.ColumnElement[Any]:
    """SQL for the bucket a time falls in: whole ``seconds`` since ``start``, floored."""
    if dialect in ("mysql", "mariadb"):
        # TIMESTAMPDIFF of two DATETIMEs ignores the session time zone
        elapsed: sa.ColumnElement[Any] = sa.func.timestampdiff(
            sa.literal_column("SECOND"), sa.literal(start, sa.DateTime()), column
        )
        return elapsed.op("DIV")(seconds)
    if dialect == "postgresql":
        elapsed = sa.extract("epoch", column - sa.literal(start, sa.DateTime()))
        return sa.func.floor(elapsed / seconds)
    # SQLite: strftime('%s') is whole seconds since the epoch; integer division floors (non-negative)
    epoch = int((start.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    elapsed = sa.cast(sa.func.strftime("%s", column), sa.Integer()) - epoch
    return elapsed.self_group().op("/")(seconds)


async def activity(db: Database, since: datetime, bucket: timedelta) -> list[ActivityBucket]:
    """:meth:`SQLStore.activity <mailqueue.sql.store.SQLStore.activity>`."""
    start, slots = activity_range(since, bucket, utcnow())
    if slots == 0:
        return []
    seconds = int(bucket.total_seconds())
    low = naive_utc(start)
    high = naive_utc(start + slots * bucket)
    failed = (email.c.status.in_([Status.DEAD.value, Status.FAILED.value, Status.BOUNCED.value]),)
    dialect = db.dialect_name

    def tally(column: sa.ColumnElement[datetime], *extra: sa.ColumnElement[bool]) -> sa.Select[Any]:
        index = _bucket_index(dialect, column, low, seconds).label("slot")
        return (
            sa.select(index, sa.func.count())
            .where(column >= low, column < high, *extra)
            .group_by(sa.literal_column("slot"))
        )

    async def work(engine: AsyncEngine) -> list[ActivityBucket]:
        counts = [[0] * slots for _ in range(3)]
        async with engine.connect() as connection:
            for kind, stmt in enumerate(
                (
                    tally(email.c.created_at),
                    tally(email.c.sent_at),
                    tally(email.c.updated_at, *failed),
                )
            ):
                for slot, number in (await connection.execute(stmt)).all():
                    if slot is not None and 0 <= int(slot) < slots:
                        counts[kind][int(slot)] += int(number)
        return [
            ActivityBucket(
                start=start + i * bucket, accepted=counts[0][i], sent=counts[1][i], failed=counts[2][i]
            )
            for i in range(slots)
        ]

    return await db.run("read the activity", work)
