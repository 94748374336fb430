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

Query options read by mailqueue (:class:`~mailqueue.sql.url.SQLStoreOptions`;
the driver's own, such as ``charset`` or ``read_timeout`` for asyncmy, go on to
it: those :data:`~mailqueue.sql.url.DRIVER_OPTIONS` lists for it; any other
option is refused, and the message lists the valid ones):

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
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import ClassVar, Self

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from mailqueue.backends._base import OptionsModel
from mailqueue.errors import ConfigurationError, StoreError
from mailqueue.protocols import BackendContext, ResourceMixin
from mailqueue.records import ActivityBucket, MailRecord, RecordQuery, RecordUpdate, Status
from mailqueue.sql import changes as _changes
from mailqueue.sql import reads, suppression, writes
from mailqueue.sql.database import Database
from mailqueue.sql.engine import make_engine, translated
from mailqueue.sql.migrate import current, head_revision, known_revision, upgrade
from mailqueue.sql.url import OPTION_NAMES, SQLStoreOptions, parse_url, safe_url, split_options
from mailqueue.suppression import Suppression, SuppressionQuery

__all__ = ["SQLStore"]

logger = logging.getLogger(__name__)


class SQLStore(ResourceMixin):
    """Mail records in an SQL database through SQLAlchemy's asyncio engine.

    Build it from a URL (:meth:`from_url`) or with keyword arguments; give
    either ``url`` or a ready ``engine`` (which the store then uses but never
    disposes).

    The store owns its lifecycle (engine, schema check, migration); the work
    of each method is in :mod:`mailqueue.sql.reads` (reads, queries, counts),
    :mod:`mailqueue.sql.writes` (inserts, mark clearing, deletion) and
    :mod:`mailqueue.sql.changes` (the changes of records), on the store's
    :class:`~mailqueue.sql.database.Database`.

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

    #: mailqueue's URL options (the driver's are in :data:`~mailqueue.sql.url.DRIVER_OPTIONS`).
    url_options: ClassVar[type[OptionsModel]] = SQLStoreOptions

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
        for name in OPTION_NAMES:
            if name in self._url.query:
                raise ConfigurationError(
                    f"store URL option {name!r} is read by SQLStore.from_url; pass it as an argument here"
                )
        self._given_engine = engine
        self._safe_url = safe_url(self._url)
        self._migrate = migrate
        self._pool_size = pool_size
        self._echo = echo
        self._db = Database(self._safe_url, self.dialect_name)

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext | None = None) -> Self:
        """Build a store from a URL with optional ``migrate``, ``pool_size`` and ``echo``
        options (:class:`~mailqueue.sql.url.SQLStoreOptions`) and the driver's.

        Raises:
            ConfigurationError: unusable URL, an unknown option (the message lists
                the valid ones), or a bad option value (the message names the option).
            MissingDependencyError: the URL's driver is not installed.
        """
        parsed, options = split_options(url)
        return cls(url=parsed, **options.model_dump())

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
        if self._db.engine is None:
            raise ConfigurationError("the SQL store is not open")
        return self._db.engine

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, and migrate the schema (or check it is current when ``migrate`` is false).

        A database at a revision this version does not know (a newer
        mailqueue migrated it) is used as it is, with a warning.

        Raises:
            StoreError: the database cannot be reached, a migration failed,
                or (``migrate`` false) the schema is behind.
            ConfigurationError: the driver refused an option of the URL.
        """
        if self._db.engine is not None:
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
        self._db.engine = engine

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
        engine, self._db.engine = self._db.engine, None
        await self._db.close_kept()
        if engine is not None:
            await self._dispose(engine)

    async def ping(self) -> None:
        """Raise :class:`StoreError` unless the database answers."""

        async def work(engine: AsyncEngine) -> None:
            async with engine.connect() as connection:
                await connection.execute(sa.text("SELECT 1"))

        await self._db.run("reach the database", work)

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
        return await writes.add(self._db, record)

    async def add_many(self, records: Sequence[MailRecord]) -> list[MailRecord]:
        """Insert ``records`` in one transaction (one multi-row INSERT), all or none.

        For new records without idempotency key or history (those go through
        :meth:`add`): the group commit of concurrent submits. On a server
        database the batches share one kept connection (see
        :class:`~mailqueue.sql.fastpath.KeptConnection`), on MariaDB as one
        bulk-bound statement.

        Returns:
            The records as stored, in the order given.

        Raises:
            StoreError: a record has an idempotency key or history, a mail id
                exists already, or the database failed; nothing was inserted.
        """
        return await writes.add_many(self._db, records)

    async def clear_last_error(self, mail_ids: Sequence[str], *, expected: str) -> None:
        """Set ``last_error`` to ``""`` on those of ``mail_ids`` still ``queued``
        whose ``last_error`` is ``expected``, in one statement.

        Raises:
            StoreError: the database failed.
        """
        await writes.clear_last_error(self._db, mail_ids, expected)

    async def get(self, mail_id: str) -> MailRecord | None:
        """The record of ``mail_id`` with its attempts in the order they were added, or ``None``.

        Raises:
            StoreError: the database failed.
        """
        return await reads.get(self._db, mail_id)

    async def find(self, query: RecordQuery) -> list[MailRecord]:
        """Records matching ``query``, in ``query.order`` of their ids, without history.

        ``since`` is inclusive and ``until`` exclusive, both on ``created_at``.
        A ``recipient`` filter is matched by the database on a superset and
        checked again row by row, reading further until ``limit`` rows match.

        Raises:
            StoreError: the database failed.
        """
        return await reads.find(self._db, query)

    async def count(self, query: RecordQuery, *, cap: int = 10_000) -> int:
        """How many records match ``query`` (limit, order and cursors ignored), at most ``cap``.

        The database stops at ``cap`` rows; with a ``recipient`` filter the
        candidate rows are read (a few columns, in batches) and checked one by one.

        Raises:
            StoreError: the database failed.
        """
        return await reads.count(self._db, query, cap)

    async def count_by_status(self, *, include_deleted: bool = False) -> dict[Status, int]:
        """How many records are in each status (every status a key).

        One ``GROUP BY status`` over the index on ``(status, is_deleted, uid)``.
        A status this version does not know (written by a newer one) counts as
        the record reads back: ``sent`` if ``is_ok``, else ``failed``.

        Raises:
            StoreError: the database failed.
        """
        return await reads.count_by_status(self._db, include_deleted)

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
        return await reads.activity(self._db, since, bucket)

    async def update(self, mail_id: str, change: RecordUpdate) -> bool:
        """Apply ``change`` in one transaction (the attempt row included).

        Returns:
            ``True`` if applied; ``False`` if there is no such record or its
            status is not in ``change.expect``.

        Raises:
            StoreError: the database failed.
        """
        return await _changes.update(self._db, mail_id, change)

    async def get_many(self, mail_ids: Sequence[str]) -> dict[str, MailRecord]:
        """The records of those of ``mail_ids`` that exist, by id, without history, in one query.

        Runs on a connection of its own kept for these reads (see
        :class:`~mailqueue.sql.fastpath.KeptConnection`).

        Raises:
            StoreError: the database failed.
        """
        return await reads.get_many(self._db, mail_ids)

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
        transactions run on a connection kept for them (see
        :class:`~mailqueue.sql.fastpath.KeptConnection`).

        Returns:
            For each change, whether it was applied.

        Raises:
            StoreError: the database failed; nothing was committed.
        """
        return await _changes.update_many(self._db, changes)

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
        return await writes.delete_records(self._db, mail_ids, statuses, soft)

    # --- the suppression list (SuppressionStore): mailqueue.sql.suppression ----------

    async def add_suppression(self, entry: Suppression) -> Suppression:
        """Insert ``entry`` or replace the address's entry (one upsert). Raises :class:`StoreError`."""
        return await suppression.add(self._db, entry)

    async def remove_suppression(self, address: str) -> bool:
        """Delete the address's entry; ``False`` if none. Raises :class:`StoreError`."""
        return await suppression.remove(self._db, address)

    async def get_suppressions(self, addresses: Sequence[str], *, now: datetime) -> dict[str, Suppression]:
        """The entries of ``addresses`` not expired at ``now``. Raises :class:`StoreError`."""
        return await suppression.lookup(self._db, addresses, now=now)

    async def list_suppressions(self, query: SuppressionQuery) -> list[Suppression]:
        """A page of the entries matching ``query``. Raises :class:`StoreError`."""
        return await suppression.list_entries(self._db, query)

    async def count_suppressions(self, query: SuppressionQuery) -> int:
        """How many entries match ``query``. Raises :class:`StoreError`."""
        return await suppression.count(self._db, query)
