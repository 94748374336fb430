"""The offset bookkeeping of a Kafka queue's consumers: what is outstanding in
each assigned partition (so what may be committed), and which records were
handed out lately (so a record handed out again comes marked redelivered).

Imports no driver.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Final

from mailqueue.backends.kafka.records import Record

__all__ = ["HandedOut", "Partition"]

#: How many handed-out records a queue remembers (to mark one handed out again as redelivered).
_HANDED_MEMORY: Final = 100_000


class HandedOut:
    """The records a queue's consumers handed out lately (the newest ones), shared by them
    so that a record handed out again, by any of them, comes marked redelivered."""

    def __init__(self, size: int = _HANDED_MEMORY) -> None:
        self._size = size
        self._marks: OrderedDict[tuple[str, int, int], None] = OrderedDict()

    def seen(self, record: Record) -> bool:
        """Remember ``record`` as handed out; True if it was before (by any consumer of this queue)."""
        mark = (record.tp.topic, record.tp.partition, record.offset)
        if mark in self._marks:
            self._marks.move_to_end(mark)
            return True
        self._marks[mark] = None
        if len(self._marks) > self._size:
            self._marks.popitem(last=False)
        return False

    def forget(self, tp: Any) -> None:
        """Forget the records of partition ``tp`` (its offsets started over)."""
        for mark in [m for m in self._marks if (m[0], m[1]) == (tp.topic, tp.partition)]:
            del self._marks[mark]


class Partition:
    """Bookkeeping of one assigned partition, fresh at every assignment."""

    __slots__ = ("committed", "fetched_to", "outstanding")

    def __init__(self) -> None:
        # Offsets fetched and not finished, in fetch (= offset) order.
        self.outstanding: dict[int, None] = {}
        self.fetched_to: int | None = None
        self.committed: int | None = None

    def target(self) -> int | None:
        """The offset to commit: the lowest unfinished one, or past everything fetched."""
        for offset in self.outstanding:
            return offset
        return self.fetched_to
