"""The group-commit batcher shared by the client (submits), the worker (Store reads and writes)
and the sql queue (acks): how calls are grouped, and what a failure or a cancellation does."""

from __future__ import annotations

import asyncio

import pytest

from mailqueue.batching import Batcher


class Recorder:
    """A batch runner that records each batch and can be told to fail or to hang."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate: asyncio.Event | None = None
        self.fail_batch = False

    async def run(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        if self.fail_batch:
            raise RuntimeError("the whole batch failed")
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


async def test_calls_made_while_a_batch_runs_go_together_in_the_next() -> None:
    runner = Recorder()
    runner.gate = asyncio.Event()
    batcher: Batcher[int, int] = Batcher(runner.run, 100)
    first = batcher.submit(0)
    await asyncio.sleep(0.01)  # the first goes at once, alone, and hangs on the gate
    rest = [batcher.submit(i) for i in range(1, 5)]
    runner.gate.set()
    assert await asyncio.gather(first, *rest) == [0, 10, 20, 30, 40]
    assert runner.batches == [[0], [1, 2, 3, 4]]


async def test_calls_of_one_event_loop_turn_go_together_at_most_limit_at_a_time() -> None:
    runner = Recorder()
    batcher: Batcher[int, int] = Batcher(runner.run, 2)
    assert await asyncio.gather(*(batcher.call(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert runner.batches == [[0, 1], [2, 3], [4]]


async def test_a_lone_call_goes_after_one_event_loop_turn_and_waits_for_nothing() -> None:
    runner = Recorder()
    batcher: Batcher[int, int] = Batcher(runner.run, 100)
    future = batcher.submit(7)
    assert runner.batches == []  # not run inside submit: the rest of this turn may join it
    await asyncio.sleep(0)  # one turn
    assert runner.batches == [[7]]
    assert await future == 70


async def test_calls_made_by_tasks_woken_in_one_turn_go_as_one_batch() -> None:
    """Deliveries dispatched together (a prefetched burst) each read from a task of its own."""
    runner = Recorder()
    batcher: Batcher[int, int] = Batcher(runner.run, 100)
    tasks = [asyncio.create_task(batcher.call(i)) for i in range(8)]
    assert await asyncio.gather(*tasks) == [i * 10 for i in range(8)]
    assert runner.batches == [list(range(8))]


async def test_an_item_that_fails_alone_fails_only_its_caller() -> None:
    batcher: Batcher[int, int] = Batcher(Recorder().run, 100)
    results = await asyncio.gather(*(batcher.call(i) for i in (1, -2, 3)), return_exceptions=True)
    assert results[0] == 10
    assert isinstance(results[1], ValueError)
    assert results[2] == 30


async def test_a_failed_batch_fails_every_call_in_it_and_the_next_batch_still_runs() -> None:
    runner = Recorder()
    batcher: Batcher[int, int] = Batcher(runner.run, 100)
    runner.fail_batch = True
    results = await asyncio.gather(*(batcher.call(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    runner.fail_batch = False
    assert await batcher.call(7) == 70


async def test_a_call_right_after_a_batch_finished_starts_a_new_one() -> None:
    runner = Recorder()
    batcher: Batcher[int, int] = Batcher(runner.run, 100)
    later: list[asyncio.Future[int]] = []
    first = batcher.submit(1)
    # runs after the flusher has finished but before its done-callback has run
    first.add_done_callback(lambda _: later.append(batcher.submit(2)))
    assert await first == 10
    assert await asyncio.wait_for(later[0], 5) == 20


async def test_linger_waits_for_company_and_drain_waits_for_everything() -> None:
    runner = Recorder()
    batcher: Batcher[int, int] = Batcher(runner.run, 100, linger=0.05)
    futures = [batcher.submit(1)]
    await asyncio.sleep(0.01)
    futures.append(batcher.submit(2))
    await batcher.drain()
    assert all(f.done() for f in futures)
    assert runner.batches == [[1, 2]]


async def test_a_cancelled_flusher_cancels_what_it_held_and_what_nobody_else_will_take() -> None:
    runner = Recorder()
    runner.gate = asyncio.Event()  # the first batch hangs
    batcher: Batcher[int, int] = Batcher(runner.run, 100)
    held = batcher.submit(1)
    await asyncio.sleep(0.01)
    waiting = batcher.submit(2)
    (flusher,) = batcher._tasks
    flusher.cancel()
    await batcher.drain()
    # nobody is left hanging on a future that no task will ever complete
    assert held.cancelled()
    assert waiting.cancelled()
    runner.gate.set()
    assert await batcher.call(3) == 30


async def test_a_caller_that_is_cancelled_does_not_cancel_the_batch() -> None:
    runner = Recorder()
    runner.gate = asyncio.Event()
    batcher: Batcher[int, int] = Batcher(runner.run, 100)
    first = asyncio.ensure_future(batcher.call(1))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(batcher.call(2))
    third = asyncio.ensure_future(batcher.call(3))
    await asyncio.sleep(0.01)
    second.cancel()
    runner.gate.set()
    assert await first == 10
    assert await third == 30
    with pytest.raises(asyncio.CancelledError):
        await second
    assert runner.batches == [[1], [2, 3]]
