"""``db``: the SQL store's schema (``db upgrade``)."""

from __future__ import annotations

from pathlib import Path

import click

from mailqueue import registry
from mailqueue.cli._common import _config_option, _log_format_option, _run, _settings, main
from mailqueue.errors import ConfigurationError


@main.group()
def db() -> None:
    """Manage the SQL store's schema."""


@db.command()
@_config_option
@click.option("--revision", default="head", show_default=True)
@_log_format_option
@click.pass_context
def upgrade(ctx: click.Context, config: Path | None, revision: str, log_format: str | None) -> None:
    """Create or migrate the tables (adopts an original `email` table by adding columns)."""
    # A deployment's first step, run before the API and the worker: its lines go
    # where theirs go, so they are in the same format.
    settings = _settings(ctx, config, log_format=log_format, structured=True)
    from mailqueue.sql import migrate

    url = settings.store.get_secret_value()
    try:
        registry.create_store(url)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    _run(migrate.upgrade(url, revision))
    current = _run(migrate.current(url))
    click.echo(f"database is at revision {current}")
