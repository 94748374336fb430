"""The operator dashboard (``/ui``) in a real browser.

The real app (API and worker in one process, ``create_app(worker=True)``)
runs under uvicorn in the test's event loop, on the embedded default (SQLite
store, ``sql`` queue, file attachments) and on MariaDB, delivering to the
in-process SMTP server, which refuses chosen recipients. Playwright drives
the machine's Chromium (``/usr/bin/chromium``: browsers cannot be
downloaded here; ``scripts/services.sh`` installs it). Screenshots of every
page, at a laptop's and a phone's width, go to the test's temporary folder
(``screens/``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import service_missing
from http_helpers import serve
from playwright.async_api import Browser, Page, async_playwright, expect
from proc_helpers import eventually

from mailqueue import Attachment, InspectableStore, Mail, MailQueue, Recipient, Status, load_settings
from mailqueue.contrib.litestar_app import create_app
from mailqueue.testing.smtpd import Fault, SMTPTestServer

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "ui-test-3f9a1c7e5b2d4f60a8b7c6d5e4f3a2b1"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
WITHIN = 30.0
XSS_SUBJECT = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> Invoice'
XSS_BODY = (
    "<p id='hello'>Hello from the body</p>"
    "<script>document.body.setAttribute('data-ran', '1'); parent.__xss = 3;</script>"
    "<img src='http://127.0.0.1:{port}/remote-tracker.png' alt='remote'>"
    "<link rel='stylesheet' href='http://127.0.0.1:{port}/remote.css'>"
    "<img onerror=\"document.body.setAttribute('data-ran', '2')\" src='data:,'>"
)
BOUNCE = "bounce@example.com"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """The machine's Chromium, headless."""
    if not await asyncio.to_thread(CHROMIUM.exists):
        service_missing(f"Chromium at {CHROMIUM} (apt-get install chromium, or bash scripts/services.sh)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class Dashboard:
    """A running service, its MailQueue (shared with the app) and the SMTP server behind it."""

    base: str
    mq: MailQueue
    smtp: SMTPTestServer
    screens: Path

    @property
    def store(self) -> InspectableStore:
        store = self.mq.store
        assert isinstance(store, InspectableStore)
        return store

    async def status(self, mail_id: str) -> Status:
        record = await self.mq.status(mail_id)
        assert record is not None
        return record.status

    async def settled(self, *ids: str) -> None:
        """Wait until the worker is done with every one of ``ids``."""
        statuses: list[Status] = []

        async def all_final() -> bool:
            statuses[:] = [await self.status(i) for i in ids]
            return all(s.final for s in statuses)

        await eventually(all_final, lambda: f"the mails to settle: {statuses}", within=WITHIN)


@pytest.fixture(params=["sqlite", "mysql"])
async def dashboard(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Dashboard]:
    """The service with a worker, on the embedded default or MariaDB, with a token configured."""
    store_url: str = request.getfixturevalue(f"{request.param}_url")
    async with SMTPTestServer() as smtp:
        settings = load_settings(
            store=store_url,
            queue="sql://?poll=0.05",
            attachments=f"file://{tmp_path / 'attachments'}",
            sender=smtp.url(from_address="noreply@example.com", timeout="5"),
            api={"tokens": [TOKEN]},
            worker={"retry_base": 0.05, "shutdown_timeout": 5},
        )
        mq = MailQueue.from_settings(settings)
        async with mq:
            app = create_app(settings, mailqueue=mq, worker=True)
            async with serve(app) as client:
                screens = tmp_path / "screens"
                screens.mkdir()
                yield Dashboard(str(client.base_url).rstrip("/"), mq, smtp, screens)


async def shoot(page: Page, screens: Path, name: str) -> None:
    """Screenshots of the page as it is, at a laptop's and a phone's width."""
    size = page.viewport_size
    for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        await page.set_viewport_size(viewport)
        await page.wait_for_timeout(150)
        await page.screenshot(path=str(screens / f"{name}-{label}.png"), full_page=True)
    if size is not None:
        await page.set_viewport_size(size)


async def log_in(page: Page, base: str, token: str = TOKEN) -> None:
    await page.goto(f"{base}/ui/login")
    await page.get_by_label("API token").fill(token)
    await page.get_by_label("Your name").fill("Alice")
    await page.get_by_role("button", name="Log in").click()


async def submit(mq: MailQueue, subject: str, to: str, **kw: Any) -> str:
    record = await mq.submit(
        Mail(
            subject=subject,
            html=kw.pop("html", "<p>Hello</p>"),
            sender_name="Billing",
            to=[Recipient(address=to, name="Ann Example")],
            **kw,
        ),
        kw.pop("attachments", ()),
    )
    return record.id


@contextlib.asynccontextmanager
async def remote_server() -> AsyncIterator[tuple[int, list[str]]]:
    """A TCP server that only notes every connection: where a mail's remote images would be loaded from."""
    hits: list[str] = []

    async def note(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append((await reader.readline()).decode("latin-1"))
        writer.close()

    server = await asyncio.start_server(note, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], hits
    finally:
        server.close()
        await server.wait_closed()


async def test_dashboard_in_a_browser(dashboard: Dashboard, browser: Browser) -> None:
    async with remote_server() as (remote_port, remote_hits):
        await _walk_through(dashboard, browser, remote_port, remote_hits)


async def _walk_through(d: Dashboard, browser: Browser, remote_port: int, remote_hits: list[str]) -> None:
    d.smtp.faults.append(
        Fault("rcpt", address=BOUNCE, reply="550 5.1.1 <bounce@example.com>: no such user", times=None)
    )
    failed = await d.mq.submit(
        Mail(
            subject="Quarterly report",
            html="<p>Attached.</p>",
            sender_name="Reports",
            to=[Recipient(address=BOUNCE, name="Bo Unce")],
        ),
        [Attachment("report Q3 — final.pdf", b"%PDF-1.4 quarterly numbers", "application/pdf")],
    )
    failed_id = failed.id
    sent_ids = [await submit(d.mq, f"Welcome {i}", f"user{i}@example.com") for i in range(3)]
    xss_id = await submit(d.mq, XSS_SUBJECT, "victim@example.com", html=XSS_BODY.format(port=remote_port))
    more_failed = [await submit(d.mq, f"Newsletter {i}", BOUNCE) for i in range(2)]
    await d.settled(failed_id, xss_id, *sent_ids, *more_failed)
    assert await d.status(failed_id) is Status.FAILED

    context = await browser.new_context(viewport=DESKTOP, accept_downloads=True)
    page = await context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    blocked: list[tuple[str, str | None]] = []
    page.on("requestfailed", lambda req: blocked.append((req.url, req.failure)))

    # not logged in: the dashboard sends you to the login form
    await page.goto(f"{d.base}/ui")
    assert page.url == f"{d.base}/ui/login?next=/ui"
    await shoot(page, d.screens, "login")

    # a wrong token is refused
    await log_in(page, d.base, token="not-the-token")
    assert "/ui/login" in page.url
    await page.get_by_text("That token is not one of api.tokens.").wait_for()
    await shoot(page, d.screens, "login-refused")

    # the right one lets you in: the counts are the Store's
    await log_in(page, d.base)
    await page.wait_for_url(f"{d.base}/ui")
    counts = await d.store.count_by_status()
    for status in Status:
        shown = await page.locator(f"#count-{status} .value").inner_text()
        assert shown == f"{counts[status]:,}", status
    assert counts[Status.FAILED] == 3
    assert counts[Status.SENT] == 4
    assert "Alice (token #1)" in await page.locator(".operator").inner_text()
    await shoot(page, d.screens, "overview")
    await page.get_by_role("link", name="Last day").click()
    await page.wait_for_url(f"{d.base}/ui?window=day")

    # filter to the failed mail: status and recipient
    await page.get_by_role("link", name="Messages").click()
    await page.get_by_label("failed").check()
    await page.get_by_label("Subject contains").fill("quarterly")
    await page.get_by_role("button", name="Apply").click()
    await page.wait_for_url("**/ui/messages?status=failed&*subject=quarterly*")
    rows = page.locator("table.list tbody tr")
    assert await rows.count() == 1
    assert "1 mail matches" in await page.locator("#match-count").inner_text()
    await shoot(page, d.screens, "messages")

    # open it: envelope, attempts, attachment
    await page.get_by_role("link", name="Quarterly report").click()
    await page.wait_for_url(f"{d.base}/ui/messages/{failed_id}")
    assert await page.locator("#status").inner_text() == "failed"
    attempts = page.locator("#attempts li")
    assert await attempts.count() == 1
    first_attempt = await attempts.first.inner_text()
    assert "550" in first_attempt
    assert "no such user" in first_attempt
    assert "Bo Unce <bounce@example.com>" in await page.locator("#main").inner_text()
    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="report Q3 — final.pdf").click()
    download = await download_info.value
    assert download.suggested_filename == "report Q3 — final.pdf"
    saved = await download.path()
    assert await asyncio.to_thread(saved.read_bytes) == b"%PDF-1.4 quarterly numbers"
    await shoot(page, d.screens, "message-failed")

    # re-send it, now that the server accepts the address, and watch it become sent; first take
    # the address off the suppression list, where its 550 5.1.1 put it
    d.smtp.faults.clear()
    assert await d.mq.suppressions.remove(BOUNCE)
    await page.get_by_role("button", name="Re-send").click()
    await page.get_by_text("Queued again").wait_for()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WITHIN
    while await page.locator("#status").inner_text() != "sent":
        assert loop.time() < deadline, "the re-sent mail did not become sent"
        await asyncio.sleep(0.2)
        await page.reload()
    assert await d.status(failed_id) is Status.SENT
    assert await page.locator("#attempts li").count() == 2
    assert "no longer stored" in await page.locator("#attachments").inner_text()
    assert [m.recipients for m in d.smtp.messages if BOUNCE in m.recipients] == [(BOUNCE,)]
    await shoot(page, d.screens, "message-sent")

    # a subject with markup is text; nothing in it runs, in the list or on its page
    await page.goto(f"{d.base}/ui/messages?subject=script")
    assert await page.get_by_role("link", name=XSS_SUBJECT).count() == 1
    await page.get_by_role("link", name=XSS_SUBJECT).click()
    assert await page.locator("#subject").inner_text() == XSS_SUBJECT
    assert await page.locator("script").count() == 0
    # the preview shows the body, runs none of its script and loads nothing remote
    preview = page.frame_locator("#preview")
    await preview.locator("#hello").wait_for()
    assert await preview.locator("body").get_attribute("data-ran") is None
    assert await page.evaluate("window.__xss") is None
    await shoot(page, d.screens, "message-xss")
    # Chromium refused the remote loads itself (CSP), and nothing reached the remote server
    assert sorted(failure for url, failure in blocked if str(remote_port) in url) == ["csp", "csp"]
    assert remote_hits == []

    # a POST without the CSRF token is refused and changes nothing
    refused = await page.request.post(f"{d.base}/ui/messages/{sent_ids[0]}/delete", form={"x": "1"})
    assert refused.status == 403
    forged = await page.request.post(
        f"{d.base}/ui/messages/{sent_ids[0]}/delete", form={"csrf_token": "forged"}
    )
    assert forged.status == 403
    record = await d.mq.status(sent_ids[0])
    assert record is not None
    assert not record.is_deleted

    # re-send a selection: the confirmation says how many, then they go
    d.smtp.faults.append(Fault("rcpt", address=BOUNCE, reply="550 5.1.1 still no such user", times=None))
    await page.goto(f"{d.base}/ui/messages?status=failed")
    await page.get_by_role("link", name="Re-send these…").click()
    assert "2 mails will be queued again" in await page.locator("#resend-count").inner_text()
    await shoot(page, d.screens, "resend-confirm")
    await page.get_by_role("button", name="Re-send 2 mails").click()
    await page.get_by_text("Queued again: 2 mails.").wait_for()
    await d.settled(*more_failed)
    for mail_id in more_failed:
        record = await d.mq.status(mail_id)
        assert record is not None
        assert record.attempts == 2

    # mark as deleted, with the page's own form
    await page.goto(f"{d.base}/ui/messages/{sent_ids[1]}")
    await page.get_by_role("button", name="Mark as deleted").click()
    await page.locator("#deleted").wait_for()
    record = await d.mq.status(sent_ids[1])
    assert record is not None
    assert record.is_deleted

    # log out: the dashboard asks for the token again
    await page.get_by_role("button", name="Log out").click()
    await page.wait_for_url(f"{d.base}/ui/login")
    await page.goto(f"{d.base}/ui/messages")
    assert "/ui/login" in page.url
    assert dialogs == []
    await context.close()


@pytest.mark.parametrize("dashboard", ["sqlite"], indirect=True)
async def test_phone_width_is_usable_with_the_keyboard(dashboard: Dashboard, browser: Browser) -> None:
    d = dashboard
    mail_id = await submit(
        d.mq, "A subject long enough to need wrapping on a small phone screen", "p@example.com"
    )
    await d.settled(mail_id)
    context = await browser.new_context(viewport=PHONE)
    page = await context.new_page()
    await page.goto(f"{d.base}/ui/login")
    # the token field has the focus; Tab reaches the name field and then the button
    await expect(page.get_by_label("API token")).to_be_focused()
    await page.keyboard.type(TOKEN)
    await page.keyboard.press("Tab")
    await page.keyboard.type("Bob")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Log in"
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{d.base}/ui")
    # nothing sticks out sideways at a phone's width
    for path in ("/ui", "/ui/messages", f"/ui/messages/{mail_id}"):
        await page.goto(f"{d.base}{path}")
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, path
    await context.close()
