"""The original service's ``email`` table (REFERENCE.md) and its rows, as the migration tests
and the legacy re-send test create them in a scratch database (conftest's ``scratch_url``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from mailqueue.sql.migrate import upgrade

#: The original service's table, verbatim from REFERENCE.md.
ORIGINAL_DDL = """
CREATE TABLE `email` (
  `id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  `title` VARCHAR(255) NOT NULL DEFAULT '',        -- subject
  `content` TEXT NOT NULL,                          -- body
  `sender_name` VARCHAR(50) NOT NULL DEFAULT '',
  `receiver` TEXT NOT NULL,                         -- addresses, comma separated
  `receiver_name` TEXT NOT NULL,                    -- names, comma separated
  `attachment` VARCHAR(1000) NOT NULL DEFAULT '',   -- attachment info
  `remark` VARCHAR(100) NOT NULL DEFAULT '',        -- notes, e.g. missing attachments
  `is_ok` TINYINT UNSIGNED NOT NULL DEFAULT 0,      -- 0 failed, 1 sent
  `is_deleted` TINYINT UNSIGNED NOT NULL DEFAULT 0, -- 0 normal, 1 deleted
  `created_at` DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
  `updated_at` DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  PRIMARY KEY (`id`), KEY `idx-created_at` (`created_at`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

ORIGINAL_COLUMNS = (
    "id",
    "title",
    "content",
    "sender_name",
    "receiver",
    "receiver_name",
    "attachment",
    "remark",
    "is_ok",
    "is_deleted",
    "created_at",
    "updated_at",
)

T0 = datetime(2021, 3, 4, 5, 6, 7)
T1 = datetime(2021, 3, 5, 8, 9, 10)

#: Rows as the original service wrote them, some of them not valid any more.
LEGACY_ROWS: list[dict[str, Any]] = [
    {
        "title": "Willkommen",
        "content": "<p>Hallo Anna</p>",
        "sender_name": "Team",
        "receiver": "anna@example.com,ben@example.com",
        "receiver_name": "Anna,Ben",
        "attachment": "welcome.pdf",
        "remark": "",
        "is_ok": 1,
        "is_deleted": 0,
    },
    {
        "title": "Rechnung",
        "content": "<p>Rechnung</p>",
        "sender_name": "",
        "receiver": "carl@example.com",
        "receiver_name": "",
        "attachment": "",
        "remark": "Not Found: rechnung.pdf",
        "is_ok": 0,
        "is_deleted": 0,
    },
    {
        # empty subject, control characters, one bad address, names not matching
        "title": "",
        "content": "bell\x07body",
        "sender_name": "two\nlines",
        "receiver": "not-an-address, dora@example.com",
        "receiver_name": "Only One",
        "attachment": "",
        "remark": "",
        "is_ok": 0,
        "is_deleted": 0,
    },
    {
        # no valid recipient at all
        "title": "Broken",
        "content": "x",
        "sender_name": "",
        "receiver": "garbage",
        "receiver_name": "",
        "attachment": "",
        "remark": "",
        "is_ok": 0,
        "is_deleted": 0,
    },
    {
        "title": "Deleted",
        "content": "gone",
        "sender_name": "",
        "receiver": "eve@example.com",
        "receiver_name": "Eve",
        "attachment": "",
        "remark": "",
        "is_ok": 1,
        "is_deleted": 1,
    },
]


async def run(url: str, work: Any) -> Any:
    """``work(connection)`` (sync) in one transaction on ``url``; its result."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(work)
    finally:
        await engine.dispose()


async def create_original_table(url: str) -> None:
    if make_url(url).get_dialect().name in ("mysql", "mariadb"):
        # the original's own DDL, no mailqueue revision involved
        await run(url, lambda conn: conn.exec_driver_sql(ORIGINAL_DDL))
    else:
        await upgrade(url, "0001")
    email = sa.table("email", *(sa.column(name) for name in ORIGINAL_COLUMNS[1:]))
    rows = [{**row, "created_at": T0, "updated_at": T1} for row in LEGACY_ROWS]
    await run(url, lambda conn: conn.execute(email.insert(), rows))


def original_rows(conn: Connection) -> list[tuple[Any, ...]]:
    columns = ", ".join(ORIGINAL_COLUMNS)
    return [tuple(row) for row in conn.execute(sa.text(f"SELECT {columns} FROM email ORDER BY id"))]
