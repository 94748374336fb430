"""The operator dashboard: server-rendered pages at ``/ui`` inside the service.

Pages (HTML rendered by Jinja2 with autoescaping, one small stylesheet served
by the app at ``/ui/static/``, no JavaScript, no CDN):

- ``/ui``: counts by status, mails accepted/sent/failed per minute (last
  hour) or per hour (last day) as an inline SVG chart, the queue's depth and
  its oldest waiting mail, and SMTP account state when the process runs a worker;
- ``/ui/messages``: the list, filtered by status, recipient, subject, time
  and SMTP reply code, newest or oldest first, paginated by id (keyset);
- ``/ui/messages/{id}``: envelope, per-recipient outcome, attempts, remark,
  attachments (downloadable while stored), the HTML body in a sandboxed iframe
  (``/ui/messages/{id}/preview``, served with a CSP that allows no script and
  no remote load);
- actions, POST only with the session's CSRF token: re-send one mail,
  re-send a selection (after a page that says how many), mark as deleted.
  Each is logged (``mailqueue.ui``, INFO, with the operator) and counted in
  ``mailqueue_ui_actions_total``.

Access: the API's tokens (login form and session cookie, or a bearer header);
with no token, loopback clients only. :func:`ui_enabled` decides whether the
dashboard is served at all (``api.ui``).
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path
from typing import Any

from litestar import Request, Response, Router
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import HTTPException
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ControllerRouterHandler

from mailqueue import MailQueueError, Settings
from mailqueue.contrib.litestar_app.auth import configured_tokens, is_loopback
from mailqueue.contrib.litestar_app.ui.session import SessionManager
from mailqueue.contrib.litestar_app.ui.suppressions import handlers as suppression_handlers
from mailqueue.contrib.litestar_app.ui.views import (
    PAGE_HEADERS,
    LoginRequired,
    UIRequest,
    handlers,
    make_guard,
    page,
)

__all__ = ["template_config", "ui_enabled", "ui_handlers"]

logger = logging.getLogger("mailqueue.ui")

_HERE = Path(str(files(__package__)))
#: Largest form a dashboard POST may send.
MAX_FORM_BYTES = 64 * 1024


def ui_enabled(settings: Settings, host: str | None = None) -> tuple[bool, str]:
    """Whether the dashboard is served, and why (for the log).

    ``api.ui`` true or false decides; unset, the dashboard is on when a token
    is configured or the API listens on loopback only (``host``, default
    ``api.host``), and off otherwise.
    """
    host = settings.api.host if host is None else host
    choice = settings.api.ui
    if choice is False:
        return False, "api.ui is false"
    if choice is True:
        return True, "api.ui is true"
    if configured_tokens(settings.api.tokens):
        return True, "log in with one of api.tokens"
    if is_loopback(host):
        return True, "no api.tokens: open to this machine (loopback) only"
    return False, (
        f"no api.tokens and the API listens on {host!r}, beyond loopback; set api.tokens "
        "(or api.ui: true) to turn it on"
    )


def template_config() -> TemplateConfig[Any]:
    """The Jinja2 engine of the dashboard's templates (autoescaping on, undefined names an error)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
    from litestar.plugins.jinja import JinjaTemplateEngine

    from mailqueue.contrib.litestar_app.ui import formatting

    environment = Environment(
        loader=FileSystemLoader(_HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    formatting.install(environment)
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment))


def _error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    ui: UIRequest | None = request.state.get("mailqueue_ui")
    if isinstance(exc, LoginRequired) and ui is not None:
        if request.method in ("GET", "HEAD"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return Redirect(
                f"{ui.base}/login?next={_quote(target)}",
                status_code=303,
                headers={"Cache-Control": "no-store"},
            )
        status, message = 401, "Your session has ended: log in again."
    elif isinstance(exc, HTTPException):
        status, message = exc.status_code, str(exc.detail)
    elif isinstance(exc, MailQueueError | TimeoutError):
        logger.error("dashboard: a backend failed on %s %s: %s", request.method, request.url.path, exc)
        status, message = 503, "The store or the queue did not answer. Try again in a moment."
    else:
        logger.error("dashboard: unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        status, message = 500, "Something went wrong; the error is in the service's log."
    if ui is None:
        # the guard did not get far (e.g. a client beyond loopback): a page without session or navigation
        body = f"<!doctype html><title>{status}</title><p>{_escape(message)}</p>"
        return Response(body, status_code=status, media_type="text/html", headers=PAGE_HEADERS)
    return page(request, "error.html", {"status": status, "message": message}, status=status)


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="/")


def _escape(text: str) -> str:
    from html import escape

    return escape(text, quote=True)


def ui_handlers(settings: Settings) -> list[ControllerRouterHandler]:
    """The dashboard's routers: the pages under ``/ui`` and the stylesheet under ``/ui/static``."""
    sessions = SessionManager(settings)
    pages = Router(
        path="/ui",
        route_handlers=[*handlers, *suppression_handlers],
        guards=[make_guard(sessions)],
        exception_handlers={Exception: _error_page},
        include_in_schema=False,
        request_max_body_size=MAX_FORM_BYTES,
    )
    static = create_static_files_router(
        path="/ui/static",
        directories=[_HERE / "static"],
        name="ui:static",
        include_in_schema=False,
        cache_control=CacheControlHeader(max_age=3600),
    )
    return [pages, static]
