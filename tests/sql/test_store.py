"""The Store backends: the conformance suite over each, and what only SQL does."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from mailqueue.errors import (
    AttachmentNotFoundError,
    AttachmentTooLargeError,
    BackendError,
    ConfigurationError,
    MissingDependencyError,
    StoreError,
)
from mailqueue.message import AttachmentRef, Mail, Recipient
from mailqueue.protocols import AttachmentStore, BackendContext, Store
from mailqueue.records import Attempt, MailRecord, RecordQuery, RecordUpdate, Status, utcnow
from mailqueue.sql import fastpath, schema
from mailqueue.sql.migrate import current, head_revision, upgrade
from mailqueue.sql.store import SQLStore
from mailqueue.stores.memory import MemoryAttachmentStore, MemoryStore
from mailqueue.testing.store import StoreConformance, make_mail, make_record

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sql-sqlite"),
    pytest.param("mysql", id="sql-mysql", marks=pytest.mark.mysql),
    pytest.param("postgres", id="sql-postgres", marks=pytest.mark.postgres),
]


# The URL fixtures are resolved in sync fixtures: conftest's session fixtures
# call asyncio.run(), which cannot happen inside an async fixture's loop.


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest) -> str:
    """``memory://`` or a fresh database of each SQL server."""
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


class TestStoreConformance(StoreConformance):
    @pytest.fixture
    async def store(self, store_url: str) -> AsyncIterator[Store]:
        backend: Store
        if store_url == "memory://":
            backend = MemoryStore.from_url(store_url, context=BackendContext())
        else:
            backend = SQLStore.from_url(store_url, context=BackendContext())
        async with backend:
            yield backend

    @pytest.fixture
    def backend_url(self, store_url: str) -> str:
        return store_url


@pytest.fixture
async def sql_store(sql_url: str) -> AsyncIterator[SQLStore]:
    """An opened SQLStore on each database in turn (conftest's ``sql_url``)."""
    async with SQLStore.from_url(sql_url) as store:
        yield store


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def email_row(store: SQLStore, mail_id: str) -> dict[str, object]:
    async with store.engine.connect() as conn:
        # the table's types, so that SQLite's text dates come back as datetimes
        query = sa.select(schema.email).where(schema.email.c.uid == mail_id)
        row = (await conn.execute(query)).mappings().one()
    return dict(row)


# --- the original service's columns -----------------------------------------------


async def test_original_columns_keep_their_meaning(sql_store: SQLStore) -> None:
    mail = make_mail(
        subject="Rechnung März",
        html="<b>Hallo</b>",
        sender_name="Buchhaltung",
        to=(
            Recipient(address="a@example.com", name="Anna"),
            Recipient(address="b@example.com", name="Bernd"),
        ),
        cc=(Recipient(address="c@example.com", name="Cc"),),
        attachments=(
            AttachmentRef(key="k1", filename="rechnung.pdf", size=3, sha256="1" * 64),
            AttachmentRef(key="k2", filename="agb.txt", size=4, sha256="2" * 64),
        ),
        message_id="<m1@example.com>",
        idempotency_key="idem-1",
    )
    before = utcnow().replace(tzinfo=None, microsecond=0)
    await sql_store.add(MailRecord.new(mail))
    row = await email_row(sql_store, mail.id)
    assert row["title"] == "Rechnung März"
    assert row["content"] == "<b>Hallo</b>"
    assert row["sender_name"] == "Buchhaltung"
    assert row["receiver"] == "a@example.com,b@example.com"
    assert row["receiver_name"] == "Anna,Bernd"
    assert row["attachment"] == "rechnung.pdf,agb.txt"
    assert row["remark"] == ""
    assert row["is_ok"] == 0
    assert row["is_deleted"] == 0
    created = row["created_at"]
    assert isinstance(created, datetime)
    assert created.tzinfo is None
    assert before - timedelta(seconds=1) <= created <= utcnow().replace(tzinfo=None)
    assert row["status"] == "queued"
    assert row["attempts"] == 0
    assert row["message_id"] == "<m1@example.com>"
    assert row["idempotency_key"] == "idem-1"
    assert Mail.model_validate_json(str(row["payload"])) == mail
    assert [r["address"] for r in json.loads(str(row["recipients"]))] == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
    ]

    attempt = Attempt(
        number=1, started_at=utcnow(), finished_at=utcnow(), outcome="sent", code=250, reply="ok"
    )
    sent = RecordUpdate(status=Status.SENT, attempt=attempt, remark="Not Found: x.pdf", sent_at=utcnow())
    assert await sql_store.update(mail.id, sent)
    row = await email_row(sql_store, mail.id)
    assert row["is_ok"] == 1
    assert row["status"] == "sent"
    assert row["remark"] == "Not Found: x.pdf"
    assert row["attempts"] == 1
    assert row["sent_at"] is not None
    async with sql_store.engine.connect() as conn:
        attempts = (
            (
                await conn.execute(
                    sa.text("SELECT * FROM email_attempt WHERE email_id = :id"), {"id": row["id"]}
                )
            )
            .mappings()
            .all()
        )
    assert [(a["number"], a["outcome"], a["code"], a["reply"]) for a in attempts] == [(1, "sent", 250, "ok")]

    assert await sql_store.update(mail.id, RecordUpdate(status=Status.RETRYING, is_deleted=True))
    row = await email_row(sql_store, mail.id)
    assert (row["is_ok"], row["is_deleted"]) == (0, 1)


async def test_original_columns_cut_to_fit(sql_store: SQLStore) -> None:
    html = "é" * Mail.BODY_MAX  # 131070 UTF-8 bytes: more than TEXT holds on MySQL
    names = tuple(Recipient(address=f"u{i}@example.com", name="Ñ" * 250 + str(i)) for i in range(100))
    attachments = tuple(
        AttachmentRef(key=f"k{i}", filename=f"{'x' * 40}{i}.pdf", size=1, sha256="3" * 64) for i in range(40)
    )
    mail = make_mail(html=html, to=names, attachments=attachments)
    await sql_store.add(MailRecord.new(mail).evolve(remark="r" * 300, last_error="e" * 3000))
    row = await email_row(sql_store, mail.id)
    content = str(row["content"])
    assert len(content.encode()) <= 65535
    assert content == "é" * (65535 // 2)
    receiver_name = str(row["receiver_name"])
    assert len(receiver_name.encode()) <= 65535
    assert receiver_name.startswith("Ñ" * 250 + "0,Ñ")
    assert str(row["attachment"]) == ",".join(a.filename for a in attachments)[:1000]
    assert row["remark"] == "r" * 100
    assert row["last_error"] == "e" * 1000
    got = await sql_store.get(mail.id)
    assert got is not None
    assert got.mail == mail
    assert got.remark == "r" * 100


async def test_receiver_name_empty_without_names(sql_store: SQLStore) -> None:
    mail = make_mail(to=(Recipient(address="a@example.com"), Recipient(address="b@example.com")))
    await sql_store.add(MailRecord.new(mail))
    row = await email_row(sql_store, mail.id)
    assert row["receiver_name"] == ""
    assert row["receiver"] == "a@example.com,b@example.com"


async def test_payload_has_headers_only_when_the_mail_has_some(sql_store: SQLStore) -> None:
    # a row of a mail without extra headers stays readable by the version before the field
    plain = make_mail()
    with_headers = make_mail(headers=(("X-Campaign", "spring"),))
    for mail in (plain, with_headers):
        await sql_store.add(MailRecord.new(mail))
    assert "headers" not in json.loads(str((await email_row(sql_store, plain.id))["payload"]))
    stored = json.loads(str((await email_row(sql_store, with_headers.id))["payload"]))
    assert stored["headers"] == [["X-Campaign", "spring"]]
    got = await sql_store.get(with_headers.id)
    assert got is not None
    assert got.mail.headers == (("X-Campaign", "spring"),)


async def test_unreadable_payload_falls_back_to_columns(sql_store: SQLStore) -> None:
    mail = make_mail(subject="Kept", html="<p>body</p>", to=(Recipient(address="x@example.com", name="X"),))
    await sql_store.add(MailRecord.new(mail))
    async with sql_store.engine.begin() as conn:
        await conn.execute(sa.text("UPDATE email SET payload = '{broken' WHERE uid = :uid"), {"uid": mail.id})
    got = await sql_store.get(mail.id)
    assert got is not None
    assert (got.id, got.mail.subject, got.mail.html) == (mail.id, "Kept", "<p>body</p>")
    assert got.mail.to == mail.to
    assert [r.id for r in await sql_store.find(RecordQuery())] == [mail.id]


# --- URLs, connections, errors -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("sqlite:///./x.db", "sqlite+aiosqlite"),
        ("mysql://u:p@h/db", "mysql+asyncmy"),
        ("mariadb://u:p@h/db", "mariadb+asyncmy"),
        ("postgresql://u:p@h/db", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u:p@h/db", "postgresql+asyncpg"),
    ],
)
def test_bare_schemes_choose_async_drivers(url: str, driver: str) -> None:
    store = SQLStore.from_url(url)
    assert store.url.startswith(driver + "://")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sqlite:///x.db?migrate=maybe", "migrate"),
        ("sqlite:///x.db?pool_size=0", "pool_size"),
        ("sqlite:///x.db?pool_size=big", "pool_size"),
        ("sqlite:///x.db?echo=loud", "echo"),
        ("sqlite:///x.db?migrate=true&migrate=false", "migrate"),
        ("sqlite://", "memory"),
        ("sqlite:///:memory:", "memory"),
        ("postgresql+psycopg2://u@h/db", "asyncio"),
        ("nosuchdb://u@h/db", "nosuchdb"),
        ("::not a url::", "URL"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        SQLStore.from_url(url)


@pytest.mark.parametrize(
    ("url", "driver", "option"),
    [
        ("sqlite:///x.db", "aiosqlite", "cached_statements"),
        ("mysql://u@h/db?charset=utf8mb4", "asyncmy", "read_timeout"),
        ("postgresql://u@h/db", "asyncpg", "command_timeout"),
    ],
)
def test_unknown_option_lists_mailqueues_and_the_drivers(url: str, driver: str, option: str) -> None:
    SQLStore.from_url(f"{url}{'&' if '?' in url else '?'}{option}=5")  # the driver's: passed on
    with pytest.raises(ConfigurationError) as info:
        SQLStore.from_url(f"{url}{'&' if '?' in url else '?'}colour=blue")
    message = str(info.value)
    assert "'colour'" in message
    assert "migrate, pool_size, echo" in message
    assert f"the {driver} driver's: " in message
    assert option in message


def test_options_of_an_untested_driver_are_passed_on_unchecked() -> None:
    store = SQLStore.from_url("mysql+aiomysql://u@h/db?colour=blue&pool_size=2")
    assert store.url == "mysql+aiomysql://u@h/db?colour=blue"


async def test_migrations_check_the_url_options_too(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError, match="colour"):
        await upgrade(sqlite_url + "?colour=blue")


def test_options_belong_to_from_url() -> None:
    with pytest.raises(ConfigurationError, match="migrate"):
        SQLStore(url="sqlite:///x.db?migrate=false")
    with pytest.raises(ConfigurationError):
        SQLStore()


@pytest.mark.parametrize(
    ("module", "extra", "url"),
    [("asyncmy", "mysql", "mysql://h/db"), ("asyncpg", "postgres", "postgresql://h/db")],
)
def test_missing_driver_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, extra: str, url: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what `import` meets when the package is absent
    with pytest.raises(MissingDependencyError) as info:
        SQLStore.from_url(url)
    assert (info.value.package, info.value.extra) == (module, extra)
    assert f"pip install 'mailqueue[{extra}]'" in str(info.value)


@pytest.mark.parametrize("scheme", ["mysql+asyncmy", "postgresql+asyncpg"])
async def test_unreachable_database_is_store_error_without_password(
    scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-Pa55"
    store = SQLStore.from_url(f"{scheme}://user:{secret}@127.0.0.1:{closed_port()}/db?pool_size=2")
    assert secret not in repr(store)
    assert secret not in store.url
    with pytest.raises(StoreError) as info:
        await store.open()
    assert secret not in str(info.value)
    assert secret not in repr(info.value)
    assert "***" in str(info.value)
    assert all(secret not in record.getMessage() for record in caplog.records)
    with pytest.raises(StoreError):
        await store.ping()
    with pytest.raises(ConfigurationError):
        _ = store.engine
    await store.close()


@pytest.mark.postgres
async def test_wrong_database_name_is_store_error(postgres_url: str) -> None:
    url = sa.make_url(postgres_url).set(database="mq_no_such_database")
    with pytest.raises(StoreError, match="mq_no_such_database"):
        await SQLStore(url=url).open()


@pytest.mark.mysql
async def test_driver_refusing_an_option_is_configuration_error(mysql_url: str) -> None:
    with pytest.raises(ConfigurationError, match="bogus"):
        SQLStore.from_url(mysql_url + "&bogus=1")
    # the constructor's URL goes to SQLAlchemy as it is: the driver's connect() refuses it
    with pytest.raises(ConfigurationError, match="bogus"):
        await SQLStore(url=mysql_url + "&bogus=1").open()


@pytest.mark.mysql
async def test_driver_options_reach_the_driver(mysql_url: str) -> None:
    url = sa.make_url(mysql_url).update_query_dict({"charset": "latin1"})
    async with SQLStore.from_url(url.render_as_string(hide_password=False) + "&pool_size=2") as store:
        async with store.engine.connect() as conn:
            assert (await conn.exec_driver_sql("SELECT @@character_set_client")).scalar() == "latin1"
        assert "Pool size: 2 " in store.engine.pool.status()


async def test_sqlite_relative_path_and_missing_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with SQLStore.from_url("sqlite:///./data/sub/mailqueue.db?pool_size=3&echo=false") as store:
        assert store.dialect_name == "sqlite"
        assert "Pool size: 3 " in store.engine.pool.status()
        assert store.engine.echo is False
        record = await store.add(make_record())
        async with store.engine.connect() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
            timeout = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar()
            synchronous = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
        assert (mode, timeout, synchronous) == ("wal", 30000, 1)
    assert (tmp_path / "data" / "sub" / "mailqueue.db").is_file()
    async with SQLStore.from_url(f"sqlite+aiosqlite:///{tmp_path / 'data/sub/mailqueue.db'}") as again:
        assert await again.get(record.id) == record


async def test_store_shares_a_given_engine(sqlite_url: str) -> None:
    engine = create_async_engine(sqlite_url, poolclass=NullPool)
    try:
        async with SQLStore(engine=engine) as store:
            assert store.engine is engine
            await store.add(make_record())
        async with engine.connect() as conn:  # not disposed by the store
            assert (await conn.execute(sa.select(sa.func.count()).select_from(schema.email))).scalar() == 1
    finally:
        await engine.dispose()


async def test_migrate_false_refuses_an_unmigrated_database(sqlite_url: str) -> None:
    store = SQLStore.from_url(sqlite_url + "?migrate=false")
    with pytest.raises(StoreError, match="mailqueue db upgrade"):
        await store.open()
    assert await current(sqlite_url) is None
    await upgrade(sqlite_url + "?migrate=false")
    assert await current(sqlite_url) == head_revision()
    async with store:
        await store.ping()


async def test_open_migrates_by_default(sql_store: SQLStore) -> None:
    assert await current(sql_store.engine) == head_revision()
    async with sql_store.engine.connect() as conn:
        tables = await conn.run_sync(lambda sync: set(sa.inspect(sync).get_table_names()))
    assert set(schema.metadata.tables) | {schema.VERSION_TABLE} <= tables


# --- MemoryStore / MemoryAttachmentStore specifics ---------------------------------------


@pytest.mark.parametrize("url", ["memory://x", "memory:///path", "memory://?size=1", "file://"])
def test_memory_urls_take_nothing(url: str) -> None:
    with pytest.raises(ConfigurationError):
        MemoryStore.from_url(url, context=BackendContext())
    with pytest.raises(ConfigurationError):
        MemoryAttachmentStore.from_url(url, context=BackendContext())


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read_all(store: AttachmentStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(key)])


async def test_memory_attachment_store_round_trip() -> None:
    async with MemoryAttachmentStore.from_url("memory://", context=BackendContext()) as store:
        data = bytes(range(256)) * 1000
        stored = await store.put(chunks_of(data[:1000], data[1000:]), max_bytes=len(data))
        assert stored.size == len(data)
        assert stored.sha256 == hashlib.sha256(data).hexdigest()
        assert len(stored.key) >= 16
        assert stored.key[0].isalnum()
        assert set(stored.key) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
        assert AttachmentRef(key=stored.key, filename="a", size=1, sha256="0" * 64).key == stored.key
        parts = [chunk async for chunk in store.read(stored.key)]
        assert len(parts) > 1
        assert b"".join(parts) == data
        other = await store.put(chunks_of(b""))
        assert other.key != stored.key
        assert other.size == 0
        assert await read_all(store, other.key) == b""
        await store.delete(stored.key)
        await store.delete(stored.key)
        with pytest.raises(AttachmentNotFoundError):
            await read_all(store, stored.key)


async def test_memory_attachment_store_limit_keeps_nothing() -> None:
    async with MemoryAttachmentStore() as store:
        with pytest.raises(AttachmentTooLargeError) as info:
            await store.put(chunks_of(b"12345", b"678"), max_bytes=7)
        assert info.value.limit == 7
        assert repr(store) == "MemoryAttachmentStore(attachments=0)"
        exact = await store.put(chunks_of(b"12345", b"67"), max_bytes=7)
        assert await read_all(store, exact.key) == b"1234567"
    with pytest.raises(BackendError):
        await store.put(chunks_of(b"x"))


async def test_memory_store_keeps_records_across_reopen() -> None:
    store = MemoryStore()
    with pytest.raises(StoreError):
        await store.add(make_record())
    async with store:
        record = await store.add(make_record())
    async with store:
        assert await store.get(record.id) == record


# --- batches (group commit) ---------------------------------------------------------


async def test_update_many_that_fails_commits_none_of_its_changes(sql_store: SQLStore) -> None:
    """One bad change (an attempt row the database refuses) undoes the whole batch."""
    first = MailRecord.new(Mail(subject="a", html="a", to=[Recipient(address="a@example.com")]))
    second = MailRecord.new(Mail(subject="b", html="b", to=[Recipient(address="b@example.com")]))
    await sql_store.add(first)
    await sql_store.add(second)
    now = utcnow()
    good = RecordUpdate(status=Status.SENT, attempt=Attempt(1, now, now, "sent", 250, ""))
    bad = RecordUpdate(status=Status.SENT, attempt=Attempt(1, None, now, "sent", 250, ""))  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        await sql_store.update_many([(first.id, good), (second.id, bad)])
    for record in (first, second):
        got = await sql_store.get(record.id)
        assert got is not None
        assert (got.status, got.attempts, got.history) == (Status.QUEUED, 0, ())
    assert await sql_store.update_many([(first.id, good), (second.id, good)]) == [True, True]


async def test_update_many_redone_after_a_mismatch_applies_each_change_once(sql_store: SQLStore) -> None:
    """A batch whose second run does not fully match (on MySQL/MariaDB: rolled back and done
    again with the rows locked) applies the first run, and adds its attempt rows, once."""
    records = [MailRecord.new(make_mail()) for _ in range(4)]
    for record in records:
        await sql_store.add(record)
    now = utcnow()
    claim = RecordUpdate(status=Status.SENDING, expect=frozenset({Status.QUEUED}))
    assert await sql_store.update_many([(r.id, claim) for r in records[:3]]) == [True] * 3

    def outcome(n: int) -> RecordUpdate:
        return RecordUpdate(
            status=Status.SENT,
            attempt=Attempt(1, now, now, "sent", 250, f"ok {n}"),
            remark=f"r{n}",
            sent_at=now,
            expect=frozenset({Status.SENDING}),
        )

    retry = RecordUpdate(
        status=Status.RETRYING,
        attempt=Attempt(1, now, now, "transient", 451, "later"),
        next_attempt_at=now + timedelta(minutes=1),
        expect=frozenset({Status.SENDING}),
    )
    # run 1: two outcomes that match; run 2: a retry that matches and one that does not (still queued)
    changes = [
        (records[0].id, outcome(0)),
        (records[1].id, outcome(1)),
        (records[2].id, retry),
        (records[3].id, retry),
    ]
    assert await sql_store.update_many(changes) == [True, True, True, False]
    for n in (0, 1):
        got = await sql_store.get(records[n].id)
        assert got is not None
        assert (got.status, got.attempts, got.remark) == (Status.SENT, 1, f"r{n}")
        assert [a.reply for a in got.history] == [f"ok {n}"]
    retried, untouched = await sql_store.get(records[2].id), await sql_store.get(records[3].id)
    assert retried is not None
    assert untouched is not None
    assert (retried.status, [a.code for a in retried.history]) == (Status.RETRYING, [451])
    assert (untouched.status, untouched.attempts, untouched.history) == (Status.QUEUED, 0, ())


async def _drop_connections(store: SQLStore) -> int:
    """Close, from the server's side, every other connection to the store's database."""
    async with store.engine.connect() as conn:
        if store.dialect_name == "postgresql":
            query = (
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            dropped = len((await conn.exec_driver_sql(query)).all())
        else:
            query = (
                "SELECT id FROM information_schema.processlist "
                "WHERE db = DATABASE() AND id <> CONNECTION_ID()"
            )
            ids = [row[0] for row in (await conn.exec_driver_sql(query)).all()]
            for connection_id in ids:
                await conn.exec_driver_sql(f"KILL {int(connection_id)}")
            dropped = len(ids)
    return dropped


@pytest.mark.parametrize("idle", [False, True], ids=["busy", "idle"])
async def test_a_dropped_batch_connection_is_replaced(
    sql_store: SQLStore, idle: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """get_many and update_many keep a connection each: when the server drops it, the next
    call fails with StoreError (or, after the connection was idle, pings and reconnects
    first), and the call after that works on a new connection."""
    if sql_store.dialect_name == "sqlite":
        pytest.skip("SQLite has no server to drop connections")
    record = MailRecord.new(make_mail())
    await sql_store.add(record)
    claim = RecordUpdate(status=Status.SENDING, expect=frozenset({Status.QUEUED, Status.SENDING}))
    assert list(await sql_store.get_many([record.id])) == [record.id]
    assert await sql_store.update_many([(record.id, claim)]) == [True]
    assert await _drop_connections(sql_store) >= 2
    if idle:
        monkeypatch.setattr(fastpath, "KEPT_IDLE_PING", 0.0)
    else:
        with pytest.raises(StoreError):
            await sql_store.get_many([record.id])
        with pytest.raises(StoreError):
            await sql_store.update_many([(record.id, claim)])
    assert list(await sql_store.get_many([record.id])) == [record.id]
    assert await sql_store.update_many([(record.id, claim)]) == [True]
    got = await sql_store.get(record.id)
    assert got is not None
    assert got.status is Status.SENDING


async def test_a_batch_connection_lost_at_commit_fails_with_store_error(
    sql_store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server drops the write connection after a batch's statements, before its COMMIT
    (on MariaDB the COMMIT goes straight to the driver): the call fails with StoreError, which
    the worker waits out, never with the driver's own error, which it would take for a bug
    and retry the delivery (a second send); the next call works on a new connection."""
    if sql_store.dialect_name == "sqlite":
        pytest.skip("SQLite has no server to drop connections")
    record = MailRecord.new(make_mail())
    await sql_store.add(record)
    claim = RecordUpdate(status=Status.SENDING, expect=frozenset({Status.QUEUED}))
    end = fastpath._end
    dropped: list[int] = []

    async def drop_then_end(connection: AsyncConnection, *, commit: bool) -> None:
        if commit and not dropped:
            dropped.append(await _drop_connections(sql_store))
        await end(connection, commit=commit)

    monkeypatch.setattr(fastpath, "_end", drop_then_end)
    with pytest.raises(StoreError):
        await sql_store.update_many([(record.id, claim)])
    assert dropped
    assert dropped[0] >= 1
    got = await sql_store.get(record.id)
    assert got is not None
    assert got.status is Status.QUEUED  # not committed
    assert await sql_store.update_many([(record.id, claim)]) == [True]


async def test_kept_connections_work_after_idling(
    sql_store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every call on a kept connection that was idle pings it first, in the call's
    transaction where it has one, and then does its work as usual."""
    records = await sql_store.add_many([make_record().evolve(last_error="mark") for _ in range(2)])
    claim = RecordUpdate(status=Status.SENDING, expect=frozenset({Status.QUEUED}))
    monkeypatch.setattr(fastpath, "KEPT_IDLE_PING", 0.0)
    for _ in range(2):
        more = await sql_store.add_many([make_record()])
        assert list(await sql_store.get_many([more[0].id])) == [more[0].id]
        await sql_store.clear_last_error([r.id for r in records], expected="mark")
    assert await sql_store.update_many([(records[0].id, claim)]) == [True]
    assert await sql_store.update_many([(records[1].id, claim), (records[0].id, claim)]) == [True, False]
    for record in records:
        got = await sql_store.get(record.id)
        assert got is not None
        assert (got.status, got.last_error) == (Status.SENDING, "")


# --- group commit (add_many) -----------------------------------------------------------


async def test_add_many_rows_are_those_add_writes(sql_store: SQLStore) -> None:
    """NULL and non-NULL values of one column in one batch (the MariaDB bulk bind leaves out
    columns NULL in every row): every row reads back as the single add wrote its twin."""
    now = utcnow()
    variants = [
        {},
        {"last_code": 421, "next_attempt_at": now + timedelta(minutes=5), "remark": "x"},
        {"last_error": "ä" * 20, "sent_at": now},
    ]
    singles, batch = [], []
    for changes in variants:
        for bucket, message_id in ((singles, "<one@example.com>"), (batch, None)):
            mail = make_mail(
                subject='quote " and \\ backslash',
                html="<p class='a'>x</p>",
                message_id=message_id,
                created_at=now,
            )
            bucket.append(MailRecord.new(mail).evolve(created_at=now, updated_at=now, **changes))
    added = [await sql_store.add(r) for r in singles]
    batched = await sql_store.add_many(batch)
    for one, many in zip(added, batched, strict=True):
        assert many == await sql_store.get(many.id)
        assert one == await sql_store.get(one.id)
        row_one, row_many = await email_row(sql_store, one.id), await email_row(sql_store, many.id)
        for key in ("id", "uid", "message_id", "payload"):
            row_one.pop(key), row_many.pop(key)
        assert row_one == row_many
    everything = await sql_store.add_many([make_record() for _ in range(40)])
    assert [await sql_store.get(r.id) for r in everything] == everything


@pytest.mark.parametrize("server", ["mysql", "postgres"])
async def test_add_many_replaces_a_broken_connection(
    request: pytest.FixtureRequest, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kept connection of the group commit dies: the batch on it fails with StoreError
    (its submits answer 5xx), the next batch connects anew; after a quiet spell the kept
    connection is not trusted at all."""
    url: str = request.getfixturevalue(f"{server}_url")
    async with SQLStore.from_url(url) as store:
        await store.add_many([make_record()])
        assert await _drop_connections(store) >= 1
        lost = [make_record(), make_record()]
        with pytest.raises(StoreError):
            await store.add_many(lost)
        again = await store.add_many([make_record(), make_record()])
        assert [await store.get(r.id) for r in again] == again
        monkeypatch.setattr(fastpath, "KEPT_IDLE_PING", 0.0)
        assert await _drop_connections(store) >= 1
        quiet = await store.add_many([make_record()])
        assert await store.get(quiet[0].id) == quiet[0]
        # the marks are cleared on a kept connection too: a lost one fails the call, the next
        # call works
        monkeypatch.setattr(fastpath, "KEPT_IDLE_PING", 10.0)
        marked = await store.add_many([make_record().evolve(last_error="mark") for _ in range(3)])
        await store.clear_last_error([marked[0].id], expected="other")
        assert await _drop_connections(store) >= 1
        with pytest.raises(StoreError):
            await store.clear_last_error([r.id for r in marked], expected="mark")
        await store.clear_last_error([r.id for r in marked], expected="mark")
        assert [(await store.get(r.id) or r).last_error for r in marked] == ["", "", ""]
