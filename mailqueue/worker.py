"""The worker: consume, limit, render, send, record, then settle.

For each delivery, in this order:

1. decode the envelope (a payload that is not one goes to the dead-letter
   place, as the original dropped invalid JSON);
2. read the record (waiting, the delivery unsettled, while the Store is
   unreachable): a mail the Store already marks ``sent``, ``failed``,
   ``dead``, ``unknown`` or deleted is acknowledged without sending
   (redelivery dedup);
3. mark it ``sending`` (compare-and-set), take a rate-limit slot;
4. load its attachments (missing ones: ``Not Found: <name>`` in the remark,
   or ``failed`` if so configured), render it, send to the recipients still
   pending;
5. record the attempt and the outcome in the Store (tried again until the
   Store answers: the mail is not sent twice because the Store was down);
6. only then settle the delivery: ack, retry after a backoff, or dead-letter.

Anything an attempt raises that no Sender classified (a bug, a mail that
cannot be rendered) is an attempt too: outcome ``error``, the error kept as
the mail's ``last_error``, retried after a backoff like a transient failure
and ``dead`` (dead-lettered) after ``max_attempts``.

Recipients the sending chain itself holds back until a slot of one of its
limits is free (a recipient domain's, :mod:`mailqueue.sending.domains`: their
reply carries ``retry_after``) are not a failed attempt: when no other
recipient is left waiting for a server, the mail goes back to the queue for
that long, ``retrying``, without charging ``max_attempts`` or backing off.

Shutdown (:meth:`Worker.stop`) stops taking deliveries, lets in-flight sends
finish for ``shutdown_timeout`` seconds and releases the rest for
redelivery: nothing is dead-lettered or lost by stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

from mailqueue import health, metrics
from mailqueue.batching import Batcher
from mailqueue.envelope import decode_envelope, envelope_mail_id
from mailqueue.errors import (
    AttachmentNotFoundError,
    BackendError,
    DeliveryError,
    DeliveryTimeoutError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnknownDeliveryError,
)
from mailqueue.logs import mail_id_var
from mailqueue.maintenance import Maintenance, Sweeper
from mailqueue.message import AttachmentRef, Mail, allow_special_domains
from mailqueue.mime import render
from mailqueue.outcomes import Outcome, apply_result, backoff, fail_pending, slot_wait, truncate
from mailqueue.protocols import (
    AttachmentStore,
    BackendContext,
    BatchUpdateStore,
    Delivery,
    OutgoingMessage,
    Queue,
    Sender,
    Store,
)
from mailqueue.records import (
    Attempt,
    MailRecord,
    RecipientOutcome,
    RecipientState,
    RecordUpdate,
    Status,
    utcnow,
)
from mailqueue.sending.limits import RateLimiter
from mailqueue.settings import RetentionSettings, Settings, WorkerSettings

if TYPE_CHECKING:
    from mailqueue.client import MailQueue
    from mailqueue.sending.pipeline import SendingChain

__all__ = ["Worker", "backoff"]

logger = logging.getLogger("mailqueue.worker")

_T = TypeVar("_T")

_CLAIMABLE: Final = frozenset({Status.QUEUED, Status.RETRYING, Status.SENDING})
_REMARK_MAX: Final = 100
#: Longest text of an unexpected error kept as the attempt's reply and the mail's last error.
_ERROR_MAX: Final = 1000
#: A component that ran this many seconds before failing restarts with the shortest pause again.
_STABLE: Final = 300.0
#: Longest pause, in seconds, between tries while the Store fails.
_RECORD_PAUSE_MAX: Final = 5.0
#: Most reads, or most changes, a BatchUpdateStore gets in one call.
_BATCH_MAX: Final = 200


class Worker:
    """Delivers queued mail within a concurrency and rate limits.

    Args:
        queue: opened Queue to consume.
        store: opened Store to record outcomes in.
        attachments: opened AttachmentStore to read attachment bytes from.
        sender: opened Sender.
        settings: concurrency, limits, retry policy.
        limiter: a rate limiter to share (default: one built from ``settings.rate``).
        retention: what the sweep loop deletes, and when (default: nothing).
    """

    def __init__(
        self,
        *,
        queue: Queue,
        store: Store,
        attachments: AttachmentStore,
        sender: Sender,
        settings: WorkerSettings | None = None,
        limiter: RateLimiter | None = None,
        retention: RetentionSettings | None = None,
    ) -> None:
        self.queue = queue
        self.store = store
        self.attachments = attachments
        self.sender = sender
        self.settings = settings or WorkerSettings()
        self.limiter = limiter or RateLimiter(self.settings.rate)
        self.retention = retention
        #: Outcomes counted since start: sent, failed, dead, unknown, retried, skipped, deferred,
        #: invalid, error, record_retried (a Store write of an outcome tried again), store_wait
        #: (a read or claim before sending tried again while the Store failed).
        self.counts: Counter[str] = Counter()
        self._sweeper = Sweeper(Maintenance(store, queue, attachments), self.settings, retention, self.counts)
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        #: The mails this worker's deliveries are handling right now, each with the event set when
        #: done, made only once another copy of the mail waits for it (rare: most have none).
        self._handling: dict[str, asyncio.Event | None] = {}
        self._slots: asyncio.Semaphore | None = None
        self._consuming = False
        self._deps_ok = True
        self._reads: Batcher[str, MailRecord | None] | None = None
        self._writes: Batcher[tuple[str, RecordUpdate], bool] | None = None
        if isinstance(store, BatchUpdateStore):
            # Group commit: the reads, claims and outcomes of concurrent deliveries go
            # to the Store together, one query or one transaction per group.
            many = store

            read_sizes = metrics.STORE_BATCH_SIZE.labels(op="read")
            write_sizes = metrics.STORE_BATCH_SIZE.labels(op="write")

            async def read(ids: list[str]) -> list[MailRecord | None]:
                read_sizes.observe(len(ids))
                found = await many.get_many(ids)
                return [found.get(mail_id) for mail_id in ids]

            async def write(changes: list[tuple[str, RecordUpdate]]) -> list[bool]:
                write_sizes.observe(len(changes))
                return await many.update_many(changes)

            self._reads = Batcher(read, _BATCH_MAX)
            self._writes = Batcher(write, _BATCH_MAX)

    @classmethod
    def from_settings(
        cls, settings: Settings, mailqueue: MailQueue, *, chain: SendingChain | None = None
    ) -> Worker:
        """The worker of ``mailqueue worker`` and ``mailqueue serve``: it consumes the queue of
        ``mailqueue`` and records in its stores, within ``settings.worker`` and
        ``settings.retention``, sending through the chain :func:`~mailqueue.sending.pipeline.build_sender`
        composes for ``settings``.

        Args:
            settings: the whole settings.
            mailqueue: whose queue, store and attachment store the worker uses (opened
                before :meth:`run`).
            chain: a chain already built from ``settings`` (e.g. to keep its limiter
                across restarts); default: a new one.

        Returns:
            A worker whose :attr:`sender` is not opened yet: open it (``async with``)
            before :meth:`run` and close it after.

        Raises:
            ConfigurationError: a sender URL, a rate, the accounts or a DKIM key cannot be used.
        """
        # imported here: the accounts' metrics are registered only where a chain is built
        from mailqueue.sending.pipeline import build_sender

        allow_special_domains(settings.allowed_special_domains)  # it reads back what the API took
        if chain is None:
            chain = build_sender(settings, context=BackendContext(store=mailqueue.store))
        return cls(
            queue=mailqueue.queue,
            store=mailqueue.store,
            attachments=mailqueue.attachments,
            sender=chain.sender,
            settings=settings.worker,
            limiter=chain.limiter,
            retention=settings.retention,
        )

    @property
    def ready(self) -> bool:
        """True while the worker consumes and its last checks of the store and queue succeeded."""
        return self._consuming and self._deps_ok and not self._stopping.is_set()

    def _set_ready(self, *, consuming: bool | None = None, deps_ok: bool | None = None) -> None:
        if consuming is not None:
            self._consuming = consuming
        if deps_ok is not None:
            self._deps_ok = deps_ok
        metrics.WORKER_READY.set(1 if self.ready else 0)

    async def check_ready(self) -> bool:
        """Check the store and the queue now (``/health/ready``); update :attr:`ready`."""
        try:
            found = await health.check(self.store, self.queue)
        except Exception:
            logger.exception("readiness check failed unexpectedly")
            self._set_ready(deps_ok=False)
            return self.ready
        if not found.ok:
            exc = next(iter(found.errors.values()))
            # once per outage at warning level, not every health_interval
            (logger.warning if self._deps_ok else logger.debug)("not ready: %s", exc or "timed out")
            self._set_ready(deps_ok=False)
        else:
            if not self._deps_ok:
                logger.warning("the store and the queue answer again: ready")
            self._set_ready(deps_ok=True)
        return self.ready

    def stop(self) -> None:
        """Ask :meth:`run` to stop taking deliveries and return once drained."""
        self._stopping.set()

    @property
    def in_flight(self) -> int:
        """Deliveries being handled right now."""
        return len(self._tasks)

    async def run(self) -> None:
        """Consume until :meth:`stop` is called, then drain and return.

        The consumer and the sweeper are supervised: an unexpected exception in
        either (or in the queue's consumer iterator) restarts that component after
        an exponential backoff (``mailqueue_worker_restarts_total{component}``);
        a queue that is unreachable is retried forever. Only :meth:`stop` ends it.
        """
        concurrency = self.settings.concurrency
        slots = self._slots = asyncio.Semaphore(concurrency)
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        sweeper = asyncio.create_task(
            self._supervise("sweeper", self._sweeper.run, longest=60.0), name="mailqueue-sweeper"
        )
        health = asyncio.create_task(self._health_loop(), name="mailqueue-health")
        logger.info("worker started concurrency=%d rate=%r", concurrency, self.settings.rate)
        try:
            # returns once stopped, or once the queue ended the iteration
            await self._supervise("consumer", lambda: self._consume(slots, stop_wait), longest=30.0)
        finally:
            self._set_ready(consuming=False)
            stop_wait.cancel()
            sweeper.cancel()
            health.cancel()
            # wait() rather than awaiting them: a cancellation of run() itself must not be swallowed
            await asyncio.wait({sweeper, health})
            await self._drain()
            logger.info("worker stopped counts=%s", dict(self.counts))

    async def _consume(self, slots: asyncio.Semaphore, stop_wait: asyncio.Future[Any]) -> None:
        """One life of the consumer: open an iterator on the queue, dispatch deliveries until stopped."""
        concurrency = self.settings.concurrency
        deliveries = self.queue.consume(prefetch=self.settings.prefetch or 2 * concurrency)
        self._set_ready(consuming=True)
        # The dispatching runs in a task of its own that a stop cancels: it is then waiting
        # for a slot or for the next delivery (a cancelled wait loses nothing), never holding
        # a delivery it has not handed on. Cheaper per delivery than racing each wait against
        # the stop (a task and an asyncio.wait for each).
        pump = asyncio.create_task(self._dispatch(deliveries, slots), name="mailqueue-dispatch")
        try:
            await asyncio.wait({pump, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._set_ready(consuming=False)
            if not pump.done():
                pump.cancel()
                # wait(), not await: a cancellation of this task must not be swallowed
                await asyncio.wait({pump})
            with contextlib.suppress(Exception):
                await deliveries.aclose()
        if not pump.cancelled():
            pump.result()  # the queue's iterator failed unexpectedly: _supervise restarts it

    async def _dispatch(self, deliveries: AsyncIterator[Delivery], slots: asyncio.Semaphore) -> None:
        """Take a slot, then a delivery, and start handling it; until the queue ends the iteration."""
        failures = 0
        while True:
            await slots.acquire()
            try:
                delivery = await anext(deliveries)
            except StopAsyncIteration:
                slots.release()
                return
            except BackendError as exc:
                slots.release()
                # The queue is unreachable: wait and try again, never give up.
                pause = min(30.0, 0.5 * 2.0 ** min(failures, 6))
                failures += 1
                self.counts["consume_error"] += 1
                self._set_ready(deps_ok=False)
                logger.warning("consuming failed (%s); trying again in %.1f s", exc, pause)
                await asyncio.sleep(pause)
                continue
            except BaseException:
                slots.release()
                raise
            if failures:
                failures = 0
                self._set_ready(deps_ok=True)
            task = asyncio.create_task(self._guarded(delivery))
            self._tasks.add(task)
            metrics.IN_FLIGHT.inc()
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        metrics.IN_FLIGHT.dec()
        if self._slots is not None:
            self._slots.release()

    async def _supervise(
        self, component: str, body: Callable[[], Awaitable[None]], *, longest: float
    ) -> None:
        """Run ``body`` until it returns or the worker stops; when it raises, restart it
        after an exponential backoff (``restart_base`` doubling up to ``longest`` seconds)."""
        restarts = 0
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                await body()
                return
            except Exception:
                if time.monotonic() - began > _STABLE:
                    restarts = 0  # it ran well for a while: start the backoff over
                pause = min(longest, self.settings.restart_base * 2.0 ** min(restarts, 10))
                restarts += 1
                metrics.WORKER_RESTARTS.labels(component=component).inc()
                self.counts["restart"] += 1
                logger.exception("the %s failed unexpectedly; restarting it in %.1f s", component, pause)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._stopping.wait()

    async def _health_loop(self) -> None:
        """Check the store and the queue every few seconds, so that readiness comes back by itself."""
        while True:
            await self.check_ready()
            await asyncio.sleep(self.settings.health_interval)

    async def _drain(self) -> None:
        if not self._tasks:
            return
        pending = set(self._tasks)
        logger.info("waiting for %d in-flight deliveries", len(pending))
        _, still = await asyncio.wait(pending, timeout=self.settings.shutdown_timeout)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still)

    async def _guarded(self, delivery: Delivery) -> None:
        try:
            await self.handle(delivery)
        except asyncio.CancelledError:
            # Shutdown: no outcome was recorded, so give it back untouched.
            await _settle_quietly(delivery.release())
            raise
        except Exception as exc:
            if isinstance(exc, BackendError) or not await self._count_unexpected(delivery, exc):
                # A backend failed (e.g. the Store, before the mail was claimed): no attempt was made.
                self.counts["error"] += 1
                metrics.DELIVERY_ERRORS.inc()
                logger.exception("delivery key=%s failed unexpectedly; it will be retried", delivery.key)
                await _settle_quietly(delivery.retry(min(self.settings.retry_base, 30.0)))

    async def _count_unexpected(self, delivery: Delivery, exc: Exception) -> bool:
        """Record ``exc``, raised before the mail was claimed, as a failed attempt of it
        (retried after a backoff, ``dead`` after ``max_attempts``) and settle the delivery
        accordingly; False when there is no such mail to charge it to (or that failed too)."""
        try:
            mail_id = envelope_mail_id(delivery.body)
            record = await self.store.get(mail_id)
            if record is None or record.status.final or record.is_deleted:
                return False
            started = utcnow()
            if not await self._update(mail_id, RecordUpdate(status=Status.SENDING, expect=_CLAIMABLE)):
                return False
            outcome = self._unexpected(record.mail, record, started, exc)
            await self._retry_or_die(
                delivery, record, outcome.attempt, outcome.recipients, outcome.remark, outcome.error, None
            )
        except Exception:
            logger.exception("delivery key=%s: could not record its unexpected failure", delivery.key)
            return False
        return True

    async def handle(self, delivery: Delivery) -> None:
        """Handle one delivery to the end, settling it exactly once."""
        try:
            # Only the id, at first: a recorded mail is sent as the Store has it,
            # so the envelope's copy is validated only when there is no record.
            mail_id = envelope_mail_id(delivery.body)
        except ValueError as exc:
            await self._dead_letter(delivery, exc)
            return
        mail_id_var.set(mail_id)  # each delivery runs in a task of its own: its log lines carry it
        if mail_id in self._handling:
            # Another copy of this mail is in this worker's hands right now, its outcome perhaps
            # not recorded yet (the broker handed the delivery out again after the connection
            # dropped while the Store was away, or the mail was published twice): sending this
            # one now could send the mail twice. Wait for that copy, then read the record.
            self.counts["deferred"] += 1
            logger.info("mail id=%s is being handled by this worker already; waiting for it", mail_id)
            while mail_id in self._handling:
                busy = self._handling[mail_id]
                if busy is None:
                    busy = self._handling[mail_id] = asyncio.Event()
                await busy.wait()
        self._handling[mail_id] = None
        try:
            await self._handle(delivery, mail_id)
        finally:
            if (done := self._handling.pop(mail_id)) is not None:
                done.set()

    async def _handle(self, delivery: Delivery, mail_id: str) -> None:
        found = await self._until_stored(lambda: self._get(mail_id), "read the record", mail_id, "store_wait")
        if found is None:
            try:
                mail = decode_envelope(delivery.body)
            except ValueError as exc:
                await self._dead_letter(delivery, exc)
                return
            # Published but not recorded (e.g. restored queue): record it now.
            found = await self.store.add(MailRecord.new(mail))
        record = found
        if record.status.final or record.is_deleted:
            self.counts["skipped"] += 1
            logger.info("mail id=%s is already %s; not sending again", mail_id, record.status)
            await delivery.ack()
            return
        now = utcnow()
        if record.status is Status.SENDING and not delivery.redelivered:
            # Another delivery may be sending this mail right now: a second copy
            # (a publish repeated after a lost confirm), or a copy read again by a
            # queue that cannot tell a redelivery (Kafka after a crash). Look again
            # once that delivery's lease is over: sent by then, this copy is dropped
            # as a duplicate; still ``sending``, its worker died and this copy sends.
            held = (now - record.updated_at).total_seconds()
            lease = self.settings.sending_lease
            if held < lease:
                self.counts["deferred"] += 1
                logger.info(
                    "mail id=%s is being sent by another delivery; looking again in %.0f s",
                    mail_id,
                    lease - held,
                )
                await delivery.retry(lease - held + 1.0)
                return
            logger.warning(
                "mail id=%s has been sending for %.0f s (lease %.0f s); its worker is presumed dead",
                mail_id,
                held,
                lease,
            )
        if record.status is Status.RETRYING and record.next_attempt_at and record.next_attempt_at > now:
            # The queue handed it back early (no native delay): wait out the rest.
            await delivery.retry((record.next_attempt_at - now).total_seconds())
            return
        # Wait for the rate limit before claiming, so that a mail is ``sending``
        # only while it is really being sent (see ``sending_lease``).
        await self.limiter.acquire()
        started = utcnow()  # the attempt starts when it takes its rate-limit token
        claim = RecordUpdate(status=Status.SENDING, expect=_CLAIMABLE)
        if not await self._until_stored(
            lambda: self._update(mail_id, claim), "claim the mail", mail_id, "store_wait"
        ):
            self.counts["skipped"] += 1
            await delivery.ack()
            return
        # The Store's copy is the source of truth (a re-send may have changed it).
        await self._deliver(delivery, record.mail, record, started)

    async def _dead_letter(self, delivery: Delivery, exc: ValueError) -> None:
        self.counts["invalid"] += 1
        logger.error("dead-lettering invalid payload key=%s: %s", delivery.key, exc)
        await delivery.dead(f"invalid payload: {exc}")

    async def _deliver(self, delivery: Delivery, mail: Mail, record: MailRecord, started: datetime) -> None:
        """Attempt a claimed mail, record the outcome, settle the delivery.

        Whatever the attempt raises (a bug, a payload that cannot be rendered, a
        Sender that fails in a way it did not classify) is an attempt too: recorded on
        the mail and retried like a transient failure until ``max_attempts``, then
        ``dead``. It never leaves the mail ``sending`` or loops without counting.
        """
        try:
            outcome = await self._attempt(mail, record, started)
        except Exception as exc:
            outcome = self._unexpected(mail, record, started, exc)
        if outcome.defer is not None:
            await self._defer(delivery, record, outcome, outcome.defer)
        elif outcome.retry:
            await self._retry_or_die(
                delivery,
                record,
                outcome.attempt,
                outcome.recipients,
                outcome.remark,
                outcome.error,
                outcome.exc,
            )
        else:
            await self._finish(
                delivery,
                record,
                outcome.status,
                outcome.attempt,
                outcome.recipients,
                outcome.remark,
                outcome.error,
            )
        if outcome.attempt.outcome == "sent" and self.settings.delete_attachments:
            await self._delete_attachments(mail.attachments)

    def _unexpected(self, mail: Mail, record: MailRecord, started: datetime, exc: Exception) -> Outcome:
        """The outcome of an attempt that raised what no Sender or step classified."""
        self.counts["error"] += 1
        metrics.DELIVERY_ERRORS.inc()
        logger.error(
            "mail id=%s attempt=%d failed unexpectedly; it counts as an attempt",
            mail.id,
            record.attempts + 1,
            exc_info=exc,
        )
        reason = truncate(f"unexpected error: {type(exc).__name__}: {exc}", _ERROR_MAX)
        attempt = Attempt(record.attempts + 1, started, utcnow(), "error", None, reason)
        return Outcome(Status.RETRYING, attempt, record.recipients, record.remark, reason, retry=True)

    async def _attempt(self, mail: Mail, record: MailRecord, started: datetime) -> Outcome:
        """Load, render and send a claimed mail; the outcome to record (nothing recorded yet)."""
        number = record.attempts + 1
        remark = record.remark
        found, missing = await self._load_attachments(mail.attachments)
        if missing:
            remark = truncate("; ".join(f"Not Found: {ref.filename}" for ref in missing), _REMARK_MAX)
            if self.settings.missing_attachment == "fail":
                reason = f"attachment missing: {', '.join(ref.filename for ref in missing)}"
                return Outcome(
                    Status.FAILED,
                    Attempt(number, started, utcnow(), "permanent", None, reason),
                    fail_pending(record.recipients, None, reason),
                    remark,
                    reason,
                )
        pending = record.pending()
        if not pending:
            # Every recipient was settled before (e.g. a crash after recording them).
            status = (
                Status.SENT
                if any(r.state is RecipientState.SENT for r in record.recipients)
                else Status.FAILED
            )
            now = utcnow()
            attempt = Attempt(number, now, now, "skipped", None, "no recipient left to send to")
            return Outcome(status, attempt, record.recipients, remark, "")
        message = OutgoingMessage(
            mail_id=mail.id,
            data=render(
                mail,
                from_address=self.sender.from_address,
                attachments=found,
                text_from_html=self.settings.text_from_html,
            ),
            envelope_from=self.sender.from_address,
            recipients=pending,
        )
        clock = time.monotonic()
        try:
            try:
                result = await self.sender.send(message)
            finally:
                metrics.SEND_DURATION.observe(time.monotonic() - clock)
        except UnknownDeliveryError as exc:
            attempt = Attempt(number, started, utcnow(), "unknown", exc.code, exc.reply)
            logger.warning("mail id=%s outcome unknown (maybe delivered): %s", mail.id, exc)
            return Outcome(Status.UNKNOWN, attempt, record.recipients, remark, str(exc))
        except PermanentDeliveryError as exc:
            attempt = Attempt(number, started, utcnow(), "permanent", exc.code, exc.reply)
            recipients = fail_pending(record.recipients, exc.code, exc.reply)
            return Outcome(Status.FAILED, attempt, recipients, remark, str(exc))
        except TransientDeliveryError as exc:
            attempt = Attempt(number, started, utcnow(), "transient", exc.code, exc.reply)
            return Outcome(Status.RETRYING, attempt, record.recipients, remark, str(exc), retry=True, exc=exc)
        recipients = apply_result(record.recipients, result)
        still = [r for r in recipients if r.state is RecipientState.PENDING]
        if still:
            first = next(result.replies[r.address] for r in still if r.address in result.replies)
            if (wait := slot_wait(still, result)) is not None:
                attempt = Attempt(number, started, utcnow(), "partial", first.code, first.reply, recipients)
                error = f"{len(still)} recipient(s) waiting for a slot: {first.code} {first.reply}"
                return Outcome(Status.RETRYING, attempt, recipients, remark, error, retry=True, defer=wait)
            attempt = Attempt(number, started, utcnow(), "partial", first.code, first.reply, recipients)
            error = f"{len(still)} recipient(s) deferred: {first.code} {first.reply}"
            return Outcome(Status.RETRYING, attempt, recipients, remark, error, retry=True)
        if any(r.state is RecipientState.SENT for r in recipients):
            attempt = Attempt(number, started, utcnow(), "sent", 250, "", recipients)
            return Outcome(Status.SENT, attempt, recipients, remark, "")
        if result.replies and all(reply.suppressed for reply in result.replies.values()):
            # nothing went on the wire: no server reply to record as the mail's last code
            reason = truncate(
                "every recipient is suppressed: "
                + ", ".join(f"{address} ({reply.suppressed})" for address, reply in result.replies.items()),
                _ERROR_MAX,
            )
            attempt = Attempt(number, started, utcnow(), "suppressed", None, reason, recipients)
            return Outcome(Status.FAILED, attempt, recipients, remark, reason)
        first_reply = next(iter(result.replies.values()), None)
        code = first_reply.code if first_reply else None
        reply = first_reply.reply if first_reply else "no recipient accepted"
        attempt = Attempt(number, started, utcnow(), "permanent", code, reply, recipients)
        return Outcome(Status.FAILED, attempt, recipients, remark, f"{code} {reply}")

    async def _retry_or_die(
        self,
        delivery: Delivery,
        record: MailRecord,
        attempt: Attempt,
        recipients: tuple[RecipientOutcome, ...],
        remark: str,
        error: str,
        exc: DeliveryError | None,
    ) -> None:
        settings = self.settings
        delay = backoff(attempt.number, base=settings.retry_base, cap=settings.retry_max)
        age = (utcnow() - record.mail.created_at).total_seconds()
        if attempt.number >= settings.max_attempts or age + delay > settings.max_age:
            why = "attempts" if attempt.number >= settings.max_attempts else "age"
            await self._finish(
                delivery, record, Status.DEAD, attempt, recipients, remark, error, dead_reason=why
            )
            return
        due = utcnow() + timedelta(seconds=delay)
        metrics.RETRIES.labels(
            reply_class=metrics.reply_class(attempt.code, timeout=isinstance(exc, DeliveryTimeoutError)),
            code="" if attempt.code is None else str(attempt.code),
        ).inc()
        await self._finish(
            delivery, record, Status.RETRYING, attempt, recipients, remark, error, delay=delay, due=due
        )

    async def _defer(self, delivery: Delivery, record: MailRecord, outcome: Outcome, delay: float) -> None:
        """Hand back a mail whose recipients left all wait for a slot of a limit of the chain
        (a recipient domain's, :mod:`mailqueue.sending.domains`) for ``delay`` seconds.

        No server refused anything, so it is not a failed attempt: ``max_attempts`` is not
        charged (only ``max_age`` ends it) and the delay is the slot's, not the backoff. The
        attempt is recorded only if it settled some recipient (another domain's).
        """
        age = (utcnow() - record.mail.created_at).total_seconds()
        if age + delay > self.settings.max_age:
            await self._finish(
                delivery,
                record,
                Status.DEAD,
                outcome.attempt,
                outcome.recipients,
                outcome.remark,
                outcome.error,
                dead_reason="age",
            )
            return
        due = utcnow() + timedelta(seconds=delay)
        self.counts["slot_wait"] += 1
        if any(
            new.state is not old.state for new, old in zip(outcome.recipients, record.recipients, strict=True)
        ):
            await self._finish(
                delivery,
                record,
                Status.RETRYING,
                outcome.attempt,
                outcome.recipients,
                outcome.remark,
                outcome.error,
                delay=delay,
                due=due,
            )
            return
        change = RecordUpdate(
            status=Status.RETRYING,
            recipients=outcome.recipients,
            remark=outcome.remark,
            last_error=outcome.error,
            last_code=outcome.attempt.code,
            next_attempt_at=due,
            expect=frozenset({Status.SENDING}),
        )
        if not await self._record(record.id, change):
            logger.warning("mail id=%s changed while it was being sent; recorded nothing", record.id)
        logger.info("mail id=%s waits %.1f s for a slot: %s", record.id, delay, outcome.error)
        await delivery.retry(delay)

    async def _finish(
        self,
        delivery: Delivery,
        record: MailRecord,
        status: Status,
        attempt: Attempt,
        recipients: tuple[RecipientOutcome, ...],
        remark: str,
        error: str,
        *,
        delay: float = 0.0,
        due: datetime | None = None,
        dead_reason: str = "",
    ) -> None:
        change = RecordUpdate(
            status=status,
            # (dataclasses.replace costs microseconds: skipped when the attempt has them already)
            attempt=attempt if attempt.recipients is recipients else replace(attempt, recipients=recipients),
            recipients=recipients,
            remark=remark,
            last_error=error,
            last_code=attempt.code,
            sent_at=attempt.finished_at if status is Status.SENT else None,
            next_attempt_at=due,
            expect=frozenset({Status.SENDING}),
        )
        if not await self._record(record.id, change):
            logger.warning("mail id=%s changed while it was being sent; recorded nothing", record.id)
        self.counts[{Status.RETRYING: "retried"}.get(status, str(status))] += 1
        if status.final:
            metrics.MAILS_FINISHED.labels(status=str(status)).inc()
            latency = (utcnow() - record.mail.created_at).total_seconds()
            metrics.DELIVERY_LATENCY.observe(max(0.0, latency))
        log = logger.info if status in (Status.SENT, Status.RETRYING) else logger.warning
        log(
            "mail id=%s attempt=%d status=%s code=%s%s",
            record.id,
            attempt.number,
            status,
            attempt.code,
            f" error={error!r}" if error else "",
        )
        if status is Status.RETRYING:
            await delivery.retry(delay)
        elif status is Status.DEAD:
            await delivery.dead(f"{dead_reason} exhausted: {error}")
        else:
            await delivery.ack()

    async def _record(self, mail_id: str, change: RecordUpdate) -> bool:
        """Write an attempt's outcome, trying again for as long as the Store fails.

        The mail has been sent (or refused) by now: giving the delivery back
        instead would send it again. So the delivery stays unsettled until the
        Store answers; only a shutdown that outlasts ``shutdown_timeout``
        cancels the wait (the delivery is then released, the one window where
        a copy may be sent twice). Should an earlier try have been committed
        although its answer was lost, the repeat finds the status changed and
        returns ``False``, which is harmless.
        """
        return await self._until_stored(
            lambda: self._update(mail_id, change), "record the outcome", mail_id, "record_retried"
        )

    async def _get(self, mail_id: str) -> MailRecord | None:
        """The record (history left out when read together with others' records)."""
        if self._reads is None:
            return await self.store.get(mail_id)
        return await self._reads.call(mail_id)

    async def _update(self, mail_id: str, change: RecordUpdate) -> bool:
        """:meth:`Store.update`; returns once the change is committed (with others', perhaps)."""
        if self._writes is None:
            return await self.store.update(mail_id, change)
        return await self._writes.call((mail_id, change))

    async def _until_stored(
        self, call: Callable[[], Awaitable[_T]], what: str, mail_id: str, counter: str
    ) -> _T:
        """``await call()``, again after a growing pause for as long as the Store fails.

        The delivery stays unsettled meanwhile: with every slot waiting, the
        worker takes nothing more from the queue until the Store is back.
        """
        pause = 0.1
        while True:
            try:
                return await call()
            except BackendError as exc:
                self.counts[counter] += 1
                logger.warning(
                    "mail id=%s: could not %s (%s); trying again in %.1f s", mail_id, what, exc, pause
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RECORD_PAUSE_MAX)

    async def _load_attachments(
        self, refs: Sequence[AttachmentRef]
    ) -> tuple[list[tuple[AttachmentRef, bytes]], list[AttachmentRef]]:
        found: list[tuple[AttachmentRef, bytes]] = []
        missing: list[AttachmentRef] = []
        for ref in refs:
            try:
                data = b"".join([chunk async for chunk in self.attachments.read(ref.key)])
            except AttachmentNotFoundError:
                missing.append(ref)
                continue
            found.append((ref, data))
        return found, missing

    async def _delete_attachments(self, refs: Sequence[AttachmentRef]) -> None:
        for ref in refs:
            try:
                await self.attachments.delete(ref.key)
            except Exception:
                logger.warning("could not delete attachment key=%s of a sent mail", ref.key)


async def _settle_quietly(settle: Awaitable[None]) -> None:
    try:
        await asyncio.shield(settle)
    except Exception:
        logger.exception("could not hand a delivery back; it returns when its lease expires")
