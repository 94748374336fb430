"""Limits per recipient domain: one provider's pace does not hold back mail to the others.

Receiving providers throttle each sender at their end (Gmail's ``421 4.7.28``,
Outlook's ``4.7.650``), so the setting ``domain_limits`` gives a rate per
*group* of recipient domains (a provider), e.g.::

    domain_limits:
      google: {domains: [gmail.com, googlemail.com], rate: "20/s;3000/h"}
      default: {rate: "50/s"}

A domain also covers its subdomains; ``default`` holds every domain no group
lists (without it, those recipients are not limited by domain).

:class:`DomainLimitStep` groups a message's recipients by group and sends one
transaction per group (one only when all are in one group), merging the
per-recipient results as :mod:`~mailqueue.sending.verp` does. Each transaction
takes a slot of its group's limit (one slot per transaction, whatever its
number of recipients), in process or shared by every worker through Redis
(``worker.rate_store``, keys ``mq:rl:domain:<group>:*``).

**No head-of-line blocking.** A group whose slot is not free now does not make
the worker wait: its slot is *reserved* (the earliest one every window allows,
after the reservations made before) and its recipients come back as deferred,
``451 4.7.0 domain limit <group>: next slot in N s`` with
:attr:`~mailqueue.protocols.RecipientReply.retry_after` set. The worker keeps
them pending and hands the mail back to the queue for that many seconds
without counting a failed attempt; its slot (``worker.concurrency``) is free
for mail to other domains meanwhile. When the mail comes back its reserved
slot has come: the sends made meanwhile (each counted from when it ended, as
the server counts) are checked again, and it is sent, or reserved again at
the time they allow. Only a wait of at most :data:`INLINE_WAIT` is slept
through in place.

**Adaptive throttle per group.** A throttle reply (421, ``4.7.x``, "rate",
:func:`~mailqueue.sending.throttle.classify`) in a group's transaction slows
that group down and pauses it (AIMD, ``worker.throttle``), not the account and
not the other groups: :data:`~mailqueue.sending.throttle.THROTTLE_OWNER` tells
the account's limit and the router that the reply is the group's.

Metrics: ``mailqueue_domain_rate_per_second{group}`` (the rate allowed now,
configured rate x AIMD factor), ``mailqueue_domain_throttled_total{group}``,
``mailqueue_domain_deferred_total{group}``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Protocol

from prometheus_client import Counter, Gauge

from mailqueue.errors import (
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnknownDeliveryError,
)
from mailqueue.protocols import OutgoingMessage, RecipientReply, Sender, SendResult
from mailqueue.sending.account_limit import throttle_reply
from mailqueue.sending.limits import RateWindow, parse_rate, scaled_limit
from mailqueue.sending.step import SendingStep, failure_reply
from mailqueue.sending.throttle import (
    THROTTLE_OWNER,
    AIMDParams,
    AIMDState,
    ErrorClass,
    classify,
    retry_after,
)
from mailqueue.settings import Settings

__all__ = [
    "DOMAIN_DEFERRED",
    "DOMAIN_RATE",
    "DOMAIN_THROTTLED",
    "INLINE_WAIT",
    "DomainGroup",
    "DomainLimitStep",
    "DomainLimiter",
    "LocalDomainLimiter",
    "domain_step",
]

DOMAIN_RATE = Gauge(
    "mailqueue_domain_rate_per_second",
    "Sends per second a recipient-domain group is allowed right now (configured rate x AIMD factor)",
    ["group"],
)
DOMAIN_THROTTLED = Counter(
    "mailqueue_domain_throttled_total",
    "Throttle replies (421, 4.7.x, rate...) in transactions to a recipient-domain group",
    ["group"],
)
DOMAIN_DEFERRED = Counter(
    "mailqueue_domain_deferred_total",
    "Transactions handed back to the queue until their recipient-domain group has a slot",
    ["group"],
)

#: Longest wait for a group's slot slept through in place (seconds); a longer one defers.
#: Short, so that at most a few worker slots ever wait on one group.
INLINE_WAIT = 0.1


class DomainLimiter(Protocol):
    """A recipient-domain group's rate limit with adaptive throttling and reservations."""

    @property
    def factor(self) -> float:
        """The current fraction of the configured rate."""

    async def reserve(self, member: str, within: float) -> tuple[float, str]:
        """The seconds until ``member``'s (a mail id's) slot, and a token for :meth:`done`
        when the slot is the caller's; never waits.

        A slot at most ``within`` seconds away is the caller's: it is counted, the caller
        sleeps until it, sends, then calls :meth:`done`. A later one is *reserved* for
        ``member`` (token ``""``): the earliest time every window allows after the
        reservations made before, so that mails told to come back are spread over the coming
        slots. When ``member`` comes back the sends made since are checked again (a send
        counts from when it ended, and may have ended later than its slot): its slot is then
        at most ``within`` away, or a new one is reserved.
        """

    async def done(self, token: str) -> None:
        """The send of the slot ``token`` has ended: count it from now, as the server does."""

    async def throttled(self, pause: float | None) -> None:
        """A throttle reply: slow down and pause (``None``: the default pause)."""

    async def succeeded(self) -> None:
        """A clean send."""

    async def close(self) -> None:
        """Release connections."""


class LocalDomainLimiter:
    """:class:`DomainLimiter` within this process (``worker.rate_store`` empty).

    Each window has two sorted logs of times: the sends (counted from when they ended,
    :meth:`done`) and the sends with the reservations (future times), where new mails are
    placed.
    """

    #: Reservations kept this long after their time for a mail that never came back.
    _FORGET_AFTER = 3600.0

    def __init__(
        self,
        name: str,
        windows: tuple[RateWindow, ...],
        params: AIMDParams | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.name = name
        self.windows = windows
        self._clock = clock or time.monotonic
        self._aimd = AIMDState(params or AIMDParams(), clock=self._clock)
        self._logs: list[list[float]] = [[] for _ in windows]  # sends and reservations
        self._sent: list[list[float]] = [[] for _ in windows]  # sends only
        self._reserved: dict[str, float] = {}
        self._sending: dict[str, float] = {}
        self._tokens = 0

    @property
    def factor(self) -> float:
        """The current fraction of the configured rate."""
        return self._aimd.factor

    async def reserve(self, member: str, within: float) -> tuple[float, str]:
        """See :meth:`DomainLimiter.reserve`."""
        now = self._clock()
        for window, log, sent in zip(self.windows, self._logs, self._sent, strict=True):
            del log[: bisect.bisect_right(log, now - window.period)]
            del sent[: bisect.bisect_right(sent, now - window.period)]
        at = self._reserved.pop(member, None)
        if at is not None:
            if at - now > within:
                self._reserved[member] = at
                return at - now, ""
            for log in self._logs:
                with contextlib.suppress(ValueError):  # gone if the mail came back very late
                    log.remove(at)
            wait = self._wait(self._sent, now)  # the sends alone, as they ended
        else:
            wait = self._wait(self._logs, now)  # after the reservations too
        if wait <= within:
            return wait, self._count(now + wait)
        if len(self._reserved) > 10_000:
            self._reserved = {m: t for m, t in self._reserved.items() if t > now - self._FORGET_AFTER}
        for log in self._logs:
            bisect.insort(log, now + wait)
        self._reserved[member] = now + wait
        return wait, ""

    def _wait(self, logs: list[list[float]], now: float) -> float:
        """Seconds until one more entry fits every window of ``logs`` (and the pause is over)."""
        wait = self._aimd.pause_left()
        for window, log in zip(self.windows, logs, strict=True):
            limit = scaled_limit(window, self._aimd.factor)
            if len(log) >= limit:
                wait = max(wait, log[-limit] + window.period - now)
        return wait

    def _count(self, at: float) -> str:
        for log in (*self._logs, *self._sent):
            bisect.insort(log, at)
        self._tokens += 1
        token = str(self._tokens)
        self._sending[token] = at
        return token

    async def done(self, token: str) -> None:
        """The send of ``token`` has ended: count it from now (when the server got it)."""
        at = self._sending.pop(token, None)
        if at is None:
            return
        now = self._clock()
        for log in (*self._logs, *self._sent):
            with contextlib.suppress(ValueError):
                log.remove(at)
            bisect.insort(log, max(at, now))

    async def throttled(self, pause: float | None) -> None:
        """Decrease the factor and pause."""
        self._aimd.throttled(pause)

    async def succeeded(self) -> None:
        """Count a clean send towards recovery."""
        self._aimd.succeeded()

    async def close(self) -> None:
        """Nothing to release."""


class DomainGroup:
    """One group of ``domain_limits``: its name, configured windows and limiter."""

    def __init__(self, name: str, windows: tuple[RateWindow, ...], limiter: DomainLimiter) -> None:
        self.name = name
        self.windows = windows
        self.limiter = limiter
        self.publish()

    @property
    def factor(self) -> float:
        """The fraction of the configured rate the group may use now (1.0 = all of it)."""
        return self.limiter.factor

    @property
    def rate(self) -> float | None:
        """Sends per second allowed now in the shortest window (``None``: unlimited)."""
        if not self.windows:
            return None
        shortest = min(self.windows, key=lambda w: w.period)
        return scaled_limit(shortest, self.limiter.factor) / shortest.period

    def publish(self) -> None:
        """Set ``mailqueue_domain_rate_per_second`` for the group."""
        rate = self.rate
        if rate is not None:
            DOMAIN_RATE.labels(self.name).set(rate)


class DomainLimitStep(SendingStep):
    """Sends a message in one transaction per recipient-domain group, each within its group's limit.

    Args:
        inner: the next link.
        groups: the groups by name.
        domains: which group each listed domain belongs to (lower case, ASCII).
        default: the group of the domains no group lists (``None``: those are not limited).
    """

    def __init__(
        self,
        inner: Sender,
        groups: Mapping[str, DomainGroup],
        domains: Mapping[str, str],
        default: str | None = None,
    ) -> None:
        super().__init__(inner)
        self.groups = dict(groups)
        self.domains = dict(domains)
        self.default = default

    def group_of(self, address: str) -> str | None:
        """The name of the group ``address``'s domain (or a parent domain) is listed in, else
        the default group's, else ``None``."""
        domain = address.rpartition("@")[2].lower().rstrip(".")
        while domain:
            if (name := self.domains.get(domain)) is not None:
                return name
            domain = domain.partition(".")[2]
        return self.default

    async def close(self) -> None:
        """Close ``inner`` and the groups' limiters."""
        try:
            await self.inner.close()
        finally:
            for group in self.groups.values():
                await group.limiter.close()

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Send each group's recipients in a transaction of their own (once a slot is theirs).

        A delivery error of one transaction becomes its recipients' reply (its code, or
        451 / 554), so the other groups' recipients are not held back; it is raised as is
        only when every transaction failed (nobody got the mail), and an
        :class:`~mailqueue.errors.UnknownDeliveryError` always is.

        Raises:
            DeliveryError: as above; with one group, whatever that transaction raises.
        """
        parts: dict[str | None, list[str]] = {}
        for address in message.recipients:
            parts.setdefault(self.group_of(address), []).append(address)
        if len(parts) == 1:
            ((name, _),) = parts.items()
            return await self._send_part(name, message)
        replies: dict[str, RecipientReply] = {}
        errors: list[DeliveryError] = []
        for name, addresses in parts.items():
            try:
                result = await self._send_part(name, replace(message, recipients=addresses))
            except (TransientDeliveryError, PermanentDeliveryError) as exc:
                errors.append(exc)
                replies.update(dict.fromkeys(addresses, failure_reply(exc)))
                continue
            replies.update(result.replies)
        if len(errors) == len(parts):
            raise errors[0]
        return SendResult(replies)

    async def _send_part(self, name: str | None, message: OutgoingMessage) -> SendResult:
        if name is None:
            return await self.inner.send(message)
        group = self.groups[name]
        wait, token = await group.limiter.reserve(message.mail_id, INLINE_WAIT)
        if not token:
            DOMAIN_DEFERRED.labels(name).inc()
            deferred = RecipientReply(
                451, f"4.7.0 domain limit {name}: next slot in {wait:.1f} s", retry_after=wait
            )
            return SendResult(dict.fromkeys(message.recipients, deferred))
        if wait > 0:
            await asyncio.sleep(wait)
        owner = THROTTLE_OWNER.set(name)
        try:
            result = await self.inner.send(message)
        except UnknownDeliveryError:
            raise
        except DeliveryError as exc:
            if classify(exc) is ErrorClass.THROTTLE:
                await self._throttled(group, exc.reply)
            raise
        finally:
            THROTTLE_OWNER.reset(owner)
            await group.limiter.done(token)
        reply = throttle_reply(result)
        if reply is not None:
            await self._throttled(group, reply)
        else:
            await group.limiter.succeeded()
            group.publish()
        return result

    async def _throttled(self, group: DomainGroup, reply: str) -> None:
        DOMAIN_THROTTLED.labels(group.name).inc()
        await group.limiter.throttled(retry_after(reply))
        group.publish()


def domain_step(inner: Sender, settings: Settings) -> Sender:
    """The :class:`DomainLimitStep` around ``inner`` for ``domain_limits``; ``inner`` itself
    when none is configured.

    The groups' limiters live in Redis (``mq:rl:domain:<group>``) when
    ``worker.rate_store`` is set, in this process otherwise.

    Raises:
        ConfigurationError: a rate cannot be parsed, or ``rate_store`` is not a Redis URL.
    """
    if not settings.domain_limits:
        return inner
    t = settings.worker.throttle
    params = AIMDParams(t.decrease, t.floor, t.increase, t.increase_after, t.pause, t.max_pause)
    store = settings.worker.rate_store
    groups: dict[str, DomainGroup] = {}
    domains: dict[str, str] = {}
    for name, config in settings.domain_limits.items():
        windows = parse_rate(config.rate)
        limiter: DomainLimiter
        if store:
            from mailqueue.sending.redis_limits import RedisRateLimiter

            limiter = RedisRateLimiter(store, f"domain:{name}", windows, params, account_metrics=False)
        else:
            limiter = LocalDomainLimiter(name, windows, params)
        groups[name] = DomainGroup(name, windows, limiter)
        domains.update(dict.fromkeys(config.domains, name))
    return DomainLimitStep(inner, groups, domains, "default" if "default" in groups else None)
