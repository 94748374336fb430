"""A TCP proxy for fault tests: cut, hang or slow the road to a real service.

:class:`FaultProxy` listens on a free port of 127.0.0.1 and forwards every
connection to ``target``. It runs an asyncio loop in a thread of its own, so
that it works the same for a test's event loop and for subprocesses pointed at
its port; its methods are plain blocking calls that return once the change is
in force::

    with FaultProxy(3306) as proxy:          # a worker's store URL uses proxy.port
        proxy.cut()          # every connection closed (RST), new ones refused
        proxy.blackhole()    # connections accepted, nothing forwarded (a hung network)
        proxy.reset()        # connections accepted and reset at once: a connect that fails midway
        proxy.garble(b"...") # connections answered with these bytes (a broken greeting), then closed
        proxy.slow(0.2)      # every chunk held 0.2 s, both ways, order kept
        proxy.restore()      # forward normally again
        proxy.cut_after(b"COMMIT", first=b"INSERT")  # the request arrives, its answer never does

Data held back by :meth:`blackhole` is forwarded by :meth:`restore` (a
network that recovers) and dropped by :meth:`cut`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

__all__ = ["FaultProxy"]

Mode = Literal["normal", "cut", "blackhole", "slow", "reset"]
T = TypeVar("T")

_CHUNK = 65536


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                transport = writer.transport
                if isinstance(transport, asyncio.Transport):
                    transport.abort()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """A TCP proxy from ``127.0.0.1:<port>`` to ``host:target_port``.

    Args:
        target_port: the port of the real service.
        host: its host (loopback only: tests send nothing elsewhere).
        port: the port to listen on; 0 for a free one.
    """

    def __init__(self, target_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (host, target_port)
        self.port = port or _free_port()
        #: Connections accepted so far.
        self.accepted = 0
        self._mode: Mode = "normal"
        self._delay = 0.0
        self._links: set[_Link] = set()
        self._armed: list[tuple[bytes, bytes]] = []
        self._armed_delay = 0.3
        #: Set when a :meth:`cut_after` fault went off.
        self.fired = threading.Event()
        self._server: asyncio.Server | None = None
        self._resetter: _Resetter | None = None
        self._resumed: asyncio.Event | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"faultproxy-{self.port}")
        self._thread.daemon = True

    # --- the public, blocking API ----------------------------------------------

    @property
    def mode(self) -> Mode:
        """``normal``, ``cut``, ``blackhole``, ``slow`` or ``reset``."""
        return self._mode

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, to put in a URL."""
        return f"127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        """Client connections open right now."""
        return len(self._links)

    def start(self) -> None:
        """Start the loop thread and listen."""
        self._thread.start()
        self._call(self._start)

    def stop(self) -> None:
        """Close everything and end the thread."""
        if not self._thread.is_alive():
            return
        self._call(self._stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def cut(self) -> None:
        """Close every connection (reset) and refuse new ones until :meth:`restore`."""
        self._call(self._cut)

    def blackhole(self) -> None:
        """Keep connections open and accept new ones, but forward nothing."""
        self._call(self._set, "blackhole", 0.0)

    def reset(self) -> None:
        """Close every connection, then accept new ones and reset each at once (RST):
        the client's connect succeeds and the connection is gone before it says a word."""
        self._call(self._reset)

    def garble(self, data: bytes) -> None:
        """Close every connection, then answer each new one with ``data`` alone (say, a
        server greeting cut short) and close it once the client has, or after 1 s."""
        self._call(self._reset, data)

    def slow(self, delay: float) -> None:
        """Hold every chunk ``delay`` seconds before forwarding it."""
        if delay < 0:
            raise ValueError("delay must not be negative")
        self._call(self._set, "slow", delay)

    def cut_after(self, then: bytes, *, first: bytes = b"", delay: float = 0.3) -> None:
        """Arm a one-shot fault: once a client has sent ``first`` and later ``then``
        (say ``INSERT`` and ``COMMIT``), forward that request but hold every
        answer, and :meth:`cut` ``delay`` seconds later: the service acted, the
        client never hears of it. :attr:`fired` is set when it goes off."""
        self.fired.clear()
        self._armed_delay = delay
        self._call(self._arm, first, then)

    async def _arm(self, first: bytes, then: bytes) -> None:
        self._armed[:] = [(first, then)]

    def restore(self) -> None:
        """Forward normally again (listening again after :meth:`cut`)."""
        self._call(self._restore)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- inside the proxy's loop ----------------------------------------------------

    def _call(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        return asyncio.run_coroutine_threadsafe(func(*args), self._loop).result(10)

    async def _start(self) -> None:
        self._resumed = asyncio.Event()
        self._resumed.set()
        await self._listen()

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _stop(self) -> None:
        if self._resetter is not None:
            self._resetter.stop()
            self._resetter = None
        await self._unlisten()
        for link in list(self._links):
            link.abort()
        await asyncio.sleep(0)

    async def _cut(self) -> None:
        self._mode = "cut"
        # connections first, so that nothing held is forwarded on the way out
        for link in list(self._links):
            link.abort()
        self._links.clear()
        await self._unlisten()
        assert self._resumed is not None
        self._resumed.set()
        await asyncio.sleep(0)

    async def _reset(self, data: bytes = b"") -> None:
        await self._cut()
        self._mode = "reset"
        # A thread of its own accepts and resets, as fast as a closing server would: the
        # client's connect returns and the RST follows at once (the proxy's loop is slower).
        self._resetter = _Resetter(self.port, data)

    async def _set(self, mode: Mode, delay: float) -> None:
        assert self._resumed is not None
        if self._resetter is not None:
            self.accepted += self._resetter.stop()
            self._resetter = None
        if self._mode in ("cut", "reset"):
            await self._listen()
        self._mode = mode
        self._delay = delay
        if mode == "blackhole":
            self._resumed.clear()
        else:
            self._resumed.set()

    async def _restore(self) -> None:
        await self._set("normal", 0.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer)
        if self._mode == "cut":
            link.abort()
            return
        self._links.add(link)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._links.discard(link)
            link.abort()
            return
        link.upstream = up_writer
        done = asyncio.Event()
        for source, sink, upward in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.create_task(self._pump(source, sink, done, upward=upward))
            link.tasks.add(task)
        try:
            await done.wait()
        finally:
            self._links.discard(link)
            for task in link.tasks:
                task.cancel()
            for closing in (writer, up_writer):
                closing.close()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, done: asyncio.Event, *, upward: bool
    ) -> None:
        assert self._resumed is not None
        try:
            while True:
                chunk = await source.read(_CHUNK)
                if not chunk:
                    break
                await self._resumed.wait()
                if self._mode == "slow" and self._delay:
                    await asyncio.sleep(self._delay)
                sink.write(chunk)
                await sink.drain()
                if upward and self._armed:
                    self._check_armed(chunk)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            done.set()

    def _check_armed(self, chunk: bytes) -> None:
        first, then = self._armed[0]
        if first and first in chunk:
            self._armed[0] = (b"", then)
        elif not first and then in chunk:
            # the request is on its way: hold every answer from now on, then cut
            self._armed.clear()
            self._mode = "blackhole"
            assert self._resumed is not None
            self._resumed.clear()
            self._loop.call_later(self._armed_delay, lambda: asyncio.ensure_future(self._cut()))
            self.fired.set()


class _Resetter:
    """Listens on ``port`` in a thread; accepts each connection and resets it (RST) at once,
    or, given ``data``, sends it and closes once the client has closed (1 s at most)."""

    def __init__(self, port: int, data: bytes = b"") -> None:
        self.accepted = 0
        self._data = data
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(128)
        self._sock.settimeout(0.05)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"faultproxy-reset-{port}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self._data:
                try:
                    conn.settimeout(1.0)
                    conn.sendall(self._data)
                    while conn.recv(65536):
                        pass
                except OSError:
                    pass
            else:
                # linger 0: close() sends an RST rather than a FIN
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def stop(self) -> int:
        """Stop listening; return how many connections were reset."""
        self._stopping.set()
        self._thread.join(5)
        self._sock.close()
        return self.accepted


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def hostport(url: str) -> tuple[str, int]:
    """Host and port of ``url`` (both must be there)."""
    parts = urlsplit(url)
    assert parts.hostname is not None, url
    assert parts.port is not None, url
    return parts.hostname, parts.port


def via(url: str, proxy: FaultProxy) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@{proxy.address}" if userinfo else proxy.address
    return urlunsplit(parts._replace(netloc=netloc))
