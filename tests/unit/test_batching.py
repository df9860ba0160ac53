"""Batcher rules, checked with a gated fake engine so that results do not hang on timing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from serving.core.batching import Batcher
from serving.errors import DeadlineExceeded, EngineUnavailable, QueueFull
from serving.settings import BatchSettings, defaults

NEVER = 60_000.0  # ms: a delay no test waits for: batches must close for another reason


def batch_settings(**options: Any) -> BatchSettings:
    return defaults(**options).batch


def run(coro: Coroutine[Any, Any, None]) -> None:
    # A bug that leaves a caller waiting fails the test here instead of hanging the suite.
    asyncio.run(asyncio.wait_for(coro, timeout=5))


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until `condition` holds; no wall-clock sleeps."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


class Engine:
    """Fake `process`: records each batch, answers item * 10, and can be held on a gate."""

    def __init__(self, gated: bool = False):
        self.batches: list[list[Any]] = []
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.running = 0
        self.max_running = 0

    async def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        return [item * 10 for item in items]


def spawn(batcher: Batcher[Any, Any], item: Any, cost: int = 1, **kw: Any) -> asyncio.Future[Any]:
    return batcher.enqueue(item, cost, **kw)


def test_batch_closes_at_max_size() -> None:
    async def main() -> None:
        engine = Engine()
        batcher = Batcher(
            engine, batch_settings(max_batch_size=3, max_delay_ms=NEVER, max_gap_ms=NEVER)
        )
        tasks = [spawn(batcher, i) for i in range(6)]
        await until(lambda: batcher.queue_depth == 6)
        batcher.start()
        assert await asyncio.gather(*tasks) == [i * 10 for i in range(6)]
        assert engine.batches == [[0, 1, 2], [3, 4, 5]]
        await batcher.stop()

    run(main())


def test_batch_closes_at_max_ids_and_oversized_item_goes_alone() -> None:
    async def main() -> None:
        engine = Engine()
        seen: list[tuple[int, int]] = []
        waited: list[tuple[int, float]] = []
        settings = batch_settings(
            max_batch_size=100, max_batch_ids=10, max_delay_ms=NEVER, max_gap_ms=NEVER
        )

        def on_batch(n: int, cost: int, requests: int, queued_s: float) -> None:
            seen.append((n, cost))
            waited.append((requests, queued_s))

        batcher = Batcher(engine, settings, on_batch=on_batch)
        costs = [4, 4, 4, 20, 3, 7]  # the last pair fills the budget exactly
        tasks = [spawn(batcher, i, cost) for i, cost in enumerate(costs)]
        await until(lambda: batcher.queue_depth == len(costs))
        batcher.start()
        await asyncio.gather(*tasks)
        assert engine.batches == [[0, 1], [2], [3], [4, 5]]
        assert seen == [(2, 8), (1, 4), (1, 20), (2, 10)]
        # every request waited from its enqueue to its batch's start: queued before start()
        assert [r for r, _ in waited] == [2, 1, 1, 2] and all(q > 0 for _, q in waited)
        await batcher.stop()

    run(main())


def test_batch_below_size_waits_for_delay() -> None:
    async def main() -> None:
        engine = Engine()
        batcher = Batcher(
            engine, batch_settings(max_batch_size=4, max_delay_ms=NEVER, max_gap_ms=NEVER)
        )
        tasks = [spawn(batcher, 0)]
        await until(lambda: batcher.queue_depth == 1)
        batcher.start()
        await until(lambda: batcher.queue_depth == 0)  # the loop has taken it
        for _ in range(100):
            await asyncio.sleep(0)
        assert engine.batches == []  # held open: neither full nor past its delay
        tasks += [spawn(batcher, i) for i in range(1, 4)]
        await asyncio.gather(*tasks)
        assert engine.batches == [[0, 1, 2, 3]]
        await batcher.stop()

    run(main())


def test_delay_counts_from_first_item_not_from_each() -> None:
    async def main() -> None:
        engine = Engine()
        batcher = Batcher(
            engine, batch_settings(max_batch_size=100, max_delay_ms=50, max_gap_ms=NEVER)
        )
        batcher.start()
        # One item every 10 ms for 200 ms: a timer restarted per item would never expire.
        tasks = []
        for i in range(20):
            tasks.append(spawn(batcher, i))
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
        assert len(engine.batches) > 1
        assert len(engine.batches[0]) < 20
        assert [i for batch in engine.batches for i in batch] == list(range(20))
        await batcher.stop()

    run(main())


def test_small_delay_closes_a_lone_item() -> None:
    async def main() -> None:
        engine = Engine()
        batcher = Batcher(engine, batch_settings(max_batch_size=100, max_delay_ms=1))
        batcher.start()
        assert await batcher.enqueue(7, 1) == 70
        assert engine.batches == [[7]]
        await batcher.stop()

    run(main())


def test_items_that_queued_behind_a_batch_go_at_once() -> None:
    """The delay counts from an item's arrival: time spent queued behind a running batch counts,
    so the next batch is not held open again once the engine is free."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        engine = Engine(gated=True)
        batcher = Batcher(
            engine, batch_settings(max_batch_size=3, max_delay_ms=300, max_gap_ms=NEVER)
        )
        batcher.start()
        first = [spawn(batcher, i) for i in range(3)]  # full: runs at once, held on the gate
        await until(lambda: len(engine.batches) == 1)
        late = spawn(batcher, 3)
        await asyncio.sleep(0.35)  # item 3 waits out its delay behind the running batch
        opened = loop.time()
        engine.gate.set()
        await asyncio.gather(*first, late)
        assert engine.batches == [[0, 1, 2], [3]]
        # Counted from when it was taken into a batch, the delay would hold it another 0.3 s.
        assert loop.time() - opened < 0.15
        await batcher.stop()

    run(main())


def test_quiet_gap_closes_a_lone_item_before_the_delay() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        engine = Engine()
        batcher = Batcher(
            engine, batch_settings(max_batch_size=100, max_delay_ms=2000, max_gap_ms=10)
        )
        batcher.start()
        t0 = loop.time()
        assert await batcher.enqueue(7, 1) == 70
        assert loop.time() - t0 < 1  # the gap closed it, not the 2 s delay
        await batcher.stop()

    run(main())


def test_a_burst_within_the_gap_fills_one_batch() -> None:
    async def main() -> None:
        engine = Engine()
        batcher = Batcher(
            engine, batch_settings(max_batch_size=100, max_delay_ms=NEVER, max_gap_ms=200)
        )
        batcher.start()
        tasks = []
        for i in range(10):  # one item every 10 ms: each arrives well within the 200 ms gap
            tasks.append(spawn(batcher, i))
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
        assert engine.batches == [list(range(10))]
        await batcher.stop()

    run(main())


def test_expired_item_is_not_computed() -> None:
    async def main() -> None:
        engine = Engine(gated=True)
        batcher = Batcher(
            engine, batch_settings(max_batch_size=1, max_delay_ms=NEVER, max_gap_ms=NEVER)
        )
        batcher.start()
        first = spawn(batcher, 1)
        await until(lambda: len(engine.batches) == 1)  # engine busy with the first item
        late = spawn(batcher, 2, deadline=time.monotonic() + 0.01)
        ok = spawn(batcher, 3)
        await asyncio.sleep(0.03)  # the deadline passes while the item is queued
        engine.gate.set()
        with pytest.raises(DeadlineExceeded):
            await late
        assert await first == 10
        assert await ok == 30
        assert engine.batches == [[1], [3]]
        await batcher.stop()

    run(main())


def test_cancelled_caller_is_dropped_while_queued() -> None:
    async def main() -> None:
        engine = Engine(gated=True)
        batcher = Batcher(
            engine, batch_settings(max_batch_size=1, max_delay_ms=NEVER, max_gap_ms=NEVER)
        )
        batcher.start()
        first = spawn(batcher, 1)
        await until(lambda: len(engine.batches) == 1)  # engine busy, the rest must queue
        gone, kept = spawn(batcher, 2), spawn(batcher, 3)
        await until(lambda: batcher.queue_depth == 2)
        gone.cancel()
        engine.gate.set()
        assert (await first, await kept) == (10, 30)
        assert gone.cancelled()
        assert engine.batches == [[1], [3]]
        await batcher.stop()

    run(main())


def test_cancelled_caller_is_dropped_from_an_open_batch() -> None:
    async def main() -> None:
        engine = Engine()
        batcher = Batcher(
            engine, batch_settings(max_batch_size=10, max_delay_ms=NEVER, max_gap_ms=NEVER)
        )
        first, gone, kept = spawn(batcher, 1), spawn(batcher, 2), spawn(batcher, 3)
        await until(lambda: batcher.queue_depth == 3)
        batcher.start()
        await until(lambda: batcher.queue_depth == 0)  # all three in the batch held open
        gone.cancel()
        await batcher.stop(drain=True)  # nothing more can come, so the batch closes
        assert (await first, await kept) == (10, 30)
        assert gone.cancelled()
        assert engine.batches == [[1, 3]]

    run(main())


def test_full_queue_refuses() -> None:
    async def main() -> None:
        engine = Engine(gated=True)
        settings = batch_settings(max_batch_size=1, max_queue=2, retry_after_s=0.5)
        batcher = Batcher(engine, settings)
        batcher.start()
        tasks = [spawn(batcher, 0)]
        await until(lambda: len(engine.batches) == 1)  # taken off the queue, engine busy
        tasks += [spawn(batcher, 1), spawn(batcher, 2)]
        await until(lambda: batcher.queue_depth == 2)
        with pytest.raises(QueueFull, match=r"queue is full \(2 sequences waiting, at most\)"):
            await batcher.enqueue(3, 1)
        engine.gate.set()
        assert await asyncio.gather(*tasks) == [0, 10, 20]
        await batcher.stop()

    run(main())


def test_result_count_mismatch_fails_every_caller() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    async def main() -> None:
        batcher = Batcher(
            short, batch_settings(max_batch_size=2, max_delay_ms=NEVER, max_gap_ms=NEVER)
        )
        tasks = [spawn(batcher, 1), spawn(batcher, 2)]
        batcher.start()
        for task in tasks:
            with pytest.raises(RuntimeError, match="1 results for a batch of 2"):
                await task
        await batcher.stop()

    run(main())


def test_process_error_reaches_its_batch_and_loop_goes_on() -> None:
    async def flaky(items: list[str]) -> list[str]:
        if "bad" in items:
            raise ValueError("boom")
        return [item.upper() for item in items]

    async def main() -> None:
        batcher = Batcher(
            flaky, batch_settings(max_batch_size=2, max_delay_ms=NEVER, max_gap_ms=NEVER)
        )
        tasks = [spawn(batcher, "bad"), spawn(batcher, "x")]
        batcher.start()
        for task in tasks:
            with pytest.raises(ValueError, match="boom"):
                await task
        later = [spawn(batcher, "y"), spawn(batcher, "z")]
        assert await asyncio.gather(*later) == ["Y", "Z"]
        await batcher.stop()

    run(main())


def test_stop_drains_accepted_items_then_refuses() -> None:
    async def main() -> None:
        engine = Engine(gated=True)
        batcher = Batcher(
            engine, batch_settings(max_batch_size=1, max_delay_ms=NEVER, max_gap_ms=NEVER)
        )
        batcher.start()
        tasks = [spawn(batcher, i) for i in range(3)]
        await until(lambda: len(engine.batches) == 1 and batcher.queue_depth == 2)
        stopping = asyncio.ensure_future(batcher.stop(drain=True))
        await asyncio.sleep(0)
        with pytest.raises(EngineUnavailable, match="shutting down"):
            await batcher.enqueue(9, 1)
        assert not stopping.done()  # still owes answers to accepted items
        engine.gate.set()
        await stopping
        assert await asyncio.gather(*tasks) == [0, 10, 20]
        assert engine.batches == [[0], [1], [2]]
        assert engine.max_running == 1  # never two engine calls at once

    run(main())


def test_stop_without_drain_fails_what_is_left() -> None:
    async def main() -> None:
        engine = Engine(gated=True)
        batcher = Batcher(
            engine, batch_settings(max_batch_size=1, max_delay_ms=NEVER, max_gap_ms=NEVER)
        )
        batcher.start()
        tasks = [spawn(batcher, i) for i in range(3)]
        await until(lambda: len(engine.batches) == 1 and batcher.queue_depth == 2)
        await batcher.stop(drain=False)
        for task in tasks:
            with pytest.raises(EngineUnavailable):
                await task
        assert engine.batches == [[0]]

    run(main())


def test_by_default_a_batch_goes_at_once_and_the_next_gathers_while_the_engine_works() -> None:
    async def main() -> None:
        engine = Engine(gated=True)
        batcher = Batcher(engine, batch_settings())  # max_delay_ms and max_gap_ms are 0
        batcher.start()
        first = spawn(batcher, 1)
        await until(lambda: engine.batches == [[1]])  # no wait for company: the engine was free
        rest = [spawn(batcher, i) for i in (2, 3, 4)]
        for _ in range(20):
            await asyncio.sleep(0)
        assert engine.batches == [[1]]  # the engine is busy: they wait for it, together
        engine.gate.set()
        assert await asyncio.gather(first, *rest) == [10, 20, 30, 40]
        assert engine.batches == [[1], [2, 3, 4]]
        await batcher.stop()

    run(main())


def test_a_request_counts_its_sequences_against_the_batch_and_the_queue() -> None:
    async def main() -> None:
        engine = Engine(gated=True)
        settings = batch_settings(max_batch_size=4, max_queue=10)
        batcher = Batcher(engine, settings)
        batcher.start()
        head = spawn(batcher, 0)
        await until(lambda: len(engine.batches) == 1)  # the engine is busy with it
        a, b = spawn(batcher, 1, size=3), spawn(batcher, 2, size=2)  # 3 + 2 > 4: two batches
        assert batcher.queue_depth == 5
        with pytest.raises(QueueFull):
            batcher.enqueue(3, 1, size=6)  # 5 + 6 sequences would pass max_queue 10
        big = spawn(batcher, 4, size=5)  # more than a batch: it goes alone
        engine.gate.set()
        assert await asyncio.gather(head, a, b, big) == [0, 10, 20, 40]
        assert engine.batches == [[0], [1], [2], [4]]
        await batcher.stop()

    run(main())
