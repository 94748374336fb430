"""Attachments as files in a local folder (the ``file`` attachment store).

URL: ``file:///abs/path``, ``file://localhost/abs/path``, ``file://./relative/path``
or ``file:relative/path``; a relative folder is taken from the current
directory when the store is built. Query options:

- ``fsync=true|false`` (default ``true``): flush each file and its folder to
  the disk before :meth:`~FileAttachmentStore.put` returns.
- ``chunk_size=<bytes>`` (default 262144): size of the chunks ``read`` yields
  and of the batches ``put`` writes.
- ``file_mode=<octal>`` (default ``600``) and ``dir_mode=<octal>`` (default
  ``700``): permissions of the files and folders the store creates.

Layout: the attachment under key ``k`` is ``<root>/k[0:2]/k[2:4]/k``, so no
folder holds more than a few thousand files. An upload is written to
``<root>/.tmp-<random>`` and renamed into place once complete, so a reader
never sees a partial file; a failed or cancelled upload leaves nothing, and
:meth:`FileAttachmentStore.purge_incomplete` removes what a crash left.

Supports the whole :class:`~mailqueue.protocols.AttachmentStore` contract.
Attachments are shared between processes on one machine (or a shared
filesystem); use the ``sql`` store to share them between machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from mailqueue.backends._base import Flag, OptionsModel, Whole, parse_options
from mailqueue.errors import (
    AttachmentNotFoundError,
    AttachmentTooLargeError,
    BackendError,
    ConfigurationError,
)
from mailqueue.protocols import BackendContext, ResourceMixin, StoredAttachment

__all__ = ["DEFAULT_CHUNK_SIZE", "FileAttachmentStore", "FileStoreOptions"]

logger = logging.getLogger(__name__)

#: Default size of the chunks read and written, in bytes.
DEFAULT_CHUNK_SIZE = 256 * 1024
_MAX_CHUNK_SIZE = 64 * 1024 * 1024
_TEMP_PREFIX = ".tmp-"
# Keys this store can hold: generated keys are 32 hex digits; four characters
# at least so that the two folder levels are never empty.
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{3,63}")

_T = TypeVar("_T")


def _new_key() -> str:
    return secrets.token_hex(16)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Abandoned(Exception):
    """An operation reached a file that its owner had already given up."""


class _Upload:
    """The temporary file of one ``put``.

    ``write`` and ``commit`` run in worker threads; ``discard`` runs on the
    event loop. A lock makes each of them wait for the one in progress, and
    once discarded nothing touches the file descriptor again: a thread still
    queued could otherwise write into a descriptor number reused by another
    file after a cancelled ``put`` closed it.
    """

    def __init__(self, root: Path, target: Path, *, file_mode: int, dir_mode: int, fsync: bool) -> None:
        self._root = root
        self._target = target
        self._file_mode = file_mode
        self._dir_mode = dir_mode
        self._fsync = fsync
        self._lock = threading.Lock()
        self._fd = -1
        self._temp: str | None = None
        self._committed = False
        self._abandoned = False

    def _ensure_file(self) -> int:
        if self._abandoned:
            raise _Abandoned
        if self._fd < 0:
            self._fd, self._temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=self._root)
            os.fchmod(self._fd, self._file_mode)
        return self._fd

    def write(self, pieces: Iterable[bytes]) -> None:
        with self._lock:
            fd = self._ensure_file()
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]

    def commit(self) -> None:
        with self._lock:
            fd = self._ensure_file()
            if self._fsync:
                os.fsync(fd)
            self._fd = -1
            os.close(fd)
            created = self._make_dirs(self._target.parent)
            assert self._temp is not None
            os.replace(self._temp, self._target)
            self._temp = None
            self._committed = True
            if self._fsync:
                for folder in {self._target.parent, *(path.parent for path in created)}:
                    _fsync_dir(folder)

    def _make_dirs(self, folder: Path) -> list[Path]:
        created = []
        for path in (folder.parent, folder):
            try:
                os.mkdir(path, self._dir_mode)
            except FileExistsError:
                continue
            os.chmod(path, self._dir_mode)  # mkdir's mode is reduced by the umask
            created.append(path)
        return created

    def discard(self) -> None:
        """Remove whatever this upload wrote, even a committed file."""
        with self._lock:
            self._abandoned = True
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = -1
            for path in (self._temp, self._target if self._committed else None):
                if path is None:
                    continue
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    logger.warning("could not remove %s after a failed upload: %s", path, exc)
            self._temp = None
            self._committed = False


class _Reader:
    """An attachment file, opened and read in worker threads and closed from the loop."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._fd = -1
        self._closed = False

    def open(self) -> None:
        with self._lock:
            if self._closed:
                raise _Abandoned
            self._fd = os.open(self._path, os.O_RDONLY)

    def read(self, size: int) -> bytes:
        with self._lock:
            if self._closed:
                raise _Abandoned
            return os.read(self._fd, size)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                with contextlib.suppress(OSError):
                    os.close(fd)


def _octal(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(value, 8)
        except ValueError:
            raise PydanticCustomError(
                "option", "must be an octal number, not {value}", {"value": repr(value)}
            ) from None
    return value


class FileStoreOptions(OptionsModel):
    """The options of a ``file:`` attachment store URL (see the module docstring).

    ``file_mode`` and ``dir_mode`` are written in octal (``640``).
    """

    fsync: Flag = True
    chunk_size: Whole = DEFAULT_CHUNK_SIZE
    file_mode: Annotated[int, BeforeValidator(_octal)] = 0o600
    dir_mode: Annotated[int, BeforeValidator(_octal)] = 0o700


class FileAttachmentStore(ResourceMixin):
    """Attachment bytes as files under a local folder.

    Blocking file work runs in worker threads, one chunk batch at a time, so
    a large upload neither blocks the event loop nor sits in memory.
    """

    #: The URL's options.
    url_options: ClassVar[type[OptionsModel]] = FileStoreOptions

    def __init__(
        self,
        *,
        root: str | os.PathLike[str],
        fsync: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        file_mode: int = 0o600,
        dir_mode: int = 0o700,
    ) -> None:
        """Describe the store; nothing is touched until :meth:`open`.

        Args:
            root: the folder; a relative path is resolved against the
                current directory now.
            fsync: flush every file and folder change to the disk before
                ``put`` returns (turn off only for throwaway data).
            chunk_size: bytes per chunk read, and per batch written.
            file_mode: permissions of attachment files (owner read and
                write are required).
            dir_mode: permissions of the folders the store creates (owner
                read, write and search are required).

        Raises:
            ConfigurationError: a value is out of range.
        """
        if not 1 <= chunk_size <= _MAX_CHUNK_SIZE:
            raise ConfigurationError(f"chunk_size must be between 1 and {_MAX_CHUNK_SIZE}, not {chunk_size}")
        if file_mode & ~0o777 or file_mode & 0o600 != 0o600:
            raise ConfigurationError(f"file_mode {file_mode:o} must be at most 777 and include 600")
        if dir_mode & ~0o777 or dir_mode & 0o700 != 0o700:
            raise ConfigurationError(f"dir_mode {dir_mode:o} must be at most 777 and include 700")
        self._root = Path(root).absolute()
        self._fsync = fsync
        self._chunk_size = chunk_size
        self._file_mode = file_mode
        self._dir_mode = dir_mode

    @classmethod
    def from_url(cls, url: str, *, context: BackendContext) -> Self:
        """Build the store described by a ``file:`` URL (see the module docstring).

        Raises:
            ConfigurationError: not a usable ``file:`` URL, or an unknown or
                invalid option.
        """
        parts = urlsplit(url)
        if parts.scheme.lower() != "file":
            raise ConfigurationError(f"not a file: URL: {url!r}")
        path = unquote(parts.path)
        if parts.netloc in ("", "localhost"):
            folder = path
        elif parts.netloc in (".", ".."):
            folder = parts.netloc + path
        else:
            raise ConfigurationError(
                f"file attachment store URL {url!r} names host {parts.netloc!r}; use file:///abs/path "
                "or file://./relative/path"
            )
        if not folder:
            raise ConfigurationError(f"file attachment store URL {url!r} names no folder")
        if "\x00" in folder:
            raise ConfigurationError(f"file attachment store URL {url!r} contains a NUL character")
        options = parse_options(url, FileStoreOptions, label="file attachment store", once=True)
        return cls(root=folder, **options.model_dump())

    @property
    def root(self) -> Path:
        """The absolute folder attachments are stored in."""
        return self._root

    @property
    def fsync(self) -> bool:
        """Whether writes are flushed to the disk before ``put`` returns."""
        return self._fsync

    @property
    def chunk_size(self) -> int:
        """Bytes per chunk yielded by :meth:`read`."""
        return self._chunk_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self._root)!r}, fsync={self._fsync})"

    async def open(self) -> None:
        """Create the folder (and its parents) if needed and check it is writable.

        Raises:
            BackendError: the folder cannot be created or written to.
        """
        await self._io(self._prepare_root)

    def _prepare_root(self) -> None:
        if not self._root.is_dir():
            self._root.mkdir(parents=True, exist_ok=True, mode=self._dir_mode)
            os.chmod(self._root, self._dir_mode)
        if not os.access(self._root, os.W_OK | os.X_OK):
            raise PermissionError(f"folder {self._root} is not writable")

    async def close(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""

    def _path(self, key: str) -> Path | None:
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            return None
        return self._root / key[0:2] / key[2:4] / key

    async def _io(self, func: Callable[..., _T], *args: object) -> _T:
        try:
            return await asyncio.to_thread(func, *args)
        except OSError as exc:
            raise BackendError(f"file attachment store at {self._root}: {exc}") from exc

    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> StoredAttachment:
        """Stream ``chunks`` into a new file under a new generated key.

        The file appears under its key only once complete (and flushed when
        ``fsync`` is on).

        Args:
            chunks: the content; an exception it raises propagates unchanged.
            max_bytes: the most bytes accepted, or ``None`` for no limit.

        Returns:
            The key (32 hex digits), size and SHA-256 of what was stored.

        Raises:
            AttachmentTooLargeError: more than ``max_bytes`` arrived; nothing
                is kept and the rest of ``chunks`` is not read.
            BackendError: the file could not be written.
        """
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, not {max_bytes}")
        key = _new_key()
        target = self._path(key)
        assert target is not None
        upload = _Upload(
            self._root, target, file_mode=self._file_mode, dir_mode=self._dir_mode, fsync=self._fsync
        )
        digest = hashlib.sha256()
        size = 0
        batch: list[bytes] = []
        batched = 0
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise AttachmentTooLargeError(max_bytes)
                # a caller may reuse a mutable buffer for the next chunk
                data = chunk if type(chunk) is bytes else bytes(chunk)
                digest.update(data)
                batch.append(data)
                batched += len(data)
                if batched >= self._chunk_size:
                    await self._io(upload.write, batch)
                    batch, batched = [], 0
            if batch:
                await self._io(upload.write, batch)
                batch = []
            await self._io(upload.commit)
        except BaseException:
            upload.discard()
            raise
        return StoredAttachment(key=key, size=size, sha256=digest.hexdigest())

    async def read(self, key: str) -> AsyncIterator[bytes]:
        """Yield the attachment's bytes in chunks of at most ``chunk_size``.

        This is an async generator: a missing key raises on the first
        iteration, not on the call.

        Raises:
            AttachmentNotFoundError: no attachment under ``key`` (or ``key``
                is not a key this store could have made).
            BackendError: the file could not be read.
        """
        path = self._path(key)
        if path is None:
            raise AttachmentNotFoundError(key)
        reader = _Reader(path)
        try:
            try:
                await asyncio.to_thread(reader.open)
            except (FileNotFoundError, NotADirectoryError):
                raise AttachmentNotFoundError(key) from None
            except OSError as exc:
                raise BackendError(f"file attachment store at {self._root}: {exc}") from exc
            while data := await self._io(reader.read, self._chunk_size):
                yield data
        finally:
            reader.close()

    async def delete(self, key: str) -> None:
        """Remove the attachment's file; a missing or invalid key does nothing.

        Emptied ``ab/cd`` folders are kept: removing them would race with a
        concurrent ``put`` into the same folder.

        Raises:
            BackendError: the file exists but could not be removed.
        """
        path = self._path(key)
        if path is None:
            return
        try:
            await asyncio.to_thread(os.unlink, path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise BackendError(f"file attachment store at {self._root}: {exc}") from exc

    async def list_keys(self, *, before: datetime) -> AsyncIterator[tuple[str, datetime]]:
        """Yield ``(key, stored_at)`` of the attachment files last modified before ``before``.

        ``stored_at`` is the file's modification time (it is written once, when stored).

        Raises:
            BackendError: the folder could not be listed.
        """
        found = await self._io(self._list, before.timestamp())
        for key, mtime in found:
            yield key, datetime.fromtimestamp(mtime, UTC)

    def _list(self, cutoff: float) -> list[tuple[str, float]]:
        found: list[tuple[str, float]] = []
        for first in _subfolders(self._root):
            for second in _subfolders(first):
                with os.scandir(second) as entries:
                    for entry in entries:
                        if not _KEY_RE.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
                            continue
                        try:
                            mtime = entry.stat(follow_symlinks=False).st_mtime
                        except FileNotFoundError:
                            continue
                        if mtime < cutoff:
                            found.append((entry.name, mtime))
        return found

    async def purge_incomplete(self, *, older_than: float = 3600.0) -> int:
        """Remove temporary files of uploads that a crash interrupted.

        Only files untouched for ``older_than`` seconds go, so uploads in
        progress (in this or another process) are left alone.

        Returns:
            How many files were removed.

        Raises:
            BackendError: the folder could not be listed.
        """
        return await self._io(self._purge, time.time() - older_than)

    def _purge(self, cutoff: float) -> int:
        removed = 0
        with os.scandir(self._root) as entries:
            for entry in entries:
                if not entry.name.startswith(_TEMP_PREFIX) or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed


def _subfolders(folder: Path) -> list[Path]:
    """The two-character key folders directly in ``folder``."""
    try:
        with os.scandir(folder) as entries:
            return [
                Path(e.path)
                for e in entries
                if len(e.name) == 2 and not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
            ]
    except FileNotFoundError:
        return []
