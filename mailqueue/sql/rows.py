"""Rows <-> records: a :class:`~mailqueue.records.MailRecord` from its ``email`` and
``email_attempt`` rows and back, and the limits the columns put on what is written.

Rows of the original service (no ``payload``) are read back leniently, as
:mod:`mailqueue.sql.store` describes; recipient filters are checked here too.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from mailqueue.errors import MailQueueError
from mailqueue.message import Mail, Recipient, check_body_text, check_header_text
from mailqueue.records import Attempt, MailRecord, RecipientOutcome, RecipientState, Status, utcnow

#: How a store turns a time into the value its columns keep (see ``Database.db_time``).
ToColumn = Callable[[datetime | None], datetime | None]

logger = logging.getLogger(__name__)

TEXT_BYTES = 65535
ATTACHMENT_CHARS = 1000
REMARK_CHARS = 100
ERROR_CHARS = 1000
MESSAGE_ID_CHARS = 255


def clip(text: str, chars: int) -> str:
    # NUL cannot be stored in PostgreSQL text
    return text.replace("\x00", "")[:chars]


def clip_bytes(text: str, limit: int) -> str:
    """At most ``limit`` UTF-8 bytes, cut at a character boundary."""
    data = text.encode("utf-8", errors="surrogatepass")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


def dump_outcomes(outcomes: Sequence[RecipientOutcome]) -> str:
    return json.dumps(
        [{"address": o.address, "state": o.state.value, "code": o.code, "reply": o.reply} for o in outcomes],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _load_outcomes(text: str | None) -> tuple[RecipientOutcome, ...] | None:
    if not text:
        return None
    try:
        items = json.loads(text)
        return tuple(
            RecipientOutcome(
                address=str(item["address"]),
                state=RecipientState(item.get("state", "pending")),
                code=item.get("code"),
                reply=str(item.get("reply") or ""),
            )
            for item in items
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def naive_utc(value: datetime) -> datetime:
    """Naive UTC, as the columns keep it (a naive input is taken to be UTC)."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def _scrub(text: str | None, check: Callable[[str], object]) -> str:
    """``text`` with every character ``check`` refuses replaced by a space."""
    text = text or ""
    try:
        check(text)
        return text
    except ValueError:
        pass
    kept = []
    for char in text:
        try:
            check(char)
            kept.append(char)
        except ValueError:
            kept.append(" ")
    return "".join(kept)


def _legacy_recipients(receiver: str | None, receiver_name: str | None) -> tuple[Recipient, ...]:
    addresses = [part.strip() for part in (receiver or "").split(",")]
    names = (
        [part.strip() for part in (receiver_name or "").split(",")] if (receiver_name or "").strip() else []
    )
    if len(names) != len(addresses):
        names = []
    result = []
    for index, address in enumerate(addresses):
        if not address:
            continue
        for name in (names[index] if names else "", ""):
            try:
                result.append(Recipient(address=address, name=name))
                break
            except MailQueueError:
                continue
    return tuple(result)


def _legacy_mail(row: Mapping[Any, Any]) -> Mail:
    """Rebuild the mail of a row that has no payload (see the module docstring)."""
    created = _aware(row["created_at"]) or utcnow()
    fields: dict[str, Any] = {
        "id": row["uid"] or f"legacy-{row['id']}",
        "subject": _scrub(row["title"], check_header_text).strip()[: Mail.SUBJECT_MAX] or "(no subject)",
        "html": _scrub(row["content"], check_body_text)[: Mail.BODY_MAX] or " ",
        "sender_name": _scrub(row["sender_name"], check_header_text)[: Mail.SENDER_NAME_MAX],
        "to": _legacy_recipients(row["receiver"], row["receiver_name"]),
        "created_at": created,
    }
    if row.get("message_id"):
        fields["message_id"] = row["message_id"]
    try:
        return Mail(**fields)
    except MailQueueError:
        fields.pop("message_id", None)
        try:
            return Mail(**fields)
        except MailQueueError:
            # e.g. no valid address left: keep the row listable anyway
            return Mail.model_construct(**fields)


def _status(row: Mapping[Any, Any]) -> Status:
    try:
        return Status(row["status"])
    except ValueError:
        return Status.SENT if row["is_ok"] else Status.FAILED


#: An address in the form the store writes it: email-validator's ASCII form of a dot-atom mailbox.
_STORED_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}"
)
_ADDRESS_FIELDS = ("to", "cc", "bcc", "reply_to")
_RECIPIENT_KEYS = frozenset({"address", "name"})


def _stored_recipient(item: object) -> bool:
    """Whether ``item`` is a recipient as the store writes it (see :func:`_payload_mail`)."""
    if not isinstance(item, dict) or item.keys() != _RECIPIENT_KEYS:
        return False
    address, name = item["address"], item["name"]
    if not (isinstance(address, str) and isinstance(name, str)):
        return False
    if (
        len(address) > 254
        or len(name) > 255
        or name != name.strip()
        or not _STORED_ADDRESS.fullmatch(address)
    ):
        return False
    try:
        check_header_text(name)
    except ValueError:
        return False
    return True


def _payload_mail(payload: str) -> Mail:
    """The mail kept in a row's ``payload``, validated as on the way in, but for one thing.

    Parsing an address with email-validator is most of the cost of reading a
    record back, and the worker reads one per mail. An address the store wrote
    was parsed and normalized on the way in, so one that still has the form of
    such an address (a dot-atom mailbox in ASCII, no control characters) is
    taken as it is; any other (changed in the database, or written by a
    version that allowed more) is parsed again, as is everything else.

    Raises:
        ValueError: not JSON, or not a valid mail.
    """
    data = json.loads(payload)
    if isinstance(data, dict):
        for field in _ADDRESS_FIELDS:
            items = data.get(field)
            if isinstance(items, list) and all(_stored_recipient(item) for item in items):
                data[field] = tuple(
                    Recipient.model_construct(address=item["address"], name=item["name"]) for item in items
                )
    return Mail.model_validate(data)


def _mail_of(row: Mapping[Any, Any]) -> Mail:
    payload = row["payload"]
    if payload:
        try:
            mail = _payload_mail(payload)
        except ValueError:
            logger.warning("record %s has an unreadable payload; rebuilt from its columns", row["uid"])
        else:
            if mail.message_id is None and row.get("message_id"):
                # given later (RecordUpdate.message_id), kept in the column
                mail = mail.model_copy(update={"message_id": row["message_id"]})
            return mail
    return _legacy_mail(row)


def record_of(
    row: Mapping[Any, Any], history: tuple[Attempt, ...] = (), mail: Mail | None = None
) -> MailRecord:
    mail = mail if mail is not None else _mail_of(row)
    status = _status(row)
    recipients = _load_outcomes(row["recipients"])
    if recipients is None:
        state = RecipientState.SENT if status is Status.SENT else RecipientState.PENDING
        recipients = tuple(RecipientOutcome(r.address, state) for r in mail.recipients)
    created = _aware(row["created_at"]) or mail.created_at
    return MailRecord(
        mail=mail,
        status=status,
        attempts=int(row["attempts"] or 0),
        recipients=recipients,
        remark=row["remark"] or "",
        last_error=row["last_error"] or "",
        last_code=row["last_code"],
        created_at=created,
        updated_at=_aware(row["updated_at"]) or created,
        sent_at=_aware(row["sent_at"]),
        next_attempt_at=_aware(row["next_attempt_at"]),
        is_deleted=bool(row["is_deleted"]),
        history=history,
    )


def attempt_of(row: Mapping[Any, Any]) -> Attempt:
    started = _aware(row["started_at"])
    finished = _aware(row["finished_at"])
    assert started is not None
    assert finished is not None
    return Attempt(
        number=int(row["number"]),
        started_at=started,
        finished_at=finished,
        outcome=row["outcome"],
        code=row["code"],
        reply=row["reply"] or "",
        recipients=_load_outcomes(row["recipients"]) or (),
    )


def recipient_matches(row: Mapping[Any, Any], needle: str) -> bool:
    """Whether an envelope recipient address of the row contains ``needle``, in any case.

    The addresses are those of the ``recipients`` outcomes, or for rows
    without them (the original service's) those of ``receiver``.
    """
    outcomes = _load_outcomes(row["recipients"])
    if outcomes is not None:
        addresses = [outcome.address for outcome in outcomes]
    else:
        addresses = [r.address for r in _legacy_recipients(row["receiver"], row["receiver_name"])]
    needle = needle.lower()
    return any(needle in address.lower() for address in addresses)


def row_values(record: MailRecord, time: ToColumn) -> dict[str, Any]:
    """The ``email`` row of ``record`` (its ``id`` aside), times converted by ``time``."""
    mail = record.mail
    names = [r.name for r in mail.to]
    return {
        "title": mail.subject,
        "content": clip_bytes(mail.html, TEXT_BYTES),
        "sender_name": mail.sender_name,
        "receiver": clip_bytes(",".join(r.address for r in mail.to), TEXT_BYTES),
        "receiver_name": clip_bytes(",".join(names), TEXT_BYTES) if any(names) else "",
        "attachment": ",".join(a.filename for a in mail.attachments)[:ATTACHMENT_CHARS],
        "remark": clip(record.remark, REMARK_CHARS),
        "is_ok": 1 if record.status is Status.SENT else 0,
        "is_deleted": 1 if record.is_deleted else 0,
        "created_at": time(record.created_at),
        "updated_at": time(record.updated_at),
        "uid": mail.id,
        "message_id": mail.message_id[:MESSAGE_ID_CHARS] if mail.message_id else None,
        "status": record.status.value,
        "attempts": record.attempts,
        "recipients": dump_outcomes(record.recipients),
        "payload": mail.dump_json(),
        "last_error": clip(record.last_error, ERROR_CHARS),
        "last_code": record.last_code,
        "idempotency_key": mail.idempotency_key,
        "sent_at": time(record.sent_at),
        "next_attempt_at": time(record.next_attempt_at),
    }


def attempt_values(email_id: int, attempt: Attempt, time: ToColumn) -> dict[str, Any]:
    """The ``email_attempt`` row of ``attempt`` of the ``email`` row ``email_id``."""
    return {
        "email_id": email_id,
        "number": attempt.number,
        "started_at": time(attempt.started_at),
        "finished_at": time(attempt.finished_at),
        "outcome": attempt.outcome,
        "code": attempt.code,
        "reply": clip(attempt.reply, ERROR_CHARS),
        "recipients": dump_outcomes(attempt.recipients) if attempt.recipients else None,
    }
