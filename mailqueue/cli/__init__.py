"""The ``mailqueue`` command.

Every command takes ``--config FILE`` (or ``MAILQUEUE_CONFIG``); settings
then come from that YAML file and ``MAILQUEUE_*`` environment variables.
Exit codes: 0 success, 1 an operation failed, 2 bad usage or configuration.

``serve`` (API and worker in one process) and ``api`` (the API alone) run
the Litestar app of :mod:`mailqueue.contrib.litestar_app` under uvicorn
(uvloop and httptools when installed); :func:`asgi_app` is the same app as
a factory for any ASGI server (``uvicorn --factory mailqueue.cli:asgi_app``).
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib.util
import json
import logging
import math
import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, Literal

import click

from mailqueue import metrics, registry
from mailqueue.cli._common import (
    P,
    T,
    _config_option,
    _config_path,
    _configure_logging,
    _Duration,
    _log_format_option,
    _run,
    _settings,
    main,
)
from mailqueue.client import MailQueue
from mailqueue.errors import (
    BackendError,
    ConfigurationError,
    MissingDependencyError,
    ValidationError,
)
from mailqueue.message import Attachment, Mail, Recipient
from mailqueue.protocols import Queue
from mailqueue.records import Status, utcnow
from mailqueue.reports import StatusReport, collect_status, render_status
from mailqueue.settings import Settings, load_settings

__all__ = ["asgi_app", "main"]

logger = logging.getLogger("mailqueue.cli")


def _fast_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop factory when uvloop is installed (``mailqueue[speedups]``), else None."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@main.command()
@_config_option
@click.option("--concurrency", type=click.IntRange(1, 1000), help="Override worker.concurrency.")
@_log_format_option
@click.pass_context
def worker(ctx: click.Context, config: Path | None, concurrency: int | None, log_format: str | None) -> None:
    """Consume the queue and deliver mail until SIGTERM/SIGINT.

    On a signal it stops taking mail, lets sends in flight finish and gives
    the rest back to the queue: stopping loses nothing.
    """
    settings = _settings(ctx, config, log_format=log_format, structured=True)
    if concurrency is not None:
        settings = settings.model_copy(
            update={"worker": settings.worker.model_copy(update={"concurrency": concurrency})}
        )
    # The worker spends much of its time in the event loop: uvloop's is faster.
    _run(run_worker(settings), loop_factory=_fast_loop())


async def run_worker(settings: Settings, *, install_signal_handlers: bool = True) -> None:
    """Open the backends of ``settings`` and run a worker until a signal arrives."""
    from mailqueue.worker import Worker

    logger.info("event loop: %s", type(asyncio.get_running_loop()).__module__.split(".")[0])
    mq = MailQueue.from_settings(settings)
    work = Worker.from_settings(settings, mq)
    async with mq, work.sender:
        if install_signal_handlers:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, work.stop)
        server = None
        if settings.worker.metrics_port:
            server = metrics.MetricsServer(
                settings.worker.metrics_host,
                settings.worker.metrics_port,
                ready=work.check_ready,
                before_scrape=lambda: metrics.refresh_queue_gauges(mq.queue, mq.store),
            )
            await server.start()
        try:
            await work.run()
        finally:
            if server is not None:
                await server.close()


# --- the HTTP service -----------------------------------------------------------


class _Refused(click.ClickException):
    """A configuration the service refuses to run with (exit code 2, without the usage text)."""

    exit_code = 2


def _host_option(func: Callable[P, T]) -> Callable[P, T]:
    return click.option(
        "--host", help="Listen on this address (default: api.host, 127.0.0.1). Needs a token unless loopback."
    )(func)


def _port_option(func: Callable[P, T]) -> Callable[P, T]:
    return click.option(
        "--port", type=click.IntRange(0, 65535), help="Listen on this port (default: api.port, 8100)."
    )(func)


def _access_log_option(func: Callable[P, T]) -> Callable[P, T]:
    return click.option(
        "--access-log/--no-access-log",
        default=False,
        show_default=True,
        help="Log every HTTP request (uvicorn's access log).",
    )(func)


@main.command()
@_config_option
@_host_option
@_port_option
@_access_log_option
@_log_format_option
@click.pass_context
def serve(
    ctx: click.Context,
    config: Path | None,
    host: str | None,
    port: int | None,
    access_log: bool,
    log_format: str | None,
) -> None:
    """Run the HTTP API and a worker in one process until SIGTERM/SIGINT.

    With no settings at all this is the embedded default on
    http://127.0.0.1:8100: SQLite in ./mailqueue.db, attachments in
    ./attachments, mail written as .eml files into ./outbox. On a signal it
    stops accepting, lets requests and sends in flight finish, and exits 0.
    """
    _run_service(
        ctx, config, host, port, worker=True, workers=1, access_log=access_log, log_format=log_format
    )


@main.command()
@_config_option
@_host_option
@_port_option
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="API processes sharing the port (uvicorn's supervisor restarts one that dies).",
)
@_access_log_option
@_log_format_option
@click.pass_context
def api(
    ctx: click.Context,
    config: Path | None,
    host: str | None,
    port: int | None,
    workers: int,
    access_log: bool,
    log_format: str | None,
) -> None:
    """Run the HTTP API alone (no worker) until SIGTERM/SIGINT.

    Mail is accepted, recorded and queued; run `mailqueue worker` (here or
    elsewhere, on the same store and queue) to deliver it. The worker may be
    stopped at any time, e.g. to change the SMTP password: the API keeps
    accepting and nothing is lost.
    """
    _run_service(
        ctx,
        config,
        host,
        port,
        worker=False,
        workers=workers,
        access_log=access_log,
        log_format=log_format,
    )


def asgi_app() -> Any:
    """The HTTP API (without a worker) as an ASGI app, for an ASGI server's app factory.

    Settings come from the YAML file named by ``MAILQUEUE_CONFIG`` (if set)
    and the ``MAILQUEUE_*`` environment variables. ``mailqueue api
    --workers N`` starts its processes with it; other servers can too::

        uvicorn --factory mailqueue.cli:asgi_app --host 127.0.0.1 --port 8100

    A server started this way does not check the listening address: keep it
    on loopback or configure ``api.tokens``.

    Returns:
        A Litestar app.

    Raises:
        ConfigurationError: the settings or a backend URL cannot be used.
    """
    settings = load_settings(os.environ.get("MAILQUEUE_CONFIG") or None)
    _configure_logging(settings)
    return _service_module().create_app(settings, worker=False)


def _service_module() -> ModuleType:
    try:
        import uvicorn  # noqa: F401

        from mailqueue.contrib import litestar_app
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "litestar", "litestar") from None
    return litestar_app


def _run_service(
    ctx: click.Context,
    config: Path | None,
    host: str | None,
    port: int | None,
    *,
    worker: bool,
    workers: int,
    access_log: bool,
    log_format: str | None = None,
) -> None:
    settings = _settings(ctx, config, log_format=log_format, structured=True)
    try:
        service = _service_module()
    except MissingDependencyError as exc:
        raise _Refused(str(exc)) from None
    host = settings.api.host if host is None else host
    port = settings.api.port if port is None else port
    try:
        service.check_bind_allowed(host, settings)
    except ConfigurationError as exc:
        raise _Refused(str(exc)) from None
    sock = _bind(host, port)
    try:
        # Open the backends once before serving: a bad URL or an unreachable database is reported
        # here, and the SQL store is migrated once rather than by every API process at the same time.
        _run(_check_backends(settings))
        options = _uvicorn_options(settings, access_log=access_log)
        app = None
        if workers == 1:
            try:
                app = service.create_app(settings, worker=worker, host=host)
            except ConfigurationError as exc:
                raise click.UsageError(str(exc)) from None
        bound_port = sock.getsockname()[1]
        where = f"http://{f'[{host}]' if ':' in host else host}:{bound_port}"
        what = (
            "the API and a worker" if worker else f"the API ({workers} process{'es' if workers > 1 else ''})"
        )
        logger.info("serving %s on %s (POST /api/email/send; OpenAPI at /schema)", what, where)
        if app is not None:
            _serve_in_process(app, sock, options)
        else:
            path = _config_path(ctx, config)
            if path is not None:
                # the worker processes find the settings file (and the environment) on their own
                os.environ["MAILQUEUE_CONFIG"] = str(path.resolve())
            if log_format:
                os.environ["MAILQUEUE_LOG_FORMAT"] = log_format
            # the API processes decide on the dashboard (api.ui) by the address actually listened on
            os.environ["MAILQUEUE_API__HOST"] = host
            _serve_in_processes(workers, sock, options)
    finally:
        sock.close()


async def _check_backends(settings: Settings) -> None:
    async with MailQueue.from_settings(settings):
        pass


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _uvicorn_options(settings: Settings, *, access_log: bool) -> dict[str, Any]:
    level = logging.getLevelName(settings.log_level.upper())
    return {
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "ws": "none",
        "lifespan": "on",
        "log_level": level if isinstance(level, int) else logging.INFO,
        "access_log": access_log,
        # uvicorn's loggers go through mailqueue's handler (format, redaction)
        "log_config": None,
        # requests in flight get as long as sends in flight (worker.shutdown_timeout)
        "timeout_graceful_shutdown": math.ceil(settings.worker.shutdown_timeout),
        # longer than the clients' idle timeouts (uvicorn's own 5 s equals httpx's default: a
        # client reusing a connection as the server closes it got a ReadError on a POST)
        "timeout_keep_alive": settings.api.keep_alive_timeout,
    }


def _serve_in_process(app: Any, sock: socket.socket, options: dict[str, Any]) -> None:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, **options))

    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    # uvicorn handles SIGTERM/SIGINT while it runs and raises the signal again once it has shut
    # down gracefully; this handler takes that one, so a clean stop exits 0 instead of dying by it.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise click.ClickException("the server did not start; see the log above") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve_in_processes(workers: int, sock: socket.socket, options: dict[str, Any]) -> None:
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config("mailqueue.cli:asgi_app", factory=True, workers=workers, **options)
    supervisor = Multiprocess(config, sockets=[sock])
    supervisor.run()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        raise click.ClickException("an API process did not start; see the log above")


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
            with click.progressbar(length=0, label="re-sending", file=sys.stderr) as bar:

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


# --- status -------------------------------------------------------------------------


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
    from mailqueue.sql import migrate

    url = settings.store.get_secret_value()
    try:
        registry.create_store(url)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    _run(migrate.upgrade(url, revision))
    current = _run(migrate.current(url))
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
