"""The message list's filters: read from a query string or a form, checked,
turned into a :class:`~mailqueue.RecordQuery` and back into link parameters."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TypeAlias

from mailqueue import RecordQuery, Status
from mailqueue.records import FINISHED, RESEND_DEFAULT

__all__ = ["RESEND_DEFAULT", "Filters", "MultiValues", "input_time", "is_mail_id"]

_TEXT_MAX = 255
_ID = re.compile(r"^[0-9a-z][0-9a-z_-]{0,63}$")


#: Every value of a query or form field, by name (empty list if absent).
MultiValues: TypeAlias = Callable[[str], list[str]]


def is_mail_id(value: str) -> bool:
    """True if ``value`` has the shape of a mail id (what ``Mail.id`` allows)."""
    return bool(_ID.match(value))


def _time(value: str, name: str, errors: list[str]) -> datetime | None:
    value = value.strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        errors.append(f"{name}: not a date and time (YYYY-MM-DD HH:MM, UTC)")
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Filters:
    """What the operator asked to see.

    Times are UTC; ``recipient`` and ``subject`` match a part of the text, in any case.
    """

    statuses: tuple[Status, ...] = ()
    recipient: str = ""
    subject: str = ""
    since: datetime | None = None
    until: datetime | None = None
    code: int | None = None
    order: Literal["newest", "oldest"] = "newest"
    include_deleted: bool = False
    errors: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def parse(cls, values: MultiValues) -> Filters:
        """Read the filters; what is wrong is listed in :attr:`errors` (and left out)."""
        errors: list[str] = []
        statuses: list[Status] = []

        def first(name: str) -> str:
            found = values(name)
            return found[0] if found else ""

        for raw in values("status"):
            if not raw:
                continue
            try:
                status = Status(raw)
            except ValueError:
                errors.append(f"status: unknown status {raw[:40]!r}")
                continue
            if status not in statuses:
                statuses.append(status)
        texts: dict[str, str] = {}
        for name in ("recipient", "subject"):
            text = first(name).strip()
            if len(text) > _TEXT_MAX:
                errors.append(f"{name}: at most {_TEXT_MAX} characters")
                text = ""
            texts[name] = text
        code: int | None = None
        raw_code = first("code").strip()
        if raw_code:
            if raw_code.isascii() and raw_code.isdigit() and 100 <= int(raw_code) <= 599:
                code = int(raw_code)
            else:
                errors.append("code: an SMTP reply code, 100 to 599")
        order = first("order") or "newest"
        if order not in ("newest", "oldest"):
            errors.append("order: newest or oldest")
            order = "newest"
        since = _time(first("since"), "from", errors)
        until = _time(first("until"), "to", errors)
        if since is not None and until is not None and until < since:
            errors.append("to: must not be before from")
        return cls(
            statuses=tuple(sorted(statuses, key=list(Status).index)),
            recipient=texts["recipient"],
            subject=texts["subject"],
            since=since,
            until=until,
            code=code,
            order="oldest" if order == "oldest" else "newest",
            include_deleted=first("deleted") == "1",
            errors=tuple(errors),
        )

    @property
    def active(self) -> bool:
        """Some filter narrows the list."""
        return bool(
            self.statuses
            or self.recipient
            or self.subject
            or self.since
            or self.until
            or self.code is not None
            or self.include_deleted
        )

    def params(self, **extra: str) -> list[tuple[str, str]]:
        """The filters as query parameters (for links and hidden form fields)."""
        items: list[tuple[str, str]] = [("status", str(s)) for s in self.statuses]
        if self.recipient:
            items.append(("recipient", self.recipient))
        if self.subject:
            items.append(("subject", self.subject))
        if self.since is not None:
            items.append(("since", input_time(self.since)))
        if self.until is not None:
            items.append(("until", input_time(self.until)))
        if self.code is not None:
            items.append(("code", str(self.code)))
        if self.order != "newest":
            items.append(("order", self.order))
        if self.include_deleted:
            items.append(("deleted", "1"))
        items.extend((k, v) for k, v in extra.items() if v)
        return items

    def query(
        self,
        *,
        limit: int,
        statuses: Sequence[Status] | None = None,
        before_id: str | None = None,
        after_id: str | None = None,
        order: Literal["newest", "oldest"] | None = None,
    ) -> RecordQuery:
        """The Store query for these filters (``statuses`` replaces the chosen ones)."""
        chosen = self.statuses if statuses is None else tuple(statuses)
        return RecordQuery(
            statuses=frozenset(chosen) if chosen else None,
            since=self.since,
            until=self.until,
            recipient=self.recipient or None,
            subject=self.subject or None,
            code=self.code,
            include_deleted=self.include_deleted,
            before_id=before_id,
            after_id=after_id,
            order=order or self.order,
            limit=limit,
        )

    def resend_statuses(self) -> tuple[tuple[Status, ...], tuple[Status, ...]]:
        """The statuses a bulk re-send of this selection picks, and those it leaves out.

        Only finished mails are re-sent; with no status chosen, ``failed`` and
        ``dead`` (as ``mailqueue resend`` does).
        """
        if not self.statuses:
            return RESEND_DEFAULT, ()
        picked = tuple(s for s in self.statuses if s in FINISHED)
        left = tuple(s for s in self.statuses if s not in FINISHED)
        return picked, left


def input_time(value: datetime) -> str:
    """``value`` as a ``datetime-local`` input wants it (UTC, to the second)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
