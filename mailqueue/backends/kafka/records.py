"""What the Kafka queue puts on the wire besides the payload, and a record as fetched.

Header names on retry and dead records (``mailqueue-due``: absolute due time
in epoch milliseconds; ``mailqueue-redelivered: 1``; ``mailqueue-reason``;
``mailqueue-origin``: ``topic:partition:offset`` of a dead record's original;
``mailqueue-published``: epoch nanoseconds of every publish).

Imports no driver.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DUE_HEADER",
    "ORIGIN_HEADER",
    "PUBLISHED_HEADER",
    "REASON_HEADER",
    "REDELIVERED_HEADER",
    "Record",
    "header",
    "now_ms",
]

DUE_HEADER: Final = "mailqueue-due"
REDELIVERED_HEADER: Final = "mailqueue-redelivered"
REASON_HEADER: Final = "mailqueue-reason"
ORIGIN_HEADER: Final = "mailqueue-origin"
PUBLISHED_HEADER: Final = "mailqueue-published"


def now_ms() -> int:
    """The wall clock in epoch milliseconds (due times are written in it)."""
    return int(time.time() * 1000)


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> bytes | None:
    """The value of the first header ``name``, if any."""
    for key, value in headers or ():
        if key == name:
            return value
    return None


@dataclass(frozen=True, slots=True)
class Record:
    """A fetched record, as much of it as the queue keeps."""

    tp: Any  # TopicPartition
    offset: int
    key: str
    body: bytes
    marked: bool  # carries the redelivered header
    since: int  # ready since (publish or due time), epoch nanoseconds: oldest is handed out first
