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

Each is written atomically: to a hidden temporary file in the same folder,
flushed and fsync'ed, then renamed over the final name, so a reader never
sees a partial file; the envelope is renamed first, so an ``.eml`` always has
its ``.json`` beside it. :meth:`OutboxSender.send` returns only once the folder
is fsync'ed after its renames: the files are durable before the mail is
reported sent. Concurrent sends share that folder fsync (one for every send
that renamed before it started), so a mail costs two file fsyncs and a share
of one folder fsync. Sending the same mail again replaces both. Every
recipient is reported accepted (250). Disk errors are
:class:`~mailqueue.errors.TransientDeliveryError`. File work runs in a pool
of up to 32 threads, off the event loop, so that the fsyncs of concurrent
sends overlap (the file system commits them together).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Self
from urllib.parse import parse_qsl, unquote, urlsplit

from mailqueue.errors import ConfigurationError, PermanentDeliveryError, TransientDeliveryError
from mailqueue.message import check_address
from mailqueue.protocols import BackendContext, OutgoingMessage, RecipientReply, ResourceMixin, SendResult

__all__ = ["DEFAULT_FROM", "OutboxSender"]

#: The sender's address when the URL gives none.
DEFAULT_FROM = "mailqueue@example.com"

_MAIL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Threads writing files at once: fsyncs waiting together are committed together.
_THREADS = 32


class OutboxSender(ResourceMixin):
    """Write messages as ``.eml`` files (plus a ``.json`` envelope) into a folder.

    Args:
        path: the folder; created on :meth:`open` with its parents.
        from_address: the sender's address (validated).

    Raises:
        ConfigurationError: the address is invalid.
    """

    def __init__(self, *, path: str | os.PathLike[str], from_address: str = DEFAULT_FROM) -> None:
        try:
            self.from_address: str = check_address(from_address)
        except ValueError as exc:
            raise ConfigurationError(f"invalid from address: {exc}") from None
        self.path = Path(path)
        self._folder: Path | None = None
        self._threads: ThreadPoolExecutor | None = None
        # Folder fsyncs shared by concurrent sends: renames noted, renames covered, the fsync running.
        self._renamed = 0
        self._synced = 0
        self._syncing: asyncio.Future[None] | None = None

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
        options: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name != "from":
                raise ConfigurationError(f"unknown option {name!r} in outbox URL (known: from)")
            if name in options:
                raise ConfigurationError(f"option {name!r} is given twice in outbox URL")
            options[name] = value
        return cls(path=path, from_address=options.get("from") or DEFAULT_FROM)

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
        self._folder = folder
        if self._threads is None:
            self._threads = ThreadPoolExecutor(_THREADS, thread_name_prefix="mailqueue-outbox")

    async def close(self) -> None:
        """Stop the writing threads (after the writes under way); idempotent."""
        self._folder = None
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
        envelope = {
            "mail_id": message.mail_id,
            "envelope_from": message.envelope_from,
            "recipients": recipients,
            "size": len(message.data),
            "written_at": datetime.now(UTC).isoformat(),
        }
        sidecar = json.dumps(envelope, ensure_ascii=False, indent=2).encode() + b"\n"
        threads = self._threads
        assert threads is not None
        loop = asyncio.get_running_loop()
        try:
            write = functools.partial(_write_pair, folder, message.mail_id, sidecar, message.data)
            await loop.run_in_executor(threads, write)
            await self._sync_folder(folder, threads)
        except OSError as exc:
            raise TransientDeliveryError(f"cannot write to outbox {str(folder)!r}: {exc}") from exc
        target = folder / f"{message.mail_id}.eml"
        reply = RecipientReply(250, f"2.0.0 written to {target}")
        return SendResult(dict.fromkeys(recipients, reply))

    async def _sync_folder(self, folder: Path, threads: ThreadPoolExecutor) -> None:
        """Return once a folder fsync that started after this send's renames has ended."""
        self._renamed += 1
        mine = self._renamed
        while self._synced < mine:
            syncing = self._syncing
            if syncing is None:
                syncing = self._syncing = asyncio.ensure_future(self._fsync(folder, threads, self._renamed))
            # shielded: the fsync serves every send waiting for it, whoever started it
            await asyncio.shield(syncing)

    async def _fsync(self, folder: Path, threads: ThreadPoolExecutor, covered: int) -> None:
        """One folder fsync; renames noted up to ``covered`` are durable once it returns."""
        try:
            await asyncio.get_running_loop().run_in_executor(threads, _fsync_folder, folder)
            self._synced = max(self._synced, covered)
        finally:
            self._syncing = None


def _write_pair(folder: Path, mail_id: str, sidecar: bytes, data: bytes) -> None:
    _write_atomically(folder, f"{mail_id}.json", sidecar)
    _write_atomically(folder, f"{mail_id}.eml", data)


def _write_atomically(folder: Path, name: str, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _fsync_folder(folder: Path) -> None:
    """Make the renames durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
