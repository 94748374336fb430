"""The fault proxy itself, against a real echo server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from faultproxy import FaultProxy
from proc_helpers import free_port

_echo_writers: set[asyncio.StreamWriter] = set()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    _echo_writers.add(writer)
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
        _echo_writers.discard(writer)


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]
        for writer in list(_echo_writers):
            writer.close()
        await asyncio.sleep(0.05)


@pytest.fixture
async def clients() -> AsyncIterator[list[asyncio.StreamWriter]]:
    """Client connections the test opened, closed at its end."""
    opened: list[asyncio.StreamWriter] = []
    yield opened
    for writer in opened:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@pytest.fixture
def proxy(echo_port: int) -> Iterator[FaultProxy]:
    with FaultProxy(echo_port) as running:
        yield running


async def _connect(
    proxy: FaultProxy, opened: list[asyncio.StreamWriter]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    opened.append(writer)
    return reader, writer


async def _roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), 5)


async def _connect_and_roundtrip(proxy: FaultProxy, opened: list[asyncio.StreamWriter]) -> None:
    reader, writer = await _connect(proxy, opened)
    await _roundtrip(reader, writer, b"hello")


async def test_forwards_both_ways(proxy: FaultProxy, clients: list[asyncio.StreamWriter]) -> None:
    reader, writer = await _connect(proxy, clients)
    payload = bytes(range(256)) * 1000
    assert await _roundtrip(reader, writer, payload) == payload
    assert await _roundtrip(reader, writer, b"again") == b"again"


async def test_cut_closes_connections_and_refuses_new_ones_until_restored(
    proxy: FaultProxy, clients: list[asyncio.StreamWriter]
) -> None:
    reader, writer = await _connect(proxy, clients)
    assert await _roundtrip(reader, writer, b"hello") == b"hello"
    await asyncio.to_thread(proxy.cut)
    # the open connection is gone: reset or end of stream
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await _roundtrip(reader, writer, b"lost")
    with pytest.raises(ConnectionRefusedError):
        await _connect(proxy, clients)
    await asyncio.to_thread(proxy.restore)
    reader, writer = await _connect(proxy, clients)
    assert await _roundtrip(reader, writer, b"back") == b"back"


async def test_blackhole_forwards_nothing_until_restored(
    proxy: FaultProxy, clients: list[asyncio.StreamWriter]
) -> None:
    reader, writer = await _connect(proxy, clients)
    await asyncio.to_thread(proxy.blackhole)
    writer.write(b"held")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.5)
    # new connections are accepted but hang as well
    reader2, writer2 = await _connect(proxy, clients)
    writer2.write(b"also")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader2.readexactly(4), 0.3)
    await asyncio.to_thread(proxy.restore)
    # the network recovers: what was held arrives
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
    assert await asyncio.wait_for(reader2.readexactly(4), 5) == b"also"


async def test_reset_accepts_then_resets_every_new_connection_until_restored(
    proxy: FaultProxy, clients: list[asyncio.StreamWriter]
) -> None:
    reader, writer = await _connect(proxy, clients)
    assert await _roundtrip(reader, writer, b"hello") == b"hello"
    await asyncio.to_thread(proxy.reset)
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await _roundtrip(reader, writer, b"lost")
    accepted = proxy.accepted
    for _ in range(3):
        # the proxy listens and accepts, then resets: the connect itself may still see it
        with pytest.raises(ConnectionResetError):
            await _connect_and_roundtrip(proxy, clients)
    await asyncio.to_thread(proxy.restore)
    assert proxy.accepted == accepted + 3
    reader, writer = await _connect(proxy, clients)
    assert await _roundtrip(reader, writer, b"back") == b"back"


async def test_cut_drops_what_a_blackhole_held(
    proxy: FaultProxy, clients: list[asyncio.StreamWriter]
) -> None:
    reader, writer = await _connect(proxy, clients)
    await asyncio.to_thread(proxy.blackhole)
    writer.write(b"never")
    await writer.drain()
    await asyncio.sleep(0.1)
    await asyncio.to_thread(proxy.cut)
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(5), 5)
    await asyncio.to_thread(proxy.restore)


async def test_slow_delays_each_chunk_and_keeps_order(
    proxy: FaultProxy, clients: list[asyncio.StreamWriter]
) -> None:
    reader, writer = await _connect(proxy, clients)
    started = time.monotonic()
    assert await _roundtrip(reader, writer, b"fast") == b"fast"
    fast = time.monotonic() - started
    await asyncio.to_thread(proxy.slow, 0.2)
    started = time.monotonic()
    assert await _roundtrip(reader, writer, b"slow") == b"slow"
    slow = time.monotonic() - started
    # held once on the way there and once on the way back
    assert slow >= 0.4 > fast, (fast, slow)
    for n in range(5):
        writer.write(b"%d," % n)
    await writer.drain()
    got = b""
    while len(got) < 10:
        got += await asyncio.wait_for(reader.read(100), 5)
    assert got == b"0,1,2,3,4,"
    await asyncio.to_thread(proxy.restore)
    started = time.monotonic()
    assert await _roundtrip(reader, writer, b"fast") == b"fast"
    assert time.monotonic() - started < 0.2


async def test_a_dead_target_closes_the_client(echo_port: int, clients: list[asyncio.StreamWriter]) -> None:
    with FaultProxy(echo_port) as proxy:
        proxy.target = ("127.0.0.1", free_port())  # a port nobody listens on
        reader, _writer = await _connect(proxy, clients)
        assert await asyncio.wait_for(reader.read(10), 5) == b""


async def test_cut_after_forwards_the_request_but_never_its_answer(
    proxy: FaultProxy, clients: list[asyncio.StreamWriter]
) -> None:
    reader, writer = await _connect(proxy, clients)
    await asyncio.to_thread(proxy.cut_after, b"COMMIT", first=b"INSERT", delay=0.2)
    # a COMMIT before any INSERT does not fire it
    assert await _roundtrip(reader, writer, b"COMMIT") == b"COMMIT"
    assert await _roundtrip(reader, writer, b"INSERT") == b"INSERT"
    assert not proxy.fired.is_set()
    writer.write(b"COMMIT")
    await writer.drain()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(6), 5)
    assert proxy.fired.is_set()
    assert proxy.mode == "cut"
    await asyncio.to_thread(proxy.restore)
    reader, writer = await _connect(proxy, clients)
    assert await _roundtrip(reader, writer, b"COMMIT") == b"COMMIT"  # one-shot
