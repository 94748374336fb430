"""The suppression list over HTTP: ``GET``/``POST /api/suppressions``, ``DELETE
/api/suppressions/{address}``.

Same tokens and envelope as the rest of ``/api``. Every handler goes through
:attr:`MailQueue.suppressions <mailqueue.MailQueue.suppressions>` (the library's
rules: normalised addresses, known reasons, an expiry in the future); bad
input answers 400 naming the field and changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from litestar import Request, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, QueryParameter

from mailqueue import (
    BackendError,
    ConfigurationError,
    MailQueue,
    Suppression,
    SuppressionQuery,
    SuppressionReason,
)
from mailqueue.contrib.litestar_app.routes import ApiError, _loads_object, invalid, missing, unavailable
from mailqueue.contrib.litestar_app.schemas import ErrorReply
from mailqueue.suppression import as_utc, make_entry, normalize_address

__all__ = [
    "PAGE_SIZE",
    "Removed",
    "RemovedReply",
    "SuppressionList",
    "SuppressionListReply",
    "SuppressionReply",
    "SuppressionView",
    "add_suppression",
    "list_suppressions",
    "remove_suppression",
]

logger = logging.getLogger("mailqueue.api")

#: Entries per page of ``GET /api/suppressions``.
PAGE_SIZE = 100
#: Longest address filter, in characters.
MAX_FILTER = 254


@dataclass(frozen=True, slots=True)
class SuppressionView:
    """One entry: the normalised address, why, the mail and SMTP/DSN text that caused it (if
    any), when it was added and when it expires (``null``: never)."""

    address: str
    reason: str
    mail_id: str | None
    text: str
    created_at: datetime
    expires_at: datetime | None

    @classmethod
    def of(cls, entry: Suppression) -> SuppressionView:
        """The view of a stored entry."""
        return cls(
            entry.address, entry.reason.value, entry.mail_id, entry.text, entry.created_at, entry.expires_at
        )


@dataclass(frozen=True, slots=True)
class SuppressionList:
    """One page of entries, newest first; ``total`` counts every match."""

    items: list[SuppressionView]
    total: int
    page: int
    per_page: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SuppressionListReply:
    """A page of the suppression list."""

    code: int = 200
    message: str = "success"
    data: SuppressionList


@dataclass(frozen=True, slots=True, kw_only=True)
class SuppressionReply:
    """The entry added, or removed."""

    code: int = 200
    message: str = "success"
    data: SuppressionView


@dataclass(frozen=True, slots=True)
class Removed:
    """The address taken off the list."""

    address: str
    removed: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RemovedReply:
    """The address is off the suppression list."""

    code: int = 200
    message: str = "success"
    data: Removed


_ERRORS = {
    400: "Invalid input: the message names the field and why; nothing was changed.",
    401: "Missing or wrong `Authorization: Bearer <token>`.",
    404: "The address is not on the suppression list.",
    501: "The store keeps no suppression list.",
    503: "The store could not be reached; nothing was changed (retry later).",
}


def _responses(*codes: int) -> dict[int, ResponseSpec]:
    return {
        code: ResponseSpec(data_container=ErrorReply, description=_ERRORS[code], generate_examples=False)
        for code in codes
    }


def _no_list(exc: ConfigurationError) -> ApiError:
    return ApiError(501, f"Not Implemented: {exc}")


def _store_failed(exc: BackendError, what: str) -> ApiError:
    logger.error("could not %s: %s", what, exc)
    return unavailable("the store could not be reached; try again")


def _reason(value: str | None) -> SuppressionReason | None:
    if value is None or value == "":
        return None
    try:
        return SuppressionReason(value)
    except ValueError:
        choices = ", ".join(r.value for r in SuppressionReason)
        raise invalid("reason", f"must be one of {choices}") from None


@get(
    "/suppressions",
    summary="The suppression list",
    description=(
        "Entries newest first, a page of 100. `address` filters by a case-insensitive part of the "
        "address (`@example.com` for a domain), `reason` by reason; expired entries are listed too."
    ),
    responses=_responses(400, 401, 501, 503),
    tags=["suppressions"],
)
async def list_suppressions(
    mailqueue: NamedDependency[MailQueue],
    address: FromQuery[str | None] = None,
    reason: FromQuery[str | None] = None,
    page: Annotated[int, QueryParameter(ge=1, le=100_000)] = 1,
) -> SuppressionListReply:
    """A page of the suppression list."""
    if address is not None and (len(address) > MAX_FILTER or any(ord(c) < 0x20 for c in address)):
        raise invalid("address", f"must be at most {MAX_FILTER} characters, without control characters")
    query = SuppressionQuery(
        address=address or None, reason=_reason(reason), limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
    )
    try:
        entries = await mailqueue.suppressions.list(query)
        total = await mailqueue.suppressions.count(query)
    except ConfigurationError as exc:
        raise _no_list(exc) from None
    except BackendError as exc:
        raise _store_failed(exc, "list suppressions") from None
    items = [SuppressionView.of(entry) for entry in entries]
    return SuppressionListReply(data=SuppressionList(items, total, page, PAGE_SIZE))


def _expires_at(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid("expires_at", "must be an ISO 8601 date and time (or null)")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise invalid("expires_at", "must be an ISO 8601 date and time, e.g. 2027-01-31T00:00:00Z") from None
    return as_utc(when)


@post(
    "/suppressions",
    status_code=200,
    summary="Suppress an address",
    description=(
        'JSON `{"address", "reason", "expires_at"}`: `reason` is `manual` (default), `unsubscribe`, '
        "`complaint` or `hard_bounce`; `expires_at` an ISO 8601 time in the future, or null for ever. "
        "An address already on the list gets this entry instead (the last add wins)."
    ),
    responses=_responses(400, 401, 501, 503),
    tags=["suppressions"],
)
async def add_suppression(
    request: Request[Any, Any, Any], mailqueue: NamedDependency[MailQueue]
) -> SuppressionReply:
    """Add (or replace) an entry of the suppression list."""
    data = _loads_object(await request.body())
    unknown = sorted(set(data) - {"address", "reason", "expires_at"})
    if unknown:
        raise invalid(unknown[0], "unknown field")
    address = data.get("address")
    if address is None or address == "":
        raise missing("address")
    if not isinstance(address, str):
        raise invalid("address", "must be a string")
    reason = data.get("reason") or SuppressionReason.MANUAL.value
    if not isinstance(reason, str):
        raise invalid("reason", "must be a string")
    expires_at = _expires_at(data.get("expires_at"))
    try:
        entry = make_entry(address, reason, expires_at=expires_at)
    except ValueError as exc:
        name, _, why = str(exc).partition(": ")
        raise invalid(name, why) from None
    try:
        stored = await mailqueue.suppressions.add(entry.address, entry.reason, expires_at=entry.expires_at)
    except ConfigurationError as exc:
        raise _no_list(exc) from None
    except BackendError as exc:
        raise _store_failed(exc, "add a suppression") from None
    logger.info("suppressed %s over the API (reason=%s)", stored.address, stored.reason)
    return SuppressionReply(data=SuppressionView.of(stored))


@delete(
    "/suppressions/{address:str}",
    status_code=200,
    summary="Take an address off the suppression list",
    description=(
        "Later mails to it are sent; mails that ended with it suppressed are not re-sent "
        "(`mailqueue resend` can)."
    ),
    responses=_responses(400, 401, 404, 501, 503),
    tags=["suppressions"],
)
async def remove_suppression(address: FromPath[str], mailqueue: NamedDependency[MailQueue]) -> RemovedReply:
    """Remove an entry of the suppression list."""
    try:
        normal = normalize_address(address)
    except ValueError as exc:
        raise invalid("address", str(exc)) from None
    try:
        removed = await mailqueue.suppressions.remove(normal)
    except ConfigurationError as exc:
        raise _no_list(exc) from None
    except BackendError as exc:
        raise _store_failed(exc, "remove a suppression") from None
    if not removed:
        raise ApiError(404, f"Not Found: {normal} is not on the suppression list")
    logger.info("%s taken off the suppression list over the API", normal)
    return RemovedReply(data=Removed(normal))
