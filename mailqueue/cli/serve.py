"""The long-running commands: ``worker``, ``serve`` and ``api`` (the HTTP service under uvicorn).

:func:`asgi_app` is the API as an app factory for any ASGI server; it is
exported as ``mailqueue.cli:asgi_app``, the name the documentation gives and
``api --workers N`` hands to uvicorn.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import math
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import click

from mailqueue import metrics
from mailqueue.cli._common import (
    P,
    T,
    _config_option,
    _config_path,
    _configure_logging,
    _log_format_option,
    _run,
    _settings,
    main,
)
from mailqueue.client import MailQueue
from mailqueue.errors import ConfigurationError, MissingDependencyError
from mailqueue.settings import Settings, load_settings

# the name the log lines have always carried
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
