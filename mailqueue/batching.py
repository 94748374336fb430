"""Group concurrent calls into batches (group commit), for the client, the worker and the backends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Batcher"]

K = TypeVar("K")
R = TypeVar("R")


class Batcher(Generic[K, R]):
    """Run concurrent calls together: those made while a batch is running form the next one.

    ``run`` gets up to ``limit`` items and returns one result per item, in
    order; a result that is an :class:`Exception` fails that item alone. A
    lone call goes at once (one event-loop turn later), so batching adds no
    wait when idle and grows with the load; with ``linger``, a batch first
    waits that many seconds for company (for work nobody waits for). At most
    ``flushers`` batches run at a time. A batch that raises fails every call
    in it, as failed single calls would.
    """

    def __init__(
        self,
        run: Callable[[list[K]], Awaitable[Sequence[R | Exception]]],
        limit: int,
        *,
        flushers: int = 1,
        linger: float = 0.0,
    ) -> None:
        self._run = run
        self._limit = limit
        self._flushers = flushers
        self._linger = linger
        self._pending: list[tuple[K, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, item: K) -> asyncio.Future[R]:
        """Add ``item`` to the next batch; the future gets its result or exception."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        # A finished task may still be in the set (its done-callback runs later); one not
        # finished looks for pending items again before it ends, so it takes this one too.
        if sum(1 for task in self._tasks if not task.done()) < self._flushers:
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    async def call(self, item: K) -> R:
        """Add ``item`` to the next batch and wait for its result.

        A caller that is cancelled cancels only its own wait: the batch runs for the others.
        """
        return await self.submit(item)

    async def drain(self) -> None:
        """Wait until every item submitted so far has been run."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _drain(self) -> None:
        if self._linger:
            await asyncio.sleep(self._linger)
        while self._pending:
            batch, self._pending = self._pending[: self._limit], self._pending[self._limit :]
            try:
                results = await self._run([item for item, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException:
                # cancelled (shut down): what this task held, and what no other task will take, is cancelled
                others = [t for t in self._tasks if not t.done() and t is not asyncio.current_task()]
                stranded = batch if others else batch + self._pending
                if not others:
                    self._pending = []
                for _, future in stranded:
                    future.cancel()
                raise
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
