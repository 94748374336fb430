"""The message model: what an application asks mailqueue to send.

Every model validates on construction and raises
:class:`mailqueue.errors.ValidationError` naming the field and the reason.
The rules are those of the original service (subject 1-255 characters, body
1-65535, sender name up to 50, names count equal to addresses count) plus the
bad-input guarantees of mailqueue: no control characters in anything that
ends up in a header, addresses checked by ``email-validator``, a bounded
number of recipients, display-only attachment names.
"""

from __future__ import annotations

import os
import re
import time
import unicodedata
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Self

import email_validator
import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mailqueue.errors import ValidationError

__all__ = [
    "MAX_HEADERS",
    "MAX_RECIPIENTS",
    "Attachment",
    "AttachmentRef",
    "Mail",
    "Recipient",
    "allow_special_domains",
    "check_header",
    "check_headers",
    "list_unsubscribe_headers",
    "new_id",
    "parse_recipients",
    "sanitize_filename",
]

#: Most recipients (to + cc + bcc) one mail may have.
MAX_RECIPIENTS = 100
#: Longest display name kept for an attachment, in characters.
MAX_FILENAME_CHARS = 150

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_TYPE_RE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$"
)
_MESSAGE_ID_RE = re.compile(r"^<[\x21-\x3b\x3d\x3f-\x7e]{1,200}@[A-Za-z0-9.-]{1,253}>$")
# Leading whitespace, dots, quotes and angle brackets; trailing whitespace,
# quotes and angle brackets: stripped in one pass so that sanitizing is
# idempotent (a name must survive re-validation unchanged). Quotes and angle
# brackets go because parsers take them for quoting (Python's own unquotes an
# RFC 2231 value that has them).
_NAME_EDGES_RE = re.compile(r'^[\s."<>]+|[\s"<>]+$')
# U+2028/U+2029 are line breaks to some parsers; Cc covers C0, DEL and C1.
_LINE_SEPARATORS = frozenset("\u2028\u2029")
# What check_body_text refuses: C0 controls but TAB, LF and CR; lone surrogates.
_BODY_BAD_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")


def new_id() -> str:
    """Return a new public message id: 32 lowercase hex digits, time-ordered.

    The first 12 digits are the milliseconds since the epoch, so ids sort by
    creation time (handy for keyset pagination); the other 20 are random.
    """
    millis = time.time_ns() // 1_000_000
    return f"{millis:012x}{os.urandom(10).hex()}"


def check_header_text(value: str) -> str:
    """Refuse text that cannot safely go into a header.

    Raises:
        ValueError: on control characters (CR, LF, NUL, TAB, DEL, C1),
            Unicode line separators or lone surrogates.
    """
    if value.isprintable():
        # no Cc, Cs, Zl or Zp character at all (the common case, without a loop in Python)
        return value
    for char in value:
        if char in _LINE_SEPARATORS or unicodedata.category(char) in ("Cc", "Cs"):
            raise ValueError(f"must not contain control characters (found U+{ord(char):04X})")
    return value


def check_body_text(value: str) -> str:
    """Refuse body text that SMTP cannot carry: NUL and other C0 controls
    except TAB, CR and LF, and lone surrogates."""
    found = _BODY_BAD_RE.search(value)
    if found is not None:
        raise ValueError(f"must not contain control characters (found U+{ord(found.group()):04X})")
    return value


# Domains (and their subdomains) accepted although special-use, reserved or dotless:
# the ``allowed_special_domains`` setting, process-wide (see allow_special_domains).
_allowed_special: frozenset[str] = frozenset()
_HOST_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def allow_special_domains(domains: Iterable[str]) -> None:
    """Accept addresses at ``domains`` and their subdomains although ``email-validator``
    refuses them as special-use or reserved (``test``, ``local``, ``localhost``...) or as
    dotless, e.g. for an internal relay.

    Process-wide and additive (the ``allowed_special_domains`` setting, applied by
    :meth:`MailQueue.from_settings <mailqueue.MailQueue.from_settings>`): an address
    accepted once must stay valid when a worker reads it back.
    """
    global _allowed_special
    _allowed_special = _allowed_special | {d.strip().strip(".").lower() for d in domains if d.strip(".")}


def _allowed_special_address(address: str) -> str | None:
    """``address`` checked for an allowed special domain; ``None`` if its domain is not one."""
    local, at, domain = address.rpartition("@")
    domain = domain.lower()
    if not at or not any(domain == d or domain.endswith("." + d) for d in _allowed_special):
        return None
    if len(domain) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in domain.split(".")):
        raise ValueError(f"invalid address {address!r}: the part after the @-sign is not a valid host name")
    try:  # the local part as for any address
        email_validator.validate_email(
            f"{local}@example.com", check_deliverability=False, allow_smtputf8=False
        )
    except email_validator.EmailNotValidError as exc:
        raise ValueError(f"invalid address {address!r}: {exc}") from None
    return f"{local}@{domain}"


def check_address(value: str) -> str:
    """Validate one e-mail address with ``email-validator`` and return its
    ASCII form (internationalized domains become punycode).

    Raises:
        ValueError: the address is not a deliverable-looking mailbox; the message
            says ``invalid address '<value>': <why>`` (the caller names the field).
    """
    try:
        check_header_text(value)
    except ValueError as exc:
        raise ValueError(f"invalid address {value!r}: {exc}") from None
    if len(value) > 254:
        raise ValueError("invalid address: longer than 254 characters")
    address = value.strip()
    if _plain_address(address):
        return address
    if _allowed_special and (special := _allowed_special_address(address)) is not None:
        return special
    try:
        result = email_validator.validate_email(address, check_deliverability=False, allow_smtputf8=False)
    except email_validator.EmailNotValidError as exc:
        raise ValueError(f"invalid address {value!r}: {exc}") from None
    checked: str = result.ascii_email or result.normalized
    return checked


# The common address, that email-validator takes as it is: a dot-atom local part of letters,
# digits and "_+-", and a lower-case host name of at least two labels ending in a letter,
# without "--" anywhere (Punycode and the labels the validator refuses go the full way).
_PLAIN_ADDRESS_RE = re.compile(
    r"([A-Za-z0-9_+-]{1,64}(?:\.[A-Za-z0-9_+-]{1,64})*)@"
    r"((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z])?)"
)
# email-validator's options that can change its verdict on such an address, at their defaults
_VALIDATOR_DEFAULTS = {"STRICT": False, "GLOBALLY_DELIVERABLE": True, "TEST_ENVIRONMENT": False}


def _plain_address(address: str) -> bool:
    """True if ``address`` is a common address that ``email_validator.validate_email``
    (as :func:`check_address` calls it) accepts unchanged; False means "ask it"."""
    match = _PLAIN_ADDRESS_RE.fullmatch(address)
    if match is None:
        return False
    local, domain = match.groups()
    if len(local) > 64 or len(domain) > 253 or "--" in domain:
        return False
    if local.lower() in email_validator.rfc_constants.CASE_INSENSITIVE_MAILBOX_NAMES:
        return False  # lower-cased by the validator
    if any(
        getattr(email_validator, name, default) != default for name, default in _VALIDATOR_DEFAULTS.items()
    ):
        return False
    return not any(
        domain == special or domain.endswith("." + special)
        for special in email_validator.SPECIAL_USE_DOMAIN_NAMES
    )


def sanitize_filename(name: str) -> str:
    """Turn a client's file name into a safe display name.

    The name is display-only (storage keys are generated), so path parts and
    surrounding quotes or angle brackets are dropped, and it is shortened to
    :data:`MAX_FILENAME_CHARS` characters, keeping the extension; an empty
    result becomes ``"attachment"``.

    Raises:
        ValueError: the name contains control characters.
    """
    check_header_text(name)
    name = unicodedata.normalize("NFC", name)
    name = _NAME_EDGES_RE.sub("", re.split(r"[/\\]", name)[-1])
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: MAX_FILENAME_CHARS - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_FILENAME_CHARS]
        # the cut may leave whitespace or a quote at the end
        name = _NAME_EDGES_RE.sub("", name)
    return name or "attachment"


# --- extra headers -------------------------------------------------------------------
#
# A mail may carry a few headers of the client's own, from an allow-list: never one that the
# renderer writes itself (From, To, Subject, Date, Message-ID, MIME-Version, Content-*...), so a
# client cannot forge or override them. Values are checked per header here and encoded by the
# renderer (RFC 2047 for non-ASCII X-* text).

#: Most extra headers one mail may carry.
MAX_HEADERS = 20
#: Longest value of an extra header, in characters (folded by the renderer).
HEADER_VALUE_MAX = 998
#: Longest URI in ``List-Unsubscribe``, in characters: with ``<>`` it fits one header line.
UNSUBSCRIBE_URI_MAX = 900
#: The named headers a mail may carry, in the order they are rendered; then any ``X-*`` header.
NAMED_HEADERS = ("In-Reply-To", "References", "List-Unsubscribe", "List-Unsubscribe-Post")
#: The one value of ``List-Unsubscribe-Post`` (RFC 8058).
ONE_CLICK = "List-Unsubscribe=One-Click"

_NAMED = {name.lower(): name for name in NAMED_HEADERS}
_X_NAME_RE = re.compile(r"[Xx]-[A-Za-z0-9][A-Za-z0-9-]{0,61}")
_MESSAGE_IDS_RE = re.compile(r"\S+")
# An https URL or a mailto URI as List-Unsubscribe carries it: printable ASCII without space,
# quotes, angle brackets or commas (RFC 2369: a comma separates URIs, one inside must be %2C).
_URI_CHARS_RE = re.compile(r"[!#-+\--;=?-~]+")
_HTTPS_RE = re.compile(r"https://[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?(?:[/?#].*)?")
_UNSUBSCRIBE_RE = re.compile(r"<([^<>]*)>")


def _unsubscribe_uri(value: str) -> str:
    """One ``List-Unsubscribe`` URI: an https URL or a mailto URI (whose address is checked)."""
    if len(value) > UNSUBSCRIBE_URI_MAX:
        raise ValueError(f"a URI must be at most {UNSUBSCRIBE_URI_MAX} characters")
    if not _URI_CHARS_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a URI of printable ASCII without spaces, quotes, '<', '>' or ',' "
            "(percent-encode them)"
        )
    scheme = value.partition(":")[0].lower()
    if scheme == "https":
        if not _HTTPS_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not an https URL with a host name")
        return value
    if scheme == "mailto":
        address = value[len("mailto:") :].partition("?")[0]
        try:
            check_address(address)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a mailto URI: {exc}") from None
        return value
    raise ValueError(f"{value!r} must be an https URL or a mailto URI (one-click unsubscribe needs https)")


def list_unsubscribe_headers(*uris: str) -> tuple[tuple[str, str], ...]:
    """The ``List-Unsubscribe`` headers for these URIs (an https URL and/or a mailto URI),
    for :attr:`Mail.headers`.

    With an https URL, ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` is added
    (RFC 8058 one-click unsubscribe: the receiver POSTs to the URL); the URL comes first.

    Raises:
        ValidationError: with field ``list_unsubscribe``: no URI, more than one of a
            kind, a URL that is not https, a bad mailto address, unsafe characters.
    """
    try:
        if not uris:
            raise ValueError("give an https URL and/or a mailto URI")
        value = _unsubscribe_value(", ".join(f"<{_unsubscribe_uri(uri.strip())}>" for uri in uris))
    except ValueError as exc:
        raise ValidationError([("list_unsubscribe", str(exc))]) from None
    headers = [("List-Unsubscribe", value)]
    if value.startswith("<https:"):
        headers.append(("List-Unsubscribe-Post", ONE_CLICK))
    return tuple(headers)


def _unsubscribe_value(value: str) -> str:
    """A ``List-Unsubscribe`` value normalized: ``<https://...>, <mailto:...>``."""
    items = [item.strip() for item in value.split(",")]
    uris: dict[str, str] = {}
    for item in items:
        match = _UNSUBSCRIBE_RE.fullmatch(item)
        if match is None:
            raise ValueError(
                "must be one or two URIs in angle brackets, comma separated: <https://...>, <mailto:...>"
            )
        uri = _unsubscribe_uri(match.group(1))
        scheme = uri.partition(":")[0].lower()
        if scheme in uris:
            raise ValueError(f"has more than one {scheme} URI")
        uris[scheme] = uri
    return ", ".join(f"<{uris[scheme]}>" for scheme in ("https", "mailto") if scheme in uris)


def _message_ids(value: str) -> str:
    ids = _MESSAGE_IDS_RE.findall(value)
    if not ids:
        raise ValueError("must be one or more message ids <local@domain>")
    for item in ids:
        if not _MESSAGE_ID_RE.fullmatch(item):
            raise ValueError(f"{item!r} is not a message id <local@domain> in printable ASCII")
    return " ".join(ids)


def check_header(name: str, value: str) -> tuple[str, str]:
    """One extra header, checked and normalized: the name from the allow-list (its usual
    spelling for a named one), the value checked for that header.

    Allowed: ``X-*`` (unstructured text; non-ASCII is RFC 2047-encoded when rendered),
    ``In-Reply-To`` and ``References`` (message ids ``<local@domain>``, space separated),
    ``List-Unsubscribe`` (``<https://...>`` and/or ``<mailto:...>``) and
    ``List-Unsubscribe-Post`` (exactly ``List-Unsubscribe=One-Click``).

    Raises:
        ValueError: the name is not allowed, or the value is not valid for it; the
            message names the header.
    """
    canonical = _NAMED.get(name.lower())
    if canonical is None and not _X_NAME_RE.fullmatch(name):
        raise ValueError(f"header {name[:80]!r} is not allowed (allowed: X-*, {', '.join(NAMED_HEADERS)})")
    header = canonical or name
    try:
        check_header_text(value)
        value = value.strip()
        if not value:
            raise ValueError("is empty")
        if len(value) > HEADER_VALUE_MAX:
            raise ValueError(f"must be at most {HEADER_VALUE_MAX} characters")
        if header in ("In-Reply-To", "References"):
            value = _message_ids(value)
        elif header == "List-Unsubscribe":
            value = _unsubscribe_value(value)
        elif header == "List-Unsubscribe-Post" and value != ONE_CLICK:
            raise ValueError(f"must be {ONE_CLICK!r} (RFC 8058)")
    except ValueError as exc:
        raise ValueError(f"header {header}: {exc}") from None
    return header, value


def _header_rank(header: tuple[str, str]) -> int:
    name = header[0]
    return NAMED_HEADERS.index(name) if name in NAMED_HEADERS else len(NAMED_HEADERS)


def check_headers(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Extra headers checked (:func:`check_header`) and in rendering order: the named ones
    in :data:`NAMED_HEADERS` order, then the ``X-*`` ones as given (an ``X-*`` header may
    repeat, a named one may not). ``List-Unsubscribe-Post`` needs a ``List-Unsubscribe``
    with an https URL.

    Raises:
        ValueError: a header is not allowed or not valid, a named header repeats, or
            ``List-Unsubscribe-Post`` has no https ``List-Unsubscribe``.
    """
    checked = [check_header(name, value) for name, value in headers]
    seen: dict[str, str] = {}
    for name, value in checked:
        if name in NAMED_HEADERS:
            if name in seen:
                raise ValueError(f"header {name} is given more than once")
            seen[name] = value
    if "List-Unsubscribe-Post" in seen and not seen.get("List-Unsubscribe", "").startswith("<https:"):
        raise ValueError("header List-Unsubscribe-Post needs a List-Unsubscribe with an https URL (RFC 8058)")
    return tuple(sorted(checked, key=_header_rank))


def _join_field(prefix: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{prefix}[{part}]"
    return f"{prefix}.{part}" if prefix else part


def _pydantic_to_ours(exc: pydantic.ValidationError) -> ValidationError:
    errors = exc.errors(include_url=False)
    locs = [tuple(err["loc"]) for err in errors]
    problems: list[tuple[str, str]] = []
    for err, loc in zip(errors, locs, strict=True):
        # A container reported "too short" only because an item inside it
        # failed: the item's own error says it better.
        if err["type"] == "too_short" and any(o[: len(loc)] == loc and len(o) > len(loc) for o in locs):
            continue
        field = ""
        for part in loc:
            field = _join_field(field, part)
        nested = (err.get("ctx") or {}).get("error")
        if isinstance(nested, ValidationError):
            # a nested model with our own constructor already named its fields
            problems.extend((_join_field(field, sub), reason) for sub, reason in nested.errors)
            continue
        message = err["msg"].removeprefix("Value error, ")
        problems.append((field or "mail", message))
    return ValidationError(problems)


class _Model(BaseModel):
    """Frozen pydantic model whose constructor raises mailqueue's ValidationError."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            raise _pydantic_to_ours(exc) from None

    @classmethod
    def parse(cls, data: Any) -> Self:
        """Validate a mapping (e.g. decoded JSON) into this model.

        Raises:
            ValidationError: naming each bad field.
        """
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as exc:
            raise _pydantic_to_ours(exc) from None


class Recipient(_Model):
    """One mailbox: an address and an optional display name."""

    address: str
    name: str = Field(default="", max_length=255)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return check_address(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_header_text(value).strip()


class AttachmentRef(_Model):
    """A stored attachment, as a mail refers to it.

    ``key`` is the AttachmentStore's generated key; ``filename`` is for
    display only and is sanitized on construction.
    """

    key: str
    filename: str
    content_type: str = "application/octet-stream"
    size: int = Field(ge=0)
    sha256: str

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not _KEY_RE.fullmatch(value):
            raise ValueError("must be a storage key of letters, digits, '.', '_' or '-'")
        return value

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str) -> str:
        return sanitize_filename(value)

    @field_validator("content_type")
    @classmethod
    def _content_type(cls, value: str) -> str:
        value = value.strip().lower()
        if not _CONTENT_TYPE_RE.fullmatch(value):
            raise ValueError("must be a MIME type such as 'application/pdf'")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str) -> str:
        if not _SHA256_RE.fullmatch(value):
            raise ValueError("must be 64 lowercase hex digits")
        return value


class Mail(_Model):
    """A mail to send.

    ``id`` is mailqueue's public id; ``message_id`` the RFC 5322 Message-ID,
    fixed once when the mail is accepted and reused on every attempt so that
    receivers can recognise a repeat. Both are generated when not given
    (``message_id`` by :meth:`MailQueue.submit`, from the configured domain).
    ``headers`` are extra headers from an allow-list (``X-*``, ``In-Reply-To``,
    ``References``, ``List-Unsubscribe``, ``List-Unsubscribe-Post``; see
    :func:`check_headers` and :func:`list_unsubscribe_headers`), kept in rendering order.

    Raises:
        ValidationError: on construction, naming each bad field.
    """

    #: The original service's limits, kept for its clients.
    SUBJECT_MAX: ClassVar[int] = 255
    BODY_MAX: ClassVar[int] = 65535
    SENDER_NAME_MAX: ClassVar[int] = 50
    #: Most extra ``headers``, the longest value of one, the longest List-Unsubscribe URI.
    HEADERS_MAX: ClassVar[int] = MAX_HEADERS
    HEADER_VALUE_MAX: ClassVar[int] = HEADER_VALUE_MAX
    UNSUBSCRIBE_URI_MAX: ClassVar[int] = UNSUBSCRIBE_URI_MAX

    id: str = Field(default_factory=new_id, pattern=r"^[0-9a-z][0-9a-z_-]{0,63}$")
    message_id: str | None = None
    subject: str = Field(min_length=1, max_length=255)
    html: str = Field(min_length=1, max_length=65535)
    text: str | None = Field(default=None, max_length=65535)
    sender_name: str = Field(default="", max_length=50)
    to: tuple[Recipient, ...] = Field(min_length=1)
    cc: tuple[Recipient, ...] = ()
    bcc: tuple[Recipient, ...] = ()
    reply_to: tuple[Recipient, ...] = Field(default=(), max_length=10)
    headers: tuple[tuple[str, str], ...] = Field(default=(), max_length=MAX_HEADERS)
    attachments: tuple[AttachmentRef, ...] = Field(default=(), max_length=100)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)

    @field_validator("subject", "sender_name")
    @classmethod
    def _header_text(cls, value: str) -> str:
        return check_header_text(value)

    @field_validator("html", "text")
    @classmethod
    def _body(cls, value: str | None) -> str | None:
        return None if value is None else check_body_text(value)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        return check_headers(value)

    @field_validator("message_id")
    @classmethod
    def _message_id(cls, value: str | None) -> str | None:
        if value is not None and not _MESSAGE_ID_RE.fullmatch(value):
            raise ValueError("must look like <local@domain> in printable ASCII")
        return value

    @field_validator("idempotency_key")
    @classmethod
    def _idempotency_key(cls, value: str | None) -> str | None:
        if value is not None and not all(0x21 <= ord(c) <= 0x7E for c in value):
            raise ValueError("must be printable ASCII without spaces")
        return value

    @field_validator("created_at")
    @classmethod
    def _created_at(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @model_validator(mode="after")
    def _recipient_count(self) -> Self:
        if len(self.to) + len(self.cc) + len(self.bcc) > MAX_RECIPIENTS:
            raise ValueError(f"at most {MAX_RECIPIENTS} recipients (to + cc + bcc) are allowed")
        return self

    def dump_json(self) -> str:
        """The mail as JSON, as queues and stores keep it; ``headers`` is left out when
        empty, so that a version without the field still reads such a mail."""
        return self.model_dump_json(exclude=None if self.headers else {"headers"})

    @property
    def recipients(self) -> tuple[Recipient, ...]:
        """Every envelope recipient: to, then cc, then bcc."""
        return self.to + self.cc + self.bcc


def parse_recipients(
    receiver: str, receiver_name: str = "", *, field: str = "receiver", names_field: str = "receiver_name"
) -> tuple[Recipient, ...]:
    """Parse the original service's comma-separated ``receiver`` and
    ``receiver_name`` fields (or another address field and its names, e.g. ``cc``
    and ``cc_name``, named by ``field`` and ``names_field``).

    Raises:
        ValidationError: with field ``field`` or ``names_field``, using
            the original's rules (1-2000 characters, every address valid,
            as many names as addresses when names are given).
    """
    if not receiver.strip():
        raise ValidationError([(field, "is empty")])
    if len(receiver) > 2000:
        raise ValidationError([(field, "must be at most 2000 characters")])
    addresses = [part.strip() for part in receiver.split(",")]
    if any(not part for part in addresses):
        raise ValidationError([(field, "has an empty entry")])
    names = [part.strip() for part in receiver_name.split(",")] if receiver_name.strip() else []
    # the original's wording for its own field
    noun = "receivers" if field == "receiver" else f"addresses in {field}"
    if names and len(names) != len(addresses):
        raise ValidationError(
            [
                (
                    names_field,
                    f"has {len(names)} names for {len(addresses)} {noun}; the counts must be equal",
                )
            ]
        )
    if len(addresses) > MAX_RECIPIENTS:
        raise ValidationError([(field, f"at most {MAX_RECIPIENTS} {noun} are allowed")])
    result = []
    for index, address in enumerate(addresses):
        name = names[index] if names else ""
        try:
            address = check_address(address)
        except ValueError as exc:
            raise ValidationError([(field, str(exc))]) from None
        try:
            result.append(Recipient(address=address, name=name))
        except ValidationError as exc:
            raise ValidationError([(names_field, exc.reason)]) from None
    return tuple(result)


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file to attach, handed to :meth:`MailQueue.submit`.

    ``content`` is bytes, a path, a binary file object or an async iterable of
    byte chunks (streamed into the AttachmentStore, never held whole).
    """

    filename: str
    content: bytes | Path | BinaryIO | AsyncIterable[bytes] | Iterable[bytes]
    content_type: str = "application/octet-stream"
