"""The mailqueue HTTP service as a Litestar app: :func:`create_app`.

Routes (every answer is the original's envelope ``{"code", "message", "data"}``
with the HTTP status equal to ``code``, Litestar's own errors included):

- ``POST /api/email/send``: multipart form (the original's) or JSON;
- ``GET /api/email/{id}``: a mail's state;
- ``GET /health/live``, ``GET /health/ready``: probes, never authenticated;
- ``GET /metrics``: Prometheus metrics (text format), never authenticated;
- ``GET /schema``: the OpenAPI document (``/schema/openapi.json``);
- ``/ui``: the operator dashboard (HTML, :mod:`mailqueue.contrib.litestar_app.ui`) when ``api.ui`` allows.

``/api/`` routes need ``Authorization: Bearer <token>`` when
``settings.api.tokens`` holds any token.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Litestar, Request, Response, Router
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ControllerRouterHandler

from mailqueue import MailQueue, Settings, __version__
from mailqueue.contrib.litestar_app.auth import bearer_guard, configured_tokens
from mailqueue.contrib.litestar_app.plugin import MailQueuePlugin
from mailqueue.contrib.litestar_app.routes import get_mail, live, metrics_endpoint, ready, send_route
from mailqueue.contrib.litestar_app.suppressions import add_suppression, list_suppressions, remove_suppression
from mailqueue.contrib.litestar_app.ui import template_config as ui_template_config
from mailqueue.contrib.litestar_app.ui import ui_enabled, ui_handlers

__all__ = ["create_app", "envelope_exception_handler"]

logger = logging.getLogger("mailqueue.api")

_SECURITY_SCHEME = "BearerToken"


def envelope_exception_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Answer any exception in the envelope; an unexpected one is logged and hidden behind a 500."""
    if isinstance(exc, HTTPException):
        status = exc.status_code
        message = exc.detail
        data = getattr(exc, "data", None)
        headers = dict(exc.headers or {})
    else:
        logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        status = HTTP_500_INTERNAL_SERVER_ERROR
        message = "Internal Server Error"
        data = None
        headers = {}
    return Response(
        {"code": status, "message": message, "data": data},
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def create_app(
    settings: Settings,
    *,
    mailqueue: MailQueue | None = None,
    worker: bool = False,
    host: str | None = None,
) -> Litestar:
    """Build the mailqueue HTTP service.

    Args:
        settings: backends, API limits and tokens, worker settings.
        mailqueue: a MailQueue to serve instead of one built from ``settings``
            (opened at startup if needed, left open at shutdown for its owner to close).
        worker: also run a Worker in the app's lifespan, sending through
            ``settings.sender`` (``mailqueue serve``); it is stopped gracefully on shutdown.
        host: the address the server listens on (default ``api.host``); with ``api.ui`` unset,
            the dashboard is served only if a token is configured or this is loopback.

    Returns:
        The app; serve it with any ASGI server.

    Raises:
        ConfigurationError: a backend URL cannot be used (unknown scheme, missing driver, ...).
    """
    plugin = MailQueuePlugin(settings, mailqueue=mailqueue, worker=worker)
    api = Router(
        path="/api",
        route_handlers=[
            send_route(settings.api),
            get_mail,
            list_suppressions,
            add_suppression,
            remove_suppression,
        ],
        # without tokens there is nothing to check: no guard, no per-request cost
        guards=[bearer_guard(settings.api.tokens)] if configured_tokens(settings.api.tokens) else [],
        security=[{_SECURITY_SCHEME: []}],
    )
    handlers: list[ControllerRouterHandler] = [api, live, ready, metrics_endpoint]
    template_config = None
    ui_on, why = ui_enabled(settings, host)
    if ui_on:
        handlers.extend(ui_handlers(settings))
        template_config = ui_template_config()
        logger.info("operator dashboard on at /ui (%s)", why)
    else:
        logger.info("operator dashboard off: %s", why)
    return Litestar(
        route_handlers=handlers,
        template_config=template_config,
        plugins=[plugin],
        exception_handlers={Exception: envelope_exception_handler},
        openapi_config=OpenAPIConfig(
            title="mailqueue",
            version=__version__,
            description="Queue e-mail durably and deliver it over SMTP; drop-in for the original Go service.",
            components=Components(
                security_schemes={
                    _SECURITY_SCHEME: SecurityScheme(
                        type="http", scheme="bearer", description="One of the tokens in api.tokens."
                    )
                }
            ),
        ),
        # logging is the host process's business (the CLI configures it)
        logging_config=None,
    )
