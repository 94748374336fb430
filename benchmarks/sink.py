"""Postfix ``smtp-sink`` for the benchmarks: fetch it, start it, count what it received.

``smtp-sink`` is Postfix's SMTP test server: it accepts mail as fast as the
network allows and throws it away. It is not installed system-wide; the first
use downloads the Debian ``postfix`` package with ``apt-get download`` and
unpacks it with ``dpkg -x`` into ``benchmarks/.cache/postfix`` (gitignored).
Nothing is installed and no daemon is configured.

Counting is real: the sink runs with ``-c``, which writes a running counter
line (``sess=N quit=N mesg=N``, separated by carriage returns) every time a
message's final ``.`` is accepted. A reader thread timestamps each change of
``mesg`` with :func:`time.perf_counter`, so a benchmark gets

* :attr:`Sink.count` - messages the sink accepted since the last :meth:`Sink.reset`,
* :attr:`Sink.first_at` / :attr:`Sink.last_at` - when the first and latest of them arrived,
* :meth:`Sink.rate` - messages/s from the first to the last delivery.

Usage (scripts in ``benchmarks/`` run as ``python benchmarks/x.py`` have this
folder on ``sys.path``)::

    from sink import Sink

    with Sink() as sink:                 # free port on 127.0.0.1, ready when it returns
        ...  # send mail to sink.host:sink.port
        sink.wait_for(1000, timeout=60)  # True once 1000 mails arrived
        print(sink.count, sink.rate())

    .venv/bin/python benchmarks/sink.py          # fetch if needed, print the path and version
    .venv/bin/python benchmarks/sink.py --serve  # run one on a free port until Ctrl-C
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

CACHE = Path(__file__).resolve().parent / ".cache" / "postfix"
_MESG = re.compile(rb"mesg=(\d+)")


def smtp_sink_path() -> Path:
    """Return the ``smtp-sink`` binary, downloading and unpacking Postfix on first use."""
    binary = CACHE / "usr" / "sbin" / "smtp-sink"
    if binary.exists():
        return binary
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE.parent) as tmp:
        subprocess.run(["apt-get", "download", "postfix"], cwd=tmp, check=True, capture_output=True)
        (deb,) = Path(tmp).glob("postfix_*.deb")
        unpacked = Path(tmp) / "root"
        subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
        if CACHE.exists():
            shutil.rmtree(CACHE)
        unpacked.rename(CACHE)
    return binary


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    libs = str(CACHE / "usr" / "lib" / "postfix")
    env["LD_LIBRARY_PATH"] = libs + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def postfix_version() -> str:
    """Return the unpacked Postfix's ``mail_version`` (e.g. ``3.7.11``)."""
    smtp_sink_path()
    result = subprocess.run(
        [str(CACHE / "usr" / "sbin" / "postconf"), "-d", "-h", "mail_version"],
        env=_environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "unknown"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Sink:
    """One ``smtp-sink`` process on 127.0.0.1 with a live count of accepted messages.

    ``backlog`` is the listen backlog; ``max_concurrency`` is the sink's ``-m``
    (concurrent sessions it serves). Use as a context manager or call
    :meth:`start` / :meth:`stop`.
    """

    def __init__(self, *, backlog: int = 1024, max_concurrency: int = 1024) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self._backlog = backlog
        self._max_concurrency = max_concurrency
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._total = 0
        self._base = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> Sink:
        """Start the sink on a free port and return once it answers with its 220 greeting."""
        binary = smtp_sink_path()
        last_error = ""
        for _ in range(5):
            self.port = free_port()
            args = [str(binary), "-c", "-m", str(self._max_concurrency)]
            if os.geteuid() == 0:
                args += ["-u", "nobody"]  # smtp-sink refuses to run as root without it
            args += [f"{self.host}:{self.port}", str(self._backlog)]
            process = subprocess.Popen(
                args, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            if self._greets(process, timeout):
                self._process = process
                assert process.stdout is not None
                self._reader = threading.Thread(
                    target=self._read, args=(process.stdout.fileno(),), name="smtp-sink-reader", daemon=True
                )
                self._reader.start()
                return self
            process.kill()
            _, err = process.communicate()
            last_error = err.decode(errors="replace").strip()
        raise RuntimeError(f"smtp-sink did not start: {last_error}")

    def _greets(self, process: subprocess.Popen[bytes], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        s.recv(64)
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Terminate the sink and wait for it; safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """The sink process's id while it runs."""
        return self._process.pid if self._process is not None else None

    # -- counting --------------------------------------------------------------------------
    def _read(self, fd: int) -> None:
        tail = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            now = time.perf_counter()
            data = tail + chunk
            cut = data.rfind(b"\r")
            if cut < 0:
                tail = data
                continue
            tail = data[cut + 1 :]
            numbers = _MESG.findall(data[:cut])
            if not numbers:
                continue
            total = int(numbers[-1])
            with self._changed:
                if total > self._total:
                    self._total = total
                    if self.first_at is None:
                        self.first_at = now
                    self.last_at = now
                    self._changed.notify_all()

    def reset(self) -> None:
        """Start a new measurement: count and first/last times restart from here."""
        with self._lock:
            self._base = self._total
            self.first_at = None
            self.last_at = None

    @property
    def count(self) -> int:
        """Messages the sink accepted (final ``.`` answered 250) since the last :meth:`reset`."""
        with self._lock:
            return self._total - self._base

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until :attr:`count` reaches ``count``; return False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._total - self._base < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
            return True

    def settle(self, quiet: float = 1.0, timeout: float = 30.0) -> int:
        """Wait until no new message arrived for ``quiet`` seconds; return :attr:`count`.

        Use after :meth:`wait_for` to catch duplicates: a count above N is a mail
        delivered twice.
        """
        deadline = time.monotonic() + timeout
        seen = self.count
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.count
            if now == seen:
                return now
            seen = now
        return seen

    def rate(self) -> float:
        """Messages/s from the first to the last delivery since :meth:`reset` (0 if < 2)."""
        with self._lock:
            count = self._total - self._base
            if self.first_at is None or self.last_at is None or count < 2:
                return 0.0
            elapsed = self.last_at - self.first_at
            # n deliveries span n-1 intervals
            return (count - 1) / elapsed if elapsed > 0 else 0.0


def _main() -> None:
    print(f"smtp-sink: {smtp_sink_path()} (postfix {postfix_version()})")
    if "--serve" in sys.argv:
        with Sink() as sink:
            print(f"listening on {sink.host}:{sink.port} (Ctrl-C to stop)", flush=True)
            try:
                while True:
                    time.sleep(5)
                    print(f"received {sink.count}", flush=True)
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":
    _main()
