"""Prometheus metrics of mailqueue processes, on prometheus_client's default registry.

Every metric is named ``mailqueue_*``; labels hold only bounded values
(statuses, reply classes, SMTP codes, component names), never mail ids or
addresses. The API serves them on ``GET /metrics``; a worker serves them on
its own port (``worker.metrics_port``, see :class:`MetricsServer`). The
queue gauges are read from the backends when scraped (:func:`refresh_queue_gauges`).
See ``docs/operations.md`` for the table of metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

from mailqueue.errors import MailQueueError
from mailqueue.protocols import Queue, Store
from mailqueue.records import RecordQuery, Status, iter_records, utcnow

__all__ = [
    "BOUNCES",
    "CONTENT_TYPE",
    "DELIVERY_ERRORS",
    "DELIVERY_LATENCY",
    "IN_FLIGHT",
    "MAILS_ACCEPTED",
    "MAILS_FINISHED",
    "QUEUE_DEPTH",
    "QUEUE_OLDEST_AGE",
    "RECIPIENTS_SUPPRESSED",
    "RETRIES",
    "SEND_DURATION",
    "SMTP_CONNECTIONS",
    "SMTP_RECONNECTS",
    "STORE_BATCH_SIZE",
    "SUPPRESSIONS_ADDED",
    "SWEPT",
    "WORKER_READY",
    "WORKER_RESTARTS",
    "MetricsServer",
    "exposition",
    "refresh_queue_gauges",
    "reply_class",
]

logger = logging.getLogger("mailqueue.metrics")

#: The Content-Type of :func:`exposition` (Prometheus text format 0.0.4).
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS: Final = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 3 * 86400.0)

MAILS_ACCEPTED = Counter("mailqueue_mails_accepted", "Mails accepted (recorded and queued) by submit.")
MAILS_FINISHED = Counter(
    "mailqueue_mails_finished",
    "Mails that reached a final status, by status (sent, failed, dead, unknown).",
    ["status"],
)
RETRIES = Counter(
    "mailqueue_retries",
    "Delivery attempts that will be retried, by reply class (4xx, 5xx, connection, timeout, other) "
    "and SMTP code (empty when there was no reply).",
    ["reply_class", "code"],
)
SEND_DURATION = Histogram(
    "mailqueue_send_duration_seconds", "Duration of one SMTP transaction (a Sender.send call)."
)
DELIVERY_LATENCY = Histogram(
    "mailqueue_delivery_latency_seconds",
    "Seconds from acceptance to a final status.",
    buckets=_LATENCY_BUCKETS,
)
STORE_BATCH_SIZE = Histogram(
    "mailqueue_store_batch_size",
    "Records per Store call of the worker's group commit, by op: read (record reads) or write "
    "(claims and outcomes). A mean near 1 under load means the calls do not group.",
    ["op"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
QUEUE_DEPTH = Gauge("mailqueue_queue_depth", "Messages in the queue, where the queue backend can tell.")
QUEUE_OLDEST_AGE = Gauge(
    "mailqueue_queue_oldest_age_seconds",
    "Age of the oldest mail waiting (queued or retrying) according to the Store; 0 when none waits.",
)
SMTP_CONNECTIONS = Gauge("mailqueue_smtp_connections", "Open SMTP connections in the sender's pool.")
SMTP_RECONNECTS = Counter(
    "mailqueue_smtp_reconnects", "SMTP connections opened to replace one that was dead or used up."
)
IN_FLIGHT = Gauge("mailqueue_worker_in_flight", "Deliveries a worker is handling right now.")
WORKER_READY = Gauge("mailqueue_worker_ready", "1 while the worker consumes and its store answers, else 0.")
WORKER_RESTARTS = Counter(
    "mailqueue_worker_restarts",
    "Worker components (consumer, sweeper) restarted after an unexpected error or a backend outage.",
    ["component"],
)
SWEPT = Counter(
    "mailqueue_swept", "Mails re-published by the sweeper because their publish was not confirmed."
)
BOUNCES = Counter(
    "mailqueue_bounces",
    "Bounce and complaint notices received by the bounce listener, by kind: hard, soft, complaint, "
    "or unmatched (a report for no known mail or recipient, ignored).",
    ["kind"],
)
DELIVERY_ERRORS = Counter(
    "mailqueue_delivery_errors",
    "Deliveries whose handling raised an unexpected exception (they are retried).",
)
RECIPIENTS_SUPPRESSED = Counter(
    "mailqueue_recipients_suppressed",
    "Recipients left out when sending because they are on the suppression list, by reason.",
    ["reason"],
)
SUPPRESSIONS_ADDED = Counter(
    "mailqueue_suppressions_added",
    "Entries added to (or replaced on) the suppression list, by reason.",
    ["reason"],
)

for _status in (s for s in Status if s.final):
    MAILS_FINISHED.labels(status=str(_status))
WORKER_RESTARTS.labels(component="consumer")
WORKER_RESTARTS.labels(component="sweeper")


def reply_class(code: int | None, *, timeout: bool = False) -> str:
    """The ``reply_class`` label of an SMTP reply code: ``4xx``, ``5xx``, ``timeout`` or ``connection``."""
    if timeout:
        return "timeout"
    if code is None:
        return "connection"
    if 400 <= code < 500:
        return "4xx"
    if 500 <= code < 600:
        return "5xx"
    return "other"


def exposition() -> bytes:
    """Every metric of the default registry in the Prometheus text format."""
    return generate_latest(REGISTRY)


_WAITING: Final = frozenset({Status.QUEUED, Status.RETRYING})
_last_refresh: dict[int, float] = {}


async def refresh_queue_gauges(
    queue: Queue | None, store: Store | None, *, page: int = 500, min_interval: float = 10.0
) -> None:
    """Set ``mailqueue_queue_depth`` and ``mailqueue_queue_oldest_age_seconds`` from the backends.

    Reads at most once per ``min_interval`` seconds (a scrape every 15 s must
    not page through the Store each time). The oldest age pages through the
    waiting mails, newest first; a backend that fails leaves the gauge as it was.
    """
    key = id(store)
    now = time.monotonic()
    if now - _last_refresh.get(key, -1e9) < min_interval:
        return
    _last_refresh[key] = now
    if queue is not None:
        try:
            async with asyncio.timeout(5.0):
                depth = await queue.depth()
        except (MailQueueError, TimeoutError) as exc:
            logger.debug("queue depth unavailable: %s", exc)
        else:
            if depth is not None:
                QUEUE_DEPTH.set(depth)
    if store is not None:
        try:
            async with asyncio.timeout(10.0):
                age = await _oldest_waiting_age(store, page)
        except (MailQueueError, TimeoutError) as exc:
            logger.debug("oldest waiting mail unavailable: %s", exc)
        else:
            QUEUE_OLDEST_AGE.set(age)


async def _oldest_waiting_age(store: Store, page: int) -> float:
    oldest = None
    async for record in iter_records(store, RecordQuery(statuses=_WAITING, limit=page)):
        if oldest is None or record.created_at < oldest:
            oldest = record.created_at
    return 0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds())


class MetricsServer:
    """A small HTTP/1.0 server for a worker: ``/metrics``, ``/health/live``, ``/health/ready``.

    Args:
        host: address to listen on (keep it on loopback or a private network).
        port: TCP port; 0 picks a free one (see :attr:`port` once started).
        ready: awaitable check, true when the worker is ready.
        before_scrape: awaited before each ``/metrics`` answer (refreshes gauges).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ready: Callable[[], Awaitable[bool]],
        before_scrape: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._ready = ready
        self._before_scrape = before_scrape
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Start listening."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("serving metrics and health on http://%s:%d/metrics", self.host, self.port)

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            while True:  # skip the headers
                header = await asyncio.wait_for(reader.readline(), 5.0)
                if header in (b"\r\n", b"\n", b""):
                    break
            parts = line.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
            status, content_type, body = await self._answer(method, path)
            head = (
                f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + (body if method != "HEAD" else b""))
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, UnicodeDecodeError):
            pass
        except Exception:
            logger.exception("the metrics server failed to answer a request")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, method: str, path: str) -> tuple[str, str, bytes]:
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", text, b"method not allowed\n"
        if path == "/metrics":
            if self._before_scrape is not None:
                try:
                    await self._before_scrape()
                except Exception:
                    logger.exception("refreshing the gauges failed")
            return "200 OK", CONTENT_TYPE, exposition()
        if path == "/health/live":
            return "200 OK", text, b"live\n"
        if path == "/health/ready":
            try:
                ok = await self._ready()
            except Exception:
                ok = False
            return ("200 OK", text, b"ready\n") if ok else ("503 Service Unavailable", text, b"not ready\n")
        return "404 Not Found", text, b"not found\n"
