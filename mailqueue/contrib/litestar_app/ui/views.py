"""The dashboard's pages and actions (see :mod:`mailqueue.contrib.litestar_app.ui`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Final, Literal
from urllib.parse import quote, urlencode

from litestar import Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Stream, Template
from litestar.types import Guard
from prometheus_client import Counter

from mailqueue import (
    AttachmentNotFoundError,
    AttachmentRef,
    BackendError,
    MailQueue,
    MailQueueError,
    MailRecord,
    Status,
    StoreError,
)
from mailqueue.contrib.litestar_app.plugin import MailQueuePlugin
from mailqueue.contrib.litestar_app.ui.chart import Chart, build_chart, window_start
from mailqueue.contrib.litestar_app.ui.filters import Filters, MultiValues, is_mail_id
from mailqueue.contrib.litestar_app.ui.session import CSRF_FIELD, Session, SessionManager
from mailqueue.records import utcnow
from mailqueue.reports import oldest_waiting, queue_depth
from mailqueue.sending.throttle import classify_reply

__all__ = ["UI_ACTIONS", "LoginRequired", "UIRequest", "handlers"]

logger = logging.getLogger("mailqueue.ui")

#: Mails changed from the dashboard, by action (``resend``, ``resend_selection``, ``delete``).
UI_ACTIONS = Counter(
    "mailqueue_ui_actions",
    "Mails changed from the dashboard, by action (resend, resend_selection, delete).",
    ["action"],
)
for _action in ("resend", "resend_selection", "delete"):
    UI_ACTIONS.labels(action=_action)

#: Mails per page of the list.
PAGE_SIZE: Final = 50
#: Most mails re-sent in one go from the dashboard (and counted for its confirmation).
COUNT_CAP: Final = 10_000
#: Most mails the list counts: beyond, it says "more than" (counting stops early, so a common
#: filter on millions of rows costs a thousand index entries, not all of them).
LIST_COUNT_CAP: Final = 1_000
#: Seconds a backend may take to answer a dashboard read (a last resort: set the
#: store's own ``read_timeout``; a substring filter on millions of rows may scan them all).
READ_TIMEOUT: Final = 60.0
#: Pause after a wrong token, to slow down guessing.
LOGIN_FAILURE_DELAY: Final = 0.5

PAGE_CSP: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; frame-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PREVIEW_CSP: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox; frame-ancestors 'self'"
)
_COMMON_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
PAGE_HEADERS: Final = {**_COMMON_HEADERS, "Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY"}

_STATE_KEY: Final = "mailqueue_ui"
_WINDOWS: Final = {
    "hour": (timedelta(minutes=1), 60, "%H:%M", "per minute, last hour"),
    "day": (timedelta(hours=1), 24, "%H:00", "per hour, last 24 hours"),
}
_FLASH: Final = {
    "resent": "Queued again: the worker will send it shortly.",
    "deleted": "Marked as deleted: it is hidden from lists and re-sends.",
}


class LoginRequired(NotAuthorizedException):
    """No valid session or bearer token: pages redirect to the login form."""


@dataclass(frozen=True, slots=True)
class UIRequest:
    """What the guard learnt about a request: the session, who it is, how to sign cookies."""

    sessions: SessionManager
    session: Session
    operator: str | None
    base: str
    secure: bool


def make_guard(sessions: SessionManager) -> Guard:
    """The guard of every dashboard route: reads the session and checks who is asking.

    Raises (from the guard):
        PermissionDeniedException: no token is configured and the client is not on loopback.
        LoginRequired: a token is configured and the request has no valid session or bearer token
            (routes marked ``ui_public``, the login form, are let through).
    """

    def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        session = sessions.load(connection)
        base = connection.scope.get("root_path", "").rstrip("/") + "/ui"
        secure = connection.url.scheme in ("https", "wss")
        if sessions.open:
            if not sessions.client_is_local(connection):
                raise PermissionDeniedException(
                    "The dashboard has no token configured, so it only answers this machine (loopback). "
                    "Set api.tokens to use it from elsewhere."
                )
            client = connection.client
            operator: str | None = f"local ({client.host})" if client is not None else "local"
        else:
            operator = sessions.bearer_operator(connection) or session.operator
        connection.state[_STATE_KEY] = UIRequest(sessions, session, operator, base, secure)
        if operator is None and not handler.opt.get("ui_public"):
            raise LoginRequired("Log in with an API token.")

    return guard


def _ui(request: Request[Any, Any, Any]) -> UIRequest:
    ui: UIRequest = request.state[_STATE_KEY]
    return ui


def _cookies(ui: UIRequest, session: Session | None = None) -> list[Cookie]:
    session = session or ui.session
    return [ui.sessions.cookie(session, secure=ui.secure, path=ui.base)] if session.fresh else []


def page(
    request: Request[Any, Any, Any],
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
    session: Session | None = None,
) -> Template:
    """Render a dashboard page, setting the session cookie if it is new."""
    ui = _ui(request)
    session = session or ui.session
    return Template(
        template_name=template,
        context={
            "base": ui.base,
            "csrf": session.csrf,
            "csrf_field": CSRF_FIELD,
            "operator": ui.operator,
            "open_mode": ui.sessions.open,
            "section": "",
            "flash": None,
            **context,
        },
        status_code=status,
        headers=PAGE_HEADERS,
        cookies=_cookies(ui, session),
        media_type="text/html",
    )


def _redirect(ui: UIRequest, path: str, params: Sequence[tuple[str, str]] = (), **kw: Any) -> Redirect:
    query = f"?{urlencode(list(params))}" if params else ""
    return Redirect(f"{ui.base}{path}{query}", status_code=303, headers=_COMMON_HEADERS, **kw)


async def _form(request: Request[Any, Any, Any]) -> Any:
    """The POSTed form, once its CSRF token is checked.

    Raises:
        PermissionDeniedException: the token is missing or not this session's (403, nothing changed).
    """
    ui = _ui(request)
    form = await request.form()
    presented = form.get(CSRF_FIELD)
    if not ui.sessions.csrf_ok(ui.session, presented if isinstance(presented, str) else None):
        raise PermissionDeniedException(
            "The form's security token is missing or out of date (CSRF check): reload the page and try again."
        )
    return form


def _values(data: Any) -> MultiValues:
    """Read a query string or form (Litestar's multi-dicts) as :data:`MultiValues`."""

    def values(name: str) -> list[str]:
        return [v for v in data.getall(name, []) if isinstance(v, str)]

    return values


def _load_id(mail_id: str) -> str:
    if not is_mail_id(mail_id):
        raise NotFoundException(f"No mail with id {mail_id[:70]!r}.")
    return mail_id


async def _record(mailqueue: MailQueue, mail_id: str) -> MailRecord:
    record = await asyncio.wait_for(mailqueue.status(_load_id(mail_id)), READ_TIMEOUT)
    if record is None:
        raise NotFoundException(f"No mail with id {mail_id!r}.")
    return record


# --- login ------------------------------------------------------------------------------------------


def _safe_next(ui: UIRequest, target: str | None) -> str:
    """Where to go after login: a dashboard path of this site, nothing else."""
    if target and target.startswith(ui.base + "/") and "//" not in target and "\\" not in target:
        return target
    if target == ui.base:
        return target
    return ui.base


@get("/login", opt={"ui_public": True}, name="ui:login")
async def login_form(request: Request[Any, Any, Any]) -> Response[Any]:
    """The login form (or straight on, if already logged in)."""
    ui = _ui(request)
    next_ = request.query_params.get("next")
    if ui.operator is not None:
        return Redirect(_safe_next(ui, next_), status_code=303, headers=_COMMON_HEADERS)
    return page(request, "login.html", {"next": _safe_next(ui, next_), "error": None})


@post("/login", opt={"ui_public": True}, status_code=303)
async def login(request: Request[Any, Any, Any]) -> Response[Any]:
    """Check the token; on success start a session and go on."""
    ui = _ui(request)
    form = await _form(request)
    target = _safe_next(ui, form.get("next"))
    token = form.get("token")
    index = ui.sessions.token_index(token) if isinstance(token, str) and token.strip() else None
    if index is None:
        await asyncio.sleep(LOGIN_FAILURE_DELAY)
        logger.warning("dashboard login refused: wrong or missing token (client %s)", _client(request))
        return page(
            request,
            "login.html",
            {"next": target, "error": "That token is not one of api.tokens."},
            status=401,
        )
    name = form.get("name")
    label = _operator_name(name if isinstance(name, str) else "")
    operator = f"{label} (token #{index})" if label else f"token #{index}"
    session = ui.sessions.new(operator)
    logger.info("dashboard login operator=%r client=%s", operator, _client(request))
    return Redirect(target, status_code=303, headers=_COMMON_HEADERS, cookies=_cookies(ui, session))


@post("/logout", status_code=303)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    """End the session (the cookie is removed; the token stays valid)."""
    ui = _ui(request)
    await _form(request)
    logger.info("dashboard logout operator=%r", ui.operator)
    return _redirect(ui, "/login", cookies=[ui.sessions.expired_cookie(secure=ui.secure, path=ui.base)])


def _operator_name(raw: str) -> str:
    kept = "".join(c for c in raw.strip() if c.isalnum() or c in " ._@-")
    return kept[:64].strip()


def _client(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client is not None else "?"


# --- overview ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountView:
    """One SMTP account's state, as this process's worker sees it."""

    name: str
    circuit: str
    rate: str


def _accounts(plugin: MailQueuePlugin) -> tuple[list[AccountView] | None, str]:
    from mailqueue.sending.accounts import AccountRouter
    from mailqueue.sending.pipeline import find_link
    from mailqueue.sending.throttle import CircuitState

    if plugin.sender is None:
        return None, (
            "This process runs no worker. Each worker keeps the state of its accounts and exports it "
            "on its metrics endpoint (mailqueue_account_circuit_state, mailqueue_account_rate_per_second)."
        )
    sender = find_link(plugin.sender, AccountRouter)
    if sender is None:
        return None, "One sender without per-account limits (see senders and worker.rate_store)."
    rows = [
        AccountView(
            name=account.name,
            circuit=CircuitState(account.breaker.state).name.lower().replace("_", "-"),
            rate="-" if account.factor is None else f"{account.factor:.0%}",
        )
        for account in sender.accounts
    ]
    return rows, "As seen by the worker of this process."


@dataclass(frozen=True, slots=True)
class DomainGroupView:
    """One recipient-domain group's pace, as this process's worker sees it."""

    name: str
    domains: str
    rate: str
    factor: str


def _domain_groups(plugin: MailQueuePlugin) -> list[DomainGroupView] | None:
    from mailqueue.sending.domains import DomainLimitStep
    from mailqueue.sending.pipeline import find_link

    step = None if plugin.sender is None else find_link(plugin.sender, DomainLimitStep)
    if step is None:
        return None
    listed: dict[str, list[str]] = {}
    for domain, name in step.domains.items():
        listed.setdefault(name, []).append(domain)
    rows = []
    for name, group in step.groups.items():
        domains = ", ".join(sorted(listed.get(name, [])))
        if name == step.default:
            domains = f"{domains}, every other domain" if domains else "every other domain"
        rate = group.rate
        rows.append(
            DomainGroupView(
                name=name,
                domains=domains,
                rate="unlimited" if rate is None else f"{rate:g}/s",
                factor=f"{group.factor:.0%}",
            )
        )
    return rows


@get("/", name="ui:overview")
async def overview(
    request: Request[Any, Any, Any],
    mailqueue: NamedDependency[MailQueue],
    mailqueue_plugin: NamedDependency[MailQueuePlugin],
    window: FromQuery[Literal["hour", "day"]] = "hour",
) -> Template:
    """Counts by status, the activity chart, the queue, the accounts and the recipient-domain groups."""
    now = utcnow()
    bucket, number, label, caption = _WINDOWS[window]
    since = window_start(now, bucket, number)

    async def counts() -> dict[str, int] | None:
        by_status = await mailqueue.count_by_status()
        return None if by_status is None else {str(s): n for s, n in by_status.items()}

    async def chart() -> Chart | None:
        buckets = await mailqueue.activity(since=since, bucket=bucket)
        if buckets is None:
            return None
        return build_chart(buckets, since=since, bucket=bucket, count=number, label=label)

    async def depth() -> int | None:
        queued, error = await queue_depth(mailqueue.queue)
        if error is not None:
            logger.warning("dashboard: the queue depth is unavailable: %s", error)
        return queued

    # side by side: the page takes as long as the slowest of them
    by_status, activity, queued, oldest = await asyncio.wait_for(
        asyncio.gather(counts(), chart(), depth(), oldest_waiting(mailqueue)), READ_TIMEOUT
    )
    oldest_age = (now - oldest.created_at).total_seconds() if oldest is not None else None
    accounts, accounts_note = _accounts(mailqueue_plugin)
    domain_groups = _domain_groups(mailqueue_plugin)
    return page(
        request,
        "overview.html",
        {
            "section": "overview",
            "counts": by_status,
            "statuses": [str(s) for s in Status],
            "chart": activity,
            "window": window,
            "caption": caption,
            "depth": queued,
            "oldest_age": oldest_age,
            "oldest_id": oldest.id if oldest is not None else None,
            "accounts": accounts,
            "accounts_note": accounts_note,
            "domain_groups": domain_groups,
            "worker_running": mailqueue_plugin.worker_running,
            "now": now,
        },
    )


# --- messages ----------------------------------------------------------------------------------------


async def _page_of(
    mailqueue: MailQueue, filters: Filters, before: str | None, after: str | None
) -> tuple[list[MailRecord], bool, bool]:
    """One page of the list and whether there are older / newer mails (keyset pagination)."""
    newest_first = filters.order == "newest"
    if after is not None:
        found = await mailqueue.find(filters.query(limit=PAGE_SIZE + 1, after_id=after, order="oldest"))
        more, rows = len(found) > PAGE_SIZE, found[:PAGE_SIZE]
        if newest_first:
            rows.reverse()
        return rows, True, more
    if before is not None:
        found = await mailqueue.find(filters.query(limit=PAGE_SIZE + 1, before_id=before, order="newest"))
        more, rows = len(found) > PAGE_SIZE, found[:PAGE_SIZE]
        if not newest_first:
            rows.reverse()
        return rows, more, True
    found = await mailqueue.find(filters.query(limit=PAGE_SIZE + 1))
    more, rows = len(found) > PAGE_SIZE, found[:PAGE_SIZE]
    return (rows, more, False) if newest_first else (rows, False, more)


def _cursor(value: str | None) -> str | None:
    return value if value and is_mail_id(value) else None


@get("/messages", name="ui:messages")
async def messages(request: Request[Any, Any, Any], mailqueue: NamedDependency[MailQueue]) -> Template:
    """The filtered, paginated list of mails."""
    filters = Filters.parse(_values(request.query_params))
    before = _cursor(request.query_params.get("before"))
    after = None if before else _cursor(request.query_params.get("after"))

    async def count() -> int | None:
        if filters.errors:
            return None
        return await mailqueue.count(filters.query(limit=1), cap=LIST_COUNT_CAP + 1)

    # side by side: a filter the indexes cannot serve costs one scan's time, not two
    (rows, older, newer), total = await asyncio.wait_for(
        asyncio.gather(_page_of(mailqueue, filters, before, after), count()), READ_TIMEOUT
    )
    ids = [r.id for r in rows]
    links: dict[str, str | None] = {"older": None, "newer": None}
    if ids and older:
        links["older"] = urlencode(filters.params(before=min(ids)))
    if ids and newer:
        links["newer"] = urlencode(filters.params(after=max(ids)))
    resent = request.query_params.get("resent")
    flash = None
    if resent is not None and resent.isdigit():
        flash = f"Queued again: {int(resent):,} mail{'s' if int(resent) != 1 else ''}."
    return page(
        request,
        "messages.html",
        {
            "section": "messages",
            "rows": rows,
            "filters": filters,
            "statuses": [str(s) for s in Status],
            "links": links,
            "total": total,
            "cap": LIST_COUNT_CAP,
            "filter_query": urlencode(filters.params()),
            "flash": flash,
        },
        status=400 if filters.errors else 200,
    )


@dataclass(frozen=True, slots=True)
class AttachmentView:
    """An attachment on the detail page."""

    index: int
    filename: str
    content_type: str
    size: int
    stored: bool | None


async def _is_stored(mailqueue: MailQueue, ref: AttachmentRef) -> bool | None:
    try:
        return await mailqueue.has_attachment(ref)
    except MailQueueError:
        return None


def _error_class(outcome: str, code: int | None, reply: str) -> str | None:
    """What a failed attempt says about the account (throttle, connection, auth, quota), if anything."""
    if outcome in ("sent", "skipped"):
        return None
    kind = str(classify_reply(code, reply))
    return None if kind in ("other", "recipient") else kind


@get("/messages/{mail_id:str}", name="ui:message")
async def message(
    request: Request[Any, Any, Any], mailqueue: NamedDependency[MailQueue], mail_id: FromPath[str]
) -> Template:
    """One mail: envelope, recipients, attempts, attachments, body preview, actions."""
    record = await _record(mailqueue, mail_id)
    attachments = [
        AttachmentView(
            index=i,
            filename=ref.filename,
            content_type=ref.content_type,
            size=ref.size,
            stored=await _is_stored(mailqueue, ref),
        )
        for i, ref in enumerate(record.mail.attachments)
    ]
    attempts = [
        {
            "attempt": attempt,
            "error_class": _error_class(attempt.outcome, attempt.code, attempt.reply),
        }
        for attempt in record.history
    ]
    done = request.query_params.get("done")
    return page(
        request,
        "message.html",
        {
            "section": "messages",
            "record": record,
            "mail": record.mail,
            "attempts": attempts,
            "attachments": attachments,
            "can_resend": record.status.final and not record.is_deleted,
            "flash": _FLASH.get(done or ""),
        },
    )


@get("/messages/{mail_id:str}/preview", name="ui:preview")
async def preview(mailqueue: NamedDependency[MailQueue], mail_id: FromPath[str]) -> Response[str]:
    """The mail's HTML body, for a sandboxed iframe: no script, no remote loads (CSP)."""
    record = await _record(mailqueue, mail_id)
    return Response(
        record.mail.html,
        media_type="text/html; charset=utf-8",
        headers={**_COMMON_HEADERS, "Content-Security-Policy": PREVIEW_CSP, "Referrer-Policy": "no-referrer"},
    )


def _disposition(filename: str) -> str:
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in filename)
    return f"attachment; filename=\"{fallback or 'attachment'}\"; filename*=UTF-8''{quote(filename, safe='')}"


@get("/messages/{mail_id:str}/attachments/{index:int}", name="ui:attachment")
async def attachment(
    mailqueue: NamedDependency[MailQueue], mail_id: FromPath[str], index: FromPath[int]
) -> Stream:
    """Download one attachment, if it is still in the attachment store."""
    record = await _record(mailqueue, mail_id)
    refs = record.mail.attachments
    if not 0 <= index < len(refs):
        raise NotFoundException("No such attachment.")
    ref = refs[index]
    try:
        chunks = await mailqueue.open_attachment(ref)
    except AttachmentNotFoundError:
        raise NotFoundException(
            f"{ref.filename!r} is no longer in the attachment store (deleted after sending or by retention)."
        ) from None
    return Stream(
        chunks,
        media_type="application/octet-stream",
        headers={
            **_COMMON_HEADERS,
            "Content-Disposition": _disposition(ref.filename),
            "Content-Security-Policy": "default-src 'none'; sandbox",
        },
    )


# --- actions -----------------------------------------------------------------------------------------


@post("/messages/{mail_id:str}/resend", status_code=303)
async def resend_one(
    request: Request[Any, Any, Any], mailqueue: NamedDependency[MailQueue], mail_id: FromPath[str]
) -> Redirect:
    """Queue one finished mail again (``MailQueue.resend``, as ``mailqueue resend --id``)."""
    ui = _ui(request)
    await _form(request)
    record = await _record(mailqueue, mail_id)
    if record.is_deleted:
        raise HTTPException(status_code=409, detail="This mail is marked as deleted; it is not re-sent.")
    if not record.status.final:
        raise HTTPException(
            status_code=409,
            detail=f"This mail is {record.status}: the worker is not done with it, so it is not re-sent.",
        )
    try:
        selected = await mailqueue.resend(ids=[record.id])
    except StoreError as exc:
        raise HTTPException(status_code=409, detail=f"Not re-sent: {exc}") from None
    if not selected:
        raise HTTPException(status_code=409, detail="Not re-sent: the mail changed meanwhile.")
    UI_ACTIONS.labels(action="resend").inc()
    logger.info("dashboard action=resend operator=%r ids=%s was=%s", ui.operator, record.id, record.status)
    return _redirect(ui, f"/messages/{record.id}", [("done", "resent")])


@post("/messages/{mail_id:str}/delete", status_code=303)
async def delete_one(
    request: Request[Any, Any, Any], mailqueue: NamedDependency[MailQueue], mail_id: FromPath[str]
) -> Redirect:
    """Mark a mail ``is_deleted`` (hidden from lists, status and re-sends; the row stays)."""
    ui = _ui(request)
    await _form(request)
    record = await _record(mailqueue, mail_id)
    if not record.is_deleted:
        changed = await mailqueue.delete(record.id)
        if not changed:
            raise NotFoundException(f"No mail with id {mail_id!r}.")
        UI_ACTIONS.labels(action="delete").inc()
        logger.info("dashboard action=delete operator=%r ids=%s", ui.operator, record.id)
    return _redirect(ui, f"/messages/{record.id}", [("done", "deleted")])


async def _selection(
    mailqueue: MailQueue, filters: Filters
) -> tuple[tuple[Status, ...], tuple[Status, ...], int]:
    if not mailqueue.can_count:
        raise HTTPException(
            status_code=501,
            detail="This store cannot count a selection; use `mailqueue resend` on the command line.",
        )
    picked, left = filters.resend_statuses()
    if not picked:
        return picked, left, 0
    # deleted mails are never re-sent, whatever the list shows
    query = replace(filters.query(limit=1, statuses=picked), include_deleted=False)
    count = await asyncio.wait_for(mailqueue.count(query, cap=COUNT_CAP + 1), READ_TIMEOUT)
    return picked, left, count or 0


@get("/resend", name="ui:resend-confirm")
async def resend_confirm(request: Request[Any, Any, Any], mailqueue: NamedDependency[MailQueue]) -> Template:
    """How many mails a re-send of this selection would queue again; the button to do it."""
    filters = Filters.parse(_values(request.query_params))
    if filters.errors:
        raise HTTPException(status_code=400, detail="; ".join(filters.errors))
    picked, left, count = await _selection(mailqueue, filters)
    return page(
        request,
        "resend.html",
        {
            "section": "messages",
            "filters": filters,
            "picked": [str(s) for s in picked],
            "left": [str(s) for s in left],
            "count": count,
            "cap": COUNT_CAP,
            "hidden": filters.params(),
            "filter_query": urlencode(filters.params()),
        },
    )


@post("/resend", status_code=303)
async def resend_selection(
    request: Request[Any, Any, Any], mailqueue: NamedDependency[MailQueue]
) -> Redirect:
    """Queue again every finished mail of the selection (``MailQueue.resend``, as ``mailqueue resend``)."""
    ui = _ui(request)
    form = await _form(request)
    filters = Filters.parse(_values(form))
    if filters.errors:
        raise HTTPException(status_code=400, detail="; ".join(filters.errors))
    picked, _left, count = await _selection(mailqueue, filters)
    if count > COUNT_CAP:
        raise HTTPException(
            status_code=400,
            detail=f"More than {COUNT_CAP:,} mails match: narrow the selection, or use `mailqueue resend`.",
        )
    selected: list[MailRecord] = []
    if picked:
        try:
            selected = await mailqueue.resend(
                statuses=picked,
                since=filters.since,
                until=filters.until,
                recipient=filters.recipient or None,
                subject=filters.subject or None,
                code=filters.code,
            )
        except (StoreError, BackendError) as exc:
            logger.error("dashboard action=resend_selection operator=%r failed: %s", ui.operator, exc)
            raise HTTPException(
                status_code=503, detail=f"The re-send stopped part way: {exc}. Check the list and try again."
            ) from None
    UI_ACTIONS.labels(action="resend_selection").inc(len(selected))
    logger.info(
        "dashboard action=resend_selection operator=%r count=%d statuses=%s filters=%s ids=%s",
        ui.operator,
        len(selected),
        ",".join(picked),
        urlencode(filters.params()),
        ",".join(r.id for r in selected[:100]) + (",..." if len(selected) > 100 else ""),
    )
    return _redirect(ui, "/messages", filters.params(resent=str(len(selected))))


handlers = [
    login_form,
    login,
    logout,
    overview,
    messages,
    message,
    preview,
    attachment,
    resend_one,
    delete_one,
    resend_confirm,
    resend_selection,
]
