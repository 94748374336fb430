"""Bearer-token authentication, and the rule that an open API stays on loopback.

Tokens come from ``settings.api.tokens``. When at least one is configured,
every ``/api/`` request needs ``Authorization: Bearer <token>``; the token
presented is compared with every configured one in constant time. When none
is configured, requests are allowed, and :func:`check_bind_allowed` keeps the
server from listening anywhere but on loopback.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard
from pydantic import SecretStr

from mailqueue import ConfigurationError, Settings

__all__ = ["bearer_guard", "check_bind_allowed", "configured_tokens", "is_loopback"]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str) -> bool:
    """True if ``host`` names only this machine: ``localhost``, ``127.0.0.0/8`` or ``::1``.

    ``0.0.0.0``, ``::``, an empty host and any other name are not loopback.
    """
    host = host.strip().strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_allowed(host: str, settings: Settings) -> None:
    """Refuse to serve the API beyond loopback without a token.

    Args:
        host: the address the server is about to listen on.
        settings: the settings whose ``api.tokens`` protect the API.

    Raises:
        ConfigurationError: no token is configured and ``host`` is not a loopback address.
    """
    if configured_tokens(settings.api.tokens) or is_loopback(host):
        return
    raise ConfigurationError(
        f"refusing to listen on {host!r} without an API token: anyone who can reach it could send mail "
        "through you. Set one with MAILQUEUE_API__TOKENS='[\"<long random secret>\"]' (or api.tokens in "
        "the config file), or listen on 127.0.0.1."
    )


def configured_tokens(tokens: Sequence[SecretStr]) -> list[bytes]:
    """The non-empty tokens, as bytes (an empty token protects nothing)."""
    return [token.get_secret_value().encode() for token in tokens if token.get_secret_value()]


def _token_matches(presented: bytes, tokens: Sequence[bytes]) -> bool:
    matched = False
    for token in tokens:
        # every token is compared, so the time taken does not tell which one (if any) matched
        matched |= hmac.compare_digest(presented, token)
    return matched


def bearer_guard(tokens: Sequence[SecretStr]) -> Guard:
    """A Litestar guard requiring ``Authorization: Bearer <one of tokens>``.

    With no tokens, the guard lets every request through.

    Raises (from the guard):
        NotAuthorizedException: the header is missing, not a bearer token, or the token is wrong (401).
    """
    secrets = configured_tokens(tokens)

    # async: Litestar would run a plain function in a worker thread, for every request
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if not secrets:
            return
        scheme, _sep, presented = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not _token_matches(presented.strip().encode(), secrets):
            raise NotAuthorizedException(
                detail="Unauthorized: a valid 'Authorization: Bearer <token>' header is required",
                headers={"WWW-Authenticate": 'Bearer realm="mailqueue"'},
            )

    return guard
