"""What the queue looks like: the report of ``mailqueue status`` and the dashboard's overview.

:func:`collect_status` reads a :class:`StatusReport` (counts by status, the
oldest waiting mail, the queue depth, recent failures grouped by reason) and
:func:`render_status` prints it; the dashboard's overview reads the same
figures with :func:`oldest_waiting` and :func:`queue_depth` (and
:meth:`MailQueue.count_by_status <mailqueue.client.MailQueue.count_by_status>`). Everything here only reads.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mailqueue.errors import BackendError
from mailqueue.protocols import Queue, Store
from mailqueue.records import (
    FINISHED,
    IN_FLIGHT,
    MailRecord,
    RecordQuery,
    RecordSource,
    Status,
    iter_records,
    utcnow,
)

__all__ = [
    "DONE",
    "FAILURES",
    "WAITING",
    "FailureGroup",
    "StatusReport",
    "collect_status",
    "failure_reason",
    "oldest_waiting",
    "queue_depth",
    "render_status",
]

#: Waiting for a worker (or being sent): counted however old they are, in this order.
WAITING = tuple(s for s in Status if s in IN_FLIGHT)
#: Done with: counted only if accepted within ``--since``, in this order.
DONE = tuple(s for s in Status if s in FINISHED)
#: The finished states grouped by reason in the report.
FAILURES = FINISHED - {Status.SENT}
_PAGE = 1000
_TOP = 10
_REASON_CHARS = 80

# Parts of an SMTP reply that differ from mail to mail: addresses and long ids.
_ADDRESS = re.compile(r"<?[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+>?")
_LONG_ID = re.compile(r"\b[0-9A-Fa-f]{8,}\b")


@dataclass(frozen=True, slots=True)
class FailureGroup:
    """Finished-but-not-sent mails that share an SMTP code and a normalized error."""

    code: int | None
    reason: str
    count: int
    last_at: datetime
    example_id: str


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What ``mailqueue status`` prints.

    ``counts`` has every status: the waiting ones over all mails, the
    finished ones over mails accepted at or after ``since``. ``oldest`` is
    the oldest ``queued`` or ``retrying`` mail. ``depth`` is ``None`` when
    the queue cannot tell or did not answer (then ``queue_error`` says why).
    """

    generated_at: datetime
    since: datetime
    counts: dict[Status, int]
    oldest: MailRecord | None = None
    depth: int | None = None
    queue_error: str | None = None
    failures: list[FailureGroup] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the queue answered too (the store did, or there would be no report)."""
        return self.queue_error is None

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict with stable keys."""
        oldest = self.oldest
        return {
            "generated_at": self.generated_at.isoformat(),
            "since": self.since.isoformat(),
            "counts": {status.value: self.counts.get(status, 0) for status in Status},
            "oldest_waiting": None
            if oldest is None
            else {
                "id": oldest.id,
                "status": oldest.status.value,
                "created_at": oldest.created_at.isoformat(),
                "age_seconds": round((self.generated_at - oldest.created_at).total_seconds(), 3),
                "attempts": oldest.attempts,
            },
            "queue": {"depth": self.depth, "error": self.queue_error},
            "failures": [
                {
                    "code": g.code,
                    "reason": g.reason,
                    "count": g.count,
                    "last_at": g.last_at.isoformat(),
                    "example_id": g.example_id,
                }
                for g in self.failures
            ],
            "ok": self.ok,
        }


def failure_reason(record: MailRecord) -> str:
    """``last_error`` made comparable across mails: whitespace collapsed, a leading
    copy of the SMTP code dropped, addresses and long ids replaced, cut to 80 characters."""
    text = " ".join(record.last_error.split())
    if record.last_code is not None:
        text = text.removeprefix(f"{record.last_code} ")
    text = _LONG_ID.sub("<id>", _ADDRESS.sub("<address>", text))
    return text[:_REASON_CHARS] or "(no error recorded)"


async def _all(store: Store, query: RecordQuery) -> AsyncIterator[MailRecord]:
    async for record in iter_records(store, query):
        if not record.is_deleted:
            yield record


async def collect_status(
    store: Store, queue: Queue | None, *, since: datetime, now: datetime | None = None, page: int = _PAGE
) -> StatusReport:
    """Read the report from an open store and (if given) an open queue.

    Every waiting mail is read, and every finished one accepted since
    ``since``, page by page through :meth:`Store.find`: the time taken
    grows with the number of those mails.

    Raises:
        StoreError: the store did not answer. A queue that does not answer
            is reported in ``queue_error`` instead.
    """
    now = now or utcnow()
    counts = dict.fromkeys(Status, 0)
    oldest: MailRecord | None = None
    async for record in _all(store, RecordQuery(statuses=IN_FLIGHT, limit=page)):
        counts[record.status] += 1
        if record.status is not Status.SENDING and (
            oldest is None or (record.created_at, record.id) < (oldest.created_at, oldest.id)
        ):
            oldest = record
    groups: dict[tuple[int | None, str], list[MailRecord]] = {}
    async for record in _all(store, RecordQuery(statuses=FINISHED, since=since, limit=page)):
        counts[record.status] += 1
        if record.status in FAILURES:
            groups.setdefault((record.last_code, failure_reason(record)), []).append(record)
    failures = []
    for (code, reason), records in groups.items():
        last = max(records, key=lambda r: (r.updated_at, r.id))
        failures.append(FailureGroup(code, reason, len(records), last.updated_at, last.id))
    failures.sort(key=lambda g: (g.last_at, g.count), reverse=True)
    depth: int | None = None
    queue_error: str | None = None
    if queue is not None:
        depth, queue_error = await queue_depth(queue)
    return StatusReport(now, since, counts, oldest, depth, queue_error, failures[:_TOP])


def _age(seconds: float) -> str:
    """``12s``, ``4m5s``, ``3h12m``, ``2d``: the largest unit and the next one unless zero."""
    left = max(0, int(seconds))
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for index, (unit, size) in enumerate(units[:-1]):
        if left >= size:
            next_unit, next_size = units[index + 1]
            rest = left % size // next_size
            return f"{left // size}{unit}" + (f"{rest}{next_unit}" if rest else "")
    return f"{left}s"


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render_status(report: StatusReport) -> list[str]:
    """The report as lines of text, the oldest waiting mail first."""
    lines = [f"mailqueue status at {_stamp(report.generated_at)}"]
    oldest = report.oldest
    if oldest is None:
        lines.append("oldest waiting: none")
    else:
        age = _age((report.generated_at - oldest.created_at).total_seconds())
        lines.append(
            f"oldest waiting: {oldest.id} {oldest.status}, accepted {age} ago "
            f"({_stamp(oldest.created_at)}), {oldest.attempts} attempt(s)"
        )
    if report.queue_error is not None:
        depth = f"unreachable ({report.queue_error})"
    else:
        depth = "unknown (this queue cannot tell)" if report.depth is None else str(report.depth)
    lines.append(f"queue depth:    {depth}")
    lines.append("waiting (all mails):")
    lines += [f"  {status.value:<10}{report.counts[status]:>8}" for status in WAITING]
    window = _age((report.generated_at - report.since).total_seconds())
    lines.append(f"finished (accepted in the last {window}, since {_stamp(report.since)}):")
    lines += [f"  {status.value:<10}{report.counts[status]:>8}" for status in DONE]
    if not report.failures:
        lines.append("failures: none")
        return lines
    lines.append(f"failures by reason (newest first, top {_TOP}):")
    lines.append(f"  {'count':>6}  {'code':>4}  {'last':<20}  reason  [latest id]")
    for g in report.failures:
        code = "-" if g.code is None else str(g.code)
        lines.append(f"  {g.count:>6}  {code:>4}  {_stamp(g.last_at):<20}  {g.reason}  [{g.example_id}]")
    return lines


async def queue_depth(queue: Queue) -> tuple[int | None, str | None]:
    """The depth of an open queue, and why it is unknown if the queue failed.

    Returns:
        ``(depth, None)``, where ``depth`` is ``None`` if the queue cannot tell;
        ``(None, "ErrorType: message")`` if it did not answer.
    """
    try:
        return await queue.depth(), None
    except BackendError as exc:
        return None, f"{type(exc).__name__}: {exc}"


async def oldest_waiting(store: RecordSource) -> MailRecord | None:
    """The ``queued`` or ``retrying`` mail with the smallest id (ids sort by creation), or ``None``.

    Two short index reads, one per status, unlike :func:`collect_status`, which
    reads every waiting mail to count them and picks the oldest by ``created_at``.

    Raises:
        StoreError: the store failed.
    """
    # one status at a time: each is a short walk of the (status, ..., id) index, where both
    # at once may make MariaDB walk the whole table in id order (17 s on a million rows)
    firsts = await asyncio.gather(
        *(
            store.find(RecordQuery(statuses=frozenset({status}), order="oldest", limit=1))
            for status in (Status.QUEUED, Status.RETRYING)
        )
    )
    found = [page[0] for page in firsts if page]
    return min(found, key=lambda record: record.id) if found else None
