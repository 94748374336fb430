"""``mailqueue bounces``: the bounce and complaint listener on its own."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import click

from mailqueue.cli._common import _config_option, _log_format_option, _run, _settings, main
from mailqueue.client import MailQueue
from mailqueue.errors import ConfigurationError, MissingDependencyError
from mailqueue.settings import Settings

logger = logging.getLogger("mailqueue.cli")


@main.command()
@_config_option
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Listen here (default: bounces.listen, else 127.0.0.1:2526).",
)
@_log_format_option
@click.pass_context
def bounces(ctx: click.Context, config: Path | None, listen: str | None, log_format: str | None) -> None:
    """Receive bounces and complaints for bounces.domain over SMTP until SIGTERM/SIGINT.

    Point the MX of bounces.domain (or a transport map of the MTA in front) here.
    Every DSN and feedback report is recorded on the mail and recipient its VERP
    return path names; see docs/deliverability.md.
    """
    settings = _settings(ctx, config, log_format=log_format, structured=True)
    try:
        from mailqueue.bounces import listener  # noqa: F401
    except MissingDependencyError as exc:
        raise click.UsageError(str(exc)) from None
    _run(run_bounces(settings, listen=listen))


async def run_bounces(settings: Settings, *, listen: str | None = None) -> None:
    """Open the Store of ``settings`` and run the bounce listener until a signal arrives.

    Raises:
        ConfigurationError: ``bounces.domain`` is not set or the address is not ``host:port``.
    """
    from mailqueue.bounces.listener import listener_from_settings

    if not settings.bounces.domain:
        raise ConfigurationError("mailqueue bounces needs the setting bounces.domain")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with MailQueue.from_settings(settings) as mq:
        server = listener_from_settings(settings, mq.store, listen=listen)
        try:
            await server.start()
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {server.host}:{server.port}: {exc}") from None
        try:
            await stop.wait()
        finally:
            logger.info("stopping the bounce listener")
            await server.stop()
