"""Make the screenshots of docs/dashboard.md: the dashboard on an hour of made-up mail.

Runs the real app with a worker (SQLite in a temporary folder, two SMTP
accounts on an in-process SMTP server that refuses one address), fills the
store with an hour of history through ``Store.add``, and photographs each page
with the machine's Chromium, at a laptop's and a phone's width. The PNGs are
made smaller with ``pngquant`` when it is installed (``apt-get install pngquant``).

    .venv/bin/python scripts/dashboard_screenshots.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from http_helpers import serve  # noqa: E402
from playwright.async_api import async_playwright  # noqa: E402

from mailqueue import (  # noqa: E402
    Attachment,
    Mail,
    MailQueue,
    MailRecord,
    Recipient,
    RecipientOutcome,
    RecipientState,
    Status,
    load_settings,
)
from mailqueue.contrib.litestar_app import create_app  # noqa: E402
from mailqueue.records import utcnow  # noqa: E402
from mailqueue.testing.smtpd import Fault, SMTPTestServer  # noqa: E402

TOKEN = "docs-screenshots-0123456789abcdef0123"
CHROMIUM = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"]
SUBJECTS = ["Your invoice {n}", "Password reset", "Welcome to Example", "Order {n} shipped", "Weekly report"]
REPLIES = {
    Status.SENT: (250, "2.0.0 OK"),
    Status.FAILED: (550, "5.1.1 user unknown"),
    Status.DEAD: (421, "4.7.0 Try again later"),
    Status.UNKNOWN: (None, "connection lost after the final dot"),
}
INVOICE = (
    "<h2 style='color:#0b5cad'>Invoice 2026-1142</h2><p>Dear Jane,</p><p>please find your invoice for "
    "November attached. The amount of <b>EUR 1,240.00</b> is due on 15 December.</p>"
    "<p><img src='https://tracker.example.com/open.gif' alt=''></p>"
    "<p>Kind regards,<br>Example Shop accounting</p>"
)


async def history(mq: MailQueue) -> None:
    """An hour of mail: a few per minute, a burst now and then, mostly sent."""
    rng = random.Random(7)
    now = utcnow()
    for minute in range(60, 0, -1):
        for _ in range(rng.randint(2, 9) if minute % 17 else 25):
            created = now - timedelta(minutes=minute, seconds=rng.randint(0, 59))
            done = created + timedelta(seconds=rng.randint(1, 40))
            mail = Mail(
                subject=rng.choice(SUBJECTS).format(n=rng.randint(1000, 9999)),
                html="<p>Hello</p>",
                sender_name="Example Shop",
                to=[Recipient(address=f"customer{rng.randint(1, 999)}@example.org")],
            )
            roll = rng.random()
            status = (
                Status.SENT
                if roll < 0.9
                else Status.FAILED
                if roll < 0.96
                else Status.DEAD
                if roll < 0.985
                else Status.UNKNOWN
            )
            code, reply = REPLIES[status]
            state = {Status.SENT: RecipientState.SENT, Status.FAILED: RecipientState.FAILED}.get(
                status, RecipientState.PENDING
            )
            await mq.store.add(
                MailRecord.new(mail).evolve(
                    created_at=created,
                    updated_at=done,
                    status=status,
                    attempts=1,
                    last_code=code,
                    sent_at=done if status is Status.SENT else None,
                    recipients=tuple(RecipientOutcome(r.address, state, code, reply) for r in mail.to),
                    last_error="" if status is Status.SENT else f"{code or ''} {reply}".strip(),
                )
            )


async def shoot(out: Path, tmp: str) -> None:
    """Run the service and photograph it into ``out``."""
    async with SMTPTestServer() as smtp:
        url = smtp.url(from_address="noreply@example.com")
        settings = load_settings(
            store=f"sqlite+aiosqlite:///{tmp}/mailqueue.db",
            queue="sql://?poll=0.05",
            attachments=f"file://{tmp}/attachments",
            senders=[{"url": url, "name": "primary", "rate": "50/s"}, {"url": url, "name": "backup"}],
            api={"tokens": [TOKEN]},
        )
        smtp.faults.append(Fault("rcpt", address="jane.doe@example.net", reply="550 5.1.1 User unknown"))
        smtp.faults[-1].times = None
        async with MailQueue.from_settings(settings) as mq:
            await history(mq)
            invoice = await mq.submit(
                Mail(
                    subject="Invoice 2026-1142 for November",
                    html=INVOICE,
                    text="Dear Jane, please find your invoice attached.",
                    sender_name="Example Shop",
                    to=[Recipient(address="jane.doe@example.net", name="Jane Doe")],
                    cc=[Recipient(address="accounting@example.com", name="Accounting")],
                ),
                [Attachment("invoice-2026-1142.pdf", b"%PDF-1.4" + b"x" * 48000, "application/pdf")],
            )
            async with serve(create_app(settings, mailqueue=mq, worker=True)) as client:
                await asyncio.sleep(2)
                await photograph(str(client.base_url).rstrip("/"), invoice.id, out)


async def photograph(base: str, invoice_id: str, out: Path) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM)
        page = await (await browser.new_context(viewport={"width": 1100, "height": 760})).new_page()
        await page.goto(f"{base}/ui/login")
        await page.screenshot(path=out / "dashboard-login.png")
        await page.get_by_label("API token").fill(TOKEN)
        await page.get_by_label("Your name").fill("alice")
        await page.get_by_role("button", name="Log in").click()
        await page.wait_for_url(f"{base}/ui")
        await page.screenshot(path=out / "dashboard-overview.png", full_page=True)
        await page.goto(f"{base}/ui/messages?status=failed&status=dead")
        await page.screenshot(path=out / "dashboard-messages.png")
        # tall enough that the body's frame is painted (a full-page shot leaves frames below the fold blank)
        await page.set_viewport_size({"width": 1100, "height": 1230})
        await page.goto(f"{base}/ui/messages/{invoice_id}")
        await page.frame_locator("#preview").locator("h2").wait_for()
        await page.wait_for_timeout(300)
        await page.screenshot(path=out / "dashboard-message.png")
        await page.set_viewport_size({"width": 1100, "height": 760})
        await page.goto(f"{base}/ui/resend?status=failed")
        await page.screenshot(path=out / "dashboard-resend.png")
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.goto(f"{base}/ui")
        await page.screenshot(path=out / "dashboard-phone-overview.png")
        await page.goto(f"{base}/ui/messages?status=failed")
        await page.screenshot(path=out / "dashboard-phone-messages.png")
        await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="folder for the PNGs")
    out: Path = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(shoot(out, tmp))
    pngs = sorted(out.glob("dashboard-*.png"))
    if shutil.which("pngquant"):
        for png in pngs:
            quantize = ["pngquant", "--quality=70-90", "--speed", "1", "--force", "--output", str(png)]
            subprocess.run([*quantize, "--", str(png)], check=True)
    for png in pngs:
        print(f"{png}  {png.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
