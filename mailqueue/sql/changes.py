"""The SQL store's changes of records: a :class:`~mailqueue.records.RecordUpdate`
(a claim, an outcome, a status change, a soft delete) applied to one record
(:func:`update`) or, as the worker's group commit, to many (:func:`update_many`).

A change is conditional: on the record's status (``expect``) and optionally on
its ``updated_at`` (``expect_updated_at``); it may add an attempt row and
raises ``attempts`` to the attempt's number. In :func:`update_many` a run of
changes of one kind to different records is one ``UPDATE`` (``CASE uid`` for
values that differ) and one multi-row ``INSERT`` of its attempts, compiled
once per shape (see :mod:`mailqueue.sql.fastpath`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mailqueue.records import Attempt, RecordUpdate, Status, utcnow
from mailqueue.sql import schema
from mailqueue.sql.database import Database, uid_params
from mailqueue.sql.fastpath import Mismatch
from mailqueue.sql.rows import (
    ERROR_CHARS,
    MESSAGE_ID_CHARS,
    REMARK_CHARS,
    attempt_values,
    clip,
    dump_outcomes,
)

__all__ = ["update", "update_many"]

email = schema.email
email_attempt = schema.email_attempt

_ATTEMPT_COLUMNS = ("number", "started_at", "finished_at", "outcome", "code", "reply", "recipients")

#: A run of changes: each record's id, its change, and the columns the change sets.
_Plan = list[tuple[str, RecordUpdate, dict[str, Any]]]


def _kind(change: RecordUpdate) -> tuple[object, ...] | None:
    """What changes of one group share: the fields they set and their condition
    (``None`` for a change that is never grouped)."""
    if change.expect_updated_at is not None:
        return None
    fields = (
        change.status,
        change.recipients is not None,
        change.remark is not None,
        change.last_error is not None,
        change.last_code is not None,
        change.sent_at is not None,
        change.next_attempt_at is not None,
        change.is_deleted,
        change.attempt is not None,
        change.message_id is not None,
    )
    return (*fields, change.expect)


def _run_update(
    columns: tuple[str, ...],
    numbered: bool,
    expect: tuple[str, ...] | None,
    stamped: bool,
    rows: int,
    same: bool,
    returning: bool,
) -> sa.Update:
    """The UPDATE of a run of changes to the records ``u0`` .. ``u<rows-1>`` that set
    ``columns`` (and raise ``attempts`` to the attempt's number when ``numbered``),
    on those whose status is in ``expect`` (and whose ``updated_at`` is
    ``p_updated_at`` when ``stamped``).

    ``same``: the values ``v_<column>`` and ``n`` for all; else ``v_<column>_r<i>``
    and ``n_r<i>`` for record ``u<i>``, chosen by ``CASE uid``. One statement, one
    round trip, on every database.
    """
    uid = email.c.uid
    keys = uid_params(rows)

    def value(name: str, type_: Any, current: sa.ColumnElement[Any] | None) -> sa.ColumnElement[Any]:
        if same:
            return sa.bindparam(name, type_=type_)
        whens = [(keys[row], sa.bindparam(f"{name}_r{row}", type_=type_)) for row in range(rows)]
        return sa.case(*whens, value=uid, else_=current)

    values: dict[str, Any] = {name: value(f"v_{name}", email.c[name].type, email.c[name]) for name in columns}
    if numbered:
        number = value("n", sa.Integer(), None)
        values["attempts"] = sa.case((email.c.attempts < number, number), else_=email.c.attempts)
    where: list[sa.ColumnElement[bool]] = [uid.in_(keys)]
    if expect is not None:
        where.append(email.c.status.in_([sa.bindparam(f"s{i}", status) for i, status in enumerate(expect)]))
    if stamped:
        where.append(email.c.updated_at == sa.bindparam("p_updated_at", type_=email.c.updated_at.type))
    stmt = email.update().where(*where).values(values)
    return stmt.returning(email.c.uid) if returning else stmt


def _attempts_insert(rows: int) -> sa.Insert:
    """One multi-row INSERT of the attempts ``a_<column>_r<i>`` of records ``u<i>``,
    each row's ``email_id`` read by a subquery: the rows' ids without reading them first."""
    uid = email.c.uid
    values = []
    for row in range(rows):
        key = sa.bindparam(f"u{row}", type_=uid.type)
        item: dict[str, Any] = {"email_id": sa.select(email.c.id).where(uid == key).scalar_subquery()}
        for name in _ATTEMPT_COLUMNS:
            item[name] = sa.bindparam(f"a_{name}_r{row}", type_=email_attempt.c[name].type)
        values.append(item)
    return email_attempt.insert().values(values)


def change_values(db: Database, change: RecordUpdate, now: datetime | None) -> dict[str, Any]:
    """The columns ``change`` sets and their values (``attempts`` aside: see :func:`_run_update`)."""
    values: dict[str, Any] = {"updated_at": now}
    if change.status is not None:
        values["status"] = change.status.value
        values["is_ok"] = 1 if change.status is Status.SENT else 0
    if change.recipients is not None:
        values["recipients"] = dump_outcomes(change.recipients)
    if change.remark is not None:
        values["remark"] = clip(change.remark, REMARK_CHARS)
    if change.last_error is not None:
        values["last_error"] = clip(change.last_error, ERROR_CHARS)
    if change.last_code is not None:
        values["last_code"] = change.last_code
    if change.sent_at is not None:
        values["sent_at"] = db.db_time(change.sent_at)
    if change.next_attempt_at is not None:
        values["next_attempt_at"] = db.db_time(change.next_attempt_at)
    if change.is_deleted is not None:
        values["is_deleted"] = 1 if change.is_deleted else 0
    if change.message_id is not None:
        values["message_id"] = change.message_id[:MESSAGE_ID_CHARS]
    return values


def _update_statement(db: Database, mail_id: str, change: RecordUpdate) -> sa.Update:
    """The conditional UPDATE of one record for ``change``."""
    values = change_values(db, change, db.db_time(utcnow()))
    attempt = change.attempt
    if attempt is not None:
        values["attempts"] = sa.case(
            (email.c.attempts < attempt.number, attempt.number), else_=email.c.attempts
        )
    conditions: list[sa.ColumnElement[bool]] = [email.c.uid == mail_id]
    if change.expect is not None:
        conditions.append(email.c.status.in_(sorted(s.value for s in change.expect)))
    if change.expect_updated_at is not None:
        conditions.append(email.c.updated_at == db.db_time(change.expect_updated_at))
    return email.update().where(*conditions).values(values)


async def update(db: Database, mail_id: str, change: RecordUpdate) -> bool:
    """:meth:`SQLStore.update <mailqueue.sql.store.SQLStore.update>`."""
    stmt = _update_statement(db, mail_id, change)
    attempt = change.attempt

    async def work(engine: AsyncEngine) -> bool:
        async with engine.begin() as connection:
            # the UPDATE comes first so that it takes the row (or SQLite's write) lock
            if (await connection.execute(stmt)).rowcount != 1:
                return False
            if attempt is not None:
                email_id = (
                    await connection.execute(sa.select(email.c.id).where(email.c.uid == mail_id))
                ).scalar_one()
                await connection.execute(
                    email_attempt.insert().values(attempt_values(email_id, attempt, db.db_time))
                )
        return True

    return await db.run(f"update record {mail_id}", work)


async def update_many(db: Database, changes: Sequence[tuple[str, RecordUpdate]]) -> list[bool]:
    """:meth:`SQLStore.update_many <mailqueue.sql.store.SQLStore.update_many>`: the changes
    cut into runs of one kind (:func:`_kind`) to distinct records, each run applied by
    :func:`_apply_run`, in one transaction on the connection kept for these writes."""
    if not changes:
        return []
    runs: list[list[tuple[str, RecordUpdate]]] = []
    members: set[str] = set()
    for mail_id, change in changes:
        kind = _kind(change)
        if runs and kind is not None and kind == _kind(runs[-1][0][1]) and mail_id not in members:
            runs[-1].append((mail_id, change))
        else:
            runs.append([(mail_id, change)])
            members = set()
        members.add(mail_id)
    now = db.db_time(utcnow())
    plans = [[(mail_id, change, change_values(db, change, now)) for mail_id, change in run] for run in runs]
    returning = db.dialect_name in ("sqlite", "postgresql")

    async def apply(connection: AsyncConnection, locking: bool) -> list[bool]:
        applied: list[bool] = []
        for plan in plans:
            done = await _apply_run(db, connection, plan, returning=returning, locking=locking)
            applied.extend(mail_id in done for mail_id, _, _ in plan)
            attempts = [(mail_id, c.attempt) for mail_id, c, _ in plan if mail_id in done and c.attempt]
            if attempts:
                await _add_attempts(db, connection, attempts)
        return applied

    async def work(engine: AsyncEngine) -> list[bool]:
        try:
            return await db.writes.run(engine, lambda connection: apply(connection, False))
        except Mismatch:
            return await db.writes.run(engine, lambda connection: apply(connection, True))

    return await db.run(f"update {len(changes)} record(s)", work)


async def _apply_run(
    db: Database, connection: AsyncConnection, plan: _Plan, *, returning: bool, locking: bool
) -> set[str]:
    """Apply a run of changes of one kind to distinct records, each only if the record
    meets the run's condition; return the ids of the records changed.

    Raises:
        Mismatch: (MySQL/MariaDB, not ``locking``) some record did not match.
    """
    first = plan[0][1]
    expect = None if first.expect is None else tuple(sorted(s.value for s in first.expect))
    stamp = db.db_time(first.expect_updated_at)
    if locking:
        # MySQL/MariaDB, after a mismatch: lock the rows that match, then change just those
        where: list[sa.ColumnElement[bool]] = [email.c.uid.in_([mail_id for mail_id, _, _ in plan])]
        if expect is not None:
            where.append(email.c.status.in_(expect))
        if stamp is not None:
            where.append(email.c.updated_at == stamp)
        locked = sa.select(email.c.uid).where(*where).with_for_update()
        matched = {str(uid) for (uid,) in (await connection.execute(locked)).all()}
        plan = [item for item in plan if item[0] in matched]
        if not plan:
            return set()
    same = len(plan) == 1 or all(change == first for _, change, _ in plan)
    shape = (
        tuple(plan[0][2]),
        first.attempt is not None,
        expect,
        stamp is not None,
        len(plan),
        same,
        returning,
    )
    stmt = db.prepare(("update", *shape), lambda: _run_update(*shape))
    params: dict[str, Any] = {f"u{row}": mail_id for row, (mail_id, _, _) in enumerate(plan)}
    if stamp is not None:
        params["p_updated_at"] = stamp
    if same:
        params.update((f"v_{name}", value) for name, value in plan[0][2].items())
        if first.attempt is not None:
            params["n"] = first.attempt.number
    else:
        for row, (_, change, values) in enumerate(plan):
            params.update((f"v_{name}_r{row}", value) for name, value in values.items())
            if change.attempt is not None:
                params[f"n_r{row}"] = change.attempt.number
    count, rows = await stmt.run(connection, params)
    if returning:
        return {str(uid) for (uid,) in rows}
    if not locking and count != len(plan):
        raise Mismatch
    return {mail_id for mail_id, _, _ in plan}


async def _add_attempts(
    db: Database, connection: AsyncConnection, attempts: list[tuple[str, Attempt]]
) -> None:
    """Insert the attempt rows of distinct records in one statement that reads their rows' ids itself."""
    params: dict[str, Any] = {}
    for row, (mail_id, attempt) in enumerate(attempts):
        params[f"u{row}"] = mail_id
        values = attempt_values(0, attempt, db.db_time)
        params.update((f"a_{name}_r{row}", values[name]) for name in _ATTEMPT_COLUMNS)
    stmt = db.prepare(("attempts", len(attempts)), lambda: _attempts_insert(len(attempts)))
    await stmt.run(connection, params)
