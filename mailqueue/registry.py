"""Find backends by URL scheme through entry points, and build them.

Four entry-point groups, one per protocol; an entry point's name is a URL
scheme and its value a class with ``from_url(url, *, context)``::

    [project.entry-points."mailqueue.queues"]
    redis = "mailqueue_redis:RedisQueue"

A fifth group, ``mailqueue.sending_steps``, names links of the sending chain
(:data:`mailqueue.sending.pipeline.StepFactory`: ``(inner, settings) ->
Sender``), chosen by name in the ``sending_steps`` setting.

mailqueue's own backends register the same way, in its ``pyproject.toml``.
Only the module of the scheme asked for is imported, once.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import threading
from dataclasses import dataclass
from typing import Any, Final, Literal, cast
from urllib.parse import urlsplit

from mailqueue.errors import ConfigurationError, MissingDependencyError, UnknownSchemeError
from mailqueue.protocols import AttachmentStore, BackendContext, Queue, Sender, Store

__all__ = [
    "GROUPS",
    "BackendInfo",
    "Group",
    "available",
    "create_attachment_store",
    "create_queue",
    "create_sender",
    "create_store",
    "load",
    "redact_url",
    "scheme_of",
]

Group = Literal[
    "mailqueue.queues",
    "mailqueue.senders",
    "mailqueue.stores",
    "mailqueue.attachment_stores",
    "mailqueue.sending_steps",
]
GROUPS: Final[tuple[Group, ...]] = (
    "mailqueue.queues",
    "mailqueue.senders",
    "mailqueue.stores",
    "mailqueue.attachment_stores",
    "mailqueue.sending_steps",
)

# Which extra brings the driver a backend module failed to import.
_EXTRAS: Final[dict[str, str]] = {
    "aio_pika": "rabbitmq",
    "aiormq": "rabbitmq",
    "aiokafka": "kafka",
    "asyncmy": "mysql",
    "asyncpg": "postgres",
    "litestar": "litestar",
}


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """One registered scheme: where it points and which distribution supplied it."""

    group: Group
    scheme: str
    value: str
    distribution: str | None


_lock = threading.Lock()
_entry_points: dict[Group, dict[str, importlib.metadata.EntryPoint]] | None = None
_loaded: dict[tuple[Group, str], Any] = {}


def _scan() -> dict[Group, dict[str, importlib.metadata.EntryPoint]]:
    global _entry_points
    with _lock:
        if _entry_points is None:
            found: dict[Group, dict[str, importlib.metadata.EntryPoint]] = {g: {} for g in GROUPS}
            conflicts: list[str] = []
            for group in GROUPS:
                for ep in importlib.metadata.entry_points(group=group):
                    previous = found[group].get(ep.name)
                    if previous is not None and previous.value != ep.value:
                        conflicts.append(f"{group} {ep.name!r}: {previous.value} and {ep.value}")
                    found[group][ep.name] = ep
            if conflicts:
                raise ConfigurationError(
                    "two installed packages register the same scheme: " + "; ".join(conflicts)
                )
            _entry_points = found
        return _entry_points


def refresh() -> None:
    """Forget the scanned entry points (after installing a plugin at run time)."""
    global _entry_points
    with _lock:
        _entry_points = None
        _loaded.clear()


def available(group: Group | None = None) -> list[BackendInfo]:
    """Every registered scheme (of one group, or all), sorted by group and scheme."""
    result = []
    for name, eps in _scan().items():
        if group is not None and name != group:
            continue
        for scheme, ep in sorted(eps.items()):
            dist = ep.dist.name if ep.dist is not None else None
            result.append(BackendInfo(name, scheme, ep.value, dist))
    return result


def scheme_of(url: str) -> str:
    """The scheme of a backend URL, lowercased.

    Raises:
        ConfigurationError: the URL has no scheme.
    """
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise ConfigurationError(f"backend URL needs a scheme such as 'memory://': {redact_url(url)!r}")
    return scheme


def load(group: Group, scheme: str) -> Any:
    """Import and return the object registered for ``scheme`` in ``group``.

    Raises:
        UnknownSchemeError: nothing is registered under that scheme.
        MissingDependencyError: the backend's driver is not installed.
    """
    key = (group, scheme)
    if key in _loaded:
        return _loaded[key]
    eps = _scan()[group]
    ep = eps.get(scheme)
    if ep is None:
        close = difflib.get_close_matches(scheme, list(eps), n=1)
        raise UnknownSchemeError(group, scheme, list(eps), close[0] if close else None)
    try:
        obj = ep.load()
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in _EXTRAS:
            raise MissingDependencyError(missing, _EXTRAS[missing]) from exc
        raise
    _loaded[key] = obj
    return obj


def _create(group: Group, url: str, context: BackendContext | None) -> Any:
    factory = load(group, scheme_of(url))
    return factory.from_url(url, context=context or BackendContext())


def create_queue(url: str, *, context: BackendContext | None = None) -> Queue:
    """Build (not open) the queue backend for ``url``."""
    return cast(Queue, _create("mailqueue.queues", url, context))


def create_sender(url: str, *, context: BackendContext | None = None) -> Sender:
    """Build (not open) the sender backend for ``url``."""
    return cast(Sender, _create("mailqueue.senders", url, context))


def create_store(url: str, *, context: BackendContext | None = None) -> Store:
    """Build (not open) the store backend for ``url``."""
    return cast(Store, _create("mailqueue.stores", url, context))


def create_attachment_store(url: str, *, context: BackendContext | None = None) -> AttachmentStore:
    """Build (not open) the attachment store backend for ``url``."""
    return cast(AttachmentStore, _create("mailqueue.attachment_stores", url, context))


def redact_url(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
