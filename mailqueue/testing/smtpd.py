"""An SMTP server for tests: records what it receives and misbehaves on demand.

:class:`SMTPTestServer` runs an aiosmtpd server in the *current* event loop on
``127.0.0.1`` and a free port, for the duration of an ``async with`` block::

    from mailqueue.testing.smtpd import Fault, SMTPTestServer

    async with SMTPTestServer(tls="starttls", auth=("user", "secret")) as server:
        async with SMTPSender.from_url(server.url()) as sender:
            await sender.send(message)
        assert server.messages[0].recipients == ("a@example.com",)

- ``tls``: ``"none"``, ``"starttls"`` (offered, required before MAIL) or
  ``"implicit"`` (TLS from the first byte, use ``smtps://``). The certificate
  is issued for ``127.0.0.1`` and ``localhost`` by a throw-away CA made with
  ``trustme``; :attr:`SMTPTestServer.cafile` is its PEM file and
  :meth:`SMTPTestServer.client_ssl_context` a context that trusts it.
- ``auth=(user, password)``: AUTH PLAIN/LOGIN required before MAIL (530
  otherwise); a wrong password gets ``535``. With ``tls="starttls"`` AUTH is
  offered only after STARTTLS; with ``"none"`` it is offered in clear text.
- :attr:`SMTPTestServer.messages` lists every message the server accepted
  (answered 250 after the final dot) and :attr:`SMTPTestServer.connections`
  counts every connection opened, to check connection reuse.
- :attr:`SMTPTestServer.faults` is a list of :class:`Fault` rules, checked
  in order at each stage of the dialogue; the first one that matches fires
  and uses up one of its ``times``. The list may be changed while the server
  runs. Examples::

      Fault("mail", reply="451 4.3.0 try again later")          # next MAIL
      Fault("rcpt", address="b@example.com", reply="550 5.1.1 no such user")
      Fault("rcpt", after=2, reply="452 4.5.3 too many recipients", times=None)
      Fault("data_body", disconnect=True)                        # drop after 354
      Fault("data_end", stall=5, disconnect=True)                # no reply to the dot
      Fault("greeting", stall=5)                                 # slow banner

The server needs the ``aiosmtpd`` and ``trustme`` packages (``mailqueue[test]``).
"""

from __future__ import annotations

import asyncio
import hmac
import ssl
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, AnyStr, Literal, Self, cast
from urllib.parse import quote, urlencode

from mailqueue.errors import MissingDependencyError

try:
    import trustme
    from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(exc.name or "aiosmtpd", "test") from None

__all__ = ["Fault", "FaultStage", "ReceivedMessage", "SMTPTestServer"]

#: Where a :class:`Fault` fires.
FaultStage = Literal["greeting", "mail", "rcpt", "data", "data_body", "data_end"]
_STAGES = ("greeting", "mail", "rcpt", "data", "data_body", "data_end")


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A message the server accepted.

    Attributes:
        envelope_from: the MAIL FROM address.
        recipients: the accepted RCPT TO addresses, in order.
        data: the message as received: CRLF line ends, dots un-stuffed,
            without the final ``.`` line.
        login: the AUTH user name of the session, if any.
    """

    envelope_from: str
    recipients: tuple[str, ...]
    data: bytes
    login: str | None = None


@dataclass(slots=True)
class Fault:
    """One scripted misbehaviour.

    Args:
        stage: where it fires: ``"greeting"`` (on connect, before the 220
            banner), ``"mail"`` (MAIL FROM), ``"rcpt"`` (RCPT TO),
            ``"data"`` (the DATA command, before 354), ``"data_body"``
            (after 354, once ``after`` bytes of message data were read) or
            ``"data_end"`` (after the final dot, instead of the 250).
        reply: the reply line to send instead of the normal one, e.g.
            ``"451 4.3.0 try later"``; for ``"greeting"`` it replaces the
            banner. ``None`` sends no reply of its own.
        disconnect: close the connection (after ``reply``, if any).
            ``"data_body"`` always disconnects.
        stall: seconds to wait first. A fault with only a stall then lets
            the dialogue go on normally (a slow server).
        address: ``"rcpt"`` only: fire only for this recipient (any case).
        after: ``"rcpt"``: fire only once the transaction already has this
            many accepted recipients; ``"data_body"``: bytes of message data
            to read before disconnecting.
        times: how many times it fires; ``None`` for every time.
    """

    stage: FaultStage
    reply: str | None = None
    disconnect: bool = False
    stall: float = 0.0
    address: str | None = None
    after: int = 0
    times: int | None = 1

    def __post_init__(self) -> None:
        if self.stage not in _STAGES:
            raise ValueError(f"stage must be one of {', '.join(_STAGES)}, not {self.stage!r}")
        if self.reply is not None and not (
            len(self.reply) >= 3
            and self.reply[:3].isdigit()
            and "\r" not in self.reply
            and "\n" not in self.reply
        ):
            raise ValueError(f"reply must be one line starting with a 3-digit code, not {self.reply!r}")
        if self.stage == "data_body":
            self.disconnect = True
        if self.reply is None and not self.disconnect and self.stall <= 0:
            raise ValueError("a fault needs a reply, a disconnect or a stall")
        if self.stall < 0 or self.after < 0 or (self.times is not None and self.times < 0):
            raise ValueError("stall, after and times must not be negative")

    def _matches(self, stage: str, address: str | None, count: int) -> bool:
        if self.stage != stage or self.times == 0:
            return False
        if stage == "rcpt":
            if self.address is not None and (address or "").lower() != self.address.lower():
                return False
            if count < self.after:
                return False
        return True


class _Handler:
    """aiosmtpd handler hooks: MAIL/RCPT faults, recording at the end of DATA."""

    def __init__(self, server: SMTPTestServer) -> None:
        self._server = server

    async def handle_EHLO(
        self, smtp: _FaultySMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self._server.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, smtp: _FaultySMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        fault = self._server._take("mail", None, 0)
        if fault is not None:
            reply = await smtp._apply(fault)
            if reply is not None:
                return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, smtp: _FaultySMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        fault = self._server._take("rcpt", address, len(envelope.rcpt_tos))
        if fault is not None:
            reply = await smtp._apply(fault)
            if reply is not None:
                return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, smtp: _FaultySMTP, session: Session, envelope: Envelope) -> str:
        fault = self._server._take("data_end", None, 0)
        if fault is not None:
            reply = await smtp._apply(fault)
            if reply is not None:
                return reply
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        received = ReceivedMessage(
            envelope_from=envelope.mail_from or "",
            recipients=tuple(envelope.rcpt_tos),
            data=bytes(envelope.original_content or b""),
            login=login,
        )
        self._server.messages.append(received)
        return f"250 2.0.0 OK queued as {len(self._server.messages)}"


class _FaultySMTP(SMTP):
    """aiosmtpd's SMTP session with fault injection at the greeting and DATA."""

    def __init__(self, server: SMTPTestServer, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._owner = server
        self._greeted = False
        self._dropped = False
        self._drop_after_push = False

    def drop(self, *, abort: bool = False) -> None:
        """Close the connection from the server's side."""
        self._dropped = True
        if self.transport is not None:
            if abort:
                cast(asyncio.Transport, self.transport).abort()
            else:
                self.transport.close()

    async def _hang_up(self) -> None:
        """Drop the connection from inside the session's own task and wait for
        the cancellation that ``connection_lost`` brings, so that nothing more
        is read or answered."""
        self.drop()
        await asyncio.get_running_loop().create_future()

    async def _apply(self, fault: Fault) -> str | None:
        """Stall, then hang up or arrange to after the reply; return the reply to send, if any."""
        if fault.stall:
            await asyncio.sleep(fault.stall)
        if fault.disconnect:
            if fault.reply is None:
                await self._hang_up()
            self._drop_after_push = True
        return fault.reply

    async def push(self, status: AnyStr) -> None:
        if self._dropped:
            return
        reply = None
        if not self._greeted:
            self._greeted = True
            fault = self._owner._take("greeting", None, 0)
            if fault is not None:
                reply = await self._apply(fault)
        if reply is not None:
            await super().push(reply)
        else:
            await super().push(status)
        if self._drop_after_push:
            await self._hang_up()

    async def smtp_DATA(self, arg: str) -> None:
        envelope = self.envelope
        if envelope is None or not envelope.rcpt_tos or arg or not (self.session and self.session.host_name):
            await super().smtp_DATA(arg)
            return
        fault = self._owner._take("data", None, 0)
        if fault is not None:
            reply = await self._apply(fault)
            if reply is not None:
                self.envelope = self._create_envelope()
                await self.push(reply)
                return
        fault = self._owner._take("data_body", None, 0)
        if fault is not None:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            remaining = fault.after
            while remaining > 0:
                chunk = await self._reader.read(min(remaining, 65536))
                if not chunk:
                    break
                remaining -= len(chunk)
            if fault.stall:
                await asyncio.sleep(fault.stall)
            await self._hang_up()
            return
        await super().smtp_DATA(arg)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._owner._sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._owner._sessions.discard(self)
        super().connection_lost(error)


class SMTPTestServer:
    """An in-process SMTP server on 127.0.0.1 for tests (an async context manager).

    Args:
        tls: ``"none"``, ``"starttls"`` or ``"implicit"``.
        auth: ``(user, password)`` to require AUTH, or ``None``.
        faults: initial :class:`Fault` rules (see :attr:`faults`).
        data_size_limit: the SIZE the server announces and enforces
            (``None``: unlimited).
        pipelining: announce ``PIPELINING`` (RFC 2920) in the EHLO reply.
            The server reads commands in order either way.

    Attributes:
        host: ``"127.0.0.1"``.
        port: the port it listens on (valid inside the ``async with``).
        messages: every :class:`ReceivedMessage` accepted, in order.
        connections: how many connections were opened so far.
        faults: the :class:`Fault` rules; edit freely.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        tls: Literal["none", "starttls", "implicit"] = "none",
        auth: tuple[str, str] | None = None,
        faults: list[Fault] | None = None,
        data_size_limit: int | None = 64 * 1024 * 1024,
        pipelining: bool = False,
    ) -> None:
        if tls not in ("none", "starttls", "implicit"):
            raise ValueError(f"tls must be 'none', 'starttls' or 'implicit', not {tls!r}")
        self.tls = tls
        self.auth = auth
        self.pipelining = pipelining
        self.faults: list[Fault] = list(faults or [])
        self.messages: list[ReceivedMessage] = []
        self.connections = 0
        self.port = 0
        self._data_size_limit = data_size_limit
        self._sessions: set[_FaultySMTP] = set()
        self._all_sessions: list[_FaultySMTP] = []
        self._server: asyncio.Server | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._ca: trustme.CA | None = None
        self._server_context: ssl.SSLContext | None = None
        self._cafile: str | None = None

    # --- TLS material ---------------------------------------------------------

    @property
    def cafile(self) -> str:
        """Path of the PEM file of the CA that issued the server's certificate."""
        if self._cafile is None:
            raise RuntimeError("the server has no TLS (tls='none') or is not started")
        return self._cafile

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only this server's CA."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.cafile)
        return context

    # --- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen on 127.0.0.1 and a free port."""
        if self._server is not None:
            return
        if self.tls != "none":
            self._ca = trustme.CA()
            cert = self._ca.issue_cert("127.0.0.1", "localhost")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert.configure_cert(context)
            self._server_context = context
            self._tmpdir = tempfile.TemporaryDirectory(prefix="mailqueue-smtpd-")
            path = Path(self._tmpdir.name) / "ca.pem"
            self._ca.cert_pem.write_to_path(str(path))
            self._cafile = str(path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_session,
            host=self.host,
            port=0,
            ssl=self._server_context if self.tls == "implicit" else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, cut every connection and wait for the sessions to end."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        sessions = list(self._all_sessions)
        self._all_sessions.clear()
        for session in sessions:
            session.drop(abort=True)
        tasks = [s._handler_coroutine for s in sessions if s._handler_coroutine is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        # let the transports run their connection_lost callbacks
        await asyncio.sleep(0)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
            self._cafile = None

    async def disconnect_all(self) -> None:
        """Close every open connection from the server's side (as an idle timeout would)."""
        sessions = list(self._sessions)
        for session in sessions:
            session.drop()
        for _ in range(3):
            await asyncio.sleep(0)

    @property
    def open_connections(self) -> int:
        """Connections currently open."""
        return len(self._sessions)

    def url(
        self, *, from_address: str = "sender@example.com", credentials: bool = True, **options: str
    ) -> str:
        """A mailqueue sender URL for this server.

        ``smtps://`` for implicit TLS, else ``smtp://`` with ``starttls``
        true or false; ``cafile`` is added when TLS is on and the AUTH
        credentials when ``credentials``. Extra ``options`` are appended.
        """
        userinfo = ""
        if self.auth is not None and credentials:
            userinfo = f"{quote(self.auth[0], safe='')}:{quote(self.auth[1], safe='')}@"
        query: dict[str, str] = {"from": from_address}
        if self.tls == "implicit":
            scheme = "smtps"
        else:
            scheme = "smtp"
            query["starttls"] = "true" if self.tls == "starttls" else "false"
        if self.tls != "none":
            query["cafile"] = self.cafile
        query.update(options)
        return f"{scheme}://{userinfo}{self.host}:{self.port}/?{urlencode(query)}"

    # --- internals ------------------------------------------------------------

    def _take(self, stage: str, address: str | None, count: int) -> Fault | None:
        for fault in self.faults:
            if fault._matches(stage, address, count):
                if fault.times is not None:
                    fault.times -= 1
                return fault
        return None

    def _authenticate(
        self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self.auth is not None
        ok = (
            isinstance(auth_data, LoginPassword)
            and hmac.compare_digest(auth_data.login, self.auth[0].encode())
            and hmac.compare_digest(auth_data.password, self.auth[1].encode())
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def _new_session(self) -> _FaultySMTP:
        self.connections += 1
        kwargs: dict[str, Any] = {
            "hostname": "localhost",
            "data_size_limit": self._data_size_limit,
            "loop": asyncio.get_running_loop(),
        }
        if self.tls == "starttls":
            kwargs.update(tls_context=self._server_context, require_starttls=True)
        if self.auth is not None:
            kwargs.update(
                authenticator=self._authenticate,
                auth_required=True,
                # implicit TLS is invisible to aiosmtpd, which would then hide AUTH
                auth_require_tls=self.tls == "starttls",
            )
        with warnings.catch_warnings():
            # aiosmtpd warns about AUTH without TLS; a test server may want exactly that.
            warnings.simplefilter("ignore")
            session = _FaultySMTP(self, _Handler(self), **kwargs)
        self._all_sessions.append(session)
        return session
