"""``status``: the queue summarized for the on-call engineer (see :mod:`mailqueue.reports`)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import click

from mailqueue.cli._common import _config_option, _Duration, _run, _settings, main
from mailqueue.client import MailQueue
from mailqueue.errors import BackendError
from mailqueue.protocols import Queue
from mailqueue.records import utcnow
from mailqueue.reports import StatusReport, collect_status, render_status


async def _open_queue(queue: Queue) -> str | None:
    try:
        await queue.open()
    except BackendError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@main.command()
@_config_option
@click.option(
    "--since",
    "window",
    type=_Duration(),
    default="24h",
    show_default=True,
    help="Count finished mails and failures accepted this long ago or later (30m, 24h, 7d).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (stable keys) for scripts.")
@click.pass_context
def status(ctx: click.Context, config: Path | None, window: timedelta, as_json: bool) -> None:
    """Summarize the queue for the on-call engineer.

    Prints the oldest queued/retrying mail and its age, the queue depth (when
    the queue can tell), the count of mails in each status and the recent
    failures (failed, dead, unknown) grouped by SMTP code and error, newest
    first. Waiting mails (queued, sending, retrying) are counted however old
    they are; finished ones (sent, failed, dead, unknown) and the failures only
    if accepted within --since. Deleted mails are left out.

    Exit code 0 when the store and the queue answered; 1 when the store did
    not (nothing is printed but the error) or the queue did not (the report
    is printed with the queue as unreachable); 2 for bad usage or settings.
    """
    settings = _settings(ctx, config)

    async def go() -> StatusReport:
        mq = MailQueue.from_settings(settings)
        # Only the store and the queue: a store failure is fatal, a queue failure is reported.
        async with mq.store:
            queue_error = await _open_queue(mq.queue)
            try:
                now = utcnow()
                report = await collect_status(
                    mq.store, None if queue_error else mq.queue, since=now - window, now=now
                )
            finally:
                await mq.queue.close()
        return report if queue_error is None else replace(report, queue_error=queue_error)

    report = _run(go())
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for line in render_status(report):
            click.echo(line)
    if not report.ok:
        ctx.exit(1)
