"""The operator dashboard over plain HTTP: when it is served, who may use it,
its cookies and CSRF checks, headers, pagination and actions.

The real app runs under uvicorn on 127.0.0.1 (``http_helpers.serve``) on the
in-memory backends (honest implementations of the Store, Queue and
AttachmentStore contracts); a client that is not on loopback is Litestar's
test client (its address is ``testclient``). The browser tests are in
``test_ui.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_helpers import serve
from litestar.testing import AsyncTestClient
from proc_helpers import free_port, mailqueue, wait_ready
from prometheus_client import REGISTRY

from mailqueue import (
    Attachment,
    Mail,
    MailQueue,
    Recipient,
    RecordUpdate,
    Settings,
    Status,
    load_settings,
)
from mailqueue.contrib.litestar_app import create_app
from mailqueue.contrib.litestar_app.ui import ui_enabled
from mailqueue.contrib.litestar_app.ui.filters import Filters

TOKEN = "ui-http-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
OTHER_TOKEN = "ui-http-second-token-aaaaaaaaaaaaaaaaaaaa"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def settings(**api: Any) -> Settings:
    return load_settings(store="memory://", queue="memory://", attachments="memory://", api=api)


@dataclass
class Service:
    client: httpx.AsyncClient
    mq: MailQueue

    async def csrf(self, path: str = "/ui/messages", **kw: Any) -> str:
        page = await self.client.get(path, **kw)
        assert page.status_code == 200, page.text
        found = CSRF.search(page.text)
        assert found is not None
        return found.group(1)

    async def login(self, token: str = TOKEN, name: str = "Carol") -> httpx.Response:
        form = await self.client.get("/ui/login")
        found = CSRF.search(form.text)
        assert found is not None
        return await self.client.post(
            "/ui/login", data={"csrf_token": found.group(1), "token": token, "name": name}
        )

    async def mail(self, subject: str = "Hello", to: str = "a@example.com", **kw: Any) -> str:
        attachments = kw.pop("attachments", ())
        record = await self.mq.submit(
            Mail(subject=subject, html="<p>Hi</p>", to=[Recipient(address=to)], **kw), attachments
        )
        return record.id

    async def finish(self, mail_id: str, status: Status = Status.FAILED) -> None:
        assert await self.mq.store.update(mail_id, RecordUpdate(status=status, last_code=550))


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    """The app with one token, on 127.0.0.1, not logged in yet."""
    config = settings(tokens=[TOKEN, OTHER_TOKEN])
    mq = MailQueue.from_settings(config)
    async with mq, serve(create_app(config, mailqueue=mq)) as client:
        yield Service(client, mq)


# --- when the dashboard is served ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "host", "choice", "served"),
    [
        ([], "127.0.0.1", None, True),
        ([], "::1", None, True),
        ([], "localhost", None, True),
        ([], "0.0.0.0", None, False),
        ([], "192.0.2.10", None, False),
        ([TOKEN], "0.0.0.0", None, True),
        ([TOKEN], "127.0.0.1", False, False),
        ([], "0.0.0.0", True, True),
        ([""], "0.0.0.0", None, False),
    ],
)
def test_when_the_dashboard_is_on(tokens: list[str], host: str, choice: bool | None, served: bool) -> None:
    on, why = ui_enabled(settings(tokens=tokens, ui=choice), host)
    assert on is served
    assert why


async def test_switched_off_there_is_no_dashboard(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mailqueue.api")
    app = create_app(settings(tokens=[TOKEN], ui=False))
    async with serve(app) as client:
        assert (await client.get("/ui")).status_code == 404
        assert (await client.get("/ui/login")).status_code == 404
        assert (await client.get("/ui/static/ui.css")).status_code == 404
    assert "operator dashboard off: api.ui is false" in caplog.text


async def test_off_by_default_beyond_loopback_without_a_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mailqueue.api")
    app = create_app(settings(), host="0.0.0.0")
    async with serve(app) as client:
        assert (await client.get("/ui")).status_code == 404
    assert "operator dashboard off: no api.tokens and the API listens on '0.0.0.0'" in caplog.text


async def test_without_a_token_it_is_open_to_loopback_clients_only() -> None:
    config = settings()
    async with serve(create_app(config)) as client:
        page = await client.get("/ui")
        assert page.status_code == 200
        assert "local (127.0.0.1)" in page.text
        assert "Log out" not in page.text
        # the CSRF check still holds
        assert (await client.post("/ui/resend", data={"status": "failed"})).status_code == 403
    async with AsyncTestClient(create_app(config)) as remote:
        refused = await remote.get("/ui")
        assert refused.status_code == 403
        assert "only answers this machine" in refused.text


# --- logging in -------------------------------------------------------------------------------------


async def test_pages_need_a_login(service: Service) -> None:
    for path in ("/ui", "/ui/messages?status=failed", "/ui/messages/abc", "/ui/resend"):
        answer = await service.client.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/ui/login?next=/ui")
    assert (await service.client.get("/ui/messages?status=failed")).headers["location"] == (
        "/ui/login?next=/ui/messages%3Fstatus%3Dfailed"
    )
    # a POST without a session is refused (and no redirect to follow)
    assert (await service.client.post("/ui/resend", data={})).status_code == 401
    # the stylesheet is public
    css = await service.client.get("/ui/static/ui.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert css.headers["cache-control"] == "max-age=3600"


async def test_login_sets_a_strict_http_only_cookie(service: Service) -> None:
    form = await service.client.get("/ui/login")
    cookie = form.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/ui" in cookie
    assert "Secure" not in cookie
    answer = await service.login()
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui"
    session = answer.headers["set-cookie"]
    assert "HttpOnly" in session
    assert "SameSite=strict" in session
    page = await service.client.get("/ui")
    assert page.status_code == 200
    assert "Carol (token #1)" in page.text
    # the second token works as well, and the log names which one
    service.client.cookies.clear()
    await service.login(OTHER_TOKEN, name="")
    assert "token #2" in (await service.client.get("/ui")).text


async def test_over_https_the_cookie_is_secure() -> None:
    app = create_app(settings(tokens=[TOKEN]))
    async with AsyncTestClient(app, base_url="https://mail.example.com") as client:
        form = await client.get("/ui/login")
        assert "Secure" in form.headers["set-cookie"]
        found = CSRF.search(form.text)
        assert found is not None
        answer = await client.post(
            "/ui/login", data={"csrf_token": found.group(1), "token": TOKEN}, follow_redirects=False
        )
        assert answer.status_code == 303
        assert "Secure" in answer.headers["set-cookie"]


async def test_a_wrong_token_or_a_missing_csrf_token_logs_nobody_in(service: Service) -> None:
    wrong = await service.login("not-a-token")
    assert wrong.status_code == 401
    assert "That token is not one of api.tokens." in wrong.text
    assert (await service.client.get("/ui")).status_code == 303
    no_csrf = await service.client.post("/ui/login", data={"token": TOKEN})
    assert no_csrf.status_code == 403
    assert (await service.client.get("/ui")).status_code == 303


async def test_forms_are_small(service: Service) -> None:
    await service.login()
    csrf = await service.csrf()
    answer = await service.client.post("/ui/resend", data={"csrf_token": csrf, "subject": "x" * 70_000})
    assert answer.status_code == 413


async def test_after_login_only_pages_of_this_site(service: Service) -> None:
    for target, expected in [
        ("/ui/messages?status=failed", "/ui/messages?status=failed"),
        ("https://evil.example/ui", "/ui"),
        ("//evil.example/ui", "/ui"),
        ("/ui//evil.example", "/ui"),
        ("/elsewhere", "/ui"),
    ]:
        service.client.cookies.clear()
        form = await service.client.get("/ui/login", params={"next": target})
        found = CSRF.search(form.text)
        assert found is not None
        answer = await service.client.post(
            "/ui/login", data={"csrf_token": found.group(1), "token": TOKEN, "next": target}
        )
        assert answer.headers["location"] == expected, target


async def test_a_tampered_or_foreign_cookie_is_refused(service: Service) -> None:
    await service.login()
    value = service.client.cookies["mailqueue_ui"]
    body, _, mac = value.partition(".")
    forged_body = body[:-2] + ("AA" if body[-2:] != "AA" else "BB")
    for forged in (f"{forged_body}.{mac}", f"{body}.{mac[:-2]}xx", body, "garbage"):
        service.client.cookies.clear()
        service.client.cookies.set("mailqueue_ui", forged, path="/ui")
        assert (await service.client.get("/ui")).status_code == 303, forged
    # a cookie from another deployment (other tokens) is worth nothing here
    other = settings(tokens=["another-deployment-token-bbbbbbbbbbbb"])
    async with serve(create_app(other)) as elsewhere:
        form = await elsewhere.get("/ui/login")
        found = CSRF.search(form.text)
        assert found is not None
        await elsewhere.post(
            "/ui/login", data={"csrf_token": found.group(1), "token": "another-deployment-token-bbbbbbbbbbbb"}
        )
        foreign = elsewhere.cookies["mailqueue_ui"]
    service.client.cookies.clear()
    service.client.cookies.set("mailqueue_ui", foreign, path="/ui")
    assert (await service.client.get("/ui")).status_code == 303


async def test_logout_ends_the_session(service: Service) -> None:
    await service.login()
    csrf = await service.csrf()
    answer = await service.client.post("/ui/logout", data={"csrf_token": csrf})
    assert answer.status_code == 303
    assert "Max-Age=0" in answer.headers["set-cookie"]
    assert (await service.client.get("/ui")).status_code == 303


async def test_a_bearer_header_from_a_proxy_is_a_login_but_posts_still_need_csrf(service: Service) -> None:
    mail_id = await service.mail()
    await service.finish(mail_id)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    page = await service.client.get("/ui", headers=bearer)
    assert page.status_code == 200
    assert "bearer (token #1)" in page.text
    wrong = await service.client.get("/ui", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 303
    # a proxy adds the header to a forged cross-site POST too: without the page's token it is refused
    forged = await service.client.post(f"/ui/messages/{mail_id}/delete", headers=bearer)
    assert forged.status_code == 403
    record = await service.mq.status(mail_id)
    assert record is not None
    assert not record.is_deleted
    csrf = await service.csrf(f"/ui/messages/{mail_id}", headers=bearer)
    done = await service.client.post(
        f"/ui/messages/{mail_id}/delete", headers=bearer, data={"csrf_token": csrf}
    )
    assert done.status_code == 303
    record = await service.mq.status(mail_id)
    assert record is not None
    assert record.is_deleted


# --- pages ------------------------------------------------------------------------------------------


async def test_security_headers_of_pages_preview_and_downloads(service: Service) -> None:
    await service.login()
    mail_id = await service.mail(
        attachments=[Attachment('Rech"nung; März.html', b"<script>alert(1)</script>", "text/html")]
    )
    page = await service.client.get(f"/ui/messages/{mail_id}")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "script-src" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    assert f'<iframe class="preview" id="preview" sandbox src="/ui/messages/{mail_id}/preview"' in page.text

    preview = await service.client.get(f"/ui/messages/{mail_id}/preview")
    assert preview.status_code == 200
    assert preview.text == "<p>Hi</p>"
    assert preview.headers["content-security-policy"] == (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox; frame-ancestors 'self'"
    )

    download = await service.client.get(f"/ui/messages/{mail_id}/attachments/0")
    assert download.status_code == 200
    assert download.content == b"<script>alert(1)</script>"
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-disposition"] == (
        "attachment; filename=\"Rech_nung_ M_rz.html\"; filename*=UTF-8''Rech%22nung%3B%20M%C3%A4rz.html"
    )
    assert (await service.client.get(f"/ui/messages/{mail_id}/attachments/1")).status_code == 404

    record = await service.mq.status(mail_id)
    assert record is not None
    await service.mq.attachments.delete(record.mail.attachments[0].key)
    gone = await service.client.get(f"/ui/messages/{mail_id}/attachments/0")
    assert gone.status_code == 404
    assert "no longer in the attachment store" in gone.text
    assert "no longer stored" in (await service.client.get(f"/ui/messages/{mail_id}")).text


async def test_unknown_mails_and_bad_ids_are_404_pages(service: Service) -> None:
    await service.login()
    for path in ("/ui/messages/0123456789abcdef", "/ui/messages/A<b>", "/ui/messages/x/preview"):
        answer = await service.client.get(path)
        assert answer.status_code == 404, path
        assert answer.headers["content-type"].startswith("text/html")
        assert "<b>" not in answer.text
    # a path no route matches is the app's own (JSON) 404
    assert (await service.client.get("/ui/messages/..%2F..")).status_code == 404


async def test_bad_filters_are_named_and_escaped(service: Service) -> None:
    await service.login()
    answer = await service.client.get(
        "/ui/messages", params={"status": "<script>x</script>", "code": "5xx", "since": "yesterday"}
    )
    assert answer.status_code == 400
    assert "unknown status &#39;&lt;script&gt;x&lt;/script&gt;&#39;" in answer.text
    assert "code: an SMTP reply code, 100 to 599" in answer.text
    assert "from: not a date and time" in answer.text
    assert "<script>x" not in answer.text


async def test_keyset_pages_walk_every_mail_once_in_both_orders(service: Service) -> None:
    await service.login()
    # ids sort by creation time (mails made in the same instant in any order)
    ids = sorted([await service.mail(subject=f"Batch {i:03d}") for i in range(120)])
    other = await service.mail(subject="Unrelated")
    row = re.compile(r'href="/ui/messages/([0-9a-z_-]+)">Batch')
    pager = re.compile(r'<a rel="(prev|next)" href="/ui/messages\?([^"]+)"')
    for order, expected in (("newest", ids[::-1]), ("oldest", ids)):
        seen: list[str] = []
        url = f"/ui/messages?subject=batch&order={order}"
        pages: list[str] = []
        while True:
            page = await service.client.get(url.replace("&amp;", "&"))
            assert page.status_code == 200
            seen.extend(row.findall(page.text))
            pages.append(url)
            links = dict(pager.findall(page.text))
            if "next" not in links:
                break
            assert "subject=batch" in links["next"]
            url = "/ui/messages?" + links["next"]
        assert seen == expected, order
        assert other not in seen
        assert len(pages) == 3
        assert "120 mails match" in page.text
        # and back again from the last page
        links = dict(pager.findall(page.text))
        back = await service.client.get(("/ui/messages?" + links["prev"]).replace("&amp;", "&"))
        assert row.findall(back.text) == expected[50:100]


async def _mail_in_its_own_millisecond(service: Service, subject: str) -> str:
    await asyncio.sleep(0.002)
    return await service.mail(subject=subject)


async def test_the_overview_names_the_oldest_waiting_mail(service: Service) -> None:
    await service.login()
    assert "none waiting" in (await service.client.get("/ui")).text
    # ids order by the millisecond only: mails made in the same one have no order among them
    first, second, third = [await _mail_in_its_own_millisecond(service, f"Wait {i}") for i in range(3)]
    await service.finish(first, Status.SENT)
    assert await service.mq.store.update(second, RecordUpdate(status=Status.RETRYING))
    page = await service.client.get("/ui")
    assert f'<a href="/ui/messages/{second}">' in page.text
    assert '<dd id="queue-depth">3</dd>' in page.text
    assert await service.mq.store.update(second, RecordUpdate(status=Status.DEAD))
    assert f'<a href="/ui/messages/{third}">' in (await service.client.get("/ui")).text


async def test_the_overview_shows_each_recipient_domain_groups_rate() -> None:
    from mailqueue.contrib.litestar_app import MailQueuePlugin
    from mailqueue.sending.domains import DomainLimitStep
    from mailqueue.sending.pipeline import find_link

    config = load_settings(
        store="memory://",
        queue="memory://",
        attachments="memory://",
        sender="memory://?from=a@example.com",
        domain_limits={
            "google": {"domains": ["googlemail.com", "gmail.com"], "rate": "20/s;3000/h"},
            "default": {"rate": "50/s"},
        },
        api={"tokens": [TOKEN]},
    )
    mq = MailQueue.from_settings(config)
    app = create_app(config, mailqueue=mq, worker=True)
    plugin = app.plugins.get(MailQueuePlugin)
    async with mq, serve(app) as client:
        service = Service(client, mq)
        await service.login()
        page = (await client.get("/ui")).text
        assert "<tr><td>google</td><td>gmail.com, googlemail.com</td><td>20/s</td><td>100%</td></tr>" in page
        assert "<tr><td>default</td><td>every other domain</td><td>50/s</td><td>100%</td></tr>" in page
        assert plugin.sender is not None
        step = find_link(plugin.sender, DomainLimitStep)
        assert step is not None
        await step.groups["google"].limiter.throttled(0.0)  # as a 421 from Gmail does
        step.groups["google"].publish()
        page = (await client.get("/ui")).text
    assert "<tr><td>google</td><td>gmail.com, googlemail.com</td><td>10/s</td><td>50%</td></tr>" in page
    assert "<tr><td>default</td><td>every other domain</td><td>50/s</td><td>100%</td></tr>" in page


async def test_without_domain_limits_the_overview_has_no_groups_table(service: Service) -> None:
    await service.login()
    assert "domain-groups" not in (await service.client.get("/ui")).text


async def test_the_list_counts_up_to_a_thousand(service: Service) -> None:
    await service.login()
    for i in range(1000):
        await service.mail(subject=f"Many {i}")
    page = await service.client.get("/ui/messages")
    assert "1,000 mails match" in page.text
    assert "More than" not in page.text
    await service.mail(subject="One more")
    assert "More than 1,000 mails match" in (await service.client.get("/ui/messages")).text
    # "Many 1", "Many 10".."Many 19", "Many 100".."Many 199": 111 mails
    assert "111 mails match" in (await service.client.get("/ui/messages?subject=Many+1")).text


async def test_resend_refuses_mails_in_flight_or_deleted(service: Service) -> None:
    await service.login()
    queued = await service.mail()
    csrf = await service.csrf()
    answer = await service.client.post(f"/ui/messages/{queued}/resend", data={"csrf_token": csrf})
    assert answer.status_code == 409
    assert "the worker is not done with it" in answer.text
    assert (await service.mq.status(queued)).status is Status.QUEUED  # type: ignore[union-attr]
    await service.finish(queued)
    assert await service.mq.store.update(queued, RecordUpdate(is_deleted=True))
    answer = await service.client.post(f"/ui/messages/{queued}/resend", data={"csrf_token": csrf})
    assert answer.status_code == 409
    assert (await service.mq.status(queued)).status is Status.FAILED  # type: ignore[union-attr]


def _actions(action: str) -> float:
    return REGISTRY.get_sample_value("mailqueue_ui_actions_total", {"action": action}) or 0.0


async def test_actions_are_logged_and_counted(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mailqueue.ui")
    await service.login()
    one = await service.mail(to="one@example.com")
    many = [await service.mail(to=f"bulk{i}@example.com", subject="Promo") for i in range(3)]
    for mail_id in (one, *many):
        await service.finish(mail_id)
    before = {a: _actions(a) for a in ("resend", "resend_selection", "delete")}
    csrf = await service.csrf()

    answer = await service.client.post(f"/ui/messages/{one}/resend", data={"csrf_token": csrf})
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/ui/messages/{one}?done=resent"
    assert (await service.mq.status(one)).status is Status.QUEUED  # type: ignore[union-attr]
    assert f"dashboard action=resend operator='Carol (token #1)' ids={one} was=failed" in caplog.text

    confirm = await service.client.get("/ui/resend", params={"subject": "promo"})
    assert "<strong>3</strong> mails will be queued again" in confirm.text
    answer = await service.client.post(
        "/ui/resend", data={"csrf_token": csrf, "subject": "promo", "code": "550"}
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/messages?subject=promo&code=550&resent=3"
    for mail_id in many:
        assert (await service.mq.status(mail_id)).status is Status.QUEUED  # type: ignore[union-attr]
    assert "dashboard action=resend_selection operator='Carol (token #1)' count=3" in caplog.text
    assert "Queued again: 3 mails." in (await service.client.get(answer.headers["location"])).text

    answer = await service.client.post(f"/ui/messages/{one}/delete", data={"csrf_token": csrf})
    assert answer.status_code == 303
    assert f"dashboard action=delete operator='Carol (token #1)' ids={one}" in caplog.text
    assert _actions("resend") == before["resend"] + 1
    assert _actions("resend_selection") == before["resend_selection"] + 3
    assert _actions("delete") == before["delete"] + 1
    # a deleted mail leaves the list (unless asked for)
    listed = await service.client.get("/ui/messages")
    assert one not in listed.text
    assert one in (await service.client.get("/ui/messages?deleted=1")).text
    # and a re-send of a list that shows deleted mails leaves them out, in its count too
    await service.finish(one, Status.DEAD)
    confirm = await service.client.get("/ui/resend", params={"deleted": "1", "status": "dead"})
    assert "No mail of this selection can be re-sent." in confirm.text
    form = {"csrf_token": csrf, "deleted": "1", "status": "dead"}
    answer = await service.client.post("/ui/resend", data=form)
    assert answer.headers["location"].endswith("resent=0")
    assert (await service.mq.status(one)).status is Status.DEAD  # type: ignore[union-attr]


def test_filters_read_and_written_back() -> None:
    values = {
        "status": ["dead", "failed", "failed", ""],
        "recipient": [" Ann@Example "],
        "subject": ["Invoice"],
        "since": ["2026-11-01T08:00"],
        "until": ["2026-11-02T00:00:00+01:00"],
        "code": ["550"],
        "order": ["oldest"],
        "deleted": ["1"],
    }
    filters = Filters.parse(lambda name: values.get(name, []))
    assert filters.errors == ()
    assert [str(s) for s in filters.statuses] == ["failed", "dead"]
    assert filters.recipient == "Ann@Example"
    assert filters.since is not None
    assert filters.since.isoformat() == "2026-11-01T08:00:00+00:00"
    assert filters.until is not None
    assert filters.until.isoformat() == "2026-11-01T23:00:00+00:00"
    again = dict[str, list[str]]()
    for key, value in filters.params():
        again.setdefault(key, []).append(value)
    assert Filters.parse(lambda name: again.get(name, [])) == filters
    query = filters.query(limit=10)
    assert query.statuses == frozenset({Status.FAILED, Status.DEAD})
    assert query.code == 550
    assert query.order == "oldest"
    assert query.include_deleted
    assert filters.resend_statuses() == ((Status.FAILED, Status.DEAD), ())
    none = Filters.parse(lambda name: [])
    assert none.resend_statuses() == ((Status.FAILED, Status.DEAD), ())
    mixed = Filters.parse(lambda name: ["queued", "unknown"] if name == "status" else [])
    assert mixed.resend_statuses() == ((Status.UNKNOWN,), (Status.QUEUED,))
    bad = Filters.parse(lambda name: {"until": ["2026-01-01"], "since": ["2026-02-01"]}.get(name, []))
    assert bad.errors == ("to: must not be before from",)


# --- the commands -----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_commands_say_whether_the_dashboard_is_on(tmp_path: Path) -> None:
    # `mailqueue serve` with no settings at all: the embedded default, open to loopback
    port = free_port()
    env = {"MAILQUEUE_QUEUE": "sql://?poll=0.05", "MAILQUEUE_LOG_LEVEL": "INFO"}
    async with mailqueue(tmp_path, "serve", "--port", str(port), env=env, log=tmp_path / "serve.log") as proc:
        base = f"http://127.0.0.1:{port}"
        await wait_ready(proc, base)
        async with httpx.AsyncClient(base_url=base) as client:
            page = await client.get("/ui")
            assert page.status_code == 200, page.text
            assert "local (127.0.0.1)" in page.text
        await proc.stop()
    assert "operator dashboard on at /ui (no api.tokens: open to this machine (loopback) only)" in (
        await proc.output()
    )
    # `mailqueue api` in two processes, switched off: each process says so, and /ui is not there
    port = free_port()
    env = {**env, "MAILQUEUE_API__UI": "false", "MAILQUEUE_API__TOKENS": json.dumps([TOKEN])}
    args = ("api", "--workers", "2", "--port", str(port))
    async with mailqueue(tmp_path, *args, env=env, log=tmp_path / "api.log") as proc:
        base = f"http://127.0.0.1:{port}"
        await wait_ready(proc, base)
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/ui/login")).status_code == 404
        await proc.stop()
    assert (await proc.output()).count("operator dashboard off: api.ui is false") == 2
