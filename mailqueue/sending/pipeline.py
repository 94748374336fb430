"""The sending chain: :func:`build_sender` composes it, and is the only place that does.

Between the rendered message and the socket sits a chain of Senders, each
wrapping the next and each one concern (``docs/accounts-and-limits.md``)::

    [suppression] -> rate limit -> [DKIM] -> adaptive throttle -> account failover -> SMTP/outbox

What each link is today:

- **rate limit**: the worker's :class:`~mailqueue.sending.limits.RateLimiter`
  (:attr:`SendingChain.limiter`). The worker takes its slot *before* it
  claims the mail, so that a mail is ``sending`` only while it really is
  being sent (``worker.sending_lease``); that is why this link is handed to
  the :class:`~mailqueue.worker.Worker` rather than wrapped around the sender.
- **adaptive throttle** and **account failover**:
  :class:`~mailqueue.sending.accounts.AccountsSender`, whose accounts each
  take a slot of their own limit (in process or in Redis,
  :mod:`~mailqueue.sending.redis_limits`) and react to throttle replies
  (:mod:`~mailqueue.sending.throttle`) before their wire sender sends. With
  one ``sender`` and no ``worker.rate_store`` there is no such link: the
  wire sender is used as it is.
- **SMTP/outbox**: the wire sender from the ``mailqueue.senders`` entry points
  (:mod:`mailqueue.backends.smtp`, :mod:`mailqueue.backends.outbox`, ...).

Where a step that looks at or changes a message goes: a :class:`SendingStep`
(a Sender with ``self.inner``) added to :data:`STEPS`, in chain order. It
returns per-recipient outcomes like any Sender (a suppressed recipient is a
recipient whose reply says so), so every decision is recorded next to the
mail. The next issues add ``suppression.py`` (outermost: a mail whose every
recipient is suppressed should not reach the wire; note that the worker's
rate-limit slot is taken before any Sender runs) and ``dkim.py`` (signs the
bytes just before the throttle and failover, so that a failover re-sends
the signed bytes).

Not done yet: third-party steps by entry point (group
``mailqueue.sending_steps``, each naming a :data:`StepFactory`), selected by
name in the settings and loaded lazily like the other groups in
:mod:`mailqueue.registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import TracebackType
from typing import NamedTuple, Self, TypeVar

from mailqueue.errors import ConfigurationError
from mailqueue.protocols import BackendContext, OutgoingMessage, Sender, SendResult
from mailqueue.sending.accounts import Account, AccountLimiter, AccountsSender, LocalAccountLimiter
from mailqueue.sending.limits import RateLimiter, parse_rate
from mailqueue.sending.throttle import AIMDParams, CircuitBreaker
from mailqueue.settings import Settings

__all__ = ["STEPS", "SendingChain", "SendingStep", "StepFactory", "build_sender", "find_link", "links"]

_S = TypeVar("_S")


class SendingStep:
    """A Sender that wraps a Sender (``inner``): it looks at, changes or decides about a
    message, then hands it on, and returns per-recipient outcomes like any Sender.

    Subclasses override :meth:`send` (and :meth:`open`/:meth:`close` if they hold
    anything, calling these too). Opening and closing the step opens and closes
    ``inner``; the From address is ``inner``'s.
    """

    def __init__(self, inner: Sender) -> None:
        self.inner = inner

    @property
    def from_address(self) -> str:
        """The address messages are rendered with: the wrapped sender's."""
        return self.inner.from_address

    async def open(self) -> None:
        """Open ``inner``."""
        await self.inner.open()

    async def close(self) -> None:
        """Close ``inner``."""
        await self.inner.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Hand ``message`` to ``inner`` unchanged (a step overrides this)."""
        return await self.inner.send(message)


#: Makes a step around ``inner`` from the settings.
StepFactory = Callable[[Sender, Settings], Sender]

#: The steps around the wire (and account) senders, outermost first. Empty today;
#: suppression and DKIM signing go here (see the module docs).
STEPS: tuple[StepFactory, ...] = ()


class SendingChain(NamedTuple):
    """What :func:`build_sender` gives a worker."""

    #: The outermost Sender of the chain (not opened).
    sender: Sender
    #: The rate limit the worker takes a slot of before claiming a mail.
    limiter: RateLimiter


def links(sender: Sender) -> Iterator[Sender]:
    """``sender`` and every Sender it wraps (through ``inner``), outermost first."""
    current: Sender | None = sender
    while current is not None:
        yield current
        current = getattr(current, "inner", None)


def find_link(sender: Sender, kind: type[_S]) -> _S | None:
    """The first link of the chain that is a ``kind`` (e.g. the :class:`AccountsSender`), or ``None``."""
    for link in links(sender):
        if isinstance(link, kind):
            return link
    return None


def _limiter(settings: Settings, name: str, rate: str, params: AIMDParams) -> AccountLimiter:
    windows = parse_rate(rate)
    store = settings.worker.rate_store
    if not store:
        return LocalAccountLimiter(name, windows, params)
    from mailqueue.sending.redis_limits import RedisRateLimiter

    return RedisRateLimiter(store, name, windows, params)


def _wire(settings: Settings, context: BackendContext | None) -> tuple[Sender, RateLimiter]:
    """The account failover (with each account's throttle) or the one wire sender, and the
    worker's limiter."""
    from mailqueue import registry

    worker = settings.worker
    if not settings.senders and not worker.rate_store:
        sender = registry.create_sender(settings.sender.get_secret_value(), context=context)
        return sender, RateLimiter(worker.rate)
    t = worker.throttle
    params = AIMDParams(t.decrease, t.floor, t.increase, t.increase_after, t.pause, t.max_pause)
    configured = settings.senders or []
    specs = [
        (a.name or f"account{i + 1}", a.url.get_secret_value(), a.rate) for i, a in enumerate(configured)
    ]
    if not specs:
        specs = [("default", settings.sender.get_secret_value(), None)]
    names = [name for name, _, _ in specs]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"account names must be unique, got {names}")
    accounts = [
        Account(
            name,
            registry.create_sender(url, context=context),
            _limiter(settings, name, worker.rate if rate is None else rate, params),
            CircuitBreaker(name, failures=t.breaker_failures, cooldown=t.breaker_cooldown),
        )
        for name, url, rate in specs
    ]
    return AccountsSender(accounts, settings.sender_strategy), RateLimiter("")


def build_sender(settings: Settings, *, context: BackendContext | None = None) -> SendingChain:
    """The sending chain for ``settings`` (not opened) and the worker's limiter.

    With one ``sender`` and no ``worker.rate_store`` the sender is exactly the
    plain wire sender and the limiter an in-process one of ``worker.rate``.
    Otherwise an :class:`~mailqueue.sending.accounts.AccountsSender` does the
    limiting per account (in Redis when ``rate_store`` is set) and the
    worker's own limiter is unlimited. The :data:`STEPS` wrap the result.

    Raises:
        ConfigurationError: a sender URL, a rate or the accounts cannot be used.
    """
    sender, limiter = _wire(settings, context)
    for step in reversed(STEPS):
        sender = step(sender, settings)
    return SendingChain(sender, limiter)
