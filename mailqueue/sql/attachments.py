"""Attachments as blobs in the Store's SQL database (the ``sql`` attachment store).

URL: ``sql://`` (or ``sql:``), with the query option ``chunk_size=<bytes>``
(default 262144, at most 8 MiB: keep it well below MySQL's
``max_allowed_packet``). The database is the Store's: the factory takes
``context.store`` and, on :meth:`~SQLAttachmentStore.open`, uses its
``engine`` (a SQLAlchemy ``AsyncEngine``), so API processes and workers on
different machines share attachments. The tables ``mailqueue_attachment``
and ``mailqueue_attachment_chunk`` come from the Store's migrations (see
:mod:`mailqueue.sql.schema`).

An attachment is one ``mailqueue_attachment`` row and its content split into
``mailqueue_attachment_chunk`` rows of ``chunk_size`` bytes. Each chunk is
written in its own short transaction, so memory stays bounded whatever the
size; the row is marked complete last, and ``read`` only sees complete
attachments. A failed upload removes what it wrote; an upload cut short by a
crash leaves an incomplete row that
:meth:`~SQLAttachmentStore.purge_incomplete` removes.

Supports the whole :class:`~mailqueue.protocols.AttachmentStore` contract on
SQLite, MySQL/MariaDB and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Self
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mailqueue.backends._base import OptionsModel, Whole, parse_options, translate_errors
from mailqueue.errors import (
    AttachmentNotFoundError,
    AttachmentTooLargeError,
    BackendError,
    ConfigurationError,
)
from mailqueue.protocols import BackendContext, ResourceMixin, Store, StoredAttachment
from mailqueue.sql.schema import attachment_chunks, attachments

__all__ = ["DEFAULT_CHUNK_SIZE", "MAX_CHUNK_SIZE", "SQLAttachmentStore", "SQLBlobOptions"]

logger = logging.getLogger(__name__)

#: Default bytes per chunk row.
DEFAULT_CHUNK_SIZE = 256 * 1024
#: Largest chunk accepted: MEDIUMBLOB holds 16 MiB and a statement must fit
#: in MySQL's ``max_allowed_packet`` (16 MiB by default on MariaDB).
MAX_CHUNK_SIZE = 8 * 1024 * 1024
# Generated keys are 32 hex digits; anything of this shape fits the column.
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{3,63}")


class SQLBlobOptions(OptionsModel):
    """The options of a ``sql://`` attachment store URL (see the module docstring)."""

    chunk_size: Whole = DEFAULT_CHUNK_SIZE


_att_key = attachments.c["key"]
_chunk_key = attachment_chunks.c["key"]


def _new_key() -> str:
    return secrets.token_hex(16)


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class SQLAttachmentStore(ResourceMixin):
    """Attachment bytes as chunked blobs in a SQL database.

    The store never creates tables and never disposes the engine: both
    belong to the Store (or to whoever passed ``engine``).
    """

    #: The URL's options.
    url_options: ClassVar[type[OptionsModel]] = SQLBlobOptions

    def __init__(
        self,
        *,
        engine: AsyncEngine | None = None,
        store: Store | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        """Describe the store; nothing is touched until :meth:`open`.

        Args:
            engine: the database to use directly.
            store: a SQL Store whose ``engine`` (available once that store
                is opened) is used; give this or ``engine``, not both.
            chunk_size: bytes per chunk row, 1 to :data:`MAX_CHUNK_SIZE`.
                Readers follow the rows as written, so processes may use
                different sizes.

        Raises:
            ConfigurationError: neither or both of ``engine`` and ``store``,
                or ``chunk_size`` out of range.
        """
        if (engine is None) == (store is None):
            raise ConfigurationError("SQLAttachmentStore needs exactly one of engine= or store=")
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ConfigurationError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}, not {chunk_size}")
        self._given_engine = engine
        self._store = store
        self._chunk_size = chunk_size
        self._engine: AsyncEngine | None = None

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext) -> Self:
        """Build the store for a ``sql://`` URL on ``context.store``'s database.

        Raises:
            ConfigurationError: the URL names a host or path, has an unknown
                or invalid option, or there is no Store in ``context``.
        """
        parts = urlsplit(url)
        if parts.scheme.lower() != "sql":
            raise ConfigurationError(f"not a sql: URL: {url!r}")
        if parts.netloc or parts.path not in ("", "/"):
            raise ConfigurationError(
                f"sql attachment store URL {url!r} must not name a database: it uses the Store's; write sql://"
            )
        chunk_size = parse_options(url, SQLBlobOptions, label="sql attachment store", once=True).chunk_size
        if context.store is None:
            raise ConfigurationError(
                "the sql attachment store keeps attachments in the Store's database, but no Store was given"
            )
        return cls(store=context.store, chunk_size=chunk_size)

    @property
    def chunk_size(self) -> int:
        """Bytes per chunk row written, and so at most per chunk read."""
        return self._chunk_size

    @property
    def engine(self) -> AsyncEngine:
        """The engine in use.

        Raises:
            BackendError: the store is not open.
        """
        if self._engine is None:
            raise BackendError("the sql attachment store is not open; call open() or use 'async with'")
        return self._engine

    def __repr__(self) -> str:
        where = repr(self._engine.url.render_as_string()) if self._engine is not None else "not open"
        return f"{type(self).__name__}({where}, chunk_size={self._chunk_size})"

    async def open(self) -> None:
        """Take the engine and check that the attachment tables exist.

        Raises:
            ConfigurationError: the Store has no SQL engine (not a SQL store,
                or not opened yet).
            BackendError: the database is unreachable or the tables are
                missing (run the Store's migrations).
        """
        engine = self._given_engine
        if engine is None:
            try:
                engine = getattr(self._store, "engine", None)
            except ConfigurationError as exc:  # a SQL store that is not open yet
                raise ConfigurationError(
                    f"the sql attachment store uses the Store's engine, but the Store is not open: {exc}"
                ) from exc
            if not isinstance(engine, AsyncEngine):
                raise ConfigurationError(
                    f"the sql attachment store needs a SQL Store with an engine; {self._store!r} has none "
                    "(is it a SQL store, and opened before the attachment store?)"
                )
        tables = f"{attachments.name}, {attachment_chunks.name}"
        async with self._translate(f"query its tables ({tables})"), engine.connect() as conn:
            await conn.execute(sa.select(_att_key).limit(1))
            await conn.execute(sa.select(_chunk_key).limit(1))
        self._engine = engine

    async def close(self) -> None:
        """Forget the engine (it is not disposed: it is not ours); idempotent."""
        self._engine = None

    @asynccontextmanager
    async def _translate(self, action: str) -> AsyncIterator[None]:
        """:func:`translate_errors` into :class:`BackendError`, usable beside ``async with`` engines."""
        with translate_errors(BackendError, f"sql attachment store could not {action}"):
            yield

    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> StoredAttachment:
        """Stream ``chunks`` into chunk rows under a new generated key.

        Args:
            chunks: the content; an exception it raises propagates unchanged.
            max_bytes: the most bytes accepted, or ``None`` for no limit.

        Returns:
            The key (32 hex digits), size and SHA-256 of what was stored.

        Raises:
            AttachmentTooLargeError: more than ``max_bytes`` arrived; every
                row written is deleted and the rest of ``chunks`` is not read.
            BackendError: the database failed.
        """
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, not {max_bytes}")
        engine = self.engine
        key = _new_key()
        digest = hashlib.sha256()
        size = 0
        seq = 0
        buffer = bytearray()
        started = False
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise AttachmentTooLargeError(max_bytes)
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    take = min(self._chunk_size - len(buffer), len(view))
                    buffer += view[:take]
                    view = view[take:]
                    if len(buffer) == self._chunk_size:
                        started = True
                        await self._write_chunk(engine, key, seq, bytes(buffer))
                        buffer.clear()
                        seq += 1
            started = True
            await self._finish(engine, key, seq, bytes(buffer), size, digest.hexdigest())
        except BaseException:
            if started:
                # shielded: a second cancellation must not stop the clean-up
                await asyncio.shield(self._discard(engine, key))
            raise
        return StoredAttachment(key=key, size=size, sha256=digest.hexdigest())

    async def _write_chunk(self, engine: AsyncEngine, key: str, seq: int, data: bytes) -> None:
        async with self._translate("store an attachment chunk"), engine.begin() as conn:
            if seq == 0:
                await self._insert_row(conn, key, complete=False)
            await conn.execute(attachment_chunks.insert().values(key=key, seq=seq, data=data))

    async def _insert_row(
        self, conn: AsyncConnection, key: str, *, complete: bool, size: int = 0, sha256: str = ""
    ) -> None:
        await conn.execute(
            attachments.insert().values(
                key=key, size=size, sha256=sha256, complete=complete, created_at=_utcnow()
            )
        )

    async def _finish(
        self, engine: AsyncEngine, key: str, seq: int, rest: bytes, size: int, sha256: str
    ) -> None:
        async with self._translate("store an attachment"), engine.begin() as conn:
            if seq == 0:
                # it all fitted in one chunk: one transaction does it
                await self._insert_row(conn, key, complete=True, size=size, sha256=sha256)
            if rest:
                await conn.execute(attachment_chunks.insert().values(key=key, seq=seq, data=rest))
            if seq > 0:
                result = await conn.execute(
                    attachments.update()
                    .where(_att_key == key, attachments.c.complete == sa.false())
                    .values(complete=True, size=size, sha256=sha256)
                )
                if result.rowcount != 1:
                    raise BackendError(f"attachment {key} vanished while being stored (purged as stale?)")

    async def _discard(self, engine: AsyncEngine, key: str) -> None:
        try:
            async with self._translate("remove a failed upload"), engine.begin() as conn:
                await self._remove(conn, key)
        except BackendError as exc:
            logger.warning("could not remove failed upload %s, purge_incomplete() will: %s", key, exc)

    @staticmethod
    async def _remove(conn: AsyncConnection, key: str) -> None:
        await conn.execute(attachment_chunks.delete().where(_chunk_key == key))
        await conn.execute(attachments.delete().where(_att_key == key))

    async def read(self, key: str) -> AsyncIterator[bytes]:
        """Yield a complete attachment's bytes, one chunk row per query.

        No connection is held between chunks, so a slow reader costs the
        pool nothing. This is an async generator: a missing key raises on
        the first iteration, not on the call.

        Raises:
            AttachmentNotFoundError: no complete attachment under ``key``
                (``key`` invalid, never stored, not yet complete, or deleted
                while being read).
            BackendError: the database failed, or the rows are inconsistent.
        """
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise AttachmentNotFoundError(key)
        engine = self.engine
        async with self._translate("read an attachment"), engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(_att_key, attachments.c.size).where(
                        _att_key == key, attachments.c.complete == sa.true()
                    )
                )
            ).first()
        # MySQL compares case-insensitively: insist on the exact key
        if row is None or row[0] != key:
            raise AttachmentNotFoundError(key)
        remaining: int = row[1]
        seq = 0
        while remaining > 0:
            async with self._translate("read an attachment"), engine.connect() as conn:
                data = (
                    await conn.execute(
                        sa.select(attachment_chunks.c.data).where(
                            _chunk_key == key, attachment_chunks.c.seq == seq
                        )
                    )
                ).scalar()
            if data is None:
                raise AttachmentNotFoundError(key)
            remaining -= len(data)
            if remaining < 0:
                raise BackendError(f"attachment {key} has more bytes in its chunks than its recorded size")
            seq += 1
            yield bytes(data)

    async def delete(self, key: str) -> None:
        """Remove the attachment row and its chunks in one transaction; a
        missing or invalid key does nothing.

        Raises:
            BackendError: the database failed.
        """
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            return
        engine = self.engine
        async with self._translate("delete an attachment"), engine.begin() as conn:
            found = (await conn.execute(sa.select(_att_key).where(_att_key == key))).scalar()
            if found == key:
                await self._remove(conn, key)

    async def list_keys(self, *, before: datetime) -> AsyncIterator[tuple[str, datetime]]:
        """Yield ``(key, stored_at)`` of the complete attachments stored before ``before``.

        The keys are read first (in one query), then yielded.

        Raises:
            BackendError: the database failed.
        """
        engine = self.engine
        cutoff = before.astimezone(UTC).replace(tzinfo=None)
        async with self._translate("list attachments"), engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(_att_key, attachments.c.created_at).where(
                        attachments.c.complete == sa.true(), attachments.c.created_at < cutoff
                    )
                )
            ).all()
        for key, created_at in rows:
            yield key, created_at.replace(tzinfo=UTC)

    async def purge_incomplete(self, *, older_than: float = 3600.0) -> int:
        """Remove attachments whose upload started more than ``older_than``
        seconds ago and never completed (their writer crashed).

        Returns:
            How many attachments were removed.

        Raises:
            BackendError: the database failed.
        """
        engine = self.engine
        cutoff = _utcnow() - timedelta(seconds=older_than)
        async with self._translate("list incomplete attachments"), engine.connect() as conn:
            keys = (
                await conn.scalars(
                    sa.select(_att_key).where(
                        attachments.c.complete == sa.false(), attachments.c.created_at < cutoff
                    )
                )
            ).all()
        removed = 0
        for key in keys:
            async with self._translate("remove an incomplete attachment"), engine.begin() as conn:
                # re-checked here: the upload may have completed since the listing
                result = await conn.execute(
                    attachments.delete().where(_att_key == key, attachments.c.complete == sa.false())
                )
                if result.rowcount:
                    await conn.execute(attachment_chunks.delete().where(_chunk_key == key))
                    removed += 1
        return removed
