"""What every backend shares: the one place where a driver's exceptions become ours.

A backend calls its driver inside :func:`translate_errors`, and whatever the
driver raises comes out as the backend's own error (:class:`QueueError`,
:class:`StoreError`, ...), the original kept as ``__cause__``. *Any*
exception, not only the ones a driver documents: asyncmy raises a plain
``RuntimeError`` when a connection is reset while it connects, aiokafka an
``AssertionError`` now and then, and an exception let through becomes a 500
on the API or a delivery the worker cannot classify.

Imports no driver.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mailqueue.errors import BackendError, MailQueueError

__all__ = ["describe", "translate_errors"]

#: The longest driver text an error message carries.
_DETAIL_MAX = 500


def describe(exc: BaseException) -> str:
    """The driver's own words about a failure, without SQL or parameters.

    SQLAlchemy's wrapped errors are described by the driver's exception
    (``orig``); an ``OSError`` by its text; anything else by its type and text,
    since its type is often all that says what happened.
    """
    original = getattr(exc, "orig", None)
    if original is not None:
        text = str(original).strip()
    elif isinstance(exc, OSError):
        text = str(exc).strip()
    else:
        text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    return (text or type(exc).__name__)[:_DETAIL_MAX]


@contextlib.contextmanager
def translate_errors(error: type[BackendError], action: str) -> Iterator[None]:
    """Raise any exception of the block as ``error(f"{action}: <what the driver said>")``.

    A :class:`MailQueueError` passes unchanged (the backend's own verdict, or an
    inner translation). Cancellation (not an ``Exception``) passes too.
    """
    try:
        yield
    except MailQueueError:
        raise
    except Exception as exc:
        raise error(f"{action}: {describe(exc)}") from exc
