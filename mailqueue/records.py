"""What the Store keeps about each mail: its status, recipients and attempts."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, Protocol

from mailqueue.message import Mail

__all__ = [
    "FINISHED",
    "IN_FLIGHT",
    "RESEND_DEFAULT",
    "ActivityBucket",
    "Attempt",
    "MailRecord",
    "RecipientOutcome",
    "RecipientState",
    "RecordQuery",
    "RecordSource",
    "RecordUpdate",
    "Status",
    "activity_range",
    "iter_pages",
    "iter_records",
    "utcnow",
]

#: Most buckets :func:`activity_range` allows.
MAX_BUCKETS = 10_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC, to the microsecond."""
    return datetime.now(UTC)


class Status(enum.StrEnum):
    """Where a mail is in its life.

    ``queued`` -> ``sending`` -> ``sent`` | ``retrying`` -> ... |
    ``failed`` (refused for good) | ``dead`` (attempts or age exhausted) |
    ``unknown`` (lost after the final dot: maybe delivered). A ``sent`` (or
    ``unknown``) mail becomes ``bounced`` when bounce reports (DSNs, see
    :mod:`mailqueue.bounces`) say that it reached none of its recipients:
    every recipient is ``bounced`` or ``failed``. A mail that reached some
    recipients stays ``sent``; its bounced ones are told by their outcome.
    """

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    RETRYING = "retrying"
    FAILED = "failed"
    DEAD = "dead"
    UNKNOWN = "unknown"
    BOUNCED = "bounced"

    @property
    def final(self) -> bool:
        """True for states a worker never moves out of by itself (those in :data:`FINISHED`)."""
        return self in FINISHED


#: States a mail ends in (a worker never moves it out of them by itself): ``sent``,
#: ``failed``, ``dead``, ``unknown`` and ``bounced``. Their attachments and records may be swept.
FINISHED: Final = frozenset({Status.SENT, Status.FAILED, Status.DEAD, Status.UNKNOWN, Status.BOUNCED})
#: States of a mail a worker is still busy with: never pruned or swept.
IN_FLIGHT: Final = frozenset({Status.QUEUED, Status.SENDING, Status.RETRYING})
#: States a re-send picks when none are named (``MailQueue.resend``, ``mailqueue resend``, the
#: dashboard's bulk re-send): ``failed`` and ``dead``, in the order the dashboard shows them.
RESEND_DEFAULT: Final[tuple[Status, ...]] = (Status.FAILED, Status.DEAD)


class RecipientState(enum.StrEnum):
    """Per-recipient outcome: still to send, accepted by the server, refused for good,
    or ``suppressed`` (not sent: the address is on the suppression list, ``reply`` says why).

    After ``sent``, a bounce report can make it ``bounced`` (a hard bounce: the
    server accepted the mail and later gave up on this mailbox) and a
    complaint (an RFC 5965 feedback report) ``complained`` (delivered, and
    the recipient marked it as spam); see :mod:`mailqueue.bounces`.
    """

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    SUPPRESSED = "suppressed"


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    """One envelope recipient's state and the last server reply about it."""

    address: str
    state: RecipientState = RecipientState.PENDING
    code: int | None = None
    reply: str = ""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt.

    ``outcome`` is ``sent``, ``partial`` (some recipients deferred),
    ``transient``, ``permanent``, ``unknown``, ``skipped``, ``suppressed``
    (every recipient left was on the suppression list: nothing went on the
    wire) or ``error`` (the attempt raised what nothing classified, e.g. a
    mail that cannot be rendered: retried like ``transient``; ``reply`` holds
    the error).
    Reports received after the mail was sent are attempts too (no delivery
    was tried; ``code`` is the SMTP code the report quotes, if any, and
    ``reply`` starts with its RFC 3463 status): ``bounced`` (a hard bounce),
    ``delayed`` (a soft bounce or a delay warning: recorded only) and
    ``complained``.
    """

    number: int
    started_at: datetime
    finished_at: datetime
    outcome: str
    code: int | None = None
    reply: str = ""
    recipients: tuple[RecipientOutcome, ...] = ()


@dataclass(frozen=True, slots=True)
class MailRecord:
    """The Store's record of one mail.

    ``history`` is filled by :meth:`Store.get` only; :meth:`Store.find`
    leaves it empty to stay cheap on long lists.
    """

    mail: Mail
    status: Status = Status.QUEUED
    attempts: int = 0
    recipients: tuple[RecipientOutcome, ...] = ()
    remark: str = ""
    last_error: str = ""
    last_code: int | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    sent_at: datetime | None = None
    next_attempt_at: datetime | None = None
    is_deleted: bool = False
    history: tuple[Attempt, ...] = ()

    @property
    def id(self) -> str:
        """The mail's public id."""
        return self.mail.id

    @property
    def is_ok(self) -> bool:
        """The original service's ``is_ok``: true once the mail was sent."""
        return self.status is Status.SENT

    @classmethod
    def new(cls, mail: Mail) -> MailRecord:
        """A fresh ``queued`` record with every recipient pending."""
        now = utcnow()
        return cls(
            mail=mail,
            recipients=tuple(RecipientOutcome(r.address) for r in mail.recipients),
            created_at=now,
            updated_at=now,
        )

    def pending(self) -> tuple[str, ...]:
        """Addresses still to be delivered."""
        return tuple(r.address for r in self.recipients if r.state is RecipientState.PENDING)

    def evolve(self, **changes: object) -> MailRecord:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class RecordUpdate:
    """A change to a record; fields left ``None`` stay as they are.

    ``attempt``, when given, is appended to the history and raises the
    ``attempts`` counter to its number. ``expect`` makes the update
    conditional: it is applied only if the record's current status is one of
    these (compare-and-set), and :meth:`Store.update` reports whether it was.
    ``expect_updated_at`` adds a second condition: the record's ``updated_at``
    is still exactly this value (as the Store returned it), i.e. nobody
    changed the record since it was read. ``message_id`` gives the mail a
    Message-ID; only for one that has none (a row adopted from the original
    service's table, given one when it is first re-sent).
    """

    status: Status | None = None
    attempt: Attempt | None = None
    recipients: tuple[RecipientOutcome, ...] | None = None
    remark: str | None = None
    last_error: str | None = None
    last_code: int | None = None
    sent_at: datetime | None = None
    next_attempt_at: datetime | None = None
    is_deleted: bool | None = None
    expect: frozenset[Status] | None = None
    expect_updated_at: datetime | None = None
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class RecordQuery:
    """Which records :meth:`Store.find` returns, newest first by default.

    Every given criterion must match:

    - ``ids``, ``statuses``: the record's id / status is one of these;
    - ``since`` (inclusive), ``until`` (exclusive): bounds on ``created_at``;
    - ``idempotency_key``: the mail's idempotency key is exactly this;
    - ``recipient``: case-insensitive substring of any envelope recipient's
      address (to, cc or bcc);
    - ``subject``: case-insensitive substring of the subject;
    - ``code``: the last SMTP reply code (``last_code``) is exactly this;
    - ``include_deleted``: records marked ``is_deleted`` are returned too.

    Case-insensitive means at least for ASCII letters (SQLite folds no others).

    ``order`` is ``newest`` (greatest id first) or ``oldest`` (smallest id
    first); ids sort by creation time. ``before_id`` and ``after_id`` are the
    keyset cursors: only records with a smaller, resp. greater, id are
    returned (the cursor itself is not), whatever the order. At most
    ``limit`` records are returned.
    """

    ids: tuple[str, ...] | None = None
    statuses: frozenset[Status] | None = None
    since: datetime | None = None
    until: datetime | None = None
    idempotency_key: str | None = None
    include_deleted: bool = False
    before_id: str | None = None
    limit: int = 100
    recipient: str | None = None
    subject: str | None = None
    code: int | None = None
    after_id: str | None = None
    order: Literal["newest", "oldest"] = "newest"


@dataclass(frozen=True, slots=True)
class ActivityBucket:
    """How many mails were accepted, sent and failed in one time slice.

    ``start`` is the slice's beginning (timezone-aware UTC); it lasts the
    ``bucket`` asked of :meth:`~mailqueue.protocols.InspectableStore.activity`.
    ``accepted`` counts records created in it, ``sent`` those whose
    ``sent_at`` falls in it, ``failed`` those now ``failed``, ``dead`` or
    ``bounced`` whose ``updated_at`` falls in it.
    """

    start: datetime
    accepted: int
    sent: int
    failed: int


def activity_range(since: datetime, bucket: timedelta, now: datetime) -> tuple[datetime, int]:
    """The first bucket's start and the number of buckets of an activity query.

    ``since`` (naive is taken as UTC) is floored to a multiple of ``bucket``
    since the Unix epoch; the last bucket is the one holding ``now``. A
    ``since`` after ``now`` gives no buckets.

    Raises:
        ValueError: ``bucket`` is not a positive whole number of seconds, or
            more than :data:`MAX_BUCKETS` buckets would be needed.
    """
    if bucket <= timedelta(0) or bucket.microseconds:
        raise ValueError(f"the activity bucket must be a positive whole number of seconds, not {bucket}")
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    start = _EPOCH + ((since - _EPOCH) // bucket) * bucket
    count = 0 if now < start else (now - start) // bucket + 1
    if count > MAX_BUCKETS:
        raise ValueError(f"{count} activity buckets asked for; at most {MAX_BUCKETS}")
    return start, count


class RecordSource(Protocol):
    """Anything records are read from a page at a time: a :class:`~mailqueue.protocols.Store`,
    a :class:`~mailqueue.client.MailQueue` (named here so that this module need not import
    ``protocols``, which imports it)."""

    async def find(self, query: RecordQuery) -> list[MailRecord]:
        """At most ``query.limit`` records matching ``query``, in ``query.order``."""
        ...


async def iter_pages(store: RecordSource, query: RecordQuery) -> AsyncIterator[list[MailRecord]]:
    """Every record :meth:`Store.find` returns for ``query``, a page of ``query.limit`` at a time.

    Pages follow the query's ``order`` through the keyset cursor (``before_id``
    newest first, ``after_id`` oldest first), so records changed or deleted
    between pages neither repeat nor make others be skipped. Empty pages are
    not yielded.

    Raises:
        StoreError: the store failed (the pages already yielded stay valid).
    """
    while True:
        records = await store.find(query)
        if records:
            yield records
        if len(records) < query.limit:
            return
        if query.order == "oldest":
            query = replace(query, after_id=records[-1].id)
        else:
            query = replace(query, before_id=records[-1].id)


async def iter_records(store: RecordSource, query: RecordQuery) -> AsyncIterator[MailRecord]:
    """Every record :meth:`Store.find` returns for ``query``, read page by page.

    ``query.limit`` is the page size; see :func:`iter_pages`.

    Raises:
        StoreError: the store failed.
    """
    async for records in iter_pages(store, query):
        for record in records:
            yield record
