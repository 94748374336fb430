"""Render a :class:`~mailqueue.message.Mail` to RFC 5322 message bytes.

Built with plain string operations, not the stdlib ``email`` generator (slow,
and CPython 3.11.7's has header-injection bugs). Rendering is a pure function
of the mail, the From address and the attachment bytes: every attempt sends
the same bytes.

Encoding decisions:

* **Bodies and attachments are base64** in 76-character lines. ``binascii``
  encodes it in C, and its lines do not depend on the content, so long lines,
  trailing spaces, bare CRs, leading dots and ``From`` lines need no special
  cases. Its alphabet also cannot form a boundary. Quoted-printable would be
  about 25% smaller for English text but needs all of those cases.
  SpamAssassin's MIME_BASE64_TEXT rule does not apply to UTF-8 text.
* **Text is in canonical form**: every line break (CRLF, lone CR, lone LF)
  becomes CRLF before encoding; parts are declared ``charset=utf-8``. An
  empty ``mail.text`` counts as no text part.
* **Header text** (Subject, display names) is written as it is when it is
  printable ASCII that a parser reads back unchanged. Otherwise it becomes
  RFC 2047 encoded-words: Q when the text is ASCII (readable, and not
  "base64 encoded unnecessarily" to spam filters), B otherwise. Each
  encoded-word is at most 66 characters and is split between characters.
  Display names are atoms, else a quoted-string (``\\`` and ``"``
  escaped), else encoded-words. Leading and trailing whitespace is dropped
  from the sender name, as :class:`~mailqueue.message.Recipient` does for
  recipient names.
* **Folding** happens only at whitespace the value already has, or between
  encoded-words, so lines stay within 78 characters. The exceptions are a
  single address, Message-ID or content type that is longer: these cannot
  be folded and are bounded well below 998 octets. Every header is checked
  to be printable ASCII before it is folded. A CR or LF in any input can
  only leave as an encoded-word or a ``%0D``/``%0A`` escape.
* **Extra headers** (``mail.headers``: ``X-*``, ``In-Reply-To``,
  ``References``, ``List-Unsubscribe``, ``List-Unsubscribe-Post``, an
  allow-list) come after Message-ID, in the mail's order (named ones first),
  checked again here: they can never replace a header the renderer writes.
  ``X-*`` values are header text as above; the others are ASCII by their
  checks and folded between their message ids or URIs.
* **Attachment names** use RFC 2231 ``name*``/``filename*`` (UTF-8,
  continued as ``*0*``, ``*1*``... when long) followed by an ASCII
  ``name=``/``filename=`` fallback of at most 50 characters. The extended
  parameter comes first because parsers that take the first occurrence
  (CPython's among them) then pick the exact name. ``message/*`` and
  ``multipart/*`` attachments are sent as ``application/octet-stream``
  because RFC 2046 forbids base64 for them.
* **A plain-text alternative** is generated from the HTML
  (:func:`~mailqueue.htmltext.html_to_text`: our own single pass over lxml's
  tree; blocks, list bullets, table rows, links as ``text <url>``) when the
  mail has no ``text`` and ``text_from_html`` is on: mail with only an HTML
  part scores worse with spam filters and cannot be read by text-only
  clients. The same HTML always gives the same text. It costs ~25 µs for a
  2 KB mail, ~1.2 ms for 20 KB of newsletter markup (inscriptis, used
  before, took ~4 and ~3 times as long).
* **Boundaries** are ``=_m.<id>`` (mixed) and ``=_a.<id>`` (alternative),
  the id cut to 60 characters.
  ``=_`` cannot occur in base64, and part header lines start with
  ``Content-`` or whitespace, so a delimiter line never occurs inside a part.
"""

from __future__ import annotations

import binascii
import re
import string
import unicodedata
from collections.abc import Sequence
from datetime import UTC

from mailqueue.htmltext import html_to_text
from mailqueue.message import AttachmentRef, Mail, Recipient, check_header

__all__ = ["html_to_text", "make_message_id", "render"]

_LINE_MAX = 78
# A token (with its leading space) of this length still fits on the first line
# after "Reply-To:" within 76 characters, the RFC 2047 line limit.
_TOKEN_MAX = 67
_B_BYTES_MAX = 39  # 4 * ceil(39 / 3) = 52 base64 chars + 12 = a 64-char encoded-word
_Q_CHARS_MAX = 54  # payload of a Q encoded-word: at most 66 characters in all
_FALLBACK_MAX = 50

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_RAW_TEXT_RE = re.compile(r"[\x21-\x7e]+(?: +[\x21-\x7e]+)*\Z")
_ATOMS_RE = re.compile(rf"[{_ATEXT}]+(?: [{_ATEXT}]+)*\Z")
_QUOTABLE_RE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?\Z")
_WORDS_RE = re.compile(r" +[^ ]+")
_UNSAFE_RE = re.compile(r"[^\x20-\x7e]")
_ADDRESS_RE = re.compile(rf"(?=.{{3,254}}\Z)[{_ATEXT}.]+@[A-Za-z0-9.-]+\Z")
_DOT_ATOM_RE = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*\Z")
_DOMAIN_RE = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z"
)
_MESSAGE_ID_RE = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,500}>\Z")
_BOUNDARY_ID_RE = re.compile(r"[0-9A-Za-z_-]{1,64}\Z")
_CONTENT_TYPE_RE = re.compile(r"(?=.{3,200}\Z)[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*\Z")

_Q_SAFE = frozenset(string.ascii_letters + string.digits + "!*+-/")
_Q_MAP = tuple("_" if c == " " else c if c in _Q_SAFE else f"={ord(c):02X}" for c in map(chr, range(128)))
_ATTR_CHARS = frozenset(string.ascii_letters + string.digits + "!#$&+-.^_`|~")
_FALLBACK_SAFE = frozenset(string.ascii_letters + string.digits + " !#$&'()+-.=@[]^_{}~")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def make_message_id(mail_id: str, domain: str) -> str:
    """Return the Message-ID for a mail: ``<mail_id@domain>``.

    Args:
        mail_id: the mail's public id (a dot-atom, at most 200 characters).
        domain: a host name in ASCII (IDNA-encode it first).

    Raises:
        ValueError: ``mail_id`` is not a dot-atom, or ``domain`` is not a host name.
    """
    if len(mail_id) > 200 or not _DOT_ATOM_RE.match(mail_id):
        raise ValueError(f"mail id {mail_id!r} cannot be the left part of a Message-ID")
    if not _DOMAIN_RE.match(domain):
        raise ValueError(f"{domain!r} is not a host name usable in a Message-ID")
    return f"<{mail_id}@{domain}>"


def render(
    mail: Mail,
    *,
    from_address: str,
    attachments: Sequence[tuple[AttachmentRef, bytes]] = (),
    text_from_html: bool = False,
) -> bytes:
    """Render ``mail`` as the bytes of an RFC 5322 message, CRLF line endings.

    The result depends only on the arguments, so every attempt sends the same
    bytes. Bcc recipients never appear in the headers.

    Args:
        mail: the mail; its ``message_id`` must already be set.
        from_address: the configured From address (never the request's);
            ``mail.sender_name`` is its display name.
        attachments: the attachments whose bytes were found, in order.
        text_from_html: when ``mail.text`` is empty, generate the text part
            from the HTML (:func:`html_to_text`).

    Returns:
        The message, 7-bit ASCII: one ``text/html`` part;
        ``multipart/alternative`` (text, then html) when there is a text
        (``mail.text``, or generated); wrapped in ``multipart/mixed`` when
        there are attachments.

    Raises:
        ValueError: ``mail.message_id`` is None, or a value cannot be put into
            a header safely (possible only for a Mail built without validation).
    """
    if mail.message_id is None:
        raise ValueError("mail.message_id is not set; it must be fixed when the mail is accepted")
    if not _MESSAGE_ID_RE.match(mail.message_id):
        raise ValueError(f"Message-ID {mail.message_id!r} is not printable ASCII in angle brackets")
    if not _BOUNDARY_ID_RE.match(mail.id):
        raise ValueError(f"mail id {mail.id!r} cannot make a MIME boundary")

    # At most 60 characters of the id keep the boundary line within 78.
    tag = mail.id[:60]
    content = _text_part("html", mail.html)
    text = mail.text or (html_to_text(mail.html) if text_from_html else "")
    if text:
        content = _multipart("alternative", f"=_a.{tag}", [_text_part("plain", text), content])
    if attachments:
        parts = [content] + [_attachment_part(ref, data) for ref, data in attachments]
        content = _multipart("mixed", f"=_m.{tag}", parts)

    headers = [
        _fold("Date", [" " + _format_date(mail)]),
        _fold("From", _mailbox_tokens(mail.sender_name, from_address)),
        _fold("To", _address_list_tokens(mail.to)),
    ]
    if mail.cc:
        headers.append(_fold("Cc", _address_list_tokens(mail.cc)))
    if mail.reply_to:
        headers.append(_fold("Reply-To", _address_list_tokens(mail.reply_to)))
    headers.append(_fold("Subject", _text_tokens(mail.subject)))
    headers.append(_fold("Message-ID", [" " + mail.message_id]))
    headers.extend(_extra_header(name, value) for name, value in mail.headers)
    headers.append("MIME-Version: 1.0\r\n")
    return b"".join(["".join(headers).encode("ascii"), *content, b"\r\n"])


def _extra_header(name: str, value: str) -> str:
    """One of ``mail.headers``, checked again (the renderer never trusts a Mail built
    without validation to keep to the allow-list)."""
    name, value = check_header(name, value)
    if name in ("In-Reply-To", "References", "List-Unsubscribe"):
        # message ids or <URI>s, ASCII by their checks: folded between them
        return _fold(name, [" " + item for item in value.split(" ")], fold_first=True)
    if name == "List-Unsubscribe-Post":
        return _fold(name, [" " + value])
    return _fold(name, _text_tokens(value), fold_first=True)


def _fold(name: str, tokens: Sequence[str], *, fold_first: bool = False) -> str:
    """One header, folded before tokens (each starts with whitespace) as needed; before
    the first one too with ``fold_first`` (for a long header name)."""
    lines: list[str] = []
    line = name + ":"
    for index, token in enumerate(tokens):
        if not token.startswith(" ") or not token.strip(" ") or _UNSAFE_RE.search(token):
            raise ValueError(f"unsafe {name} header token {token!r}")
        if (index or fold_first) and len(line) + len(token) > _LINE_MAX:
            lines.append(line)
            line = token
        else:
            line += token
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _format_date(mail: Mail) -> str:
    # Made by hand: strftime's day and month names follow the locale.
    d = mail.created_at if mail.created_at.tzinfo is None else mail.created_at.astimezone(UTC)
    return (
        f"{_DAYS[d.weekday()]}, {d.day:02d} {_MONTHS[d.month - 1]} {d.year:04d} "
        f"{d.hour:02d}:{d.minute:02d}:{d.second:02d} +0000"
    )


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 encoded-words for ``text``: Q if it is ASCII, else B (UTF-8)."""
    words: list[str] = []
    if text.isascii():
        payload = ""
        for piece in map(_Q_MAP.__getitem__, map(ord, text)):
            if len(payload) + len(piece) > _Q_CHARS_MAX:
                words.append(payload)
                payload = ""
            payload += piece
        words.append(payload)
        return [f"=?utf-8?Q?{payload}?=" for payload in words if payload]
    start = size = 0
    for index, char in enumerate(text):
        code = ord(char)
        width = 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
        if size + width > _B_BYTES_MAX:
            words.append(text[start:index])
            start, size = index, 0
        size += width
    words.append(text[start:])
    return [f"=?utf-8?B?{binascii.b2a_base64(w.encode(), newline=False).decode()}?=" for w in words]


def _fits(tokens: list[str]) -> bool:
    return all(len(token) <= _TOKEN_MAX for token in tokens)


def _text_tokens(text: str) -> list[str]:
    """Tokens of an unstructured value (Subject)."""
    # Raw text must survive a parser unchanged: no edge spaces (stripped),
    # no "=?" (taken for an encoded-word).
    if _RAW_TEXT_RE.match(text) and "=?" not in text:
        tokens = _WORDS_RE.findall(" " + text)
        if _fits(tokens):
            return tokens
    return [" " + word for word in _encoded_words(text)]


def _phrase_tokens(name: str) -> list[str]:
    """Tokens of a display name (non-empty, no edge whitespace)."""
    if "=?" not in name:
        tokens: list[str] | None = None
        if _ATOMS_RE.match(name):
            tokens = [" " + word for word in name.split(" ")]
        elif _QUOTABLE_RE.match(name):
            tokens = _WORDS_RE.findall(' "' + name.replace("\\", "\\\\").replace('"', '\\"') + '"')
        if tokens is not None and _fits(tokens):
            return tokens
    return [" " + word for word in _encoded_words(name)]


def _mailbox_tokens(name: str, address: str) -> list[str]:
    if not _ADDRESS_RE.match(address):
        raise ValueError(f"{address!r} is not a plain ASCII mailbox address")
    name = name.strip()
    if not name:
        return [" " + address]
    return [*_phrase_tokens(name), f" <{address}>"]


def _address_list_tokens(recipients: Sequence[Recipient]) -> list[str]:
    tokens: list[str] = []
    for recipient in recipients:
        if tokens:
            tokens[-1] += ","
        tokens.extend(_mailbox_tokens(recipient.name, recipient.address))
    return tokens


def _base64_lines(data: bytes) -> bytes:
    encoded = binascii.b2a_base64(data, newline=False)
    return b"\r\n".join([encoded[i : i + 76] for i in range(0, len(encoded), 76)])


# A part is a list of byte chunks, joined once at the end: its headers, the
# blank line, then its body without the final CRLF.


def _text_part(subtype: str, text: str) -> list[bytes]:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    body = text.replace("\n", "\r\n").encode("utf-8")
    headers = f"Content-Type: text/{subtype}; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    return [headers.encode("ascii"), _base64_lines(body)]


def _multipart(subtype: str, boundary: str, parts: list[list[bytes]]) -> list[bytes]:
    header = _fold("Content-Type", [f" multipart/{subtype};", f' boundary="{boundary}"'])
    chunks = [header.encode("ascii") + b"\r\n"]
    for part in parts:
        chunks += [f"--{boundary}\r\n".encode("ascii"), *part, b"\r\n"]
    chunks.append(f"--{boundary}--".encode("ascii"))
    return chunks


def _ascii_fallback(name: str) -> str:
    """An ASCII name any client can show: accents dropped, the rest ``_``."""
    if len(name) <= _FALLBACK_MAX and name == name.strip() and all(c in _FALLBACK_SAFE for c in name):
        return name
    decomposed = unicodedata.normalize("NFKD", name)
    text = "".join(c if c in _FALLBACK_SAFE else "_" for c in decomposed if not unicodedata.combining(c))
    text = text.strip()
    if len(text) > _FALLBACK_MAX:
        stem, dot, ext = text.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            text = stem[: _FALLBACK_MAX - len(ext) - 1].rstrip() + "." + ext
        else:
            text = text[:_FALLBACK_MAX].rstrip()
    return text or "attachment"


def _name_param_tokens(param: str, name: str) -> list[str]:
    """``param*`` (RFC 2231, continued when long) and an ASCII ``param=`` fallback."""
    fallback = _ascii_fallback(name)
    plain = f' {param}="{fallback}"'
    if fallback == name:
        return [plain]
    pieces = [c if c in _ATTR_CHARS else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in name]
    single = f" {param}*=utf-8''" + "".join(pieces) + ";"
    if len(single) <= _TOKEN_MAX:
        return [single, plain]
    tokens: list[str] = []
    prefix, value = f" {param}*0*=utf-8''", ""
    for piece in pieces:
        if value and len(prefix) + len(value) + len(piece) + 1 > _TOKEN_MAX:
            tokens.append(f"{prefix}{value};")
            prefix, value = f" {param}*{len(tokens)}*=", ""
        value += piece
    tokens.append(f"{prefix}{value};")
    return [*tokens, plain]


def _attachment_part(ref: AttachmentRef, data: bytes) -> list[bytes]:
    content_type = ref.content_type
    if not _CONTENT_TYPE_RE.match(content_type):
        raise ValueError(f"attachment content type {content_type!r} is not a MIME type")
    if content_type.startswith(("multipart/", "message/")):
        content_type = "application/octet-stream"
    headers = (
        _fold("Content-Type", [f" {content_type};", *_name_param_tokens("name", ref.filename)])
        + _fold("Content-Disposition", [" attachment;", *_name_param_tokens("filename", ref.filename)])
        + "Content-Transfer-Encoding: base64\r\n\r\n"
    )
    return [headers.encode("ascii"), _base64_lines(data)]
