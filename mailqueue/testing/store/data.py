"""What the Store conformance tests are made of: mails, records, attempts, and small helpers.

:func:`make_mail`, :func:`make_record`, :func:`rich_mail` and :func:`assert_same_time` are
for a backend's own tests too (re-exported by :mod:`mailqueue.testing.store`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from mailqueue.message import AttachmentRef, Mail, Recipient
from mailqueue.protocols import InspectableStore, Store
from mailqueue.records import Attempt, MailRecord, RecipientOutcome, RecipientState, RecordQuery, utcnow

__all__ = [
    "add_records",
    "as_inspectable",
    "assert_same_time",
    "found_ids",
    "make_attempt",
    "make_mail",
    "make_record",
    "refused_outcome",
    "rich_mail",
]


def assert_same_time(got: datetime | None, expected: datetime) -> None:
    """``got`` is ``expected``, timezone-aware UTC, possibly cut to the second."""
    assert got is not None, f"expected {expected}, got None"
    assert got.utcoffset() == timedelta(0), f"{got!r} is not timezone-aware UTC"
    assert timedelta(0) <= expected - got < timedelta(seconds=1), f"{got} is not {expected}"


def make_mail(**changes: Any) -> Mail:
    """A small valid mail; keyword arguments replace its fields."""
    fields: dict[str, Any] = {
        "subject": "Hello",
        "html": "<p>Hello</p>",
        "to": (Recipient(address="to@example.com"),),
    }
    fields.update(changes)
    return Mail(**fields)


def make_record(**changes: Any) -> MailRecord:
    """A new ``queued`` record of :func:`make_mail` with ``changes`` applied to the mail."""
    return MailRecord.new(make_mail(**changes))


def rich_mail() -> Mail:
    """A mail using every field: cc, bcc, reply-to, extra headers, attachments, non-ASCII text."""
    return Mail(
        message_id="<abc.123@mail.example.com>",
        subject="Grüße aus Köln — 你好 📨",
        html="<p>Ünïcödé ✓ 日本語 🚀</p>",
        text="Ünïcödé ✓ 日本語 🚀",
        sender_name="Zoë Support",
        to=(Recipient(address="alice@example.com", name="Alice Ärger"), Recipient(address="bob@example.org")),
        cc=(Recipient(address="carol@example.net", name="Carol, C."),),
        bcc=(Recipient(address="dave@example.com", name="Dave"),),
        reply_to=(Recipient(address="help@example.com", name="Help Desk"),),
        headers=(
            ("In-Reply-To", "<parent.1@mail.example.com>"),
            ("List-Unsubscribe", "<https://example.com/u?id=1>, <mailto:unsubscribe@example.com>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ("X-Kampagne", "Frühling 🌷"),
        ),
        attachments=(
            AttachmentRef(
                key="k1-abc_DEF",
                filename="Bericht März.pdf",
                content_type="application/pdf",
                size=1234,
                sha256="a" * 64,
            ),
            AttachmentRef(key="k2", filename="photo.png", content_type="image/png", size=0, sha256="0" * 64),
        ),
        idempotency_key="order-4711/confirmation",
    )


def make_attempt(number: int, outcome: str = "transient", **changes: Any) -> Attempt:
    """Attempt ``number``, finished 250 ms after it started (a 451 by default); ``changes`` replace fields."""
    started = utcnow()
    fields: dict[str, Any] = {
        "number": number,
        "started_at": started,
        "finished_at": started + timedelta(milliseconds=250),
        "outcome": outcome,
        "code": 451,
        "reply": "4.7.1 Try again later",
    }
    fields.update(changes)
    return Attempt(**fields)


async def add_records(store: Store, count: int, **changes: Any) -> list[MailRecord]:
    """Add ``count`` records of :func:`make_record` (with ``changes``) one by one; return them."""
    return [await store.add(make_record(**changes)) for _ in range(count)]


async def found_ids(store: Store, query: RecordQuery) -> list[str]:
    """The ids ``store.find(query)`` returns, in its order."""
    return [record.id for record in await store.find(query)]


def as_inspectable(store: Store) -> InspectableStore:
    """``store`` as an :class:`~mailqueue.protocols.InspectableStore`; skip the test if it is not one."""
    if not isinstance(store, InspectableStore):
        pytest.skip("the store cannot count or report activity (optional InspectableStore)")
    return store


def refused_outcome(address: str, reply: str) -> RecipientOutcome:
    """``address`` refused for good with a 550 and ``reply``."""
    return RecipientOutcome(address, RecipientState.FAILED, 550, reply)
