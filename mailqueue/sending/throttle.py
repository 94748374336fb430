"""Adaptive throttling: classify the server's replies, slow an account down, open its circuit.

Three pieces, used by :class:`~mailqueue.sending.account_limit.AccountLimit` (AIMD) and
:class:`~mailqueue.sending.accounts.AccountRouter` (classification, breaker):

- :func:`classify` sorts a delivery failure into an :class:`ErrorClass`:
  ``throttle`` (421, 451/450 with "rate"/"try again later"/"too many" text,
  any 4.7.x enhanced code), ``connection`` (no reply: refused, lost, timeout),
  ``auth`` (530/534/535/454 4.7.0 ...), ``quota`` (the account's sending quota
  is used up), ``recipient`` (a reply about one recipient) or ``other``.
  :func:`retry_after` reads "try again in N seconds/minutes" from a reply.
- :class:`AIMDState` keeps the rate *factor* of an account (1.0 = the
  configured rate): a throttle reply multiplies it by ``decrease`` down to
  ``floor`` and pauses the account (for the time the server asked, else
  ``pause``); each ``increase_after`` clean sends add ``increase`` back, up to 1.
  The Redis limiter keeps the same state in Redis so that every worker of the
  deployment slows down together.
- :class:`CircuitBreaker`: closed, open after ``failures`` consecutive
  connection/auth/quota/throttle failures, half-open (one trial send) after
  ``cooldown`` seconds, closed again on success.
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from mailqueue.errors import DeliveryError, TransientDeliveryError

__all__ = [
    "ACCOUNT_CIRCUIT_STATE",
    "ACCOUNT_FAILOVERS",
    "ACCOUNT_PAUSED_SECONDS",
    "ACCOUNT_RATE",
    "ACCOUNT_THROTTLED",
    "THROTTLE_OWNER",
    "AIMDParams",
    "AIMDState",
    "CircuitBreaker",
    "CircuitState",
    "ErrorClass",
    "classify",
    "classify_reply",
    "retry_after",
]

ACCOUNT_RATE = Gauge(
    "mailqueue_account_rate_per_second",
    "Sends per second an account is allowed right now (configured rate x AIMD factor)",
    ["account"],
)
ACCOUNT_THROTTLED = Counter(
    "mailqueue_account_throttled_total", "Throttle replies (421, 4.7.x, rate...) per account", ["account"]
)
ACCOUNT_PAUSED_SECONDS = Gauge(
    "mailqueue_account_paused_seconds", "Seconds an account stays paused after a throttle reply", ["account"]
)
ACCOUNT_CIRCUIT_STATE = Gauge(
    "mailqueue_account_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", ["account"]
)
ACCOUNT_FAILOVERS = Counter(
    "mailqueue_account_failovers_total", "Mails moved from this account to the next one", ["account"]
)

#: The recipient-domain group whose transaction is being sent, set around it by
#: :class:`~mailqueue.sending.domains.DomainLimitStep`: a throttle reply in it is that
#: group's (the receiving provider slows the group down), so the account's limit and
#: circuit breaker leave it alone. ``None`` (the default): throttle replies are the account's.
THROTTLE_OWNER: ContextVar[str | None] = ContextVar("mailqueue_throttle_owner", default=None)


class ErrorClass(enum.StrEnum):
    """Why a delivery attempt on an account failed."""

    THROTTLE = "throttle"
    CONNECTION = "connection"
    AUTH = "auth"
    QUOTA = "quota"
    RECIPIENT = "recipient"
    OTHER = "other"

    @property
    def account_fault(self) -> bool:
        """True for the classes that move a mail to the next account and count for the breaker."""
        return self in (ErrorClass.THROTTLE, ErrorClass.CONNECTION, ErrorClass.AUTH, ErrorClass.QUOTA)


_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_THROTTLE_TEXT = re.compile(
    r"\brate\b|rate.?limit|try again later|too many|throttl|slow down|try again in", re.IGNORECASE
)
_QUOTA_TEXT = re.compile(
    r"quota|sending limit|limit exceeded|exceeded .*limit|daily (user )?sending", re.IGNORECASE
)
_AUTH_CODES = frozenset({530, 534, 535, 538})
_RETRY_AFTER = re.compile(
    r"(?:try|retry|again)\D{0,20}?in\s+(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|m|mins?|minutes?|h|hours?)\b",
    re.IGNORECASE,
)


def classify_reply(code: int | None, reply: str) -> ErrorClass:
    """Class of a failure given its SMTP reply code (``None``: no reply) and text."""
    if code is None:
        return ErrorClass.CONNECTION
    enhanced = _ENHANCED.search(reply)
    if code in _AUTH_CODES or (enhanced and enhanced.group(2, 3) in {("7", "8"), ("7", "9")}):
        return ErrorClass.AUTH
    if code == 421:
        return ErrorClass.THROTTLE
    if 400 <= code < 500 and (
        (enhanced is not None and enhanced.group(2) == "7") or _THROTTLE_TEXT.search(reply)
    ):
        return ErrorClass.THROTTLE
    if _QUOTA_TEXT.search(reply):
        return ErrorClass.QUOTA
    return ErrorClass.OTHER


def classify(exc: DeliveryError) -> ErrorClass:
    """Class of a failure raised by a sender (not of a recipient's reply)."""
    if exc.code is None and isinstance(exc, TransientDeliveryError):
        return ErrorClass.CONNECTION
    return classify_reply(exc.code, exc.reply)


def retry_after(reply: str) -> float | None:
    """Seconds from "try again in 30 seconds" / "retry in 2 minutes" in ``reply``, or ``None``."""
    match = _RETRY_AFTER.search(reply)
    if match is None:
        return None
    value = float(match.group(1))
    unit = match.group(2).lower()
    return value * (3600.0 if unit.startswith("h") else 60.0 if unit.startswith("m") else 1.0)


@dataclass(frozen=True, slots=True)
class AIMDParams:
    """How an account slows down on throttle replies and recovers.

    Attributes:
        decrease: factor the rate is multiplied by on a throttle reply.
        floor: lowest factor.
        increase: added to the factor after ``increase_after`` clean sends.
        increase_after: clean sends needed for one increase.
        pause: seconds the account pauses on a throttle reply that names no time.
        max_pause: longest pause honoured from a "try again in N" reply.
    """

    decrease: float = 0.5
    floor: float = 0.1
    increase: float = 0.1
    increase_after: int = 10
    pause: float = 1.0
    max_pause: float = 900.0


class AIMDState:
    """The in-process AIMD state of one account (see :class:`AIMDParams`)."""

    def __init__(self, params: AIMDParams, *, clock: Callable[[], float] | None = None) -> None:
        self.params = params
        self._clock = clock or time.time
        self.factor = 1.0
        self.paused_until = 0.0
        self._clean = 0

    def throttled(self, pause: float | None) -> None:
        """A throttle reply: decrease the factor, pause for ``pause`` (default ``params.pause``)."""
        p = self.params
        self.factor = max(p.floor, self.factor * p.decrease)
        wait = min(p.max_pause, p.pause if pause is None else pause)
        self.paused_until = max(self.paused_until, self._clock() + wait)
        self._clean = 0

    def succeeded(self) -> None:
        """A clean send: count it towards the next additive increase."""
        if self.factor >= 1.0:
            return
        self._clean += 1
        if self._clean >= self.params.increase_after:
            self._clean = 0
            self.factor = min(1.0, self.factor + self.params.increase)

    def pause_left(self) -> float:
        """Seconds until the account may send again (0 when not paused)."""
        return max(0.0, self.paused_until - self._clock())


class CircuitState(enum.IntEnum):
    """Values of ``mailqueue_account_circuit_state``."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Per-account circuit breaker (in each process).

    Args:
        name: account name (the metric label).
        failures: consecutive account failures that open the circuit.
        cooldown: seconds the circuit stays open before one trial send.
    """

    def __init__(
        self,
        name: str,
        *,
        failures: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.name = name
        self.failures = failures
        self.cooldown = cooldown
        self._clock = clock or time.monotonic
        self._count = 0
        self._opened_at = 0.0
        self._trial = False
        self.state = CircuitState.CLOSED
        ACCOUNT_CIRCUIT_STATE.labels(name).set(0)

    def _set(self, state: CircuitState) -> None:
        self.state = state
        ACCOUNT_CIRCUIT_STATE.labels(self.name).set(int(state))

    def allow(self) -> bool:
        """May a send be tried on this account now? (Takes the half-open trial.)"""
        if self.state is CircuitState.OPEN:
            if self._clock() - self._opened_at < self.cooldown:
                return False
            self._set(CircuitState.HALF_OPEN)
            self._trial = False
        if self.state is CircuitState.HALF_OPEN:
            if self._trial:
                return False
            self._trial = True
        return True

    def success(self) -> None:
        """A send went through: close the circuit."""
        self._count = 0
        self._trial = False
        if self.state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)

    def failure(self) -> None:
        """A connection/auth/quota/throttle failure on this account."""
        self._count += 1
        self._trial = False
        if self.state is CircuitState.HALF_OPEN or self._count >= self.failures:
            self._opened_at = self._clock()
            self._set(CircuitState.OPEN)

    def release(self) -> None:
        """A trial send ended without telling anything about the account (e.g. a content 5xx)."""
        self._trial = False
