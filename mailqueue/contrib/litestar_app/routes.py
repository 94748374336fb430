"""The route handlers: send, status, health.

``POST /api/email/send`` reads its body itself, as it arrives: text fields
are kept (each bounded), files are streamed into the AttachmentStore while
they are uploaded. Only once the whole body is in and valid is the mail
recorded and queued (``MailQueue.submit``); if anything fails on the way,
every attachment stored for the request is deleted again, so a refused
request leaves no file, row or queued message behind.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath

from mailqueue import (
    APISettings,
    Attachment,
    AttachmentError,
    AttachmentRef,
    AttachmentTooLargeError,
    BackendError,
    Mail,
    MailQueue,
    MailQueueError,
    QueueError,
    ValidationError,
    list_unsubscribe_headers,
    metrics,
    parse_recipients,
)
from mailqueue.contrib.litestar_app.formdata import (
    FormError,
    FormTooLarge,
    LimitedStream,
    MultipartReader,
    Part,
)
from mailqueue.contrib.litestar_app.plugin import MailQueuePlugin
from mailqueue.contrib.litestar_app.schemas import (
    HealthData,
    HealthReply,
    MailView,
    SendReply,
    SentData,
    StatusReply,
    SuppressedRecipient,
    error_responses,
    send_operation,
)

__all__ = ["ApiError", "get_mail", "live", "ready", "send_email", "send_route"]

logger = logging.getLogger("mailqueue.api")

#: The text fields (the original form's, then mailqueue's) and the most characters each may hold.
TEXT_FIELDS: Mapping[str, int] = {
    "title": Mail.SUBJECT_MAX,
    "content": Mail.BODY_MAX,
    "sender_name": Mail.SENDER_NAME_MAX,
    "receiver": 2000,
    # up to 100 names of up to 255 characters, and their commas
    "receiver_name": 100 * 256,
    "text": Mail.BODY_MAX,
    "cc": 2000,
    "cc_name": 100 * 256,
    "bcc": 2000,
    "reply_to": 2000,
    "reply_to_name": 10 * 256,
    # an https URL and a mailto URI
    "list_unsubscribe": 2 * Mail.UNSUBSCRIBE_URI_MAX + 2,
}
REQUIRED_FIELDS = ("title", "content", "sender_name", "receiver")
#: Address fields besides ``receiver``, each with its display-name field (none for bcc: never shown).
ADDRESS_FIELDS: Mapping[str, str | None] = {"cc": "cc_name", "bcc": None, "reply_to": "reply_to_name"}
#: The repeatable form field of extra headers, one ``Name: value`` each.
HEADERS_FIELD = "headers"
#: Most characters of one ``headers`` form field: the longest name, ": " and the longest value.
HEADER_FIELD_MAX = 64 + 2 + Mail.HEADER_VALUE_MAX
FILE_FIELDS = frozenset({"attachment[]", "attachment"})
#: Parts a multipart body may have besides its files (text fields, headers, ignored extras).
EXTRA_PARTS = 32 + Mail.HEADERS_MAX
#: Most bytes of an ``application/x-www-form-urlencoded`` body (text only).
MAX_URLENCODED_BYTES = 2 * 1024 * 1024
#: Longest Idempotency-Key, in characters.
MAX_IDEMPOTENCY_KEY = 255

# Mail's field names, as the form calls them.
_FORM_NAMES = {
    "subject": "title",
    "html": "content",
    "sender_name": "sender_name",
    "to": "receiver",
    "receiver": "receiver",
    "receiver_name": "receiver_name",
    "text": "text",
    "cc": "cc",
    "bcc": "bcc",
    "reply_to": "reply_to",
    "headers": "headers",
    "attachments": "attachment[]",
    "attachment": "attachment[]",
    "idempotency_key": "Idempotency-Key",
}


class ApiError(HTTPException):
    """An error answered in the envelope, with an optional ``data`` payload."""

    def __init__(
        self,
        status_code: int,
        message: str,
        data: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail=message, status_code=status_code, headers=headers)
        self.data = data


def _form_name(field_path: str) -> str:
    head = field_path.split(".", 1)[0].split("[", 1)[0]
    return _FORM_NAMES.get(head, field_path)


def invalid(field_name: str, reason: str, errors: Sequence[tuple[str, str]] = ()) -> ApiError:
    """400 for one field."""
    data: dict[str, Any] = {"field": field_name, "reason": reason}
    if len(errors) > 1:
        data["errors"] = [{"field": _form_name(f), "reason": r} for f, r in errors]
    return ApiError(400, f"Param is invalid: {field_name}: {reason}", data)


def missing(field_name: str) -> ApiError:
    """400 for a required field that is missing or empty (the original's wording)."""
    return ApiError(
        400,
        f"Param is invalid: {field_name} is required",
        {"field": field_name, "reason": "is required"},
    )


def from_validation(exc: ValidationError) -> ApiError:
    """400 naming the form field behind a :class:`mailqueue.ValidationError`."""
    return invalid(_form_name(exc.field), exc.reason, exc.errors)


def too_large(message: str, limit: int) -> ApiError:
    """413 with the limit that was exceeded."""
    return ApiError(413, f"Request Entity Too Large: {message}", {"limit": limit})


def unavailable(message: str, data: dict[str, Any] | None = None) -> ApiError:
    """503: a backend could not confirm."""
    return ApiError(503, f"Service Unavailable: {message}", data)


# --- reading the request --------------------------------------------------------


@dataclass
class _Submission:
    """What one send request has delivered so far."""

    mailqueue: MailQueue
    limits: APISettings
    fields: dict[str, str] = field(default_factory=dict)
    headers: list[tuple[str, str]] = field(default_factory=list)
    refs: list[AttachmentRef] = field(default_factory=list)
    files: int = 0

    def add_text(self, name: str, value: str) -> None:
        if name in self.fields:
            raise invalid(name, "is given more than once")
        if len(value) > TEXT_FIELDS[name]:
            raise invalid(name, f"must be at most {TEXT_FIELDS[name]} characters")
        self.fields[name] = value

    def add_header(self, name: str, value: str) -> None:
        """One extra header (checked with the others when the mail is built)."""
        if len(self.headers) == Mail.HEADERS_MAX:
            raise invalid(HEADERS_FIELD, f"at most {Mail.HEADERS_MAX} headers are allowed")
        self.headers.append((name, value))

    def add_form_header(self, line: str) -> None:
        """One ``headers`` form field: ``Name: value``."""
        if len(line) > HEADER_FIELD_MAX:
            raise invalid(HEADERS_FIELD, f"each must be at most {HEADER_FIELD_MAX} characters")
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise invalid(HEADERS_FIELD, "each must be 'Name: value'")
        self.add_header(name.strip(), value)

    def count_file(self) -> None:
        self.files += 1
        if self.files > self.limits.max_attachments:
            raise too_large(
                f"at most {self.limits.max_attachments} attachments are allowed", self.limits.max_attachments
            )

    async def store(self, filename: str, content: Any, content_type: str) -> None:
        """Stream one attachment into the AttachmentStore and remember its reference."""
        limit = self.limits.max_attachment_bytes
        try:
            ref = await self.mailqueue.store_attachment(
                Attachment(filename, content, content_type), max_bytes=limit
            )
        except AttachmentTooLargeError:
            raise too_large(f"attachment {filename!r} is larger than {limit} bytes", limit) from None
        self.refs.append(ref)

    def build(self, idempotency_key: str | None) -> Mail:
        """The mail, once every field is in (attachments: those stored so far)."""
        for name in REQUIRED_FIELDS:
            if not self.fields.get(name):
                raise missing(name)
        fields = self.fields
        for name, names in ADDRESS_FIELDS.items():
            if names is not None and fields.get(names, "").strip() and not fields.get(name, "").strip():
                raise invalid(names, f"is given without {name}")
        receiver = fields["receiver"]
        count = receiver.count(",") + 1
        total = count + sum(
            fields[name].count(",") + 1 for name in ("cc", "bcc") if fields.get(name, "").strip()
        )
        most = self.limits.max_recipients
        if count > most:
            raise too_large(f"{count} receivers; at most {most} are allowed", most)
        if total > most:
            raise too_large(f"{total} recipients (receiver, cc and bcc); at most {most} are allowed", most)
        try:
            recipients = {
                name: parse_recipients(
                    fields[name], fields.get(names or "", ""), field=name, names_field=names or ""
                )
                if fields.get(name, "").strip()
                else ()
                for name, names in ADDRESS_FIELDS.items()
            }
            return Mail(
                subject=fields["title"],
                html=fields["content"],
                text=fields.get("text") or None,
                sender_name=fields["sender_name"],
                to=parse_recipients(receiver, fields.get("receiver_name", "")),
                **recipients,
                headers=self._headers(),
                attachments=tuple(self.refs),
                idempotency_key=idempotency_key,
            )
        except ValidationError as exc:
            raise from_validation(exc) from None

    def _headers(self) -> list[tuple[str, str]]:
        """The extra headers, with those of ``list_unsubscribe``."""
        uris = self.fields.get("list_unsubscribe", "")
        if not uris.strip():
            return self.headers
        if any(name.lower().startswith("list-unsubscribe") for name, _ in self.headers):
            raise invalid("list_unsubscribe", "give it here or as List-Unsubscribe headers, not both")
        return [*self.headers, *list_unsubscribe_headers(*uris.split(","))]

    async def discard(self) -> None:
        """Delete every attachment stored for this request."""
        refs, self.refs = self.refs, []
        await self.mailqueue.discard_attachments(refs)


def _check_filename(field_name: str, filename: str) -> None:
    """Refuse a file name that cannot be made a safe display name (control characters);
    anything else is sanitized when stored (path parts, quotes dropped, shortened).
    The reason names the file unless the field already is the file name."""
    try:
        AttachmentRef(key="check", filename=filename, size=0, sha256="0" * 64)
    except ValidationError as exc:
        named = field_name.endswith(".filename")
        raise invalid(field_name, exc.reason if named else f"file name {filename!r} {exc.reason}") from None


def _decode_text(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(name, "is not valid UTF-8") from None


async def _read_multipart(
    submission: _Submission, body: LimitedStream, boundary: str, content_length: int | None
) -> None:
    reader = MultipartReader(
        body,
        boundary,
        content_length=content_length,
        max_parts=submission.limits.max_attachments + EXTRA_PARTS,
    )
    while (part := await reader.next_part()) is not None:
        if part.name in TEXT_FIELDS:
            await _read_text_part(submission, part)
        elif part.name == HEADERS_FIELD and part.filename is None:
            data = await part.read(4 * HEADER_FIELD_MAX)
            if data is None:
                raise invalid(HEADERS_FIELD, f"each must be at most {HEADER_FIELD_MAX} characters")
            submission.add_form_header(_decode_text(HEADERS_FIELD, data))
        elif part.name in FILE_FIELDS:
            await _read_file_part(submission, part)
        elif part.filename is not None:
            raise invalid(part.name, "unknown file field; attachments go in 'attachment[]'")
        else:
            # unknown text fields are ignored, as the original did
            await part.skip()


async def _read_text_part(submission: _Submission, part: Part) -> None:
    limit = TEXT_FIELDS[part.name]
    # a character is at most 4 bytes of UTF-8
    data = await part.read(4 * limit)
    if data is None:
        raise invalid(part.name, f"must be at most {limit} characters")
    submission.add_text(part.name, _decode_text(part.name, data))


async def _read_file_part(submission: _Submission, part: Part) -> None:
    if not part.filename and await part.is_empty():
        # what a browser sends for a file input left empty
        return
    submission.count_file()
    filename = part.filename or "attachment"
    _check_filename("attachment[]", filename)
    content_type = part.content_type or "application/octet-stream"
    if not _valid_content_type(content_type):
        content_type = "application/octet-stream"
    await submission.store(filename, part.chunks(), content_type)


def _valid_content_type(value: str) -> bool:
    try:
        AttachmentRef(key="check", filename="f", content_type=value, size=0, sha256="0" * 64)
    except ValidationError:
        return False
    return True


def _loads_object(data: bytes) -> dict[str, Any]:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise invalid(key, "is given more than once")
            result[key] = value
        return result

    try:
        value = json.loads(data, object_pairs_hook=pairs)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, "Param is invalid: the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "Param is invalid: the JSON body must be an object")
    return value


def _json_names(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        for index, item in enumerate(value):
            if "," in item:
                raise invalid(name, f"item {index} must not contain a comma")
        return ",".join(value)
    raise invalid(name, "must be a string or a list of strings")


async def _read_json(submission: _Submission, body: LimitedStream, idempotency_key: str | None) -> Mail:
    document = _loads_object(await body.read())
    for name, value in document.items():
        if name in ("title", "content", "sender_name", "text"):
            if value is not None and not isinstance(value, str):
                raise invalid(name, "must be a string")
            if value:
                submission.add_text(name, value)
        elif name in TEXT_FIELDS:  # the address and name fields, list_unsubscribe
            if value is not None and value != []:
                text = _json_names(name, value)
                if text:
                    submission.add_text(name, text)
        elif name == HEADERS_FIELD:
            _json_headers(submission, value)
        elif name != "attachment":
            raise invalid(name, "unknown field")
    attachments = document.get("attachment") or []
    if not isinstance(attachments, list):
        raise invalid("attachment", "must be a list of {filename, content, content_type}")
    if len(attachments) > submission.limits.max_attachments:
        limit = submission.limits.max_attachments
        raise too_large(f"at most {limit} attachments are allowed", limit)
    decoded = [_json_attachment(index, item, submission.limits) for index, item in enumerate(attachments)]
    # everything is checked before anything is stored
    mail = submission.build(idempotency_key)
    for filename, content, content_type in decoded:
        await submission.store(filename, content, content_type)
    return mail.model_copy(update={"attachments": tuple(submission.refs)})


def _json_headers(submission: _Submission, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise invalid(HEADERS_FIELD, "must be an object of header names and values")
    for name, text in value.items():
        if not isinstance(text, str):
            raise invalid(HEADERS_FIELD, f"the value of {name!r} must be a string")
        if len(name) > 64 or len(text) > Mail.HEADER_VALUE_MAX + 64:
            raise invalid(HEADERS_FIELD, f"the header {name[:64]!r} is too long")
        submission.add_header(name, text)


def _json_attachment(index: int, item: Any, limits: APISettings) -> tuple[str, bytes, str]:
    where = f"attachment[{index}]"
    if not isinstance(item, dict):
        raise invalid(where, "must be an object {filename, content, content_type}")
    unknown = set(item) - {"filename", "content", "content_type"}
    if unknown:
        raise invalid(f"{where}.{sorted(unknown)[0]}", "unknown field")
    filename = item.get("filename")
    if not isinstance(filename, str) or not filename:
        raise missing(f"{where}.filename")
    _check_filename(f"{where}.filename", filename)
    content_type = item.get("content_type") or "application/octet-stream"
    if not isinstance(content_type, str) or not _valid_content_type(content_type):
        raise invalid(f"{where}.content_type", "must be a MIME type such as 'application/pdf'")
    encoded = item.get("content")
    if not isinstance(encoded, str):
        raise missing(f"{where}.content")
    if len(encoded) // 4 * 3 > limits.max_attachment_bytes + 3:
        raise too_large(
            f"attachment {filename!r} is larger than {limits.max_attachment_bytes} bytes",
            limits.max_attachment_bytes,
        )
    try:
        content = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{where}.content", "is not valid base64") from None
    if len(content) > limits.max_attachment_bytes:
        raise too_large(
            f"attachment {filename!r} is larger than {limits.max_attachment_bytes} bytes",
            limits.max_attachment_bytes,
        )
    return filename, content, content_type.strip().lower()


async def _read_urlencoded(submission: _Submission, body: LimitedStream) -> None:
    from urllib.parse import parse_qsl

    if body.limit > MAX_URLENCODED_BYTES:
        body.limit = MAX_URLENCODED_BYTES
    try:
        pairs = parse_qsl((await body.read()).decode("ascii"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "Param is invalid: the form body is not valid URL encoding of UTF-8") from None
    for name, value in pairs:
        if name in TEXT_FIELDS:
            submission.add_text(name, value)
        elif name == HEADERS_FIELD:
            submission.add_form_header(value)
        elif name in FILE_FIELDS:
            raise invalid("attachment[]", "files need a multipart/form-data body")


def _check_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 0 < len(value) <= MAX_IDEMPOTENCY_KEY or not all(0x21 <= ord(c) <= 0x7E for c in value):
        raise invalid("Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters")
    return value


# --- handlers -------------------------------------------------------------------


async def _send_email(request: Request[Any, Any, Any]) -> Response[SendReply]:
    """Accept a mail (multipart form, JSON or URL-encoded form)."""
    # the plugin straight from the app: no dependency to resolve on every request
    mailqueue_plugin = request.app.plugins.get(MailQueuePlugin)
    mailqueue = mailqueue_plugin.mailqueue
    limits = mailqueue_plugin.settings.api
    media_type, options = request.content_type
    if media_type not in ("multipart/form-data", "application/json", "application/x-www-form-urlencoded"):
        raise ApiError(
            415,
            "Unsupported Media Type: send multipart/form-data, application/json "
            "or application/x-www-form-urlencoded",
        )
    content_length = request.content_length
    if content_length is not None and content_length > limits.max_request_bytes:
        raise too_large(
            f"Content-Length {content_length} is larger than the limit of {limits.max_request_bytes} bytes",
            limits.max_request_bytes,
        )
    key = _check_idempotency_key(request.headers.get("idempotency-key"))
    if key is not None:
        existing = await _existing(mailqueue, key)
        if existing is not None:
            return _sent(existing)

    submission = _Submission(mailqueue, limits)
    body = LimitedStream(request.stream(), limits.max_request_bytes)
    mail: Mail | None = None
    try:
        try:
            if media_type == "multipart/form-data":
                boundary = options.get("boundary")
                if not boundary:
                    raise ApiError(
                        400, "Param is invalid: malformed multipart body: no boundary in Content-Type"
                    )
                await _read_multipart(submission, body, boundary, content_length)
                mail = submission.build(key)
            elif media_type == "application/json":
                mail = await _read_json(submission, body, key)
            else:
                await _read_urlencoded(submission, body)
                mail = submission.build(key)
            # with reject_suppressed, submit refuses them (400); else the answer lists them
            suppressed = {} if mailqueue.reject_suppressed else await mailqueue.suppressed(mail)
            record = await mailqueue.submit(mail, idempotency_key=key)
        except FormTooLarge as exc:
            raise too_large(str(exc), exc.limit) from None
        except FormError as exc:
            raise ApiError(400, f"Param is invalid: {exc}") from None
        except ValidationError as exc:
            raise from_validation(exc) from None
        except QueueError as exc:
            if mail is None or not await _recorded(mailqueue, mail.id):
                logger.error("the queue failed while accepting a mail: %s", exc)
                raise unavailable("the mail could not be queued; try again") from None
            # the record exists (status queued) and refers to the attachments: they stay
            submission.refs = []
            logger.error("mail id=%s is recorded but the queue did not confirm it: %s", mail.id, exc)
            raise unavailable(
                "the queue did not confirm the mail. It is recorded; retry with the same "
                "Idempotency-Key to queue it without making a duplicate",
                {"id": mail.id},
            ) from None
        except (BackendError, AttachmentError) as exc:
            logger.error("a backend failed while accepting a mail: %s", exc)
            raise unavailable("the mail could not be recorded; try again") from None
    except BaseException:
        # shielded: the clean-up must finish even if this task is being cancelled
        await asyncio.shield(submission.discard())
        raise
    finally:
        await body.aclose()
    if record.id != mail.id:
        # an earlier request with the same Idempotency-Key won: keep nothing of this one
        await submission.discard()
    return _sent(record.id, [SuppressedRecipient(a, e.reason.value) for a, e in suppressed.items()])


def send_route(limits: APISettings) -> HTTPRouteHandler:
    """``POST /email/send``, its OpenAPI schema stating these limits (the handler reads the
    app's own from the plugin: pass the ``api`` settings the app is made with)."""
    return post(
        "/email/send",
        status_code=200,
        summary="Send a mail",
        description=(
            "Accept a mail: stream its attachments into storage, record it, queue it. Answers 200 only "
            "once the mail is recorded and the queue confirmed it."
        ),
        operation_class=send_operation(limits),
        # the handler enforces settings.api.max_request_bytes itself, while streaming
        request_max_body_size=None,
        responses=error_responses(400, 401, 413, 415, 503),
        tags=["email"],
    )(_send_email)


#: The send route with the default limits.
send_email = send_route(APISettings())


def _sent(mail_id: str, suppressed: list[SuppressedRecipient] | None = None) -> Response[SendReply]:
    return Response(SendReply(data=SentData(id=mail_id, suppressed=suppressed or [])), status_code=200)


async def _existing(mailqueue: MailQueue, key: str) -> str | None:
    try:
        record = await mailqueue.find_by_idempotency_key(key)
    except BackendError as exc:
        logger.error("could not look up an idempotency key: %s", exc)
        raise unavailable("the store could not be read; try again") from None
    if record is None:
        return None
    try:
        # a first request that got 503 from the queue is published now, or this one gets 503 too
        await mailqueue.ensure_queued(record)
    except BackendError as exc:
        logger.error("mail id=%s is recorded but the queue still does not confirm it: %s", record.id, exc)
        raise unavailable("the queue did not confirm the mail; retry later", {"id": record.id}) from None
    return record.id


async def _recorded(mailqueue: MailQueue, mail_id: str) -> bool:
    try:
        return await mailqueue.status(mail_id) is not None
    except MailQueueError:
        # cannot tell: keep the attachments, a record may refer to them
        return True


@get(
    "/email/{mail_id:str}",
    summary="A mail's state",
    description=(
        "Status, attempts, per-recipient outcomes, last error and timestamps (never attachment content)."
    ),
    responses=error_responses(401, 404, 503),
    tags=["email"],
)
async def get_mail(mail_id: FromPath[str], mailqueue: NamedDependency[MailQueue]) -> StatusReply:
    """The record of one mail."""
    if not 0 < len(mail_id) <= 64 or not all(c.isascii() and (c.isalnum() or c in "_-") for c in mail_id):
        raise ApiError(404, f"Not Found: no mail with id {mail_id!r}")
    try:
        record = await mailqueue.status(mail_id)
    except BackendError as exc:
        logger.error("could not read mail id=%s: %s", mail_id, exc)
        raise unavailable("the store could not be read; try again") from None
    if record is None:
        raise ApiError(404, f"Not Found: no mail with id {mail_id!r}")
    return StatusReply(data=MailView.of(record))


@get("/health/live", summary="The process is up", tags=["health"])
async def live() -> HealthReply:
    """200 while the process serves requests."""
    return HealthReply(data=HealthData(status="live"))


@get(
    "/health/ready",
    summary="The store and the queue are reachable",
    responses={
        503: ResponseSpec(
            data_container=HealthReply, description="Not ready: a check failed.", generate_examples=False
        )
    },
    tags=["health"],
)
async def ready(mailqueue_plugin: NamedDependency[MailQueuePlugin]) -> Response[HealthReply]:
    """200 when the store answers and the queue can be read (and the worker, if any, runs); else 503."""
    checks = await mailqueue_plugin.readiness()
    if all(value == "ok" for value in checks.values()):
        return Response(HealthReply(data=HealthData(status="ready", checks=checks)))
    failed = ", ".join(f"{name} {value}" for name, value in checks.items() if value != "ok")
    return Response(
        HealthReply(code=503, message=f"Service Unavailable: {failed}", data=HealthData("not ready", checks)),
        status_code=503,
    )


@get("/metrics", summary="Prometheus metrics", tags=["health"], include_in_schema=False)
async def metrics_endpoint(mailqueue_plugin: NamedDependency[MailQueuePlugin]) -> Response[bytes]:
    """Every ``mailqueue_*`` metric in the Prometheus text format; never authenticated, like the probes."""
    mq = mailqueue_plugin.mailqueue
    await metrics.refresh_queue_gauges(mq.queue, mq.store)
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)
