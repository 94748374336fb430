"""What the API answers, as typed models (they make the OpenAPI schema), and
the documented request body of ``POST /api/email/send``.

Every answer is the original service's envelope ``{"code", "message", "data"}``
with the HTTP status equal to ``code``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from litestar.enums import MediaType
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, Parameter, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIFormat

from mailqueue import Attempt, MailRecord

__all__ = [
    "AttachmentView",
    "AttemptView",
    "ErrorReply",
    "HealthData",
    "HealthReply",
    "MailView",
    "RecipientView",
    "SendOperation",
    "SendReply",
    "SentData",
    "StatusReply",
    "error_responses",
]


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A refusal or failure. ``data`` names the field and reason for a validation error."""

    code: int
    message: str
    data: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class SentData:
    """The accepted mail's id, for ``GET /api/email/{id}``."""

    id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SendReply:
    """The mail is recorded and queued: it will be delivered or end failed/dead, never lost."""

    code: int = 200
    message: str = "success"
    data: SentData


@dataclass(frozen=True, slots=True)
class RecipientView:
    """One envelope recipient: ``pending``, ``sent`` or ``failed`` (after a bounce report ``bounced``
    or ``complained``), with the server's last reply (or the report's status and text)."""

    address: str
    state: str
    code: int | None
    reply: str


@dataclass(frozen=True, slots=True)
class AttachmentView:
    """An attachment's display name, type and size (never its content)."""

    filename: str
    content_type: str
    size: int


@dataclass(frozen=True, slots=True)
class AttemptView:
    """One delivery attempt; ``outcome`` is ``sent``, ``partial``, ``transient``,
    ``permanent``, ``unknown``, ``skipped`` or ``error`` (an unexpected failure)."""

    number: int
    started_at: datetime
    finished_at: datetime
    outcome: str
    code: int | None
    reply: str

    @classmethod
    def of(cls, attempt: Attempt) -> AttemptView:
        return cls(
            number=attempt.number,
            started_at=attempt.started_at,
            finished_at=attempt.finished_at,
            outcome=attempt.outcome,
            code=attempt.code,
            reply=attempt.reply,
        )


@dataclass(frozen=True, slots=True)
class MailView:
    """A mail's state in the Store."""

    id: str
    status: str
    attempts: int
    is_ok: bool
    subject: str
    recipients: list[RecipientView]
    attachments: list[AttachmentView]
    remark: str
    last_error: str
    last_code: int | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None
    history: list[AttemptView] = field(default_factory=list)

    @classmethod
    def of(cls, record: MailRecord) -> MailView:
        return cls(
            id=record.id,
            status=str(record.status),
            attempts=record.attempts,
            is_ok=record.is_ok,
            subject=record.mail.subject,
            recipients=[RecipientView(r.address, str(r.state), r.code, r.reply) for r in record.recipients],
            attachments=[AttachmentView(a.filename, a.content_type, a.size) for a in record.mail.attachments],
            remark=record.remark,
            last_error=record.last_error,
            last_code=record.last_code,
            created_at=record.created_at,
            updated_at=record.updated_at,
            sent_at=record.sent_at,
            next_attempt_at=record.next_attempt_at,
            history=[AttemptView.of(a) for a in record.history],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReply:
    """A mail's state."""

    code: int = 200
    message: str = "success"
    data: MailView


@dataclass(frozen=True, slots=True)
class HealthData:
    """``status`` is ``live``, ``ready`` or ``not ready``; ``checks`` says ``ok`` or what failed."""

    status: str
    checks: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthReply:
    """A health probe's answer (200 healthy, 503 not ready)."""

    code: int = 200
    message: str = "success"
    data: HealthData


_DESCRIPTIONS = {
    400: "Invalid input: the message names the field and why (`Param is invalid: ...`); nothing was kept.",
    401: "Missing or wrong `Authorization: Bearer <token>`.",
    404: "No such mail.",
    413: "Over a size, count or recipient limit; nothing was kept.",
    415: "The body is neither `multipart/form-data` nor `application/json`.",
    503: "The store or the queue could not confirm; the mail is not accepted (retry later).",
}


def error_responses(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI response entries for these error codes, all in the envelope."""
    return {
        code: ResponseSpec(
            data_container=ErrorReply, description=_DESCRIPTIONS[code], generate_examples=False
        )
        for code in codes
    }


def _text(description: str, *, max_length: int | None = None, min_length: int | None = None) -> Schema:
    return Schema(
        type=OpenAPIType.STRING, description=description, max_length=max_length, min_length=min_length
    )


_TEXT_FIELDS = {
    "title": _text("Subject.", min_length=1, max_length=255),
    "content": _text("Body; HTML allowed.", min_length=1, max_length=65535),
    "sender_name": _text(
        "Display name of the sender (the From address itself is configured).", min_length=1, max_length=50
    ),
}
_REQUIRED = ["title", "content", "sender_name", "receiver"]

_FORM_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=_REQUIRED,
    properties={
        **_TEXT_FIELDS,
        "receiver": _text("Recipient addresses, comma separated.", min_length=1, max_length=2000),
        "receiver_name": _text("Optional display names, comma separated: as many as addresses when given."),
        "attachment[]": Schema(
            type=OpenAPIType.ARRAY,
            description="Files to attach, all under this field name (`attachment` is accepted too).",
            items=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY),
        ),
    },
)

_NAMES = Schema(
    one_of=[
        Schema(type=OpenAPIType.STRING, description="comma separated"),
        Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.STRING)),
    ]
)

_JSON_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=_REQUIRED,
    properties={
        **_TEXT_FIELDS,
        "receiver": Schema(
            one_of=[
                Schema(type=OpenAPIType.STRING, description="comma separated", max_length=2000),
                Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.STRING)),
            ],
            description="Recipient addresses.",
        ),
        "receiver_name": Schema(one_of=_NAMES.one_of, description="Optional display names, one per address."),
        "attachment": Schema(
            type=OpenAPIType.ARRAY,
            items=Schema(
                type=OpenAPIType.OBJECT,
                required=["filename", "content"],
                properties={
                    "filename": _text("Display name of the file.", min_length=1),
                    "content": Schema(
                        type=OpenAPIType.STRING, content_encoding="base64", description="The file's bytes."
                    ),
                    "content_type": _text("MIME type; default application/octet-stream."),
                },
            ),
        ),
    },
)

_SEND_BODY = RequestBody(
    required=True,
    description=(
        "The original service's form (`multipart/form-data`), or the same fields as JSON with "
        "attachments inline in base64. An `Idempotency-Key` header makes a repeat return the first mail."
    ),
    content={
        "multipart/form-data": OpenAPIMediaType(schema=_FORM_SCHEMA),
        MediaType.JSON.value: OpenAPIMediaType(schema=_JSON_SCHEMA),
    },
)


_IDEMPOTENCY_KEY = Parameter(
    name="Idempotency-Key",
    param_in="header",
    required=False,
    description=(
        "Send the same key again (1-255 printable ASCII characters) to get the first mail's id back; "
        "nothing is sent twice."
    ),
    schema=Schema(type=OpenAPIType.STRING, min_length=1, max_length=255),
)


@dataclass
class SendOperation(Operation):
    """The send operation with its body and ``Idempotency-Key`` header documented:
    the handler reads both itself (the body while it streams), so Litestar cannot infer them."""

    def __post_init__(self) -> None:
        self.request_body = _SEND_BODY
        self.parameters = [*(self.parameters or []), _IDEMPOTENCY_KEY]
