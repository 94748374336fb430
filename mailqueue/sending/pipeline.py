"""The sending chain: :func:`build_sender` composes it, and is the only place that does.

Between the rendered message and the socket sits a chain of Senders, each
wrapping the next and each one concern (``docs/accounts-and-limits.md``)::

    worker: rate limit (before the claim)
      -> [plugin steps, ``sending_steps``]
      -> suppression -> [STEPS: DKIM signing, domain limits, VERP]
      -> account router (failover / round robin, circuit breakers)
           -> per account: limit + adaptive throttle -> wire sender (SMTP/outbox)

What each link is:

- **rate limit**: the worker's :class:`~mailqueue.sending.limits.RateLimiter`
  (:attr:`SendingChain.limiter`). The worker takes its slot *before* it
  claims the mail, so that a mail is ``sending`` only while it really is
  being sent (``worker.sending_lease``); that is why this link is handed to
  the :class:`~mailqueue.worker.Worker` rather than wrapped around the sender.
- **steps** (:class:`~mailqueue.sending.step.SendingStep`): look at, change or
  decide about a message before the wire; the built-in ones are listed in
  :data:`STEPS` (in chain order), third-party ones come by entry point
  (group ``mailqueue.sending_steps``, each naming a :data:`StepFactory`) and
  are chosen by name in the ``sending_steps`` setting; they wrap the
  built-in ones. A step returns per-recipient outcomes like any Sender (a
  suppressed recipient is a recipient whose reply says so,
  :attr:`RecipientReply.suppressed <mailqueue.protocols.RecipientReply.suppressed>`),
  so every decision is recorded next to the mail. :mod:`~mailqueue.sending.dkim`
  (``dkim_step``) signs the bytes outside the router, so that a failover
  re-sends the signed bytes, and inside every step that may change bytes,
  so that nothing changes them after signing. Inside it are only steps
  that change the envelope and never the bytes (the mail is signed once for
  all their transactions): :mod:`~mailqueue.sending.domains`
  (``domain_step``, with ``domain_limits``) sends one transaction per
  recipient-domain group within that group's limit, defers a group whose
  slot is not free (the worker hands the mail back without counting an
  attempt) and owns the group's throttle replies; inside it
  :mod:`~mailqueue.sending.verp` (``verp_step``, with ``bounces.domain``)
  gives each recipient its own return path and so its own transaction, and
  the router keeps that envelope sender whatever the account. A step whose
  settings are empty returns ``inner`` itself and adds no link.
  :mod:`~mailqueue.sending.suppression` is the outermost built-in step: a
  mail whose every recipient is suppressed does not reach the wire nor is
  signed (the worker's rate-limit slot is taken before any Sender runs). It
  needs the Store, so :func:`build_sender` adds it around :data:`STEPS` with
  the :class:`~mailqueue.protocols.BackendContext` (a :data:`StepFactory`
  gets the settings only).
- **account router**: :class:`~mailqueue.sending.accounts.AccountRouter`
  picks the account and moves a mail to the next one on an account failure
  (connection, auth, quota, throttle), with a circuit breaker per account.
  It reads each account's throttle state (:attr:`Account.factor`), never
  changes it.
- **limit + adaptive throttle**, one per account:
  :class:`~mailqueue.sending.account_limit.AccountLimit` takes a slot of the
  account's own limit (in process or in Redis,
  :mod:`~mailqueue.sending.redis_limits`) and slows the account down on
  throttle replies (:mod:`~mailqueue.sending.throttle`). It sits *inside*
  the router because limits and throttling belong to an account: a failover
  must not spend the failed account's slot.
- **wire sender**: from the ``mailqueue.senders`` entry points
  (:mod:`mailqueue.backends.smtp`, :mod:`mailqueue.backends.outbox`, ...).

With one ``sender`` and no ``worker.rate_store`` there is no router: the
worker's limiter holds ``worker.rate`` (taken before the claim), and an
``AccountLimit`` named ``default`` around the wire sender slows that limiter
down and pauses it on throttle replies
(:class:`~mailqueue.sending.account_limit.WorkerPace`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, cast

from mailqueue.errors import ConfigurationError
from mailqueue.protocols import BackendContext, Sender
from mailqueue.sending.account_limit import AccountLimit, AccountLimiter, LocalAccountLimiter, WorkerPace
from mailqueue.sending.accounts import Account, AccountRouter
from mailqueue.sending.dkim import dkim_step
from mailqueue.sending.domains import domain_step
from mailqueue.sending.limits import RateLimiter, parse_rate
from mailqueue.sending.step import SendingStep, find_link, links
from mailqueue.sending.suppression import suppression_step
from mailqueue.sending.throttle import AIMDParams, CircuitBreaker
from mailqueue.sending.verp import verp_step
from mailqueue.settings import Settings

__all__ = ["STEPS", "SendingChain", "SendingStep", "StepFactory", "build_sender", "find_link", "links"]


#: Makes a step around ``inner`` from the settings.
StepFactory = Callable[[Sender, Settings], Sender]

#: The built-in steps around the router (or the one wire sender), outermost first.
#: DKIM signing is the innermost step that may change bytes and must stay so: a step
#: inside it would change the signed bytes; the domain limits and VERP, inside it,
#: change only the envelope (domains first: its slot is per group, VERP's split per recipient).
#: Suppression goes first (see the module docs).
STEPS: tuple[StepFactory, ...] = (dkim_step, domain_step, verp_step)


class SendingChain(NamedTuple):
    """What :func:`build_sender` gives a worker."""

    #: The outermost Sender of the chain (not opened).
    sender: Sender
    #: The rate limit the worker takes a slot of before claiming a mail.
    limiter: RateLimiter


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
    t = worker.throttle
    params = AIMDParams(t.decrease, t.floor, t.increase, t.increase_after, t.pause, t.max_pause)
    if not settings.senders and not worker.rate_store:
        wire = registry.create_sender(settings.sender.get_secret_value(), context=context)
        limiter = RateLimiter(worker.rate)
        return AccountLimit(wire, "default", WorkerPace("default", limiter, params)), limiter
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
            AccountLimit(
                registry.create_sender(url, context=context),
                name,
                _limiter(settings, name, worker.rate if rate is None else rate, params),
            ),
            CircuitBreaker(name, failures=t.breaker_failures, cooldown=t.breaker_cooldown),
        )
        for name, url, rate in specs
    ]
    return AccountRouter(accounts, settings.sender_strategy), RateLimiter("")


def build_sender(settings: Settings, *, context: BackendContext | None = None) -> SendingChain:
    """The sending chain for ``settings`` (not opened) and the worker's limiter.

    With one ``sender`` and no ``worker.rate_store`` the sender is the wire
    sender in an :class:`~mailqueue.sending.account_limit.AccountLimit`
    (``default``) that throttles the worker's limiter, an in-process one of
    ``worker.rate``.
    Otherwise an :class:`~mailqueue.sending.accounts.AccountRouter` over one
    :class:`~mailqueue.sending.account_limit.AccountLimit` per account does the
    limiting per account (in Redis when ``rate_store`` is set) and the
    worker's own limiter is unlimited. The :data:`STEPS` wrap the result, the
    suppression step (when ``context`` has a Store that keeps a suppression list and
    ``suppression.enabled``) wraps those, and the ``sending_steps`` named in the
    settings wrap that.

    Raises:
        ConfigurationError: a sender URL, a rate, the accounts or a DKIM key cannot be used.
    """
    sender, limiter = _wire(settings, context)
    for step in reversed(STEPS):
        sender = step(sender, settings)
    # the outermost built-in step: it reads (and adds to) the suppression list of the Store
    sender = suppression_step(sender, settings, context)
    for factory in reversed([_plugin_step(name) for name in settings.sending_steps]):
        sender = factory(sender, settings)
    return SendingChain(sender, limiter)


def _plugin_step(name: str) -> StepFactory:
    from mailqueue import registry

    factory = registry.load("mailqueue.sending_steps", name)
    if not callable(factory):
        raise ConfigurationError(f"sending step {name!r} is not callable: {factory!r}")
    return cast(StepFactory, factory)
