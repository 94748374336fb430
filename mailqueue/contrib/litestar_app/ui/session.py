"""Who may use the dashboard, and the signed cookie that remembers them.

The dashboard accepts the API's tokens (``settings.api.tokens``): once in
the login form, after which a signed session cookie (HttpOnly,
SameSite=Strict, ``Secure`` over https) stands for it, or on every request
as ``Authorization: Bearer <token>`` (set by a reverse proxy). With no token
configured the dashboard is open, to loopback clients only.

The cookie holds no secret: only the operator's label, a CSRF token and an
expiry, with an HMAC-SHA256 over them. The key is derived from the
configured tokens (and the store URL), so every API process of a deployment
accepts the same cookies without a new setting, and changing the tokens
ends every session. Every POST must carry the session's CSRF token in its
form (``csrf_token``), compared in constant time; the cookie is SameSite=Strict,
so a request from another site has neither.

Why not Litestar's ``CSRFConfig``/``CSRFMiddleware`` and session middleware:
measured against litestar 2.25.0 (its ``middleware/csrf.py`` and
``middleware/session/`` read, and a probe app with ``CSRFMiddleware`` on a
``/ui`` router run) and against the behaviour ``tests/http/test_ui_http.py``
pins. Mounted on the ``/ui`` router only, the CSRF middleware leaves the
JSON API alone, so that is not the reason; these are:

- The CSRF middleware reads a form's token only from the field
  ``_csrf_token`` (a literal in ``CSRFMiddleware.__call__``, not
  configurable): in the probe a POST with our documented ``csrf_token``
  field (docs/dashboard.md, every POST in the tests) got 403.
- Cookie attributes are fixed per app in both configs
  (``CSRFConfig.cookie_secure``, ``CookieBackendConfig.secure``, their
  ``path``; in the probe the cookie had no ``Secure`` over https): the
  dashboard sets ``Secure`` per request, when the request came over https,
  and ``Path`` to ``<ASGI root_path>/ui``.
  ``test_login_sets_a_strict_http_only_cookie`` (no ``Secure`` over http)
  and ``test_over_https_the_cookie_is_secure`` cannot both hold.
- The middleware refuses before the dashboard's guard has run, so its 403
  reaches the error handler without the request's session (in the probe the
  handler saw no state set by the router's guard): the page loses
  its navigation, and the message its advice ("reload the page").
- Its token is a double-submit cookie of its own, independent of the login:
  a login does not rotate it. Here the token lives in the signed session, so
  logging in or out gives a new one.
- The client-side session backend (``CookieBackendConfig``) needs
  ``cryptography``, which ``mailqueue[litestar]`` does not install (here it
  comes only with ``trustme``, a test tool); the server-side backend needs a
  store shared by every API process, i.e. a new setting, where the signed
  cookie needs none.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final

from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie

from mailqueue import Settings
from mailqueue.contrib.litestar_app.auth import configured_tokens, is_loopback

__all__ = ["COOKIE_NAME", "CSRF_FIELD", "Session", "SessionManager"]

#: Name of the session cookie (scoped to ``/ui``).
COOKIE_NAME: Final = "mailqueue_ui"
#: Name of the form field that carries the CSRF token.
CSRF_FIELD: Final = "csrf_token"
#: Seconds a login lasts.
SESSION_LIFETIME: Final = 12 * 3600
_KEY_LABEL: Final = b"mailqueue-ui-session-v1"


@dataclass(frozen=True, slots=True)
class Session:
    """One browser's state: its CSRF token and, once logged in, who it is.

    Attributes:
        csrf: the token every POST form of this browser must carry.
        operator: label of the logged-in operator (for the audit log), ``None`` before login.
        expires: Unix time after which the cookie is refused.
        fresh: made for this request: the response must set the cookie.
    """

    csrf: str
    operator: str | None
    expires: int
    fresh: bool = False


class SessionManager:
    """Signs, reads and checks sessions and tokens for one app.

    Args:
        settings: the app's settings (``api.tokens`` and the store URL make the key).
    """

    def __init__(self, settings: Settings) -> None:
        self._tokens = configured_tokens(settings.api.tokens)
        material = b"\0".join([_KEY_LABEL, *self._tokens, settings.store.get_secret_value().encode()])
        self._key = hashlib.sha256(material).digest()

    @property
    def open(self) -> bool:
        """No token is configured: anyone on loopback may use the dashboard."""
        return not self._tokens

    def new(self, operator: str | None = None) -> Session:
        """A fresh session (new CSRF token) for ``operator``."""
        return Session(
            csrf=secrets.token_urlsafe(24),
            operator=operator,
            expires=int(time.time()) + SESSION_LIFETIME,
            fresh=True,
        )

    def load(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Session:
        """The session of this request's cookie, or a fresh anonymous one if it has none valid."""
        raw = connection.cookies.get(COOKIE_NAME)
        session = self._verify(raw) if raw else None
        return session if session is not None else self.new()

    def cookie(self, session: Session, *, secure: bool, path: str = "/ui") -> Cookie:
        """The ``Set-Cookie`` for ``session``."""
        payload = json.dumps(
            {"c": session.csrf, "o": session.operator, "e": session.expires}, separators=(",", ":")
        ).encode()
        body = _b64(payload)
        value = f"{body}.{_b64(self._mac(body))}"
        return Cookie(
            key=COOKIE_NAME,
            value=value,
            path=path,
            httponly=True,
            samesite="strict",
            secure=secure,
            max_age=SESSION_LIFETIME,
        )

    def expired_cookie(self, *, secure: bool, path: str = "/ui") -> Cookie:
        """A ``Set-Cookie`` that removes the session cookie."""
        return Cookie(
            key=COOKIE_NAME,
            value="",
            path=path,
            httponly=True,
            samesite="strict",
            secure=secure,
            max_age=0,
            expires=0,
        )

    def token_index(self, presented: str) -> int | None:
        """1-based position of ``presented`` in ``api.tokens``, or ``None``.

        Every token is compared in constant time, so the time taken does not
        tell which one (if any) matched.
        """
        found: int | None = None
        candidate = presented.strip().encode()
        for index, token in enumerate(self._tokens, start=1):
            if hmac.compare_digest(candidate, token) and found is None:
                found = index
        return found

    def bearer_operator(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
        """``bearer (token #N)`` if the request carries a valid bearer token, else ``None``."""
        scheme, _sep, presented = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        index = self.token_index(presented)
        return None if index is None else f"bearer (token #{index})"

    def csrf_ok(self, session: Session, presented: str | None) -> bool:
        """The form's CSRF token is this session's (and the session is not brand new)."""
        if session.fresh or not presented:
            return False
        return hmac.compare_digest(presented.encode(), session.csrf.encode())

    @staticmethod
    def client_is_local(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
        """The request comes from this machine (loopback)."""
        client = connection.client
        return client is not None and is_loopback(client.host)

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._key, body.encode(), hashlib.sha256).digest()

    def _verify(self, raw: str) -> Session | None:
        body, sep, mac = raw.partition(".")
        if not sep:
            return None
        try:
            expected = _unb64(mac)
            if not hmac.compare_digest(expected, self._mac(body)):
                return None
            data = json.loads(_unb64(body))
        except (ValueError, binascii.Error):
            return None
        if not isinstance(data, dict):
            return None
        csrf, operator, expires = data.get("c"), data.get("o"), data.get("e")
        if not isinstance(csrf, str) or not isinstance(expires, int):
            return None
        if operator is not None and not isinstance(operator, str):
            return None
        if expires < time.time():
            return None
        return Session(csrf=csrf, operator=operator, expires=expires)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
