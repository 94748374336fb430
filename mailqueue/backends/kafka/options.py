"""The options of a ``kafka://`` URL, and reading the URL (format and options:
:mod:`mailqueue.backends.kafka`).

Imports no driver.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, NamedTuple, Self
from urllib.parse import unquote, urlsplit

from pydantic import BeforeValidator, model_validator

from mailqueue.backends._base import Flag, Number, OptionsModel, Whole, parse_options
from mailqueue.errors import ConfigurationError

__all__ = ["TOPIC_NAME", "KafkaOptions", "KafkaURL", "parse_url", "split_hosts"]

#: What Kafka accepts as a topic name.
TOPIC_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")

_DEFAULT_PORT: Final = 9092
_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


class KafkaOptions(OptionsModel):
    """The knobs of :class:`~mailqueue.backends.kafka.KafkaQueue` (see
    :mod:`mailqueue.backends.kafka`); times in seconds.

    Also the URL's options: :meth:`KafkaQueue.from_url
    <mailqueue.backends.kafka.KafkaQueue.from_url>` reads them with
    :func:`~mailqueue.backends._base.parse_options`.

    Raises:
        ConfigurationError: a value is out of range.
    """

    group: str = "mailqueue"
    client_id: str = "mailqueue"
    idempotence: Flag = True
    batch: Whole = 100
    retry_topic: str | None = None
    dead_topic: str | None = None
    create: Flag = False
    partitions: Whole = 1
    replication: Whole = 1
    timeout: Number = 30.0
    request_timeout: Number | None = None
    session_timeout: Number = 10.0
    heartbeat: Number = 3.0
    max_poll_interval: Number = 300.0
    rebalance_timeout: Number | None = None
    metadata_max_age: Number = 300.0
    fetch_wait: Number = 0.5
    poll: Number = 0.2
    commit_interval: Number = 1.0
    drain: Number = 30.0
    hold: Whole = 10_000
    security_protocol: Annotated[str, BeforeValidator(_upper)] = "PLAINTEXT"
    sasl_mechanism: Annotated[str, BeforeValidator(_upper)] = "PLAIN"
    ssl_cafile: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.group:
            raise ConfigurationError("option 'group' of kafka:// must not be empty")
        if not self.client_id:
            raise ConfigurationError("option 'client_id' of kafka:// must not be empty")
        for name in ("retry_topic", "dead_topic"):
            value = getattr(self, name)
            if value is not None and not TOPIC_NAME.fullmatch(value):
                raise ConfigurationError(f"option {name!r} of kafka:// is not a valid topic name: {value!r}")
        for name in ("batch", "partitions", "replication", "hold"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"option {name!r} of kafka:// must be at least 1")
        positive = (
            "timeout",
            "request_timeout",
            "session_timeout",
            "heartbeat",
            "max_poll_interval",
            "rebalance_timeout",
            "metadata_max_age",
            "fetch_wait",
            "poll",
            "commit_interval",
            "drain",
        )
        for name in positive:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigurationError(f"option {name!r} of kafka:// must be a positive number of seconds")
        if self.heartbeat >= self.session_timeout:
            raise ConfigurationError("option 'heartbeat' of kafka:// must be less than 'session_timeout'")
        if self.security_protocol not in _PROTOCOLS:
            raise ConfigurationError(
                f"option 'security_protocol' of kafka:// must be one of {', '.join(_PROTOCOLS)}"
            )
        if self.sasl_mechanism not in _MECHANISMS:
            raise ConfigurationError(
                f"option 'sasl_mechanism' of kafka:// must be one of {', '.join(_MECHANISMS)}"
            )
        return self


def split_hosts(hosts: str) -> list[str]:
    """``host1:9092,host2`` as ``["host1:9092", "host2:9092"]`` (9092 where no port is given).

    Raises:
        ConfigurationError: an empty host, or a bad host or port.
    """
    servers = []
    for host in hosts.split(","):
        host = host.strip()
        if not host:
            raise ConfigurationError("kafka:// URL has an empty host")
        name, port = host, str(_DEFAULT_PORT)
        if host.startswith("["):
            end = host.find("]")
            if end < 0:
                raise ConfigurationError(f"kafka:// URL has a bad host {host!r}")
            name, rest = host[: end + 1], host[end + 1 :]
            if rest:
                if not rest.startswith(":"):
                    raise ConfigurationError(f"kafka:// URL has a bad host {host!r}")
                port = rest[1:]
        elif ":" in host:
            name, _, port = host.rpartition(":")
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"kafka:// URL has a bad host or port {host!r}")
        servers.append(f"{name}:{int(port)}")
    return servers


class KafkaURL(NamedTuple):
    """What a ``kafka://`` URL says: the queue's arguments."""

    bootstrap_servers: list[str]
    topic: str
    options: KafkaOptions
    username: str | None
    password: str | None


def parse_url(url: str) -> KafkaURL:
    """Read ``kafka://[user:password@]host:port[,host:port...]/<topic>?<options>``.

    A user and password make ``security_protocol`` default to ``SASL_PLAINTEXT``.

    Raises:
        ConfigurationError: not ``kafka://``, no host or topic, an unknown or bad option.
    """
    parts = urlsplit(url)
    if parts.scheme != "kafka":
        raise ConfigurationError("not a kafka:// URL")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user), unquote(secret)
    if not hosts:
        raise ConfigurationError("kafka:// URL needs at least one host:port")
    topic = unquote(parts.path.lstrip("/"))
    if not topic:
        raise ConfigurationError("kafka:// URL needs a topic: kafka://host:9092/<topic>")
    options = parse_options(url, KafkaOptions)
    if username is not None:
        if "security_protocol" not in options.model_fields_set:
            options = options.model_copy(update={"security_protocol": "SASL_PLAINTEXT"})
        if options.security_protocol not in ("SASL_PLAINTEXT", "SASL_SSL"):
            raise ConfigurationError(
                "kafka:// URL has a user and password, so security_protocol must be "
                "SASL_PLAINTEXT or SASL_SSL"
            )
    return KafkaURL(split_hosts(hosts), topic, options, username, password)
