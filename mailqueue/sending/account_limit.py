"""One account's rate limit and adaptive throttle: the link of the chain around its wire sender.

:class:`AccountLimit` takes a slot of the account's limit before each send
(in process, :class:`LocalAccountLimiter`, or shared by every worker through
Redis, :class:`~mailqueue.sending.redis_limits.RedisRateLimiter`) and tells
the limiter how the send went: a throttle reply
(:func:`~mailqueue.sending.throttle.classify`: 421, ``4.7.x``, "rate", "try
again in N") slows the account down and pauses it (AIMD), clean sends bring
it back up. Limit and throttle are one link because the throttle *is* a
change of the limit: the AIMD factor scales every window of the account, and
in Redis both live behind one atomic script.

A throttle reply in a transaction to a recipient-domain group
(:data:`~mailqueue.sending.throttle.THROTTLE_OWNER` set,
:mod:`~mailqueue.sending.domains`) is the group's: it slows that group, not
the account.

What the link does not do: decide that the mail should go to another account
(that is :class:`~mailqueue.sending.accounts.AccountRouter`, outside it), or
change the outcome: whatever ``inner`` returns or raises passes through.
"""

from __future__ import annotations

from typing import Protocol

from mailqueue.errors import DeliveryError, UnknownDeliveryError
from mailqueue.protocols import OutgoingMessage, Sender, SendResult
from mailqueue.sending.limits import RateLimiter, RateWindow, scaled_limit
from mailqueue.sending.step import SendingStep
from mailqueue.sending.throttle import (
    ACCOUNT_PAUSED_SECONDS,
    ACCOUNT_RATE,
    ACCOUNT_THROTTLED,
    THROTTLE_OWNER,
    AIMDParams,
    AIMDState,
    ErrorClass,
    classify,
    classify_reply,
    retry_after,
)

__all__ = ["AccountLimit", "AccountLimiter", "LocalAccountLimiter", "WorkerPace", "throttle_reply"]


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
    """:class:`AccountLimiter` within this process (``worker.rate_store`` empty).

    Args:
        name: the account (metric label).
        windows: its limits.
        params: how it slows down and recovers.
        limiter: the :class:`~mailqueue.sending.limits.RateLimiter` to scale and pause
            (default: one of its own, of ``windows``).
    """

    def __init__(
        self,
        name: str,
        windows: tuple[RateWindow, ...],
        params: AIMDParams | None = None,
        *,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.name = name
        self._limiter = limiter or RateLimiter(windows)
        self.windows = self._limiter.windows
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
        """Wait out a pause, then take a slot of every window; return the seconds waited."""
        return await self._limiter.acquire()

    async def take(self) -> str:
        """:meth:`acquire`; the in-process log counts a send when it starts."""
        await self.acquire()
        return ""

    async def done(self, token: str) -> None:
        """Nothing to do in process."""

    async def throttled(self, pause: float | None) -> None:
        """Decrease the factor and pause."""
        self._aimd.throttled(pause)
        left = self._aimd.pause_left()
        self._limiter.pause(left)
        ACCOUNT_PAUSED_SECONDS.labels(self.name).set(left)
        self._publish()

    async def succeeded(self) -> None:
        """Count a clean send towards recovery."""
        self._aimd.succeeded()
        ACCOUNT_PAUSED_SECONDS.labels(self.name).set(0)
        self._publish()

    async def close(self) -> None:
        """Nothing to release."""


class WorkerPace(LocalAccountLimiter):
    """:class:`AccountLimiter` of the one ``sender`` (no ``senders``, no ``rate_store``).

    The slot is the worker's own :class:`~mailqueue.sending.limits.RateLimiter`
    (``worker.rate``), taken before the mail is claimed, so :meth:`take` takes
    nothing more; throttle replies lower that limiter's factor and pause it,
    clean sends bring it back up (AIMD), as for an account.
    """

    def __init__(self, name: str, limiter: RateLimiter, params: AIMDParams | None = None) -> None:
        super().__init__(name, limiter.windows, params, limiter=limiter)

    @property
    def limiter(self) -> RateLimiter:
        """The worker's limiter."""
        return self._limiter

    async def take(self) -> str:
        """Nothing: the worker took its slot before the claim."""
        return ""


def throttle_reply(result: SendResult) -> str | None:
    """The first per-recipient reply of ``result`` that asks the account to slow down, or ``None``."""
    for reply in result.replies.values():
        if reply.code is not None and reply.code < 400:
            continue  # accepted: never a throttle reply (and the common case, kept cheap)
        if classify_reply(reply.code, reply.reply) is ErrorClass.THROTTLE:
            return reply.reply
    return None


class AccountLimit(SendingStep):
    """The account ``name``'s limit and throttle around its wire sender ``inner``.

    Args:
        inner: the account's wire sender.
        name: the account name (metric label; the Redis limiter's key).
        limiter: its rate limit and AIMD state.
    """

    def __init__(self, inner: Sender, name: str, limiter: AccountLimiter) -> None:
        super().__init__(inner)
        self.name = name
        self.limiter = limiter

    @property
    def factor(self) -> float:
        """The fraction of the configured rate the account may use now (1.0 = all of it)."""
        return self.limiter.factor

    async def close(self) -> None:
        """Close ``inner`` and the limiter."""
        try:
            await self.inner.close()
        finally:
            await self.limiter.close()

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Take a slot, send through ``inner``, tell the limiter how it went.

        Raises:
            DeliveryError: whatever ``inner`` raises, unchanged.
        """
        token = await self.limiter.take()
        try:
            result = await self.inner.send(message)
        except UnknownDeliveryError:
            # lost after the final dot: says nothing about the account's pace
            await self.limiter.done(token)
            raise
        except DeliveryError as exc:
            await self.limiter.done(token)
            if classify(exc) is ErrorClass.THROTTLE and THROTTLE_OWNER.get() is None:
                await self._throttled(exc.reply)
            raise
        except BaseException:
            await self.limiter.done(token)
            raise
        await self.limiter.done(token)
        reply = throttle_reply(result)
        if reply is None:
            await self.limiter.succeeded()
        elif THROTTLE_OWNER.get() is None:
            await self._throttled(reply)
        return result

    async def _throttled(self, reply: str) -> None:
        ACCOUNT_THROTTLED.labels(self.name).inc()
        await self.limiter.throttled(retry_after(reply))
