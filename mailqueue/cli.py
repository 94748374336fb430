"""The ``mailqueue`` command.

Every command takes ``--config FILE`` (or ``MAILQUEUE_CONFIG``); settings
then come from that YAML file and ``MAILQUEUE_*`` environment variables.
Exit codes: 0 success, 1 an operation failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from click.core import ParameterSource

from mailqueue import registry
from mailqueue.client import MailQueue
from mailqueue.errors import ConfigurationError, MailQueueError, ValidationError
from mailqueue.message import Attachment, Mail, Recipient
from mailqueue.protocols import BackendContext
from mailqueue.records import Status
from mailqueue.settings import Settings, load_settings

__all__ = ["main"]

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


def _settings(ctx: click.Context, config: Path | None) -> Settings:
    config = _config_path(ctx, config)
    try:
        settings = load_settings(config)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # Alembic narrates every migration check at INFO; mailqueue logs what matters.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    return settings


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from None
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    except MailQueueError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@_config_option
@click.version_option(package_name="mailqueue")
def main(config: Path | None) -> None:
    """mailqueue: send e-mail asynchronously and reliably."""


@main.command()
@_config_option
@click.option("--concurrency", type=click.IntRange(1, 1000), help="Override worker.concurrency.")
@click.pass_context
def worker(ctx: click.Context, config: Path | None, concurrency: int | None) -> None:
    """Consume the queue and deliver mail until SIGTERM/SIGINT.

    On a signal it stops taking mail, lets sends in flight finish and gives
    the rest back to the queue: stopping loses nothing.
    """
    settings = _settings(ctx, config)
    if concurrency is not None:
        settings = settings.model_copy(
            update={"worker": settings.worker.model_copy(update={"concurrency": concurrency})}
        )
    _run(run_worker(settings))


async def run_worker(settings: Settings, *, install_signal_handlers: bool = True) -> None:
    """Open the backends of ``settings`` and run a worker until a signal arrives."""
    from mailqueue.worker import Worker

    mq = MailQueue.from_settings(settings)
    sender = registry.create_sender(
        settings.sender.get_secret_value(), context=BackendContext(store=mq.store)
    )
    async with mq, sender:
        work = Worker(
            queue=mq.queue,
            store=mq.store,
            attachments=mq.attachments,
            sender=sender,
            settings=settings.worker,
        )
        if install_signal_handlers:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, work.stop)
        await work.run()


class _Time(click.ParamType[datetime]):
    """An ISO 8601 time; UTC when it has no zone."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time such as 2026-11-28T10:00", param, ctx)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


@main.command()
@_config_option
@click.option("--id", "ids", multiple=True, help="Re-send this mail id (repeatable).")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in Status]),
    help="Re-send mails in this status (repeatable; default: failed and dead).",
)
@click.option(
    "--since", type=_Time(), help="Only mails accepted at or after this time (ISO 8601, UTC if no zone)."
)
@click.option("--until", type=_Time(), help="Only mails accepted before this time.")
@click.option("--dry-run", is_flag=True, help="List what would be re-sent; change nothing.")
@click.pass_context
def resend(
    ctx: click.Context,
    config: Path | None,
    ids: tuple[str, ...],
    statuses: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    dry_run: bool,
) -> None:
    """Queue failed (or chosen) mails again, keeping their Message-ID."""
    settings = _settings(ctx, config)

    async def go() -> int:
        async with MailQueue.from_settings(settings) as mq:
            chosen = [Status(s) for s in statuses] or None
            with click.progressbar(length=0, label="re-sending", file=sys.stderr) as bar:

                def tick(record: object) -> None:
                    bar.update(1)

                selected = await mq.resend(
                    ids=list(ids) or None,
                    statuses=chosen,
                    since=since,
                    until=until,
                    dry_run=dry_run,
                    progress=tick,
                )
            for record in selected:
                click.echo(f"{record.id}\t{record.status}\t{record.mail.subject}")
            return len(selected)

    count = _run(go())
    verb = "would re-send" if dry_run else "re-sent"
    click.echo(f"{verb} {count} mail(s)", err=True)


@main.command()
@_config_option
@click.option(
    "--to", "to", multiple=True, required=True, help="Recipient address, or 'Name <addr>' (repeatable)."
)
@click.option("--cc", multiple=True, help="Cc recipient (repeatable).")
@click.option("--bcc", multiple=True, help="Bcc recipient (repeatable).")
@click.option("--subject", required=True, help="Subject line.")
@click.option("--html", help="HTML body.")
@click.option("--html-file", type=click.File("r", encoding="utf-8"), help="Read the HTML body from a file.")
@click.option("--text", help="Optional plain-text body.")
@click.option("--sender-name", default="", help="Display name of the sender.")
@click.option(
    "--attach", "attach", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--idempotency-key", help="Submitting again with the same key sends nothing new.")
@click.pass_context
def send(
    ctx: click.Context,
    config: Path | None,
    to: tuple[str, ...],
    cc: tuple[str, ...],
    bcc: tuple[str, ...],
    subject: str,
    html: str | None,
    html_file: Any,
    text: str | None,
    sender_name: str,
    attach: tuple[Path, ...],
    idempotency_key: str | None,
) -> None:
    """Submit one mail (with files attached) and print its id."""
    settings = _settings(ctx, config)
    body = html_file.read() if html_file is not None else html
    if not body:
        raise click.UsageError("give the body with --html or --html-file")
    try:
        mail = Mail(
            subject=subject,
            html=body,
            text=text,
            sender_name=sender_name,
            to=_recipients("to", to),
            cc=_recipients("cc", cc),
            bcc=_recipients("bcc", bcc),
        )
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from None
    files = [Attachment(path.name, path, _guess_type(path)) for path in attach]

    async def go() -> str:
        async with MailQueue.from_settings(settings) as mq:
            record = await mq.submit(mail, files, idempotency_key=idempotency_key)
            return record.id

    click.echo(_run(go()))


@main.command()
@_config_option
@click.argument("mail_id")
@click.pass_context
def show(ctx: click.Context, config: Path | None, mail_id: str) -> None:
    """Show one mail's status, recipients and attempts."""
    settings = _settings(ctx, config)

    async def go() -> None:
        async with MailQueue.from_settings(settings) as mq:
            record = await mq.status(mail_id)
        if record is None:
            raise click.ClickException(f"no mail with id {mail_id!r}")
        click.echo(f"id:         {record.id}")
        click.echo(f"status:     {record.status}")
        click.echo(f"subject:    {record.mail.subject}")
        click.echo(f"created:    {record.created_at.isoformat()}")
        click.echo(f"attempts:   {record.attempts}")
        if record.remark:
            click.echo(f"remark:     {record.remark}")
        if record.last_error:
            click.echo(f"last error: {record.last_error}")
        for r in record.recipients:
            click.echo(f"  {r.address:<40} {r.state:<8} {r.code or ''} {r.reply}")
        for a in record.history:
            click.echo(
                f"  attempt {a.number} {a.finished_at.isoformat()} {a.outcome} {a.code or ''} {a.reply}"
            )

    _run(go())


@main.group()
def db() -> None:
    """Manage the SQL store's schema."""


@db.command()
@_config_option
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def upgrade(ctx: click.Context, config: Path | None, revision: str) -> None:
    """Create or migrate the tables (adopts an original `email` table by adding columns)."""
    settings = _settings(ctx, config)
    from mailqueue.stores import sql

    url = settings.store.get_secret_value()
    try:
        registry.create_store(url)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    _run(sql.upgrade(url, revision))
    current = _run(sql.current(url))
    click.echo(f"database is at revision {current}")


@main.command()
def plugins() -> None:
    """List every backend scheme and the distribution that provides it."""
    rows = registry.available()
    width = max((len(r.scheme) for r in rows), default=6)
    for row in rows:
        group = row.group.removeprefix("mailqueue.")
        click.echo(f"{group:<18} {row.scheme:<{width}}  {row.value}  ({row.distribution or '?'})")


# Only splits "Name <address>" from a bare address; email-validator (in Recipient) judges the address.
_NAME_ADDR = re.compile(r"\s*(?:(?P<name>[^<>]*?)\s*<(?P<angle>[^<>]*)>|(?P<bare>[^<>\s,;]+))\s*")


def _recipient(value: str) -> Recipient:
    match = _NAME_ADDR.fullmatch(value)
    if match is None:
        raise ValidationError([("address", "expected one address, or 'Name <address>'")])
    address = match["angle"] if match["bare"] is None else match["bare"]
    return Recipient(address=address, name=email.utils.unquote(match["name"] or ""))


def _recipients(option: str, values: tuple[str, ...]) -> list[Recipient]:
    recipients = []
    for value in values:
        try:
            recipients.append(_recipient(value))
        except ValidationError as exc:
            raise click.BadParameter(f"{value!r}: {exc.reason}", param_hint=f"'--{option}'") from None
    return recipients


def _guess_type(path: Path) -> str:
    import mimetypes

    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"
