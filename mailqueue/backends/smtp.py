"""SMTP sender over a pool of persistent connections (aiosmtplib).

URL::

    smtp://[user[:password]@]host[:port]/?from=noreply@example.com[&option=value...]
    smtps://[user[:password]@]host[:port]/?from=noreply@example.com[&option=value...]

``smtp`` speaks plain SMTP with STARTTLS as chosen by ``starttls``; ``smtps``
wraps the connection in TLS from the first byte (implicit TLS). The user name
and password are percent-decoded; the password is kept in a
:class:`pydantic.SecretStr` and never appears in ``repr``, ``str`` or logs.

Options:

``from`` (required)
    the sender's address (:attr:`SMTPSender.from_address`), validated.
``starttls`` = ``auto`` (default) | ``true`` | ``false``
    ``auto`` upgrades when the server offers STARTTLS; ``true`` insists (a
    server without it is a delivery error); ``false`` never upgrades. Not
    allowed with ``smtps``. With ``auto``, credentials are never sent over a
    connection that stayed unencrypted: say ``starttls=false`` to allow that.
``verify`` = ``true`` (default) | ``false``
    verify the server's certificate and host name; ``false`` disables it.
``cafile``
    PEM file of the CA(s) to trust instead of the system store (private CA).
``timeout`` = ``30``
    seconds allowed for each network step: connecting, each command's reply,
    progress while writing the message, and the reply to the final dot.
``pool`` = ``4``
    most connections open at once; concurrent :meth:`~SMTPSender.send` calls
    beyond that wait for a free one.
``max_per_connection`` = ``100``
    mail transactions (MAIL FROM) on one connection before it is replaced.
``name``
    the name given in EHLO (default: this machine's fully qualified name).
``pipelining`` = ``true`` (default) | ``false``
    send MAIL FROM, RCPT TO and DATA in one write when the server offers
    ``PIPELINING`` (RFC 2920); ``false`` waits for each reply in turn.

Default port: 465 for ``smtps``, 587 for ``smtp`` with ``starttls=true``, 25
otherwise (the conventions of aiosmtplib and RFC 8314/6409).

Reply classification (what :meth:`SMTPSender.send` raises):

- connecting, TLS, EHLO and AUTH failures: :class:`TransientDeliveryError`,
  with the reply code when there was one. A refused password (535) is also
  transient, so that the mail is retried once the operator has fixed it;
- a timeout before the message data was handed over:
  :class:`DeliveryTimeoutError`;
- MAIL FROM or DATA answered 4xx: transient; 5xx: :class:`PermanentDeliveryError`,
  except 530 (STARTTLS or AUTH required: a configuration problem), transient;
- the connection lost or a timeout *after* the final ``.`` line was written:
  :class:`UnknownDeliveryError` (the server may have accepted the message);
- RCPT TO answered 4xx/5xx: reported for that recipient in the
  :class:`SendResult`, never raised. 452 (too many recipients) after some were
  accepted: the accepted ones get DATA, the rest go in a further transaction.

How the final dot is told apart: once a connection is set up (connected,
TLS, EHLO and AUTH by aiosmtplib), its transport is handed to a small
protocol (:mod:`mailqueue.backends._smtp_pipelining`, which names the
aiosmtplib internals this relies on and the versions tested) and this
module speaks the mail transactions itself (fewer
awaits and allocations per mail than aiosmtplib's command methods, and
command pipelining, RFC 2920, when the server offers ``PIPELINING``: MAIL,
RCPT and DATA then go in one write). The dot-stuffed message and the
terminating ``.`` line are written together, and the sender waits until the
transport's write buffer is empty (everything handed to the operating
system) while the connection is still up. The ``.`` line is the end of that
buffer, so while any byte is left in it the server cannot have seen the end
of the message: a loss noticed then is "before the dot" (transient);
anything once the buffer is empty is "after the dot" (unknown), erring
towards *unknown* rather than risking a duplicate.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import unquote, urlsplit

import aiosmtplib
from pydantic import AfterValidator, BeforeValidator, Field, SecretStr
from pydantic_core import PydanticCustomError

from mailqueue import metrics
from mailqueue.backends._base import Flag, Number, OptionsModel, Whole, parse_options
from mailqueue.backends._smtp_pipelining import Wire, take_over
from mailqueue.errors import (
    ConfigurationError,
    DeliveryError,
    DeliveryTimeoutError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnknownDeliveryError,
)
from mailqueue.message import check_address
from mailqueue.protocols import (
    BackendContext,
    OutgoingMessage,
    RecipientReply,
    ResourceMixin,
    SendResult,
)

__all__ = ["SMTPOptions", "SMTPSender", "TLSMode"]

log = logging.getLogger(__name__)

#: How the connection is protected: ``auto`` (STARTTLS when offered),
#: ``starttls`` (STARTTLS required), ``implicit`` (TLS from the first byte,
#: ``smtps``) or ``none`` (never encrypt).
TLSMode = Literal["auto", "starttls", "implicit", "none"]

_TLS_MODES: tuple[str, ...] = ("auto", "starttls", "implicit", "none")
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
_POLL_INTERVAL = 0.002


class _Stage(enum.Enum):
    CONNECT = "connect"
    MAIL = "MAIL FROM"
    RCPT = "RCPT TO"
    DATA = "DATA"
    BODY = "message data"
    END = "end of data"


class _StaleConnection(Exception):
    """A reused connection turned out dead at MAIL FROM: retry once on a new one."""


class _FinalDotWritten(Exception):
    """Carries a failure that happened after the final dot was written."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(eq=False, slots=True)
class _Connection:
    wire: Wire
    size: bool = False
    eight_bit: bool = False
    pipelining: bool = False
    transactions: int = 0


def _dot_stuffed(data: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends, leading dots doubled,
    ending in CRLF, followed by the terminating ``.`` line."""
    crlf = data.count(b"\r\n")
    if crlf != data.count(b"\n") or crlf != data.count(b"\r"):  # a bare CR or LF
        data = _LINE_ENDINGS.sub(b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def _envelope_problem(address: str) -> str | None:
    """Why ``address`` cannot go on a MAIL/RCPT line as plain ASCII, or None."""
    if not address.isascii():
        return "address is not ASCII (SMTPUTF8 is not used)"
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in address) or any(c in address for c in "<>"):
        return "address contains a space, control character or angle bracket"
    return None


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _greater_than_zero(value: float) -> float:
    if value <= 0:
        raise PydanticCustomError("option", "must be greater than 0", {})
    return value


_Switch = Annotated[Flag, BeforeValidator(_strip)]
_Count = Annotated[Whole, AfterValidator(_greater_than_zero)]


class SMTPOptions(OptionsModel):
    """The options of an ``smtp://`` or ``smtps://`` URL (see the module docstring)."""

    from_: str = Field("", alias="from")
    starttls: str = "auto"
    verify: _Switch = True
    cafile: str | None = None
    timeout: Annotated[Number, AfterValidator(_greater_than_zero)] = 30.0
    pool: _Count = 4
    max_per_connection: _Count = 100
    name: str | None = None
    pipelining: _Switch = True


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"option {name!r} must be true or false, not {value!r}")


def _translate(exc: BaseException, stage: _Stage) -> DeliveryError:
    """Map an aiosmtplib/OS/ssl failure at ``stage`` onto mailqueue's delivery errors."""
    where = stage.value
    if isinstance(exc, TimeoutError):  # aiosmtplib's SMTPTimeoutError and asyncio's
        return DeliveryTimeoutError(f"timed out at {where}: {exc or type(exc).__name__}")
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code > 0:
        text = f"{exc.message} (at {where})"
        permanent_stage = stage in (_Stage.MAIL, _Stage.DATA, _Stage.END)
        # 530 (STARTTLS/AUTH required) is this sender's configuration, not the message's fault
        if permanent_stage and 500 <= exc.code < 600 and exc.code != 530:
            return PermanentDeliveryError(text, exc.code)
        return TransientDeliveryError(text, exc.code)
    if isinstance(exc, ssl.SSLError):
        return TransientDeliveryError(f"TLS failure at {where}: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException | OSError):
        return TransientDeliveryError(f"{type(exc).__name__} at {where}: {exc}")
    return TransientDeliveryError(f"unexpected {type(exc).__name__} at {where}: {exc}")


class SMTPSender(ResourceMixin):
    """Deliver messages over SMTP through a pool of reused connections.

    Connections are opened on demand, up to ``pool`` at once, and reused for
    the next message (a new MAIL FROM after the last DATA, or RSET after a
    transaction that ended without DATA). A connection is closed after
    ``max_per_connection`` transactions and after any error that leaves it in
    an unknown state. An idle connection the server has closed is noticed and
    replaced before sending; if that is only noticed at MAIL FROM, the
    transaction is retried once on a fresh connection (never after DATA).

    Args:
        host: server name or address.
        port: server port; ``None`` picks 465 (implicit TLS), 587
            (``tls="starttls"``) or 25.
        from_address: the sender's address, validated.
        username: AUTH user name; ``None`` for no AUTH.
        password: AUTH password.
        tls: see :data:`TLSMode`.
        verify: verify the server's certificate and name (ignored when
            ``ssl_context`` is given).
        cafile: PEM file of trusted CA(s), replacing the system store.
        ssl_context: a ready client context, used as is.
        timeout: seconds for each network step (see the module docstring).
        pool_size: most connections at once.
        max_per_connection: transactions per connection before replacing it.
        local_hostname: the EHLO name; default the machine's FQDN.
        pipelining: pipeline MAIL, RCPT and DATA when the server offers it.

    Raises:
        ConfigurationError: on an invalid address, option or combination.
    """

    #: The URL's options.
    url_options: ClassVar[type[OptionsModel]] = SMTPOptions

    def __init__(
        self,
        *,
        host: str,
        from_address: str,
        port: int | None = None,
        username: str | None = None,
        password: str | SecretStr | None = None,
        tls: TLSMode = "auto",
        verify: bool = True,
        cafile: str | os.PathLike[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        pool_size: int = 4,
        max_per_connection: int = 100,
        local_hostname: str | None = None,
        pipelining: bool = True,
    ) -> None:
        if not host or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in host):
            raise ConfigurationError(f"invalid SMTP host {host!r}")
        if tls not in _TLS_MODES:
            raise ConfigurationError(f"tls must be one of {', '.join(_TLS_MODES)}, not {tls!r}")
        if port is not None and not 0 < port < 65536:
            raise ConfigurationError(f"invalid SMTP port {port!r}")
        if timeout <= 0 or pool_size < 1 or max_per_connection < 1:
            raise ConfigurationError("timeout, pool_size and max_per_connection must be greater than 0")
        if local_hostname is not None and (
            not local_hostname or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in local_hostname)
        ):
            raise ConfigurationError(f"invalid EHLO name {local_hostname!r}")
        if password is not None and username is None:
            raise ConfigurationError("a password was given without a user name")
        try:
            self.from_address: str = check_address(from_address)
        except ValueError as exc:
            raise ConfigurationError(f"invalid from address: {exc}") from None
        self.host = host
        self.tls: TLSMode = tls
        if port is None:
            port = 465 if tls == "implicit" else 587 if tls == "starttls" else 25
        self.port: int = port
        self.username = username
        self._password: SecretStr | None = (
            password if isinstance(password, SecretStr) or password is None else SecretStr(password)
        )
        self.verify = verify
        self.cafile: str | None = os.fspath(cafile) if cafile is not None else None
        self._given_context = ssl_context
        self.timeout = float(timeout)
        self.pool_size = pool_size
        self.max_per_connection = max_per_connection
        self.local_hostname = local_hostname
        self.pipelining = pipelining

        self._ssl_context: ssl.SSLContext | None = None
        self._ehlo_name: str | None = local_hostname
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._opened = False
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext | None = None) -> Self:
        """Build a sender from an ``smtp://`` or ``smtps://`` URL (see the module docstring).

        Raises:
            ConfigurationError: wrong scheme, missing host or ``from``, an
                unknown or repeated option, or an invalid value.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("smtp", "smtps"):
            raise ConfigurationError(f"not an smtp:// or smtps:// URL (scheme {parts.scheme!r})")
        if not parts.hostname:
            raise ConfigurationError("the SMTP URL has no host")
        try:
            port = parts.port
        except ValueError:
            raise ConfigurationError("the SMTP URL has an invalid port") from None
        if parts.path not in ("", "/"):
            raise ConfigurationError(f"the SMTP URL must not have a path (found {parts.path!r})")
        options = parse_options(url, SMTPOptions, once=True)
        if not options.from_:
            raise ConfigurationError("the SMTP URL needs a from= option (the sender's address)")

        tls: TLSMode
        starttls = options.starttls.strip().lower()
        if scheme == "smtps":
            if "starttls" in options.model_fields_set and starttls not in ("false", "0", "no", "off"):
                raise ConfigurationError("starttls cannot be used with smtps:// (TLS is implicit)")
            tls = "implicit"
        elif starttls == "auto":
            tls = "auto"
        else:
            tls = "starttls" if _parse_bool("starttls", starttls) else "none"

        cafile = options.cafile
        if cafile is not None and not os.path.isfile(cafile):
            raise ConfigurationError(f"cafile {cafile!r} is not a readable file")
        username = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(
            host=parts.hostname,
            port=port,
            from_address=options.from_,
            username=username or None,
            password=password if username else None,
            tls=tls,
            verify=options.verify,
            cafile=cafile,
            timeout=options.timeout,
            pool_size=options.pool,
            max_per_connection=options.max_per_connection,
            local_hostname=options.name,
            pipelining=options.pipelining,
        )

    def __repr__(self) -> str:
        user = f", username={self.username!r}" if self.username else ""
        return (
            f"{type(self).__name__}(host={self.host!r}, port={self.port}, tls={self.tls!r}"
            f"{user}, from_address={self.from_address!r}, pool_size={self.pool_size})"
        )

    __str__ = __repr__

    # --- lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        """Prepare the TLS context and EHLO name; connections open on first use.

        Raises:
            ConfigurationError: the CA file cannot be loaded.
        """
        if self._opened and not self._closed:
            return
        if self.tls != "none" and self._ssl_context is None:
            try:
                self._ssl_context = self._given_context or await asyncio.to_thread(self._build_ssl_context)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(f"cannot load TLS settings: {exc}") from None
        if self._ehlo_name is None:
            name = await asyncio.to_thread(socket.getfqdn)
            valid = name and not any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in name)
            self._ehlo_name = name if valid else "localhost"
        self._opened = True
        self._closed = False

    def _build_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.cafile)
        if not self.verify:
            log.warning("TLS certificate verification is disabled for SMTP server %s", self.host)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def close(self) -> None:
        """Close idle connections (QUIT) and make busy ones close when released. Idempotent."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(conn) for conn in idle))
        self._count()

    # --- sending --------------------------------------------------------------

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Deliver ``message`` to every recipient the server accepts.

        Returns:
            one reply per distinct envelope recipient: the DATA reply for
            those delivered, the RCPT reply for those refused. When a later
            transaction (after a 452) fails, the recipients of the earlier
            ones stay reported as delivered and the rest carry the failure's
            code (451 when there was no reply).

        Raises:
            TransientDeliveryError: connect/TLS/AUTH failure, 4xx on MAIL or
                DATA, connection lost before the final dot.
            DeliveryTimeoutError: a timeout before the final dot.
            PermanentDeliveryError: 5xx on MAIL FROM or DATA, or an envelope
                sender that cannot be written on the MAIL line.
            UnknownDeliveryError: connection lost or timed out after the
                final dot (also when that happens in a later transaction).
            RuntimeError: the sender was not opened.
        """
        if not self._opened or self._closed:
            raise RuntimeError("SMTPSender is not open; call open() or use 'async with'")
        problem = _envelope_problem(message.envelope_from)
        if problem is not None:
            raise PermanentDeliveryError(f"invalid envelope sender {message.envelope_from!r}: {problem}", 553)
        order = list(dict.fromkeys(message.recipients))
        replies: dict[str, RecipientReply] = {}
        pending: list[str] = []
        for rcpt in order:
            problem = _envelope_problem(rcpt)
            if problem is None:
                pending.append(rcpt)
            else:
                replies[rcpt] = RecipientReply(553, f"5.1.3 not sent: {problem}")
        payload = _dot_stuffed(message.data) if pending else b".\r\n"
        delivered = False
        while pending:
            try:
                pending, sent = await self._deliver_batch(message, payload, pending, replies)
            except DeliveryError as exc:
                if not delivered or isinstance(exc, UnknownDeliveryError):
                    raise
                code = exc.code if exc.code is not None and 400 <= exc.code < 600 else 451
                failure = RecipientReply(code, exc.reply)
                for rcpt in pending:
                    replies.setdefault(rcpt, failure)
                break
            delivered = delivered or sent
        return SendResult({rcpt: replies[rcpt] for rcpt in order})

    async def _deliver_batch(
        self,
        message: OutgoingMessage,
        payload: bytes,
        recipients: list[str],
        replies: dict[str, RecipientReply],
    ) -> tuple[list[str], bool]:
        """One transaction on a pooled connection; returns (deferred recipients, DATA done)."""
        async with self._slots:
            conn = await self._checkout()
            try:
                try:
                    result = await self._transaction(conn, message, payload, recipients, replies)
                except _StaleConnection:
                    log.debug("pooled SMTP connection to %s was dead; retrying on a new one", self.host)
                    self._discard(conn)
                    metrics.SMTP_RECONNECTS.inc()
                    conn = await self._connect()
                    self._busy.add(conn)
                    self._count()
                    result = await self._transaction(conn, message, payload, recipients, replies)
            except BaseException:
                self._discard(conn)
                raise
            await self._checkin(conn)
            return result

    async def _transaction(
        self,
        conn: _Connection,
        message: OutgoingMessage,
        payload: bytes,
        recipients: list[str],
        replies: dict[str, RecipientReply],
    ) -> tuple[list[str], bool]:
        wire = conn.wire
        timeout = self.timeout
        stage = _Stage.MAIL
        try:
            options = b""
            if conn.size:
                options += b" SIZE=%d" % len(payload)  # the message and its ".": what RFC 1870 counts
            if conn.eight_bit and not payload.isascii():
                options += b" BODY=8BITMIME"
            # Addresses were checked by _envelope_problem: ASCII, no space, control or bracket.
            mail = b"MAIL FROM:<%s>%s\r\n" % (message.envelope_from.encode("ascii"), options)
            rcpts = [b"RCPT TO:<%s>\r\n" % rcpt.encode("ascii") for rcpt in recipients]
            reused = conn.transactions > 0
            pipelined = conn.pipelining
            # RFC 2920: MAIL, the RCPTs and DATA in one go; the replies come in order.
            wire.write(b"".join([mail, *rcpts, b"DATA\r\n"]) if pipelined else mail)
            try:
                response = await wire.reply(timeout)
            except aiosmtplib.SMTPServerDisconnected:
                if reused:
                    raise _StaleConnection from None
                raise
            if response.code != 250:
                if reused and response.code == 421:
                    raise _StaleConnection
                raise aiosmtplib.SMTPSenderRefused(response.code, response.message, message.envelope_from)
            conn.transactions += 1

            stage = _Stage.RCPT
            accepted: list[str] = []
            deferred: list[str] = []
            too_many: dict[str, aiosmtplib.SMTPResponse] = {}
            refused: dict[str, aiosmtplib.SMTPResponse] = {}
            for index, rcpt in enumerate(recipients):
                if not pipelined:
                    if deferred:
                        break
                    wire.write(rcpts[index])
                response = await wire.reply(timeout)
                if response.code in (250, 251):
                    accepted.append(rcpt)
                elif response.code == 421:  # the server is closing the connection
                    raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, rcpt)
                elif response.code == 452 and pipelined:
                    too_many[rcpt] = response
                elif response.code == 452 and accepted:
                    deferred = recipients[index:]  # too many recipients: another transaction takes these
                else:
                    refused[rcpt] = response
            if too_many:
                # Too many recipients: another transaction takes these, if this one has
                # any; without an accepted recipient a 452 is that recipient's reply.
                if accepted:
                    deferred = list(too_many)
                else:
                    refused.update(too_many)
            for rcpt, response in refused.items():
                replies[rcpt] = RecipientReply(response.code, response.message)

            stage = _Stage.DATA
            if not pipelined:
                if not accepted:
                    await self._reset(conn)
                    return deferred, False
                wire.write(b"DATA\r\n")
            response = await wire.reply(timeout)
            if not accepted:
                if response.code == 354:  # a server that takes DATA without recipients: end it empty
                    wire.write(b".\r\n")
                    await wire.reply(timeout)
                await self._reset(conn)
                return deferred, False
            if response.code != 354:
                raise aiosmtplib.SMTPDataError(response.code, response.message)
            stage = _Stage.BODY
            response = await self._write_data(wire, payload)
            stage = _Stage.END
            if response.code != 250:
                raise aiosmtplib.SMTPDataError(response.code, response.message)
        except _FinalDotWritten as lost:
            cause = lost.cause
            raise UnknownDeliveryError(
                f"no reply after the final dot of DATA: the server may have accepted the message "
                f"({type(cause).__name__}: {cause})"
            ) from cause
        except (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError) as exc:
            raise _translate(exc, stage) from exc
        for rcpt in accepted:
            replies[rcpt] = RecipientReply(response.code, response.message)
        return deferred, True

    async def _write_data(self, wire: Wire, payload: bytes) -> aiosmtplib.SMTPResponse:
        """Write the message with its final dot; return the server's reply to it.

        Failures while the dot is still in the write buffer propagate as they
        are; failures once it has left are wrapped in :class:`_FinalDotWritten`.
        """
        wire.write(payload)
        if wire.unsent():
            await self._flush(wire)
        try:
            return await wire.reply(self.timeout)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise _FinalDotWritten(exc) from exc

    async def _flush(self, wire: Wire) -> None:
        """Wait until the transport has handed all written data to the OS.

        Raises SMTPServerDisconnected if the connection is lost meanwhile, and
        SMTPTimeoutError if no byte leaves the buffer for ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        remaining = wire.unsent()
        deadline = loop.time() + self.timeout
        while True:
            if wire.drained:
                return  # everything, the dot included, was sent (even if the connection is gone now)
            connected = wire.is_connected
            size = wire.unsent()
            if not connected:
                raise aiosmtplib.SMTPServerDisconnected("connection lost while sending the message data")
            if size == 0:
                return
            if size < remaining:
                remaining, deadline = size, loop.time() + self.timeout
            elif loop.time() >= deadline:
                raise aiosmtplib.SMTPTimeoutError("timed out sending the message data")
            await asyncio.sleep(_POLL_INTERVAL)

    async def _reset(self, conn: _Connection) -> None:
        """RSET after a transaction without DATA; a failure only retires the connection."""
        try:
            conn.wire.write(b"RSET\r\n")
            response = await conn.wire.reply(self.timeout)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            conn.wire.close()
            return
        if response.code != 250:
            conn.wire.close()

    # --- the pool -------------------------------------------------------------

    async def _checkout(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if conn.wire.idle:
                self._busy.add(conn)
                return conn
            conn.wire.close()
            metrics.SMTP_RECONNECTS.inc()
        conn = await self._connect()
        self._busy.add(conn)
        self._count()
        return conn

    def _count(self) -> None:
        """Publish the pool size as ``mailqueue_smtp_connections``."""
        metrics.SMTP_CONNECTIONS.set(len(self._idle) + len(self._busy))

    async def _checkin(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        if self._closed or conn.transactions >= self.max_per_connection:
            await self._quit(conn)
        elif conn.wire.idle:
            self._idle.append(conn)
        else:
            conn.wire.close()
        self._count()

    def _discard(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        conn.wire.close()
        self._count()

    async def _quit(self, conn: _Connection) -> None:
        try:
            if conn.wire.is_connected:
                conn.wire.write(b"QUIT\r\n")
                await conn.wire.reply(min(self.timeout, 5.0))
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass
        finally:
            conn.wire.close()

    async def _connect(self) -> _Connection:
        """Open, secure, greet and authenticate a new connection.

        Raises:
            TransientDeliveryError: (or DeliveryTimeoutError) on any failure.
        """
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            local_hostname=self._ehlo_name,
            timeout=self.timeout,
            use_tls=self.tls == "implicit",
            start_tls={"auto": None, "starttls": True}.get(self.tls, False),
            tls_context=self._ssl_context,
        )
        try:
            await smtp.connect()
            if smtp.is_ehlo_or_helo_needed:
                try:
                    await smtp.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await smtp.helo()
            if self.username is not None:
                if self.tls == "auto" and smtp.get_transport_info("sslcontext") is None:
                    raise TransientDeliveryError(
                        f"{self.host} did not offer STARTTLS; refusing to send credentials unencrypted "
                        "(use starttls=false to allow it)"
                    )
                password = self._password.get_secret_value() if self._password is not None else ""
                await smtp.login(self.username, password, timeout=self.timeout)
        except DeliveryError:
            smtp.close()
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError) as exc:
            smtp.close()
            raise _translate(exc, _Stage.CONNECT) from exc
        except BaseException:
            smtp.close()
            raise
        log.debug("opened SMTP connection to %s:%s", self.host, self.port)
        # From here on the transactions are this module's (see the module docstring).
        wire = take_over(smtp)
        return _Connection(
            wire,
            size=smtp.supports_extension("size"),
            eight_bit=smtp.supports_extension("8bitmime"),
            pipelining=self.pipelining and smtp.supports_extension("pipelining"),
        )
