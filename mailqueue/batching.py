"""Group concurrent calls into batches (group commit), for the worker and the backends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Batcher"]

K = TypeVar("K")
R = TypeVar("R")


class Batcher(Generic[K, R]):
    """Run concurrent calls together: those made while a batch is running form the next one.

    A lone call goes at once (one event-loop turn later), so batching adds no
    wait when the worker is idle and grows with the load. Each caller gets its
    own result once the whole batch has returned, or the batch's exception:
    a failed batch fails every call in it, as failed single calls would.
    """

    def __init__(self, run: Callable[[list[K]], Awaitable[list[R]]], limit: int) -> None:
        self._run = run
        self._limit = limit
        self._pending: list[tuple[K, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def call(self, item: K) -> R:
        """Add ``item`` to the next batch and wait for its result."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        # A caller that is cancelled cancels only its future: the batch runs for the others.
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._limit], self._pending[self._limit :]
                try:
                    results = await self._run([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.cancel()
                    for _, future in self._pending:
                        future.cancel()
                    self._pending = []
                    raise exc
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._task = None
