"""The Alembic migrations: new databases, the original service's table, re-runs, races.

Every test gets a scratch database of its own (a new SQLite file, or a
database created on the MariaDB/PostgreSQL server and dropped afterwards),
since migrations change the schema that the shared test databases keep.
"""

from __future__ import annotations

import asyncio
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from legacy_db import LEGACY_ROWS, ORIGINAL_COLUMNS, T0, T1, create_original_table, original_rows, run
from sqlalchemy.engine import Connection

from mailqueue.errors import StoreError
from mailqueue.message import Recipient
from mailqueue.records import RecipientState, RecordQuery, RecordUpdate, Status
from mailqueue.sql import migrations, schema
from mailqueue.sql.migrate import current, downgrade, head_revision, upgrade
from mailqueue.sql.store import SQLStore
from mailqueue.testing.store import make_record


def _default_text(value: Any) -> str:
    """A server default as text, normalized: quotes, case, ``()`` and MySQL's ``ON UPDATE`` dropped."""
    if value is None:
        return ""
    arg = getattr(value, "arg", value)
    if isinstance(arg, sa.sql.elements.False_):
        text = "0"
    elif isinstance(arg, sa.sql.ClauseElement):
        text = str(arg.compile()) if not isinstance(arg, sa.TextClause) else arg.text
    else:
        text = str(arg)
    text = text.lower().replace("()", "").removesuffix(" on update current_timestamp")
    return text.strip().strip("()'\"")


def schema_diff(conn: Connection) -> list[Any]:
    """``compare_metadata`` against :mod:`mailqueue.sql.schema`, types and defaults included.

    Ignored, and only these: server defaults that differ in rendering only
    (``''`` reflected as ``"''"`` on MySQL and as ``"('')"`` on SQLite, where
    Alembic writes defaults in parentheses; ``false`` reflected as ``'0'`` on
    MySQL; ``current_timestamp()``), and the ``ON UPDATE CURRENT_TIMESTAMP`` of
    ``email.updated_at`` on MySQL, which the original table has and keeps.
    """
    context = MigrationContext.configure(
        conn,
        opts={"version_table": schema.VERSION_TABLE, "compare_type": True, "compare_server_default": True},
    )
    left = []
    for diff in compare_metadata(context, schema.metadata):
        changes = diff if isinstance(diff, list) else [diff]
        kept = [
            change
            for change in changes
            if not (change[0] == "modify_default" and _default_text(change[5]) == _default_text(change[6]))
        ]
        left.extend(kept)
    return left


def snapshot(conn: Connection) -> dict[str, Any]:
    """Tables, columns and indexes as the database reports them."""
    inspector = sa.inspect(conn)
    result: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        columns = [
            (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
            for c in inspector.get_columns(table)
        ]
        indexes = sorted(
            (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)
        )
        result[table] = (columns, indexes)
    return result


async def assert_at_head(url: str) -> None:
    assert await current(url) == head_revision()
    assert await run(url, schema_diff) == []


# --- new databases ---------------------------------------------------------------------


async def test_fresh_database_matches_schema(scratch_url: str) -> None:
    assert await current(scratch_url) is None
    await upgrade(scratch_url)
    await assert_at_head(scratch_url)
    tables = await run(scratch_url, lambda conn: set(sa.inspect(conn).get_table_names()))
    assert tables == set(schema.metadata.tables) | {schema.VERSION_TABLE}


async def test_upgrade_again_changes_nothing(scratch_url: str) -> None:
    await upgrade(scratch_url)
    before = await run(scratch_url, snapshot)
    await upgrade(scratch_url)
    assert await run(scratch_url, snapshot) == before

    # the scripts themselves re-run over a schema that has everything already
    version = sa.table(schema.VERSION_TABLE, sa.column("version_num"))
    await run(scratch_url, lambda conn: conn.execute(version.update().values(version_num="0001")))
    await upgrade(scratch_url)
    assert await run(scratch_url, snapshot) == before
    await run(scratch_url, lambda conn: conn.execute(sa.text(f"DROP TABLE {schema.VERSION_TABLE}")))
    await upgrade(scratch_url)
    assert await run(scratch_url, snapshot) == before
    await assert_at_head(scratch_url)


async def test_concurrent_upgrades_all_succeed(scratch_url: str) -> None:
    await asyncio.gather(*(upgrade(scratch_url) for _ in range(3)))
    await assert_at_head(scratch_url)
    stores = [SQLStore(url=scratch_url) for _ in range(2)]
    await asyncio.gather(*(store.open() for store in stores))
    for store in stores:
        await store.close()


async def test_downgrade_keeps_the_rows_and_upgrade_adopts_them(scratch_url: str) -> None:
    async with SQLStore(url=scratch_url) as store:
        record = await store.add(
            make_record(subject="kept", to=(Recipient(address="k@example.com", name="K"),))
        )
        assert await store.update(record.id, RecordUpdate(status=Status.SENT))
    await downgrade(scratch_url, "0001")
    assert await current(scratch_url) == "0001"
    tables = await run(scratch_url, lambda conn: set(sa.inspect(conn).get_table_names()))
    assert tables == {"email", schema.VERSION_TABLE}
    columns = await run(scratch_url, lambda conn: [c["name"] for c in sa.inspect(conn).get_columns("email")])
    assert tuple(columns) == ORIGINAL_COLUMNS
    (row_id,) = await run(
        scratch_url, lambda conn: conn.execute(sa.text("SELECT id FROM email")).scalars().all()
    )

    await upgrade(scratch_url)
    await assert_at_head(scratch_url)
    async with SQLStore(url=scratch_url) as store:
        legacy = await store.get(f"legacy-{row_id}")
    assert legacy is not None
    assert (legacy.mail.subject, legacy.status, legacy.attempts) == ("kept", Status.SENT, 1)
    assert legacy.mail.to == (Recipient(address="k@example.com", name="K"),)


async def test_dashboard_indexes_come_and_go_with_revision_0003(scratch_url: str) -> None:
    def indexes(conn: Connection) -> set[str]:
        return {str(index["name"]) for index in sa.inspect(conn).get_indexes("email")}

    dashboard = {
        "ix_email_status_deleted_uid",
        "ix_email_code_deleted_uid",
        "ix_email_created_deleted_uid",
        "ix_email_uid_deleted_title",
        "ix_email_sent_at",
        "ix_email_status_updated_at",
    }
    await upgrade(scratch_url)
    at_head = await run(scratch_url, indexes)
    assert dashboard <= at_head
    assert "ix_email_status_id" not in at_head
    await downgrade(scratch_url, "0002")
    assert await current(scratch_url) == "0002"
    at_0002 = await run(scratch_url, indexes)
    assert at_0002 == (at_head - dashboard) | {"ix_email_status_id"}
    await upgrade(scratch_url)
    await assert_at_head(scratch_url)


async def test_unknown_revision_is_refused_by_upgrade_not_by_open(
    scratch_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await upgrade(scratch_url)
    version = sa.table(schema.VERSION_TABLE, sa.column("version_num"))
    await run(scratch_url, lambda conn: conn.execute(version.update().values(version_num="9999_future")))
    with pytest.raises(StoreError, match="9999_future"):
        await upgrade(scratch_url)
    for migrate in (False, True):
        async with SQLStore(url=scratch_url, migrate=migrate) as store:
            await store.add(make_record())
    assert await current(scratch_url) == "9999_future"
    assert any("9999_future" in record.getMessage() for record in caplog.records)


def test_alembic_command_line_works_with_the_package_env(tmp_path: Path) -> None:
    """What a developer runs to write the next revision: env.py with ``sqlalchemy.url``."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("path_separator", "os")
    config.set_main_option("sqlalchemy.url", f"sqlite+aiosqlite:///{tmp_path / 'dev.db'}")
    command.upgrade(config, "head")
    command.check(config)  # raises if autogenerate finds anything to add
    assert asyncio.run(current(f"sqlite:///{tmp_path / 'dev.db'}")) == head_revision()


async def test_migrate_false_refuses_an_old_schema(scratch_url: str) -> None:
    await upgrade(scratch_url, "0001")
    with pytest.raises(StoreError, match=r"'0001'.*mailqueue db upgrade"):
        await SQLStore(url=scratch_url, migrate=False).open()
    async with SQLStore.from_url(
        scratch_url + ("&" if "?" in scratch_url else "?") + "migrate=true"
    ) as store:
        await store.ping()
    assert await current(scratch_url) == head_revision()


# --- adopting the original service's table ------------------------------------------------


async def test_original_table_is_adopted(scratch_url: str) -> None:
    await create_original_table(scratch_url)
    before = await run(scratch_url, original_rows)
    ids = [row[0] for row in before]
    assert len(ids) == len(LEGACY_ROWS)

    await upgrade(scratch_url)
    await assert_at_head(scratch_url)
    assert await run(scratch_url, original_rows) == before  # updated_at too, despite ON UPDATE
    added = await run(
        scratch_url,
        lambda conn: conn.execute(
            sa.text("SELECT uid, status, attempts, payload, message_id FROM email ORDER BY id")
        ).all(),
    )
    assert [tuple(row) for row in added] == [
        (f"legacy-{ids[0]}", "sent", 1, None, None),
        (f"legacy-{ids[1]}", "failed", 1, None, None),
        (f"legacy-{ids[2]}", "failed", 1, None, None),
        (f"legacy-{ids[3]}", "failed", 1, None, None),
        (f"legacy-{ids[4]}", "sent", 1, None, None),
    ]

    async with SQLStore(url=scratch_url) as store:
        first = await store.get(f"legacy-{ids[0]}")
        assert first is not None
        assert first.mail.subject == "Willkommen"
        assert first.mail.html == "<p>Hallo Anna</p>"
        assert first.mail.sender_name == "Team"
        assert first.mail.to == (
            Recipient(address="anna@example.com", name="Anna"),
            Recipient(address="ben@example.com", name="Ben"),
        )
        assert first.mail.attachments == ()
        assert (first.status, first.is_ok, first.attempts, first.history) == (Status.SENT, True, 1, ())
        assert [r.state for r in first.recipients] == [RecipientState.SENT, RecipientState.SENT]
        assert first.created_at == T0.replace(tzinfo=UTC)
        assert first.updated_at == T1.replace(tzinfo=UTC)

        second = await store.get(f"legacy-{ids[1]}")
        assert second is not None
        assert (second.status, second.is_ok, second.remark) == (
            Status.FAILED,
            False,
            "Not Found: rechnung.pdf",
        )
        assert second.pending() == ("carl@example.com",)

        odd = await store.get(f"legacy-{ids[2]}")
        assert odd is not None
        assert odd.mail.subject == "(no subject)"
        assert odd.mail.html == "bell body"
        assert odd.mail.sender_name == "two lines"
        assert odd.mail.to == (Recipient(address="dora@example.com"),)

        broken = await store.get(f"legacy-{ids[3]}")
        assert broken is not None
        assert broken.mail.subject == "Broken"
        assert broken.mail.to == ()
        assert broken.recipients == ()

        listed = await store.find(RecordQuery())
        assert sorted(r.id for r in listed) == sorted(f"legacy-{i}" for i in ids[:4])
        failed = await store.find(RecordQuery(statuses=frozenset({Status.FAILED})))
        assert sorted(r.id for r in failed) == sorted(f"legacy-{i}" for i in ids[1:4])
        assert len(await store.find(RecordQuery(include_deleted=True))) == 5

        # a legacy record can be re-sent, and new records live beside the old ones
        assert await store.update(
            f"legacy-{ids[1]}", RecordUpdate(status=Status.QUEUED, expect=frozenset({Status.FAILED}))
        )
        new = await store.add(make_record())
        got = await store.get(new.id)
        assert got == new
    rows = await run(scratch_url, original_rows)
    assert rows[-1][0] > ids[-1]
