"""The bounce listener: an SMTP server (aiosmtpd) that takes reports for ``bounces.domain``.

It runs in the current event loop (``mailqueue bounces``, or inside
``mailqueue serve`` when ``bounces.listen`` is set) and answers:

==================================================  ==========================================
RCPT to an address outside ``bounces.domain``       ``550 5.7.1`` (never relayed)
more than 50 RCPTs in one transaction               ``452 4.5.3``
a message over ``bounces.max_bytes``                ``552`` (aiosmtpd's size limit); nothing read
a report that claims DSN/ARF form and is not one    ``550 5.6.0`` (refused; nothing changed)
mail queued/sending/retrying, or Store fails        ``451 4.3.0`` (the MTA tries again later)
anything else                                       ``250``: recorded, or ignored and logged
==================================================  ==========================================

"Ignored and logged" is a report that names no known mail and recipient (a
forged VERP address: ``mailqueue_bounces_total{kind="unmatched"}``) or holds
no bounce (a success DSN, an auto-reply). It is answered 250 so that nobody
learns which mail ids exist and no bounce of the bounce is made.

Needs ``aiosmtpd`` (``pip install 'mailqueue[bounces]'``).
"""

from __future__ import annotations

import asyncio
import logging
import warnings
import weakref
from types import TracebackType
from typing import Self

from mailqueue.bounces.intake import BounceIntake, NotYetSentError
from mailqueue.bounces.parse import MalformedReportError, parse_report
from mailqueue.errors import ConfigurationError, MissingDependencyError, StoreError
from mailqueue.protocols import Store
from mailqueue.settings import Settings, parse_listen
from mailqueue.suppression_list import Suppressions

try:
    from aiosmtpd.smtp import SMTP, Envelope, Session
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(exc.name or "aiosmtpd", "bounces") from None

__all__ = ["DEFAULT_LISTEN", "MAX_RECIPIENTS", "BounceListener", "listener_from_settings"]

#: Where ``mailqueue bounces`` listens when neither ``--listen`` nor ``bounces.listen`` says.
DEFAULT_LISTEN = "127.0.0.1:2526"

logger = logging.getLogger("mailqueue.bounces")

#: Most envelope recipients of one report transaction.
MAX_RECIPIENTS = 50


class _Handler:
    """aiosmtpd's handler hooks: the domain check at RCPT, parsing and recording after DATA."""

    def __init__(self, intake: BounceIntake) -> None:
        self.intake = intake

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        _, at, domain = address.rpartition("@")
        if not at or domain.lower().rstrip(".") != self.intake.domain:
            logger.warning(
                "refused a report for %r from %s: not %s", address, _peer(session), self.intake.domain
            )
            return f"550 5.7.1 <{address}>: relay access denied; only {self.intake.domain} is accepted here"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        mail_from = envelope.mail_from or ""
        rcpt_tos = list(envelope.rcpt_tos)
        try:
            report = parse_report(data, mail_from=mail_from)
        except MalformedReportError as exc:
            logger.warning(
                "refused a malformed report from=<%s> to=%s size=%d: %s", mail_from, rcpt_tos, len(data), exc
            )
            return f"550 5.6.0 malformed report: {exc}"
        try:
            results = await self.intake.receive(report, rcpt_tos=rcpt_tos)
        except NotYetSentError as exc:
            logger.info("report to %s deferred: %s", rcpt_tos, exc)
            return "451 4.3.0 the mail is still being sent; try again later"
        except StoreError as exc:
            logger.error("report to %s not recorded, the MTA will retry: %s", rcpt_tos, exc)
            return "451 4.3.0 cannot record the report now; try again later"
        except Exception:
            logger.exception("report to %s not recorded: unexpected error", rcpt_tos)
            return "451 4.3.0 cannot record the report now; try again later"
        kinds = ",".join(r.kind for r in results) or "nothing to record"
        return f"250 2.0.0 OK: {kinds}"


def _peer(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


class BounceListener:
    """The SMTP listener; ``async with`` starts and stops it.

    Args:
        intake: records what the reports say.
        host, port: where to listen (port 0: any free one; see :attr:`port`).
        max_bytes: largest message accepted (``bounces.max_bytes``).
        hostname: the name in the greeting.
    """

    def __init__(
        self,
        intake: BounceIntake,
        *,
        host: str = "127.0.0.1",
        port: int = 2526,
        max_bytes: int = 1024 * 1024,
        hostname: str | None = None,
    ) -> None:
        self.intake = intake
        self.host = host
        self.port = port
        self.max_bytes = max_bytes
        self.hostname = hostname or intake.domain
        self._server: asyncio.Server | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def _session(self) -> SMTP:
        with warnings.catch_warnings():
            # aiosmtpd warns that it was given no TLS context; reports come from an MTA in front
            warnings.simplefilter("ignore")
            session = SMTP(
                _Handler(self.intake),
                hostname=self.hostname,
                data_size_limit=self.max_bytes,
                decode_data=False,
                ident="mailqueue bounce listener",
                loop=asyncio.get_running_loop(),
            )
        self._sessions.add(session)
        return session

    async def start(self) -> None:
        """Listen; :attr:`port` is then the port actually bound.

        Raises:
            OSError: the address cannot be listened on.
        """
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._session, host=self.host, port=self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info(
            "bounce listener on %s:%d for %s (at most %d bytes a report)",
            self.host,
            self.port,
            self.intake.domain,
            self.max_bytes,
        )

    async def stop(self) -> None:
        """Stop listening and close the open sessions; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        sessions, self._sessions = list(self._sessions), weakref.WeakSet()
        for session in sessions:
            if session.transport is not None:
                session.transport.close()
        tasks = [s._handler_coroutine for s in sessions if s._handler_coroutine is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

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


def listener_from_settings(settings: Settings, store: Store, *, listen: str | None = None) -> BounceListener:
    """The listener of ``settings.bounces`` recording into ``store`` (opened by the caller).

    Args:
        listen: ``host:port`` instead of ``bounces.listen`` (default :data:`DEFAULT_LISTEN`).

    Raises:
        ConfigurationError: ``bounces.domain`` is not set, or ``listen`` is not ``host:port``.
    """
    bounces = settings.bounces
    if not bounces.domain:
        raise ConfigurationError("the bounce listener needs bounces.domain (the VERP return-path domain)")
    try:
        host, port = parse_listen(listen or bounces.listen or DEFAULT_LISTEN)
    except ValueError as exc:
        raise ConfigurationError(f"bounces.listen: {exc}") from None
    secret = bounces.secret.get_secret_value().encode() if bounces.secret is not None else b""
    suppression = settings.suppression
    intake = BounceIntake(
        store,
        domain=bounces.domain,
        secret=secret,
        suppressions=Suppressions(
            store, enabled=suppression.enabled, hard_bounce_ttl=suppression.hard_bounce_ttl
        ),
        suppress_hard_bounces=suppression.on_hard_bounce,
    )
    return BounceListener(intake, host=host, port=port, max_bytes=bounces.max_bytes)
