"""The dashboard's suppression list page: list, search, the link to the causing mail, remove with CSRF."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from http_helpers import serve

from mailqueue import Mail, MailQueue, Recipient, SuppressionQuery, load_settings
from mailqueue.contrib.litestar_app import create_app

TOKEN = "ui-suppression-token-aaaaaaaaaaaaaaaaaaaaaaaa"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
async def ui() -> AsyncIterator[tuple[httpx.AsyncClient, MailQueue]]:
    config = load_settings(
        store="memory://", queue="memory://", attachments="memory://", api={"tokens": [TOKEN]}
    )
    mq = MailQueue.from_settings(config)
    async with mq, serve(create_app(config, mailqueue=mq)) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client, mq


async def test_list_search_link_and_remove(ui: tuple[httpx.AsyncClient, MailQueue]) -> None:
    client, mq = ui
    mail = await mq.submit(Mail(subject="s", html="<p>x</p>", to=[Recipient(address="gone@example.com")]))
    await mq.suppressions.record_hard_bounce(
        "gone@example.com", mail.id, "550 5.1.1 <gone@example.com> User unknown"
    )
    await mq.suppressions.add("ann@other.org", "unsubscribe")

    page = await client.get("/ui/suppressions")
    assert page.status_code == 200
    assert "2 entries" in page.text
    assert f'href="/ui/messages/{mail.id}"' in page.text
    assert "550 5.1.1 &lt;gone@example.com&gt; User unknown" in page.text
    assert 'aria-current="page">Suppressions' in page.text

    found = await client.get("/ui/suppressions", params={"address": "OTHER.org"})
    assert "1 entry" in found.text
    assert "ann@other.org" in found.text
    assert "gone@example.com" not in found.text
    found = await client.get("/ui/suppressions", params={"reason": "hard_bounce"})
    assert "gone@example.com" in found.text
    assert "ann@other.org" not in found.text

    match = CSRF.search(page.text)
    assert match is not None
    # without the CSRF token: refused, nothing removed
    refused = await client.post("/ui/suppressions/remove", data={"address": "gone@example.com"})
    assert refused.status_code == 403
    assert await mq.suppressions.count(SuppressionQuery()) == 2
    done = await client.post(
        "/ui/suppressions/remove",
        data={
            "csrf_token": match.group(1),
            "address": "gone@example.com",
            "back": "reason=hard_bounce&page=1",
        },
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/ui/suppressions?reason=hard_bounce&page=1&removed=gone%40example.com"
    after = await client.get(done.headers["location"])
    assert "Removed gone@example.com from the suppression list." in after.text
    assert [e.address for e in await mq.suppressions.list(SuppressionQuery())] == ["ann@other.org"]
    again = await client.post(
        "/ui/suppressions/remove", data={"csrf_token": match.group(1), "address": "gone@example.com"}
    )
    assert again.status_code == 404
    bad = await client.post(
        "/ui/suppressions/remove", data={"csrf_token": match.group(1), "address": "ann@other.org\r\nX: y"}
    )
    assert bad.status_code == 400
    assert await mq.suppressions.count(SuppressionQuery()) == 1


async def test_the_mail_page_shows_a_suppressed_recipient(ui: tuple[httpx.AsyncClient, MailQueue]) -> None:
    from mailqueue.records import RecipientOutcome, RecipientState, RecordUpdate, Status

    client, mq = ui
    mail = await mq.submit(Mail(subject="s", html="<p>x</p>", to=[Recipient(address="gone@example.com")]))
    outcome = RecipientOutcome("gone@example.com", RecipientState.SUPPRESSED, None, "suppressed: complaint")
    assert await mq.store.update(mail.id, RecordUpdate(status=Status.FAILED, recipients=(outcome,)))
    page = await client.get(f"/ui/messages/{mail.id}")
    assert page.status_code == 200
    assert 'class="badge rcpt-suppressed">suppressed' in page.text
