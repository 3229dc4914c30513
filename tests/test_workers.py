"""The model worker: one thread, a bounded queue ordered by priority, cancellation."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from voicebot.errors import EngineError, OverloadedError
from voicebot.workers import ModelWorker, Priority

TIMEOUT_S = 5.0


@pytest.fixture
async def worker() -> AsyncIterator[ModelWorker]:
    worker = ModelWorker("test", max_queued=4)
    yield worker
    worker.close()


class Gate:
    """Holds the worker thread busy until opened, so calls pile up in its queue."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def hold(self) -> str:
        self.entered.set()
        assert self.opened.wait(TIMEOUT_S), "the test never opened the gate"
        return "held"

    async def close_on(self, worker: ModelWorker) -> asyncio.Task[str]:
        """Occupy ``worker``; returns once its thread is inside the gate."""
        task = asyncio.create_task(worker.run(self.hold))
        assert await asyncio.to_thread(self.entered.wait, TIMEOUT_S)
        return task


async def queued(worker: ModelWorker, count: int) -> None:
    """Wait until ``count`` calls wait in the queue (tasks submit on their first step)."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            if worker.queued == count:
                return
            await asyncio.sleep(0)


async def test_urgent_work_goes_before_queued_work_fifo_within_a_priority(
    worker: ModelWorker,
) -> None:
    ran: list[str] = []
    gate = Gate()
    holder = await gate.close_on(worker)
    order = [
        ("background", Priority.BACKGROUND),
        ("normal 1", Priority.NORMAL),
        ("urgent 1", Priority.URGENT),
        ("normal 2", Priority.NORMAL),
    ]
    tasks = [asyncio.create_task(worker.run(ran.append, name, priority=p)) for name, p in order]
    await queued(worker, 4)
    gate.opened.set()
    async with asyncio.timeout(TIMEOUT_S):
        await asyncio.gather(holder, *tasks)
    assert ran == ["urgent 1", "normal 1", "normal 2", "background"]


async def test_the_default_priority_is_normal_and_results_come_back(worker: ModelWorker) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        assert await worker.run(lambda a, b=0: a + b, 2, b=3) == 5
        assert await worker.run(threading.current_thread) is not threading.current_thread()
        assert (await worker.run(threading.current_thread)).name == "voicebot-test"


async def test_an_error_in_the_model_reaches_the_caller_and_the_worker_goes_on(
    worker: ModelWorker,
) -> None:
    def fail() -> None:
        raise RuntimeError("boom")

    async with asyncio.timeout(TIMEOUT_S):
        with pytest.raises(RuntimeError, match="boom"):
            await worker.run(fail)
        assert await worker.run(lambda: "still here") == "still here"


async def test_past_its_bound_a_call_is_refused(worker: ModelWorker) -> None:
    gate = Gate()
    holder = await gate.close_on(worker)
    waiting = [asyncio.create_task(worker.run(str, n)) for n in range(4)]
    await queued(worker, 4)
    with pytest.raises(OverloadedError, match="busy") as refused:
        await asyncio.wait_for(worker.run(str, "one too many"), TIMEOUT_S)
    assert refused.value.code == "overloaded"
    gate.opened.set()
    async with asyncio.timeout(TIMEOUT_S):
        assert await asyncio.gather(*waiting) == ["0", "1", "2", "3"]
        await holder


async def test_a_full_queue_sheds_background_work_for_urgent_work(worker: ModelWorker) -> None:
    ran: list[str] = []
    gate = Gate()
    holder = await gate.close_on(worker)
    names = ["normal", "background 1", "background 2", "normal 2"]
    priorities = [Priority.NORMAL, Priority.BACKGROUND, Priority.BACKGROUND, Priority.NORMAL]
    tasks = [
        asyncio.create_task(worker.run(ran.append, n, priority=p))
        for n, p in zip(names, priorities, strict=True)
    ]
    await queued(worker, 4)
    urgent = asyncio.create_task(worker.run(ran.append, "urgent", priority=Priority.URGENT))
    done, _ = await asyncio.wait([tasks[2]], timeout=TIMEOUT_S)  # shed before anything ran
    assert done == {tasks[2]} and ran == []
    gate.opened.set()
    async with asyncio.timeout(TIMEOUT_S):
        results = await asyncio.gather(*tasks, urgent, return_exceptions=True)
        await holder
    shed = [n for n, r in zip([*names, "urgent"], results, strict=True) if isinstance(r, Exception)]
    assert shed == ["background 2"]  # the least urgent, newest
    assert isinstance(results[2], OverloadedError)
    assert ran == ["urgent", "normal", "normal 2", "background 1"]


async def test_a_cancelled_queued_call_never_runs(worker: ModelWorker) -> None:
    ran: list[str] = []
    gate = Gate()
    holder = await gate.close_on(worker)
    doomed = asyncio.create_task(worker.run(ran.append, "cancelled"))
    kept = asyncio.create_task(worker.run(ran.append, "kept"))
    await queued(worker, 2)
    doomed.cancel()
    await queued(worker, 1)  # its place is given back at once
    gate.opened.set()
    async with asyncio.timeout(TIMEOUT_S):
        await asyncio.gather(holder, kept)
        await worker.run(ran.append, "after")
    assert doomed.cancelled()
    assert ran == ["kept", "after"]


async def test_a_stream_is_consumed_in_the_worker_thread_and_keeps_its_priority(
    worker: ModelWorker,
) -> None:
    threads: list[str] = []
    ran: list[str] = []

    def words() -> Iterator[str]:
        for word in ("one", "two", "three"):
            threads.append(threading.current_thread().name)
            yield word

    async def consume() -> list[str]:
        ran.append("stream")
        return [w async for w in worker.stream(words, priority=Priority.URGENT)]

    gate = Gate()
    holder = await gate.close_on(worker)
    normal = asyncio.create_task(worker.run(ran.append, "normal"))
    await queued(worker, 1)
    streamed = asyncio.create_task(consume())
    await queued(worker, 2)
    gate.opened.set()
    async with asyncio.timeout(TIMEOUT_S):
        assert await streamed == ["one", "two", "three"]
        await asyncio.gather(holder, normal)
    assert threads == ["voicebot-test"] * 3
    assert ran == ["stream", "normal"]


async def test_leaving_a_stream_early_closes_the_generator_in_the_worker_thread(
    worker: ModelWorker,
) -> None:
    closed_in: list[str] = []

    def numbers() -> Iterator[int]:
        try:
            yield from itertools.count()  # endless: only closing it frees the worker
        finally:
            closed_in.append(threading.current_thread().name)

    async with asyncio.timeout(TIMEOUT_S):
        async for n in worker.stream(numbers):
            if n == 2:
                break
        await worker.run(lambda: None)  # runs once the generator was closed
    assert closed_in == ["voicebot-test"]


async def test_a_stream_left_while_queued_never_starts(worker: ModelWorker) -> None:
    made: list[str] = []

    def make() -> Iterator[str]:
        made.append("made")
        return iter(["x"])

    gate = Gate()
    holder = await gate.close_on(worker)

    async def consume() -> list[str]:
        return [item async for item in worker.stream(make)]

    task = asyncio.create_task(consume())
    await queued(worker, 1)
    task.cancel()
    await queued(worker, 0)
    gate.opened.set()
    async with asyncio.timeout(TIMEOUT_S):
        await holder
        await worker.run(lambda: None)
    assert made == []


async def test_a_stream_shed_for_urgent_work_fails_with_overloaded(worker: ModelWorker) -> None:
    gate = Gate()
    holder = await gate.close_on(worker)

    async def consume(priority: Priority) -> list[Any]:
        return [x async for x in worker.stream(lambda: iter([1]), priority=priority)]

    shed = asyncio.create_task(consume(Priority.BACKGROUND))
    others = [asyncio.create_task(worker.run(str, n)) for n in range(3)]
    await queued(worker, 4)
    urgent = asyncio.create_task(worker.run(str, "urgent", priority=Priority.URGENT))
    with pytest.raises(OverloadedError):
        await asyncio.wait_for(shed, TIMEOUT_S)
    gate.opened.set()
    async with asyncio.timeout(TIMEOUT_S):
        assert await urgent == "urgent"
        await asyncio.gather(holder, *others)


async def test_closing_cancels_queued_calls_and_refuses_new_ones() -> None:
    worker = ModelWorker("closing", max_queued=4)
    gate = Gate()
    holder = await gate.close_on(worker)
    queued_call = asyncio.create_task(worker.run(str, "never"))

    async def consume() -> list[Any]:
        return [x async for x in worker.stream(lambda: iter([1]))]

    queued_stream = asyncio.create_task(consume())
    await queued(worker, 2)
    worker.close()
    gate.opened.set()
    async with asyncio.timeout(TIMEOUT_S):
        assert await holder == "held"  # the running call finishes
        with pytest.raises(asyncio.CancelledError):
            await queued_call
        with pytest.raises(EngineError, match="closed"):
            await queued_stream
    with pytest.raises(EngineError, match="closed"):
        await asyncio.wait_for(worker.run(str, 1), TIMEOUT_S)


async def test_a_stream_set_aside_lets_waiting_calls_run_and_then_goes_on(
    worker: ModelWorker,
) -> None:
    ran: list[str] = []
    may_yield = threading.Event()
    step = threading.Event()

    def words() -> Iterator[str]:
        for word in ("one", "two", "three", "four"):
            ran.append(word)
            yield word
            if word == "two":
                may_yield.set()  # the first words are out: others may go first now
                assert step.wait(TIMEOUT_S)

    received: list[str] = []

    async def consume() -> None:
        async for word in worker.stream(words, yield_when=may_yield):
            received.append(word)

    consumer = asyncio.create_task(consume())
    assert await asyncio.to_thread(may_yield.wait, TIMEOUT_S)
    other = asyncio.create_task(worker.run(ran.append, "other user", priority=Priority.NORMAL))
    await queued(worker, 1)
    step.set()
    async with asyncio.timeout(TIMEOUT_S):
        await asyncio.gather(consumer, other)
    assert received == ["one", "two", "three", "four"]
    # "three" was already on its way when the other call came; the rest waited behind it.
    assert ran == ["one", "two", "three", "other user", "four"]


async def test_a_stream_is_not_set_aside_before_it_may_be(worker: ModelWorker) -> None:
    ran: list[str] = []
    started = threading.Event()
    step = threading.Event()

    def words() -> Iterator[str]:
        started.set()
        assert step.wait(TIMEOUT_S)
        for word in ("one", "two", "three"):
            ran.append(word)
            yield word

    async def consume() -> list[str]:
        return [w async for w in worker.stream(words, yield_when=threading.Event())]

    consumer = asyncio.create_task(consume())
    assert await asyncio.to_thread(started.wait, TIMEOUT_S)
    other = asyncio.create_task(worker.run(ran.append, "other user"))
    await queued(worker, 1)
    step.set()
    async with asyncio.timeout(TIMEOUT_S):
        assert await consumer == ["one", "two", "three"]
        await other
    assert ran == ["one", "two", "three", "other user"]


async def test_leaving_a_stream_while_its_rest_waits_closes_it_in_the_worker(
    worker: ModelWorker,
) -> None:
    closed_in: list[str] = []
    gate = Gate()
    may_yield = threading.Event()
    may_yield.set()

    def words() -> Iterator[str]:
        try:
            yield from itertools.count()  # type: ignore[misc]
        finally:
            closed_in.append(threading.current_thread().name)

    async def consume() -> None:
        async for number in worker.stream(words, yield_when=may_yield):
            if number == 0:
                # Someone else's call comes: the stream is set aside behind it.
                holder_task.append(asyncio.create_task(worker.run(gate.hold)))
                await asyncio.to_thread(gate.entered.wait, TIMEOUT_S)
                return  # leave while the rest waits in the queue

    holder_task: list[asyncio.Task[str]] = []
    async with asyncio.timeout(TIMEOUT_S):
        await consume()
        gate.opened.set()
        await holder_task[0]
        # The close is the worker's next call: one more call behind it finds it done.
        await worker.run(lambda: None)
    assert closed_in == ["voicebot-test"]


def test_a_prestarted_executor_has_all_its_threads_at_once_and_keeps_that_count() -> None:
    from voicebot.workers import prestarted_executor

    before = threading.active_count()
    executor = prestarted_executor(3)
    try:
        assert threading.active_count() == before + 3
        everyone = threading.Barrier(3)  # three calls at once need all three threads
        for future in [executor.submit(everyone.wait, 10.0) for _ in range(3)]:
            future.result()
        assert threading.active_count() == before + 3
    finally:
        executor.shutdown()
