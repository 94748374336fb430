"""What mailqueue puts in an AMQP message's headers, and reading them back.

``x-mailqueue-key`` (the key), ``x-mailqueue-due`` (absolute due time, epoch
milliseconds), ``x-mailqueue-redelivered`` (a copy made by ``retry``),
``x-mailqueue-dead-reason`` and ``x-mailqueue-dead-at`` (on dead letters).

Imports no driver.
"""

from __future__ import annotations

import time
from typing import Final

__all__ = [
    "DEAD_AT_HEADER",
    "DUE_HEADER",
    "KEY_HEADER",
    "REASON_HEADER",
    "REDELIVERED_HEADER",
    "now_ms",
    "text",
]

KEY_HEADER: Final = "x-mailqueue-key"
DUE_HEADER: Final = "x-mailqueue-due"
REDELIVERED_HEADER: Final = "x-mailqueue-redelivered"
REASON_HEADER: Final = "x-mailqueue-dead-reason"
DEAD_AT_HEADER: Final = "x-mailqueue-dead-at"


def now_ms() -> int:
    """The wall clock in epoch milliseconds (due times are written in it)."""
    return int(time.time() * 1000)


def text(value: object) -> str | None:
    """A header value as text (bytes decoded), or ``None`` if it is neither text nor bytes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    return None
