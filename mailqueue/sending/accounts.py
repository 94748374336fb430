"""Several SMTP accounts behind one :class:`~mailqueue.protocols.Sender`, each within its limits.

:class:`AccountsSender` routes each message to an account:

- ``failover``: the first account (in configured order) whose circuit is not
  open; ``round_robin``: the accounts in turn.
- Each account takes a slot of its own rate limit (in-process or shared in
  Redis) before sending, and reacts to throttle replies (AIMD, pause).
- A connection, auth, quota or throttle failure on an account
  (:func:`~mailqueue.sending.throttle.classify`) counts for its circuit breaker and
  moves the message to the next account. Anything else (a content 5xx on
  DATA, a generic 4xx, a loss after the final dot) is the message's outcome
  and is raised as is; a recipient refused at RCPT is in the result and never
  moves the message.

:func:`mailqueue.sending.pipeline.build_sender` builds it from the settings.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, replace
from typing import Protocol

from mailqueue.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnknownDeliveryError,
)
from mailqueue.protocols import OutgoingMessage, Sender, SendResult
from mailqueue.sending.limits import RATE_LIMIT_WAIT, RateLimiter, RateWindow, scaled_limit
from mailqueue.sending.throttle import (
    ACCOUNT_FAILOVERS,
    ACCOUNT_PAUSED_SECONDS,
    ACCOUNT_RATE,
    ACCOUNT_THROTTLED,
    AIMDParams,
    AIMDState,
    CircuitBreaker,
    ErrorClass,
    classify,
    classify_reply,
    retry_after,
)

__all__ = ["Account", "AccountLimiter", "AccountsSender", "LocalAccountLimiter"]

logger = logging.getLogger("mailqueue.accounts")


class AccountLimiter(Protocol):
    """An account's rate limit with adaptive throttling."""

    @property
    def factor(self) -> float:
        """The current fraction of the configured rate."""

    async def take(self) -> str:
        """Wait for a send slot (and any pause); return a token for :meth:`done`."""

    async def done(self, token: str) -> None:
        """The send of the slot ``token`` has ended (success or not)."""

    async def throttled(self, pause: float | None) -> None:
        """A throttle reply: slow down and pause (``None``: the default pause)."""

    async def succeeded(self) -> None:
        """A clean send."""

    async def close(self) -> None:
        """Release connections."""


class LocalAccountLimiter:
    """:class:`AccountLimiter` within this process (``worker.rate_store`` empty)."""

    def __init__(self, name: str, windows: tuple[RateWindow, ...], params: AIMDParams | None = None) -> None:
        self.name = name
        self.windows = windows
        self._limiter = RateLimiter(windows)
        self._aimd = AIMDState(params or AIMDParams())
        self._publish()

    @property
    def factor(self) -> float:
        """The current fraction of the configured rate."""
        return self._aimd.factor

    def _publish(self) -> None:
        self._limiter.factor = self._aimd.factor
        if self.windows:
            shortest = min(self.windows, key=lambda w: w.period)
            ACCOUNT_RATE.labels(self.name).set(scaled_limit(shortest, self._aimd.factor) / shortest.period)

    async def acquire(self) -> float:
        """Wait out a pause, then take a slot of every window."""
        waited = 0.0
        while (pause := self._aimd.pause_left()) > 0:
            await asyncio.sleep(pause)
            waited += pause
        waited += await self._limiter.acquire()
        if waited and not self.windows:
            RATE_LIMIT_WAIT.observe(waited)
        return waited

    async def take(self) -> str:
        """:meth:`acquire`; the in-process log counts a send when it starts."""
        await self.acquire()
        return ""

    async def done(self, token: str) -> None:
        """Nothing to do in process."""

    async def throttled(self, pause: float | None) -> None:
        """Decrease the factor and pause."""
        self._aimd.throttled(pause)
        ACCOUNT_PAUSED_SECONDS.labels(self.name).set(self._aimd.pause_left())
        self._publish()

    async def succeeded(self) -> None:
        """Count a clean send towards recovery."""
        self._aimd.succeeded()
        ACCOUNT_PAUSED_SECONDS.labels(self.name).set(0)
        self._publish()

    async def close(self) -> None:
        """Nothing to release."""


@dataclass(eq=False)
class Account:
    """One account: its sender, limiter and breaker."""

    name: str
    sender: Sender
    limiter: AccountLimiter
    breaker: CircuitBreaker


class AccountsSender:
    """Sends each message through one of several accounts (see the module docs).

    The message is rendered with the first account's From address; each
    account sends with its own envelope sender.

    Args:
        accounts: in failover order.
        strategy: ``failover`` or ``round_robin``.
    """

    def __init__(self, accounts: list[Account], strategy: str = "failover") -> None:
        if not accounts:
            raise ConfigurationError("at least one account is needed")
        if strategy not in ("failover", "round_robin"):
            raise ConfigurationError(f"sender_strategy must be failover or round_robin, not {strategy!r}")
        self.accounts = accounts
        self.strategy = strategy
        self.from_address = accounts[0].sender.from_address
        self._turn = itertools.count()

    async def open(self) -> None:
        """Open every account's sender."""
        for account in self.accounts:
            await account.sender.open()

    async def close(self) -> None:
        """Close every account's sender and limiter."""
        for account in self.accounts:
            await account.sender.close()
            await account.limiter.close()

    async def __aenter__(self) -> AccountsSender:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _order(self) -> list[Account]:
        if self.strategy == "failover":
            return list(self.accounts)
        start = next(self._turn) % len(self.accounts)
        return self.accounts[start:] + self.accounts[:start]

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Send through the first account that does not fail for an account reason.

        Raises:
            TransientDeliveryError: every account failed for an account reason
                (or has its circuit open); the mail is retried later.
            PermanentDeliveryError, UnknownDeliveryError: the message's own outcome.
        """
        last: DeliveryError | None = None
        previous = ""
        for account in self._order():
            if not account.breaker.allow():
                continue
            if last is not None:
                ACCOUNT_FAILOVERS.labels(previous).inc()
            previous = account.name
            token = await account.limiter.take()
            try:
                result = await account.sender.send(
                    replace(message, envelope_from=account.sender.from_address)
                )
            except UnknownDeliveryError:
                await account.limiter.done(token)
                account.breaker.release()
                raise
            except DeliveryError as exc:
                await account.limiter.done(token)
                kind = classify(exc)
                if not kind.account_fault:
                    account.breaker.release()
                    raise
                await self._account_failed(account, kind, exc.reply)
                logger.warning("account %s failed (%s: %s); trying the next one", account.name, kind, exc)
                last = exc
                continue
            except BaseException:
                await account.limiter.done(token)
                raise
            await account.limiter.done(token)
            await self._settle(account, result)
            return result
        if last is None:
            raise TransientDeliveryError(f"no account available ({len(self.accounts)} with open circuits)")
        if isinstance(last, PermanentDeliveryError):
            # A quota or auth refusal is the account's problem, not the mail's: retry later.
            raise TransientDeliveryError(f"every account failed; last: {last.reply}", last.code) from last
        raise last

    async def _account_failed(self, account: Account, kind: ErrorClass, reply: str) -> None:
        account.breaker.failure()
        if kind is ErrorClass.THROTTLE:
            ACCOUNT_THROTTLED.labels(account.name).inc()
            await account.limiter.throttled(retry_after(reply))

    async def _settle(self, account: Account, result: SendResult) -> None:
        throttle = [
            r for r in result.replies.values() if classify_reply(r.code, r.reply) is ErrorClass.THROTTLE
        ]
        if throttle and not result.accepted:
            await self._account_failed(account, ErrorClass.THROTTLE, throttle[0].reply)
            return
        if throttle:
            ACCOUNT_THROTTLED.labels(account.name).inc()
            await account.limiter.throttled(retry_after(throttle[0].reply))
        else:
            await account.limiter.succeeded()
        account.breaker.success()
