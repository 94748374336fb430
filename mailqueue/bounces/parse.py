"""Reading bounce and complaint reports into per-recipient notices.

Three shapes are understood:

- **DSN** (RFC 3464): ``multipart/report; report-type=delivery-status``; each
  per-recipient block of its ``message/delivery-status`` part with ``Action:
  failed`` or a ``5.x.x`` ``Status`` is a hard bounce, ``Action: delayed`` or
  a ``4.x.x`` one a soft bounce; ``delivered``, ``relayed`` and ``expanded``
  blocks are not bounces and are skipped.
- **ARF** (RFC 5965): ``multipart/report; report-type=feedback-report``; a
  ``Feedback-Type`` other than ``not-spam`` is a complaint.
- **anything else** sent with the null return path (``MAIL FROM:<>``) and not
  an out-of-office reply (``X-Autoreply``, ``Precedence: auto_reply``, a
  subject such as "Out of office"): a non-standard bounce, identified by
  the VERP address it was sent to alone. The first RFC 3463 status found
  in its text decides hard (``5.x.x``) or soft (``4.x.x``, or none found:
  recorded, not acted on).

The standard library's :mod:`email` parser does the MIME work. flufl.bounce
(Mailman's, maintained, Python 3.11+) was considered: it finds *which
addresses* bounced in many historic formats, but gives neither the status nor
the diagnostic text, which mailqueue records; and the address is what the
VERP return path already tells.

:func:`parse_report` raises :class:`MalformedReportError` for a report that
says it is a DSN or ARF but is not one (no report part, no recipient block
with a valid status, no ``Feedback-Type``, broken MIME structure).
"""

from __future__ import annotations

import email
import email.message
import email.parser
import email.policy
import enum
import re
from dataclasses import dataclass

__all__ = ["Kind", "MalformedReportError", "Notice", "Report", "parse_report"]

_STATUS_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
_STATUS_IN_TEXT_RE = re.compile(r"(?<![\d.])([45])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_SMTP_CODE_RE = re.compile(r"^([245]\d\d)[\s-]")
_REPLY_CHARS = 900
_VACATION_SUBJECT_RE = re.compile(r"(?i)^(auto(matic)?[ -]?(reply|response)|out of (the )?office|vacation)")


class MalformedReportError(ValueError):
    """The report claims a standard form (DSN, ARF) it does not have."""


class Kind(enum.StrEnum):
    """What a notice says about its recipient."""

    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"


@dataclass(frozen=True, slots=True)
class Notice:
    """One recipient's news from a report.

    Attributes:
        kind: hard or soft bounce, or complaint.
        recipient: the address the report names (``Original-Recipient``, else
            ``Final-Recipient``; ``Original-Rcpt-To`` of a complaint), or ``""``.
        status: the RFC 3463 status (``5.1.1``), or ``""`` if none was given.
        code: the SMTP reply code quoted by an ``smtp`` diagnostic, if any.
        text: the diagnostic text (a complaint: its feedback type), one line.
    """

    kind: Kind
    recipient: str = ""
    status: str = ""
    code: int | None = None
    text: str = ""

    @property
    def reply(self) -> str:
        """What is recorded as the reply: the status, then the text."""
        return " ".join(part for part in (self.status, self.text) if part)[:_REPLY_CHARS]


@dataclass(frozen=True, slots=True)
class Report:
    """A parsed report.

    Attributes:
        form: ``dsn``, ``arf`` or ``other`` (non-standard; ``notices`` is empty
            when it is not a bounce at all, e.g. an auto-reply).
        notices: one per recipient block that is a bounce or complaint.
        return_paths: envelope senders of the original mail the report quotes
            (ARF ``Original-Mail-From``, ``Return-Path`` of the attached
            message or headers), to find a VERP address in.
        message_ids: Message-IDs of the original mail it quotes.
    """

    form: str
    notices: tuple[Notice, ...] = ()
    return_paths: tuple[str, ...] = ()
    message_ids: tuple[str, ...] = ()


def _text(value: object) -> str:
    """A header value as one line of text."""
    return " ".join(str(value or "").split())


def _address(value: object) -> str:
    """The address of a DSN recipient field: ``rfc822; a@b`` -> ``a@b``."""
    text = _text(value)
    _, _, address = text.rpartition(";")
    return address.strip().strip("<>")


def _diagnostic(value: object) -> tuple[int | None, str]:
    """``smtp; 550 5.1.1 no such user`` -> (550, ``550 5.1.1 no such user``)."""
    text = _text(value)
    kind, sep, rest = text.partition(";")
    if not sep:
        return None, text
    rest = rest.strip()
    found = _SMTP_CODE_RE.match(rest + " ") if kind.strip().lower() == "smtp" else None
    return (int(found[1]) if found else None), rest


def _fields(part: email.message.Message) -> list[email.message.Message]:
    """The header blocks of a ``message/delivery-status`` (or feedback-report) part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [block for block in payload if isinstance(block, email.message.Message)]
    if isinstance(payload, str):
        # some parsers leave it as text; the blocks are header sections separated by blank lines
        parser = email.parser.HeaderParser(policy=email.policy.compat32)
        blocks = re.split(r"\r?\n\s*\r?\n", payload.strip())
        return [parser.parsestr(block) for block in blocks if block.strip()]
    return []


def _original(report: email.message.Message) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Return paths and Message-IDs of the original mail quoted by a report."""
    paths: list[str] = []
    ids: list[str] = []
    for part in report.walk():
        kind = part.get_content_type()
        headers: email.message.Message | None = None
        if kind == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], email.message.Message):
                headers = payload[0]
        elif kind == "text/rfc822-headers":
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
        if headers is None:
            continue
        for value in headers.get_all("Return-Path", []):
            paths.append(_text(value).strip("<>"))
        for value in headers.get_all("Message-ID", []):
            ids.append(_text(value))
    return tuple(p for p in paths if p), tuple(i for i in ids if i)


def _dsn(message: email.message.Message) -> list[Notice]:
    parts = [p for p in message.walk() if p.get_content_type() == "message/delivery-status"]
    if not parts:
        raise MalformedReportError("a delivery-status report without a message/delivery-status part")
    notices: list[Notice] = []
    valid = 0
    for block in _fields(parts[0])[1:]:
        status = _text(block.get("Status"))
        if not _STATUS_RE.match(status):
            continue
        valid += 1
        action = _text(block.get("Action")).lower()
        if action in ("delivered", "relayed", "expanded") or status.startswith("2."):
            continue
        kind = Kind.HARD if action == "failed" or status.startswith("5.") else Kind.SOFT
        if action == "failed" and status.startswith("4."):
            kind = Kind.HARD  # given up on after retrying: final, whatever the status class
        code, text = _diagnostic(block.get("Diagnostic-Code"))
        recipient = _address(block.get("Original-Recipient")) or _address(block.get("Final-Recipient"))
        notices.append(Notice(kind, recipient, status, code, text))
    if not valid:
        raise MalformedReportError("a delivery-status report without a recipient block with a valid Status")
    return notices


def _arf(message: email.message.Message) -> tuple[list[Notice], tuple[str, ...]]:
    parts = [p for p in message.walk() if p.get_content_type() == "message/feedback-report"]
    if not parts:
        raise MalformedReportError("a feedback report without a message/feedback-report part")
    blocks = _fields(parts[0])
    if not blocks or not _text(blocks[0].get("Feedback-Type")):
        raise MalformedReportError("a feedback report without Feedback-Type")
    fields = blocks[0]
    feedback = _text(fields.get("Feedback-Type")).lower()
    paths = tuple(_text(v).strip("<>") for v in fields.get_all("Original-Mail-From", []))
    if feedback == "not-spam":
        return [], paths
    recipients = [_text(v).strip("<>") for v in fields.get_all("Original-Rcpt-To", [])] or [""]
    notices = [Notice(Kind.COMPLAINT, r, "", None, f"feedback-type {feedback}") for r in recipients]
    return notices, paths


def _other(message: email.message.Message, mail_from: str) -> list[Notice]:
    if mail_from.strip("<>") or _vacation(message):
        return []  # a bounce has the null return path; an out-of-office reply is not a bounce
    text = []
    for part in message.walk():
        if part.get_content_maintype() == "text":
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                text.append(raw.decode("utf-8", errors="replace"))
    body = "\n".join(text)
    found = _STATUS_IN_TEXT_RE.search(body)
    status = ".".join(found.groups()) if found else ""
    kind = Kind.HARD if status.startswith("5.") else Kind.SOFT
    line = _text(message.get("Subject")) or "non-standard bounce"
    return [Notice(kind, "", status, None, line)]


def _vacation(message: email.message.Message) -> bool:
    """An out-of-office reply (those are sent with the null return path too, RFC 3834)."""
    if any(message.get(name) is not None for name in ("X-Autoreply", "X-Autorespond")):
        return True
    if _text(message.get("Precedence")).lower() == "auto_reply":
        return True
    return bool(_VACATION_SUBJECT_RE.match(_text(message.get("Subject"))))


def parse_report(data: bytes, *, mail_from: str = "") -> Report:
    """Parse the bytes of a received report.

    Args:
        data: the message as received (after DATA).
        mail_from: its envelope sender (``""`` for the null return path).

    Raises:
        MalformedReportError: see the module docs.
    """
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    broken = [d for d in message.defects if type(d).__name__ in _FATAL_DEFECTS]
    if message.get_content_type() != "multipart/report":
        if broken:
            raise MalformedReportError(f"broken MIME structure: {type(broken[0]).__name__}")
        paths, ids = _original(message)
        return Report("other", tuple(_other(message, mail_from)), paths, ids)
    if broken or not message.is_multipart():
        raise MalformedReportError("a multipart/report that is not a well-formed multipart")
    report_type = str(message.get_param("report-type", "") or "").lower()
    paths, ids = _original(message)
    if report_type == "delivery-status":
        return Report("dsn", tuple(_dsn(message)), paths, ids)
    if report_type == "feedback-report":
        notices, more = _arf(message)
        return Report("arf", tuple(notices), more + paths, ids)
    raise MalformedReportError(f"unsupported report-type {report_type!r}")


_FATAL_DEFECTS = frozenset(
    {
        "StartBoundaryNotFoundDefect",
        "NoBoundaryInMultipartDefect",
        "MultipartInvariantViolationDefect",
    }
)
