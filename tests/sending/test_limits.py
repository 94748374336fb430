"""Rate windows: parsing and the sliding-log limiter, on a fake clock."""

from __future__ import annotations

import pytest

from mailqueue.errors import ConfigurationError
from mailqueue.sending.limits import RateLimiter, RateWindow, parse_rate


def test_parse_several_windows() -> None:
    assert parse_rate("20/s;1000/h;500/d") == (
        RateWindow(20, 1.0),
        RateWindow(1000, 3600.0),
        RateWindow(500, 86400.0),
    )
    assert parse_rate("100/10s, 5/min") == (RateWindow(100, 10.0), RateWindow(5, 60.0))
    assert parse_rate("") == ()


@pytest.mark.parametrize("bad", ["20", "x/s", "20/fortnight", "0/s", "20/0s"])
def test_parse_refuses(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_rate(bad)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_sliding_window_never_exceeds_any_window() -> None:
    clock = FakeClock()

    async def fake_sleep(seconds: float) -> None:
        clock.now += seconds

    limiter = RateLimiter("3/s;5/10s", clock=clock, sleep=fake_sleep)
    times = []
    for _ in range(12):
        await limiter.acquire()
        times.append(clock.now)
    # every 1 s window holds at most 3 sends, every 10 s window at most 5
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u < t + 1.0) <= 3
        assert sum(1 for u in times[i:] if u < t + 10.0) <= 5
    # and it is not slower than the limits force: sends 6..10 start 10 s after 1..5
    assert times[5] == pytest.approx(times[0] + 10.0)
    assert limiter.waited > 0


async def test_unlimited_never_waits() -> None:
    limiter = RateLimiter("")
    assert limiter.unlimited
    for _ in range(1000):
        assert await limiter.acquire() == 0.0
