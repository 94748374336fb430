"""Settings: one YAML file plus ``MAILQUEUE_*`` environment variables.

Environment variables win over the file; nested keys use ``__``
(``MAILQUEUE_WORKER__CONCURRENCY=8``). Backends are chosen by URL. With no
settings at all you get the embedded default: SQLite store and ``sql`` queue
in ``./mailqueue.db``, attachments in ``./attachments``, ``.eml`` files in
``./outbox``. URLs may hold passwords, so they are :class:`~pydantic.SecretStr`:
printing the settings never shows them.
"""

from __future__ import annotations

import contextvars
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from mailqueue.errors import ConfigurationError
from mailqueue.message import check_address
from mailqueue.sending.limits import parse_rate

__all__ = [
    "APISettings",
    "AccountSettings",
    "BounceSettings",
    "DKIMKeySettings",
    "DomainGroupSettings",
    "RetentionSettings",
    "Settings",
    "SuppressionSettings",
    "ThrottleSettings",
    "WorkerSettings",
    "load_settings",
]

_DOMAIN_RE = re.compile(r"(?=.{1,200}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]")

_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("mailqueue_config", default=None)


def _check_rate(value: str) -> str:
    try:
        parse_rate(value)
    except ConfigurationError as exc:
        raise ValueError(str(exc)) from None
    return value


class ThrottleSettings(BaseModel):
    """How an account reacts to throttle replies and failures (see docs/accounts-and-limits.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decrease: float = Field(default=0.5, gt=0, lt=1)
    """On a throttle reply the account's rate is multiplied by this."""
    floor: float = Field(default=0.1, gt=0, le=1)
    """Lowest fraction of the configured rate."""
    increase: float = Field(default=0.1, gt=0, le=1)
    """Fraction of the configured rate given back after ``increase_after`` clean sends."""
    increase_after: int = Field(default=10, ge=1)
    """Clean sends after which the account gets ``increase`` of its rate back."""
    pause: float = Field(default=1.0, ge=0)
    """Seconds an account pauses on a throttle reply that names no time."""
    max_pause: float = Field(default=900.0, ge=0)
    """Longest "try again in N seconds" honoured."""
    breaker_failures: int = Field(default=5, ge=1)
    """Consecutive connection/auth/quota/throttle failures that open an account's circuit."""
    breaker_cooldown: float = Field(default=30.0, gt=0)
    """Seconds an open circuit waits before one trial send."""


class AccountSettings(BaseModel):
    """One SMTP account of ``senders``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: SecretStr
    """The sender URL (``smtp://...``), as ``sender``."""
    name: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]*$", max_length=64)
    """Name in metrics and Redis keys; default ``account<N>``."""
    rate: str | None = None
    """This account's limits; ``None``: ``worker.rate``."""

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        return None if value is None else _check_rate(value)


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_LABELS = rf"{_LABEL}(?:\.{_LABEL})*"


def _check_dkim_domain(value: str) -> str:
    # the From domain as the worker renders it: ASCII (an IDN in its xn-- form), lower case
    try:
        address = check_address(f"postmaster@{value.strip().rstrip('.')}")
    except ValueError:
        raise ValueError(f"{value!r} is not a domain that mail can be sent from") from None
    return address.rpartition("@")[2].lower()


class DKIMKeySettings(BaseModel):
    """One DKIM signing key of ``dkim`` (see docs/deliverability.md): mail whose From
    address is at ``domain`` is signed with it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: str = Field(max_length=253)
    """The signing domain (``d=``); mail is signed when its From domain is exactly this one
    (case does not matter; an international domain may be written either way)."""
    selector: str = Field(pattern=rf"^{_HOST_LABELS}$", max_length=63)
    """The selector (``s=``): receivers find the public key in the TXT record
    ``<selector>._domainkey.<domain>``."""
    key_file: Path
    """The private key: PEM, unencrypted (``openssl genrsa``, ``openssl genpkey -algorithm
    ed25519``), or for Ed25519 also the base64 file ``dknewkey`` writes; a relative path is taken
    from the directory the worker starts in. Read when the worker starts: a key that cannot be
    used stops it."""
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"
    """``rsa-sha256`` (an RSA key of at least 1024 bits, 2048 recommended) or ``ed25519-sha256``
    (RFC 8463; not every receiver checks it yet, so give the domain an RSA key too: each key
    listed for a domain adds its own signature)."""

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return _check_dkim_domain(value)


def _check_limit_domain(value: str) -> str:
    # as recipients' addresses carry it once validated: ASCII (an IDN in its xn-- form), lower case
    domain = value.strip().rstrip(".").lower()
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{value!r} is not a domain") from None
    if not _DOMAIN_RE.fullmatch(domain):
        raise ValueError(f"{value!r} is not a domain")
    return domain


class DomainGroupSettings(BaseModel):
    """One group of ``domain_limits``: recipient domains that one provider receives, and the
    rate mailqueue sends to them at (see docs/accounts-and-limits.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domains: list[str] = []
    """The recipient domains of the group; each also covers its subdomains. The group named
    ``default`` may list none: it then holds every domain no other group lists."""
    rate: str = ""
    """The group's limits over all its domains, e.g. ``20/s;3000/h`` (empty: unlimited, but
    the group still has its own transactions and its own adaptive throttle)."""

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [_check_limit_domain(domain) for domain in value]

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        return _check_rate(value)


class WorkerSettings(BaseModel):
    """How a worker consumes and sends."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: int = Field(default=8, ge=1, le=1000)
    """Mails sent at the same time (the original's ``consumer``)."""
    prefetch: int | None = Field(default=None, ge=1, le=10000)
    """Deliveries held unsettled at once; default twice the concurrency."""
    rate: str = ""
    """Sending limits shared by the worker's sends, several windows at once, e.g.
    ``20/s;1000/h;500/d`` (units ``s``, ``m``/``min``, ``h``, ``d``; ``100/10s`` also works); each
    window is a sliding log: never more than N in any period. Empty: no limit."""
    rate_store: str = ""
    """Where the limits are counted: empty = in this process; ``redis://host:6379/0`` = shared by
    every worker using the same Redis (the deployment's limits hold together)."""
    throttle: ThrottleSettings = ThrottleSettings()
    """Adaptive throttling and circuit breaker per account, used when ``senders`` or
    ``rate_store`` is set (see ``worker.throttle`` below)."""
    max_attempts: int = Field(default=8, ge=1, le=1000)
    """Attempts before a transiently failing mail ends ``dead``."""
    retry_base: float = Field(default=30.0, gt=0)
    """First retry delay in seconds; doubles each attempt, with jitter."""
    retry_max: float = Field(default=3600.0, gt=0)
    """Longest retry delay in seconds."""
    max_age: float = Field(default=3 * 86400.0, gt=0)
    """Seconds after acceptance when a mail stops being retried and ends ``dead``."""
    missing_attachment: Literal["remark", "fail"] = "remark"
    """``remark``: send without it and note ``Not Found: <name>`` (the original);
    ``fail``: the mail ends ``failed``."""
    delete_attachments: bool = True
    """Delete a mail's attachments once it is sent."""
    shutdown_timeout: float = Field(default=30.0, ge=0)
    """On SIGTERM, seconds to let in-flight sends finish before releasing them."""
    sweep_interval: float = Field(default=60.0, ge=0)
    """Seconds between two sweeps for mails whose publish was not confirmed
    (see :meth:`~mailqueue.client.MailQueue.sweep`); 0 turns sweeping off."""
    sweep_after: float = Field(default=60.0, ge=0)
    """A mail is swept once its failed publish is at least this many seconds old."""
    restart_base: float = Field(default=1.0, gt=0)
    """First pause in seconds before a failed consumer or sweeper is restarted; doubles up to 30 s / 60 s."""
    health_interval: float = Field(default=5.0, gt=0)
    """Seconds between two checks of the store and the queue that drive ``mailqueue_worker_ready``."""
    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Port of the worker's HTTP endpoint (``/metrics``, ``/health/live``, ``/health/ready``);
    0 (the default) serves none. 9100 is customary."""
    metrics_host: str = "127.0.0.1"
    """Address the worker's metrics endpoint listens on."""
    sending_lease: float = Field(default=600.0, gt=0)
    """Seconds a mail may stay ``sending`` before a worker that meets another
    copy of it presumes the sending worker dead and sends it; must exceed the
    longest SMTP transaction (connect, TLS, all commands and the data)."""
    text_from_html: bool = True
    """Give a mail without ``text`` a ``text/plain`` alternative generated from its HTML
    (spam filters score HTML-only mail worse; text-only clients can read it)."""
    stale_sending: Literal["unknown", "resend", "off"] = "unknown"
    """What the sweeper does with a mail left ``sending`` for twice ``sending_lease``
    (its worker died and its delivery never came back): ``unknown`` marks it
    ``unknown`` (maybe delivered; re-send it yourself), ``resend`` queues it
    again (it may arrive twice), ``off`` leaves it."""

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        return _check_rate(value)


class RetentionSettings(BaseModel):
    """What workers delete, and when (see docs/retention.md).

    Times are in seconds; ``null`` turns a rule off.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval: float = Field(default=3600.0, ge=0)
    """Seconds between two retention passes of a worker; 0 turns them off."""
    attachments_after: float | None = Field(default=30 * 86400.0, ge=0)
    """Delete the attachments of a finished mail (sent, failed, dead, unknown)
    this long after it finished; a re-send after that goes without them."""
    orphans_after: float | None = Field(default=86400.0, ge=0)
    """Delete stored attachments that no mail refers to (an upload whose
    request failed afterwards) once they are this old; must exceed the longest request."""
    records_after: float | None = Field(default=None, ge=0)
    """Soft-delete (``is_deleted``) finished mails this long after they finished; default off."""

    @field_validator("attachments_after", "orphans_after", "records_after", mode="before")
    @classmethod
    def _off(cls, value: object) -> object:
        # an environment variable cannot say null: take "off" (or "none", "null", "") for it
        if isinstance(value, str) and value.strip().lower() in ("", "off", "none", "null"):
            return None
        return value


class SuppressionSettings(BaseModel):
    """The suppression list (see docs/deliverability.md): addresses not sent to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """Check recipients against the list when a mail is sent and when it is submitted;
    ``false`` keeps the list (and its management) but suppresses nothing."""
    reject_on_submit: bool = False
    """Refuse a submitted mail with a suppressed recipient (400 naming the field) instead of
    accepting it for the others and listing the suppressed ones in the answer."""
    on_hard_bounce: bool = True
    """Add a recipient to the list when the server refuses it for good because the mailbox
    does not exist (RFC 3463 x.1.1, x.1.2, x.1.3, x.1.10 and the usual provider texts)."""
    hard_bounce_ttl: float | None = Field(default=None, gt=0)
    """Seconds an address added on a hard bounce stays suppressed; ``null`` (default): for ever."""

    @field_validator("hard_bounce_ttl", mode="before")
    @classmethod
    def _off(cls, value: object) -> object:
        # an environment variable cannot say null: take "off" (or "none", "null", "") for it
        if isinstance(value, str) and value.strip().lower() in ("", "off", "none", "null"):
            return None
        return value


class APISettings(BaseModel):
    """The HTTP service (see the Litestar app)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    """Address the API listens on (``--host``); anything but loopback needs ``tokens``."""
    port: int = Field(default=8100, ge=0, le=65535)
    """Port the API listens on (``--port``), the original service's 8100."""
    tokens: list[SecretStr] = []
    """Bearer tokens accepted on ``/api/`` (``Authorization: Bearer <token>``), compared in
    constant time; empty: no authentication, and the API listens on loopback only."""
    max_attachment_bytes: int = Field(default=25 * 1024 * 1024, ge=0)
    """Largest attachment, in bytes (413 above it)."""
    max_attachments: int = Field(default=10, ge=0)
    """Most attachments in one request (413 above it)."""
    max_request_bytes: int = Field(default=35 * 1024 * 1024, ge=0)
    """Largest request body, in bytes (413 above it)."""
    max_recipients: int = Field(default=100, ge=1, le=100)
    """Most recipients in one request, receiver, cc and bcc together (413 above it); 100 at most, as a
    mail holds no more."""
    keep_alive_timeout: int = Field(default=100, ge=1, le=3600)
    """Seconds an idle HTTP keep-alive connection stays open. Keep it longer than the idle timeout
    of the clients and of any load balancer in front (Go's ``http.Transport`` keeps idle
    connections 90 s, httpx 5 s, an AWS ALB 60 s): a server that closes first races the client's
    next request, which then fails with a connection error although the server never saw it."""
    ui: bool | None = None
    """The operator dashboard at ``/ui``: ``true`` on, ``false`` off, ``null`` (default) on when
    ``tokens`` are configured or the API listens on loopback only, off otherwise (see docs/dashboard.md)."""


class BounceSettings(BaseModel):
    """Bounce and complaint intake (see docs/deliverability.md): the VERP return path and the listener."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: str | None = Field(default=None, max_length=200)
    """Domain of the VERP return path: mails go out with the envelope sender
    ``<local>+<mail id>.<recipient tag>@<domain>`` (one SMTP transaction per recipient), so
    that a bounce names its mail and recipient; its MX (or a transport map) must lead to the
    listener. ``null`` (the default): the envelope sender is the From address, as without it."""
    local: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9._-]{0,30}$")
    """Left of the ``+`` in the return path; default: the From address's local part."""
    secret: SecretStr | None = None
    """Key of the recipient tag (an HMAC of mail id and recipient): with it, nobody who lacks
    the key can make a bounce for another recipient of a mail. Workers and the listener must
    share it. ``null``: the tag is a plain hash, which anyone who knows the mail id and the
    address can compute."""
    listen: str | None = None
    """``host:port`` where the bounce listener (SMTP) accepts reports, e.g. ``127.0.0.1:2526``;
    ``mailqueue serve`` runs it when set, ``mailqueue bounces`` always (default ``127.0.0.1:2526``)."""
    max_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest report accepted, in bytes (a bigger one is refused with 552)."""

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower().rstrip(".")
        if not re.fullmatch(
            r"(?=.{1,200}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]", value
        ):
            raise ValueError(f"{value!r} is not a domain name (ASCII; IDNA-encode it first)")
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as a host and a port.

    Raises:
        ValueError: not of that form, or the port is not 0-65535.
    """
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{value!r} is not host:port")
    return host, int(port)


class Settings(BaseSettings):
    """Everything a mailqueue process needs. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="MAILQUEUE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    queue: SecretStr = SecretStr("sql://")
    """Queue backend URL: ``sql://``, ``amqp://``/``amqps://``, ``kafka://``, ``memory://`` or a plugin's."""
    store: SecretStr = SecretStr("sqlite+aiosqlite:///./mailqueue.db")
    """Store backend URL: an SQLAlchemy async URL (SQLite, MySQL/MariaDB, PostgreSQL) or ``memory://``."""
    attachments: SecretStr = SecretStr("file://./attachments")
    """Attachment store URL: ``file://``, ``sql://``, ``memory://`` or a plugin's."""
    sender: SecretStr = SecretStr("outbox://./outbox")
    """Sender URL: ``smtp://``, ``smtps://``, ``outbox://``, ``memory://`` or a plugin's."""
    senders: list[AccountSettings] = []
    """Several SMTP accounts; when given, ``sender`` is not used."""
    sender_strategy: Literal["failover", "round_robin"] = "failover"
    """``failover``: the first healthy account in order; ``round_robin``: accounts in turn."""
    sending_steps: list[str] = []
    """Extra links of the sending chain, by entry-point name (group ``mailqueue.sending_steps``),
    outermost first; they wrap the built-in chain."""
    dkim: list[DKIMKeySettings] = []
    """DKIM signing keys, by From domain (see ``dkim`` below); empty: mail is not signed."""
    message_id_domain: str | None = None
    """Right-hand side of generated Message-IDs; default: the sender's From domain."""
    allowed_special_domains: list[str] = []
    """Recipient domains accepted (with their subdomains) although special-use, reserved or
    dotless, e.g. ``[internal, test, localhost]`` for an internal relay; refused by default."""
    domain_limits: dict[str, DomainGroupSettings] = {}
    """Rates per recipient domain or provider group, by group name (``[a-z0-9_-]``, used in
    metrics and Redis keys), e.g. ``{google: {domains: [gmail.com, googlemail.com], rate:
    20/s;3000/h}, default: {rate: 50/s}}``; shared by all workers through ``worker.rate_store``
    when set. ``default`` holds the domains no group lists; without it they are not limited
    by domain."""
    worker: WorkerSettings = WorkerSettings()
    """How workers consume and send (``worker`` below)."""
    retention: RetentionSettings = RetentionSettings()
    """What workers delete, and when (``retention`` below)."""
    suppression: SuppressionSettings = SuppressionSettings()
    """The suppression list (``suppression`` below)."""
    api: APISettings = APISettings()
    """The HTTP service (``api`` below)."""
    bounces: BounceSettings = BounceSettings()
    """Bounce and complaint intake: VERP return path and listener (``bounces`` below)."""
    log_level: str = "INFO"
    """Python logging level (``DEBUG``, ``INFO``, ``WARNING``, ...)."""
    log_format: Literal["kv", "json"] = "kv"
    """``kv``: one line of ``key=value`` pairs per record; ``json``: one JSON object per line."""

    @field_validator("dkim")
    @classmethod
    def _dkim(cls, value: list[DKIMKeySettings]) -> list[DKIMKeySettings]:
        seen = set()
        for key in value:
            if (key.domain, key.selector.lower()) in seen:
                raise ValueError(f"selector {key.selector!r} of {key.domain!r} is listed twice")
            seen.add((key.domain, key.selector.lower()))
        return value

    @field_validator("domain_limits")
    @classmethod
    def _domain_limits(cls, value: dict[str, DomainGroupSettings]) -> dict[str, DomainGroupSettings]:
        owner: dict[str, str] = {}
        for name, group in value.items():
            if not re.fullmatch(r"[a-z0-9_-]{1,64}", name):
                raise ValueError(f"group name {name!r} must be 1-64 of a-z, 0-9, _ and -")
            if not group.domains and name != "default":
                raise ValueError(f"group {name!r} lists no domains (only 'default' may)")
            for domain in group.domains:
                if domain in owner:
                    raise ValueError(f"domain {domain!r} is in groups {owner[domain]!r} and {name!r}")
                owner[domain] = name
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path, deep_merge=True))
        return tuple(sources)


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings from ``config`` (a YAML file, optional), then the environment.

    Args:
        config: path of a YAML file; ``None`` reads the environment only.
        overrides: values that win over both (used by tests and the CLI).

    Raises:
        ConfigurationError: the file is missing or not YAML, or a value is invalid;
            the message names the setting.
    """
    path = None
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise ConfigurationError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigurationError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigurationError(
                f"config file {str(path)!r} is not valid YAML{_yaml_problem(exc)}"
            ) from None
        if data is not None and not isinstance(data, dict):
            raise ConfigurationError(f"config file {str(path)!r} must hold a mapping of settings")
    token = _config_file.set(path)
    try:
        return Settings(**overrides)
    except ConfigurationError:
        raise
    except ValueError as exc:  # pydantic.ValidationError
        raise ConfigurationError(f"invalid settings: {_describe(exc)}") from None
    finally:
        _config_file.reset(token)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # str(exc) quotes the offending line, which may hold a password: give only where and what
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{where}: {problem}" if problem else where


def _describe(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for err in errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
