"""The operator's commands on mail: ``send``, ``show``, ``resend``, ``sweep``, ``prune`` and ``plugins``."""

from __future__ import annotations

import email.utils
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import click

from mailqueue import registry
from mailqueue.cli._common import _config_option, _Duration, _run, _settings, main
from mailqueue.client import MailQueue
from mailqueue.errors import ValidationError
from mailqueue.message import Attachment, Mail, Recipient
from mailqueue.records import Status


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
@click.option("--recipient", help="Only mails to an address containing this text (any case).")
@click.option("--subject", help="Only mails whose subject contains this text (any case).")
@click.option("--code", type=click.IntRange(100, 599), help="Only mails whose last SMTP reply had this code.")
@click.option("--dry-run", is_flag=True, help="List what would be re-sent; change nothing.")
@click.pass_context
def resend(
    ctx: click.Context,
    config: Path | None,
    ids: tuple[str, ...],
    statuses: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    recipient: str | None,
    subject: str | None,
    code: int | None,
    dry_run: bool,
) -> None:
    """Queue failed (or chosen) mails again, keeping their Message-ID."""
    settings = _settings(ctx, config)

    async def go() -> int:
        async with MailQueue.from_settings(settings) as mq:
            chosen = [Status(s) for s in statuses] or None
            label = "selecting" if dry_run else "re-sending"
            with click.progressbar(length=0, label=label, file=sys.stderr) as bar:

                def tick(record: object) -> None:
                    bar.update(1)

                selected = await mq.resend(
                    ids=list(ids) or None,
                    statuses=chosen,
                    since=since,
                    until=until,
                    recipient=recipient,
                    subject=subject,
                    code=code,
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
    "--older-than",
    type=click.FloatRange(0),
    default=60.0,
    show_default=True,
    help="Only mails accepted at least this many seconds ago.",
)
@click.option(
    "--stale",
    type=click.Choice(["unknown", "resend"]),
    help="Also settle mails stuck 'sending' (their worker died): mark them unknown, or queue them again.",
)
@click.option(
    "--stale-after",
    type=click.FloatRange(0),
    help="Seconds a mail must have been 'sending' to count as stuck (default: 2 x worker.sending_lease).",
)
@click.option(
    "--attachments",
    "sweep_files",
    is_flag=True,
    help="Also delete attachments per retention.attachments_after and retention.orphans_after.",
)
@click.option(
    "--dry-run", is_flag=True, help="With --attachments: count what would be deleted, delete nothing."
)
@click.pass_context
def sweep(
    ctx: click.Context,
    config: Path | None,
    older_than: float,
    stale: Literal["unknown", "resend"] | None,
    stale_after: float | None,
    sweep_files: bool,
    dry_run: bool,
) -> None:
    """Publish the mails whose publish was not confirmed (accepted while the queue was down).

    Workers do this every worker.sweep_interval seconds; this runs it once.
    With --stale it also settles mails left 'sending' by a worker that died,
    with --attachments it applies the attachment retention rules.
    """
    settings = _settings(ctx, config)
    if stale_after is not None and stale is None:
        raise click.UsageError("--stale-after needs --stale unknown|resend")
    if dry_run and not sweep_files:
        raise click.UsageError("--dry-run needs --attachments")

    async def go() -> None:
        async with MailQueue.from_settings(settings) as mq:
            maintenance = mq.maintenance
            if not dry_run:
                count = await maintenance.sweep(older_than=older_than)
                click.echo(f"published {count} mail(s)", err=True)
            if stale is not None:
                after = stale_after if stale_after is not None else 2 * settings.worker.sending_lease
                count = await maintenance.sweep_stale(older_than=after, action=stale)
                verb = "marked unknown" if stale == "unknown" else "queued again"
                click.echo(f"{verb} {count} mail(s) stuck sending for {after:g} s or more", err=True)
            if sweep_files:
                keep = settings.retention
                swept = await maintenance.sweep_attachments(
                    attachments_after=keep.attachments_after,
                    orphans_after=keep.orphans_after,
                    dry_run=dry_run,
                )
                if not swept.supported:
                    raise click.ClickException("the attachment store cannot list its attachments")
                verb = "would delete" if dry_run else "deleted"
                click.echo(
                    f"{verb} {swept.finished} attachment(s) of finished mails and "
                    f"{swept.orphans} orphaned attachment(s)"
                    + (f", and {swept.incomplete} unfinished upload(s)" if swept.incomplete else ""),
                    err=True,
                )

    _run(go())


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
        click.echo(f"message-id: {record.mail.message_id or '(none yet: given when it is re-sent)'}")
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


@main.command()
@_config_option
@click.option("--soft", "mode", flag_value="soft", help="Set is_deleted=1 (hidden from lists and re-send).")
@click.option("--hard", "mode", flag_value="hard", help="Delete the rows, their attempts and attachments.")
@click.option(
    "--older-than",
    type=_Duration(),
    required=True,
    help="Only mails accepted and last changed longer ago than this, e.g. 30d.",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    callback=lambda ctx, param, values: _statuses(values),
    help="Only mails in this status (repeatable or comma separated; default: sent,failed,dead,unknown).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be pruned; change nothing.")
@click.option(
    "--page-size",
    type=click.IntRange(1, 10000),
    default=500,
    show_default=True,
    help="Records per query and per delete transaction.",
)
@click.pass_context
def prune(
    ctx: click.Context,
    config: Path | None,
    mode: str | None,
    older_than: timedelta,
    statuses: tuple[Status, ...],
    dry_run: bool,
    page_size: int,
) -> None:
    """Soft-delete or delete old finished mails. Mails queued, sending or retrying are never pruned."""
    if mode is None:
        raise click.UsageError("say --soft or --hard")
    settings = _settings(ctx, config)
    chosen = list(statuses) or None

    async def go() -> int:
        async with MailQueue.from_settings(settings) as mq:
            return await mq.maintenance.prune(
                older_than=older_than.total_seconds(),
                hard=mode == "hard",
                statuses=chosen,
                dry_run=dry_run,
                page=page_size,
            )

    count = _run(go())
    verb = {"soft": "soft-deleted", "hard": "deleted"}[mode]
    click.echo(f"{'would be ' + verb if dry_run else verb} {count} mail(s)")


def _statuses(values: tuple[str, ...]) -> tuple[Status, ...]:
    chosen = []
    for value in values:
        for name in filter(None, (part.strip().lower() for part in value.split(","))):
            try:
                chosen.append(Status(name))
            except ValueError:
                known = ", ".join(s.value for s in Status)
                raise click.BadParameter(
                    f"{name!r} is not a status ({known})", param_hint="--status"
                ) from None
    return tuple(chosen)


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
