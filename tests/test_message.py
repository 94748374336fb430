"""The message model refuses bad input (DESIGN.md "Bad input ...") and keeps the
original service's rules (REFERENCE.md), naming the field and the reason."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import email_validator
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailqueue.errors import ValidationError
from mailqueue.message import (
    MAX_FILENAME_CHARS,
    MAX_HEADERS,
    MAX_RECIPIENTS,
    AttachmentRef,
    Mail,
    Recipient,
    _plain_address,
    check_address,
    check_header_text,
    check_headers,
    list_unsubscribe_headers,
    new_id,
    parse_recipients,
    sanitize_filename,
)

SHA = "0123456789abcdef" * 4

#: Characters that must never reach a header: line breaks of every kind,
#: other controls, and lone surrogates (unencodable, split by some codecs).
BAD_HEADER_CHARS = {
    "CR": "\r",
    "LF": "\n",
    "CRLF": "\r\n",
    "NUL": "\x00",
    "TAB": "\t",
    "ESC": "\x1b",
    "DEL": "\x7f",
    "NEL": "\x85",
    "CSI": "\x9b",
    "LINE-SEP": "\u2028",
    "PARA-SEP": "\u2029",
    "HIGH-SURROGATE": "\ud800",
    "LOW-SURROGATE": "\udfff",
}
BAD_CHARS = list(BAD_HEADER_CHARS.values())
BAD_IDS = list(BAD_HEADER_CHARS)


def mail_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "subject": "Hello",
        "html": "<p>Hello</p>",
        "to": [{"address": "alice@example.com", "name": "Alice"}],
    }
    fields.update(overrides)
    return fields


def make_mail(**overrides: Any) -> Mail:
    return Mail(**mail_fields(**overrides))


def ref_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"key": "k1", "filename": "report.pdf", "size": 3, "sha256": SHA}
    fields.update(overrides)
    return fields


def refused(build: Callable[[], object]) -> ValidationError:
    """Run ``build``, which must raise mailqueue's ValidationError (not pydantic's)."""
    with pytest.raises(ValidationError) as info:
        build()
    assert not isinstance(info.value, pydantic.ValidationError)
    assert info.value.reason
    return info.value


def construct(fields: dict[str, Any]) -> Mail:
    return Mail(**fields)


def parse(fields: dict[str, Any]) -> Mail:
    return Mail.parse(fields)


BUILDERS = [pytest.param(construct, id="Mail()"), pytest.param(parse, id="Mail.parse")]

OK_RECIPIENT = {"address": "ok@example.com"}

#: (id, Mail fields holding ``bad`` in one header-bound place, the field named in the error)
HEADER_PLACES: list[tuple[str, Callable[[str], dict[str, Any]], str]] = [
    ("subject", lambda bad: {"subject": f"Hi{bad}there"}, "subject"),
    ("sender_name", lambda bad: {"sender_name": f"Shop{bad}Bcc"}, "sender_name"),
    ("to-name", lambda bad: {"to": [{"address": "a@example.com", "name": f"A{bad}B"}]}, "to[0].name"),
    (
        "cc-name",
        lambda bad: {"cc": [OK_RECIPIENT, {"address": "b@example.com", "name": f"B{bad}"}]},
        "cc[1].name",
    ),
    ("bcc-name", lambda bad: {"bcc": [{"address": "c@example.com", "name": f"{bad}C"}]}, "bcc[0].name"),
    (
        "reply_to-name",
        lambda bad: {"reply_to": [{"address": "d@example.com", "name": f"D{bad}D"}]},
        "reply_to[0].name",
    ),
    ("to-address", lambda bad: {"to": [{"address": f"a@example.com{bad}"}]}, "to[0].address"),
    (
        "filename",
        lambda bad: {"attachments": [ref_fields(filename=f"a{bad}b.pdf")]},
        "attachments[0].filename",
    ),
    ("idempotency_key", lambda bad: {"idempotency_key": f"key{bad}1"}, "idempotency_key"),
    ("message_id", lambda bad: {"message_id": f"<a{bad}b@example.com>"}, "message_id"),
    ("x-header", lambda bad: {"headers": [("X-Campaign", f"spring{bad}Bcc: x")]}, "headers"),
    ("references", lambda bad: {"headers": [("References", f"<a@example.com>{bad}")]}, "headers"),
]


# --- header-bound fields --------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_CHARS, ids=BAD_IDS)
@pytest.mark.parametrize(
    ("place", "expected_field"),
    [pytest.param(place, field, id=name) for name, place, field in HEADER_PLACES],
)
@pytest.mark.parametrize("build", BUILDERS)
def test_header_fields_refuse_control_characters(
    build: Callable[[dict[str, Any]], Mail],
    place: Callable[[str], dict[str, Any]],
    expected_field: str,
    bad: str,
) -> None:
    error = refused(lambda: build(mail_fields(**place(bad))))
    assert error.field == expected_field
    assert [field for field, _ in error.errors] == [expected_field]


# (pydantic itself refuses lone surrogates, with its own reason, before our validator runs)
NON_SURROGATES = {name: char for name, char in BAD_HEADER_CHARS.items() if "SURROGATE" not in name}


@pytest.mark.parametrize("bad", list(NON_SURROGATES.values()), ids=list(NON_SURROGATES))
def test_header_fields_give_the_reason(bad: str) -> None:
    error = refused(lambda: make_mail(subject=f"Hi{bad}"))
    assert error.reason == f"must not contain control characters (found U+{ord(bad[0]):04X})"
    assert str(error) == f"subject: {error.reason}"


@pytest.mark.parametrize("bad", BAD_CHARS, ids=BAD_IDS)
def test_check_header_text_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="control characters"):
        check_header_text(f"text{bad}")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain",
        "Grüße aus Köln",
        "東京の天気",
        "emoji ✉️ 😀",
        "e\u0301",
        "zero\u200bwidth",
        "a  b",
        "\u00a0x",
    ],
)
def test_check_header_text_accepts_printable_unicode(text: str) -> None:
    assert check_header_text(text) == text
    assert make_mail(subject=text or "x", sender_name=text).sender_name == text


@pytest.mark.parametrize("bad", BAD_CHARS, ids=BAD_IDS)
def test_recipient_and_attachment_models_alone_name_their_field(bad: str) -> None:
    assert refused(lambda: Recipient(address="a@example.com", name=f"x{bad}")).field == "name"
    assert refused(lambda: AttachmentRef(**ref_fields(filename=f"x{bad}"))).field == "filename"


def test_every_problem_is_listed() -> None:
    error = refused(lambda: make_mail(subject="", html="", to=[{"address": "nope"}]))
    assert {field for field, _ in error.errors} == {"subject", "html", "to[0].address"}
    assert error.field == error.errors[0][0]


# --- bodies ---------------------------------------------------------------------------------

BAD_BODY_CHARS = ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x1b", "\x1f", "\ud800"]


@pytest.mark.parametrize("field", ["html", "text"])
@pytest.mark.parametrize("bad", BAD_BODY_CHARS, ids=[f"U+{ord(c):04X}" for c in BAD_BODY_CHARS])
def test_bodies_refuse_nul_and_c0_controls(field: str, bad: str) -> None:
    assert refused(lambda: make_mail(**{field: f"<p>a{bad}b</p>"})).field == field


@pytest.mark.parametrize("field", ["html", "text"])
def test_bodies_accept_line_breaks_and_tabs(field: str) -> None:
    body = "line 1\r\nline 2\nline 3\rcol\tcol\n\n\tindented \u2013 ünïcödé 😀"
    assert getattr(make_mail(**{field: body}), field) == body


def test_text_body_is_optional() -> None:
    assert make_mail().text is None


# --- lengths and counts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "low", "high"),
    [("subject", 1, 255), ("html", 1, 65535), ("text", 0, 65535), ("sender_name", 0, 50)],
)
def test_length_limits(field: str, low: int, high: int) -> None:
    assert Mail.SUBJECT_MAX == 255
    assert Mail.BODY_MAX == 65535
    assert Mail.SENDER_NAME_MAX == 50
    assert getattr(make_mail(**{field: "x" * high}), field) == "x" * high
    # characters are counted, not bytes (the original's utf8mb4 columns)
    assert len(getattr(make_mail(**{field: "ü" * high}), field)) == high
    assert refused(lambda: make_mail(**{field: "x" * (high + 1)})).field == field
    if low:
        assert getattr(make_mail(**{field: "x" * low}), field) == "x" * low
        assert refused(lambda: make_mail(**{field: "x" * (low - 1)})).field == field
    else:
        assert getattr(make_mail(**{field: ""}), field) == ""


def test_idempotency_key_length() -> None:
    assert make_mail(idempotency_key="k" * 255).idempotency_key == "k" * 255
    assert refused(lambda: make_mail(idempotency_key="k" * 256)).field == "idempotency_key"
    assert refused(lambda: make_mail(idempotency_key="")).field == "idempotency_key"
    assert refused(lambda: make_mail(idempotency_key="two words")).field == "idempotency_key"
    assert refused(lambda: make_mail(idempotency_key="clé")).field == "idempotency_key"


def test_recipient_name_length() -> None:
    assert Recipient(address="a@example.com", name="n" * 255).name == "n" * 255
    assert refused(lambda: Recipient(address="a@example.com", name="n" * 256)).field == "name"


def _people(count: int, tag: str) -> list[dict[str, str]]:
    return [{"address": f"{tag}{i}@example.com"} for i in range(count)]


@pytest.mark.parametrize(("to", "cc", "bcc"), [(MAX_RECIPIENTS, 0, 0), (40, 30, 30), (1, 0, 99)])
def test_recipient_count_at_the_limit_is_accepted(to: int, cc: int, bcc: int) -> None:
    assert MAX_RECIPIENTS == 100
    mail = make_mail(to=_people(to, "t"), cc=_people(cc, "c"), bcc=_people(bcc, "b"))
    assert len(mail.recipients) == MAX_RECIPIENTS


@pytest.mark.parametrize(("to", "cc", "bcc"), [(MAX_RECIPIENTS + 1, 0, 0), (41, 30, 30), (1, 1, 99)])
def test_recipient_count_over_the_limit_is_refused(to: int, cc: int, bcc: int) -> None:
    error = refused(lambda: make_mail(to=_people(to, "t"), cc=_people(cc, "c"), bcc=_people(bcc, "b")))
    assert error.field == "mail"
    assert str(MAX_RECIPIENTS) in error.reason
    assert "recipients" in error.reason


def test_at_least_one_to_recipient() -> None:
    assert refused(lambda: make_mail(to=[])).field == "to"
    assert refused(lambda: make_mail(to=[], cc=[OK_RECIPIENT])).field == "to"


def test_attachment_count_limit() -> None:
    refs = [ref_fields(key=f"k{i}") for i in range(100)]
    assert len(make_mail(attachments=refs).attachments) == 100
    error = refused(lambda: make_mail(attachments=[*refs, ref_fields(key="k100")]))
    assert error.field == "attachments"


def test_unknown_fields_are_refused() -> None:
    assert refused(lambda: make_mail(from_address="evil@example.com")).field == "from_address"
    assert refused(lambda: Mail.parse(mail_fields(headers={"Bcc": "x@example.com"}))).field == "headers"


@pytest.mark.parametrize("data", [None, [], "mail", 42])
def test_parse_refuses_non_mappings(data: object) -> None:
    assert refused(lambda: Mail.parse(data)).field == "mail"


def test_parse_accepts_what_the_constructor_accepts() -> None:
    fields = mail_fields(
        id="fixed-id", cc=[OK_RECIPIENT], attachments=[ref_fields()], created_at="2024-01-02T03:04:05Z"
    )
    assert Mail.parse(fields) == Mail(**fields)


# --- addresses ------------------------------------------------------------------------------

INVALID_ADDRESSES = {
    "no-at": "alice.example.com",
    "two-at": "a@b@example.com",
    "double-at": "a@@example.com",
    "space-local": "a b@example.com",
    "space-domain": "a@exa mple.com",
    "quoted-local": '"a b"@example.com',
    "quoted-plain": '"alice"@example.com',
    "ip-literal": "a@[192.0.2.1]",
    "ipv6-literal": "a@[IPv6:2001:db8::1]",
    "dot-test": "a@example.test",
    "dot-invalid": "a@example.invalid",
    "dot-localhost": "a@foo.localhost",
    "localhost": "a@localhost",
    "no-dot-domain": "a@example",
    "non-ascii-local": "jürgen@example.com",
    "empty": "",
    "empty-local": "@example.com",
    "empty-domain": "a@",
    "leading-dot": ".a@example.com",
    "double-dot": "a..b@example.com",
    "trailing-dot-domain": "a@example.com.",
    "two-addresses": "a@example.com, b@example.com",
    "display-name": "Alice <a@example.com>",
    "angle-brackets": "<a@example.com>",
    "header-injection": "a@example.com\r\nBcc: x@example.com",
    "lf-injection": "a@example.com\nBcc: x@example.com",
    "trailing-lf": "a@example.com\n",
    "trailing-crlf": "a@example.com\r\n",
    "leading-lf": "\na@example.com",
    "trailing-nul": "a@example.com\x00",
    "trailing-tab": "a@example.com\t",
    "line-separator": "a@example.com\u2028",
}


@pytest.mark.parametrize("address", list(INVALID_ADDRESSES.values()), ids=list(INVALID_ADDRESSES))
def test_invalid_addresses_are_refused(address: str) -> None:
    error = refused(lambda: make_mail(to=[OK_RECIPIENT, {"address": address}]))
    assert error.field == "to[1].address"
    assert refused(lambda: Recipient(address=address)).field == "address"


@pytest.mark.parametrize(
    "address", ["a@example.com\n", "a@example.com\r\nBcc: x@example.com", "a@example.com\r"]
)
def test_line_breaks_in_addresses_are_refused_not_stripped(address: str) -> None:
    # str.strip() or a lenient parser would quietly turn these into a@example.com
    # (or worse, keep the Bcc); refusing is the only safe answer.
    error = refused(lambda: Recipient(address=address))
    assert "control characters" in error.reason
    assert "U+000D" in error.reason or "U+000A" in error.reason


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("a@b.c", "a@b.c"),
        ("alice@example.com", "alice@example.com"),
        ("Alice.Smith+tag@Example.COM", "Alice.Smith+tag@example.com"),
        ("a@bücher.de", "a@xn--bcher-kva.de"),
        ("info@例え.jp", "info@xn--r8jz45g.jp"),
        ("  spaced@example.com  ", "spaced@example.com"),
        ("o'brien@example.ie", "o'brien@example.ie"),
    ],
)
def test_valid_addresses_are_kept_in_ascii_form(given: str, kept: str) -> None:
    assert Recipient(address=given).address == kept
    assert make_mail(to=[{"address": given}]).to[0].address == kept


def test_address_length_limit_is_254() -> None:
    domain = ".".join(["b" * 63, "c" * 63, "d" * 57]) + ".com"
    at_limit = "a" * 64 + "@" + domain
    assert len(at_limit) == 254
    assert Recipient(address=at_limit).address == at_limit
    over = "a" * 64 + "@" + "x" + domain
    assert len(over) == 255
    assert "254" in refused(lambda: Recipient(address=over)).reason


def test_address_length_counts_the_punycode_form() -> None:
    # 232 characters as typed, far more once the domain is IDNA-encoded
    address = "a" * 60 + "@" + ".".join(["ü" * 55] * 3) + ".com"
    assert len(address) < 254
    assert refused(lambda: Recipient(address=address)).field == "address"


# --- parse_recipients (the original's receiver/receiver_name fields) ----------------------


@pytest.mark.parametrize("receiver", ["", " ", " \t "])
def test_parse_recipients_empty(receiver: str) -> None:
    error = refused(lambda: parse_recipients(receiver))
    assert (error.field, error.reason) == ("receiver", "is empty")


def test_parse_recipients_length_limit_is_2000_characters() -> None:
    at_limit = "a@example.com".ljust(2000)
    assert parse_recipients(at_limit) == (Recipient(address="a@example.com"),)
    error = refused(lambda: parse_recipients(at_limit + " "))
    assert error.field == "receiver"
    assert "2000" in error.reason


@pytest.mark.parametrize(
    "receiver", ["a@example.com,nope", "nope", "a@example.com;b@example.com", '"a b"@example.com', "a@x.test"]
)
def test_parse_recipients_invalid_address(receiver: str) -> None:
    error = refused(lambda: parse_recipients(receiver))
    assert error.field == "receiver"
    assert error.reason.startswith("invalid address ")


@pytest.mark.parametrize("receiver", ["a@x.com,,b@x.com", "a@x.com,", ",a@x.com", "a@x.com, ,b@x.com"])
def test_parse_recipients_empty_entry(receiver: str) -> None:
    assert refused(lambda: parse_recipients(receiver)).field == "receiver"


@pytest.mark.parametrize("names", ["A", "A,B,C", "A,B,"])
def test_parse_recipients_names_count_must_match(names: str) -> None:
    error = refused(lambda: parse_recipients("a@example.com,b@example.com", names))
    assert error.field == "receiver_name"
    assert "counts must be equal" in error.reason


def test_parse_recipients_names_are_optional() -> None:
    assert parse_recipients("a@example.com,b@example.com") == (
        Recipient(address="a@example.com"),
        Recipient(address="b@example.com"),
    )
    assert parse_recipients("a@example.com", "  ") == (Recipient(address="a@example.com"),)


def test_parse_recipients_strips_whitespace_and_keeps_order() -> None:
    got = parse_recipients(" c@example.com ,a@bücher.de,  b@example.com", " Carol ,  Ärger,Bob ")
    assert got == (
        Recipient(address="c@example.com", name="Carol"),
        Recipient(address="a@xn--bcher-kva.de", name="Ärger"),
        Recipient(address="b@example.com", name="Bob"),
    )


def test_parse_recipients_bad_name() -> None:
    error = refused(lambda: parse_recipients("a@example.com", "Al\r\nBcc: x@example.com"))
    assert error.field == "receiver_name"
    assert "control characters" in error.reason


def test_parse_recipients_count_limit() -> None:
    receivers = ",".join(f"u{i}@example.com" for i in range(MAX_RECIPIENTS))
    assert len(parse_recipients(receivers)) == MAX_RECIPIENTS
    error = refused(lambda: parse_recipients(receivers + ",last@example.com"))
    assert error.field == "receiver"
    assert str(MAX_RECIPIENTS) in error.reason


def test_parse_recipients_feed_a_mail() -> None:
    mail = make_mail(to=parse_recipients("a@example.com,b@example.com", "A,B"))
    assert [r.name for r in mail.to] == ["A", "B"]


# --- attachment names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("report.pdf", "report.pdf"),
        ("../../x", "x"),
        ("/etc/passwd", "passwd"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("C:\\Users\\me\\doc.pdf", "doc.pdf"),
        ("dir/sub\\mixed.txt", "mixed.txt"),
        ("...hidden", "hidden"),
        (".bashrc", "bashrc"),
        (" . spaced.txt ", "spaced.txt"),
        ('"quoted.pdf"', "quoted.pdf"),
        ("<angled.pdf>", "angled.pdf"),
        ('"<both.pdf>"', "both.pdf"),
        ("Grüße Übersicht.xlsx", "Grüße Übersicht.xlsx"),
        ("u\u0308ber.txt", "\u00fcber.txt"),  # NFC
        ("", "attachment"),
        ("   ", "attachment"),
        ("..", "attachment"),
        ("/", "attachment"),
        ("dir/", "attachment"),
        ('""', "attachment"),
    ],
)
def test_sanitize_filename(given: str, kept: str) -> None:
    assert sanitize_filename(given) == kept
    assert AttachmentRef(**ref_fields(filename=given)).filename == kept


def test_long_unicode_filename_is_shortened_keeping_the_extension() -> None:
    assert MAX_FILENAME_CHARS == 150
    name = sanitize_filename("ü" * 300 + ".pdf")
    assert len(name) == MAX_FILENAME_CHARS
    assert name == "ü" * 146 + ".pdf"
    assert sanitize_filename("ü" * 150) == "ü" * 150
    assert sanitize_filename("日" * 300) == "日" * 150
    # an "extension" too long to be one is not kept
    assert sanitize_filename("a" * 100 + "." + "b" * 100) == ("a" * 100 + "." + "b" * 100)[:150]


@pytest.mark.parametrize("bad", BAD_CHARS, ids=BAD_IDS)
def test_sanitize_filename_refuses_control_characters(bad: str) -> None:
    with pytest.raises(ValueError, match="control characters"):
        sanitize_filename(f"a{bad}.pdf")


_filename_chars = st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="\u2028\u2029")


@settings(max_examples=300, database=None, deadline=None)
@given(st.text(_filename_chars | st.sampled_from('./\\"<> .'), max_size=400))
def test_sanitized_names_are_display_safe(name: str) -> None:
    safe = sanitize_filename(name)
    assert 1 <= len(safe) <= MAX_FILENAME_CHARS
    assert "/" not in safe
    assert "\\" not in safe
    assert check_header_text(safe) == safe


# --- AttachmentRef --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../x",
        "..",
        "../../etc/passwd",
        "a/b",
        "a\\b",
        ".hidden",
        "-rf",
        "k\n",
        "k\r\n",
        "k\x00",
        "a b",
        "ключ",
        "a" * 129,
    ],
)
def test_attachment_key_pattern_refuses(key: str) -> None:
    assert refused(lambda: AttachmentRef(**ref_fields(key=key))).field == "key"
    assert refused(lambda: make_mail(attachments=[ref_fields(key=key)])).field == "attachments[0].key"


@pytest.mark.parametrize("key", ["k", "a" * 128, "abc-DEF_1.2", "0f" * 16, "2024.01.02_abc-def"])
def test_attachment_key_pattern_accepts(key: str) -> None:
    assert AttachmentRef(**ref_fields(key=key)).key == key


@pytest.mark.parametrize(
    "digest", ["", SHA.upper(), SHA[:-1], SHA + "0", "g" * 64, SHA + "\n", " " + SHA[1:], None]
)
def test_attachment_sha256_must_be_64_lowercase_hex(digest: str | None) -> None:
    assert refused(lambda: AttachmentRef(**ref_fields(sha256=digest))).field == "sha256"


def test_attachment_size_is_not_negative() -> None:
    assert AttachmentRef(**ref_fields(size=0)).size == 0
    assert AttachmentRef(**ref_fields(size=2**40)).size == 2**40
    assert refused(lambda: AttachmentRef(**ref_fields(size=-1))).field == "size"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("application/pdf", "application/pdf"),
        ("Text/HTML", "text/html"),
        ("  IMAGE/PNG ", "image/png"),
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", None),
        ("application/ld+json", None),
    ],
)
def test_attachment_content_type_is_normalised(given: str, kept: str | None) -> None:
    assert AttachmentRef(**ref_fields(content_type=given)).content_type == (kept or given)


@pytest.mark.parametrize("content_type", ["text/html\r\n", "\ntext/html", "text/html\u2028"])
def test_attachment_content_type_surrounding_line_breaks_are_stripped(content_type: str) -> None:
    # only whitespace around the type is dropped: nothing of a line break can remain
    assert AttachmentRef(**ref_fields(content_type=content_type)).content_type == "text/html"


def test_attachment_content_type_default() -> None:
    assert AttachmentRef(**ref_fields()).content_type == "application/octet-stream"


@pytest.mark.parametrize(
    "content_type",
    [
        "text/html\r\nX: y",
        "text/html\nX: y",
        "text/html\rX",
        "text/html\x00",
        "text",
        "",
        "/html",
        "text/",
        "text/ html",
        "text/html/x",
        "text/html\u2028x",
        "tëxt/html",
        'text/html; charset="x\r\n"',
    ],
)
def test_attachment_content_type_refuses(content_type: str) -> None:
    assert refused(lambda: AttachmentRef(**ref_fields(content_type=content_type))).field == "content_type"


# --- ids, immutability, time, serialisation -------------------------------------------------

_ID_RE = re.compile(r"[0-9a-f]{32}")


def test_new_id_shape_uniqueness_and_order() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(10_000)]
    after_ms = time.time_ns() // 1_000_000
    assert all(_ID_RE.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)
    stamps = [int(i[:12], 16) for i in ids]
    assert stamps == sorted(stamps)
    assert before_ms <= stamps[0] <= stamps[-1] <= after_ms


def test_new_ids_sort_by_creation_time() -> None:
    first = new_id()
    time.sleep(0.002)
    second = new_id()
    time.sleep(0.002)
    third = new_id()
    assert first < second < third


def test_mail_gets_a_fresh_id() -> None:
    one, two = make_mail(), make_mail()
    assert _ID_RE.fullmatch(one.id)
    assert one.id != two.id
    assert make_mail(id="my-id_1").id == "my-id_1"


@pytest.mark.parametrize("bad", ["", "UPPER", "a" * 65, "abc\n", "a/b", "../x", "-a", "a b"])
def test_mail_id_pattern(bad: str) -> None:
    assert refused(lambda: make_mail(id=bad)).field == "id"


@pytest.mark.parametrize("message_id", ["<abc@example.com>", "<01a2.b+c@mail.example.org>", "<x@localhost>"])
def test_message_id_accepted(message_id: str) -> None:
    assert make_mail(message_id=message_id).message_id == message_id


@pytest.mark.parametrize(
    "message_id",
    [
        "abc@example.com",
        "<abc@example.com",
        "<abc>",
        "<a b@example.com>",
        "<ü@example.com>",
        "<abc@example.com>\n",
        "<abc@example.com> ",
        "<>",
    ],
)
def test_message_id_refused(message_id: str) -> None:
    assert refused(lambda: make_mail(message_id=message_id)).field == "message_id"


def test_mail_is_frozen() -> None:
    mail = make_mail()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        mail.subject = "changed"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        mail.to[0].address = "evil@example.com"  # type: ignore[misc]
    assert mail.subject == "Hello"
    assert isinstance(mail.to, tuple)
    assert hash(mail) == hash(Mail(**mail.model_dump()))


def test_recipients_are_to_then_cc_then_bcc() -> None:
    mail = make_mail(
        to=[{"address": "t1@example.com"}, {"address": "t2@example.com"}],
        cc=[{"address": "c1@example.com"}],
        bcc=[{"address": "b1@example.com"}, {"address": "b2@example.com"}],
        reply_to=[{"address": "r@example.com"}],
    )
    assert [r.address for r in mail.recipients] == [
        "t1@example.com",
        "t2@example.com",
        "c1@example.com",
        "b1@example.com",
        "b2@example.com",
    ]


def test_created_at_defaults_to_now_in_utc() -> None:
    before = datetime.now(UTC)
    mail = make_mail()
    assert mail.created_at.utcoffset() == timedelta(0)
    assert before <= mail.created_at <= datetime.now(UTC)


def test_naive_created_at_is_taken_as_utc() -> None:
    mail = make_mail(created_at=datetime(2024, 5, 6, 7, 8, 9, 123456))
    assert mail.created_at == datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert mail.created_at.utcoffset() == timedelta(0)


def test_aware_created_at_is_converted_to_utc() -> None:
    local = datetime(2024, 5, 6, 9, 0, tzinfo=timezone(timedelta(hours=2)))
    mail = make_mail(created_at=local)
    assert mail.created_at == local
    assert mail.created_at.utcoffset() == timedelta(0)
    assert mail.created_at.hour == 7


def _rich_mail() -> Mail:
    return make_mail(
        id=new_id(),
        message_id="<abc.123@mail.example.com>",
        subject="Grüße ✉ — 東京",
        html="<p>Hällo</p>\r\n<p>\tzwei</p>",
        text="Hällo\nzwei",
        sender_name="Der Shop",
        to=[{"address": "a@bücher.de", "name": "Jürgen Groß"}, {"address": "b@example.com"}],
        cc=[{"address": "c@example.com", "name": "C, Esq."}],
        bcc=[{"address": "d@example.com"}],
        reply_to=[{"address": "help@example.com", "name": "Help"}],
        attachments=[
            ref_fields(key="k1", filename="Übersicht 2024.xlsx", content_type="Application/Vnd.MS-Excel"),
            ref_fields(key="k2", filename="photo.jpg", content_type="image/jpeg", size=0),
        ],
        created_at=datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),
        idempotency_key="order-4711",
    )


def test_json_round_trip_is_equal() -> None:
    mail = _rich_mail()
    again = Mail.model_validate_json(mail.model_dump_json())
    assert again == mail
    assert again.created_at.utcoffset() == timedelta(0)
    assert Mail.parse(json.loads(mail.model_dump_json())) == mail
    assert Mail(**mail.model_dump()) == mail


def test_json_form() -> None:
    data = json.loads(_rich_mail().model_dump_json())
    assert data["to"][0] == {"address": "a@xn--bcher-kva.de", "name": "Jürgen Groß"}
    assert data["attachments"][0]["content_type"] == "application/vnd.ms-excel"
    assert data["created_at"] in ("2024-03-01T04:59:59.999999Z", "2024-03-01T04:59:59.999999+00:00")
    assert "content" not in data["attachments"][0]


@pytest.mark.parametrize("given", ["<.bashrc>", '"..x"', '" .env"', "a" * 149 + " " + "b" * 10, "0\xa0<"])
def test_sanitized_names_are_stable_and_survive_a_round_trip(given: str) -> None:
    once = sanitize_filename(given)
    assert sanitize_filename(once) == once
    assert not once.startswith(".")
    mail = make_mail(attachments=[ref_fields(filename=given)])
    assert Mail.model_validate_json(mail.model_dump_json()) == mail


@settings(max_examples=300, database=None, deadline=None)
@given(st.text(st.sampled_from('."<> \xa0a/'), max_size=12))
def test_sanitize_filename_is_idempotent(name: str) -> None:
    once = sanitize_filename(name)
    assert sanitize_filename(once) == once
    assert not once.startswith(".")


# --- the address fast path ------------------------------------------------------------

TRICKY_ADDRESSES = [
    "someone@example.com",
    "Some.One+tag_x-y@Mail.Example.com",
    "some.one@mail.example.co.uk",
    "a@b.co",
    "-@example.com",
    "_@example.com",
    "1@2.example.com",
    "a@1example.com",
    "a@example.c0m",
    "a@example.1a",
    "a@example.123",
    "a@example",
    "a@localhost",
    "a@mail.local",
    "a@foo.test",
    "a@x.invalid",
    "a@onion",
    "a@mail.onion",
    "a@1.in-addr.arpa",
    "Postmaster@example.com",
    "postmaster@example.com",
    "INFO@example.com",
    "a@EXAMPLE.COM",
    "a@Example.com",
    "a@xn--mnchen-3ya.de",
    "a@ab--cd.example.com",
    "a@a--b.example.com",
    "a@-example.com",
    "a@example-.com",
    "a@example..com",
    "a@.example.com",
    "a@example.com.",
    ".a@example.com",
    "a.@example.com",
    "a..b@example.com",
    "a@b@example.com",
    "@example.com",
    "a@",
    "a",
    "a b@example.com",
    '"a b"@example.com',
    "a@[127.0.0.1]",
    "Name <a@example.com>",
    "a!#$%&'*/=?^`{|}~@example.com",
    "müller@example.com",
    "a@münchen.de",
    "a@xn--.com",
    "x" * 64 + "@example.com",
    "x" * 65 + "@example.com",
    "a@" + "b" * 63 + ".com",
    "a@" + "b" * 64 + ".com",
    "a@" + ".".join(["b" * 60] * 4) + ".com",
    "a" * 60 + "@" + ".".join(["b" * 60] * 3) + ".com",
    "  padded@example.com  ",
    "a@example.com\n",
    "a@exa_mple.com",
]


def _full_check(value: str) -> str | None:
    """What check_address gave before its fast path: email-validator on every address."""
    from mailqueue.message import check_header_text

    try:
        check_header_text(value)
        if len(value) > 254:
            return None
        result = email_validator.validate_email(
            value.strip(), check_deliverability=False, allow_smtputf8=False
        )
    except (ValueError, email_validator.EmailNotValidError):
        return None
    return result.ascii_email or result.normalized


def _fast_check(value: str) -> str | None:
    try:
        return check_address(value)
    except ValueError:
        return None


@pytest.mark.parametrize("address", TRICKY_ADDRESSES)
def test_address_fast_path_gives_the_validators_verdict(address: str) -> None:
    assert _fast_check(address) == _full_check(address)


def test_address_fast_path_takes_the_common_address() -> None:
    assert _plain_address("Some.One+tag@mail.example.com")
    # not taken: the validator decides
    for address in ("a@EXAMPLE.com", "postmaster@example.com", "a@mail.local", "a@xn--mnchen-3ya.de"):
        assert not _plain_address(address)


ADDRESS_PIECES = [
    "a", "Z", "0", "9", "-", "_", "+", ".", "@", "xn--", "--", "com", "de", "local", "test", "arpa",
    "info", "postmaster", "é", " ", "!", "b" * 63, "c" * 30,
]  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(ADDRESS_PIECES), min_size=1, max_size=12))
def test_address_fast_path_agrees_on_generated_addresses(pieces: list[str]) -> None:
    address = "".join(pieces)
    assert _fast_check(address) == _full_check(address)


def test_address_fast_path_follows_the_validators_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # a deployment that changes email-validator's module settings still gets its verdicts
    monkeypatch.setattr(
        email_validator, "SPECIAL_USE_DOMAIN_NAMES", [*email_validator.SPECIAL_USE_DOMAIN_NAMES, "example"]
    )
    assert _fast_check("a@mail.example") is None
    monkeypatch.setattr(email_validator, "TEST_ENVIRONMENT", True)
    assert not _plain_address("a@mail.example.com")


@pytest.fixture
def no_special_domains(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process-wide allow-list starts empty and is restored afterwards."""
    import mailqueue.message

    monkeypatch.setattr(mailqueue.message, "_allowed_special", frozenset())


@pytest.mark.usefixtures("no_special_domains")
def test_special_domains_are_refused_unless_allowed() -> None:
    from mailqueue.message import allow_special_domains, check_address

    for address in ("a@relay.test", "a@printer.local", "a@localhost", "a@corp"):
        with pytest.raises(ValueError, match="invalid address"):
            check_address(address)
    allow_special_domains(["test", "localhost", "Corp."])
    assert check_address("a@relay.test") == "a@relay.test"
    assert check_address("Ops.Team@Mail.Relay.TEST") == "Ops.Team@mail.relay.test"
    assert check_address("a@localhost") == "a@localhost"
    assert check_address("a@corp") == "a@corp"
    with pytest.raises(ValueError, match="special-use"):
        check_address("a@printer.local")  # not allowed: still refused
    for bad in ("a@-x.test", "a@x_y.test", "a..b@relay.test", "a b@relay.test", "@relay.test"):
        with pytest.raises(ValueError, match="invalid address"):
            check_address(bad)


@pytest.mark.usefixtures("no_special_domains")
async def test_allowed_special_domains_setting_lets_mail_to_an_internal_relay_through() -> None:
    from mailqueue import Mail, MailQueue, Recipient, Status, Worker
    from mailqueue.settings import load_settings
    from mailqueue.testing.smtpd import SMTPTestServer

    def mail() -> Mail:
        return Mail(subject="s", html="<p>x</p>", to=[Recipient(address="ops@relay.test")])

    with pytest.raises(ValidationError, match="special-use"):
        mail()  # the default
    async with SMTPTestServer() as server:
        settings = load_settings(
            store="memory://",
            queue="memory://",
            attachments="memory://",
            sender=server.url(from_address="a@example.com"),
            allowed_special_domains=["test"],
            retention={"interval": 0},
        )
        mq = MailQueue.from_settings(settings)
        worker = Worker.from_settings(settings, mq)
        async with mq, worker.sender:
            mail_id = (await mq.submit(mail())).id
            run = asyncio.create_task(worker.run())
            for _ in range(200):
                record = await mq.status(mail_id)
                if record is not None and record.status is Status.SENT:
                    break
                await asyncio.sleep(0.02)
            worker.stop()
            await run
        assert [m.recipients for m in server.messages] == [("ops@relay.test",)]


# --- extra headers -----------------------------------------------------------------------------


def test_extra_headers_are_normalized_and_kept_in_rendering_order() -> None:
    mail = make_mail(
        headers=[
            ("x-campaign", "  spring sale "),
            ("references", "<a@example.com>   <b@example.com>"),
            ("X-Kampagne", "Frühling"),
            ("IN-REPLY-TO", "<b@example.com>"),
            *list_unsubscribe_headers("mailto:unsubscribe@example.com", "https://example.com/u?id=42"),
        ]
    )
    assert mail.headers == (
        ("In-Reply-To", "<b@example.com>"),
        ("References", "<a@example.com> <b@example.com>"),
        ("List-Unsubscribe", "<https://example.com/u?id=42>, <mailto:unsubscribe@example.com>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("x-campaign", "spring sale"),
        ("X-Kampagne", "Frühling"),
    )
    # what a store or queue reads back is the same mail
    assert Mail.model_validate_json(mail.dump_json()) == mail
    assert Mail.parse(json.loads(mail.dump_json())) == mail


@pytest.mark.parametrize(
    "name",
    [
        "From", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
        "Content-Transfer-Encoding", "Reply-To", "Return-Path", "Received", "DKIM-Signature",
        "Sender", "X-", "X-a b", "X-a:b", "X_under", "List-Id", "Xfoo", "x-" + "a" * 63,
    ],
)  # fmt: skip
def test_headers_outside_the_allow_list_are_refused(name: str) -> None:
    error = refused(lambda: make_mail(headers=[(name, "value")]))
    assert error.field == "headers"
    assert "is not allowed (allowed: X-*, In-Reply-To, References, List-Unsubscribe" in error.reason


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (("X-Empty", "   "), "header X-Empty: is empty"),
        (("X-Long", "a" * 999), "header X-Long: must be at most 998 characters"),
        (("In-Reply-To", "abc"), "header In-Reply-To: 'abc' is not a message id"),
        (("References", "<a@example.com> b@example.com"), "'b@example.com' is not a message id"),
        (("List-Unsubscribe", "https://example.com/u"), "header List-Unsubscribe: must be one or two URIs"),
        (("List-Unsubscribe", "<http://example.com/u>"), "must be an https URL or a mailto URI"),
        (("List-Unsubscribe", "<javascript:alert(1)>"), "must be an https URL or a mailto URI"),
        (("List-Unsubscribe", "<https://a.example/u>, <https://b.example/u>"), "has more than one https URI"),
        (("List-Unsubscribe", "<mailto:nobody>"), "is not a mailto URI: invalid address"),
        (("List-Unsubscribe-Post", "List-Unsubscribe=Yes"), "must be 'List-Unsubscribe=One-Click'"),
    ],
)  # fmt: skip
def test_header_values_are_checked_per_header(header: tuple[str, str], reason: str) -> None:
    error = refused(lambda: make_mail(headers=[header]))
    assert error.field == "headers"
    assert reason in error.reason


def test_named_headers_may_not_repeat_but_x_headers_may() -> None:
    error = refused(
        lambda: make_mail(headers=[("In-Reply-To", "<a@example.com>"), ("in-reply-to", "<b@x.com>")])
    )
    assert error.reason == "header In-Reply-To is given more than once"
    assert make_mail(headers=[("X-Tag", "a"), ("X-Tag", "b")]).headers == (("X-Tag", "a"), ("X-Tag", "b"))


def test_one_click_needs_an_https_list_unsubscribe() -> None:
    post = ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
    for others in ([], [("List-Unsubscribe", "<mailto:u@example.com>")]):
        error = refused(lambda others=others: make_mail(headers=[*others, post]))  # type: ignore[misc]
        assert "needs a List-Unsubscribe with an https URL (RFC 8058)" in error.reason
    assert make_mail(headers=[post, ("List-Unsubscribe", "<https://example.com/u>")]).headers[1] == post


def test_header_count_limit() -> None:
    headers = [(f"X-H{i}", "v") for i in range(MAX_HEADERS)]
    assert len(make_mail(headers=headers).headers) == MAX_HEADERS
    error = refused(lambda: make_mail(headers=[*headers, ("X-One-More", "v")]))
    assert error.field == "headers"


def test_check_headers_alone() -> None:
    assert check_headers([("x-a", " b ")]) == (("x-a", "b"),)
    with pytest.raises(ValueError, match="'Bcc' is not allowed"):
        check_headers([("Bcc", "evil@example.com")])


def test_list_unsubscribe_headers() -> None:
    assert list_unsubscribe_headers("mailto:u@example.com?subject=unsubscribe") == (
        ("List-Unsubscribe", "<mailto:u@example.com?subject=unsubscribe>"),
    )
    assert list_unsubscribe_headers(" https://example.com/u/1 ") == (
        ("List-Unsubscribe", "<https://example.com/u/1>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    )


@pytest.mark.parametrize(
    ("uris", "reason"),
    [
        ((), "give an https URL and/or a mailto URI"),
        (("http://example.com/u",), "(one-click unsubscribe needs https)"),
        (("ftp://example.com/u",), "must be an https URL or a mailto URI"),
        (("https://",), "is not an https URL with a host name"),
        (("https://example.com/u\r\nBcc: x",), "is not a URI of printable ASCII"),
        (("https://example.com/a,b",), "is not a URI of printable ASCII without spaces"),
        (("https://example.com/ü",), "is not a URI of printable ASCII"),
        (("https://example.com/u>",), "is not a URI of printable ASCII"),
        (("mailto:",), "is not a mailto URI"),
        (("mailto:a@example.com", "mailto:b@example.com"), "has more than one mailto URI"),
        (("https://example.com/" + "a" * 900,), "a URI must be at most 900 characters"),
    ],
)  # fmt: skip
def test_list_unsubscribe_headers_refuse(uris: tuple[str, ...], reason: str) -> None:
    error = refused(lambda: list_unsubscribe_headers(*uris))
    assert error.field == "list_unsubscribe"
    assert reason in error.reason


def test_parse_recipients_names_its_fields() -> None:
    error = refused(lambda: parse_recipients("a@example.com,b@", field="cc", names_field="cc_name"))
    assert error.field == "cc"
    error = refused(lambda: parse_recipients("a@example.com", "A,B", field="cc", names_field="cc_name"))
    assert (error.field, error.reason) == (
        "cc_name",
        "has 2 names for 1 addresses in cc; the counts must be equal",
    )
