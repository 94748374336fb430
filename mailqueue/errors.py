"""Every exception mailqueue raises.

Backends translate their drivers' exceptions into these at their boundary, so
an application only ever catches this tree::

    MailQueueError
    ├── ConfigurationError                 bad settings, unusable URL
    │   ├── UnknownSchemeError (LookupError)   no backend for a URL scheme
    │   └── MissingDependencyError (ImportError)  backend's extra not installed
    ├── ValidationError (ValueError)       bad input; names the field and why
    ├── AttachmentError
    │   ├── AttachmentTooLargeError        over the size limit; nothing kept
    │   └── AttachmentNotFoundError (KeyError)
    ├── BackendError                       a queue/store/attachment backend failed
    │   ├── QueueError                     publish not confirmed, consume failed
    │   └── StoreError                     the record could not be read or written
    └── DeliveryError                      an SMTP delivery did not succeed
        ├── TransientDeliveryError         4xx, connect/disconnect, timeout before DATA
        │   └── DeliveryTimeoutError (TimeoutError)
        ├── PermanentDeliveryError         5xx on MAIL/DATA: never retried
        └── UnknownDeliveryError           lost after the final dot: maybe delivered
"""

from __future__ import annotations

__all__ = [
    "AttachmentError",
    "AttachmentNotFoundError",
    "AttachmentTooLargeError",
    "BackendError",
    "ConfigurationError",
    "DeliveryError",
    "DeliveryTimeoutError",
    "MailQueueError",
    "MissingDependencyError",
    "PermanentDeliveryError",
    "QueueError",
    "StoreError",
    "TransientDeliveryError",
    "UnknownDeliveryError",
    "UnknownSchemeError",
    "ValidationError",
]


class MailQueueError(Exception):
    """Base class of every mailqueue exception."""


class ConfigurationError(MailQueueError):
    """Settings or a backend URL cannot be used as given."""


class UnknownSchemeError(ConfigurationError, LookupError):
    """No backend is registered for a URL scheme.

    Attributes:
        group: the entry-point group that was searched.
        scheme: the scheme asked for.
        suggestion: the closest registered scheme, if any is close.
    """

    def __init__(self, group: str, scheme: str, known: list[str], suggestion: str | None) -> None:
        self.group = group
        self.scheme = scheme
        self.known = known
        self.suggestion = suggestion
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        listed = ", ".join(sorted(known)) or "none"
        if group == "mailqueue.sending_steps":
            super().__init__(f"no sending step named {scheme!r}{hint} (known: {listed})")
        else:
            super().__init__(f"no {group} backend for scheme {scheme!r}{hint} (known: {listed})")


class MissingDependencyError(ConfigurationError, ImportError):
    """A backend needs a package that is not installed.

    The message names the ``pip install`` command that fixes it.
    """

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"package {package!r} is not installed; install it with: pip install 'mailqueue[{extra}]'"
        )


class ValidationError(MailQueueError, ValueError):
    """Input was refused. ``field`` names what was wrong and ``reason`` why.

    Attributes:
        errors: every problem found, as ``(field, reason)`` pairs.
    """

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        if not errors:
            raise ValueError("ValidationError needs at least one error")
        self.errors = errors
        self.field, self.reason = errors[0]
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in errors))


class AttachmentError(MailQueueError):
    """An attachment could not be stored or read."""


class AttachmentTooLargeError(AttachmentError):
    """An attachment exceeded its size limit; nothing of it was kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"attachment is larger than the limit of {limit} bytes")


class AttachmentNotFoundError(AttachmentError, KeyError):
    """No attachment is stored under the key."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"no attachment stored under key {key!r}")

    def __str__(self) -> str:
        return str(self.args[0])


class BackendError(MailQueueError):
    """A queue, store or attachment backend failed (unreachable, refused, ...)."""


class QueueError(BackendError):
    """The queue could not confirm a publish, or consuming failed."""


class StoreError(BackendError):
    """The Store could not read or write a record."""


class DeliveryError(MailQueueError):
    """An SMTP delivery did not succeed.

    Attributes:
        code: the SMTP reply code, or ``None`` when there was no reply
            (connection error, timeout).
        reply: the server's reply text, or a description of the failure.
    """

    def __init__(self, reply: str, code: int | None = None) -> None:
        self.code = code
        self.reply = reply
        super().__init__(f"{code} {reply}" if code is not None else reply)


class TransientDeliveryError(DeliveryError):
    """Worth retrying later: 4xx, connection refused or lost, timeout before DATA."""


class DeliveryTimeoutError(TransientDeliveryError, TimeoutError):
    """The server did not answer in time, before the message was handed over."""


class PermanentDeliveryError(DeliveryError):
    """Refused for good (5xx on MAIL FROM or DATA): retrying would not help."""


class UnknownDeliveryError(DeliveryError):
    """The connection was lost after the final dot of DATA: the message may
    have been delivered, so it is not retried blindly."""
