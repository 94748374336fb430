"""What every command shares: the ``mailqueue`` group, ``--config``, settings, logging, ``_run``.

The command modules (:mod:`~mailqueue.cli.serve`, :mod:`~mailqueue.cli.operations`,
:mod:`~mailqueue.cli.status`, :mod:`~mailqueue.cli.db`) import this one and register
their commands on :func:`main`; :mod:`mailqueue.cli` imports them. This module imports
none of them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from click.core import ParameterSource

from mailqueue._version import __version__
from mailqueue.errors import ConfigurationError, MailQueueError, ValidationError
from mailqueue.logs import configure_logging, secrets_of_urls
from mailqueue.settings import Settings, load_settings

P = ParamSpec("P")
T = TypeVar("T")


def _config_option(func: Callable[P, T]) -> Callable[P, T]:
    return click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="MAILQUEUE_CONFIG",
        default=None,
        expose_value=True,
        is_eager=False,
        help="YAML settings file (also MAILQUEUE_CONFIG).",
    )(func)


def _config_path(ctx: click.Context, config: Path | None) -> Path | None:
    # --config given on the command line, before or after the subcommand, beats MAILQUEUE_CONFIG.
    root = ctx.find_root()
    if ctx.get_parameter_source("config") is ParameterSource.COMMANDLINE:
        return config
    if root.get_parameter_source("config") is ParameterSource.COMMANDLINE:
        return root.params.get("config")
    return config or root.params.get("config")


def _settings(
    ctx: click.Context, config: Path | None, *, log_format: str | None = None, structured: bool = False
) -> Settings:
    config = _config_path(ctx, config)
    try:
        settings = load_settings(config, **({"log_format": log_format} if log_format else {}))
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    _configure_logging(settings, structured=structured)
    return settings


def _log_format_option(func: Callable[P, T]) -> Callable[P, T]:
    return click.option(
        "--log-format",
        type=click.Choice(["kv", "json"]),
        default=None,
        help="Log lines as key=value pairs (default) or JSON objects (overrides log_format).",
    )(func)


def _configure_logging(settings: Settings, *, structured: bool = True) -> None:
    """Structured, redacted logs (see :mod:`mailqueue.logs`) for the long-running commands;
    one plain line per record for the others."""
    if structured:
        urls = [settings.queue, settings.store, settings.attachments, settings.sender]
        urls += [account.url for account in settings.senders]
        secrets = secrets_of_urls([url.get_secret_value() for url in urls] + [settings.worker.rate_store])
        secrets += [token.get_secret_value() for token in settings.api.tokens]
        if settings.bounces.secret is not None:
            secrets.append(settings.bounces.secret.get_secret_value())
        configure_logging(settings.log_level, settings.log_format, secrets=secrets)
    else:
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
            stream=sys.stderr,
        )
    # Alembic narrates every migration check at INFO; mailqueue logs what matters.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    # aiosmtpd (the bounce listener) logs every SMTP command at INFO; its warnings are enough
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, logging.getLogger().level))


def _run(
    coro: Coroutine[Any, Any, T], *, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
) -> T:
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(coro)
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from None
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    except MailQueueError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@_config_option
@click.version_option(__version__, prog_name="mailqueue")
def main(config: Path | None) -> None:
    """mailqueue: send e-mail asynchronously and reliably."""


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"(\d+)([smhdw])")


class _Duration(click.ParamType[timedelta]):
    """A positive duration such as ``30m``, ``24h``, ``7d`` or ``1h30m``."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        text = str(value).strip().lower()
        parts = _DURATION_PART.findall(text)
        seconds = sum(int(number) * _UNITS[unit] for number, unit in parts)
        if not parts or "".join(n + u for n, u in parts) != text or seconds <= 0:
            self.fail(f"{value!r} is not a duration such as 30m, 24h or 7d", param, ctx)
        return timedelta(seconds=seconds)
