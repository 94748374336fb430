"""The send route's fields beyond the original form: ``cc``, ``bcc``, ``reply_to``, ``text``,
``headers`` and ``list_unsubscribe``, over real HTTP in JSON, multipart and URL-encoded bodies.

Accepted fields are checked in the recorded mail (embedded default and MariaDB); refused ones
answer 400 (413 for the recipient limit) naming the field, and nothing is kept. The end-to-end
test runs the worker against the real SMTP test server and reads what it received: Cc, Reply-To
and the extra headers in the message, the Bcc recipient in the RCPT list only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import test_http_api as http_api
from test_http_api import FIELDS, SEND, Service, StartService, _until, envelope, multipart_body

from mailqueue import APISettings, Recipient, Status, WorkerSettings
from mailqueue.testing.smtpd import SMTPTestServer

# the send tests' fixtures, shared (pytest finds them in this module's namespace)
sqlite_template = http_api.sqlite_template
backends = http_api.backends
start = http_api.start
start_embedded = http_api.start_embedded
service = http_api.service
embedded = http_api.embedded

ENCODINGS = ["json", "multipart", "urlencoded"]

#: The new fields, as a form carries them (the JSON body gives the address fields as lists).
EXTRA = {
    "cc": "carol@example.com, dave@example.org",
    "cc_name": "Carol,Dave D.",
    "bcc": "hidden@example.com",
    "reply_to": "help@example.com",
    "reply_to_name": "Help Desk",
    "text": "Your invoice is attached.\nGrüße",
    "list_unsubscribe": "https://example.com/unsubscribe?u=42, mailto:unsubscribe@example.com",
}
HEADERS = [
    ("X-Campaign", "spring-2026"),
    ("X-Kampagne", "Frühling"),
    ("In-Reply-To", "<order.42@shop.example.com>"),
    ("References", "<order.41@shop.example.com> <order.42@shop.example.com>"),
]
#: What the mail keeps of HEADERS and list_unsubscribe, in rendering order.
KEPT_HEADERS = (
    ("In-Reply-To", "<order.42@shop.example.com>"),
    ("References", "<order.41@shop.example.com> <order.42@shop.example.com>"),
    ("List-Unsubscribe", "<https://example.com/unsubscribe?u=42>, <mailto:unsubscribe@example.com>"),
    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ("X-Campaign", "spring-2026"),
    ("X-Kampagne", "Frühling"),
)
LIST_FIELDS = (
    "receiver",
    "receiver_name",
    "cc",
    "cc_name",
    "bcc",
    "reply_to",
    "reply_to_name",
    "list_unsubscribe",
)


async def post(
    client: httpx.AsyncClient,
    encoding: str,
    fields: dict[str, str],
    headers: Sequence[tuple[str, str]] = (),
    *,
    header_lines: Sequence[str] = (),
) -> httpx.Response:
    """POST ``fields`` and the extra ``headers`` in ``encoding``: JSON (address fields as lists,
    headers as an object) or a form (one ``headers`` field per header, ``Name: value``;
    ``header_lines`` are sent as they are)."""
    if encoding == "json":
        document: dict[str, Any] = {
            name: [item.strip() for item in value.split(",")] if name in LIST_FIELDS else value
            for name, value in fields.items()
        }
        if headers:
            document["headers"] = dict(headers)
        return await client.post(SEND, json=document)
    pairs = [*fields.items(), *(("headers", f"{name}: {value}") for name, value in headers)]
    pairs += [("headers", line) for line in header_lines]
    if encoding == "urlencoded":
        return await client.post(
            SEND, content=urlencode(pairs), headers={"content-type": "application/x-www-form-urlencoded"}
        )
    boundary = "fields-boundary"
    parts = [(f'Content-Disposition: form-data; name="{name}"', value.encode()) for name, value in pairs]
    return await client.post(
        SEND,
        content=multipart_body(boundary, parts),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )


# --- accepted -------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_every_new_field_is_recorded(service: Service, encoding: str) -> None:
    response = await post(service.client, encoding, {**FIELDS, **EXTRA}, HEADERS)
    mail_id = envelope(response, 200)["data"]["id"]
    (record,) = await service.records()
    assert record.id == mail_id
    mail = record.mail
    assert mail.to == (
        Recipient(address="ann@example.com", name="Ann Smith"),
        Recipient(address="bob@example.com", name="Bob"),
    )
    assert mail.cc == (
        Recipient(address="carol@example.com", name="Carol"),
        Recipient(address="dave@example.org", name="Dave D."),
    )
    assert mail.bcc == (Recipient(address="hidden@example.com"),)
    assert mail.reply_to == (Recipient(address="help@example.com", name="Help Desk"),)
    assert mail.text == "Your invoice is attached.\nGrüße"
    assert mail.headers == KEPT_HEADERS
    assert [r.address for r in record.recipients] == [
        "ann@example.com",
        "bob@example.com",
        "carol@example.com",
        "dave@example.org",
        "hidden@example.com",
    ]
    assert await service.kept() == (1, 1, 0)


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_each_new_field_alone(embedded: Service, encoding: str) -> None:
    """Every field is optional and independent of the others."""
    for extra, headers, check in [
        ({"cc": "carol@example.com"}, [], lambda m: m.cc == (Recipient(address="carol@example.com"),)),
        (
            {"bcc": "x@example.com,y@example.com"},
            [],
            lambda m: [r.address for r in m.bcc] == ["x@example.com", "y@example.com"],
        ),
        (
            {"reply_to": "help@example.com"},
            [],
            lambda m: m.reply_to == (Recipient(address="help@example.com"),),
        ),
        ({"text": "plain"}, [], lambda m: m.text == "plain"),
        ({}, [("x-trace", "  abc  ")], lambda m: m.headers == (("x-trace", "abc"),)),
        (
            {"list_unsubscribe": "mailto:unsubscribe@example.com?subject=stop"},
            [],
            lambda m: m.headers == (("List-Unsubscribe", "<mailto:unsubscribe@example.com?subject=stop>"),),
        ),
        (
            {},
            [
                ("List-Unsubscribe", "<https://example.com/u>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ],
            lambda m: m.headers[1] == ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ),
    ]:
        response = await post(embedded.client, encoding, {**FIELDS, **extra}, headers)
        mail_id = envelope(response, 200)["data"]["id"]
        record = await embedded.mq.status(mail_id)
        assert record is not None
        assert check(record.mail), (extra, headers, record.mail)


async def test_repeated_x_headers_are_kept_in_order(embedded: Service) -> None:
    lines = ["X-Tag: one", "X-Tag: two", "References: <a@example.com>"]
    for encoding in ("multipart", "urlencoded"):
        response = await post(embedded.client, encoding, FIELDS, header_lines=lines)
        record = await embedded.mq.status(envelope(response, 200)["data"]["id"])
        assert record is not None
        assert record.mail.headers == (("References", "<a@example.com>"), ("X-Tag", "one"), ("X-Tag", "two"))


# --- refused --------------------------------------------------------------------------------------

#: (id, fields added to FIELDS, extra headers, the field named, a part of the reason)
BAD_INPUT: list[tuple[str, dict[str, str], list[tuple[str, str]], str, str]] = [
    (
        "unknown-header",
        {},
        [("Sender", "boss@example.com")],
        "headers",
        "header 'Sender' is not allowed (allowed: X-*, In-Reply-To, References, List-Unsubscribe, "
        "List-Unsubscribe-Post)",
    ),
    ("from-header", {}, [("From", "ceo@example.com")], "headers", "header 'From' is not allowed"),
    ("subject-header", {}, [("subject", "other")], "headers", "header 'subject' is not allowed"),
    ("content-type-header", {}, [("Content-Type", "text/plain")], "headers", "'Content-Type' is not allowed"),
    (
        "crlf-in-header",
        {},
        [("X-Campaign", "spring\r\nBcc: evil@example.com")],
        "headers",
        "header X-Campaign: must not contain control characters (found U+000D)",
    ),
    (
        "lf-in-header",
        {},
        [("X-Campaign", "spring\nBcc: evil@example.com")],
        "headers",
        "must not contain control characters (found U+000A)",
    ),
    ("long-header", {}, [("X-Long", "a" * 999)], "headers", "must be at most 998 characters"),
    (
        "bad-in-reply-to",
        {},
        [("In-Reply-To", "order-42")],
        "headers",
        "header In-Reply-To: 'order-42' is not a message id",
    ),
    (
        "http-unsubscribe",
        {"list_unsubscribe": "http://example.com/unsubscribe"},
        [],
        "list_unsubscribe",
        "(one-click unsubscribe needs https)",
    ),
    (
        "javascript-unsubscribe",
        {"list_unsubscribe": "javascript:alert(1)"},
        [],
        "list_unsubscribe",
        "must be an https URL or a mailto URI",
    ),
    ("bad-mailto", {"list_unsubscribe": "mailto:nobody"}, [], "list_unsubscribe", "is not a mailto URI"),
    (
        "two-https",
        {"list_unsubscribe": "https://a.example.com/u,https://b.example.com/u"},
        [],
        "list_unsubscribe",
        "has more than one https URI",
    ),
    (
        "unsubscribe-twice",
        {"list_unsubscribe": "https://example.com/u"},
        [("List-Unsubscribe", "<mailto:u@example.com>")],
        "list_unsubscribe",
        "not both",
    ),
    (
        "post-without-https",
        {},
        [
            ("List-Unsubscribe", "<mailto:u@example.com>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ],
        "headers",
        "needs a List-Unsubscribe with an https URL",
    ),
    ("bad-cc", {"cc": "carol@example.com, carol"}, [], "cc", "invalid address 'carol'"),
    ("special-bcc", {"bcc": "root@localhost"}, [], "bcc", "invalid address"),
    (
        "cc-names-count",
        {"cc": "carol@example.com", "cc_name": "Carol,Dave"},
        [],
        "cc_name",
        "has 2 names for 1 addresses in cc",
    ),
    ("cc-name-without-cc", {"cc_name": "Carol"}, [], "cc_name", "is given without cc"),
    (
        "crlf-in-cc-name",
        {"cc": "carol@example.com", "cc_name": "Carol\r\nBcc: evil@example.com"},
        [],
        "cc_name",
        "control characters",
    ),
    (
        "reply-to-over-10",
        {"reply_to": ",".join(f"r{i}@example.com" for i in range(11))},
        [],
        "reply_to",
        "at most 10",
    ),
    ("nul-in-text", {"text": "a\x00b"}, [], "text", "must not contain control characters (found U+0000)"),
    (
        "too-many-headers",
        {},
        [(f"X-H{i}", "v") for i in range(21)],
        "headers",
        "at most 20 headers are allowed",
    ),
]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(
    ("extra", "headers", "field", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUT],
)
async def test_bad_input_is_refused_and_nothing_is_kept(
    embedded: Service,
    encoding: str,
    extra: dict[str, str],
    headers: list[tuple[str, str]],
    field: str,
    reason: str,
) -> None:
    if encoding == "json" and len({name for name, _ in headers}) < len(headers):
        pytest.skip("a JSON object cannot repeat a name")
    response = await post(embedded.client, encoding, {**FIELDS, **extra}, headers)
    body = envelope(response, 400)
    assert body["message"].startswith(f"Param is invalid: {field}: "), body
    assert body["data"]["field"] == field
    assert reason in body["data"]["reason"], body
    await embedded.assert_nothing_kept()


@pytest.mark.parametrize("encoding", ["multipart", "urlencoded"])
@pytest.mark.parametrize("line", ["X-Campaign spring", ": spring", "X-" + "a" * 1100 + ": v"])
async def test_a_form_header_must_be_name_colon_value(embedded: Service, encoding: str, line: str) -> None:
    response = await post(embedded.client, encoding, FIELDS, header_lines=[line])
    body = envelope(response, 400)
    assert body["data"]["field"] == "headers"
    assert re.search(r"each must be ('Name: value'|at most \d+ characters)", body["data"]["reason"]), body
    await embedded.assert_nothing_kept()


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ("X-Campaign: spring", "must be an object of header names and values"),
        (["X-Campaign: spring"], "must be an object of header names and values"),
        ({"X-Campaign": 1}, "the value of 'X-Campaign' must be a string"),
        ({"X-" + "a" * 100: "v"}, "is too long"),
    ],
)
async def test_json_headers_must_be_an_object_of_strings(
    embedded: Service, headers: object, reason: str
) -> None:
    document = {**FIELDS, "headers": headers}
    body = envelope(
        await embedded.client.post(
            SEND, content=json.dumps(document), headers={"content-type": "application/json"}
        ),
        400,
    )
    assert body["data"]["field"] == "headers"
    assert reason in body["data"]["reason"]
    await embedded.assert_nothing_kept()


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_recipients_over_the_limit_across_receiver_cc_and_bcc(
    start_embedded: StartService, encoding: str
) -> None:
    async with start_embedded(APISettings(max_recipients=5)) as service:
        five = {**FIELDS, "cc": "c1@example.com,c2@example.com", "bcc": "b1@example.com"}
        envelope(await post(service.client, encoding, five), 200)
        six = {**five, "bcc": "b1@example.com, b2@example.com"}
        body = envelope(await post(service.client, encoding, six), 413)
        assert body["message"] == (
            "Request Entity Too Large: 6 recipients (receiver, cc and bcc); at most 5 are allowed"
        )
        assert body["data"] == {"limit": 5}
        assert await service.kept() == (1, 1, 0)  # the first one only


async def test_schema_states_the_new_fields(embedded: Service) -> None:
    spec = (await embedded.client.get("/schema/openapi.json")).json()
    content = spec["paths"][SEND]["post"]["requestBody"]["content"]
    for media_type in content:
        properties = content[media_type]["schema"]["properties"]
        assert {
            "cc",
            "cc_name",
            "bcc",
            "reply_to",
            "reply_to_name",
            "text",
            "headers",
            "list_unsubscribe",
        } <= set(properties)
    form = content["multipart/form-data"]["schema"]["properties"]
    line = re.compile(form["headers"]["items"]["pattern"])
    assert form["headers"]["maxItems"] == 20
    for good in (
        "X-Campaign: spring",
        "In-Reply-To: <a@example.com>",
        "References: <a@b.example> <c@d.example>",
    ):
        assert line.search(good), good
    for bad in ("From: a@example.com", "Bcc: a@example.com", "X-A: a\r\nBcc: x", "X-A:  ", "In-Reply-To: a"):
        assert not line.search(bad), bad
    unsubscribe = re.compile(form["list_unsubscribe"]["pattern"])
    assert unsubscribe.search("https://example.com/u?id=1, mailto:u@example.com")
    for bad in (
        "http://example.com/u",
        "mailto:u@localhost",
        "https://a.example/u,https://b.example/u",
        "ftp://x.example",
    ):
        assert not unsubscribe.search(bad), bad
    headers = content["application/json"]["schema"]["properties"]["headers"]
    assert headers["type"] == "object"
    assert headers["additionalProperties"] is False
    assert headers["maxProperties"] == 20


# --- delivered ------------------------------------------------------------------------------------


def _parse(data: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def _plain_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    text: str = part.get_content()  # type: ignore[attr-defined]
    return text


async def test_delivered_message_has_the_headers_and_bcc_only_in_the_envelope(
    start_embedded: StartService,
) -> None:
    async with SMTPTestServer() as smtpd:
        sender = smtpd.url(from_address="noreply@example.com", timeout="5")
        fast = WorkerSettings(concurrency=2, shutdown_timeout=5)
        async with start_embedded(run_worker=True, worker=fast, sender=sender) as service:
            full = await post(
                service.client, "multipart", {**FIELDS, **EXTRA}, [*HEADERS, ("X-Custom", "42")]
            )
            bare = await post(
                service.client,
                "json",
                {**FIELDS, "content": "<h1>Hello</h1><p>Visit <a href='https://example.com/x'>us</a>.</p>"},
            )
            ids = [envelope(full, 200)["data"]["id"], envelope(bare, 200)["data"]["id"]]

            async def sent() -> bool:
                records = [await service.mq.status(mail_id) for mail_id in ids]
                return all(r is not None and r.status is Status.SENT for r in records)

            await _until(sent, within=20)
    assert len(smtpd.messages) == 2
    by_id = {_parse(m.data)["Message-ID"].split("@")[0].strip("<"): m for m in smtpd.messages}
    received = by_id[ids[0]]
    assert received.envelope_from == "noreply@example.com"
    assert received.recipients == (
        "ann@example.com",
        "bob@example.com",
        "carol@example.com",
        "dave@example.org",
        "hidden@example.com",
    )
    assert b"hidden@example.com" not in received.data
    message = _parse(received.data)
    assert "Bcc" not in message
    assert [a.addr_spec for a in message["To"].addresses] == ["ann@example.com", "bob@example.com"]
    assert [(a.display_name, a.addr_spec) for a in message["Cc"].addresses] == [
        ("Carol", "carol@example.com"),
        ("Dave D.", "dave@example.org"),
    ]
    assert [(a.display_name, a.addr_spec) for a in message["Reply-To"].addresses] == [
        ("Help Desk", "help@example.com")
    ]
    assert message["X-Custom"] == "42"
    assert message["X-Campaign"] == "spring-2026"
    assert str(message["X-Kampagne"]) == "Frühling"
    assert message["In-Reply-To"] == "<order.42@shop.example.com>"
    assert message["References"] == "<order.41@shop.example.com> <order.42@shop.example.com>"
    assert re.sub(r"\s+", " ", str(message["List-Unsubscribe"])) == (
        "<https://example.com/unsubscribe?u=42>, <mailto:unsubscribe@example.com>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert _plain_text(message) == "Your invoice is attached.\r\nGrüße"

    plain = _parse(by_id[ids[1]].data)
    assert by_id[ids[1]].recipients == ("ann@example.com", "bob@example.com")
    for name in ("Cc", "Bcc", "Reply-To", "List-Unsubscribe", "List-Unsubscribe-Post"):
        assert name not in plain
    # no text given: the worker made one from the HTML
    assert "Hello" in _plain_text(plain)
    assert "us <https://example.com/x>" in _plain_text(plain)
