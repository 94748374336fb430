"""Several accounts behind one :class:`~mailqueue.protocols.Sender`: routing and failover.

:class:`AccountRouter` sends each message through one account:

- ``failover``: the first account (in configured order) whose circuit is not
  open; ``round_robin``: the accounts in turn.
- A connection, auth, quota or throttle failure on an account
  (:func:`~mailqueue.sending.throttle.classify`) counts for its circuit breaker and
  moves the message to the next account. Anything else (a content 5xx on
  DATA, a generic 4xx, a loss after the final dot) is the message's outcome
  and is raised as is; a recipient refused at RCPT is in the result and never
  moves the message. A throttle reply in a transaction to a recipient-domain
  group (:data:`~mailqueue.sending.throttle.THROTTLE_OWNER`) is the group's,
  not the account's: another account would meet the same provider.

Each account's sender is its own chain, usually an
:class:`~mailqueue.sending.account_limit.AccountLimit` (the account's rate
limit and adaptive throttle) around its wire sender; the router reads the
throttle state through :attr:`Account.factor` and never changes it.
:func:`mailqueue.sending.pipeline.build_sender` builds it from the settings.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, replace

from mailqueue.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnknownDeliveryError,
)
from mailqueue.protocols import OutgoingMessage, Sender, SendResult
from mailqueue.sending.account_limit import AccountLimit, throttle_reply
from mailqueue.sending.step import find_link
from mailqueue.sending.throttle import ACCOUNT_FAILOVERS, THROTTLE_OWNER, CircuitBreaker, ErrorClass, classify

__all__ = ["Account", "AccountRouter"]

logger = logging.getLogger("mailqueue.accounts")


@dataclass(eq=False)
class Account:
    """One account: its sender (chain) and its circuit breaker."""

    name: str
    sender: Sender
    breaker: CircuitBreaker

    @property
    def factor(self) -> float | None:
        """The fraction of its rate the account may use now, when its chain has a limit
        (:class:`~mailqueue.sending.account_limit.AccountLimit`), else ``None``."""
        limit = find_link(self.sender, AccountLimit)
        return None if limit is None else limit.factor


class AccountRouter:
    """Sends each message through one of several accounts (see the module docs).

    The message is rendered with the first account's From address; each
    account sends with its own envelope sender, unless a step before the router
    set another one than that From address (a VERP return path,
    :mod:`mailqueue.sending.verp`): that one is kept.

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
        """Close every account's sender."""
        for account in self.accounts:
            await account.sender.close()

    async def __aenter__(self) -> AccountRouter:
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
        order = self._order()
        for position, account in enumerate(order):
            if not account.breaker.allow():
                continue
            if last is not None:
                ACCOUNT_FAILOVERS.labels(previous).inc()
            previous = account.name
            if message.envelope_from == self.from_address:
                routed = replace(message, envelope_from=account.sender.from_address)
            else:
                routed = message  # a return path set by a step (VERP): the same whatever the account
            try:
                result = await account.sender.send(routed)
            except UnknownDeliveryError:
                account.breaker.release()
                raise
            except DeliveryError as exc:
                kind = classify(exc)
                if not kind.account_fault or (kind is ErrorClass.THROTTLE and THROTTLE_OWNER.get()):
                    account.breaker.release()
                    raise
                account.breaker.failure()
                then = "trying the next one" if position + 1 < len(order) else "no other account to try"
                logger.warning("account %s failed (%s: %s); %s", account.name, kind, exc, then)
                last = exc
                continue
            except BaseException:
                account.breaker.release()
                raise
            if throttle_reply(result) is not None and not result.accepted:
                if THROTTLE_OWNER.get() is None:
                    account.breaker.failure()
                else:
                    account.breaker.release()
            else:
                account.breaker.success()
            return result
        if last is None:
            raise TransientDeliveryError(f"no account available ({len(self.accounts)} with open circuits)")
        if isinstance(last, PermanentDeliveryError):
            # A quota or auth refusal is the account's problem, not the mail's: retry later.
            raise TransientDeliveryError(f"every account failed; last: {last.reply}", last.code) from last
        raise last
