"""The mail-transaction protocol the SMTP sender sets onto aiosmtplib's transport.

aiosmtplib opens, secures (implicit TLS or STARTTLS), greets and authenticates
a connection; :func:`take_over` then moves its transport to a :class:`Wire`,
an :class:`asyncio.Protocol` of ours that writes commands and reads replies,
several outstanding at once: command pipelining (RFC 2920), and the
"was the final dot sent?" bookkeeping of :mod:`mailqueue.backends.smtp`.

Why not aiosmtplib's public API: it has no pipelining. Every command method
(``mail``, ``rcpt``, ``data``, ``execute_command``) writes one command and
waits for its reply under a per-connection lock, and ``data`` hides when the
final dot left the write buffer. Nothing public writes bytes without waiting
for a reply (checked against aiosmtplib 5.1.3, whose sources mention
PIPELINING only in a docstring example of an EHLO reply).

This reaches under aiosmtplib's public API. It relies on exactly:

1. ``SMTP.transport``: after ``connect()``, ``starttls()``, ``ehlo()`` and
   ``login()`` this attribute is the live transport the session runs on
   (the TLS one after STARTTLS: ``SMTP.starttls`` reassigns it). It is a
   plain attribute, not documented as API.
2. That transport is an ordinary :class:`asyncio.Transport` (from
   ``loop.create_connection`` / ``loop.start_tls``), so ``set_protocol``,
   ``set_write_buffer_limits`` and ``get_write_buffer_size`` work on it.
   asyncio promises those methods; aiosmtplib does not promise the kind of
   transport.
3. aiosmtplib's ``SMTPProtocol`` holds nothing the next reader needs once a
   command's reply was returned: it discards data that arrives with no
   command pending (``SMTPProtocol.data_received``), and after
   ``set_protocol`` it receives nothing. The ``SMTP`` object is then
   abandoned, not closed and never used again: it would write on a
   transport it no longer reads. Closing is the Wire's job.

Everything else used is public: ``SMTP.supports_extension``,
``SMTPResponse`` and the exception classes.

Tested with aiosmtplib 3.0.2, 4.0.2, 5.0.0 and 5.1.3 (``tests/backends/test_smtp.py``
and ``tests/backends/test_smtp_pipelining.py`` pass with each); :data:`TESTED_AIOSMTPLIB`
is the range they span. ``tests/backends/test_smtp_pipelining.py`` fails with a clear
message on a version outside it, and checks the shape of (1) and (2)
against the in-process test server.
"""

from __future__ import annotations

import asyncio
import collections
from typing import cast

import aiosmtplib

__all__ = ["TESTED_AIOSMTPLIB", "Wire", "take_over"]

#: The aiosmtplib versions this module was tested with (a PEP 440 specifier).
TESTED_AIOSMTPLIB = ">=3.0.2,<5.2"

#: Longest reply (all lines of a multi-line one) accepted from a server.
REPLY_MAX = 32 * 1024


def take_over(smtp: aiosmtplib.SMTP) -> Wire:
    """Move the connected, set-up ``smtp`` session's transport to a new :class:`Wire`.

    From then on the Wire owns the connection; ``smtp`` must not be used or
    closed again.
    """
    transport = cast("asyncio.Transport", smtp.transport)
    wire = Wire(transport)
    transport.set_protocol(wire)
    return wire


class Wire(asyncio.Protocol):
    """The protocol of a pooled connection once it is set up: writes commands and
    reads replies, several of them outstanding at once (pipelining).

    A reply that arrives while none is awaited is kept, not dropped: a reused
    connection with something already waiting (a 421 sent while it was idle)
    is then known to be stale.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._replies: collections.deque[aiosmtplib.SMTPResponse] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None
        #: False from the moment bytes stay in the write buffer until it is empty again. The
        #: transport tells (pause/resume_writing with both limits at 0) when the buffer empties
        #: by sending; one that empties it because the connection was lost does not.
        self.drained = True
        transport.set_write_buffer_limits(high=0)

    @property
    def is_connected(self) -> bool:
        return self._lost is None and not self.transport.is_closing()

    @property
    def idle(self) -> bool:
        """Connected, and nothing received that was not asked for."""
        return self.is_connected and not self._replies and not self._buffer

    def write(self, data: bytes) -> None:
        if not self.is_connected:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self.transport.write(data)

    def unsent(self) -> int:
        """Bytes written but not yet handed to the operating system."""
        return self.transport.get_write_buffer_size()

    async def reply(self, seconds: float) -> aiosmtplib.SMTPResponse:
        """The next reply, within ``seconds``; raises SMTPServerDisconnected or SMTPReadTimeoutError."""
        if not self._replies:
            if self._lost is not None:
                raise self._lost
            waiter = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(seconds, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self._replies.popleft()

    def close(self) -> None:
        self.transport.close()

    # --- asyncio.Protocol -------------------------------------------------------

    def pause_writing(self) -> None:
        self.drained = False

    def resume_writing(self) -> None:
        self.drained = True

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while True:
            # one reply: lines "250-..." go on, a line "250 ..." ends it
            lines: list[bytes] = []
            position = start
            while (end := buffer.find(b"\n", position)) >= 0:
                lines.append(bytes(buffer[position : end + 1]))
                position = end + 1
                if lines[-1][3:4] != b"-":
                    break
            else:
                break  # no complete reply left
            try:
                self._replies.append(parse_reply(lines))
            except aiosmtplib.SMTPResponseException as exc:
                self._fail(exc)
                return
            start = position
        if start:
            del buffer[:start]
        if len(buffer) > REPLY_MAX:
            self._fail(aiosmtplib.SMTPResponseException(-1, "Response too long"))
            return
        waiter = self._waiter
        if self._replies and waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._fail(lost)

    def _fail(self, exc: BaseException) -> None:
        if self._lost is None:
            self._lost = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self._lost)
        if not self.transport.is_closing():
            self.transport.close()


def parse_reply(lines: list[bytes]) -> aiosmtplib.SMTPResponse:
    """One reply from its lines (each with its line end)."""
    code = -1
    texts = []
    for line in lines:
        try:
            code = int(line[:3])
        except ValueError:
            text = line.decode("utf-8", "ignore")
            raise aiosmtplib.SMTPResponseException(-1, f"Malformed SMTP response line: {text}") from None
        texts.append(line[4:].strip(b" \t\r\n"))
    return aiosmtplib.SMTPResponse(code, b"\n".join(texts).decode("utf-8", "surrogateescape"))


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"))
