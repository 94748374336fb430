"""The options of an ``amqp://`` or ``amqps://`` URL, and reading the URL
(format and options: :mod:`mailqueue.backends.amqp`).

Imports no driver.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Final
from urllib.parse import urlencode, urlsplit

from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError

from mailqueue.backends._base import Flag, OptionsModel, parse_options, url_query
from mailqueue.errors import ConfigurationError
from mailqueue.registry import redact_url

__all__ = ["EXCHANGE_TYPES", "AMQPOptions", "parse_url"]

#: The exchange types the ``exchange_type`` option may name.
EXCHANGE_TYPES: Final = ("direct", "topic", "fanout", "headers")

_OPTIONS: Final = (
    "queue",
    "exchange",
    "exchange_type",
    "routing_key",
    "quorum",
    "confirm_timeout",
    "connect_timeout",
    "tier_min",
    "tier_max",
)
_DRIVER_OPTIONS: Final = (
    "heartbeat",
    "reconnect_interval",
    "name",
    "auth",
    "cafile",
    "capath",
    "cadata",
    "keyfile",
    "certfile",
    "no_verify_ssl",
)


def _seconds(value: Any) -> Any:
    """A number of seconds, at least 0 (the queue checks its own for more)."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise PydanticCustomError("option", "is not a number: {value}", {"value": repr(value)}) from None
    if isinstance(number, float | int) and not (math.isfinite(number) and number >= 0):
        raise PydanticCustomError("option", "must be a positive number: {value}", {"value": repr(value)})
    return number


def _driver_seconds(value: str) -> str:
    """A number of seconds handed to the driver as written."""
    _seconds(value)
    return value


def _heartbeat(value: str) -> str:
    # aiormq would silently turn a bad value into 0: no heartbeats at all.
    if not (value.isdigit() and int(value) < 65535):
        raise PydanticCustomError("option", "must be 0 to 65534 seconds", {})
    return value


def _zero_or_one(value: str) -> str:
    if value not in ("0", "1"):
        raise PydanticCustomError("option", "must be 0 or 1", {})
    return value


def _auth(value: str) -> str:
    if value.lower() not in ("plain", "external"):
        raise PydanticCustomError("option", "must be plain or external", {})
    return value


_Seconds = Annotated[float, BeforeValidator(_seconds)]


class AMQPOptions(OptionsModel):
    """The options of an ``amqp://`` or ``amqps://`` URL (see :mod:`mailqueue.backends.amqp`).

    mailqueue's own options become :class:`~mailqueue.backends.amqp.AMQPQueue`'s arguments (their values
    are checked there); the driver's (``heartbeat`` to ``no_verify_ssl``) stay in
    the URL handed to aio-pika.
    """

    queue: str = "mailqueue"
    exchange: str = "mailqueue"
    exchange_type: str = "direct"
    routing_key: str | None = None
    quorum: Flag = False
    confirm_timeout: _Seconds = 30.0
    connect_timeout: _Seconds = 10.0
    tier_min: _Seconds = 0.1
    tier_max: _Seconds = 14400.0
    heartbeat: Annotated[str, AfterValidator(_heartbeat)] | None = None
    reconnect_interval: Annotated[str, AfterValidator(_driver_seconds)] | None = None
    name: str | None = None
    auth: Annotated[str, AfterValidator(_auth)] | None = None
    cafile: str | None = None
    capath: str | None = None
    cadata: str | None = None
    keyfile: str | None = None
    certfile: str | None = None
    no_verify_ssl: Annotated[str, AfterValidator(_zero_or_one)] | None = None


assert tuple(AMQPOptions.model_fields) == _OPTIONS + _DRIVER_OPTIONS


def parse_url(url: str) -> tuple[str, dict[str, Any]]:
    """Read an ``amqp://`` or ``amqps://`` URL.

    Returns:
        The broker's URL, keeping only the driver's options, and the keyword
        arguments of :class:`~mailqueue.backends.amqp.AMQPQueue` that the URL's
        options give.

    Raises:
        ConfigurationError: another scheme, no host, a bad port, an unknown option or a bad value.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigurationError(f"not an amqp:// or amqps:// URL: {redact_url(url)!r}")
    if not parts.hostname:
        raise ConfigurationError(f"{parts.scheme}:// URL needs a host: {redact_url(url)!r}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigurationError(f"bad port in {redact_url(url)!r}") from None
    options = parse_options(url, AMQPOptions)
    driver = [(name, value) for name, value in url_query(url) if name in _DRIVER_OPTIONS]
    kwargs = options.model_dump(include=options.model_fields_set & set(_OPTIONS))
    return parts._replace(query=urlencode(driver)).geturl(), kwargs
