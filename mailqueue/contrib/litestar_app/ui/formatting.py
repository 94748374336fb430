"""Jinja2 filters of the dashboard: times, ages, sizes, numbers, links."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from jinja2 import Environment

__all__ = ["install"]


def when(value: datetime | None) -> str:
    """``2026-11-29 06:41:38`` (UTC), or a dash."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso(value: datetime | None) -> str:
    """ISO 8601 in UTC, for ``<time datetime=...>``."""
    return "" if value is None else value.astimezone(UTC).isoformat(timespec="seconds")


def iso_input(value: datetime | None) -> str:
    """The value of a ``datetime-local`` input (UTC, to the second), or empty."""
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def duration(seconds: float | None) -> str:
    """``45 s``, ``12 min``, ``3 h 5 min``, ``2 d 4 h``."""
    if seconds is None:
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def size(value: int) -> str:
    """``512 B``, ``12.3 KiB``, ``4.0 MiB``."""
    if value < 1024:
        return f"{value} B"
    amount = float(value)
    for unit in ("KiB", "MiB", "GiB"):
        amount /= 1024
        if amount < 1024 or unit == "GiB":
            return f"{amount:.1f} {unit}"
    return f"{value} B"  # pragma: no cover - the loop always returns


def number(value: int) -> str:
    """``12,345``."""
    return f"{value:,}"


def query(items: list[tuple[str, str]]) -> str:
    """URL query string of ``items``."""
    return urlencode(items)


def install(environment: Environment) -> None:
    """Register the filters on ``environment``."""
    environment.filters.update(
        when=when, iso=iso, iso_input=iso_input, duration=duration, size=size, number=number, query=query
    )
