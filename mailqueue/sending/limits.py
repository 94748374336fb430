"""Sending limits: several rate windows at once, e.g. ``20/s;1000/h;500/d``.

Mail providers count sends over rolling windows (Gmail: 500 in any 24 hours),
so each window is a sliding log of the last ``N`` send times: a send is
allowed when fewer than ``N`` happened in the last ``period``. Unlike a token
bucket this never lets ``2N`` through across a window boundary. Memory is
``N`` floats per window.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Histogram

from mailqueue.errors import ConfigurationError

__all__ = ["RATE_LIMIT_WAIT", "RateLimiter", "RateWindow", "parse_rate", "scaled_limit"]

RATE_LIMIT_WAIT = Histogram(
    "mailqueue_rate_limit_wait_seconds",
    "Seconds a send waited for its rate-limit slot (and throttle pause)",
    buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
)

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_WINDOW_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class RateWindow:
    """At most ``limit`` sends in any ``period`` seconds."""

    limit: int
    period: float

    def __str__(self) -> str:
        return f"{self.limit}/{self.period:g}s"


def parse_rate(spec: str) -> tuple[RateWindow, ...]:
    """Parse ``"20/s;1000/h;500/d"`` (also ``"100/10s"``, ``"5/min"``); empty means unlimited.

    Raises:
        ConfigurationError: naming the part that is not ``N/[k]unit``.
    """
    windows = []
    for part in filter(None, (p.strip() for p in spec.replace(",", ";").split(";"))):
        match = _WINDOW_RE.match(part.lower())
        if not match or match.group(3) not in _UNITS:
            raise ConfigurationError(
                f"rate {part!r} is not of the form N/unit (units: s, m, h, d; e.g. '20/s;1000/h')"
            )
        limit = int(match.group(1))
        period = float(match.group(2) or 1) * _UNITS[match.group(3)]
        if limit < 1 or period <= 0:
            raise ConfigurationError(f"rate {part!r} must allow at least 1 send per positive period")
        windows.append(RateWindow(limit, period))
    return tuple(windows)


def scaled_limit(window: RateWindow, factor: float) -> int:
    """The window's limit times the adaptive ``factor`` (at least 1)."""
    return max(1, int(window.limit * factor))


class RateLimiter:
    """Wait until a send is allowed by every window, then count it.

    Safe to share between tasks of one event loop (a lock serialises the
    bookkeeping, sleeps happen outside it only for the waiter at the head).
    """

    def __init__(
        self,
        windows: tuple[RateWindow, ...] | str,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.windows = parse_rate(windows) if isinstance(windows, str) else windows
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._logs = [deque[float](maxlen=w.limit) for w in self.windows]
        self._lock = asyncio.Lock()
        self.waited = 0.0
        #: Adaptive factor (1.0: the configured rate), lowered by throttle replies.
        self.factor = 1.0
        self._paused_until = 0.0

    @property
    def unlimited(self) -> bool:
        """True when no window is configured."""
        return not self.windows

    def pause(self, seconds: float) -> None:
        """Allow no send for ``seconds`` from now (a throttle reply asked for it)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def delay(self) -> float:
        """Seconds until the next send would be allowed (0 if now)."""
        now = self._clock()
        wait = max(0.0, self._paused_until - now)
        for window, log in zip(self.windows, self._logs, strict=True):
            limit = scaled_limit(window, self.factor)
            if len(log) >= limit:
                wait = max(wait, log[-limit] + window.period - now)
        return wait

    async def acquire(self) -> float:
        """Wait for a slot in every window (and any pause) and take it; return the seconds waited."""
        if not self.windows and self._paused_until <= self._clock():
            return 0.0
        waited = 0.0
        async with self._lock:
            while (wait := self.delay()) > 0:
                await self._sleep(wait)
                waited += wait
            now = self._clock()
            for log in self._logs:
                log.append(now)
        self.waited += waited
        RATE_LIMIT_WAIT.observe(waited)
        return waited
