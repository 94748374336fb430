"""The pipelining protocol set onto aiosmtplib's transport (mailqueue.backends._smtp_pipelining).

It reaches under aiosmtplib's public API, so it is pinned: the installed
aiosmtplib must be one it was tested with, and the internals it relies on
must have the shape it expects, checked against the real in-process server.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import Literal

import aiosmtplib
import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from mailqueue.backends import _smtp_pipelining
from mailqueue.backends.smtp import SMTPSender
from mailqueue.protocols import OutgoingMessage
from mailqueue.testing.smtpd import Fault, SMTPTestServer

DATA = b"From: sender@example.com\r\nSubject: hello\r\n\r\nbody\r\n"


def test_installed_aiosmtplib_is_a_tested_version() -> None:
    installed = Version(version("aiosmtplib"))
    tested = SpecifierSet(_smtp_pipelining.TESTED_AIOSMTPLIB)
    assert installed in tested, (
        f"aiosmtplib {installed} is not a version mailqueue/backends/_smtp_pipelining.py was "
        f"tested with ({tested}): it relies on aiosmtplib internals (see its docstring). Run "
        "tests/backends/test_smtp.py and this file with it, then widen TESTED_AIOSMTPLIB."
    )


@pytest.mark.parametrize("tls", ["none", "starttls", "implicit"])
async def test_smtp_transport_is_the_live_asyncio_transport(
    tls: Literal["none", "starttls", "implicit"],
) -> None:
    """Internals 1 and 2: ``SMTP.transport`` is the session's current transport (the TLS one
    after STARTTLS), an asyncio.Transport that can be handed to another protocol."""
    async with SMTPTestServer(tls=tls) as server:
        smtp = aiosmtplib.SMTP(
            hostname=server.host,
            port=server.port,
            use_tls=tls == "implicit",
            start_tls=tls == "starttls",
            tls_context=server.client_ssl_context() if tls != "none" else None,
            timeout=2,
        )
        await smtp.connect()
        await smtp.ehlo()
        transport = getattr(smtp, "transport", None)
        assert isinstance(transport, asyncio.Transport), (
            f"aiosmtplib {aiosmtplib.__version__}: SMTP.transport is {transport!r}, not an "
            "asyncio.Transport; mailqueue/backends/_smtp_pipelining.py cannot take the connection over"
        )
        assert not transport.is_closing()
        assert transport.get_extra_info("peername")[1] == server.port
        assert (transport.get_extra_info("sslcontext") is not None) == (tls != "none")
        for method in ("set_protocol", "get_protocol", "set_write_buffer_limits", "get_write_buffer_size"):
            assert callable(getattr(transport, method, None)), method

        wire = _smtp_pipelining.take_over(smtp)
        assert transport.get_protocol() is wire
        wire.write(b"NOOP\r\n")
        reply = await wire.reply(2)
        assert reply.code == 250
        wire.write(b"QUIT\r\n")
        assert (await wire.reply(2)).code == 221
        wire.close()


class _Recorder:
    """A TCP relay in front of the test server that records each chunk the client sends."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.chunks: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> _Recorder:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, record=True)),
            asyncio.create_task(self._pump(up_reader, writer, record=False)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps)
        finally:
            writer.close()
            up_writer.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, record: bool
    ) -> None:
        while chunk := await reader.read(65536):
            if record:
                self.chunks.append(chunk)
            writer.write(chunk)
            await writer.drain()
        writer.close()


@pytest.mark.parametrize("pipelining", ["true", "false"])
async def test_pipelining_sends_mail_rcpt_and_data_in_one_write(pipelining: str) -> None:
    # The server holds its reply to MAIL FROM: a client that waits for replies can only have
    # sent MAIL by then, a pipelining one has sent MAIL, every RCPT and DATA in one write.
    server = SMTPTestServer(pipelining=True, faults=[Fault("mail", stall=0.3)])
    async with server, _Recorder(server.port) as relay:
        url = f"smtp://127.0.0.1:{relay.port}/?from=a@example.com&timeout=2&pipelining={pipelining}"
        async with SMTPSender.from_url(url) as sender:
            outgoing = OutgoingMessage(
                mail_id="m1",
                data=DATA,
                envelope_from="bounce@example.com",
                recipients=("a@example.com", "b@example.com"),
            )
            result = await sender.send(outgoing)
    assert result.accepted == ["a@example.com", "b@example.com"]
    assert [m.recipients for m in server.messages] == [("a@example.com", "b@example.com")]
    mail = b"MAIL FROM:<bounce@example.com>"
    first = next(chunk for chunk in relay.chunks if chunk.startswith(mail))
    if pipelining == "true":
        assert first == b"%s SIZE=%d\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n" % (
            mail,
            len(DATA) + 3,
        )
    else:
        assert first == b"%s SIZE=%d\r\n" % (mail, len(DATA) + 3)
