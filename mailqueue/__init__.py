"""mailqueue: send e-mail asynchronously and reliably.

Applications hand a :class:`Mail` to :class:`MailQueue`; it keeps the
attachments, records the mail in a :class:`~mailqueue.protocols.Store`, puts
it on a durable :class:`~mailqueue.protocols.Queue`, and a :class:`Worker`
delivers it over SMTP within concurrency and rate limits, recording every
attempt. Backends are chosen by URL (see :mod:`mailqueue.registry`).

Importing this package imports no broker or database driver.
"""

from __future__ import annotations

from mailqueue._version import __version__
from mailqueue.client import MailQueue
from mailqueue.errors import (
    AttachmentError,
    AttachmentNotFoundError,
    AttachmentTooLargeError,
    BackendError,
    ConfigurationError,
    DeliveryError,
    DeliveryTimeoutError,
    MailQueueError,
    MissingDependencyError,
    PermanentDeliveryError,
    QueueError,
    StoreError,
    TransientDeliveryError,
    UnknownDeliveryError,
    UnknownSchemeError,
    ValidationError,
)
from mailqueue.maintenance import Maintenance
from mailqueue.message import (
    Attachment,
    AttachmentRef,
    Mail,
    Recipient,
    check_headers,
    list_unsubscribe_headers,
    parse_recipients,
    sanitize_filename,
)
from mailqueue.mime import render
from mailqueue.protocols import (
    AttachmentStore,
    BackendContext,
    BatchStore,
    BatchUpdateStore,
    Delivery,
    InspectableStore,
    ListableAttachmentStore,
    OutgoingMessage,
    PrunableStore,
    Queue,
    QueueCapabilities,
    RecipientReply,
    Sender,
    SendResult,
    Store,
    StoredAttachment,
    SuppressionStore,
)
from mailqueue.records import (
    ActivityBucket,
    Attempt,
    MailRecord,
    RecipientOutcome,
    RecipientState,
    RecordQuery,
    RecordUpdate,
    Status,
)
from mailqueue.sending.limits import RateLimiter, parse_rate
from mailqueue.settings import (
    APISettings,
    RetentionSettings,
    Settings,
    SuppressionSettings,
    WorkerSettings,
    load_settings,
)
from mailqueue.suppression import Suppression, SuppressionQuery, SuppressionReason
from mailqueue.suppression_list import Suppressions
from mailqueue.worker import Worker

__all__ = [
    "APISettings",
    "ActivityBucket",
    "Attachment",
    "AttachmentError",
    "AttachmentNotFoundError",
    "AttachmentRef",
    "AttachmentStore",
    "AttachmentTooLargeError",
    "Attempt",
    "BackendContext",
    "BackendError",
    "BatchStore",
    "BatchUpdateStore",
    "ConfigurationError",
    "Delivery",
    "DeliveryError",
    "DeliveryTimeoutError",
    "InspectableStore",
    "ListableAttachmentStore",
    "Mail",
    "MailQueue",
    "MailQueueError",
    "MailRecord",
    "Maintenance",
    "MissingDependencyError",
    "OutgoingMessage",
    "PermanentDeliveryError",
    "PrunableStore",
    "Queue",
    "QueueCapabilities",
    "QueueError",
    "RateLimiter",
    "Recipient",
    "RecipientOutcome",
    "RecipientReply",
    "RecipientState",
    "RecordQuery",
    "RecordUpdate",
    "RetentionSettings",
    "SendResult",
    "Sender",
    "Settings",
    "Status",
    "Store",
    "StoreError",
    "StoredAttachment",
    "Suppression",
    "SuppressionQuery",
    "SuppressionReason",
    "SuppressionSettings",
    "SuppressionStore",
    "Suppressions",
    "TransientDeliveryError",
    "UnknownDeliveryError",
    "UnknownSchemeError",
    "ValidationError",
    "Worker",
    "WorkerSettings",
    "__version__",
    "check_headers",
    "list_unsubscribe_headers",
    "load_settings",
    "parse_rate",
    "parse_recipients",
    "render",
    "sanitize_filename",
]
