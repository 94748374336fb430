"""The Litestar plugin that gives an app its MailQueue.

It registers the ``mailqueue`` and ``mailqueue_settings`` dependencies and a
lifespan that opens the backends at startup and closes them at shutdown;
with ``worker=True`` the lifespan also runs a :class:`mailqueue.Worker` in
the background and stops it gracefully (in-flight sends finish or are
released for redelivery) before the backends close, and, when
``bounces.listen`` is set, the bounce listener
(:mod:`mailqueue.bounces.listener`) next to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.plugins import InitPluginProtocol

from mailqueue import BackendContext, MailQueue, Sender, Settings, Worker, health

if TYPE_CHECKING:
    from mailqueue.bounces.listener import BounceListener
    from mailqueue.sending.pipeline import SendingChain

__all__ = ["MailQueuePlugin"]

logger = logging.getLogger("mailqueue.api")


class MailQueuePlugin(InitPluginProtocol):
    """Provide a MailQueue to route handlers and manage its life.

    Args:
        settings: where the backends are and the API's limits.
        mailqueue: a MailQueue to use instead of one built from ``settings``.
            The app opens it at startup if it is not open yet, and leaves it
            open at shutdown: whoever built it closes it. One built from the
            settings is opened and closed by the app.
        worker: also run a Worker, sending through ``settings.sender``, and the bounce
            listener when ``bounces.listen`` is set.

    Raises:
        ConfigurationError: a backend URL in ``settings`` cannot be used, or
            ``bounces.listen`` is set without ``bounces.domain``.
    """

    def __init__(
        self, settings: Settings, *, mailqueue: MailQueue | None = None, worker: bool = False
    ) -> None:
        self.settings = settings
        self._owns_mailqueue = mailqueue is None
        self.mailqueue = mailqueue if mailqueue is not None else MailQueue.from_settings(settings)
        self.sender: Sender | None = None
        self._chain: SendingChain | None = None
        if worker:
            from mailqueue.sending.pipeline import build_sender

            self._chain = build_sender(settings, context=BackendContext(store=self.mailqueue.store))
            self.sender = self._chain.sender
        self.bounce_listener: BounceListener | None = None
        if worker and settings.bounces.listen:
            from mailqueue.bounces.listener import listener_from_settings

            self.bounce_listener = listener_from_settings(settings, self.mailqueue.store)
        self.worker: Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Register the dependencies and the lifespan."""
        app_config.dependencies["mailqueue"] = Provide(
            lambda: self.mailqueue, use_cache=True, sync_to_thread=False
        )
        app_config.dependencies["mailqueue_settings"] = Provide(
            lambda: self.settings, use_cache=True, sync_to_thread=False
        )
        app_config.dependencies["mailqueue_plugin"] = Provide(
            lambda: self, use_cache=True, sync_to_thread=False
        )
        app_config.lifespan.append(self.lifespan)
        app_config.signature_namespace.update(
            MailQueue=MailQueue, Settings=Settings, MailQueuePlugin=MailQueuePlugin
        )
        return app_config

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        """Open the backends (and start the worker); on the way out, stop and close them."""
        await self.mailqueue.open()
        try:
            if self.sender is not None:
                await self.sender.open()
            try:
                self._start_worker()
                try:
                    if self.bounce_listener is not None:
                        await self.bounce_listener.start()
                    try:
                        yield
                    finally:
                        if self.bounce_listener is not None:
                            await self.bounce_listener.stop()
                finally:
                    await self._stop_worker()
            finally:
                if self.sender is not None:
                    await self.sender.close()
        finally:
            if self._owns_mailqueue:
                await self.mailqueue.close()

    @property
    def worker_running(self) -> bool | None:
        """``None`` without a worker, else whether its task is still running."""
        if self._worker_task is None:
            return None
        return not self._worker_task.done()

    async def readiness(self) -> dict[str, str]:
        """Check the store, the queue (and the worker); map each to ``ok`` or what is wrong."""
        found = await health.check(self.mailqueue.store, self.mailqueue.queue)
        for name, exc in found.errors.items():
            logger.warning("readiness: %s check failed: %s", name, exc)
        checks = dict(found.checks)
        running = self.worker_running
        if running is not None:
            checks["worker"] = "ok" if running else "stopped"
        return checks

    def _start_worker(self) -> None:
        if self._chain is None:
            return
        # a new Worker for each start (its stop is final), on the sender and limiter built once
        self.worker = Worker.from_settings(self.settings, self.mailqueue, chain=self._chain)
        self._worker_task = asyncio.create_task(self.worker.run(), name="mailqueue-worker")
        self._worker_task.add_done_callback(_report_worker_end)

    async def _stop_worker(self) -> None:
        task, worker = self._worker_task, self.worker
        if task is None or worker is None:
            return
        worker.stop()
        # run() drains in-flight sends for shutdown_timeout, then releases the rest
        done, _ = await asyncio.wait({task}, timeout=self.settings.worker.shutdown_timeout + 10.0)
        if not done:
            logger.error("the worker did not stop in time; cancelling it")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _report_worker_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.error("the worker stopped with an error", exc_info=exc)
