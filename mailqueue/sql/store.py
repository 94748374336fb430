"""SQL Store: the mail records in MySQL/MariaDB, PostgreSQL or SQLite.

URL: an SQLAlchemy async URL::

    sqlite+aiosqlite:///./mailqueue.db          (relative to the working directory)
    sqlite+aiosqlite:////var/lib/mailqueue/mailqueue.db
    mysql+asyncmy://user:password@host:3306/common_service?charset=utf8mb4
    mariadb+asyncmy://user:password@host:3306/common_service
    postgresql+asyncpg://user:password@host:5432/mailqueue

The bare schemes ``sqlite:``, ``mysql:``, ``mariadb:`` and ``postgresql:``
choose those drivers. asyncmy comes with ``pip install 'mailqueue[mysql]'``,
asyncpg with ``mailqueue[postgres]``.

Query options read by mailqueue (every other one goes to the driver, e.g.
``charset``):

``migrate=true|false``
    ``true`` (default): :meth:`SQLStore.open` brings the schema to the
    newest revision, creating the tables or adopting the original service's
    ``email`` table. In production you may set ``false`` and run ``mailqueue
    db upgrade`` yourself when deploying; ``open()`` then refuses a database
    whose schema is behind.
``pool_size=N``
    connections kept in the pool (SQLAlchemy's default is 5).
``echo=true|false``
    log every SQL statement (to the ``sqlalchemy.engine`` logger).

Supports the whole Store contract. The engine is shared, through
:attr:`SQLStore.engine`, with the ``sql`` queue and the ``sql`` attachment
store. SQLite runs in WAL mode with a 30 s busy timeout; an in-memory SQLite
database is refused (use ``memory://``).

Layout: one row of ``email`` per mail (see :mod:`mailqueue.sql.schema`).
The original service's columns keep their meaning so that its tools and
queries still work: ``title`` = subject, ``content`` = HTML body (cut to
65535 UTF-8 bytes), ``receiver``/``receiver_name`` = the ``to`` addresses and
names, comma separated, ``attachment`` = the display file names, ``is_ok`` =
1 once sent. The mail itself is kept whole as JSON in ``payload``; each
attempt is a row of ``email_attempt``.

Limits: ``remark`` is kept to 100 characters, ``last_error`` and attempt
replies to 1000. On MySQL/MariaDB (``DATETIME``) times are kept to the second,
cut, not rounded.

Rows without ``payload`` (the original service's, adopted by the migration)
are read back leniently: the mail is rebuilt from ``title``, ``content``,
``sender_name``, ``receiver`` and ``receiver_name``; control characters become
spaces, an empty subject becomes ``(no subject)``, an empty body a space,
invalid addresses are left out (names are kept only when their count matches),
and the original ``attachment`` text, which names no stored file, is not
turned into attachments. A mail left with no valid recipient is still returned
(built without validation, with an empty ``to``) so that listing never fails.
Recipients of such rows are ``sent`` if the row is, else ``pending``.

The group commits, the worker's reads and writes (:meth:`SQLStore.get_many`,
:meth:`SQLStore.update_many`) and the API's inserts and mark clearing
(:meth:`SQLStore.add_many`, :meth:`SQLStore.clear_last_error`), run on
connections kept for them, with statements compiled once per shape; a run of
changes is one ``UPDATE`` (``CASE uid`` for values that differ) and one
multi-row ``INSERT`` of its attempts (the machinery is in
:mod:`mailqueue.sql.fastpath`). See ``docs/backends/sql-store.md``,
"The worker's hot path" and "The submit path's connection".

Ordering: :meth:`SQLStore.find` orders by the mail id in the column's
collation, which for mailqueue's ids (lowercase hex) is the plain string order
on every database.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mailqueue.errors import ConfigurationError, StoreError
from mailqueue.protocols import BackendContext, ResourceMixin
from mailqueue.records import (
    ActivityBucket,
    Attempt,
    MailRecord,
    RecordQuery,
    RecordUpdate,
    Status,
    activity_range,
    utcnow,
)
from mailqueue.sql import schema
from mailqueue.sql.engine import (
    OPTIONS,
    checked_url,
    make_engine,
    parse_url,
    safe_url,
    strip_options,
    translated,
)
from mailqueue.sql.fastpath import (
    INSERT_STATEMENTS,
    KeptConnection,
    Mismatch,
    Prepared,
    execute_direct,
    format_insert,
)
from mailqueue.sql.migrate import current, head_revision, known_revision, upgrade
from mailqueue.sql.rows import (
    ATTACHMENT_CHARS,
    ERROR_CHARS,
    MESSAGE_ID_CHARS,
    REMARK_CHARS,
    TEXT_BYTES,
    attempt_of,
    clip,
    clip_bytes,
    dump_outcomes,
    naive_utc,
    recipient_matches,
    record_of,
)

__all__ = ["SQLStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The index a page of a time window is read from on MySQL/MariaDB (see ``find``).
TIME_INDEX = "ix_email_created_deleted_uid"
#: The index a subject search walks on MySQL/MariaDB (see ``find``).
SUBJECT_INDEX = "ix_email_uid_deleted_title"
#: Rows read per round when a recipient filter is checked row by row.
_RECIPIENT_BATCH = 1000

email = schema.email
email_attempt = schema.email_attempt


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


#: One statement object for every insert, so that its compiled form is cached.
_INSERT = email.insert()


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


# --- statements of the worker's hot path ---------------------------------------------------

_ATTEMPT_COLUMNS = ("number", "started_at", "finished_at", "outcome", "code", "reply", "recipients")
_UID = [column.name for column in email.columns].index("uid")
#: Statements compiled per store at most (one per kind of run and number of records).
_PREPARED_MAX = 2000


def _keys(rows: int) -> list[sa.BindParameter[Any]]:
    return [sa.bindparam(f"u{row}", type_=email.c.uid.type) for row in range(rows)]


def _get_many(rows: int) -> sa.Select[Any]:
    """The rows of records ``u0`` .. ``u<rows-1>``."""
    return sa.select(email).where(email.c.uid.in_(_keys(rows)))


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
    keys = _keys(rows)

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


def _clear_marks(rows: int) -> sa.Update:
    """Set ``last_error`` to ``""`` (at ``updated_at`` = ``t``) on those of the records
    ``u0`` .. ``u<rows-1>`` whose status is ``s`` and ``last_error`` is ``e``."""
    return (
        email.update()
        .where(
            email.c.uid.in_(_keys(rows)),
            email.c.status == sa.bindparam("s", type_=email.c.status.type),
            email.c.last_error == sa.bindparam("e", type_=email.c.last_error.type),
        )
        .values(last_error="", updated_at=sa.bindparam("t", type_=email.c.updated_at.type))
    )


# --- the store -----------------------------------------------------------------------


class SQLStore(ResourceMixin):
    """Mail records in an SQL database through SQLAlchemy's asyncio engine.

    Build it from a URL (:meth:`from_url`) or with keyword arguments; give
    either ``url`` or a ready ``engine`` (which the store then uses but never
    disposes).

    Args:
        url: an SQLAlchemy async URL (bare schemes allowed), without
            mailqueue's query options (those are the arguments below).
        engine: an existing async engine to use instead of ``url``.
        migrate: bring the schema up to date in :meth:`open`; if false,
            :meth:`open` refuses a database whose schema is behind.
        pool_size: connections kept in the pool.
        echo: log every SQL statement.

    Raises:
        ConfigurationError: unusable URL, or both or neither of url/engine.
        MissingDependencyError: the URL's driver is not installed.
    """

    def __init__(
        self,
        *,
        url: str | URL | None = None,
        engine: AsyncEngine | None = None,
        migrate: bool = True,
        pool_size: int | None = None,
        echo: bool = False,
    ) -> None:
        if url is not None and engine is None:
            self._url = parse_url(url)
        elif engine is not None and url is None:
            self._url = engine.url
        else:
            raise ConfigurationError("SQLStore needs either url or engine")
        for name in OPTIONS:
            if name in self._url.query:
                raise ConfigurationError(
                    f"store URL option {name!r} is read by SQLStore.from_url; pass it as an argument here"
                )
        self._given_engine = engine
        self._safe_url = safe_url(self._url)
        self._migrate = migrate
        self._pool_size = pool_size
        self._echo = echo
        self._engine: AsyncEngine | None = None
        # the group commits' connections (see KeptConnection): the worker's reads (get_many),
        # its writes (update_many) and the API's mark clearing, the API's inserts (add_many)
        self._reads = KeptConnection(autocommit=True)
        self._writes = KeptConnection(autocommit=False)
        self._inserts = KeptConnection(autocommit=False, statement_cache=INSERT_STATEMENTS)
        self._prepared: dict[tuple[Any, ...], Prepared] = {}
        self._readers: tuple[tuple[str, Callable[[Any], Any] | None], ...] | None = None
        self._second_precision = self.dialect_name in ("mysql", "mariadb")

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext | None = None) -> Self:
        """Build a store from a URL with optional ``migrate``, ``pool_size`` and ``echo`` options.

        Raises:
            ConfigurationError: unusable URL or option value.
            MissingDependencyError: the URL's driver is not installed.
        """
        parsed, options = strip_options(checked_url(url))
        return cls(url=parsed, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={safe_url(self._url)!r}, migrate={self._migrate})"

    @property
    def url(self) -> str:
        """The database URL with the password hidden."""
        return self._safe_url

    @property
    def dialect_name(self) -> str:
        """SQLAlchemy's name of the database: ``sqlite``, ``mysql``, ``mariadb`` or ``postgresql``."""
        if self._given_engine is not None:
            return self._given_engine.dialect.name
        return str(self._url.get_dialect().name)

    @property
    def engine(self) -> AsyncEngine:
        """The open engine, for backends that share this database.

        Raises:
            ConfigurationError: the store is not open.
        """
        if self._engine is None:
            raise ConfigurationError("the SQL store is not open")
        return self._engine

    async def open(self) -> None:
        """Connect, and migrate the schema (or check it is current when ``migrate`` is false).

        A database at a revision this version does not know (a newer
        mailqueue migrated it) is used as it is, with a warning.

        Raises:
            StoreError: the database cannot be reached, a migration failed,
                or (``migrate`` false) the schema is behind.
            ConfigurationError: the driver refused an option of the URL.
        """
        if self._engine is not None:
            return
        engine = self._given_engine or make_engine(self._url, pool_size=self._pool_size, echo=self._echo)
        try:
            with translated(f"cannot open the store at {self.url}"):
                await self._prepare_schema(engine)
        except StoreError as exc:
            await self._dispose(engine)
            if isinstance(exc.__cause__, TypeError):
                # the driver's connect() got a keyword it does not take
                raise ConfigurationError(
                    f"the database driver refused an option of the store URL: {exc.__cause__}"
                ) from None
            raise
        except BaseException:
            await self._dispose(engine)
            raise
        self._engine = engine

    async def _prepare_schema(self, engine: AsyncEngine) -> None:
        revision = await current(engine)
        head = head_revision()
        if revision == head:
            return
        if revision is not None and not known_revision(revision):
            logger.warning(
                "%s is at schema revision %r, which this mailqueue does not know (a newer one migrated it); "
                "using it as it is",
                self.url,
                revision,
            )
            return
        if self._migrate:
            await upgrade(engine)
            return
        found = "no mailqueue schema" if revision is None else f"schema revision {revision!r}"
        raise StoreError(
            f"{self.url} has {found}, this mailqueue needs {head!r}: run `mailqueue db upgrade` "
            "or open the store with migrate=true"
        )

    async def _dispose(self, engine: AsyncEngine) -> None:
        if engine is not self._given_engine:
            with contextlib.suppress(Exception):
                await engine.dispose()

    async def close(self) -> None:
        """Release the connections (the engine too, unless it was given); idempotent."""
        engine, self._engine = self._engine, None
        for kept in (self._reads, self._writes, self._inserts):
            await kept.close()
        if engine is not None:
            await self._dispose(engine)

    # --- helpers -------------------------------------------------------------------

    def _open_engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError("the SQL store is not open")
        return self._engine

    async def _run(self, action: str, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
        engine = self._open_engine()
        with translated(f"cannot {action} ({self.url})"):
            return await work(engine)

    def _db_time(self, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        value = naive_utc(value)
        return value.replace(microsecond=0) if self._second_precision else value

    def _row_values(self, record: MailRecord) -> dict[str, Any]:
        mail = record.mail
        names = [r.name for r in mail.to]
        return {
            "title": mail.subject,
            "content": clip_bytes(mail.html, TEXT_BYTES),
            "sender_name": mail.sender_name,
            "receiver": clip_bytes(",".join(r.address for r in mail.to), TEXT_BYTES),
            "receiver_name": clip_bytes(",".join(names), TEXT_BYTES) if any(names) else "",
            "attachment": ",".join(a.filename for a in mail.attachments)[:ATTACHMENT_CHARS],
            "remark": clip(record.remark, REMARK_CHARS),
            "is_ok": 1 if record.status is Status.SENT else 0,
            "is_deleted": 1 if record.is_deleted else 0,
            "created_at": self._db_time(record.created_at),
            "updated_at": self._db_time(record.updated_at),
            "uid": mail.id,
            "message_id": mail.message_id[:MESSAGE_ID_CHARS] if mail.message_id else None,
            "status": record.status.value,
            "attempts": record.attempts,
            "recipients": dump_outcomes(record.recipients),
            "payload": mail.model_dump_json(),
            "last_error": clip(record.last_error, ERROR_CHARS),
            "last_code": record.last_code,
            "idempotency_key": mail.idempotency_key,
            "sent_at": self._db_time(record.sent_at),
            "next_attempt_at": self._db_time(record.next_attempt_at),
        }

    def _attempt_values(self, email_id: int, attempt: Attempt) -> dict[str, Any]:
        return {
            "email_id": email_id,
            "number": attempt.number,
            "started_at": self._db_time(attempt.started_at),
            "finished_at": self._db_time(attempt.finished_at),
            "outcome": attempt.outcome,
            "code": attempt.code,
            "reply": clip(attempt.reply, ERROR_CHARS),
            "recipients": dump_outcomes(attempt.recipients) if attempt.recipients else None,
        }

    async def _load(self, connection: AsyncConnection, where: sa.ColumnElement[bool]) -> MailRecord | None:
        row = (await connection.execute(sa.select(email).where(where))).mappings().first()
        if row is None:
            return None
        attempts = await connection.execute(
            sa.select(email_attempt).where(email_attempt.c.email_id == row["id"]).order_by(email_attempt.c.id)
        )
        return record_of(row, tuple(attempt_of(a) for a in attempts.mappings()))

    async def _by_key(self, engine: AsyncEngine, key: str) -> MailRecord | None:
        async with engine.connect() as connection:
            return await self._load(connection, email.c.idempotency_key == key)

    # --- the Store contract ------------------------------------------------------------

    async def add(self, record: MailRecord) -> MailRecord:
        """Insert the record (and any history it carries).

        Returns:
            The record as stored (times at the database's precision, long
            texts clipped); if the mail's idempotency key is taken, the
            existing record instead, and nothing is inserted.

        Raises:
            StoreError: a record with the same mail id exists already, or the
                database failed.
        """
        key = record.mail.idempotency_key
        values = self._row_values(record)

        async def work(engine: AsyncEngine) -> MailRecord:
            if key is not None and (existing := await self._by_key(engine, key)) is not None:
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
                            [self._attempt_values(email_id, a) for a in record.history],
                        )
            except sa.exc.IntegrityError:
                # a concurrent add with the same key won the race
                if key is not None and (existing := await self._by_key(engine, key)) is not None:
                    return existing
                raise StoreError(f"a record with id {record.id!r} exists already") from None
            stored = {**values, "id": email_id}
            return record_of(stored, tuple(self._stored_attempt(a) for a in record.history), mail=record.mail)

        return await self._run(f"add record {record.id}", work)

    async def add_many(self, records: Sequence[MailRecord]) -> list[MailRecord]:
        """Insert ``records`` in one transaction (one multi-row INSERT), all or none.

        For new records without idempotency key or history (those go through
        :meth:`add`): the group commit of concurrent submits. On a server
        database the batches share one kept connection (see :class:`KeptConnection`),
        on MariaDB as one bulk-bound statement.

        Returns:
            The records as stored, in the order given.

        Raises:
            StoreError: a record has an idempotency key or history, a mail id
                exists already, or the database failed; nothing was inserted.
        """
        if any(r.mail.idempotency_key is not None or r.history for r in records):
            raise StoreError("add_many takes records without idempotency key or history")
        if not records:
            return []
        rows = [self._row_values(r) for r in records]

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
                await self._inserts.run(engine, insert)
            except sa.exc.IntegrityError:
                raise StoreError("a record with one of these ids exists already") from None
            return [record_of(values, mail=r.mail) for values, r in zip(rows, records, strict=True)]

        return await self._run(f"add {len(records)} records", work)

    async def clear_last_error(self, mail_ids: Sequence[str], *, expected: str) -> None:
        """Set ``last_error`` to ``""`` on those of ``mail_ids`` still ``queued``
        whose ``last_error`` is ``expected``, in one statement.

        Raises:
            StoreError: the database failed.
        """
        if not mail_ids:
            return
        # the id list padded (repeating the last id) to a power of two: a few compiled statements
        ids = list(mail_ids)
        ids += ids[-1:] * ((1 << (len(ids) - 1).bit_length()) - len(ids))
        params: dict[str, Any] = {f"u{i}": mail_id for i, mail_id in enumerate(ids)}
        params.update(t=self._db_time(utcnow()), s=Status.QUEUED.value, e=clip(expected, ERROR_CHARS))

        async def clear(connection: AsyncConnection) -> None:
            await self._prepare(("clear", len(ids)), lambda: _clear_marks(len(ids))).run(connection, params)

        async def work(engine: AsyncEngine) -> None:
            await self._writes.run(engine, clear)

        await self._run(f"clear the marks of {len(mail_ids)} records", work)

    def _stored_attempt(self, attempt: Attempt) -> Attempt:
        return attempt_of(self._attempt_values(0, attempt))

    async def get(self, mail_id: str) -> MailRecord | None:
        """The record of ``mail_id`` with its attempts in the order they were added, or ``None``.

        Raises:
            StoreError: the database failed.
        """

        async def work(engine: AsyncEngine) -> MailRecord | None:
            async with engine.connect() as connection:
                return await self._load(connection, email.c.uid == mail_id)

        return await self._run(f"read record {mail_id}", work)

    def _conditions(self, query: RecordQuery) -> list[sa.ColumnElement[bool]]:
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

    async def find(self, query: RecordQuery) -> list[MailRecord]:
        """Records matching ``query``, in ``query.order`` of their ids, without history.

        ``since`` is inclusive and ``until`` exclusive, both on ``created_at``.
        A ``recipient`` filter is matched by the database on a superset and
        checked again row by row, reading further until ``limit`` rows match.

        Raises:
            StoreError: the database failed.
        """
        if query.limit < 1:
            return []
        where = self._conditions(query)
        newest = query.order != "oldest"
        before, after = query.before_id, query.after_id
        needle = query.recipient
        dialect = self.dialect_name
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

        return await self._run("find records", work)

    async def count(self, query: RecordQuery, *, cap: int = 10_000) -> int:
        """How many records match ``query`` (limit, order and cursors ignored), at most ``cap``.

        The database stops at ``cap`` rows; with a ``recipient`` filter the
        candidate rows are read (a few columns, in batches) and checked one by one.

        Raises:
            StoreError: the database failed.
        """
        if cap < 1:
            return 0
        where = self._conditions(query)
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

        return await self._run("count records", work)

    async def count_by_status(self, *, include_deleted: bool = False) -> dict[Status, int]:
        """How many records are in each status (every status a key).

        One ``GROUP BY status`` over the index on ``(status, is_deleted, uid)``.
        A status this version does not know (written by a newer one) counts as
        the record reads back: ``sent`` if ``is_ok``, else ``failed``.

        Raises:
            StoreError: the database failed.
        """
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

        return await self._run("count records by status", work)

    async def activity(self, *, since: datetime, bucket: timedelta) -> list[ActivityBucket]:
        """Mails accepted, sent and failed per ``bucket`` from ``since`` to now, oldest first.

        Three ``GROUP BY`` queries that read only the indexes on
        ``created_at``, ``sent_at`` and ``(status, updated_at)``. Soft-deleted
        records count too, and so do rows without a ``uid`` (written by the
        original service after the migration), which :meth:`find` leaves out.

        Raises:
            ValueError: ``bucket`` is not a positive whole number of seconds,
                or too many buckets.
            StoreError: the database failed.
        """
        start, slots = activity_range(since, bucket, utcnow())
        if slots == 0:
            return []
        seconds = int(bucket.total_seconds())
        low = naive_utc(start)
        high = naive_utc(start + slots * bucket)
        failed = (email.c.status.in_([Status.DEAD.value, Status.FAILED.value]),)
        dialect = self.dialect_name

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

        return await self._run("read the activity", work)

    async def update(self, mail_id: str, change: RecordUpdate) -> bool:
        """Apply ``change`` in one transaction (the attempt row included).

        Returns:
            ``True`` if applied; ``False`` if there is no such record or its
            status is not in ``change.expect``.

        Raises:
            StoreError: the database failed.
        """
        stmt, attempt = self._update_statement(mail_id, change)

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
                        email_attempt.insert().values(self._attempt_values(email_id, attempt))
                    )
            return True

        return await self._run(f"update record {mail_id}", work)

    async def get_many(self, mail_ids: Sequence[str]) -> dict[str, MailRecord]:
        """The records of those of ``mail_ids`` that exist, by id, without history, in one query.

        Runs on a connection of its own kept for these reads (see :class:`KeptConnection`).

        Raises:
            StoreError: the database failed.
        """
        wanted = list(dict.fromkeys(mail_ids))
        if not wanted:
            return {}

        async def read(connection: AsyncConnection) -> Sequence[Any]:
            stmt = self._prepare(("get", len(wanted)), lambda: _get_many(len(wanted)))
            return (await stmt.run(connection, {f"u{i}": mail_id for i, mail_id in enumerate(wanted)}))[1]

        async def work(engine: AsyncEngine) -> dict[str, MailRecord]:
            rows = await self._reads.run(engine, read)
            records = (record_of(self._row_mapping(row)) for row in rows)
            return {str(row[_UID]): record for row, record in zip(rows, records, strict=True)}

        return await self._run(f"read {len(wanted)} record(s)", work)

    async def update_many(self, changes: Sequence[tuple[str, RecordUpdate]]) -> list[bool]:
        """Apply each change as :meth:`update` does, in order, in one transaction (one commit).

        Runs of changes of one kind (the same columns and condition) to
        different records, such as the worker's claims or its outcomes, are
        one UPDATE each, whose values differ by record through ``CASE uid``;
        their attempt rows one multi-row INSERT. PostgreSQL and SQLite tell which
        records matched by ``RETURNING``. MySQL/MariaDB cannot: the UPDATE is
        taken as it comes when it matched every record of the run (the usual
        case), else the transaction is rolled back and done again with the
        rows that match locked first (``SELECT ... FOR UPDATE``). The
        transactions run on a connection kept for them (see :class:`KeptConnection`).

        Returns:
            For each change, whether it was applied.

        Raises:
            StoreError: the database failed; nothing was committed.
        """
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
        now = self._db_time(utcnow())
        plans = [
            [(mail_id, change, self._change_values(change, now)) for mail_id, change in run] for run in runs
        ]
        returning = self.dialect_name in ("sqlite", "postgresql")

        async def apply(connection: AsyncConnection, locking: bool) -> list[bool]:
            applied: list[bool] = []
            for plan in plans:
                done = await self._apply_run(connection, plan, returning=returning, locking=locking)
                applied.extend(mail_id in done for mail_id, _, _ in plan)
                attempts = [(mail_id, c.attempt) for mail_id, c, _ in plan if mail_id in done and c.attempt]
                if attempts:
                    await self._add_attempts(connection, attempts)
            return applied

        async def work(engine: AsyncEngine) -> list[bool]:
            try:
                return await self._writes.run(engine, lambda connection: apply(connection, False))
            except Mismatch:
                return await self._writes.run(engine, lambda connection: apply(connection, True))

        return await self._run(f"update {len(changes)} record(s)", work)

    async def _apply_run(
        self,
        connection: AsyncConnection,
        plan: list[tuple[str, RecordUpdate, dict[str, Any]]],
        *,
        returning: bool,
        locking: bool,
    ) -> set[str]:
        """Apply a run of changes of one kind to distinct records, each only if the record
        meets the run's condition; return the ids of the records changed.

        Raises:
            Mismatch: (MySQL/MariaDB, not ``locking``) some record did not match.
        """
        first = plan[0][1]
        expect = None if first.expect is None else tuple(sorted(s.value for s in first.expect))
        stamp = self._db_time(first.expect_updated_at)
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
        stmt = self._prepare(("update", *shape), lambda: _run_update(*shape))
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

    async def _add_attempts(self, connection: AsyncConnection, attempts: list[tuple[str, Attempt]]) -> None:
        """Insert the attempt rows of distinct records in one statement that reads their rows' ids itself."""
        params: dict[str, Any] = {}
        for row, (mail_id, attempt) in enumerate(attempts):
            params[f"u{row}"] = mail_id
            values = self._attempt_values(0, attempt)
            params.update((f"a_{name}_r{row}", values[name]) for name in _ATTEMPT_COLUMNS)
        stmt = self._prepare(("attempts", len(attempts)), lambda: _attempts_insert(len(attempts)))
        await stmt.run(connection, params)

    def _prepare(self, key: tuple[Any, ...], build: Callable[[], sa.ClauseElement]) -> Prepared:
        """The statement ``build`` makes, compiled for this database once per ``key``."""
        prepared = self._prepared.get(key)
        if prepared is None:
            if len(self._prepared) >= _PREPARED_MAX:
                self._prepared.clear()
            prepared = self._prepared[key] = Prepared(build(), self.engine.dialect)
        return prepared

    def _row_mapping(self, row: Sequence[Any]) -> dict[str, Any]:
        """A row of ``email`` read with ``exec_driver_sql``, by column name, with the
        columns' result processors applied (SQLite keeps dates as text)."""
        readers = self._readers
        if readers is None:
            dialect = self.engine.dialect
            readers = self._readers = tuple(
                (column.name, column.type.dialect_impl(dialect).result_processor(dialect, None))
                for column in email.columns
            )
        return {
            name: value if process is None or value is None else process(value)
            for (name, process), value in zip(readers, row, strict=True)
        }

    def _change_values(self, change: RecordUpdate, now: datetime | None) -> dict[str, Any]:
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
            values["sent_at"] = self._db_time(change.sent_at)
        if change.next_attempt_at is not None:
            values["next_attempt_at"] = self._db_time(change.next_attempt_at)
        if change.is_deleted is not None:
            values["is_deleted"] = 1 if change.is_deleted else 0
        if change.message_id is not None:
            values["message_id"] = change.message_id[:MESSAGE_ID_CHARS]
        return values

    def _update_statement(self, mail_id: str, change: RecordUpdate) -> tuple[sa.Update, Attempt | None]:
        """The conditional UPDATE of one record for ``change``, and the attempt row to add with it."""
        values, conditions, attempt = self._change(change, utcnow())
        return email.update().where(email.c.uid == mail_id, *conditions).values(values), attempt

    def _change(
        self, change: RecordUpdate, now: datetime
    ) -> tuple[dict[str, Any], list[sa.ColumnElement[bool]], Attempt | None]:
        """What ``change`` sets, the conditions it puts on the row, and the attempt row to add."""
        values: dict[str, Any] = self._change_values(change, self._db_time(now))
        attempt = change.attempt
        if attempt is not None:
            values["attempts"] = sa.case(
                (email.c.attempts < attempt.number, attempt.number), else_=email.c.attempts
            )
        conditions: list[sa.ColumnElement[bool]] = []
        if change.expect is not None:
            conditions.append(email.c.status.in_(sorted(s.value for s in change.expect)))
        if change.expect_updated_at is not None:
            conditions.append(email.c.updated_at == self._db_time(change.expect_updated_at))
        return values, conditions, attempt

    async def delete_records(
        self, mail_ids: Sequence[str], *, statuses: frozenset[Status], soft: bool = False
    ) -> list[str]:
        """Delete those of ``mail_ids`` whose status is one of ``statuses``, and
        their ``email_attempt`` rows, in one transaction; with ``soft``, set
        ``is_deleted = 1`` on those not deleted yet instead.

        The status is checked by the statement itself, so a record that
        changed state since it was read (e.g. re-sent) stays.

        Returns:
            The ids of the records deleted (or newly marked).

        Raises:
            StoreError: the database failed.
        """
        if not mail_ids or not statuses:
            return []
        chosen = sa.and_(
            email.c.uid.in_(list(mail_ids)), email.c.status.in_(sorted(s.value for s in statuses))
        )
        if soft:
            chosen = sa.and_(chosen, email.c.is_deleted == 0)

        async def work(engine: AsyncEngine) -> list[str]:
            async with engine.begin() as connection:
                if engine.dialect.name == "sqlite":
                    # this first write takes SQLite's write lock: the rows read next are the rows changed
                    await connection.execute(
                        email.update().where(chosen).values(updated_at=self._db_time(utcnow()))
                    )
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
                        .values(is_deleted=1, updated_at=self._db_time(utcnow()))
                    )
                else:
                    await connection.execute(
                        email_attempt.delete().where(email_attempt.c.email_id.in_(row_ids))
                    )
                    await connection.execute(email.delete().where(email.c.id.in_(row_ids)))
                return [str(row.uid) for row in rows]

        return await self._run("delete records", work)

    async def ping(self) -> None:
        """Raise :class:`StoreError` unless the database answers."""

        async def work(engine: AsyncEngine) -> None:
            async with engine.connect() as connection:
                await connection.execute(sa.text("SELECT 1"))

        await self._run("reach the database", work)
