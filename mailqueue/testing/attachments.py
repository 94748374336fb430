"""Conformance suite for :class:`~mailqueue.protocols.AttachmentStore` backends.

Subclass :class:`AttachmentStoreConformance` in a test module and provide a
fixture ``attachments`` that yields an *opened* store (parametrize it to run
the suite over several backends)::

    import pytest
    from mailqueue.testing.attachments import AttachmentStoreConformance, Inventory

    class TestMyStore(AttachmentStoreConformance):
        @pytest.fixture
        async def attachments(self):
            async with MyAttachmentStore(...) as store:
                yield store

        @pytest.fixture
        def inventory(self, attachments) -> Inventory:  # optional
            async def everything() -> list[str]:
                return [...]  # every file, row, object... the backend holds
            return everything

``inventory`` lets the suite check that a failed upload keeps nothing, which
the protocol alone cannot show (a failed ``put`` returns no key to look up).
It is an async callable returning a description of everything the backend
holds, partial uploads included; the suite only compares two of them. Without
it (the default) those checks are skipped and the rest of each test runs.

Optionally provide ``backend_url``, a URL that ``type(attachments).from_url(url,
context=backend_context)`` accepts: the suite then checks that an unknown URL
option is refused with the valid ones listed (see
:mod:`mailqueue.testing.options`); without it that test is skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from mailqueue.errors import AttachmentNotFoundError, AttachmentTooLargeError
from mailqueue.message import AttachmentRef
from mailqueue.protocols import AttachmentStore, BackendContext, ListableAttachmentStore, StoredAttachment
from mailqueue.testing.options import URLOptionsCheck

__all__ = ["AttachmentStoreConformance", "Inventory", "chunked", "read_all"]

#: Lists everything an attachment backend holds (see the module docstring).
Inventory = Callable[[], Awaitable[Collection[str]]]

MIB = 1024 * 1024
_DEFAULT_CHUNK = 256 * 1024
# Chunk sizes a client might send: tiny, odd, prime, larger than a chunk.
_ODD_SIZES = (1, 7, 4093, 65_537, 300_007, 1_048_583)
_KEY_CHARS = re.compile(r"[A-Za-z0-9_-]+")

HOSTILE_KEYS = (
    "../../etc/passwd",
    "/etc/passwd",
    "a/b",
    "",
    "x" * 500,
    ".",
    "..",
    "..\\..\\windows",
    "abcd\x00efgh",
    "abcdefgh\n",
    " abcdefgh",
    "%2e%2e%2fetc%2fpasswd",
    "ab/../cdefgh",
    "~root",
)


async def chunked(
    data: bytes, sizes: Sequence[int] = (_DEFAULT_CHUNK,), *, pause: bool = False
) -> AsyncIterator[bytes]:
    """Yield ``data`` in pieces whose sizes cycle through ``sizes``.

    With ``pause`` the generator yields to the event loop between pieces, as
    a network upload would.
    """
    offset = 0
    index = 0
    while offset < len(data):
        size = sizes[index % len(sizes)]
        yield data[offset : offset + size]
        offset += size
        index += 1
        if pause:
            await asyncio.sleep(0)


async def read_all(store: AttachmentStore, key: str) -> bytes:
    """Everything :meth:`~mailqueue.protocols.AttachmentStore.read` yields for ``key``, joined."""
    return b"".join([chunk async for chunk in store.read(key)])


def _data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _chunk_size(store: AttachmentStore) -> int:
    size = getattr(store, "chunk_size", None)
    return size if isinstance(size, int) and size > 0 else _DEFAULT_CHUNK


async def _snapshot(inventory: Inventory | None) -> list[str] | None:
    return None if inventory is None else sorted(await inventory())


class _ClientGone(Exception):
    """Raised by an upload stream, as when a client disconnects."""


class AttachmentStoreConformance(URLOptionsCheck):
    """The behaviour every AttachmentStore must show.

    Needs the fixture ``attachments`` (an opened store); ``inventory`` is
    optional. A store exposing an integer ``chunk_size`` attribute gets its
    chunk boundaries tested exactly.
    """

    @pytest.fixture
    def inventory(self) -> Inventory | None:
        """Override to list everything the backend holds; ``None`` skips those checks."""
        return None

    async def test_unknown_url_option_is_refused_with_the_valid_names(
        self, attachments: AttachmentStore, backend_url: str | None, backend_context: BackendContext
    ) -> None:
        self.check_url_options(attachments, backend_url, backend_context)

    async def _round_trip(
        self, store: AttachmentStore, data: bytes, sizes: Sequence[int]
    ) -> StoredAttachment:
        stored = await store.put(chunked(data, sizes))
        assert stored.size == len(data)
        assert stored.sha256 == hashlib.sha256(data).hexdigest()
        assert await read_all(store, stored.key) == data
        return stored

    # --- put and read ---------------------------------------------------------

    async def test_round_trip_small(self, attachments: AttachmentStore) -> None:
        stored = await self._round_trip(attachments, b"hello, attachment", (5, 1, 100))
        assert isinstance(stored, StoredAttachment)

    async def test_round_trip_empty(self, attachments: AttachmentStore) -> None:
        stored = await self._round_trip(attachments, b"", (1,))
        assert stored.sha256 == hashlib.sha256(b"").hexdigest()

    async def test_empty_chunks_are_ignored(self, attachments: AttachmentStore) -> None:
        async def stream() -> AsyncIterator[bytes]:
            for piece in (b"", b"ab", b"", b"", b"cd", b""):
                yield piece

        stored = await attachments.put(stream())
        assert (stored.size, stored.sha256) == (4, hashlib.sha256(b"abcd").hexdigest())
        assert await read_all(attachments, stored.key) == b"abcd"

    @pytest.mark.parametrize("multiple", [1, 2])
    @pytest.mark.parametrize("delta", [-1, 0, 1])
    async def test_round_trip_at_chunk_boundaries(
        self, attachments: AttachmentStore, multiple: int, delta: int
    ) -> None:
        size = multiple * _chunk_size(attachments) + delta
        await self._round_trip(attachments, _data(size, seed=size), (size,))
        await self._round_trip(attachments, _data(size, seed=size + 1), (4093,))

    @pytest.mark.parametrize("size", [64 * 1024, 256 * 1024])
    async def test_round_trip_common_chunk_sizes(self, attachments: AttachmentStore, size: int) -> None:
        await self._round_trip(attachments, _data(size, seed=size), (size,))

    async def test_round_trip_5_mib_in_odd_chunks(self, attachments: AttachmentStore) -> None:
        await self._round_trip(attachments, _data(5 * MIB, seed=5), _ODD_SIZES)

    async def test_read_yields_bounded_chunks(self, attachments: AttachmentStore) -> None:
        data = _data(3 * MIB, seed=3)
        stored = await attachments.put(chunked(data, (len(data),)))
        pieces = [chunk async for chunk in attachments.read(stored.key)]
        assert b"".join(pieces) == data
        assert max(len(piece) for piece in pieces) <= MIB, "read must stream, not return the whole file"

    async def test_read_is_repeatable_and_concurrent(self, attachments: AttachmentStore) -> None:
        data = _data(2 * _chunk_size(attachments) + 17, seed=9)
        stored = await attachments.put(chunked(data, (65_537,)))
        results = await asyncio.gather(*(read_all(attachments, stored.key) for _ in range(4)))
        assert results == [data] * 4

    async def test_partial_read_can_be_abandoned(self, attachments: AttachmentStore) -> None:
        data = _data(3 * _chunk_size(attachments), seed=4)
        stored = await attachments.put(chunked(data))
        reader = attachments.read(stored.key)
        first = await anext(reader)
        assert first == data[: len(first)]
        aclose = getattr(reader, "aclose", None)
        if aclose is not None:
            await aclose()
        await attachments.delete(stored.key)
        with pytest.raises(AttachmentNotFoundError):
            await read_all(attachments, stored.key)

    # --- keys -----------------------------------------------------------------

    async def test_keys_are_new_unique_and_valid(self, attachments: AttachmentStore) -> None:
        keys = [(await attachments.put(chunked(b"same content"))).key for _ in range(100)]
        assert len(set(keys)) == 100
        for key in keys:
            assert _KEY_CHARS.fullmatch(key), (
                f"key {key!r} has characters other than letters, digits, _ and -"
            )
            AttachmentRef(key=key, filename="a.txt", size=12, sha256="0" * 64)

    async def test_concurrent_puts(self, attachments: AttachmentStore) -> None:
        size = 2 * _chunk_size(attachments) + 1000
        contents = [_data(size + n, seed=100 + n) for n in range(8)]
        stored = await asyncio.gather(
            *(attachments.put(chunked(data, (50_021,), pause=True)) for data in contents)
        )
        assert len({item.key for item in stored}) == len(contents)
        for item, data in zip(stored, contents, strict=True):
            assert (item.size, item.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert await asyncio.gather(*(read_all(attachments, item.key) for item in stored)) == contents

    # --- size limit and failed uploads ----------------------------------------

    async def test_max_bytes_allows_exactly_the_limit(self, attachments: AttachmentStore) -> None:
        data = _data(10_000, seed=10)
        stored = await attachments.put(chunked(data, (999,)), max_bytes=10_000)
        assert await read_all(attachments, stored.key) == data
        empty = await attachments.put(chunked(b""), max_bytes=0)
        assert empty.size == 0

    async def test_too_large_raises_and_keeps_nothing(
        self, attachments: AttachmentStore, inventory: Inventory | None
    ) -> None:
        before = await _snapshot(inventory)
        limit = 2 * _chunk_size(attachments) + 5
        with pytest.raises(AttachmentTooLargeError) as caught:
            await attachments.put(chunked(_data(limit + 1, seed=11), (65_536,)), max_bytes=limit)
        assert caught.value.limit == limit
        assert await _snapshot(inventory) == before

    async def test_too_large_stops_reading_the_stream(self, attachments: AttachmentStore) -> None:
        consumed = 0

        async def endless() -> AsyncIterator[bytes]:
            nonlocal consumed
            while consumed < 10_000:
                consumed += 1
                yield b"x" * 1000

        with pytest.raises(AttachmentTooLargeError):
            await attachments.put(endless(), max_bytes=10_000)
        assert consumed <= 20, "put must stop reading once the limit is passed"

    @pytest.mark.parametrize("error", [_ClientGone, ConnectionResetError])
    async def test_stream_error_propagates_and_keeps_nothing(
        self, attachments: AttachmentStore, inventory: Inventory | None, error: type[Exception]
    ) -> None:
        before = await _snapshot(inventory)
        data = _data(2 * _chunk_size(attachments) + 100, seed=12)

        async def broken() -> AsyncIterator[bytes]:
            async for piece in chunked(data, (65_536,)):
                yield piece
            raise error("client went away")

        with pytest.raises(error, match="client went away"):
            await attachments.put(broken())
        assert await _snapshot(inventory) == before

    async def test_cancelled_put_keeps_nothing(
        self, attachments: AttachmentStore, inventory: Inventory | None
    ) -> None:
        before = await _snapshot(inventory)
        reached = asyncio.Event()
        data = _data(2 * _chunk_size(attachments) + 100, seed=13)

        async def stalled() -> AsyncIterator[bytes]:
            async for piece in chunked(data, (65_536,)):
                yield piece
            reached.set()
            await asyncio.Event().wait()
            yield b"never"

        task = asyncio.create_task(attachments.put(stalled()))
        await asyncio.wait_for(reached.wait(), timeout=30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await _snapshot(inventory) == before

    # --- missing keys and delete ----------------------------------------------

    async def test_list_keys_with_their_age(self, attachments: AttachmentStore) -> None:
        if not isinstance(attachments, ListableAttachmentStore):
            pytest.skip("the store cannot list its keys (optional ListableAttachmentStore)")
        before = datetime.now(UTC) - timedelta(seconds=1)
        kept = await attachments.put(chunked(b"kept"))
        gone = await attachments.put(chunked(b"gone"))
        await attachments.delete(gone.key)
        later = datetime.now(UTC) + timedelta(seconds=2)
        listed = {key: at async for key, at in attachments.list_keys(before=later)}
        assert kept.key in listed
        assert gone.key not in listed
        assert listed[kept.key].utcoffset() == timedelta(0)
        # stores may keep the time to the second, cut
        assert before - timedelta(seconds=1) <= listed[kept.key] <= later
        earlier = {key async for key, _ in attachments.list_keys(before=before - timedelta(seconds=1))}
        assert kept.key not in earlier

    async def test_read_missing_key(self, attachments: AttachmentStore) -> None:
        key = "0123456789abcdef0123456789abcdef"
        with pytest.raises(AttachmentNotFoundError) as caught:
            await read_all(attachments, key)
        assert caught.value.key == key

    async def test_delete_then_read_is_not_found(self, attachments: AttachmentStore) -> None:
        stored = await attachments.put(chunked(b"to be deleted"))
        await attachments.delete(stored.key)
        with pytest.raises(AttachmentNotFoundError):
            await read_all(attachments, stored.key)
        await attachments.delete(stored.key)
        await attachments.delete("0123456789abcdef0123456789abcdef")

    async def test_delete_removes_everything_and_only_that(
        self, attachments: AttachmentStore, inventory: Inventory | None
    ) -> None:
        before = await _snapshot(inventory)
        data = _data(3 * _chunk_size(attachments) + 1, seed=14)
        gone = await attachments.put(chunked(data))
        kept = await attachments.put(chunked(b"kept"))
        await attachments.delete(gone.key)
        assert await read_all(attachments, kept.key) == b"kept"
        await attachments.delete(kept.key)
        assert await _snapshot(inventory) == before

    @pytest.mark.parametrize("key", HOSTILE_KEYS, ids=repr)
    async def test_hostile_key_is_not_found(self, attachments: AttachmentStore, key: str) -> None:
        with pytest.raises(AttachmentNotFoundError):
            await read_all(attachments, key)
        await attachments.delete(key)

    async def test_hostile_variants_of_a_real_key_touch_nothing(self, attachments: AttachmentStore) -> None:
        stored = await attachments.put(chunked(b"precious"))
        key = stored.key
        variants = [
            f"./{key}",
            f"{key}/",
            f"{key}/.",
            f"../{key}",
            f"{key[:2]}/{key[2:4]}/{key}",
            f"{key}\x00",
            f"{key}\n",
            f" {key}",
            f"{key}/../{key}",
        ]
        for variant in variants:
            with pytest.raises(AttachmentNotFoundError):
                await read_all(attachments, variant)
            await attachments.delete(variant)
        assert await read_all(attachments, key) == b"precious"
