"""The queue payload: a versioned JSON envelope, attachments by key only."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from mailqueue.envelope import ENVELOPE_VERSION, decode_envelope, encode_envelope
from mailqueue.message import Mail

SHA = "ab" * 32
SECRET_BODY = "<p>private body 4711</p>"


def rich_mail() -> Mail:
    return Mail(
        message_id="<m1@mail.example.com>",
        subject="Grüße aus Köln ✉ — 東京",
        html="<p>Hällo</p>\r\n<p>\t😀</p>",
        text="Hällo\n😀",
        sender_name="Bücherei",
        to=[{"address": "juergen@example.com", "name": "Jürgen"}],
        cc=[{"address": "a@bücher.de", "name": "Ärger, Anna"}],
        bcc=[{"address": "b@example.com"}],
        reply_to=[{"address": "r@example.com", "name": "Replies"}],
        headers=[("X-Kampagne", "Frühling"), ("In-Reply-To", "<p1@mail.example.com>")],
        attachments=[
            {"key": "k-1", "filename": "Übersicht.xlsx", "content_type": "application/vnd.ms-excel",
             "size": 1234, "sha256": SHA},
            {"key": "k-2", "filename": "empty.txt", "content_type": "text/plain", "size": 0, "sha256": SHA},
        ],
        created_at=datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        idempotency_key="order-1",
    )  # fmt: skip


def mail_json(mail: Mail | None = None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((mail or rich_mail()).model_dump_json())
    return data


def envelope(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def test_round_trip() -> None:
    mail = rich_mail()
    body = encode_envelope(mail)
    assert isinstance(body, bytes)
    decoded = decode_envelope(body)
    assert decoded == mail
    assert decoded.cc[0].address == "a@xn--bcher-kva.de"
    assert decoded.attachments[0].filename == "Übersicht.xlsx"
    assert decoded.created_at == datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert decoded.created_at.tzinfo is not None


def test_round_trip_of_a_minimal_mail() -> None:
    mail = Mail(subject="s", html="h", to=[{"address": "a@example.com"}])
    assert decode_envelope(encode_envelope(mail)) == mail


def test_headers_round_trip_and_are_left_out_when_empty() -> None:
    mail = rich_mail()
    decoded = decode_envelope(encode_envelope(mail))
    assert decoded.headers == (("In-Reply-To", "<p1@mail.example.com>"), ("X-Kampagne", "Frühling"))
    # without headers the envelope is what a version before the field wrote and reads
    plain = mail.model_copy(update={"headers": ()})
    data = json.loads(encode_envelope(plain))
    assert "headers" not in data["mail"]
    assert decode_envelope(encode_envelope(plain)) == plain


def test_encoded_form_is_versioned_json_with_attachments_by_key() -> None:
    mail = rich_mail()
    data = json.loads(encode_envelope(mail))
    assert ENVELOPE_VERSION == 1
    assert data["v"] == ENVELOPE_VERSION
    assert set(data) == {"v", "mail"}
    assert data["mail"] == mail_json(mail)
    assert data["mail"]["attachments"][0] == {
        "key": "k-1",
        "filename": "Übersicht.xlsx",
        "content_type": "application/vnd.ms-excel",
        "size": 1234,
        "sha256": SHA,
    }


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"{", b"\xff\xfe\x00", b"null", b"[]", b"1", b'"mail"', b"{}"],
    ids=["empty", "text", "truncated", "binary", "null", "list", "number", "string", "empty-object"],
)
def test_decode_refuses_what_is_not_an_envelope(body: bytes) -> None:
    with pytest.raises(ValueError, match="not a mailqueue envelope"):
        decode_envelope(body)


@pytest.mark.parametrize("version", [2, 0, -1, None, "1", "v1"])
def test_decode_refuses_other_versions(version: object) -> None:
    with pytest.raises(ValueError, match="not a mailqueue envelope"):
        decode_envelope(envelope(v=version, mail=mail_json()))


def test_decode_refuses_a_missing_version() -> None:
    with pytest.raises(ValueError, match="not a mailqueue envelope"):
        decode_envelope(envelope(mail=mail_json()))


@pytest.mark.parametrize("mail", [None, [], "mail", {}], ids=["null", "list", "string", "empty"])
def test_decode_refuses_a_mail_that_is_not_a_mail(mail: object) -> None:
    with pytest.raises(ValueError, match="not a mailqueue envelope"):
        decode_envelope(envelope(v=1, mail=mail))


def test_decode_refuses_an_envelope_without_mail() -> None:
    with pytest.raises(ValueError, match="not a mailqueue envelope"):
        decode_envelope(envelope(v=1))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"subject": "Hi\r\nBcc: evil@example.com"}, "subject"),
        ({"to": [{"address": "nope"}]}, "to[0].address"),
        ({"to": []}, "to"),
        ({"html": "a\x00b"}, "html"),
        ({"attachments": [{"key": "../../etc/passwd", "filename": "x", "size": 1, "sha256": SHA}]}, "key"),
        ({"id": "BAD ID"}, "id"),
    ],
)
def test_decode_refuses_an_invalid_mail(change: dict[str, Any], named: str) -> None:
    data = mail_json()
    data["html"] = SECRET_BODY
    data.update(change)
    with pytest.raises(ValueError, match="not a mailqueue envelope") as info:
        decode_envelope(envelope(v=1, mail=data))
    message = str(info.value)
    assert named in message
    # a queue backend logs this message: it must not carry the mail's content
    assert SECRET_BODY not in message


def test_extra_envelope_keys_are_ignored() -> None:
    mail = rich_mail()
    body = envelope(v=1, mail=mail_json(mail), trace_id="abc", priority=5, headers={"x": "y"})
    assert decode_envelope(body) == mail


def test_key_order_does_not_matter() -> None:
    mail = rich_mail()
    assert decode_envelope(b'{"mail":' + mail.model_dump_json().encode() + b',"v":1}') == mail
