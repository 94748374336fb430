"""The suppression list over HTTP: the three routes, and the send route's answer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_helpers import serve
from pydantic import SecretStr

from mailqueue import APISettings, MailQueue, RecordQuery, Settings, SuppressionQuery
from mailqueue.contrib.litestar_app import create_app
from mailqueue.records import utcnow

SEND = "/api/email/send"
MAIL = {"title": "Hi", "content": "<p>Hi</p>", "sender_name": "Shop"}


@dataclass
class Service:
    client: httpx.AsyncClient
    mq: MailQueue


StartService = Callable[..., contextlib.AbstractAsyncContextManager[Service]]


@pytest.fixture(params=["embedded", pytest.param("mysql", marks=pytest.mark.mysql)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "embedded":
        return f"sqlite+aiosqlite:///{tmp_path / 'mailqueue.db'}"
    url: str = request.getfixturevalue("mysql_url")
    return url


@pytest.fixture
def start(store_url: str, tmp_path: Path) -> StartService:
    @contextlib.asynccontextmanager
    async def start(**settings: Any) -> AsyncIterator[Service]:
        config = Settings(
            store=store_url,
            queue="sql://?poll=0.05",
            attachments="memory://",
            sender=f"outbox://{tmp_path / 'outbox'}?from=noreply@example.com",
            **settings,
        )
        mq = MailQueue.from_settings(config)
        try:
            async with serve(create_app(config, mailqueue=mq)) as client:
                yield Service(client, mq)
        finally:
            await mq.close()

    return start


@pytest.fixture
async def service(start: StartService) -> AsyncIterator[Service]:
    async with start() as svc:
        yield svc


async def test_add_list_remove(service: Service) -> None:
    client = service.client
    later = (utcnow() + timedelta(days=7)).isoformat()
    answer = await client.post(
        "/api/suppressions", json={"address": "Ann@Example.com", "reason": "unsubscribe", "expires_at": later}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["code"], body["message"]) == (200, "success")
    assert body["data"]["address"] == "ann@example.com"
    assert body["data"]["reason"] == "unsubscribe"
    assert body["data"]["expires_at"] is not None
    assert (await client.post("/api/suppressions", json={"address": "bob@example.org"})).status_code == 200

    listing = (await client.get("/api/suppressions")).json()["data"]
    assert listing["total"] == 2
    assert {e["address"]: e["reason"] for e in listing["items"]} == {
        "ann@example.com": "unsubscribe",
        "bob@example.org": "manual",
    }
    found = (await client.get("/api/suppressions", params={"address": "EXAMPLE.org"})).json()["data"]
    assert [e["address"] for e in found["items"]] == ["bob@example.org"]
    found = (await client.get("/api/suppressions", params={"reason": "unsubscribe"})).json()["data"]
    assert [e["address"] for e in found["items"]] == ["ann@example.com"]
    empty = (await client.get("/api/suppressions", params={"page": 2})).json()["data"]
    assert (empty["items"], empty["total"], empty["page"]) == ([], 2, 2)

    gone = await client.delete("/api/suppressions/ANN@example.com")
    assert gone.status_code == 200
    assert gone.json()["data"] == {"address": "ann@example.com", "removed": True}
    again = await client.delete("/api/suppressions/ann@example.com")
    assert again.status_code == 404
    assert again.json()["code"] == 404
    assert await service.mq.suppressions.count(SuppressionQuery()) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"address": "a@example.com\r\nBcc: x@example.com"}, "address"),
        ({"address": "a@example.com\n"}, "address"),
        ({"address": "not an address"}, "address"),
        ({"address": ""}, "address"),
        ({"reason": "manual"}, "address"),
        ({"address": 42}, "address"),
        ({"address": "a@example.com", "reason": "bounced"}, "reason"),
        ({"address": "a@example.com", "expires_at": "tomorrow"}, "expires_at"),
        ({"address": "a@example.com", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"address": "a@example.com", "expires_at": 5}, "expires_at"),
        ({"address": "a@example.com", "why": "x"}, "why"),
    ],
)
async def test_bad_input_is_400_and_changes_nothing(
    service: Service, body: dict[str, Any], field: str
) -> None:
    answer = await service.client.post("/api/suppressions", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == 400
    assert answer.json()["message"].startswith("Param is invalid")
    assert answer.json()["data"]["field"] == field
    assert await service.mq.suppressions.count(SuppressionQuery()) == 0


async def test_bad_queries_and_paths(service: Service) -> None:
    client = service.client
    assert (await client.post("/api/suppressions", content=b"{not json")).status_code == 400
    assert (await client.post("/api/suppressions", json=["a@example.com"])).status_code == 400
    answer = await client.get("/api/suppressions", params={"reason": "nope"})
    assert answer.status_code == 400
    assert answer.json()["data"]["field"] == "reason"
    assert (await client.get("/api/suppressions", params={"page": 0})).status_code == 400
    assert (await client.get("/api/suppressions", params={"address": "a\r\nb"})).status_code == 400
    answer = await client.delete("/api/suppressions/a@example.com%0D%0ABcc:x@example.com")
    assert answer.status_code == 400
    assert answer.json()["data"]["field"] == "address"


async def test_the_routes_need_a_token(start: StartService) -> None:
    async with start(api=APISettings(tokens=[SecretStr("s3cret")])) as svc:
        assert (await svc.client.get("/api/suppressions")).status_code == 401
        assert (
            await svc.client.post("/api/suppressions", json={"address": "a@example.com"})
        ).status_code == 401
        assert (await svc.client.delete("/api/suppressions/a@example.com")).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert (await svc.client.get("/api/suppressions", headers=auth)).status_code == 200
        assert await svc.mq.suppressions.count(SuppressionQuery()) == 0


async def test_send_lists_suppressed_recipients_and_accepts_the_mail(service: Service) -> None:
    await service.mq.suppressions.add("gone@example.com", "hard_bounce")
    answer = await service.client.post(SEND, data={**MAIL, "receiver": "Gone@example.com, ok@example.com"})
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert data["suppressed"] == [{"address": "Gone@example.com", "reason": "hard_bounce"}]
    assert (await service.mq.status(data["id"])) is not None
    clean = await service.client.post(SEND, data={**MAIL, "receiver": "ok@example.com"})
    assert clean.json()["data"]["suppressed"] == []


async def test_reject_on_submit_refuses_naming_the_field(start: StartService) -> None:
    async with start(suppression={"reject_on_submit": True}) as svc:
        await svc.mq.suppressions.add("gone@example.com", "complaint")
        answer = await svc.client.post(SEND, data={**MAIL, "receiver": "ok@example.com,gone@example.com"})
        assert answer.status_code == 400
        body = answer.json()
        assert body["data"]["field"] == "receiver"
        assert "gone@example.com is on the suppression list (complaint)" in body["message"]
        assert await svc.mq.store.find(RecordQuery(include_deleted=True)) == []
        ok = await svc.client.post(SEND, data={**MAIL, "receiver": "ok@example.com"})
        assert ok.status_code == 200
