"""The HTTP service over real HTTP: a uvicorn server running the Litestar app,
real multipart bodies from httpx, real backends.

Most tests run twice: on the embedded default (SQLite store, ``sql`` queue,
attachments in a folder) and on MariaDB with the ``sql`` queue and ``sql``
attachment store. After every refused request the test checks that nothing
was kept: no record, nothing queued, no attachment file or row.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from http_helpers import serve
from litestar import Litestar, get
from pydantic import SecretStr

from mailqueue import (
    APISettings,
    ConfigurationError,
    MailQueue,
    MailRecord,
    RecordQuery,
    Settings,
    Status,
    WorkerSettings,
)
from mailqueue.contrib.litestar_app import check_bind_allowed, create_app
from mailqueue.contrib.litestar_app.app import envelope_exception_handler
from mailqueue.message import sanitize_filename
from mailqueue.sql import schema

SEND = "/api/email/send"

FIELDS = {
    "title": "Invoice 42",
    "content": "<p>Please find the invoice attached.</p>",
    "sender_name": "Billing",
    "receiver": "ann@example.com, bob@example.com",
    "receiver_name": "Ann Smith,Bob",
}

FileSpec = tuple[str, tuple[str, bytes, str]]


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database, copied for each test (migrating one takes a while)."""
    path = tmp_path_factory.mktemp("template") / "mailqueue.db"

    async def migrate() -> None:
        async with MailQueue.from_urls(
            store=f"sqlite+aiosqlite:///{path}", queue="sql://", attachments="memory://"
        ):
            pass

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, migrate()).result()
    return path


@dataclass(frozen=True)
class Backends:
    kind: str
    store: str
    attachments: str
    folder: Path | None


def embedded_backends(tmp_path: Path, template: Path) -> Backends:
    shutil.copy(template, tmp_path / "mailqueue.db")
    folder = tmp_path / "attachments"
    return Backends(
        "embedded", f"sqlite+aiosqlite:///{tmp_path / 'mailqueue.db'}", f"file://{folder}", folder
    )


@pytest.fixture(params=["embedded", "mysql"])
def backends(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Backends:
    """The embedded default, or MariaDB with the sql queue and sql attachments."""
    if request.param == "embedded":
        return embedded_backends(tmp_path, sqlite_template)
    url: str = request.getfixturevalue("mysql_url")
    return Backends("mysql", url, "sql://", None)


@dataclass
class Service:
    """The app served over HTTP, and the MailQueue it uses (to look behind it)."""

    client: httpx.AsyncClient
    mq: MailQueue
    settings: Settings
    backends: Backends
    outbox: Path

    async def send(
        self,
        fields: dict[str, str] | None = None,
        files: Iterable[FileSpec] = (),
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST a multipart form (httpx would send a form without files URL-encoded)."""
        fields = FIELDS if fields is None else fields
        files = list(files)
        if files:
            return await self.client.post(SEND, data=fields, files=files, headers=headers)
        boundary = "no-files-boundary"
        return await self.client.post(
            SEND,
            content=multipart_body(boundary, form_parts(fields)),
            headers={"content-type": f"multipart/form-data; boundary={boundary}", **(headers or {})},
        )

    async def records(self) -> list[MailRecord]:
        return await self.mq.store.find(RecordQuery(include_deleted=True, limit=1000))

    async def stored_attachments(self) -> int:
        """Attachment files (or rows and chunk rows) in the AttachmentStore, complete or not."""
        folder = self.backends.folder
        if folder is not None:
            return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0
        engine = self.mq.store.engine  # type: ignore[attr-defined]
        keys = sa.union(
            sa.select(schema.attachments.c.key), sa.select(schema.attachment_chunks.c.key)
        ).subquery()
        async with engine.connect() as conn:
            count = (await conn.execute(sa.select(sa.func.count()).select_from(keys))).scalar_one()
        return int(count)

    async def attachment_bytes(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self.mq.attachments.read(key)])

    async def kept(self) -> tuple[int, int | None, int]:
        """(records, queued messages, stored attachments)."""
        return len(await self.records()), await self.mq.queue.depth(), await self.stored_attachments()

    async def assert_nothing_kept(self) -> None:
        assert await self.kept() == (0, 0, 0)


StartService = Callable[..., contextlib.AbstractAsyncContextManager[Service]]


def service_starter(backends: Backends, tmp_path: Path) -> StartService:
    @contextlib.asynccontextmanager
    async def start(
        api: APISettings | None = None,
        *,
        run_worker: bool = False,
        sender: str | None = None,
        **settings: Any,
    ) -> AsyncIterator[Service]:
        outbox = tmp_path / "outbox"
        config = Settings(
            store=backends.store,
            queue="sql://?poll=0.05",
            attachments=backends.attachments,
            sender=sender or f"outbox://{outbox}?from=noreply@example.com",
            api=api or APISettings(),
            **settings,
        )
        mq = MailQueue.from_settings(config)
        try:
            async with serve(create_app(config, mailqueue=mq, worker=run_worker)) as client:
                yield Service(client, mq, config, backends, outbox)
        finally:
            await mq.close()

    return start


@pytest.fixture
def start(backends: Backends, tmp_path: Path) -> StartService:
    """Start the service on either kind of backends, with chosen settings."""
    return service_starter(backends, tmp_path)


@pytest.fixture
def start_embedded(tmp_path: Path, sqlite_template: Path) -> StartService:
    """Start the service on the embedded default only (for what backends do not change)."""
    return service_starter(embedded_backends(tmp_path, sqlite_template), tmp_path)


@pytest.fixture
async def service(start: StartService) -> AsyncIterator[Service]:
    async with start() as svc:
        yield svc


@pytest.fixture
async def embedded(start_embedded: StartService) -> AsyncIterator[Service]:
    async with start_embedded() as svc:
        yield svc


def envelope(response: httpx.Response, code: int) -> dict[str, Any]:
    """Check the original's envelope and the status, and return the body."""
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "data"}, body
    assert response.status_code == code == body["code"], body
    assert response.headers["content-type"].startswith("application/json")
    return body


def multipart_body(boundary: str, parts: Iterable[tuple[str | bytes, bytes]], *, close: bool = True) -> bytes:
    """A hand-made multipart body: each part is (raw header lines, content)."""
    out = b""
    for headers, content in parts:
        raw = headers.encode() if isinstance(headers, str) else headers
        out += f"--{boundary}\r\n".encode() + raw + b"\r\n\r\n" + content + b"\r\n"
    if close:
        out += f"--{boundary}--\r\n".encode()
    return out


def form_parts(fields: dict[str, str]) -> list[tuple[str | bytes, bytes]]:
    return [
        (f'Content-Disposition: form-data; name="{name}"', value.encode()) for name, value in fields.items()
    ]


async def chunked(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# --- sending --------------------------------------------------------------------------


async def test_send_with_two_attachments(service: Service) -> None:
    pdf = b"%PDF-1.4\n" + secrets.token_bytes(300_000)
    notes = "Grüße\r\n".encode() * 10
    response = await service.send(
        files=[
            ("attachment[]", ("invoice 42.pdf", pdf, "application/pdf")),
            ("attachment[]", ("notes.txt", notes, "text/plain; charset=utf-8")),
        ]
    )
    body = envelope(response, 200)
    assert body["message"] == "success"
    mail_id = body["data"]["id"]

    (record,) = await service.records()
    assert record.id == mail_id
    assert record.status is Status.QUEUED
    mail = record.mail
    assert (mail.subject, mail.html, mail.sender_name) == (
        FIELDS["title"],
        FIELDS["content"],
        FIELDS["sender_name"],
    )
    assert [(r.address, r.name) for r in mail.to] == [
        ("ann@example.com", "Ann Smith"),
        ("bob@example.com", "Bob"),
    ]
    assert [(a.filename, a.content_type, a.size) for a in mail.attachments] == [
        ("invoice 42.pdf", "application/pdf", len(pdf)),
        ("notes.txt", "text/plain", len(notes)),
    ]
    assert await service.attachment_bytes(mail.attachments[0].key) == pdf
    assert await service.attachment_bytes(mail.attachments[1].key) == notes
    assert mail.attachments[0].sha256 == hashlib.sha256(pdf).hexdigest()
    assert await service.kept() == (1, 1, 2)

    status = envelope(await service.client.get(f"/api/email/{mail_id}"), 200)["data"]
    assert status["id"] == mail_id
    assert status["status"] == "queued"
    assert (status["attempts"], status["is_ok"], status["subject"]) == (0, False, FIELDS["title"])
    assert [(r["address"], r["state"]) for r in status["recipients"]] == [
        ("ann@example.com", "pending"),
        ("bob@example.com", "pending"),
    ]
    assert status["attachments"] == [
        {"filename": "invoice 42.pdf", "content_type": "application/pdf", "size": len(pdf)},
        {"filename": "notes.txt", "content_type": "text/plain", "size": len(notes)},
    ]
    assert status["history"] == []
    assert status["created_at"].endswith("Z")
    for key in ("remark", "last_error", "last_code", "updated_at", "sent_at", "next_attempt_at"):
        assert key in status


async def test_send_without_attachments_with_bracketless_field_and_empty_file_input(service: Service) -> None:
    fields = {**FIELDS, "receiver": "ann@example.com", "extra_field": "ignored, like the original did"}
    del fields["receiver_name"]
    response = await service.send(
        fields,
        files=[
            ("attachment", ("a.bin", b"\x00\x01", "application/octet-stream")),
            # a browser's file input left empty: no name, no bytes
            ("attachment[]", ("", b"", "application/octet-stream")),
        ],
    )
    envelope(response, 200)
    (record,) = await service.records()
    assert [(r.address, r.name) for r in record.mail.to] == [("ann@example.com", "")]
    assert [a.filename for a in record.mail.attachments] == ["a.bin"]


async def test_send_json(service: Service) -> None:
    content = secrets.token_bytes(5000)
    response = await service.client.post(
        SEND,
        json={
            "title": "Report",
            "content": "<b>see attached</b>",
            "sender_name": "Reports",
            "receiver": ["ann@example.com", "bob@example.com"],
            "receiver_name": "Ann,Bob",
            "attachment": [
                {
                    "filename": "r.csv",
                    "content": base64.b64encode(content).decode(),
                    "content_type": "text/csv",
                },
                {"filename": "x", "content": ""},
            ],
        },
    )
    mail_id = envelope(response, 200)["data"]["id"]
    (record,) = await service.records()
    assert record.id == mail_id
    assert [r.name for r in record.mail.to] == ["Ann", "Bob"]
    first, second = record.mail.attachments
    assert (first.filename, first.content_type, first.size) == ("r.csv", "text/csv", len(content))
    assert (second.filename, second.content_type, second.size) == ("x", "application/octet-stream", 0)
    assert await service.attachment_bytes(first.key) == content
    assert await service.mq.queue.depth() == 1


async def test_json_refusals(service: Service) -> None:
    good = {"title": "t", "content": "c", "sender_name": "s", "receiver": "ann@example.com"}
    cases: list[tuple[str, bytes | dict[str, Any], str]] = [
        ("invalid json", b"{not json", "not valid JSON"),
        ("not an object", b"[1, 2]", "must be an object"),
        ("duplicate key", b'{"title": "a", "title": "b"}', "title: is given more than once"),
        ("unknown field", {**good, "attachments": []}, "attachments: unknown field"),
        ("wrong type", {**good, "title": 5}, "title: must be a string"),
        ("missing", {**good, "content": ""}, "content is required"),
        ("bad base64", {**good, "attachment": [{"filename": "a", "content": "@@@"}]}, "not valid base64"),
        ("no filename", {**good, "attachment": [{"content": "aGk="}]}, "attachment[0].filename is required"),
        ("comma in list", {**good, "receiver": ["a@example.com,b@example.com"]}, "must not contain a comma"),
        (
            "bad content type",
            {
                **good,
                "attachment": [{"filename": "a", "content": "aGk=", "content_type": "text/plain\r\nX: y"}],
            },
            "attachment[0].content_type",
        ),
    ]
    failures: list[tuple[str, object, object]] = []
    for name, payload, expected in cases:
        if isinstance(payload, bytes):
            response = await service.client.post(
                SEND, content=payload, headers={"content-type": "application/json"}
            )
        else:
            response = await service.client.post(SEND, json=payload)
        body = envelope(response, response.status_code)
        if response.status_code != 400 or expected not in body["message"]:
            failures.append((name, response.status_code, body["message"]))
        if await service.kept() != (0, 0, 0):
            failures.append((name, "kept something", await service.kept()))
    assert not failures


# --- validation: the original's rules and mailqueue's bad-input guarantees -------------


def _with(**changes: str | None) -> dict[str, str]:
    fields = dict(FIELDS)
    for name, value in changes.items():
        if value is None:
            fields.pop(name)
        else:
            fields[name] = value
    return fields


VALIDATION_CASES: list[tuple[str, dict[str, str], str, str]] = [
    # (case, fields, field named, text in the message)
    ("missing title", _with(title=None), "title", "Param is invalid: title is required"),
    ("empty title", _with(title=""), "title", "Param is invalid: title is required"),
    ("missing content", _with(content=None), "content", "Param is invalid: content is required"),
    ("empty content", _with(content=""), "content", "Param is invalid: content is required"),
    (
        "missing sender_name",
        _with(sender_name=None),
        "sender_name",
        "Param is invalid: sender_name is required",
    ),
    ("empty sender_name", _with(sender_name=""), "sender_name", "Param is invalid: sender_name is required"),
    ("missing receiver", _with(receiver=None, receiver_name=None), "receiver", "receiver is required"),
    ("empty receiver", _with(receiver="", receiver_name=None), "receiver", "receiver is required"),
    ("blank receiver", _with(receiver=" , ", receiver_name=None), "receiver", "empty entry"),
    ("title too long", _with(title="t" * 256), "title", "255"),
    ("content too long", _with(content="c" * 65536), "content", "65535"),
    ("sender_name too long", _with(sender_name="s" * 51), "sender_name", "50"),
    (
        "receiver too long",
        _with(receiver="a" * 1990 + "@example.com", receiver_name=None),
        "receiver",
        "2000",
    ),
    ("invalid address", _with(receiver="not-an-address", receiver_name=None), "receiver", "invalid address"),
    ("two at signs", _with(receiver="a@b@example.com", receiver_name=None), "receiver", "invalid address"),
    ("display-name form", _with(receiver="Ann <a@example.com>", receiver_name=None), "receiver", "invalid"),
    ("double dot domain", _with(receiver="a@example..com", receiver_name=None), "receiver", "invalid"),
    (
        "semicolon list",
        _with(receiver="a@example.com;b@example.com", receiver_name=None),
        "receiver",
        "invalid",
    ),
    ("non-ascii local part", _with(receiver="ünï@example.com", receiver_name=None), "receiver", "invalid"),
    (
        "empty entry",
        _with(receiver="ann@example.com,,bob@example.com", receiver_name=None),
        "receiver",
        "empty",
    ),
    (
        "header injection in receiver",
        _with(receiver="ann@example.com\r\nBcc: eve@example.com", receiver_name=None),
        "receiver",
        "control characters",
    ),
    (
        "more names than receivers",
        _with(receiver_name="Ann,Bob,Carol"),
        "receiver_name",
        "counts must be equal",
    ),
    ("fewer names than receivers", _with(receiver_name="Ann"), "receiver_name", "counts must be equal"),
    ("CRLF in title", _with(title="Hello\r\nBcc: eve@example.com"), "title", "control characters"),
    ("LF in title", _with(title="Hello\nWorld"), "title", "control characters"),
    ("NUL in title", _with(title="Hello\x00"), "title", "control characters"),
    ("line separator in title", _with(title="Hello\u2028World"), "title", "control characters"),
    ("CRLF in sender_name", _with(sender_name="Billing\r\nBcc: eve@example.com"), "sender_name", "control"),
    (
        "CRLF in receiver_name",
        _with(receiver_name="Ann\r\nBcc: eve@example.com,Bob"),
        "receiver_name",
        "control",
    ),
    ("NUL in content", _with(content="<p>\x00</p>"), "content", "control characters"),
]


async def test_validation_rules(service: Service) -> None:
    failures: list[tuple[str, object, object]] = []
    for case, fields, field_name, text in VALIDATION_CASES:
        response = await service.send(fields, files=[("attachment[]", ("a.txt", b"hello", "text/plain"))])
        body = response.json()
        if (
            response.status_code != 400
            or body.get("code") != 400
            or body["data"]["field"] != field_name
            or text not in body["message"]
            or field_name not in body["message"]
        ):
            failures.append((case, response.status_code, body))
        elif not _says_it_once(body):
            failures.append((case, "repeats itself", body["message"]))
        kept = await service.kept()
        if kept != (0, 0, 0):
            failures.append((case, "kept (records, queued, attachments)", kept))
    assert not failures


def _says_it_once(body: dict[str, Any]) -> bool:
    """The message is the original's prefix, the field once and the reason once."""
    field_name, reason = body["data"]["field"], body["data"]["reason"]
    if body["message"] != f"Param is invalid: {field_name}: {reason}" and reason != "is required":
        return False
    mentions = re.findall(rf"(?<![\w.\[]){re.escape(field_name)}(?![\w\[])", body["message"])
    return len(mentions) == 1


# (fields of the form, or a JSON body, and the exact message of the 400)
EXACT_MESSAGES: list[tuple[dict[str, Any], str]] = [
    (
        _with(receiver="x", receiver_name=None),
        "Param is invalid: receiver: invalid address 'x': An email address must have an @-sign.",
    ),
    (
        _with(receiver="a\r\n@example.com", receiver_name=None),
        "Param is invalid: receiver: invalid address 'a\\r\\n@example.com': "
        "must not contain control characters (found U+000D)",
    ),
    (
        _with(receiver="a@example.com,,b@example.com", receiver_name=None),
        "Param is invalid: receiver: has an empty entry",
    ),
    (
        _with(receiver_name="Ann,Bob,Carol"),
        "Param is invalid: receiver_name: has 3 names for 2 receivers; the counts must be equal",
    ),
    (_with(title="a\nb"), "Param is invalid: title: must not contain control characters (found U+000A)"),
    (_with(sender_name="s" * 51), "Param is invalid: sender_name: must be at most 50 characters"),
    (
        _with(content="<p>\x00</p>"),
        "Param is invalid: content: must not contain control characters (found U+0000)",
    ),
    (
        {
            **FIELDS,
            "receiver": ["ann@example.com"],
            "receiver_name": ["Ann"],
            "attachment": [{"filename": "a\r\n.txt", "content": "aGk="}],
        },
        "Param is invalid: attachment[0].filename: must not contain control characters (found U+000D)",
    ),
    (
        {**FIELDS, "receiver": ["ann@example.com", "0"], "receiver_name": ["Ann", "Zero"]},
        "Param is invalid: receiver: invalid address '0': An email address must have an @-sign.",
    ),
]


async def test_each_400_says_the_field_once_and_the_reason_once(embedded: Service) -> None:
    for fields, message in EXACT_MESSAGES:
        if isinstance(fields.get("receiver"), list):
            response = await embedded.client.post(SEND, json=fields)
        else:
            response = await embedded.send(fields)
        assert response.status_code == 400, fields
        body = envelope(response, 400)
        assert body["message"] == message, fields
        assert _says_it_once(body), body
    await embedded.assert_nothing_kept()


async def test_duplicate_fields_are_refused(service: Service) -> None:
    boundary = "dup-boundary"
    for name in ("title", "receiver", "sender_name"):
        parts = [
            *form_parts(FIELDS),
            (f'Content-Disposition: form-data; name="{name}"', b"again"),
            ('Content-Disposition: form-data; name="attachment[]"; filename="a.txt"', b"hi"),
        ]
        response = await service.client.post(
            SEND,
            content=multipart_body(boundary, parts),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        body = envelope(response, 400)
        assert body["data"]["field"] == name
        assert "more than once" in body["message"]
        await service.assert_nothing_kept()


async def test_tricky_but_valid_addresses_are_accepted(service: Service) -> None:
    response = await service.send(
        _with(receiver=" Ann@Example.com ,bob@exämple.com", receiver_name=" Ann , Bob ")
    )
    envelope(response, 200)
    (record,) = await service.records()
    assert [(r.address, r.name) for r in record.mail.to] == [
        ("Ann@example.com", "Ann"),
        ("bob@xn--exmple-cua.com", "Bob"),
    ]


SANITIZED_NAMES = [
    "../../x",
    "..\\..\\windows\\system32\\evil.exe",
    '"quoted".txt',
    "<angle>.pdf",
    "ß" * 300 + ".pdf",
    "文件" * 150,
    ".hidden",
]


async def test_hostile_filenames_are_sanitized(service: Service) -> None:
    files = [
        ("attachment[]", (name, f"file {i}".encode(), "application/octet-stream"))
        for i, name in enumerate(SANITIZED_NAMES)
    ]
    envelope(await service.send(files=files), 200)
    (record,) = await service.records()
    names = [a.filename for a in record.mail.attachments]
    assert names == [sanitize_filename(name) for name in SANITIZED_NAMES]
    assert names[:2] == ["x", "evil.exe"]
    assert all(len(name) <= 150 and "/" not in name and "\\" not in name for name in names)
    assert names[4].endswith(".pdf")
    contents = [await service.attachment_bytes(a.key) for a in record.mail.attachments]
    assert contents == [f"file {i}".encode() for i in range(len(SANITIZED_NAMES))]


async def test_control_characters_in_filenames_are_refused(service: Service) -> None:
    # httpx percent-encodes CR and LF in the header (as browsers do) and the server decodes them
    for filename in ("a\r\nb.txt", "evil.txt\r\nContent-Type: text/html", "line\nfeed.txt"):
        response = await service.send(
            files=[
                ("attachment[]", ("fine.txt", b"ok", "text/plain")),
                ("attachment[]", (filename, b"data", "text/plain")),
            ]
        )
        body = envelope(response, 400)
        assert body["data"]["field"] == "attachment[]"
        assert "control characters" in body["message"]
        await service.assert_nothing_kept()
    # other control characters can only arrive raw in the part header
    boundary = "ctl-boundary"
    for raw in (b"a\x00b.txt", b"tab\there.txt", b"del\x7f.txt", b"c1-\xc2\x85.txt", b"ls-\xe2\x80\xa8.txt"):
        parts: list[tuple[str | bytes, bytes]] = [
            ('Content-Disposition: form-data; name="attachment[]"; filename="ok.txt"', b"ok"),
            (b'Content-Disposition: form-data; name="attachment[]"; filename="' + raw + b'"', b"x"),
            *form_parts(FIELDS),
        ]
        response = await service.client.post(
            SEND,
            content=multipart_body(boundary, parts),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        body = envelope(response, 400)
        assert "control characters" in body["message"], (raw, body)
        await service.assert_nothing_kept()


async def test_raw_crlf_in_a_part_header_is_malformed(service: Service) -> None:
    boundary = "b0undary"
    parts = [
        *form_parts(FIELDS),
        ('Content-Disposition: form-data; name="attachment[]"; filename="ok.txt"', b"first"),
        ('Content-Disposition: form-data; name="attachment[]"; filename="a\r\nb.txt"', b"second"),
    ]
    response = await service.client.post(
        SEND,
        content=multipart_body(boundary, parts),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "malformed multipart" in envelope(response, 400)["message"]
    await service.assert_nothing_kept()


async def test_unknown_file_field_is_refused(service: Service) -> None:
    response = await service.send(
        files=[
            ("attachment[]", ("a.txt", b"a", "text/plain")),
            ("attachments", ("b.txt", b"b", "text/plain")),
        ]
    )
    body = envelope(response, 400)
    assert body["data"]["field"] == "attachments"
    await service.assert_nothing_kept()


# --- wrong content type, malformed bodies -------------------------------------------


async def test_wrong_content_type(embedded: Service) -> None:
    for content_type in (
        "text/plain",
        "application/xml",
        "multipart/mixed; boundary=x",
        "application/octet-stream",
    ):
        response = await embedded.client.post(
            SEND, content=b"title=x", headers={"content-type": content_type}
        )
        assert envelope(response, 415)["message"] == (
            "Unsupported Media Type: send multipart/form-data, application/json "
            "or application/x-www-form-urlencoded"
        )
    response = await embedded.client.post(SEND, content=b"")
    envelope(response, 415)
    await embedded.assert_nothing_kept()


async def test_urlencoded_form_like_the_original(embedded: Service) -> None:
    response = await embedded.client.post(SEND, data=FIELDS)
    assert response.request.headers["content-type"] == "application/x-www-form-urlencoded"
    envelope(response, 200)
    (record,) = await embedded.records()
    assert record.mail.subject == FIELDS["title"]


async def test_malformed_multipart(service: Service) -> None:
    boundary = "XyZ"
    good = [
        *form_parts(FIELDS),
        ('Content-Disposition: form-data; name="attachment[]"; filename="a.txt"', b"x" * 5000),
    ]
    bodies: list[tuple[str, str, bytes]] = [
        ("no boundary", "multipart/form-data", multipart_body(boundary, good)),
        ("wrong boundary", "multipart/form-data; boundary=other", multipart_body(boundary, good)),
        (
            "truncated after a file",
            f"multipart/form-data; boundary={boundary}",
            multipart_body(boundary, good, close=False)[:-3],
        ),
        (
            "no closing boundary",
            f"multipart/form-data; boundary={boundary}",
            multipart_body(boundary, good, close=False),
        ),
        ("garbage", f"multipart/form-data; boundary={boundary}", b"\x00\xff garbage " * 100),
        (
            "part without content-disposition",
            f"multipart/form-data; boundary={boundary}",
            multipart_body(boundary, [*good, ("Content-Type: text/plain", b"x")]),
        ),
        (
            "field is not UTF-8",
            f"multipart/form-data; boundary={boundary}",
            multipart_body(
                boundary, [*good[1:], ('Content-Disposition: form-data; name="title"', b"\xff\xfe")]
            ),
        ),
    ]
    failures: list[tuple[str, object, object]] = []
    for case, content_type, data in bodies:
        response = await service.client.post(SEND, content=data, headers={"content-type": content_type})
        body = envelope(response, response.status_code)
        if response.status_code != 400 or not body["message"].startswith("Param is invalid"):
            failures.append((case, response.status_code, body))
        if await service.kept() != (0, 0, 0):
            failures.append((case, "kept", await service.kept()))
    assert not failures


# --- limits -------------------------------------------------------------------------------

SMALL = APISettings(max_attachment_bytes=1000, max_attachments=2, max_request_bytes=8000, max_recipients=3)


async def test_limits(start: StartService) -> None:
    async with start(SMALL) as service:
        ok = await service.send(
            _with(receiver="a@example.com,b@example.com,c@example.com", receiver_name=None),
            files=[
                ("attachment[]", ("a", b"a" * 1000, "text/plain")),
                ("attachment[]", ("b", b"b" * 1000, "text/plain")),
            ],
        )
        envelope(ok, 200)  # every limit exactly reached is fine
        (record,) = await service.records()
        assert [a.size for a in record.mail.attachments] == [1000, 1000]
        before = await service.kept()

        cases: list[tuple[str, dict[str, str], list[FileSpec], str]] = [
            (
                "attachment too large",
                FIELDS,
                [
                    ("attachment[]", ("a", b"a" * 500, "text/plain")),
                    ("attachment[]", ("b", b"b" * 1001, "text/plain")),
                ],
                "larger than 1000 bytes",
            ),
            (
                "too many attachments",
                FIELDS,
                [("attachment[]", (f"f{i}", b"x" * 10, "text/plain")) for i in range(3)],
                "at most 2 attachments",
            ),
            (
                "too many receivers",
                _with(receiver="a@example.com,b@example.com,c@example.com,d@example.com", receiver_name=None),
                [("attachment[]", ("a", b"a", "text/plain"))],
                "at most 3",
            ),
            (
                "request too large",
                _with(content="c" * 9000),
                [("attachment[]", ("a", b"a" * 900, "text/plain"))],
                "larger than the limit of 8000 bytes",
            ),
        ]
        failures: list[tuple[str, object, object]] = []
        for case, fields, files, text in cases:
            response = await service.send(fields, files)
            body = envelope(response, response.status_code)
            if response.status_code != 413 or text not in body["message"]:
                failures.append((case, response.status_code, body))
            if await service.kept() != before:
                failures.append((case, "kept", await service.kept()))
        assert not failures


async def test_request_limit_while_streaming(start: StartService) -> None:
    """Without a Content-Length the limit is enforced on the bytes as they arrive,
    here in the second file, after the first was stored: that one goes too."""

    def body(content_chars: int) -> httpx.Request:
        request = httpx.Request(
            "POST",
            "http://x" + SEND,
            data=_with(content="c" * content_chars),
            files=[
                ("attachment[]", ("a", b"a" * 1000, "text/plain")),
                ("attachment[]", ("b", b"b" * 1000, "text/plain")),
            ],
        )
        request.read()
        return request

    # 300 bytes over the limit, in the second file (httpx puts the fields first)
    overhead = len(body(0).content)
    request = body(SMALL.max_request_bytes + 300 - overhead)
    data = request.content
    assert len(data) == SMALL.max_request_bytes + 300
    assert data.index(b'filename="b"') < SMALL.max_request_bytes - 300
    async with start(SMALL) as service:
        response = await service.client.post(
            SEND, content=chunked(data, 100), headers={"content-type": request.headers["content-type"]}
        )
        assert "request body is larger than the limit" in envelope(response, 413)["message"]
        await service.assert_nothing_kept()

        # the same body announced with its Content-Length is refused before it is read
        response = await service.client.post(
            SEND, content=data, headers={"content-type": request.headers["content-type"]}
        )
        assert f"Content-Length {len(data)} is larger" in envelope(response, 413)["message"]
        await service.assert_nothing_kept()


async def test_files_before_fields_are_removed_when_a_later_limit_hits(start: StartService) -> None:
    async with start(SMALL) as service:
        boundary = "files-first"
        parts = [
            ('Content-Disposition: form-data; name="attachment[]"; filename="a.bin"', b"a" * 1000),
            ('Content-Disposition: form-data; name="attachment[]"; filename="b.bin"', b"b" * 1000),
            *form_parts(_with(content="c" * 7000)),
        ]
        response = await service.client.post(
            SEND,
            content=chunked(multipart_body(boundary, parts)),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        envelope(response, 413)
        await service.assert_nothing_kept()


async def test_json_limits(start_embedded: StartService) -> None:
    async with start_embedded(SMALL) as service:
        base = {"title": "t", "content": "c", "sender_name": "s", "receiver": "a@example.com"}
        big = base64.b64encode(b"x" * 1001).decode()
        response = await service.client.post(
            SEND, json={**base, "attachment": [{"filename": "a", "content": big}]}
        )
        envelope(response, 413)
        three = [{"filename": "a", "content": "eA=="}] * 3
        response = await service.client.post(SEND, json={**base, "attachment": three})
        envelope(response, 413)
        response = await service.client.post(SEND, json={**base, "content": "c" * 9000})
        envelope(response, 413)
        await service.assert_nothing_kept()


async def test_upload_above_litestars_default_body_limit(start_embedded: StartService) -> None:
    """Litestar caps bodies at 10 MB unless told otherwise; the app's own limit governs."""
    async with start_embedded() as service:
        content = secrets.token_bytes(11 * 1024 * 1024)
        response = await service.send(
            files=[("attachment[]", ("big.bin", content, "application/octet-stream"))]
        )
        envelope(response, 200)
        (record,) = await service.records()
        (ref,) = record.mail.attachments
        assert ref.size == len(content)
        assert ref.sha256 == hashlib.sha256(content).hexdigest()


async def test_client_disconnect_mid_upload_keeps_nothing(service: Service) -> None:
    boundary = "gone-boundary"
    first_file = multipart_body(
        boundary,
        [
            *form_parts(FIELDS),
            ('Content-Disposition: form-data; name="attachment[]"; filename="a.bin"', b"a" * 5000),
        ],
        close=False,
    )
    # the first file is complete once the next part starts; the second never ends
    partial = first_file + f'--{boundary}\r\nContent-Disposition: form-data; name="attachment[]"; '.encode()
    port = service.client.base_url.port
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            (
                f"POST {SEND} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            ).encode()
            + f"{len(partial):x}\r\n".encode()
            + partial
            + b"\r\n"
        )
        await writer.drain()

        async def first_stored() -> bool:
            return await service.stored_attachments() == 1

        await _until(first_stored)
    finally:
        writer.close()
        await writer.wait_closed()

    async def removed() -> bool:
        return await service.stored_attachments() == 0

    await _until(removed)
    await service.assert_nothing_kept()


# --- idempotency, status -----------------------------------------------------------------


async def test_idempotency_key(service: Service) -> None:
    headers = {"Idempotency-Key": "order-42-confirmation"}
    first = await service.send(files=[("attachment[]", ("a.txt", b"first", "text/plain"))], headers=headers)
    first_id = envelope(first, 200)["data"]["id"]
    again = await service.send(
        _with(title="a different title"),
        files=[("attachment[]", ("b.txt", b"second", "text/plain"))],
        headers=headers,
    )
    assert envelope(again, 200)["data"]["id"] == first_id
    json_again = await service.client.post(
        SEND,
        json={"title": "t", "content": "c", "sender_name": "s", "receiver": "x@example.com"},
        headers=headers,
    )
    assert envelope(json_again, 200)["data"]["id"] == first_id
    (record,) = await service.records()
    assert record.mail.subject == FIELDS["title"]
    assert record.mail.idempotency_key == "order-42-confirmation"
    assert await service.mq.queue.depth() == 1
    assert await service.stored_attachments() == 1

    other = await service.send(headers={"Idempotency-Key": "another-key"})
    assert envelope(other, 200)["data"]["id"] != first_id

    bad = await service.send(headers={"Idempotency-Key": "has spaces"})
    assert envelope(bad, 400)["data"]["field"] == "Idempotency-Key"
    assert len(await service.records()) == 2


async def test_concurrent_requests_with_one_idempotency_key_make_one_mail(service: Service) -> None:
    headers = {"Idempotency-Key": "race"}
    responses = await asyncio.gather(
        *(
            service.send(files=[("attachment[]", (f"{i}.txt", b"x" * 100, "text/plain"))], headers=headers)
            for i in range(4)
        )
    )
    ids = {envelope(r, 200)["data"]["id"] for r in responses}
    assert len(ids) == 1
    (record,) = await service.records()
    assert await service.mq.queue.depth() == 1
    # only the winner's attachment is kept
    assert await service.stored_attachments() == 1
    assert len(record.mail.attachments) == 1


async def test_status_of_unknown_mail(service: Service) -> None:
    for mail_id in ("0" * 32, "nope", "UPPER", "x" * 65, "a%20b"):
        response = await service.client.get(f"/api/email/{mail_id}")
        assert "Not Found" in envelope(response, 404)["message"]


# --- health, errors in the envelope, auth, OpenAPI ------------------------------------------


async def test_health_and_litestar_errors_in_the_envelope(embedded: Service) -> None:
    live = envelope(await embedded.client.get("/health/live"), 200)
    assert live["data"]["status"] == "live"
    ready = envelope(await embedded.client.get("/health/ready"), 200)
    assert ready["data"] == {"status": "ready", "checks": {"store": "ok", "queue": "ok"}}
    assert envelope(await embedded.client.get("/no/such/path"), 404)["message"] == "Not Found"
    not_allowed = await embedded.client.delete(SEND)
    envelope(not_allowed, 405)
    assert "POST" in not_allowed.headers["allow"]


async def test_unexpected_errors_are_a_500_in_the_envelope_without_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    app = Litestar([boom], exception_handlers={Exception: envelope_exception_handler}, logging_config=None)
    async with serve(app) as client:
        body = envelope(await client.get("/boom"), 500)
    assert body == {"code": 500, "message": "Internal Server Error", "data": None}
    assert "secret internal detail" in caplog.text  # logged for the operator, not shown to the client


async def test_queue_cannot_confirm_gives_503(service: Service) -> None:
    # the real queue backend closed under the running app: it cannot confirm a publish
    await service.mq.queue.close()
    response = await service.send(files=[("attachment[]", ("a.txt", b"kept for the record", "text/plain"))])
    body = envelope(response, 503)
    assert "queue" in body["message"]
    ready = envelope(await service.client.get("/health/ready"), 503)
    assert ready["data"]["checks"]["queue"] == "unavailable"
    assert ready["data"]["checks"]["store"] == "ok"
    # the record stays queued for the sweeper, with its attachment; nothing else was kept
    (record,) = await service.records()
    assert record.id == body["data"]["id"]
    assert record.status is Status.QUEUED
    (ref,) = record.mail.attachments
    assert await service.attachment_bytes(ref.key) == b"kept for the record"


async def test_repeat_with_the_key_gets_200_only_once_queued(service: Service) -> None:
    await service.mq.queue.close()
    headers = {"Idempotency-Key": "invoice-77"}
    first = envelope(await service.send(headers=headers), 503)
    # the queue is still down: the repeat must not answer 200 for an unqueued mail
    again = envelope(await service.send(headers=headers), 503)
    assert again["data"]["id"] == first["data"]["id"]
    await service.mq.queue.open()
    assert await service.mq.queue.depth() == 0  # neither request got it queued
    ok = envelope(await service.send(headers=headers), 200)
    assert ok["data"]["id"] == first["data"]["id"]
    assert await service.mq.queue.depth() == 1
    envelope(await service.send(headers=headers), 200)
    assert await service.mq.queue.depth() == 1  # published once


async def test_store_cannot_record_gives_503_and_keeps_nothing(service: Service) -> None:
    engine = service.mq.store.engine  # type: ignore[attr-defined]
    rename = "ALTER TABLE {} RENAME TO {}"
    async with engine.begin() as conn:
        await conn.execute(sa.text(rename.format("email", "email_moved")))
    try:
        response = await service.send(
            files=[
                ("attachment[]", ("a.txt", b"a" * 3000, "text/plain")),
                ("attachment[]", ("b.txt", b"b" * 3000, "text/plain")),
            ]
        )
        envelope(response, 503)
        ready = envelope(await service.client.get("/health/ready"), 200)  # ping does not need the table
        assert ready["data"]["checks"]["store"] == "ok"
        assert await service.stored_attachments() == 0
        assert await service.mq.queue.depth() == 0
    finally:
        async with engine.begin() as conn:
            await conn.execute(sa.text(rename.format("email_moved", "email")))
    await service.assert_nothing_kept()


async def test_bearer_auth(start_embedded: StartService) -> None:
    api = APISettings(tokens=[SecretStr("first-token-0123456789"), SecretStr("second-token-9876543210")])
    async with start_embedded(api) as service:
        client = service.client
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Bearer"},
            {"Authorization": "Basic Zmlyc3QtdG9rZW4="},
            {"Authorization": "first-token-0123456789"},
            {"Authorization": "Bearer first-token-012345678"},
        ):
            response = await service.send(headers=headers)
            assert "Unauthorized" in envelope(response, 401)["message"]
            assert response.headers["www-authenticate"].startswith("Bearer")
            envelope(await client.get("/api/email/" + "0" * 32, headers=headers), 401)
        await service.assert_nothing_kept()

        first = await service.send(headers={"Authorization": "Bearer first-token-0123456789"})
        mail_id = envelope(first, 200)["data"]["id"]
        second = await client.get(
            f"/api/email/{mail_id}", headers={"Authorization": "bearer second-token-9876543210"}
        )
        envelope(second, 200)
        # probes and the schema need no token
        envelope(await client.get("/health/live"), 200)
        envelope(await client.get("/health/ready"), 200)
        assert (await client.get("/schema/openapi.json")).status_code == 200


def test_check_bind_allowed() -> None:
    open_settings = Settings(api=APISettings())
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        check_bind_allowed(host, open_settings)
    for host in ("0.0.0.0", "::", "", "192.168.1.10", "example.com", "10.0.0.1"):
        with pytest.raises(ConfigurationError, match="token"):
            check_bind_allowed(host, open_settings)
    with pytest.raises(ConfigurationError):
        check_bind_allowed("0.0.0.0", Settings(api=APISettings(tokens=[SecretStr("")])))
    check_bind_allowed("0.0.0.0", Settings(api=APISettings(tokens=[SecretStr("a-real-token")])))


async def test_openapi_documents_the_endpoints(embedded: Service) -> None:
    response = await embedded.client.get("/schema/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    paths = spec["paths"]
    assert {"/api/email/send", "/api/email/{mail_id}", "/health/live", "/health/ready"} <= set(paths)
    send = paths["/api/email/send"]["post"]
    content = send["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json", "application/x-www-form-urlencoded"}
    form = content["multipart/form-data"]["schema"]["properties"]
    assert form["attachment[]"]["maxItems"] == embedded.settings.api.max_attachments
    assert form["title"]["maxLength"] == 255
    for field_name in ("title", "content", "sender_name", "receiver", "receiver_name"):
        assert "pattern" in form[field_name], field_name
    receiver = re.compile(form["receiver"]["pattern"])
    assert receiver.search("ann@example.com, bob@example.org")
    for refused in ("0", "ann", "ann@localhost", "a@x.test", "Ann <ann@example.com>", "a@b@example.com"):
        assert not receiver.search(refused), refused
    assert set(content["application/json"]["schema"]["required"]) == {
        "title",
        "content",
        "sender_name",
        "receiver",
    }
    assert "attachment[]" in content["multipart/form-data"]["schema"]["properties"]
    assert {"200", "400", "401", "413", "415", "503"} <= set(send["responses"])
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in send["parameters"])
    assert send["security"] == [{"BearerToken": []}]
    assert spec["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    status = paths["/api/email/{mail_id}"]["get"]
    assert {"200", "404"} <= set(status["responses"])


# --- mailqueue serve: the worker in the app's lifespan ----------------------------------------


async def test_worker_in_the_lifespan_delivers(start_embedded: StartService) -> None:
    fast = WorkerSettings(concurrency=2, shutdown_timeout=5)
    async with start_embedded(run_worker=True, worker=fast) as service:
        response = await service.send(files=[("attachment[]", ("a.txt", b"attached bytes", "text/plain"))])
        mail_id = envelope(response, 200)["data"]["id"]

        async def sent() -> bool:
            status = envelope(await service.client.get(f"/api/email/{mail_id}"), 200)["data"]
            return bool(status["status"] == "sent")

        await _until(sent)
        ready = envelope(await service.client.get("/health/ready"), 200)
        assert ready["data"]["checks"] == {"store": "ok", "queue": "ok", "worker": "ok"}
        status = envelope(await service.client.get(f"/api/email/{mail_id}"), 200)["data"]
        assert status["is_ok"] is True
        assert [h["outcome"] for h in status["history"]] == ["sent"]
        (eml,) = service.outbox.rglob("*.eml")
        assert b"attached bytes" in eml.read_bytes() or b"YXR0YWNoZWQgYnl0ZXM=" in eml.read_bytes()


async def _until(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.05)
