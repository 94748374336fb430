"""What the SQL store's statements share: its engine, its kept connections, the
statements it compiled, and the database's precision of time.

:class:`Database` is the state of one :class:`~mailqueue.sql.store.SQLStore`;
the read path (:mod:`mailqueue.sql.reads`), the inserts and removals
(:mod:`mailqueue.sql.writes`) and the record changes
(:mod:`mailqueue.sql.changes`) are functions that take it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from mailqueue.errors import StoreError
from mailqueue.sql import schema
from mailqueue.sql.engine import translated
from mailqueue.sql.fastpath import INSERT_STATEMENTS, KeptConnection, Prepared
from mailqueue.sql.rows import naive_utc

__all__ = ["Database", "uid_params"]

T = TypeVar("T")

#: Statements compiled per store at most (one per kind of run and number of records).
PREPARED_MAX = 2000

email = schema.email


def uid_params(rows: int) -> list[sa.BindParameter[Any]]:
    """The parameters ``u0`` .. ``u<rows-1>``: the mail ids a statement of the fast path is about."""
    return [sa.bindparam(f"u{row}", type_=email.c.uid.type) for row in range(rows)]


class Database:
    """The database of one SQL store: set :attr:`engine` once open, ``None`` once closed.

    Args:
        url: the database URL with the password hidden (for messages).
        dialect_name: SQLAlchemy's name of the database.
    """

    def __init__(self, url: str, dialect_name: str) -> None:
        self.url = url
        self.dialect_name = dialect_name
        #: MySQL/MariaDB's ``DATETIME`` keeps whole seconds (cut, not rounded).
        self.second_precision = dialect_name in ("mysql", "mariadb")
        self.engine: AsyncEngine | None = None
        # the group commits' connections (see KeptConnection): the worker's reads (get_many),
        # its writes (update_many) and the API's mark clearing, the API's inserts (add_many)
        self.reads = KeptConnection(autocommit=True)
        self.writes = KeptConnection(autocommit=False)
        self.inserts = KeptConnection(autocommit=False, statement_cache=INSERT_STATEMENTS)
        self._prepared: dict[tuple[Any, ...], Prepared] = {}
        self._readers: tuple[tuple[str, Callable[[Any], Any] | None], ...] | None = None

    def open_engine(self) -> AsyncEngine:
        """The engine.

        Raises:
            StoreError: the store is not open.
        """
        if self.engine is None:
            raise StoreError("the SQL store is not open")
        return self.engine

    async def run(self, action: str, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
        """``work`` on the engine, any failure raised as ``StoreError("cannot <action> (<url>)...")``."""
        engine = self.open_engine()
        with translated(f"cannot {action} ({self.url})"):
            return await work(engine)

    async def close_kept(self) -> None:
        """Close the kept connections."""
        for kept in (self.reads, self.writes, self.inserts):
            await kept.close()

    def db_time(self, value: datetime | None) -> datetime | None:
        """``value`` as the columns keep it: naive UTC, to the second on MySQL/MariaDB."""
        if value is None:
            return None
        value = naive_utc(value)
        return value.replace(microsecond=0) if self.second_precision else value

    def prepare(self, key: tuple[Any, ...], build: Callable[[], sa.ClauseElement]) -> Prepared:
        """The statement ``build`` makes, compiled for this database once per ``key``."""
        prepared = self._prepared.get(key)
        if prepared is None:
            if len(self._prepared) >= PREPARED_MAX:
                self._prepared.clear()
            prepared = self._prepared[key] = Prepared(build(), self.open_engine().dialect)
        return prepared

    def row_mapping(self, row: Sequence[Any]) -> dict[str, Any]:
        """A row of ``email`` read with ``exec_driver_sql``, by column name, with the
        columns' result processors applied (SQLite keeps dates as text)."""
        readers = self._readers
        if readers is None:
            dialect = self.open_engine().dialect
            readers = self._readers = tuple(
                (column.name, column.type.dialect_impl(dialect).result_processor(dialect, None))
                for column in email.columns
            )
        return {
            name: value if process is None or value is None else process(value)
            for (name, process), value in zip(readers, row, strict=True)
        }
