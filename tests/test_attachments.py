"""AttachmentStore backends: the conformance suite over each, then what is
particular to the ``file`` and ``sql`` stores (folder and table contents,
URLs, permissions, streaming)."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import os
import stat
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mailqueue import registry
from mailqueue.errors import (
    AttachmentNotFoundError,
    AttachmentTooLargeError,
    BackendError,
    ConfigurationError,
)
from mailqueue.protocols import AttachmentStore, BackendContext, Store
from mailqueue.sql import schema
from mailqueue.sql.attachments import SQLAttachmentStore
from mailqueue.stores.disk import FileAttachmentStore
from mailqueue.testing.attachments import AttachmentStoreConformance, Inventory, chunked, read_all

MIB = 1024 * 1024


# --- backends ------------------------------------------------------------------


@dataclass
class Backend:
    store: AttachmentStore
    inventory: Inventory | None
    url: str
    context: BackendContext = field(default_factory=BackendContext)


def file_inventory(root: Path) -> Inventory:
    """Every file under the store's folder, temporary ones included."""

    def walk() -> list[str]:
        return [str(path.relative_to(root)) for path in root.rglob("*") if not path.is_dir()]

    async def everything() -> list[str]:
        return await asyncio.to_thread(walk)

    return everything


def sql_inventory(engine: AsyncEngine) -> Inventory:
    """Every row of the two attachment tables."""

    async def everything() -> list[str]:
        async with engine.connect() as conn:
            rows = await conn.execute(sa.select(schema.attachments.c["key"], schema.attachments.c.complete))
            chunks = await conn.execute(
                sa.select(schema.attachment_chunks.c["key"], schema.attachment_chunks.c.seq)
            )
            return [f"attachment {key} complete={complete}" for key, complete in rows] + [
                f"chunk {key} #{seq}" for key, seq in chunks
            ]

    return everything


@asynccontextmanager
async def sql_engine(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on ``url`` with the attachment tables created; disposed after."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(
                schema.metadata.create_all, tables=[schema.attachments, schema.attachment_chunks]
            )
        yield engine
    finally:
        await engine.dispose()


async def count_rows(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        rows = await conn.scalar(sa.select(sa.func.count()).select_from(schema.attachments))
        chunks = await conn.scalar(sa.select(sa.func.count()).select_from(schema.attachment_chunks))
    return int(rows or 0), int(chunks or 0)


def memory_store_class() -> Any:
    """The memory backend's class, or ``None`` while it is not written."""
    if importlib.util.find_spec("mailqueue.stores.memory") is None:
        return None
    return getattr(importlib.import_module("mailqueue.stores.memory"), "MemoryAttachmentStore", None)


BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("file", id="file"),
    pytest.param("sqlite", id="sql-sqlite"),
    pytest.param("mysql", id="sql-mysql", marks=pytest.mark.mysql),
    pytest.param("postgres", id="sql-postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def backend_spec(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """The backend's name and, for SQL, its database URL."""
    kind: str = request.param
    if kind in ("sqlite", "mysql", "postgres"):
        url: str = request.getfixturevalue(f"{kind}_url")
        return kind, url
    return kind, None


@pytest.fixture
async def backend(backend_spec: tuple[str, str | None], tmp_path: Path) -> AsyncIterator[Backend]:
    kind, url = backend_spec
    if kind == "memory":
        cls = memory_store_class()
        if cls is None:
            pytest.skip("mailqueue.stores.memory.MemoryAttachmentStore is not written yet")
        async with cls.from_url("memory://", context=BackendContext()) as store:
            yield Backend(store, None, "memory://")
    elif kind == "file":
        root = tmp_path / "attachments"
        async with FileAttachmentStore.from_url(f"file://{root}", context=BackendContext()) as store:
            yield Backend(store, file_inventory(root), f"file://{root}?fsync=true")
    else:
        assert url is not None
        async with sql_engine(url) as engine, SQLAttachmentStore(engine=engine) as store:
            context = BackendContext(store=cast(Store, FakeSQLStore(engine=engine)))
            yield Backend(store, sql_inventory(engine), "sql://", context)


class TestConformance(AttachmentStoreConformance):
    @pytest.fixture
    def attachments(self, backend: Backend) -> AttachmentStore:
        return backend.store

    @pytest.fixture
    def inventory(self, backend: Backend) -> Inventory | None:
        return backend.inventory

    @pytest.fixture
    def backend_url(self, backend: Backend) -> str:
        return backend.url

    @pytest.fixture
    def backend_context(self, backend: Backend) -> BackendContext:
        return backend.context


# --- helpers -------------------------------------------------------------------


async def pieces(total: int, size: int = MIB) -> AsyncIterator[bytes]:
    """``total`` bytes of a repeating pattern, ``size`` at a time, without holding them all."""
    block = bytes(range(256)) * (size // 256 + 1)
    sent = 0
    while sent < total:
        piece = block[: min(size, total - sent)]
        sent += len(piece)
        yield piece


def pattern_sha256(total: int, size: int = MIB) -> str:
    digest = hashlib.sha256()
    block = bytes(range(256)) * (size // 256 + 1)
    sent = 0
    while sent < total:
        piece = block[: min(size, total - sent)]
        digest.update(piece)
        sent += len(piece)
    return digest.hexdigest()


async def assert_streams(store: AttachmentStore, key: str, total: int, limit: int) -> None:
    """Read ``key`` chunk by chunk: no chunk above ``limit``, right bytes."""
    digest = hashlib.sha256()
    count = peak = size = 0
    async for chunk in store.read(key):
        count += 1
        peak = max(peak, len(chunk))
        size += len(chunk)
        digest.update(chunk)
    assert size == total
    assert digest.hexdigest() == pattern_sha256(total)
    assert peak <= limit
    assert count >= total // limit


class ClientGone(Exception):
    pass


async def broken_stream(data: bytes) -> AsyncIterator[bytes]:
    async for piece in chunked(data, (1000,)):
        yield piece
    raise ClientGone


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


# --- file store ----------------------------------------------------------------


def temp_files(root: Path) -> list[Path]:
    return [path for path in root.rglob(".tmp-*")]


def stored_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and not path.name.startswith(".tmp-")]


@pytest.fixture
async def file_store(tmp_path: Path) -> AsyncIterator[FileAttachmentStore]:
    async with FileAttachmentStore(root=tmp_path / "att", chunk_size=64 * 1024) as store:
        yield store


class TestFileStoreURL:
    def test_absolute_path(self, tmp_path: Path) -> None:
        store = FileAttachmentStore.from_url(f"file://{tmp_path}/a", context=BackendContext())
        assert store.root == tmp_path / "a"
        assert store.fsync is True
        localhost = FileAttachmentStore.from_url(f"file://localhost{tmp_path}/a", context=BackendContext())
        assert localhost.root == tmp_path / "a"

    def test_relative_paths_are_taken_from_the_current_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        dotted = FileAttachmentStore.from_url("file://./rel/att", context=BackendContext())
        bare = FileAttachmentStore.from_url("file:att", context=BackendContext())
        monkeypatch.chdir("/")
        assert dotted.root == tmp_path / "rel" / "att"
        assert bare.root == tmp_path / "att"

    def test_percent_escapes_are_decoded(self, tmp_path: Path) -> None:
        store = FileAttachmentStore.from_url(f"file://{tmp_path}/with%20space", context=BackendContext())
        assert store.root == tmp_path / "with space"

    def test_options(self, tmp_path: Path) -> None:
        store = FileAttachmentStore.from_url(
            f"file://{tmp_path}/a?fsync=false&chunk_size=1000", context=BackendContext()
        )
        assert store.fsync is False
        assert store.chunk_size == 1000

    @pytest.mark.parametrize(
        ("url", "match"),
        [
            ("file://example.com/x", "host"),
            ("file://", "no folder"),
            ("file:///x?bogus=1", "'bogus'"),
            ("file:///x?fsync=maybe", "fsync"),
            ("file:///x?fsync=true&fsync=false", "twice"),
            ("file:///x?chunk_size=big", "chunk_size"),
            ("file:///x?chunk_size=0", "chunk_size"),
            ("file:///x?file_mode=999", "file_mode"),
            ("file:///x?file_mode=400", "file_mode"),
            ("file:///x?dir_mode=600", "dir_mode"),
        ],
    )
    def test_bad_urls(self, url: str, match: str) -> None:
        with pytest.raises(ConfigurationError, match=match):
            FileAttachmentStore.from_url(url, context=BackendContext())

    def test_registry_builds_it(self, tmp_path: Path) -> None:
        store = registry.create_attachment_store(f"file://{tmp_path}/a")
        assert isinstance(store, FileAttachmentStore)
        assert isinstance(store, AttachmentStore)


class TestFileStore:
    async def test_layout_and_default_permissions(self, tmp_path: Path) -> None:
        root = tmp_path / "deep" / "att"
        with umask(0):
            async with FileAttachmentStore(root=root) as store:
                stored = await store.put(chunked(b"content"))
        key = stored.key
        path = root / key[:2] / key[2:4] / key
        assert path.read_bytes() == b"content"
        assert stored_files(root) == [path]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for folder in (root, root / key[:2], root / key[:2] / key[2:4]):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700

    async def test_custom_permissions_do_not_depend_on_the_umask(self, tmp_path: Path) -> None:
        root = tmp_path / "att"
        with umask(0o077):
            url = f"file://{root}?file_mode=640&dir_mode=750"
            async with FileAttachmentStore.from_url(url, context=BackendContext()) as store:
                stored = await store.put(chunked(b"content"))
        key = stored.key
        assert stat.S_IMODE((root / key[:2] / key[2:4] / key).stat().st_mode) == 0o640
        for folder in (root, root / key[:2], root / key[:2] / key[2:4]):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o750

    async def test_no_temporary_files_after_success_or_failure(self, file_store: FileAttachmentStore) -> None:
        root = file_store.root
        await file_store.put(pieces(300_000, 7000))
        await file_store.put(chunked(b""))
        with pytest.raises(AttachmentTooLargeError):
            await file_store.put(pieces(300_000, 7000), max_bytes=250_000)
        with pytest.raises(ClientGone):
            await file_store.put(broken_stream(b"x" * 200_000))
        assert temp_files(root) == []
        assert len(stored_files(root)) == 2

    async def test_upload_is_invisible_until_complete(self, file_store: FileAttachmentStore) -> None:
        root = file_store.root
        reached = asyncio.Event()
        release = asyncio.Event()

        async def slow() -> AsyncIterator[bytes]:
            async for piece in pieces(200_000, 10_000):
                yield piece
            reached.set()
            await release.wait()
            yield b"end"

        task = asyncio.create_task(file_store.put(slow()))
        await asyncio.wait_for(reached.wait(), timeout=10)
        # streamed to a temporary file in the store's own folder, not held in memory...
        (temp,) = temp_files(root)
        assert temp.parent == root
        assert temp.stat().st_size >= 128 * 1024
        # ...and nothing is visible under any key yet
        assert stored_files(root) == []
        release.set()
        stored = await task
        assert temp_files(root) == []
        assert stored_files(root) == [root / stored.key[:2] / stored.key[2:4] / stored.key]
        assert stored.size == 200_003
        assert (await read_all(file_store, stored.key)).endswith(b"end")

    async def test_cancellation_at_any_point_keeps_nothing(self, file_store: FileAttachmentStore) -> None:
        # cancelled at varying points: while a batch is written in a thread,
        # between batches, while committing; every cancelled put leaves nothing
        # (the delays only spread the cancellation points; nothing asserted depends on them)
        kept = []
        for step in range(30):
            task = asyncio.create_task(file_store.put(pieces(400_000, 50_000)))
            await asyncio.sleep(step * 0.0003)
            task.cancel()
            with suppress(asyncio.CancelledError):
                kept.append((await task).key)
        root = file_store.root
        assert temp_files(root) == []
        assert sorted(stored_files(root)) == sorted(root / key[:2] / key[2:4] / key for key in kept)

    async def test_another_instance_reads_what_one_stored(self, tmp_path: Path) -> None:
        async with FileAttachmentStore(root=tmp_path / "att") as writer:
            stored = await writer.put(chunked(b"shared"))
        async with FileAttachmentStore.from_url(
            f"file://{tmp_path}/att?fsync=false", context=BackendContext()
        ) as reader:
            assert await read_all(reader, stored.key) == b"shared"
            await reader.delete(stored.key)
        assert stored_files(tmp_path / "att") == []

    async def test_keys_never_reach_outside_the_folder(
        self, file_store: FileAttachmentStore, tmp_path: Path
    ) -> None:
        secret = tmp_path / "secret"
        secret.write_bytes(b"do not touch")
        (file_store.root / "se").mkdir()
        for key in ("../secret", "../../secret", str(secret), "se/../../secret", "..%2fsecret"):
            with pytest.raises(AttachmentNotFoundError):
                await read_all(file_store, key)
            await file_store.delete(key)
        assert secret.read_bytes() == b"do not touch"

    async def test_read_20_mib_streams_in_bounded_chunks(self, tmp_path: Path) -> None:
        async with FileAttachmentStore(root=tmp_path / "att", fsync=False) as store:
            stored = await store.put(pieces(20 * MIB))
            assert stored.sha256 == pattern_sha256(20 * MIB)
            await assert_streams(store, stored.key, 20 * MIB, store.chunk_size)

    @pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
    async def test_abandoned_read_closes_its_file(self, file_store: FileAttachmentStore) -> None:
        stored = await file_store.put(pieces(MIB, 100_000))
        before = len(os.listdir("/proc/self/fd"))
        reader = file_store.read(stored.key)
        await anext(reader)
        assert len(os.listdir("/proc/self/fd")) == before + 1
        await reader.aclose()  # type: ignore[attr-defined]
        assert len(os.listdir("/proc/self/fd")) == before

    async def test_open_fails_when_the_folder_is_a_file(self, tmp_path: Path) -> None:
        (tmp_path / "att").write_bytes(b"")
        with pytest.raises(BackendError):
            await FileAttachmentStore(root=tmp_path / "att").open()

    async def test_os_errors_become_backend_errors(self, file_store: FileAttachmentStore) -> None:
        root = file_store.root
        root.rmdir()
        root.write_bytes(b"not a folder any more")
        with pytest.raises(BackendError):
            await file_store.put(chunked(b"data"))
        with pytest.raises(AttachmentNotFoundError):
            await read_all(file_store, "0123456789abcdef0123456789abcdef")
        await file_store.delete("0123456789abcdef0123456789abcdef")

    async def test_purge_incomplete_removes_only_stale_temporary_files(
        self, file_store: FileAttachmentStore
    ) -> None:
        root = file_store.root
        stored = await file_store.put(chunked(b"kept"))
        stale = root / ".tmp-stale"
        fresh = root / ".tmp-fresh"
        stale.write_bytes(b"crashed upload")
        fresh.write_bytes(b"upload in progress")
        two_hours_ago = time.time() - 7200
        os.utime(stale, (two_hours_ago, two_hours_ago))
        assert await file_store.purge_incomplete(older_than=3600) == 1
        assert not stale.exists()
        assert fresh.exists()
        assert await read_all(file_store, stored.key) == b"kept"


# --- sql store -----------------------------------------------------------------


@pytest.fixture
async def engine(sql_url: str) -> AsyncIterator[AsyncEngine]:
    async with sql_engine(sql_url) as engine:
        yield engine


@dataclass
class FakeSQLStore:
    """Stands in for the SQL Store: all the attachment store uses is ``engine``."""

    engine: AsyncEngine | None


class TestSQLStoreURL:
    def test_needs_a_store(self) -> None:
        with pytest.raises(ConfigurationError, match="Store"):
            SQLAttachmentStore.from_url("sql://", context=BackendContext())

    @pytest.mark.parametrize(
        ("url", "match"),
        [
            ("sql://db.example.com", "must not name a database"),
            ("sql:///mydb", "must not name a database"),
            ("sql://?bogus=1", "'bogus'"),
            ("sql://?chunk_size=big", "chunk_size"),
            ("sql://?chunk_size=0", "chunk_size"),
            ("sql://?chunk_size=100000000", "chunk_size"),
        ],
    )
    def test_bad_urls(self, url: str, match: str) -> None:
        fake = cast(Store, FakeSQLStore(engine=None))
        with pytest.raises(ConfigurationError, match=match):
            SQLAttachmentStore.from_url(url, context=BackendContext(store=fake))

    def test_needs_exactly_one_of_engine_and_store(self) -> None:
        with pytest.raises(ConfigurationError):
            SQLAttachmentStore()

    async def test_store_without_engine_is_refused_on_open(self) -> None:
        fake = cast(Store, FakeSQLStore(engine=None))
        store = registry.create_attachment_store("sql:", context=BackendContext(store=fake))
        with pytest.raises(ConfigurationError, match="engine"):
            await store.open()

    async def test_uses_the_store_engine_opened_later(self, sqlite_url: str) -> None:
        fake = FakeSQLStore(engine=None)
        store = registry.create_attachment_store(
            "sql://?chunk_size=1000", context=BackendContext(store=cast(Store, fake))
        )
        assert isinstance(store, SQLAttachmentStore)
        assert isinstance(store, AttachmentStore)
        assert store.chunk_size == 1000
        async with sql_engine(sqlite_url) as engine:
            fake.engine = engine  # the Store is opened after the attachment store was built
            async with store:
                stored = await store.put(chunked(b"y" * 2500))
                assert await count_rows(engine) == (1, 3)
                assert await read_all(store, stored.key) == b"y" * 2500


async def test_shares_the_sql_store_database(sql_url: str) -> None:
    store = registry.create_store(sql_url)
    attachments = registry.create_attachment_store(
        "sql://?chunk_size=4096", context=BackendContext(store=store)
    )
    with pytest.raises(ConfigurationError, match="not open"):
        await attachments.open()
    async with store, attachments:  # the Store's migrations made the tables
        stored = await attachments.put(pieces(10_000, 3000))
        assert await count_rows(store.engine) == (1, 3)  # type: ignore[attr-defined]
        assert len(await read_all(attachments, stored.key)) == 10_000


class TestSQLStore:
    async def test_rows_written(self, engine: AsyncEngine) -> None:
        data = bytes(range(256)) * 14  # 3584 bytes: three full chunks and a half
        async with SQLAttachmentStore(engine=engine, chunk_size=1024) as store:
            stored = await store.put(chunked(data, (1000,)))
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(schema.attachments).where(schema.attachments.c["key"] == stored.key)
                )
            ).one()
            chunks = (
                await conn.execute(
                    sa.select(schema.attachment_chunks.c.seq, schema.attachment_chunks.c.data).order_by(
                        schema.attachment_chunks.c.seq
                    )
                )
            ).all()
        assert (row.size, row.sha256, bool(row.complete)) == (3584, hashlib.sha256(data).hexdigest(), True)
        assert [seq for seq, _ in chunks] == [0, 1, 2, 3]
        assert [len(blob) for _, blob in chunks] == [1024, 1024, 1024, 512]
        assert b"".join(blob for _, blob in chunks) == data

    async def test_too_large_and_broken_uploads_leave_no_rows(self, engine: AsyncEngine) -> None:
        async with SQLAttachmentStore(engine=engine, chunk_size=1024) as store:
            with pytest.raises(AttachmentTooLargeError):
                await store.put(chunked(b"z" * 6000, (1000,)), max_bytes=5000)
            assert await count_rows(engine) == (0, 0)
            with pytest.raises(ClientGone):
                await store.put(broken_stream(b"z" * 6000))
            assert await count_rows(engine) == (0, 0)
            # a cancelled upload too
            reached = asyncio.Event()

            async def stalled() -> AsyncIterator[bytes]:
                yield b"q" * 5000
                reached.set()
                await asyncio.Event().wait()
                yield b"never"

            task = asyncio.create_task(store.put(stalled()))
            await asyncio.wait_for(reached.wait(), timeout=10)
            assert await count_rows(engine) == (1, 4)  # written as it arrives, marked incomplete
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await count_rows(engine) == (0, 0)

    async def test_cancellation_at_any_point_keeps_nothing(self, engine: AsyncEngine) -> None:
        kept = []
        async with SQLAttachmentStore(engine=engine, chunk_size=16 * 1024) as store:
            for step in range(40):
                task = asyncio.create_task(store.put(pieces(100_000, 10_000)))
                await asyncio.sleep(step * 0.001)
                task.cancel()
                with suppress(asyncio.CancelledError):
                    kept.append((await task).key)
            # every attachment that was not cancelled is whole
            for key in kept:
                assert await read_all(store, key) == b"".join(
                    [piece async for piece in pieces(100_000, 10_000)]
                )
            for key in kept:
                await store.delete(key)
        assert await count_rows(engine) == (0, 0)

    async def test_incomplete_attachments_are_not_readable(self, engine: AsyncEngine) -> None:
        key = "0123456789abcdef0123456789abcdef"
        async with engine.begin() as conn:
            await conn.execute(
                schema.attachments.insert().values(
                    key=key, complete=False, created_at=datetime.now(UTC).replace(tzinfo=None)
                )
            )
            await conn.execute(schema.attachment_chunks.insert().values(key=key, seq=0, data=b"partial"))
        async with SQLAttachmentStore(engine=engine) as store:
            with pytest.raises(AttachmentNotFoundError):
                await read_all(store, key)
            await store.delete(key)
        assert await count_rows(engine) == (0, 0)

    async def test_purge_incomplete(self, engine: AsyncEngine) -> None:
        now = datetime.now(UTC).replace(tzinfo=None)
        rows = {
            "a" * 32: (False, now - timedelta(hours=2)),
            "b" * 32: (False, now),
            "c" * 32: (True, now - timedelta(days=2)),
        }
        async with engine.begin() as conn:
            for key, (complete, created) in rows.items():
                await conn.execute(
                    schema.attachments.insert().values(key=key, complete=complete, created_at=created, size=1)
                )
                await conn.execute(schema.attachment_chunks.insert().values(key=key, seq=0, data=b"x"))
        async with SQLAttachmentStore(engine=engine) as store:
            assert await store.purge_incomplete(older_than=3600) == 1
            assert await read_all(store, "c" * 32) == b"x"
        async with engine.connect() as conn:
            left = set((await conn.scalars(sa.select(schema.attachment_chunks.c["key"]))).all())
        assert left == {"b" * 32, "c" * 32}

    async def test_deleted_while_read_is_not_found(self, engine: AsyncEngine) -> None:
        async with SQLAttachmentStore(engine=engine, chunk_size=1024) as store:
            stored = await store.put(chunked(b"r" * 5000))
            reader = store.read(stored.key)
            assert await anext(reader) == b"r" * 1024
            await store.delete(stored.key)
            with pytest.raises(AttachmentNotFoundError):
                await anext(reader)

    async def test_keys_are_case_sensitive(self, engine: AsyncEngine) -> None:
        async with SQLAttachmentStore(engine=engine) as store:
            stored = await store.put(chunked(b"case"))
            upper = stored.key.upper()
            assert upper != stored.key
            with pytest.raises(AttachmentNotFoundError):
                await read_all(store, upper)
            await store.delete(upper)
            assert await read_all(store, stored.key) == b"case"

    async def test_readers_follow_the_writers_chunks(self, engine: AsyncEngine) -> None:
        data = bytes(range(256)) * 40
        async with (
            SQLAttachmentStore(engine=engine, chunk_size=1000) as writer,
            SQLAttachmentStore(engine=engine, chunk_size=4096) as reader,
        ):
            stored = await writer.put(chunked(data, (3333,)))
            chunks = [chunk async for chunk in reader.read(stored.key)]
        assert b"".join(chunks) == data
        assert max(len(chunk) for chunk in chunks) == 1000

    async def test_read_20_mib_streams_in_bounded_chunks(self, engine: AsyncEngine) -> None:
        async with SQLAttachmentStore(engine=engine) as store:
            stored = await store.put(pieces(20 * MIB))
            assert stored.sha256 == pattern_sha256(20 * MIB)
            await assert_streams(store, stored.key, 20 * MIB, store.chunk_size)
            await store.delete(stored.key)
        assert await count_rows(engine) == (0, 0)

    async def test_not_open(self, sqlite_url: str) -> None:
        async with sql_engine(sqlite_url) as engine:
            store = SQLAttachmentStore(engine=engine)
            with pytest.raises(BackendError, match="not open"):
                await store.put(chunked(b"x"))
            async with store:
                pass
            await store.close()
            with pytest.raises(BackendError, match="not open"):
                await read_all(store, "0123456789abcdef0123456789abcdef")

    async def test_missing_tables(self, sqlite_url: str) -> None:
        engine = create_async_engine(sqlite_url)
        try:
            with pytest.raises(BackendError, match="mailqueue_attachment"):
                await SQLAttachmentStore(engine=engine).open()
        finally:
            await engine.dispose()

    async def test_unreachable_database(self) -> None:
        engine = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")
        try:
            with pytest.raises(BackendError):
                await SQLAttachmentStore(engine=engine).open()
        finally:
            await engine.dispose()

    async def test_database_errors_become_backend_errors(self, sqlite_url: str) -> None:
        async with sql_engine(sqlite_url) as engine, SQLAttachmentStore(engine=engine) as store:
            stored = await store.put(chunked(b"x" * 10))
            async with engine.begin() as conn:
                await conn.run_sync(schema.attachment_chunks.drop)
            with pytest.raises(BackendError):
                await store.put(chunked(b"x" * 10))
            with pytest.raises(BackendError):
                await read_all(store, stored.key)
            with pytest.raises(BackendError):
                await store.delete(stored.key)
