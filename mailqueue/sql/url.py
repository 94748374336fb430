"""Store URLs: check one, choose its asyncio driver, and read its query options.

The bare schemes ``sqlite:``, ``mysql:``, ``mariadb:`` and ``postgresql:``
choose the asyncio drivers. A URL's query holds two kinds of options:

- mailqueue's own, declared in :class:`SQLStoreOptions` and read with
  :func:`~mailqueue.backends._base.parse_options` (a bad value is a
  :class:`ConfigurationError` that names the option); they are taken out
  before SQLAlchemy sees the URL;
- the driver's, which SQLAlchemy hands on to it (``charset``,
  ``read_timeout``, ...): those in :data:`DRIVER_OPTIONS` for its driver. Any
  other option is refused, naming the valid ones. A driver not in that table
  (one the project does not test) gets every other option unchecked.

The URL format is described in :mod:`mailqueue.sql.store`.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any
from urllib.parse import urlencode

import sqlalchemy as sa
from pydantic import AfterValidator
from pydantic_core import PydanticCustomError
from sqlalchemy.engine import URL, make_url

from mailqueue.backends._base import Flag, OptionsModel, Whole, parse_options
from mailqueue.errors import ConfigurationError, MissingDependencyError

__all__ = ["DRIVER_OPTIONS", "SQLStoreOptions", "checked_url", "parse_url", "safe_url", "split_options"]

#: Bare schemes and the async driver each one means.
BARE_SCHEMES = {
    "sqlite": "sqlite+aiosqlite",
    "mysql": "mysql+asyncmy",
    "mariadb": "mariadb+asyncmy",
    "postgresql": "postgresql+asyncpg",
}
#: Optional drivers: the package to import and the extra that installs it.
_DRIVER_EXTRAS = {"asyncmy": ("asyncmy", "mysql"), "asyncpg": ("asyncpg", "postgres")}

#: The query options each tested driver takes, by SQLAlchemy's name of the driver: those
#: SQLAlchemy's dialect reads from the URL, and the driver's ``connect()`` parameters that a
#: URL can carry as text (the host, port, user, password and database come from the URL itself).
DRIVER_OPTIONS: dict[str, tuple[str, ...]] = {
    # SQLAlchemy's pysqlite dialect; with uri=true, SQLite's URI parameters
    "aiosqlite": (
        "uri",
        "timeout",
        "isolation_level",
        "detect_types",
        "check_same_thread",
        "cached_statements",
        "vfs",
        "mode",
        "cache",
        "psow",
        "nolock",
        "immutable",
        "modeof",
    ),
    # SQLAlchemy's MySQL dialect (ssl_* make asyncmy's ssl), then asyncmy.connect()
    "asyncmy": (
        "charset",
        "connect_timeout",
        "read_timeout",
        "client_flag",
        "local_infile",
        "use_unicode",
        "ssl",
        "ssl_ca",
        "ssl_key",
        "ssl_cert",
        "ssl_capath",
        "ssl_cipher",
        "ssl_check_hostname",
        "unix_socket",
        "sql_mode",
        "init_command",
        "autocommit",
        "max_allowed_packet",
        "read_default_file",
        "read_default_group",
        "program_name",
        "binary_prefix",
        "server_public_key",
        "stmt_cache_size",
    ),
    # SQLAlchemy's asyncpg dialect (host and port: several hosts), then asyncpg.connect()
    "asyncpg": (
        "prepared_statement_cache_size",
        "host",
        "port",
        "passfile",
        "service",
        "servicefile",
        "timeout",
        "statement_cache_size",
        "max_cached_statement_lifetime",
        "max_cacheable_statement_size",
        "command_timeout",
        "ssl",
        "direct_tls",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
    ),
}

#: How messages name the URL.
_LABEL = "SQL store"


def _at_least_one(value: int) -> int:
    if value < 1:
        raise PydanticCustomError("option", "must be at least 1, not {value}", {"value": value})
    return value


class SQLStoreOptions(OptionsModel):
    """mailqueue's options of a store URL (see :mod:`mailqueue.sql.store`)."""

    #: Bring the schema to the newest revision on open (else refuse one that is behind).
    migrate: Flag = True
    #: Connections kept in the pool (``None``: SQLAlchemy's default).
    pool_size: Annotated[Whole, AfterValidator(_at_least_one)] | None = None
    #: Log every SQL statement.
    echo: Flag = False


#: The names of mailqueue's options, in the order they are listed.
OPTION_NAMES = tuple(SQLStoreOptions.model_fields)


def safe_url(url: URL) -> str:
    """The URL as text, with its password hidden."""
    return url.render_as_string(hide_password=True)


def checked_url(url: str | URL) -> URL:
    """:func:`sqlalchemy.engine.make_url` raising :class:`ConfigurationError`."""
    try:
        return make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigurationError("the store URL is not a valid SQLAlchemy URL") from None


def parse_url(url: str | URL) -> URL:
    """Check an SQLAlchemy async URL and map a bare scheme to its driver.

    Returns:
        The URL to hand to SQLAlchemy, e.g. ``mysql+asyncmy://...`` for
        ``mysql://...``.

    Raises:
        ConfigurationError: not a URL, an unknown dialect, a synchronous
            driver, or an in-memory SQLite database.
        MissingDependencyError: the driver (asyncmy, asyncpg) is not installed.
    """
    parsed = checked_url(url)
    if parsed.drivername in BARE_SCHEMES:
        parsed = parsed.set(drivername=BARE_SCHEMES[parsed.drivername])
    try:
        dialect = parsed.get_dialect()
    except (sa.exc.NoSuchModuleError, sa.exc.ArgumentError):
        raise ConfigurationError(f"no SQLAlchemy dialect for store scheme {parsed.drivername!r}") from None
    if dialect.driver in _DRIVER_EXTRAS:
        package, extra = _DRIVER_EXTRAS[dialect.driver]
        try:
            importlib.import_module(package)
        except ImportError:
            raise MissingDependencyError(package, extra) from None
    if not getattr(dialect, "is_async", False):
        raise ConfigurationError(
            f"store scheme {parsed.drivername!r} is not an asyncio driver; use e.g. "
            "sqlite+aiosqlite, mysql+asyncmy or postgresql+asyncpg"
        )
    if dialect.name == "sqlite" and (
        parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
    ):
        raise ConfigurationError("an in-memory SQLite database cannot be shared; use the memory:// store")
    return parsed


def split_options(url: str | URL) -> tuple[URL, SQLStoreOptions]:
    """Check a store URL (see :func:`parse_url`) and take mailqueue's options out of its query.

    Returns:
        The URL to hand to SQLAlchemy (with the driver's options) and mailqueue's options.

    Raises:
        ConfigurationError: see :func:`parse_url`; an option neither mailqueue's
            nor the driver's (the message lists both), one of mailqueue's given
            twice, or a bad value of one of them (the message names it).
        MissingDependencyError: the URL's driver is not installed.
    """
    parsed = parse_url(url)
    driver = str(parsed.get_dialect().driver)
    known = DRIVER_OPTIONS.get(driver)
    ours: list[tuple[str, Any]] = []
    for name, value in parsed.query.items():
        if name in OPTION_NAMES:
            ours.extend((name, item) for item in ((value,) if isinstance(value, str) else value))
        elif known is not None and name not in known:
            raise ConfigurationError(
                f"unknown option {name!r} in {_LABEL} URL (mailqueue's: {', '.join(OPTION_NAMES)}; "
                f"the {driver} driver's: {', '.join(known)})"
            )
    # parse_options reads only the query of the URL it is given: just mailqueue's options
    options = parse_options(f"?{urlencode(ours)}", SQLStoreOptions, label=_LABEL, once=True)
    return parsed.difference_update_query(OPTION_NAMES), options
