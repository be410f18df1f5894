"""cluster.serve.AdaptiveBatcher: timer-free batching of concurrent single queries (plain asyncio).

Oracle: hand-built schedules -- which items each batch must hold given what was running when they came.
"""

from __future__ import annotations

import asyncio

import pytest

from cluster.serve import AdaptiveBatcher


class GatedRun:
    """A batch function that records its batches and finishes each only when the test says so."""

    def __init__(self, fail_on: object = None) -> None:
        self.batches: list[list[int]] = []
        self.gates: list[asyncio.Event] = []
        self.fail_on = fail_on

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [10 * i for i in items]


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_an_idle_batcher_sends_at_once_and_load_grows_the_batches():
    async def main() -> None:
        run = GatedRun()
        b = AdaptiveBatcher(run, max_size=3, max_inflight=1)
        first = asyncio.create_task(b.submit(1))
        await _settle()
        assert run.batches == [[1]]  # no timer: out before anything else happened
        rest = [asyncio.create_task(b.submit(i)) for i in range(2, 7)]
        await _settle()
        assert run.batches == [[1]] and b.inflight == 1  # queued behind the running batch
        run.gates[0].set()
        assert await first == 10
        await _settle()
        assert run.batches == [[1], [2, 3, 4]]  # everything that queued, up to max_size, in arrival order
        run.gates[1].set()
        await _settle()
        assert run.batches == [[1], [2, 3, 4], [5, 6]]
        run.gates[2].set()
        assert [await t for t in rest] == [20, 30, 40, 50, 60]
        assert b.inflight == 0 and not b.pending

    asyncio.run(main())


def test_max_inflight_batches_run_at_once():
    async def main() -> None:
        run = GatedRun()
        b = AdaptiveBatcher(run, max_size=10, max_inflight=2)
        tasks = [asyncio.create_task(b.submit(1))]
        await _settle()
        tasks.append(asyncio.create_task(b.submit(2)))
        await _settle()
        tasks += [asyncio.create_task(b.submit(i)) for i in (3, 4)]
        await _settle()
        assert run.batches == [[1], [2]] and b.inflight == 2
        run.gates[1].set()  # the second finishes first: its slot takes the queue
        await _settle()
        assert run.batches == [[1], [2], [3, 4]]
        for g in run.gates:
            g.set()
        assert [await t for t in tasks] == [10, 20, 30, 40]

    asyncio.run(main())


def test_a_failing_batch_fails_only_its_callers_and_the_batcher_goes_on():
    async def main() -> None:
        run = GatedRun(fail_on=2)
        b = AdaptiveBatcher(run, max_size=5, max_inflight=1)
        t1 = asyncio.create_task(b.submit(1))
        await _settle()
        bad = [asyncio.create_task(b.submit(i)) for i in (2, 3)]
        await _settle()
        run.gates[0].set()
        assert await t1 == 10
        await _settle()
        run.gates[1].set()
        for t in bad:
            with pytest.raises(ValueError, match="bad item 2"):
                await t
        later = asyncio.create_task(b.submit(4))
        await _settle()
        run.gates[2].set()
        assert await later == 40 and b.inflight == 0

    asyncio.run(main())


def test_cancelled_callers_are_dropped_before_their_batch_runs():
    async def main() -> None:
        run = GatedRun()
        b = AdaptiveBatcher(run, max_size=5, max_inflight=1)
        t1 = asyncio.create_task(b.submit(1))
        await _settle()
        gone = asyncio.create_task(b.submit(2))
        kept = asyncio.create_task(b.submit(3))
        await _settle()
        gone.cancel()  # e.g. the HTTP client went away
        await _settle()
        run.gates[0].set()
        await t1
        await _settle()
        assert run.batches[1] == [3]
        run.gates[1].set()
        assert await kept == 30

    asyncio.run(main())


def test_a_batch_function_returning_the_wrong_count_is_an_error():
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    async def main() -> None:
        b = AdaptiveBatcher(short, max_size=4, max_inflight=1)
        with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
            await b.submit(1)

    asyncio.run(main())
    with pytest.raises(ValueError, match="max_size and max_inflight"):
        AdaptiveBatcher(short, max_size=0, max_inflight=1)
