"""The overview's activity chart, drawn on the server as inline SVG.

:func:`build_chart` turns the Store's activity buckets into coordinates;
the template writes them into an ``<svg>``. Only numbers and fixed labels
reach the SVG, never text from a mail.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailqueue.records import ActivityBucket

__all__ = ["Chart", "Column", "Series", "build_chart", "window_start"]

WIDTH = 720
HEIGHT = 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 12, 14, 40


@dataclass(frozen=True, slots=True)
class Series:
    """One line of the chart."""

    key: str
    label: str
    points: str
    total: int


@dataclass(frozen=True, slots=True)
class Column:
    """One bucket: its place (for the hover title) and its numbers."""

    x: float
    width: float
    start: datetime
    accepted: int
    sent: int
    failed: int


@dataclass(frozen=True, slots=True)
class Chart:
    """Everything the template needs to draw the chart and its table."""

    width: int
    height: int
    left: int
    top: int
    right: float
    bottom: float
    series: tuple[Series, ...]
    y_ticks: tuple[tuple[float, int], ...]
    x_ticks: tuple[tuple[float, str], ...]
    columns: tuple[Column, ...]
    empty: bool


def window_start(now: datetime, bucket: timedelta, count: int) -> datetime:
    """Start of the first of ``count`` buckets ending with the one that holds ``now``
    (buckets start at whole multiples of ``bucket`` since the epoch)."""
    size = bucket.total_seconds()
    current = math.floor(now.timestamp() / size) * size
    return datetime.fromtimestamp(current - (count - 1) * size, tz=now.tzinfo)


def _nice(value: int) -> int:
    if value <= 4:
        return 4
    exponent: int = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 3, 5, 10):
        if step * exponent >= value:
            return math.ceil(step * exponent)
    return value  # pragma: no cover - the loop always returns


def build_chart(
    buckets: Sequence[ActivityBucket], *, since: datetime, bucket: timedelta, count: int, label: str
) -> Chart:
    """Lay out ``count`` buckets of ``bucket`` from ``since``; buckets the Store did not return are 0.

    Args:
        label: ``strftime`` format of the time labels on the x axis.
    """
    size = bucket.total_seconds()
    accepted, sent, failed = [0] * count, [0] * count, [0] * count
    for item in buckets:
        index = math.floor((item.start - since).total_seconds() / size + 1e-9)
        if 0 <= index < count:
            accepted[index] += item.accepted
            sent[index] += item.sent
            failed[index] += item.failed
    peak = max([*accepted, *sent, *failed, 0])
    top_value = _nice(peak)
    right, bottom = WIDTH - _RIGHT, HEIGHT - _BOTTOM
    step = (right - _LEFT) / count

    def y(value: int) -> float:
        return round(bottom - value / top_value * (bottom - _TOP), 1)

    def points(values: list[int]) -> str:
        return " ".join(f"{round(_LEFT + (i + 0.5) * step, 1)},{y(v)}" for i, v in enumerate(values))

    series = (
        Series("accepted", "accepted", points(accepted), sum(accepted)),
        Series("sent", "sent", points(sent), sum(sent)),
        Series("failed", "failed, dead or bounced", points(failed), sum(failed)),
    )
    y_ticks = tuple((y(v), v) for v in (0, top_value // 2, top_value))
    every = max(1, count // 4)
    x_ticks = tuple(
        (round(_LEFT + i * step, 1), (since + i * bucket).strftime(label)) for i in range(0, count, every)
    )
    columns = tuple(
        Column(
            x=round(_LEFT + i * step, 1),
            width=round(step, 2),
            start=since + i * bucket,
            accepted=accepted[i],
            sent=sent[i],
            failed=failed[i],
        )
        for i in range(count)
    )
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=_LEFT,
        top=_TOP,
        right=right,
        bottom=bottom,
        series=series,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        columns=columns,
        empty=peak == 0,
    )
