"""mailqueue.mime: rendered bytes read back exactly by the stdlib parser.

Every rendered message is parsed with ``BytesParser(policy=policy.default)``
and checked in full by :func:`check_message`: the exact header set, decoded
header values, MIME structure, body and attachment contents, and the wire
format (CRLF only, no line over 998 octets, ASCII only).

Display names are decoded with ``email.utils.getaddresses`` and
``email.header`` (RFC 2047 §6.2: whitespace between adjacent encoded-words is
dropped). CPython 3.11's policy.default parser keeps that whitespace in
address headers (gh-128110, fixed upstream), so it cannot check long
non-ASCII names. The addresses come from both parsers and must agree.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import getaddresses
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mailqueue.errors import ValidationError
from mailqueue.message import AttachmentRef, Mail, Recipient, list_unsubscribe_headers
from mailqueue.mime import html_to_text, make_message_id, render

FROM = "noreply@example.com"
CREATED = datetime(2024, 2, 29, 13, 5, 9, 123456, tzinfo=UTC)


def make_mail(**fields: Any) -> Mail:
    values: dict[str, Any] = {
        "id": "0190a1b2c3d4e5f60718293a4b5c6d7e",
        "message_id": "<0190a1b2c3d4e5f60718293a4b5c6d7e@mail.example.com>",
        "subject": "Your invoice",
        "html": "<p>Hello</p>",
        "sender_name": "Billing",
        "to": (Recipient(address="alice@example.com", name="Alice Liddell"),),
        "created_at": CREATED,
    }
    values.update(fields)
    return Mail(**values)


def make_ref(filename: str, data: bytes, content_type: str = "application/octet-stream") -> AttachmentRef:
    digest = hashlib.sha256(data).hexdigest()
    return AttachmentRef(
        key=digest[:16], filename=filename, content_type=content_type, size=len(data), sha256=digest
    )


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def canonical(text: str) -> str:
    """The text as the renderer must send it: every line break as CRLF."""
    return re.sub(r"\r\n|\r|\n", "\r\n", text)


def check_wire_format(raw: bytes) -> None:
    """7-bit, CRLF only, every line within 78 characters (so within 998 octets).

    The tests use short addresses and content types, the only values the
    renderer cannot fold; base64 lines are 76 characters.
    """
    assert raw.isascii()
    assert raw.endswith(b"\r\n")
    lines = raw[:-2].split(b"\r\n")
    for line in lines:
        assert b"\r" not in line
        assert b"\n" not in line
        assert len(line) <= 78, line


def legacy_mailboxes(raw: bytes, name: str) -> list[tuple[str, str]]:
    """An address header's (display name, address) pairs, names decoded per RFC 2047."""
    message = BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
    values = [re.sub(r"\r?\n(?=[ \t])", "", str(v)) for v in message.get_all(name, [])]
    return [(str(make_header(decode_header(n))), a) for n, a in getaddresses(values)]


def check_mailboxes(raw: bytes, message: EmailMessage, name: str, expected: list[tuple[str, str]]) -> None:
    if not expected:
        assert name not in message
        return
    header = message[name]
    assert not header.defects
    assert [a.addr_spec for a in header.addresses] == [a for _, a in expected]
    assert legacy_mailboxes(raw, name) == expected


def expected_structure(mail: Mail, attachments: Sequence[tuple[AttachmentRef, bytes]]) -> Any:
    body: Any = "text/html"
    if mail.text:
        body = ("multipart/alternative", ["text/plain", "text/html"])
    if attachments:
        types = [effective_type(ref) for ref, _ in attachments]
        return ("multipart/mixed", [body, *types])
    return body


def effective_type(ref: AttachmentRef) -> str:
    if ref.content_type.startswith(("message/", "multipart/")):
        return "application/octet-stream"
    return ref.content_type


def structure(part: Message) -> Any:
    if part.is_multipart():
        assert isinstance(part, EmailMessage)
        return (part.get_content_type(), [structure(p) for p in part.iter_parts()])
    return part.get_content_type()


def check_part_headers(part: EmailMessage, names: list[str], *, fallback_params: bool = False) -> None:
    assert list(part.keys()) == names
    assert not part.defects
    for name, value in part.items():
        defects = list(value.defects)
        if fallback_params and name in ("Content-Type", "Content-Disposition"):
            # name*=/filename*= followed by its ASCII fallback: CPython notes the
            # second as a duplicate and keeps the first, the exact name
            defects = [d for d in defects if "duplicate parameter name" not in str(d)]
        assert not defects


def check_message(
    mail: Mail, raw: bytes, attachments: Sequence[tuple[AttachmentRef, bytes]] = ()
) -> EmailMessage:
    """Assert that ``raw`` is exactly the message intended for ``mail``."""
    check_wire_format(raw)
    message = parse(raw)

    names = ["Date", "From", "To"]
    names += ["Cc"] if mail.cc else []
    names += ["Reply-To"] if mail.reply_to else []
    names += ["Subject", "Message-ID", *(name for name, _ in mail.headers), "MIME-Version", "Content-Type"]
    single = not mail.text and not attachments
    names += ["Content-Transfer-Encoding"] if single else []
    assert list(message.keys()) == names
    assert not message.defects

    assert str(message["Subject"]) == mail.subject
    assert not message["Subject"].defects
    assert message["Message-ID"] == mail.message_id
    assert message["Date"].datetime == mail.created_at.replace(microsecond=0)
    assert message["MIME-Version"] == "1.0"
    check_mailboxes(raw, message, "From", [(mail.sender_name.strip(), FROM)])
    check_mailboxes(raw, message, "To", [(r.name, r.address) for r in mail.to])
    check_mailboxes(raw, message, "Cc", [(r.name, r.address) for r in mail.cc])
    check_mailboxes(raw, message, "Reply-To", [(r.name, r.address) for r in mail.reply_to])
    for (name, value), got in zip(
        mail.headers, [v for n, v in message.items() if n in dict(mail.headers)], strict=True
    ):
        assert str(make_header(decode_header(re.sub(r"\r\n(?=[ \t])", "", got).strip()))) == value, name
    header_block = raw.split(b"\r\n\r\n", 1)[0]
    for bcc in mail.bcc:
        assert bcc.address.encode() not in header_block

    assert structure(message) == expected_structure(mail, attachments)
    body = message
    if attachments:
        check_boundary(raw, message, len(attachments) + 1)
        first, *rest = message.iter_parts()
        assert isinstance(first, EmailMessage)
        body = first
        for part, (ref, data) in zip(rest, attachments, strict=True):
            assert isinstance(part, EmailMessage)
            check_part_headers(
                part,
                ["Content-Type", "Content-Disposition", "Content-Transfer-Encoding"],
                fallback_params=True,
            )
            assert part.get_content_disposition() == "attachment"
            assert part.get_payload(decode=True) == data
            assert part.get_filename() == ref.filename
            assert part.get_param("name") == ref.filename
    html = body
    if mail.text:
        check_boundary(raw, body, 2)
        if attachments:
            check_part_headers(body, ["Content-Type"])
        text, html = body.iter_parts()  # type: ignore[assignment]
        assert isinstance(text, EmailMessage)
        check_part_headers(text, ["Content-Type", "Content-Transfer-Encoding"])
        assert text.get_content() == canonical(mail.text)
        assert text.get_content_charset() == "utf-8"
    elif attachments:
        check_part_headers(html, ["Content-Type", "Content-Transfer-Encoding"])
    assert html.get_content() == canonical(mail.html)
    assert html.get_content_charset() == "utf-8"
    assert html["Content-Transfer-Encoding"] == "base64"
    return message


def check_boundary(raw: bytes, part: EmailMessage, count: int) -> None:
    """The multipart's boundary delimits exactly its ``count`` parts and occurs nowhere else."""
    assert not part.defects
    boundary = part.get_boundary()
    assert boundary is not None
    delimiter = b"\r\n--" + boundary.encode()
    assert raw.count(delimiter + b"\r\n") == count
    assert raw.count(delimiter + b"--\r\n") == 1
    assert raw.count(boundary.encode()) == count + 2  # and once in Content-Type


# -- structure ---------------------------------------------------------------------------------------


def test_html_only() -> None:
    mail = make_mail()
    raw = render(mail, from_address=FROM)
    message = check_message(mail, raw)
    assert message["Content-Type"].params == {"charset": "utf-8"}
    assert message["Content-Transfer-Encoding"] == "base64"
    assert raw.startswith(b"Date: Thu, 29 Feb 2024 13:05:09 +0000\r\nFrom: Billing <noreply@example.com>\r\n")
    assert b"\r\nTo: Alice Liddell <alice@example.com>\r\nSubject: Your invoice\r\n" in raw


def test_html_and_text() -> None:
    mail = make_mail(text="Hello\nplain world")
    raw = render(mail, from_address=FROM)
    check_message(mail, raw)
    assert b'Content-Type: multipart/alternative;\r\n boundary="=_a.' + mail.id.encode() + b'"' in raw


def test_empty_text_is_no_text_part() -> None:
    mail = make_mail(text="")
    check_message(mail, render(mail, from_address=FROM))


@pytest.mark.parametrize("text", [None, "plain version"])
def test_one_attachment(text: str | None) -> None:
    data = b"%PDF-1.7\n" + bytes(range(256)) * 3
    attachments = [(make_ref("invoice.pdf", data, "application/pdf"), data)]
    mail = make_mail(text=text, attachments=tuple(ref for ref, _ in attachments))
    raw = render(mail, from_address=FROM, attachments=attachments)
    check_message(mail, raw, attachments)
    # a plain ASCII name needs no RFC 2231 form
    assert b'filename="invoice.pdf"' in raw
    assert b"filename*" not in raw


def test_three_attachments_keep_their_order_and_types() -> None:
    files = [
        ("report.csv", b"a,b\r\n1,2\n", "text/csv"),
        ("empty.bin", b"", "application/octet-stream"),
        ("photo.png", bytes(range(256)) * 1000, "image/png"),
    ]
    attachments = [(make_ref(name, data, ctype), data) for name, data, ctype in files]
    mail = make_mail(text="see attached", attachments=tuple(ref for ref, _ in attachments))
    check_message(mail, render(mail, from_address=FROM, attachments=attachments), attachments)


def test_message_and_multipart_attachments_are_sent_as_octet_stream() -> None:
    # RFC 2046 allows no base64 for message/* and multipart/*: the bytes stay exact
    eml = b"From: a@example.com\r\nSubject: inner\r\n\r\nbody\r\n"
    attachments = [
        (make_ref("forwarded.eml", eml, "message/rfc822"), eml),
        (make_ref("parts.bin", b"--x\r\n", "multipart/mixed"), b"--x\r\n"),
    ]
    mail = make_mail()
    message = check_message(mail, render(mail, from_address=FROM, attachments=attachments), attachments)
    assert [p.get_content_type() for p in list(message.iter_parts())[1:]] == ["application/octet-stream"] * 2


def test_non_ascii_everything() -> None:
    data = "über, 中文 ✓".encode()
    attachments = [(make_ref("Übersicht 2024 — 報告.txt", data, "text/plain"), data)]
    mail = make_mail(
        subject="Grüße aus Köln — 你好, 世界 🌍 and a long tail to make it fold across several lines",
        html="<p>Grüße 🌍</p>\n<p>你好</p>",
        text="Grüße 🌍\n你好",
        sender_name="Société Générale ✉",
        to=(
            Recipient(address="zoe@example.com", name="Zoë Ångström"),
            Recipient(address="li@example.com", name="李小龙"),
        ),
        cc=(Recipient(address="ops@example.com", name="Opérations, équipe «B»"),),
        reply_to=(Recipient(address="support@example.com", name="Ünterstützung"),),
        bcc=(Recipient(address="hidden@example.com", name="Hidden"),),
        attachments=tuple(ref for ref, _ in attachments),
    )
    raw = render(mail, from_address=FROM, attachments=attachments)
    message = check_message(mail, raw, attachments)
    # names that fit one encoded-word also read back right through policy.default
    assert message["From"].addresses[0].display_name == "Société Générale ✉"
    assert [a.display_name for a in message["To"].addresses] == ["Zoë Ångström", "李小龙"]
    assert b"=?utf-8?B?" in raw
    assert b"filename*=utf-8''" in raw or b"filename*0*=utf-8''" in raw
    assert b"Bcc" not in raw
    assert b"hidden@example.com" not in raw


def test_long_unicode_filename_uses_continuations() -> None:
    long_name = "長い名前のファイル" * 33 + ".pdf"  # 301 characters, kept to 150 by the model
    data = b"content"
    ref = make_ref(long_name, data, "application/pdf")
    assert len(long_name) == 301
    assert len(ref.filename) == 150
    assert ref.filename.endswith(".pdf")
    mail = make_mail(attachments=(ref,))
    raw = render(mail, from_address=FROM, attachments=[(ref, data)])
    check_message(mail, raw, [(ref, data)])
    assert b"\r\n filename*0*=utf-8''" in raw
    assert b"\r\n filename*1*=" in raw
    assert b"\r\n name*0*=utf-8''" in raw
    plain = re.search(rb'\r\n filename="([^"]*)"\r\n', raw)
    assert plain is not None
    assert plain.group(1).isascii()
    assert len(plain.group(1)) <= 50
    assert plain.group(1).endswith(b".pdf")


@pytest.mark.parametrize(
    "filename",
    [
        'my "quoted" file.txt',
        "semi;colon; name=evil.txt",
        'back\\slash\\"; filename="evil.exe',
        "a" * 140 + ".txt",
        "=?utf-8?B?ZXZpbC5leGU=?=",
        "%41%42 percent*star'apostrophe.txt",
    ],
)
def test_hostile_ascii_filenames(filename: str) -> None:
    data = b"x"
    ref = make_ref(filename, data)
    mail = make_mail(attachments=(ref,))
    raw = render(mail, from_address=FROM, attachments=[(ref, data)])
    check_message(mail, raw, [(ref, data)])
    # the ASCII fallback never carries characters that need quoting or decoding
    for match in re.finditer(rb'(?:file)?name="([^"\\]*)"', raw):
        assert not set(match.group(1)) & set(b'"\\;%?*')


def test_65535_char_body_with_one_line() -> None:
    html = "<p>" + "x" * (65535 - 7) + "</p>"
    text = "é" * 65535
    mail = make_mail(html=html, text=text)
    check_message(mail, render(mail, from_address=FROM))


def test_leading_dots_and_from_lines_decode_exactly() -> None:
    html = ".\r\n..two dots\r\nFrom here on\r\n.\r\nFrom: x@example.com\r\n>From quoted\r\n."
    mail = make_mail(html=html, text=html)
    raw = render(mail, from_address=FROM)
    check_message(mail, raw)
    # no raw line of the message starts with a dot or "From " (body is base64)
    assert not re.search(rb"\r\n(\.|From )", raw)


def test_line_breaks_become_crlf() -> None:
    # Decision: text parts are in canonical form, every line break CRLF
    # (RFC 2046 §4.1.1); "\n", "\r\n" and a lone "\r" each count as one break.
    mail = make_mail(html="a\nb\r\nc\rd\r\r\ne\n\n", text="one\ntwo\r\nthree\r")
    message = check_message(mail, render(mail, from_address=FROM))
    text, html = message.iter_parts()
    assert html.get_content() == "a\r\nb\r\nc\r\nd\r\n\r\ne\r\n\r\n"
    assert text.get_content() == "one\r\ntwo\r\nthree\r\n"


def test_headers_are_folded_within_78_characters() -> None:
    recipients = tuple(Recipient(address=f"user{i}@example.com", name=f"User Number {i}") for i in range(40))
    mail = make_mail(subject=" ".join(["word"] * 50), to=recipients, cc=recipients[:5])
    raw = render(mail, from_address=FROM)
    check_message(mail, raw)
    assert raw.count(b"\r\n ") > 20


def test_display_names_are_quoted_or_encoded_as_needed() -> None:
    mail = make_mail(
        sender_name="  Padded  Sender  ",
        to=(
            Recipient(address="a@example.com", name="Plain Name"),
            Recipient(address="b@example.com", name='Doe, John "JD" \\ Jr.'),
            Recipient(address="c@example.com", name="Looks =?utf-8?Q?encoded?="),
            Recipient(address="d@example.com", name="<evil@example.com>"),
            Recipient(address="e@example.com", name="evil@example.com"),
            Recipient(address="f@example.com"),
        ),
    )
    raw = render(mail, from_address=FROM)
    check_message(mail, raw)
    assert b'\r\nFrom: "Padded  Sender" <noreply@example.com>\r\n' in raw  # inner run of spaces kept
    assert b"Plain Name <a@example.com>" in raw
    assert rb'"Doe, John \"JD\" \\ Jr." <b@example.com>' in raw
    assert b" f@example.com\r\n" in raw


def test_date_comes_from_created_at_in_utc() -> None:
    mail = make_mail(created_at=datetime.fromisoformat("2023-12-31T23:59:58-05:00"))
    assert b"\r\nDate: Mon, 01 Jan 2024 04:59:58 +0000\r\n" in b"\r\n" + render(mail, from_address=FROM)


# -- determinism and refusals ------------------------------------------------------------------------


def test_rendering_is_deterministic() -> None:
    data = b"\x00\x01" * 100
    ref = make_ref("Ärger.bin", data)
    mail = make_mail(text="t", subject="Ünïcödé", attachments=(ref,))
    first = render(mail, from_address=FROM, attachments=[(ref, data)])
    # as on a later attempt: the mail read back from its stored JSON
    again = Mail.parse(mail.model_dump(mode="json"))
    assert render(again, from_address=FROM, attachments=[(ref, data)]) == first
    assert render(mail, from_address=FROM, attachments=[(ref, data)]) == first
    other = make_mail(id="0190a1b2c3d4e5f60718293a4b5c6d7f", text="t", subject="Ünïcödé", attachments=(ref,))
    assert render(other, from_address=FROM, attachments=[(ref, data)]) != first


def test_boundary_uses_at_most_60_id_characters() -> None:
    mail = make_mail(id="a" * 64, text="t")
    raw = render(mail, from_address=FROM)
    check_message(mail, raw)
    assert b'boundary="=_a.' + b"a" * 60 + b'"' in raw


def test_missing_message_id_is_refused() -> None:
    with pytest.raises(ValueError, match="message_id"):
        render(make_mail(message_id=None), from_address=FROM)


@pytest.mark.parametrize(
    "address",
    ["", "no-at-sign", "a@b.com>, evil@example.com", "a@example.com\r\nBcc: x@example.com", "Ä@x.com"],
)
def test_bad_from_address_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="mailbox address"):
        render(make_mail(), from_address=address)


def test_unvalidated_mail_cannot_inject_headers() -> None:
    # model_construct skips validation: the renderer must still refuse or encode
    bad = Mail.model_construct(**{**make_mail().__dict__, "subject": "x\r\nBcc: evil@example.com"})
    raw = render(bad, from_address=FROM)
    check_wire_format(raw)
    assert list(parse(raw).keys()).count("Bcc") == 0
    assert str(parse(raw)["Subject"]) == "x\r\nBcc: evil@example.com"
    evil = Recipient.model_construct(address="a@example.com>\r\nBcc: evil@example.com", name="")
    with pytest.raises(ValueError, match="mailbox address"):
        render(Mail.model_construct(**{**bad.__dict__, "to": (evil,)}), from_address=FROM)
    with pytest.raises(ValueError, match="Message-ID"):
        render(Mail.model_construct(**{**bad.__dict__, "message_id": "<a@b>\r\nX: y"}), from_address=FROM)


def test_make_message_id() -> None:
    assert make_message_id("0190abc", "mail.example.com") == "<0190abc@mail.example.com>"
    assert make_mail(message_id=make_message_id("a-b_c", "xn--bcher-kva.example")).message_id is not None
    for domain in [
        "",
        "exa mple.com",
        "a..b",
        "-a.com",
        "a-.com",
        "a.com>",
        "a.com\r\nX: y",
        "bücher.de",
        "a" * 64,
    ]:
        with pytest.raises(ValueError, match="host name"):
            make_message_id("abc", domain)
    for mail_id in ["", "a b", "a@b", "<a>", ".a", "a.", "x" * 201]:
        with pytest.raises(ValueError, match="mail id"):
            make_message_id(mail_id, "example.com")


# -- properties --------------------------------------------------------------------------------------

CRAFTED = [
    "=?utf-8?B?QmNjOiBldmlsQGV4YW1wbGUuY29t?=",
    "=?utf-8?Q?a?= =?utf-8?Q?b?=",
    "x\r\nBcc: evil@example.com",
    '"evil@example.com" <evil@example.com>',
    "Undisclosed recipients:;",
    "a" * 255,
    "é" * 255,
    "😀" * 255,
    " leading and trailing ",
    "tab\there",
    '\\\\\\"',
    "(comment) [literal]",
    "x" * 70 + " " + "y" * 70,
]
TRICKY = " \"\\;,:<>@=?_()[]%*'.-\t\r\naZ9é中😀\u00a0\u3000\u200b\ufeff\u0301"
hostile = st.one_of(
    st.text(max_size=90),
    st.text(alphabet=TRICKY, max_size=90),
    st.text(max_size=300),
    st.sampled_from(CRAFTED),
)


def _accepts(build: Any) -> bool:
    try:
        build()
    except ValidationError:
        return False
    return True


subjects = hostile.filter(lambda s: _accepts(lambda: make_mail(subject=s)))
sender_names = hostile.filter(lambda s: _accepts(lambda: make_mail(sender_name=s)))
names = hostile.filter(lambda s: _accepts(lambda: Recipient(address="x@example.com", name=s)))
filenames = hostile.filter(lambda s: _accepts(lambda: make_ref(s, b"")))
bodies = st.text(max_size=400).filter(lambda s: bool(s) and _accepts(lambda: make_mail(html=s)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=subjects,
    sender_name=sender_names,
    to_names=st.lists(names, min_size=1, max_size=3),
    cc_name=names,
    reply_name=names,
    filename=filenames,
    with_text=st.booleans(),
)
def test_hostile_header_text_round_trips(
    subject: str,
    sender_name: str,
    to_names: list[str],
    cc_name: str,
    reply_name: str,
    filename: str,
    with_text: bool,
) -> None:
    data = filename.encode()
    ref = make_ref(filename, data)
    try:
        mail = make_mail(
            subject=subject,
            sender_name=sender_name,
            to=tuple(Recipient(address=f"to{i}@example.com", name=n) for i, n in enumerate(to_names)),
            cc=(Recipient(address="cc@example.com", name=cc_name),),
            reply_to=(Recipient(address="reply@example.com", name=reply_name),),
            bcc=(Recipient(address="secret@example.com", name=cc_name),),
            text="plain" if with_text else None,
            attachments=(ref,),
        )
    except ValidationError:
        assume(False)
        raise
    raw = render(mail, from_address=FROM, attachments=[(ref, data)])
    check_message(mail, raw, [(ref, data)])


@settings(max_examples=100, deadline=None)
@given(html=bodies, text=st.none() | bodies)
def test_any_body_round_trips(html: str, text: str | None) -> None:
    mail = make_mail(html=html, text=text)
    raw = render(mail, from_address=FROM)
    check_message(mail, raw)
    assert render(mail, from_address=FROM) == raw


def test_header_guard_refuses_unsafe_tokens() -> None:
    # Last line of defence behind every encoder: no token may carry CR, LF or non-ASCII.
    from mailqueue.mime import _fold

    assert _fold("Subject", [" a", " b"]) == "Subject: a b\r\n"
    for token in [" a\r\nBcc: x@example.com", " a\nb", " é", "no-leading-space", "   "]:
        with pytest.raises(ValueError, match="unsafe Subject header token"):
            _fold("Subject", [token])


# --- the generated text/plain alternative ---------------------------------------------------------

INVOICE_HTML = (
    "<html><head><title>Invoice</title><style>p { color: red }</style></head><body>"
    "<script>track()</script><p>Hello <b>Ann</b>,</p>"
    "<p>Your invoice <a href='https://billing.example.com/i/42'>#42</a> is attached.</p>"
    "<ul><li>Widgets: 3</li><li>Total: 30 &euro;</li></ul>"
    "<p>Questions? <a href='mailto:help@example.com'>help@example.com</a></p></body></html>"
)


def test_html_to_text_keeps_what_a_reader_sees_and_the_links() -> None:
    assert html_to_text(INVOICE_HTML) == (
        "Hello Ann,\n\nYour invoice #42 <https://billing.example.com/i/42> is attached.\n\n"
        "  * Widgets: 3\n  * Total: 30 \u20ac\n\nQuestions? help@example.com <mailto:help@example.com>\n"
    )
    assert html_to_text("<p><img src='logo.png'></p>") == ""  # nothing visible: no text part
    assert html_to_text("<a href='https://x.example'>https://x.example</a>") == "https://x.example\n"


def test_a_mail_without_text_gets_one_generated_from_its_html() -> None:
    mail = make_mail(html=INVOICE_HTML)
    raw = render(mail, from_address=FROM, text_from_html=True)
    assert raw == render(mail, from_address=FROM, text_from_html=True)  # every attempt, same bytes
    message = parse(raw)
    assert message.get_content_type() == "multipart/alternative"
    plain, html = message.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert plain.get_content() == canonical(html_to_text(INVOICE_HTML))
    assert html.get_content() == INVOICE_HTML
    # the client's own text wins; switched off, the html part stays alone as before
    own = parse(render(make_mail(html=INVOICE_HTML, text="Mine."), from_address=FROM, text_from_html=True))
    assert next(own.iter_parts()).get_content() == "Mine."
    alone = parse(render(mail, from_address=FROM))
    assert alone.get_content_type() == "text/html"
    only_image = parse(render(make_mail(html="<img src='x.png'>"), from_address=FROM, text_from_html=True))
    assert only_image.get_content_type() == "text/html"


# -- extra headers ----------------------------------------------------------------------------------


def test_extra_headers_come_after_message_id_in_the_mails_order() -> None:
    mail = make_mail(
        cc=(Recipient(address="carol@example.com"),),
        bcc=(Recipient(address="hidden@example.com", name="Hidden"),),
        headers=(
            ("X-Campaign", "spring-2026"),
            ("X-Kampagne", "Frühlingsgrüße an alle Kundinnen und Kunden — 春 " * 3),
            ("In-Reply-To", "<parent@mail.example.com>"),
            ("References", "<root@mail.example.com> <parent@mail.example.com>"),
            *list_unsubscribe_headers("https://example.com/unsubscribe?u=42", "mailto:unsub@example.com"),
        ),
    )
    raw = render(mail, from_address=FROM)
    message = check_message(mail, raw)
    names = list(message.keys())
    assert names[names.index("Message-ID") :][:8] == [
        "Message-ID", "In-Reply-To", "References", "List-Unsubscribe", "List-Unsubscribe-Post",
        "X-Campaign", "X-Kampagne", "MIME-Version",
    ]  # fmt: skip
    assert (
        b"\r\nList-Unsubscribe: <https://example.com/unsubscribe?u=42>,\r\n <mailto:unsub@example.com>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw
    )
    assert b"\r\nX-Campaign: spring-2026\r\n" in raw
    assert b"=?utf-8?" in raw.split(b"X-Kampagne:", 1)[1].split(b"\r\nMIME", 1)[0]
    assert b"hidden@example.com" not in raw
    assert b"Bcc" not in raw


def test_a_long_x_header_name_starts_its_value_on_the_next_line() -> None:
    name = "X-" + "Long-Header-Name-" * 3 + "End"
    mail = make_mail(headers=((name, "Grüße aus Köln " * 8),))
    raw = render(mail, from_address=FROM)
    check_message(mail, raw)  # every line within 78 characters
    assert f"\r\n{name}:\r\n =?utf-8?B?".encode() in raw


def test_unvalidated_mail_cannot_smuggle_headers() -> None:
    base = make_mail().__dict__
    for headers, match in [
        ((("From", "evil@example.com"),), "'From' is not allowed"),
        ((("Content-Type", "text/plain"),), "'Content-Type' is not allowed"),
        ((("X-A", "b\r\nBcc: evil@example.com"),), "control characters"),
        ((("X-A: b\r\nBcc", "evil@example.com"),), "is not allowed"),
        ((("List-Unsubscribe", "<https://e.example/u>\r\nBcc: x"),), "control characters"),
    ]:
        with pytest.raises(ValueError, match=match):
            render(Mail.model_construct(**{**base, "headers": headers}), from_address=FROM)
