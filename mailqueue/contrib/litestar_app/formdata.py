"""Read request bodies as they arrive, never whole.

:class:`LimitedStream` counts the bytes of a body and stops it past a limit;
:class:`MultipartReader` turns a ``multipart/form-data`` body into parts one
after the other, each part's content an async iterator of chunks pulled
straight from the network (through ``multipart.PushMultipartParser``), so a
file can be streamed into an AttachmentStore while it is uploaded. Memory
held at any time is about one network chunk.

Nothing here knows about Litestar or mailqueue: problems are raised as
:class:`FormError` (the client sent something malformed: 400) or
:class:`FormTooLarge` (over a limit: 413).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Final, TypeAlias

import multipart  # type: ignore[import-untyped]

__all__ = ["FormError", "FormTooLarge", "LimitedStream", "MultipartReader", "Part"]


class FormError(ValueError):
    """The body is not what its Content-Type says (malformed multipart, bad encoding, ...)."""


class FormTooLarge(ValueError):
    """The body, a part or the number of parts is over a limit.

    Attributes:
        limit: the limit that was exceeded (bytes or a count).
    """

    def __init__(self, message: str, limit: int) -> None:
        self.limit = limit
        super().__init__(message)


class LimitedStream:
    """An async iterator over the non-empty chunks of a body that raises
    :class:`FormTooLarge` as soon as more than ``limit`` bytes have arrived.

    Args:
        chunks: the body, e.g. Litestar's ``request.stream()``.
        limit: most bytes accepted.
    """

    def __init__(self, chunks: AsyncIterable[bytes], limit: int) -> None:
        self._chunks = chunks.__aiter__()
        self.limit = limit
        #: Bytes received so far.
        self.received = 0

    def __aiter__(self) -> LimitedStream:
        return self

    async def __anext__(self) -> bytes:
        while True:
            chunk = await self._chunks.__anext__()
            if not chunk:
                continue
            self.received += len(chunk)
            if self.received > self.limit:
                raise FormTooLarge(f"request body is larger than the limit of {self.limit} bytes", self.limit)
            return chunk

    async def read(self) -> bytes:
        """The whole (remaining) body; it is at most ``limit`` bytes."""
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        """Close the underlying iterator if it can be closed (an async generator)."""
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()


class _End:
    """End of the multipart stream."""


_END: Final = _End()
# a MultipartSegment (the parser module is untyped), bytes, None (end of a part) or _END
_Event: TypeAlias = Any


class Part:
    """One part of a multipart body, in the order it arrived.

    Read its content with :meth:`chunks`, :meth:`read` or :meth:`skip`; the
    next part is only reached once this one is read to its end (the reader
    skips what is left).

    Attributes:
        name: the form field name (``""`` when the part has none).
        filename: the client's file name, ``None`` for a plain field.
        content_type: the part's media type without parameters, lowercased, or ``None``.
    """

    def __init__(self, reader: MultipartReader, segment: multipart.MultipartSegment) -> None:
        self._reader = reader
        self.name: str = segment.name or ""
        self.filename: str | None = segment.filename
        self.content_type: str | None = segment.content_type
        #: True once the whole content was read.
        self.finished = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The content, chunk by chunk, as it arrives."""
        while not self.finished:
            event = await self._reader._next_event()
            if event is None:
                self.finished = True
            elif isinstance(event, bytes | bytearray):
                yield bytes(event)
            else:  # pragma: no cover - the parser always ends a part with None
                raise FormError("malformed multipart body: a part did not end")

    async def read(self, limit: int) -> bytes | None:
        """The whole content if it is at most ``limit`` bytes, else ``None``
        (the rest is then left unread)."""
        data = bytearray()
        reader = self._reader
        events = reader._events
        while not self.finished:
            # what the parser has already produced is taken without a trip through the event loop
            event = events.popleft() if events else await reader._next_event()
            if event is None:
                self.finished = True
            elif isinstance(event, bytes | bytearray):
                data += event
                if len(data) > limit:
                    return None
            else:  # pragma: no cover - the parser always ends a part with None
                raise FormError("malformed multipart body: a part did not end")
        return bytes(data)

    async def skip(self) -> None:
        """Read the content to its end, keeping nothing."""
        async for _ in self.chunks():
            pass

    async def is_empty(self) -> bool:
        """True if the part has no content at all (then it is finished)."""
        if self.finished:
            return True
        event = await self._reader._next_event()
        if event is None:
            self.finished = True
            return True
        self._reader._events.appendleft(event)
        return False


class MultipartReader:
    """Parts of a ``multipart/form-data`` body, pulled from the network one by one.

    Args:
        chunks: the body's chunks (e.g. a :class:`LimitedStream`).
        boundary: the boundary from the Content-Type header.
        content_length: the announced body size, if any (more data is an error).
        max_parts: most parts accepted; one more raises :class:`FormTooLarge`.

    Raises:
        FormError: the boundary is unusable.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        boundary: str,
        *,
        content_length: int | None = None,
        max_parts: int = 100,
    ) -> None:
        try:
            self._parser = multipart.PushMultipartParser(
                boundary,
                content_length=-1 if content_length is None else content_length,
                max_segment_count=max_parts,
            )
        except multipart.MultipartError as exc:
            raise FormError(f"malformed multipart body: {exc}") from None
        self._chunks = chunks
        self._max_parts = max_parts
        self._events: deque[_Event] = deque()
        self._ended = False
        self._current: Part | None = None

    async def next_part(self) -> Part | None:
        """The next part, or ``None`` after the last one (the body was complete).

        Raises:
            FormError: the body is malformed or ends early.
            FormTooLarge: more than ``max_parts`` parts.
        """
        if self._current is not None and not self._current.finished:
            await self._current.skip()
        event = self._events.popleft() if self._events else await self._next_event()
        if event is _END:
            self._current = None
            return None
        if not isinstance(event, multipart.MultipartSegment):  # pragma: no cover - parser guarantees it
            raise FormError("malformed multipart body: part content outside a part")
        self._current = Part(self, event)
        return self._current

    async def _next_event(self) -> _Event:
        while not self._events:
            if self._ended:
                return _END
            chunk = await anext(self._chunks, b"")
            try:
                if chunk:
                    self._events.extend(self._parser.parse(chunk))
                else:
                    # end of the body: the parser checks that the closing boundary came
                    self._events.extend(self._parser.parse(b""))
                    self._ended = True
            except multipart.ParserLimitReached as exc:
                if "segment count" in str(exc):
                    raise FormTooLarge(
                        f"too many parts in the multipart body (at most {self._max_parts})", self._max_parts
                    ) from None
                raise FormError(f"malformed multipart body: {exc}") from None
            except multipart.MultipartError as exc:
                raise FormError(f"malformed multipart body: {exc}") from None
        return self._events.popleft()
