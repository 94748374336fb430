"""The dashboard's suppression list page: list, search, remove (``/ui/suppressions``).

Through :attr:`MailQueue.suppressions <mailqueue.MailQueue.suppressions>`, like
the API and the CLI; the remove form carries the session's CSRF token like every
other dashboard form. Each entry caused by a mail links to that mail's page.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final
from urllib.parse import urlencode

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, NotFoundException
from litestar.response import Redirect, Template

from mailqueue import ConfigurationError, MailQueue, SuppressionQuery, SuppressionReason
from mailqueue.contrib.litestar_app.ui.views import READ_TIMEOUT, UI_ACTIONS, _form, _redirect, _ui, page
from mailqueue.records import utcnow
from mailqueue.suppression import normalize_address

__all__ = ["handlers"]

logger = logging.getLogger("mailqueue.ui")

#: Entries per page.
PAGE_SIZE: Final = 50
#: Longest search text.
MAX_SEARCH: Final = 254

UI_ACTIONS.labels(action="unsuppress")


@get("/suppressions", name="ui:suppressions")
async def suppressions(request: Request[Any, Any, Any], mailqueue: NamedDependency[MailQueue]) -> Template:
    """The suppression list, newest first, searchable by address and reason."""
    params = request.query_params
    search = (params.get("address") or "").strip()[:MAX_SEARCH]
    if any(ord(c) < 0x20 for c in search):
        search = ""
    reason_text = params.get("reason") or ""
    reason = SuppressionReason(reason_text) if reason_text in {r.value for r in SuppressionReason} else None
    try:
        number = max(1, min(int(params.get("page") or 1), 100_000))
    except ValueError:
        number = 1
    query = SuppressionQuery(
        address=search or None, reason=reason, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE
    )
    available = mailqueue.suppressions.available
    rows: list[Any] = []
    total = 0
    if available:
        rows = await asyncio.wait_for(mailqueue.suppressions.list(query), READ_TIMEOUT)
        total = await asyncio.wait_for(mailqueue.suppressions.count(query), READ_TIMEOUT)
    kept = [(k, v) for k, v in (("address", search), ("reason", reason.value if reason else "")) if v]
    links = {
        "newer": urlencode([*kept, ("page", str(number - 1))]) if number > 1 else "",
        "older": urlencode([*kept, ("page", str(number + 1))]) if number * PAGE_SIZE < total else "",
    }
    removed = params.get("removed")
    return page(
        request,
        "suppressions.html",
        {
            "section": "suppressions",
            "available": available,
            "rows": rows,
            "total": total,
            "search": search,
            "reason": reason.value if reason else "",
            "reasons": [r.value for r in SuppressionReason],
            "links": links,
            "back": urlencode([*kept, ("page", str(number))]),
            "now": utcnow(),
            "flash": f"Removed {removed} from the suppression list." if removed else None,
        },
    )


@post("/suppressions/remove", status_code=303)
async def remove(request: Request[Any, Any, Any], mailqueue: NamedDependency[MailQueue]) -> Redirect:
    """Take one address off the list (later mails to it are sent; old ones are not re-sent)."""
    ui = _ui(request)
    form = await _form(request)
    raw = form.get("address")
    try:
        address = normalize_address(raw if isinstance(raw, str) else "")
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=f"Not removed: {exc}") from None
    try:
        removed = await mailqueue.suppressions.remove(address)
    except ConfigurationError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    if not removed:
        raise NotFoundException(f"{address} is not on the suppression list.")
    UI_ACTIONS.labels(action="unsuppress").inc()
    logger.info("dashboard action=unsuppress operator=%r address=%s", ui.operator, address)
    back = form.get("back")
    params = [("removed", address)]
    if isinstance(back, str):
        from urllib.parse import parse_qsl

        params = [(k, v) for k, v in parse_qsl(back) if k in ("address", "reason", "page")] + params
    return _redirect(ui, "/suppressions", params)


handlers = [suppressions, remove]
