"""``suppress``: the suppression list (``add``, ``remove``, ``list``, ``import``, ``export``).

Every subcommand opens only the Store and goes through
:attr:`MailQueue.suppressions <mailqueue.MailQueue.suppressions>`.

The CSV format (``export`` writes it, ``import`` reads it): a header row, then
one entry per row; columns ``address,reason,expires_at`` (``reason`` empty:
``manual``; ``expires_at`` ISO 8601, empty: never, naive: UTC), and optionally
``created_at,mail_id,text`` as ``export`` writes them, so that an export can
be imported elsewhere. ``import`` is all-or-nothing on validation: it checks
every row first and, if one is bad, lists the bad rows by line number and
imports nothing (exit 1). The rows are then written one by one; should the
Store fail half-way, running the same import again is safe (an add replaces).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import click

from mailqueue.cli._common import _config_option, _Duration, _run, _settings, main
from mailqueue.client import MailQueue
from mailqueue.records import utcnow
from mailqueue.suppression import (
    MAX_PAGE,
    Suppression,
    SuppressionQuery,
    SuppressionReason,
    make_entry,
    normalize_address,
)

#: The columns ``export`` writes, in order; ``import`` needs ``address`` and takes any of them.
COLUMNS = ("address", "reason", "expires_at", "created_at", "mail_id", "text")
#: Most bad rows ``import`` lists.
MAX_ERRORS_SHOWN = 50

_REASONS = click.Choice([r.value for r in SuppressionReason])


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _mailqueue(ctx: click.Context, config: Path | None) -> MailQueue:
    return MailQueue.from_settings(_settings(ctx, config))


@main.group()
def suppress() -> None:
    """Manage the suppression list: addresses mail is not sent to.

    Removing an address lets later mails through; mails that ended with it
    suppressed are not re-sent (`mailqueue resend` can).
    """


@suppress.command("add")
@_config_option
@click.argument("address")
@click.option("--reason", type=_REASONS, default="manual", show_default=True)
@click.option("--expires-at", "expires_at", help="ISO 8601 time the entry ends (UTC when no zone).")
@click.option("--for", "duration", type=_Duration(), help="Or: how long the entry lasts (30m, 24h, 90d).")
@click.pass_context
def add(
    ctx: click.Context,
    config: Path | None,
    address: str,
    reason: str,
    expires_at: str | None,
    duration: timedelta | None,
) -> None:
    """Suppress ADDRESS (an entry it has is replaced)."""
    if expires_at is not None and duration is not None:
        raise click.UsageError("give --expires-at or --for, not both")
    when: datetime | None = None
    if expires_at is not None:
        try:
            when = _parse_time(expires_at)
        except ValueError:
            raise click.BadParameter(
                f"{expires_at!r} is not an ISO 8601 time", param_hint="--expires-at"
            ) from None
    elif duration is not None:
        when = utcnow() + duration
    try:
        entry = make_entry(address, reason, expires_at=when)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    mq = _mailqueue(ctx, config)

    async def go() -> Suppression:
        async with mq.store:
            return await mq.suppressions.add(entry.address, entry.reason, expires_at=entry.expires_at)

    stored = _run(go())
    until = stored.expires_at.isoformat() if stored.expires_at else "for ever"
    click.echo(f"suppressed {stored.address} ({stored.reason}) until {until}")


@suppress.command("remove")
@_config_option
@click.argument("address")
@click.pass_context
def remove(ctx: click.Context, config: Path | None, address: str) -> None:
    """Take ADDRESS off the list (exit 1 if it was not on it). Later mails to it are sent;
    old ones are not re-sent (`mailqueue resend` can)."""
    try:
        normal = normalize_address(address)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="ADDRESS") from None
    mq = _mailqueue(ctx, config)

    async def go() -> bool:
        async with mq.store:
            return await mq.suppressions.remove(normal)

    if not _run(go()):
        click.echo(f"{normal} is not on the suppression list", err=True)
        ctx.exit(1)
    click.echo(f"removed {normal}")


@suppress.command("list")
@_config_option
@click.option("--address", help="Only addresses containing this text (any case), e.g. @example.com.")
@click.option("--reason", type=_REASONS, help="Only entries of this reason.")
@click.option("--limit", type=click.IntRange(1, MAX_PAGE), default=100, show_default=True)
@click.option("--page", type=click.IntRange(1), default=1, show_default=True)
@click.pass_context
def list_(
    ctx: click.Context, config: Path | None, address: str | None, reason: str | None, limit: int, page: int
) -> None:
    """List entries, newest first: address, reason, added, expires, mail id."""
    query = SuppressionQuery(
        address=address,
        reason=SuppressionReason(reason) if reason else None,
        limit=limit,
        offset=(page - 1) * limit,
    )
    mq = _mailqueue(ctx, config)

    async def go() -> tuple[list[Suppression], int]:
        async with mq.store:
            return await mq.suppressions.list(query), await mq.suppressions.count(query)

    entries, total = _run(go())
    now = utcnow()
    for e in entries:
        expires = e.expires_at.isoformat(timespec="seconds") if e.expires_at else "never"
        if not e.active(now):
            expires += " (expired)"
        added = e.created_at.isoformat(timespec="seconds")
        click.echo(f"{e.address}\t{e.reason}\t{added}\t{expires}\t{e.mail_id or '-'}")
    click.echo(f"{len(entries)} of {total} entr{'y' if total == 1 else 'ies'}", err=True)


def _rows(stream: IO[str]) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(stream)
    fields = reader.fieldnames or []
    unknown = [name for name in fields if name not in COLUMNS]
    if "address" not in fields or unknown:
        raise click.ClickException(
            f"the CSV header must name an 'address' column and only these: {', '.join(COLUMNS)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    for row in reader:
        if None in row:
            raise click.ClickException(f"line {reader.line_num}: more values than columns")
        yield reader.line_num, {k: (v or "").strip() for k, v in row.items()}


def _entry(row: dict[str, str]) -> Suppression:
    times: dict[str, datetime | None] = {}
    for name in ("expires_at", "created_at"):
        value = row.get(name, "")
        try:
            times[name] = _parse_time(value) if value else None
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not an ISO 8601 time") from None
    if times["expires_at"] is not None and times["expires_at"] <= utcnow():
        raise ValueError(f"expires_at: {row['expires_at']} is not in the future")
    return make_entry(
        row["address"],
        row.get("reason") or SuppressionReason.MANUAL.value,
        mail_id=row.get("mail_id") or None,
        text=row.get("text", ""),
        expires_at=times["expires_at"],
        created_at=times["created_at"],
    )


@suppress.command("import")
@_config_option
@click.argument("file", type=click.File("r", encoding="utf-8-sig"))
@click.option("--dry-run", is_flag=True, help="Check the file and report; import nothing.")
@click.pass_context
def import_(ctx: click.Context, config: Path | None, file: IO[str], dry_run: bool) -> None:
    """Import FILE (CSV: address,reason,expires_at[,created_at,mail_id,text]; `-` for stdin).

    Every row is checked first: if any is bad, the bad rows are listed by line
    number and nothing is imported (exit 1). An address already on the list
    gets the row's entry; an address twice in the file, the later row's.
    """
    entries: dict[str, Suppression] = {}
    errors: list[str] = []
    repeated = 0
    try:
        rows = list(_rows(file))
    except csv.Error as exc:
        raise click.ClickException(f"not a CSV file: {exc}") from None
    for line, row in rows:
        try:
            entry = _entry(row)
        except ValueError as exc:
            errors.append(f"line {line}: {exc}")
            continue
        repeated += entry.address in entries
        entries[entry.address] = entry
    if errors:
        for message in errors[:MAX_ERRORS_SHOWN]:
            click.echo(message, err=True)
        more = len(errors) - MAX_ERRORS_SHOWN
        if more > 0:
            click.echo(f"... and {more} more", err=True)
        raise click.ClickException(f"{len(errors)} bad row(s) of {len(rows)}: nothing imported")
    mq = _mailqueue(ctx, config)

    async def go() -> tuple[int, int]:
        async with mq.store:
            listed = await mq.suppressions.check(entries) if entries else {}
            if not dry_run:
                await mq.suppressions.add_many(list(entries.values()))
            return len(entries), len(listed)

    count, replaced = _run(go())
    verb = "would import" if dry_run else "imported"
    click.echo(
        f"{verb} {count} address(es) from {len(rows)} row(s): {count - replaced} new, "
        f"{replaced} already suppressed (replaced), {repeated} repeated in the file"
    )


@suppress.command("export")
@_config_option
@click.option("--all", "include_expired", is_flag=True, help="Expired entries too (they cannot be imported).")
@click.pass_context
def export(ctx: click.Context, config: Path | None, include_expired: bool) -> None:
    """Write the list to stdout as CSV (address,reason,expires_at,created_at,mail_id,text),
    newest first: what `import` reads."""
    mq = _mailqueue(ctx, config)
    writer = csv.writer(sys.stdout, lineterminator="\n")

    async def go() -> int:
        written = 0
        async with mq.store:
            writer.writerow(COLUMNS)
            while True:
                query = SuppressionQuery(active_only=not include_expired, limit=MAX_PAGE, offset=written)
                page = await mq.suppressions.list(query)
                for e in page:
                    writer.writerow(
                        [
                            e.address,
                            e.reason.value,
                            e.expires_at.isoformat() if e.expires_at else "",
                            e.created_at.isoformat(),
                            e.mail_id or "",
                            e.text,
                        ]
                    )
                written += len(page)
                if len(page) < MAX_PAGE:
                    return written

    count = _run(go())
    click.echo(f"exported {count} entr{'y' if count == 1 else 'ies'}", err=True)
