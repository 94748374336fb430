"""What the Store keeps about each mail: its status, recipients and attempts."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from mailqueue.message import Mail

__all__ = [
    "Attempt",
    "MailRecord",
    "RecipientOutcome",
    "RecipientState",
    "RecordQuery",
    "RecordUpdate",
    "Status",
    "utcnow",
]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC, to the microsecond."""
    return datetime.now(UTC)


class Status(enum.StrEnum):
    """Where a mail is in its life.

    ``queued`` -> ``sending`` -> ``sent`` | ``retrying`` -> ... |
    ``failed`` (refused for good) | ``dead`` (attempts or age exhausted) |
    ``unknown`` (lost after the final dot: maybe delivered).
    """

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    RETRYING = "retrying"
    FAILED = "failed"
    DEAD = "dead"
    UNKNOWN = "unknown"

    @property
    def final(self) -> bool:
        """True for states a worker never moves out of by itself."""
        return self in (Status.SENT, Status.FAILED, Status.DEAD, Status.UNKNOWN)


class RecipientState(enum.StrEnum):
    """Per-recipient outcome: still to send, accepted by the server, refused for good."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


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
    ``transient``, ``permanent``, ``unknown`` or ``skipped``.
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
    changed the record since it was read.
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


@dataclass(frozen=True, slots=True)
class RecordQuery:
    """Which records :meth:`Store.find` returns, newest first.

    Every given criterion must match. ``before_id`` is the keyset cursor: only
    records with a smaller id (ids sort by creation time) are returned.
    """

    ids: tuple[str, ...] | None = None
    statuses: frozenset[Status] | None = None
    since: datetime | None = None
    until: datetime | None = None
    idempotency_key: str | None = None
    include_deleted: bool = False
    before_id: str | None = None
    limit: int = 100
