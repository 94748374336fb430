"""Outbox sender: writes each message to a folder instead of sending it.

URL::

    outbox://./outbox              a folder relative to the working directory
    outbox:///var/spool/outbox     an absolute folder
    outbox://./outbox?from=noreply@example.com

Option ``from``: the sender's address (:attr:`OutboxSender.from_address`),
validated; default ``mailqueue@example.com`` (a documentation domain: the
outbox delivers nothing). No other option is accepted.

For each message two files appear in the folder (created by ``open()``):

- ``<mail_id>.json``, the envelope: ``{"mail_id", "envelope_from",
  "recipients", "size", "written_at"}``, so that Bcc recipients, which are
  not in the headers, are not lost;
- ``<mail_id>.eml``, the message bytes exactly as rendered.

Each is written completely and fsync'ed before it gets its name, so a reader
never sees a partial file: on Linux as an unnamed file (``O_TMPFILE``) that is
then linked in, elsewhere (or where the file system cannot) as a hidden
temporary file renamed over the final name. The envelope is named first, so
an ``.eml`` always has its ``.json`` beside it. :meth:`OutboxSender.send`
returns only once the folder is fsync'ed after its names were made: the files
are durable before the mail is reported sent. The two files of a mail are
written and fsync'ed side by side, and concurrent sends are named and made
durable together (one folder fsync for every send whose files were ready
before it started), so a mail waits for about two commits of the file
system, whatever the load. Sending the same mail again replaces both. Every
recipient is reported accepted (250). Disk errors are
:class:`~mailqueue.errors.TransientDeliveryError`. File work runs in a pool
of up to 32 threads, off the event loop, so that the fsyncs of concurrent
sends overlap (the file system commits them together).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, Self
from urllib.parse import unquote, urlsplit

from pydantic import Field

from mailqueue.backends._base import OptionsModel, parse_options
from mailqueue.batching import Batcher
from mailqueue.errors import ConfigurationError, PermanentDeliveryError, TransientDeliveryError
from mailqueue.message import check_address
from mailqueue.protocols import BackendContext, OutgoingMessage, RecipientReply, ResourceMixin, SendResult

__all__ = ["DEFAULT_FROM", "OutboxOptions", "OutboxSender"]

#: The sender's address when the URL gives none.
DEFAULT_FROM = "mailqueue@example.com"

_MAIL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Threads writing files at once: fsyncs waiting together are committed together.
_THREADS = 32
#: Most mails named and made durable by one folder fsync.
_BATCH = 256
#: Linux: files are written unnamed and linked in (one directory change instead of create + rename).
_O_TMPFILE: int | None = getattr(os, "O_TMPFILE", None)
_PROC_FD = "/proc/self/fd"
_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_FOLDER_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC
#: Folder fsync failures that only mean "not supported here".
_NO_DIR_SYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF})
_encode = json.JSONEncoder(ensure_ascii=False).encode


class OutboxOptions(OptionsModel):
    """The options of an ``outbox://`` URL."""

    #: The sender's address; empty means :data:`DEFAULT_FROM`.
    from_: str = Field(DEFAULT_FROM, alias="from")


class OutboxSender(ResourceMixin):
    """Write messages as ``.eml`` files (plus a ``.json`` envelope) into a folder.

    Args:
        path: the folder; created on :meth:`open` with its parents.
        from_address: the sender's address (validated).

    Raises:
        ConfigurationError: the address is invalid.
    """

    #: The URL's options.
    url_options: ClassVar[type[OptionsModel]] = OutboxOptions

    def __init__(self, *, path: str | os.PathLike[str], from_address: str = DEFAULT_FROM) -> None:
        try:
            self.from_address: str = check_address(from_address)
        except ValueError as exc:
            raise ConfigurationError(f"invalid from address: {exc}") from None
        self.path = Path(path)
        self._folder: Path | None = None
        self._threads: ThreadPoolExecutor | None = None
        # unnamed files are used once the folder was seen to support them
        self._unnamed = False
        # the files of concurrent sends are named, then the folder fsync'ed, together
        self._publish: Batcher[tuple[_Pending, _Pending], None] = Batcher(self._publish_batch, _BATCH)

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext | None = None) -> Self:
        """Build an outbox from ``outbox://./relative`` or ``outbox:///absolute``.

        Raises:
            ConfigurationError: wrong scheme, no folder, or an unknown option.
        """
        parts = urlsplit(url)
        if parts.scheme.lower() != "outbox":
            raise ConfigurationError(f"not an outbox:// URL (scheme {parts.scheme!r})")
        # outbox://./x has netloc "." and path "/x"; outbox:///x has an empty netloc.
        raw = parts.netloc + parts.path if parts.netloc else parts.path
        path = unquote(raw)
        if not path:
            raise ConfigurationError(
                "the outbox URL names no folder (use outbox://./outbox or outbox:///path)"
            )
        options = parse_options(url, OutboxOptions, label="outbox://", once=True)
        return cls(path=path, from_address=options.from_ or DEFAULT_FROM)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, from_address={self.from_address!r})"

    async def open(self) -> None:
        """Create the folder (and its parents) if missing.

        Raises:
            ConfigurationError: the folder cannot be created.
        """
        folder = self.path.absolute()
        try:
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"cannot create outbox folder {str(folder)!r}: {exc}") from None
        self._unnamed = await asyncio.to_thread(_can_write_unnamed, folder)
        self._folder = folder
        if self._threads is None:
            self._threads = ThreadPoolExecutor(_THREADS, thread_name_prefix="mailqueue-outbox")

    async def close(self) -> None:
        """Stop the writing threads (after the writes under way); idempotent."""
        self._folder = None
        await self._publish.drain()
        threads, self._threads = self._threads, None
        if threads is not None:
            await asyncio.to_thread(threads.shutdown)

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Write ``message`` to ``<mail_id>.eml`` and its envelope to ``<mail_id>.json``.

        Returns:
            every distinct recipient with ``250``.

        Raises:
            PermanentDeliveryError: the mail id cannot be a file name.
            TransientDeliveryError: the files could not be written.
            RuntimeError: the outbox was not opened.
        """
        folder = self._folder
        if folder is None:
            raise RuntimeError("OutboxSender is not open; call open() or use 'async with'")
        if not _MAIL_ID_RE.fullmatch(message.mail_id):
            raise PermanentDeliveryError(f"mail id {message.mail_id!r} cannot be used as a file name")
        recipients = list(dict.fromkeys(message.recipients))
        sidecar = _envelope(
            message.mail_id, message.envelope_from, recipients, len(message.data), datetime.now(UTC)
        )
        threads = self._threads
        assert threads is not None
        loop = asyncio.get_running_loop()
        unnamed = self._unnamed
        write = functools.partial(_write_pair, folder, message.mail_id, sidecar, message.data, unnamed)
        try:
            pair = await loop.run_in_executor(threads, write)
            await self._publish.call(pair)
        except OSError as exc:
            if isinstance(exc, _LinkError):
                # the unnamed files could not be linked in: name files the portable way from now on
                self._unnamed = False
            raise TransientDeliveryError(f"cannot write to outbox {str(folder)!r}: {exc}") from exc
        target = folder / f"{message.mail_id}.eml"
        reply = RecipientReply(250, f"2.0.0 written to {target}")
        return SendResult(dict.fromkeys(recipients, reply))

    async def _publish_batch(self, pairs: list[tuple[_Pending, _Pending]]) -> list[Exception | None]:
        """Name the files of ``pairs`` (each envelope before its message), then fsync the folder once."""
        folder, threads = self._folder, self._threads
        if folder is None or threads is None:
            for envelope, message in pairs:
                envelope.discard()
                message.discard()
            return [OSError(errno.EBADF, "the outbox was closed") for _ in pairs]
        run = functools.partial(_publish, folder, pairs)
        return await asyncio.get_running_loop().run_in_executor(threads, run)


class _LinkError(OSError):
    """An unnamed file could not be given its name."""


@dataclass(slots=True)
class _Pending:
    """A complete, fsync'ed file waiting for its name: open and unnamed, or under a hidden temporary name."""

    folder: Path
    name: str
    fd: int | None = None
    temp: str | None = None

    def publish(self, folder_fd: int | None) -> None:
        """Give the file its name (replacing a file of that name); never a partial file under it."""
        try:
            if self.fd is not None:
                try:
                    _link(self.fd, self.name, folder_fd)
                except FileExistsError:
                    # sent again: link beside it, then replace it in one step
                    self.temp = _temp_name(self.name)
                    _link(self.fd, self.temp, folder_fd)
            if self.temp is not None:
                os.replace(self.folder / self.temp, self.folder / self.name)
                self.temp = None
        finally:
            self.discard()

    def discard(self) -> None:
        """Close the file and remove what is left of it (nothing once it is named)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
        temp, self.temp = self.temp, None
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.folder / temp)


def _envelope(
    mail_id: str, envelope_from: str, recipients: list[str], size: int, written_at: datetime
) -> bytes:
    """``json.dumps(envelope, ensure_ascii=False, indent=2)`` plus a newline, without the
    pure-Python encoder that ``indent`` selects."""
    items = ",\n".join(f"    {_encode(address)}" for address in recipients)
    listed = f"[\n{items}\n  ]" if recipients else "[]"
    return (
        f'{{\n  "mail_id": {_encode(mail_id)},\n  "envelope_from": {_encode(envelope_from)},\n'
        f'  "recipients": {listed},\n  "size": {size},\n'
        f'  "written_at": {_encode(written_at.isoformat())}\n}}\n'
    ).encode()


def _temp_name(name: str) -> str:
    return f".{name}.{secrets.token_hex(6)}.tmp"


def _write_pair(
    folder: Path, mail_id: str, envelope: bytes, data: bytes, unnamed: bool
) -> tuple[_Pending, _Pending]:
    first = _write(folder, f"{mail_id}.json", envelope, unnamed)
    try:
        return first, _write(folder, f"{mail_id}.eml", data, unnamed)
    except BaseException:
        first.discard()
        raise


def _write(folder: Path, name: str, data: bytes, unnamed: bool) -> _Pending:
    """Write and fsync ``data`` into a file that has no name yet (or a hidden temporary one)."""
    pending = _Pending(folder, name)
    try:
        if unnamed:
            assert _O_TMPFILE is not None
            pending.fd = os.open(folder, _O_TMPFILE | os.O_WRONLY | _CLOEXEC, 0o600)
        else:
            pending.temp = _temp_name(name)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC | getattr(os, "O_BINARY", 0)
            pending.fd = os.open(folder / pending.temp, flags, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(pending.fd, view) :]
        os.fsync(pending.fd)
        if pending.temp is not None:
            os.close(pending.fd)
            pending.fd = None
    except BaseException:
        pending.discard()
        raise
    return pending


def _link(fd: int, name: str, folder_fd: int | None) -> None:
    """Name the unnamed file ``fd`` (``linkat`` with ``AT_SYMLINK_FOLLOW``, which ``dst_dir_fd`` selects)."""
    try:
        if folder_fd is None:
            raise OSError(errno.EBADF, "the folder could not be opened")
        os.link(f"{_PROC_FD}/{fd}", name, dst_dir_fd=folder_fd, follow_symlinks=True)
    except FileExistsError:
        raise
    except OSError as exc:
        raise _LinkError(exc.errno, exc.strerror, name) from exc


def _publish(folder: Path, pairs: list[tuple[_Pending, _Pending]]) -> list[Exception | None]:
    """Name each pair's envelope, then its message; then make the names durable with one folder fsync."""
    results: list[Exception | None] = []
    try:
        folder_fd: int | None = os.open(folder, _FOLDER_FLAGS)
    except OSError:
        folder_fd = None  # where folders cannot be opened, they cannot be fsync'ed either
    try:
        for envelope, message in pairs:
            try:
                envelope.publish(folder_fd)
                message.publish(folder_fd)
            except OSError as exc:
                message.discard()
                results.append(exc)
            else:
                results.append(None)
        if folder_fd is not None:
            _fsync_folder(folder_fd)
    finally:
        if folder_fd is not None:
            os.close(folder_fd)
    return results


def _can_write_unnamed(folder: Path) -> bool:
    """Whether files can be made unnamed in ``folder`` and named through ``/proc/self/fd``."""
    if _O_TMPFILE is None:
        return False
    try:
        fd = os.open(folder, _O_TMPFILE | os.O_WRONLY | _CLOEXEC, 0o600)
    except OSError:
        return False
    probe = _temp_name("probe")
    try:
        folder_fd = os.open(folder, _FOLDER_FLAGS)
        try:
            _link(fd, probe, folder_fd)
            os.unlink(probe, dir_fd=folder_fd)
        finally:
            os.close(folder_fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _fsync_folder(folder_fd: int) -> None:
    """Make the names in the folder durable (POSIX); a no-op where folders cannot be synced."""
    try:
        os.fsync(folder_fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_SYNC:
            raise
