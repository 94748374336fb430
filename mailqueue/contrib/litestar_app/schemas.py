"""What the API answers, as typed models (they make the OpenAPI schema), and
the documented request body of ``POST /api/email/send``.

Every answer is the original service's envelope ``{"code", "message", "data"}``
with the HTTP status equal to ``code``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import email_validator
from litestar.enums import MediaType, RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
)
from litestar.openapi.spec.enums import OpenAPIFormat

from mailqueue import APISettings, Attempt, Mail, MailRecord

__all__ = [
    "AttachmentView",
    "AttemptView",
    "ErrorReply",
    "HealthData",
    "HealthReply",
    "MailView",
    "RecipientView",
    "SendReply",
    "SentData",
    "StatusReply",
    "SuppressedRecipient",
    "error_responses",
    "send_operation",
]


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A refusal or failure. ``data`` names the field and reason for a validation error."""

    code: int
    message: str
    data: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class SentData:
    """The accepted mail's id, for ``GET /api/email/{id}``, and its recipients on the
    suppression list (recorded, not sent to: their outcome will be ``suppressed``)."""

    id: str
    suppressed: list[SuppressedRecipient] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SuppressedRecipient:
    """A recipient of an accepted mail that is on the suppression list, and why."""

    address: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SendReply:
    """The mail is recorded and queued: it will be delivered or end failed/dead, never lost."""

    code: int = 200
    message: str = "success"
    data: SentData


@dataclass(frozen=True, slots=True)
class RecipientView:
    """One envelope recipient: ``pending``, ``sent``, ``failed`` or ``suppressed`` (on the
    suppression list, not sent to; after a bounce report ``bounced`` or ``complained``), with
    the server's last reply (or why it was suppressed, or the report's status and text)."""

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
    ``permanent``, ``unknown``, ``skipped``, ``suppressed`` (every recipient left was on
    the suppression list) or ``error`` (an unexpected failure)."""

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
    415: (
        "The body is neither `multipart/form-data`, `application/json` nor "
        "`application/x-www-form-urlencoded`."
    ),
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


# --- the request body of POST /api/email/send ----------------------------------------------------
#
# The patterns say what the handler refuses (mailqueue.message and routes.py), in the regular
# expressions of JSON Schema (ECMA-262; Python's re reads them the same way): text that goes into
# a header has no control characters, the body none but TAB, CR and LF, every address is what
# email-validator accepts without SMTPUTF8 (a dot-atom local part of at most 64 characters, a
# domain of letter-digit-hyphen labels of at most 63, ending in a letter-only top-level domain
# that is not a special-use name, 254 characters in all). The address pattern is the common form:
# the API also takes internationalized domains (made Punycode). Lone surrogates, which only a JSON
# escape can carry, are refused too but left out of the patterns: validators cannot compile them.

#: Text without control characters, Unicode line separators or lone surrogates (headers, names).
HEADER_TEXT = "[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]"
#: Body text: no control characters but TAB, LF and CR, no lone surrogates.
BODY_TEXT = "[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f]"


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c}]" for c in word)


# the names email-validator refuses as a domain or its last labels
_SPECIAL_USE = "|".join(_any_case(name) for name in email_validator.SPECIAL_USE_DOMAIN_NAMES)
_ATEXT = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = "(?![A-Za-z0-9]{2}--)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
#: One address as the API accepts it (surrounding spaces are dropped).
ADDRESS = (
    "(?![^,]{255})(?![^,@]{65})"
    f"{_ATEXT}+(?:\\.{_ATEXT}+)*@"
    "(?![^,]*[A-Za-z0-9-]{64})"
    f"(?:{_LABEL}\\.)+(?!(?:{_SPECIAL_USE}) *(?:,|$))[A-Za-z]{{2,63}}"
)
_PADDED_ADDRESS = f" *{ADDRESS} *"
_NAME = f"(?:(?!,){HEADER_TEXT}){{0,255}}"
#: Longest ``receiver_name`` text: 100 names of up to 255 characters, and their commas.
NAMES_MAX = 100 * 256
#: Longest ``receiver`` text (the original's limit).
RECEIVER_MAX = 2000
#: A MIME type, as attachments declare it (empty: application/octet-stream).
CONTENT_TYPE = "^(?:[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126})?$"
_BASE64 = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"

# Extra headers and list_unsubscribe (mailqueue.message.check_headers). The schema states a part of
# what is accepted: X-* headers, In-Reply-To and References (at most five message ids each);
# List-Unsubscribe and List-Unsubscribe-Post are accepted in `headers` too but left out here
# (`list_unsubscribe` makes them), as is a mailto URI with a query.
#: Header text that is not only whitespace (the value is stripped).
_NON_SPACE = "[^\\s\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]"
_X_NAME = "[Xx]-[A-Za-z0-9][A-Za-z0-9-]{0,61}"
_X_VALUE = f"{HEADER_TEXT}{{0,400}}{_NON_SPACE}{HEADER_TEXT}{{0,400}}"
_MESSAGE_ID = "<[\\x21-\\x3b\\x3d\\x3f-\\x7e]{1,64}@[A-Za-z0-9.-]{1,100}>"
_MESSAGE_IDS = f" *{_MESSAGE_ID}(?: +{_MESSAGE_ID}){{0,4}} *"
_URI_CHARS = "[!#-+\\--;=?-~]"
_HTTPS = f"https://[A-Za-z0-9](?:[A-Za-z0-9.-]{{0,61}}[A-Za-z0-9])?(?::[0-9]{{1,5}})?(?:[/?#]{_URI_CHARS}{{0,800}})?"
# RFC 6068: a "?" starts the query, so the address has none
_MAILTO = f"mailto:(?![^,]*\\?){ADDRESS}"
#: ``list_unsubscribe``: an https URL and/or a mailto URI, comma separated.
UNSUBSCRIBE = f"^ *(?:{_HTTPS}(?: *, *{_MAILTO})?|{_MAILTO}(?: *, *{_HTTPS})?) *$"
#: One ``headers`` form field.
HEADER_LINE = f"^(?:{_X_NAME}: *{_X_VALUE}|In-Reply-To: *{_MESSAGE_IDS}|References: *{_MESSAGE_IDS})$"
_HEADERS_DESCRIPTION = (
    "Extra headers from an allow-list: `X-*`, `In-Reply-To` and `References` (message ids `<local@domain>`, "
    "space separated), `List-Unsubscribe` and `List-Unsubscribe-Post` (prefer `list_unsubscribe`); any "
    f"other name is refused. At most {Mail.HEADERS_MAX}; a value at most {Mail.HEADER_VALUE_MAX} characters "
    "without control characters (non-ASCII text is RFC 2047-encoded)."
)


def _text(
    description: str,
    *,
    max_length: int | None = None,
    min_length: int | None = None,
    pattern: str | None = None,
) -> Schema:
    return Schema(
        type=OpenAPIType.STRING,
        description=description,
        max_length=max_length,
        min_length=min_length,
        pattern=pattern,
    )


def _receiver_text(most: int) -> Schema:
    return _text(
        f"Recipient addresses, comma separated (at most {most}; spaces around them are dropped).",
        min_length=1,
        max_length=RECEIVER_MAX,
        pattern=f"^{_PADDED_ADDRESS}(?:,{_PADDED_ADDRESS}){{0,{most - 1}}}$",
    )


def _names_text(most: int) -> Schema:
    return _text(
        "Optional display names, comma separated, each at most 255 characters without control "
        "characters. When given, there are as many names as addresses in `receiver`.",
        max_length=NAMES_MAX,
        pattern=f"^{_NAME}(?:,{_NAME}){{0,{most - 1}}}$",
    )


def _address_text(name: str, description: str, most: int) -> Schema:
    return _text(
        f"{description}: addresses, comma separated, as in `receiver` (at most {most}).",
        min_length=1,
        max_length=RECEIVER_MAX,
        pattern=f"^{_PADDED_ADDRESS}(?:,{_PADDED_ADDRESS}){{0,{most - 1}}}$",
    )


def _address_fields(limits: APISettings, *, json: bool) -> dict[str, Reference | Schema]:
    """cc, cc_name, bcc, reply_to, reply_to_name: as receiver and receiver_name (JSON: or lists)."""
    most = limits.max_recipients
    fields: dict[str, Reference | Schema] = {}
    for name, description, count, names in (
        ("cc", "Cc recipients", most, "cc_name"),
        ("bcc", "Bcc recipients, never shown in the message", most, None),
        ("reply_to", "Reply-To addresses", 10, "reply_to_name"),
    ):
        text = _address_text(name, description, count)
        fields[name] = (
            Schema(
                one_of=[
                    text,
                    Schema(
                        type=OpenAPIType.ARRAY,
                        min_items=1,
                        max_items=count,
                        items=_text("An address.", pattern=f"^{_PADDED_ADDRESS}$"),
                    ),
                ],
                description=text.description,
            )
            if json
            else text
        )
        if names is not None:
            names_text = _text(
                f"Optional display names of `{name}`, comma separated; when given, one per address.",
                max_length=count * 256,
                pattern=f"^{_NAME}(?:,{_NAME}){{0,{count - 1}}}$",
            )
            fields[names] = (
                Schema(
                    one_of=[
                        names_text,
                        Schema(
                            type=OpenAPIType.ARRAY,
                            max_items=count,
                            items=_text("A display name (no comma).", pattern=f"^{_NAME}$"),
                        ),
                    ],
                    description=names_text.description,
                )
                if json
                else names_text
            )
    unsubscribe = _text(
        "List-Unsubscribe URIs: an https URL and/or a mailto URI, comma separated (http is refused: "
        "one-click unsubscribe needs https). An https URL adds `List-Unsubscribe-Post: "
        "List-Unsubscribe=One-Click` (RFC 8058).",
        min_length=1,
        max_length=2 * Mail.UNSUBSCRIBE_URI_MAX + 2,
        pattern=UNSUBSCRIBE,
    )
    fields["list_unsubscribe"] = (
        Schema(
            one_of=[
                unsubscribe,
                Schema(
                    type=OpenAPIType.ARRAY,
                    min_items=1,
                    max_items=1,
                    items=_text("An https URL or a mailto URI.", pattern=f"^(?:{_HTTPS}|{_MAILTO})$"),
                ),
            ],
            description=unsubscribe.description,
        )
        if json
        else unsubscribe
    )
    return fields


def _headers_schema(*, json: bool) -> Schema:
    if json:
        value = f"^{_MESSAGE_IDS}$"
        return Schema(
            type=OpenAPIType.OBJECT,
            description=f"{_HEADERS_DESCRIPTION} An object of names and values.",
            max_properties=Mail.HEADERS_MAX,
            properties={
                "In-Reply-To": _text("Message ids.", pattern=value),
                "References": _text("Message ids.", pattern=value),
            },
            pattern_properties={f"^{_X_NAME}$": _text("Header text.", pattern=f"^{_X_VALUE}$")},
            additional_properties=False,
        )
    return Schema(
        type=OpenAPIType.ARRAY,
        description=f"{_HEADERS_DESCRIPTION} Repeat the field, one `Name: value` each.",
        max_items=Mail.HEADERS_MAX,
        items=_text("`Name: value`", max_length=64 + 2 + Mail.HEADER_VALUE_MAX, pattern=HEADER_LINE),
    )


def _text_fields() -> dict[str, Schema]:
    return {
        "title": _text(
            "Subject, without control characters.",
            min_length=1,
            max_length=255,
            pattern=f"^{HEADER_TEXT}*$",
        ),
        "content": _text(
            "Body; HTML allowed. No control characters but TAB, LF and CR.",
            min_length=1,
            max_length=65535,
            pattern=f"^{BODY_TEXT}*$",
        ),
        "sender_name": _text(
            "Display name of the sender (the From address itself is configured), without control characters.",
            min_length=1,
            max_length=50,
            pattern=f"^{HEADER_TEXT}*$",
        ),
        "text": _text(
            "The plain-text alternative of `content`; when not given, the worker makes one from the HTML. "
            "No control characters but TAB, LF and CR.",
            max_length=65535,
            pattern=f"^{BODY_TEXT}*$",
        ),
    }


_REQUIRED = ["title", "content", "sender_name", "receiver"]


def _form_schema(limits: APISettings, *, files: bool) -> Schema:
    properties: dict[str, Reference | Schema] = {
        **_text_fields(),
        "receiver": _receiver_text(limits.max_recipients),
        "receiver_name": _names_text(limits.max_recipients),
        **_address_fields(limits, json=False),
        "headers": _headers_schema(json=False),
    }
    if files:
        properties["attachment[]"] = Schema(
            type=OpenAPIType.ARRAY,
            description=(
                f"Files to attach, all under this field name (`attachment` is accepted too): at most "
                f"{limits.max_attachments}, each at most {limits.max_attachment_bytes} bytes."
            ),
            max_items=limits.max_attachments,
            items=Schema(
                type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY, max_length=limits.max_attachment_bytes
            ),
        )
    return Schema(
        type=OpenAPIType.OBJECT, required=_REQUIRED, properties=properties, additional_properties=False
    )


def _json_schema(limits: APISettings) -> Schema:
    most = limits.max_recipients
    encoded_max = -(-limits.max_attachment_bytes // 3) * 4
    return Schema(
        type=OpenAPIType.OBJECT,
        required=_REQUIRED,
        additional_properties=False,
        properties={
            **_text_fields(),
            "receiver": Schema(
                one_of=[
                    _receiver_text(most),
                    Schema(
                        type=OpenAPIType.ARRAY,
                        min_items=1,
                        max_items=most,
                        items=_text("An address.", pattern=f"^{_PADDED_ADDRESS}$"),
                    ),
                ],
                description=(
                    f"Recipient addresses (a list is joined with commas: {RECEIVER_MAX} characters at most)."
                ),
            ),
            "receiver_name": Schema(
                one_of=[
                    _names_text(most),
                    Schema(
                        type=OpenAPIType.ARRAY,
                        max_items=most,
                        items=_text("A display name (no comma).", pattern=f"^{_NAME}$"),
                    ),
                ],
                description="Optional display names: when given, one per address.",
            ),
            **_address_fields(limits, json=True),
            "headers": _headers_schema(json=True),
            "attachment": Schema(
                type=OpenAPIType.ARRAY,
                description=(
                    f"At most {limits.max_attachments} files, each at most "
                    f"{limits.max_attachment_bytes} bytes."
                ),
                max_items=limits.max_attachments,
                items=Schema(
                    type=OpenAPIType.OBJECT,
                    required=["filename", "content"],
                    additional_properties=False,
                    properties={
                        "filename": _text(
                            "Display name of the file, without control characters (path parts are dropped).",
                            min_length=1,
                            pattern=f"^{HEADER_TEXT}*$",
                        ),
                        "content": Schema(
                            type=OpenAPIType.STRING,
                            content_encoding="base64",
                            description="The file's bytes, in base64.",
                            max_length=encoded_max,
                            pattern=_BASE64,
                        ),
                        "content_type": _text(
                            "MIME type; default application/octet-stream.", pattern=CONTENT_TYPE
                        ),
                    },
                ),
            ),
        },
    )


def _send_body(limits: APISettings) -> RequestBody:
    return RequestBody(
        required=True,
        description=(
            "The original service's form (`multipart/form-data`, or URL-encoded without files), or "
            "the same fields as JSON with attachments inline in base64. An `Idempotency-Key` header "
            "makes a repeat return the first mail."
        ),
        content={
            "multipart/form-data": OpenAPIMediaType(schema=_form_schema(limits, files=True)),
            MediaType.JSON.value: OpenAPIMediaType(schema=_json_schema(limits)),
            RequestEncodingType.URL_ENCODED.value: OpenAPIMediaType(schema=_form_schema(limits, files=False)),
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
    schema=Schema(type=OpenAPIType.STRING, min_length=1, max_length=255, pattern="^[!-~]{1,255}$"),
)


def send_operation(limits: APISettings) -> type[Operation]:
    """The send operation with its body and ``Idempotency-Key`` header documented, with these
    limits: the handler reads both itself (the body while it streams), so Litestar cannot infer them."""
    body = _send_body(limits)

    @dataclass
    class SendOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = body
            self.parameters = [*(self.parameters or []), _IDEMPOTENCY_KEY]

    return SendOperation
