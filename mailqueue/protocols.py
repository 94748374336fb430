"""The four contracts every backend implements: Queue, Sender, Store and
AttachmentStore.

Backends move bytes and acknowledge; the core (client and worker) owns the
semantics: retry and backoff, dedup, dead-letter policy, rendering, limits.
Every backend is an async context manager: ``open()`` connects (and creates
what it needs), ``close()`` releases everything and is safe to call twice.
Driver exceptions never escape a backend; they are translated into
:mod:`mailqueue.errors`.

How a backend is built: an entry point of one of the four groups
(``mailqueue.queues``, ``mailqueue.senders``, ``mailqueue.stores``,
``mailqueue.attachment_stores``; its name is the URL scheme) names a
:class:`BackendFactory`, normally the backend class itself. The registry's
``create_queue(url)`` (and ``create_sender``, ``create_store``,
``create_attachment_store``) imports only that entry point's module, once, and
calls ``factory.from_url(url, context=context or BackendContext())``; it never
calls the factory itself. What ``from_url`` returns is built, not opened. The
backend reads its URL options there (the built-in ones with
:func:`mailqueue.backends._base.parse_options`, refusing an unknown option with
a :class:`~mailqueue.errors.ConfigurationError` that lists the valid ones).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from mailqueue.records import ActivityBucket, MailRecord, RecordQuery, RecordUpdate, Status
    from mailqueue.suppression import Suppression, SuppressionQuery

__all__ = [
    "AttachmentStore",
    "BackendContext",
    "BackendFactory",
    "BatchStore",
    "BatchUpdateStore",
    "Consumer",
    "Delivery",
    "InspectableStore",
    "ListableAttachmentStore",
    "OutgoingMessage",
    "PrunableStore",
    "PurgeableAttachmentStore",
    "Queue",
    "QueueCapabilities",
    "RecipientReply",
    "Resource",
    "SendResult",
    "Sender",
    "Store",
    "StoredAttachment",
    "SuppressionStore",
]


@runtime_checkable
class Resource(Protocol):
    """Something that is opened before use and closed after."""

    async def open(self) -> None:
        """Connect and prepare; raise a :class:`~mailqueue.errors.BackendError` if unreachable."""

    async def close(self) -> None:
        """Release connections and tasks; idempotent."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class ResourceMixin:
    """``async with`` support for classes that define ``open`` and ``close``."""

    async def open(self) -> None:  # pragma: no cover - overridden
        """Connect and prepare."""

    async def close(self) -> None:  # pragma: no cover - overridden
        """Release everything."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# --- Queue ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueCapabilities:
    """What a queue backend can do beyond the contract's minimum.

    Attributes:
        delay: ``Delivery.retry(delay)`` makes the message reappear no
            earlier than ``delay`` seconds later (without it the message may
            come back sooner, and the worker waits out the rest).
        shared: several processes (and machines) can publish and consume the
            same queue; ``False`` for in-process queues.
        depth: :meth:`Queue.depth` returns a number rather than ``None``.
        ordered: messages published one after another (no delay) by one
            publisher reach a single consumer that settles each before
            taking the next in publish order; ``False`` where the queue is
            split into independent parts (e.g. a Kafka topic of several
            partitions, ordered only within each).
    """

    delay: bool = True
    shared: bool = True
    depth: bool = False
    ordered: bool = True


@runtime_checkable
class Delivery(Protocol):
    """One message handed out by :meth:`Queue.consume`.

    Exactly one of ``ack``, ``retry``, ``dead`` or ``release`` is called once
    the outcome is recorded; until then the message stays owned by this
    consumer and is redelivered if the consumer dies.
    """

    @property
    def key(self) -> str:
        """The key it was published under (the mail id)."""

    @property
    def body(self) -> bytes:
        """The payload exactly as published."""

    @property
    def redelivered(self) -> bool:
        """True if this message may have been handed out before."""

    async def ack(self) -> None:
        """Done: remove the message for good."""

    async def retry(self, delay: float) -> None:
        """Hand the message back to be delivered again after ``delay`` seconds."""

    async def dead(self, reason: str) -> None:
        """Move the message to the dead-letter place, with a reason."""

    async def release(self) -> None:
        """Give the message back for immediate redelivery (shutdown, no outcome)."""


@runtime_checkable
class Consumer(Protocol):
    """What :meth:`Queue.consume` returns: an async iterator of deliveries
    that can be closed from any task (ending a pending ``__anext__``)."""

    def __aiter__(self) -> Consumer: ...

    async def __anext__(self) -> Delivery:
        """The next delivery; waits for one. Raises StopAsyncIteration once closed."""

    async def aclose(self) -> None:
        """Stop consuming and give back deliveries fetched but not yet handed out."""


@runtime_checkable
class Queue(Resource, Protocol):
    """A durable queue of mail ids and payloads, at-least-once."""

    capabilities: QueueCapabilities

    async def publish(self, key: str, body: bytes, *, delay: float = 0.0) -> None:
        """Return only once the message is durably accepted; raise
        :class:`~mailqueue.errors.QueueError` otherwise."""

    def consume(self, *, prefetch: int) -> Consumer:
        """Yield deliveries, at most ``prefetch`` unsettled at once, until closed."""

    async def depth(self) -> int | None:
        """Messages waiting (ready or delayed), or ``None`` if it cannot tell."""


# --- Sender -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A rendered message and its SMTP envelope."""

    mail_id: str
    data: bytes
    envelope_from: str
    recipients: Sequence[str]


@dataclass(frozen=True, slots=True)
class RecipientReply:
    """The server's answer about one recipient.

    ``suppressed`` is set (to the reason) by the suppression step of the sending
    chain for a recipient it did not hand on because the address is on the
    suppression list; such a reply is a permanent 550 that no server gave.

    ``retry_after`` is set only by a link of the sending chain that did not send to the
    recipient because a limit of its own has no slot free now (a recipient domain's rate,
    :mod:`mailqueue.sending.domains`): ``code`` is then a 4xx, and the worker keeps the
    recipient pending and tries it again after that many seconds *without counting a failed
    attempt* (no server refused anything).
    """

    code: int
    reply: str
    suppressed: str = ""
    retry_after: float | None = None

    @property
    def accepted(self) -> bool:
        """2xx: the server took responsibility for this recipient."""
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        """5xx: refused for good."""
        return self.code >= 500


@dataclass(frozen=True, slots=True)
class SendResult:
    """Per-recipient replies of one delivery; every envelope recipient is present."""

    replies: dict[str, RecipientReply] = field(default_factory=dict)

    @property
    def accepted(self) -> list[str]:
        """Recipients the server accepted the message for."""
        return [rcpt for rcpt, reply in self.replies.items() if reply.accepted]


@runtime_checkable
class Sender(Resource, Protocol):
    """Hands rendered messages to a mail server (or a folder)."""

    @property
    def from_address(self) -> str:
        """The address messages are rendered with (From header and default envelope sender)."""

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Deliver to every recipient the server accepts and report each.

        A recipient refused at RCPT (4xx or 5xx) appears in the result with
        that reply and does not make the call raise. The call raises
        :class:`~mailqueue.errors.TransientDeliveryError` (4xx on MAIL/DATA,
        connection error, timeout before the final dot),
        :class:`~mailqueue.errors.PermanentDeliveryError` (5xx on MAIL/DATA) or
        :class:`~mailqueue.errors.UnknownDeliveryError` (lost after the final
        dot).
        """


# --- Store ------------------------------------------------------------------


@runtime_checkable
class Store(Resource, Protocol):
    """The record of every mail: the source of truth for status and dedup."""

    async def add(self, record: MailRecord) -> MailRecord:
        """Create the record and return it; if its mail's idempotency key is
        already taken, create nothing and return the existing record."""

    async def get(self, mail_id: str) -> MailRecord | None:
        """The record with its attempt history, or ``None``."""

    async def find(self, query: RecordQuery) -> list[MailRecord]:
        """At most ``query.limit`` records matching ``query``, in ``query.order``, without history."""

    async def update(self, mail_id: str, change: RecordUpdate) -> bool:
        """Apply ``change`` atomically; ``False`` if the record is missing or
        ``change.expect`` did not match its status."""

    async def ping(self) -> None:
        """Raise :class:`~mailqueue.errors.StoreError` if the store is unreachable."""


@runtime_checkable
class PrunableStore(Protocol):
    """Optional Store capability: delete records, a batch at a time (``mailqueue prune``).

    A Store without it still works: soft pruning then updates one record at
    a time, hard pruning refuses and says why.
    """

    async def delete_records(
        self, mail_ids: Sequence[str], *, statuses: frozenset[Status], soft: bool = False
    ) -> list[str]:
        """Delete, in one transaction, those of ``mail_ids`` whose status is one
        of ``statuses`` (checked at deletion), with their attempt history, or with
        ``soft`` mark them ``is_deleted`` (those not marked yet); return their ids."""


@runtime_checkable
class BatchStore(Protocol):
    """Optional Store capability: the writes of many submits in one statement each.

    :class:`~mailqueue.MailQueue` uses it to group the records of concurrent
    submits into one transaction (each submit still returns only after the
    commit that holds its record) and to clear their "not yet published"
    marks after the queue confirmed them. A Store without it is written one
    record at a time.
    """

    async def add_many(self, records: Sequence[MailRecord]) -> list[MailRecord]:
        """Insert ``records`` (new, without idempotency key or history) in one
        transaction, all or none; return them as stored, in the same order."""

    async def clear_last_error(self, mail_ids: Sequence[str], *, expected: str) -> None:
        """Set ``last_error`` to ``""`` on those of ``mail_ids`` that are still
        ``queued`` and whose ``last_error`` is ``expected``, in one statement."""


@runtime_checkable
class BatchUpdateStore(Protocol):
    """Optional Store capability: read or change many records in one round trip.

    The worker groups the reads, claims and outcomes of concurrent deliveries
    through it (group commit). A Store without it works the same, one record
    at a time.
    """

    async def get_many(self, mail_ids: Sequence[str]) -> dict[str, MailRecord]:
        """The records of those of ``mail_ids`` that exist, by id, without history."""

    async def update_many(self, changes: Sequence[tuple[str, RecordUpdate]]) -> list[bool]:
        """Apply each ``(mail_id, change)`` as :meth:`Store.update` would, in order, in
        one transaction: all are committed, or none is and the call raises. Returns
        what :meth:`Store.update` would have returned for each."""


@runtime_checkable
class InspectableStore(Protocol):
    """Optional Store capability: counts and activity for an operator's overview.

    A Store without it still works; a dashboard then shows lists only.
    """

    async def count_by_status(self, *, include_deleted: bool = False) -> dict[Status, int]:
        """How many records are in each status; every :class:`Status` is a key (0 when none)."""

    async def count(self, query: RecordQuery, *, cap: int = 10_000) -> int:
        """How many records match ``query`` (its ``limit``, ``order`` and cursors
        ignored), counting no further than ``cap``: ``min(matches, cap)``."""

    async def activity(self, *, since: datetime, bucket: timedelta) -> list[ActivityBucket]:
        """Mails accepted (``created_at``), sent (``sent_at``) and failed (now
        ``failed``/``dead``/``bounced``, by ``updated_at``; soft-deleted ones count too) per
        ``bucket`` (a positive whole number of seconds), oldest first, from
        ``since`` floored to a multiple of ``bucket`` since the Unix epoch up to
        the bucket holding now, empty ones included; ``ValueError`` for a bad
        ``bucket`` or more than 10,000 buckets."""


@runtime_checkable
class SuppressionStore(Protocol):
    """Optional Store capability: the suppression list (:mod:`mailqueue.suppression`).

    Addresses given and returned are normalised
    (:func:`~mailqueue.suppression.normalize_address`); there is at most one entry
    per address. A Store without it has no suppression list: nothing is suppressed,
    and the API and CLI say the list is not available.
    """

    async def add_suppression(self, entry: Suppression) -> Suppression:
        """Insert ``entry``, or replace every field of the address's entry with its
        (the last add wins, expired or not); return it as stored."""

    async def remove_suppression(self, address: str) -> bool:
        """Delete the address's entry; ``False`` if there was none."""

    async def get_suppressions(self, addresses: Sequence[str], *, now: datetime) -> dict[str, Suppression]:
        """The entries of those of ``addresses`` that suppress at ``now`` (not expired),
        by address, in one query."""

    async def list_suppressions(self, query: SuppressionQuery) -> list[Suppression]:
        """At most ``query.limit`` entries matching ``query``, newest first then by
        address, after skipping ``query.offset``."""

    async def count_suppressions(self, query: SuppressionQuery) -> int:
        """How many entries match ``query`` (its ``limit`` and ``offset`` ignored)."""


# --- AttachmentStore --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredAttachment:
    """What :meth:`AttachmentStore.put` stored."""

    key: str
    size: int
    sha256: str


@runtime_checkable
class AttachmentStore(Resource, Protocol):
    """Attachment bytes under generated keys."""

    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> StoredAttachment:
        """Stream ``chunks`` in under a new generated key. Over ``max_bytes``
        raise :class:`~mailqueue.errors.AttachmentTooLargeError` and keep nothing."""

    def read(self, key: str) -> AsyncIterator[bytes]:
        """Yield the bytes in chunks; raise
        :class:`~mailqueue.errors.AttachmentNotFoundError` if missing."""

    async def delete(self, key: str) -> None:
        """Remove the attachment; a missing key is not an error."""


@runtime_checkable
class ListableAttachmentStore(Protocol):
    """Optional AttachmentStore capability: list what is stored, with its age.

    The retention sweep (:meth:`~mailqueue.client.MailQueue.sweep_attachments`)
    needs it; an AttachmentStore without it is simply not swept.
    """

    def list_keys(self, *, before: datetime) -> AsyncIterator[tuple[str, datetime]]:
        """Yield ``(key, stored_at)`` (timezone-aware UTC) of every complete
        attachment stored before ``before``, in no particular order."""


@runtime_checkable
class PurgeableAttachmentStore(Protocol):
    """Optional AttachmentStore capability: remove uploads a crash left unfinished.

    An upload whose writer died (a killed API process) is never complete, so
    no mail refers to it and :class:`ListableAttachmentStore` does not list
    it; the retention sweep removes it with this once it is
    ``retention.orphans_after`` old.
    """

    async def purge_incomplete(self, *, older_than: float = 3600.0) -> int:
        """Remove unfinished uploads started more than ``older_than`` seconds ago;
        return how many were removed. Uploads in progress are younger and stay."""


@dataclass(frozen=True, slots=True)
class BackendContext:
    """What a backend factory may use besides its URL.

    ``store`` is the opened-or-not Store of the same deployment, so that the
    ``sql`` queue and attachment store can share its database.
    """

    store: Store | None = None


_Backend_co = TypeVar("_Backend_co", covariant=True)


@runtime_checkable
class BackendFactory(Protocol[_Backend_co]):
    """What an entry point of the four groups names, and what the registry calls.

    Normally the backend class, whose ``from_url`` is a classmethod:
    ``BackendFactory[Queue]`` for a queue class, ``BackendFactory[Sender]``,
    ``BackendFactory[Store]``, ``BackendFactory[AttachmentStore]``.
    """

    def from_url(self, url: str, *, context: BackendContext) -> _Backend_co:
        """Build (not open) the backend that ``url`` describes.

        Raises:
            ConfigurationError: the URL is not for this backend, or has an
                unknown option (the message lists the valid ones) or a bad value.
        """
        ...
