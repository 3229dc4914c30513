"""One worker thread per model, bridging synchronous engines to asyncio.

Every session shares a model's worker, so its queue is where sessions meet: it is bounded
(:class:`~voicebot.errors.OverloadedError` past the bound) and ordered by :class:`Priority`,
first in first out within a priority, so the user who just stopped talking is served before
speculative work of the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeVar

from .errors import EngineError, OverloadedError

__all__ = ["DEFAULT_MAX_QUEUED", "ModelWorker", "Priority", "prestarted_executor"]

T = TypeVar("T")

_END = object()

DEFAULT_MAX_QUEUED = 16
"""Calls a worker holds waiting (besides the one running): two per session at the default
``[server] max_sessions`` of 8."""


class Priority(IntEnum):
    """Which queued call a worker takes next: the lowest value first."""

    URGENT = 0
    """A user is waiting now: the final transcription or first reply after end of speech."""
    NORMAL = 1
    """Ordinary work (the default)."""
    BACKGROUND = 2
    """Speculative work whose result may be thrown away; shed first when the queue is full."""


@dataclass(order=True)
class _Job:
    priority: int
    sequence: int
    call: Callable[[], Any] = field(compare=False)
    future: Future[Any] = field(compare=False)
    sheddable: bool = field(default=True, compare=False)


class ModelWorker:
    """A thread for one model (or a few, for a model that takes parallel calls), fed from a
    bounded priority queue.

    Calls into the model run one after the other, so a stateful model is never entered twice
    at once (several sessions share it), and the event loop never blocks on inference. A model
    that holds several instances (``threads`` > 1, e.g. two Whisper instances of one thread
    each) is served by that many threads from the same queue.
    Generators are consumed inside the worker thread; each item crosses to the loop with
    ``loop.call_soon_threadsafe``. A call cancelled while still queued never runs.
    """

    def __init__(
        self, name: str, *, max_queued: int = DEFAULT_MAX_QUEUED, threads: int = 1
    ) -> None:
        """Create the worker; its threads, ``voicebot-<name>``, start with the first call.

        Args:
            name: The model this worker serves (names the threads and errors).
            max_queued: Calls that may wait behind the running ones; past it a call is
                refused, unless it outranks a queued one, which is then refused instead.
            threads: Calls run at once: 1 for a model that must not be entered twice.
        """
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.name = name
        """The model this worker serves."""
        self.max_queued = max_queued
        """Calls that may wait behind the running one."""
        self._queue: list[_Job] = []
        self._sequence = itertools.count()
        self._condition = threading.Condition()
        self.threads = threads
        """Calls run at once."""
        self._started: list[threading.Thread] = []
        self._closed = False

    @property
    def queued(self) -> int:
        """Calls waiting (not counting the one running)."""
        with self._condition:
            return len(self._queue)

    async def run(
        self, fn: Callable[..., T], *args: Any, priority: Priority = Priority.NORMAL, **kwargs: Any
    ) -> T:
        """Run ``fn(*args, **kwargs)`` in the worker thread and return its result.

        Raises:
            OverloadedError: the queue is full of calls at least as urgent as this one, or
                this call was queued and then shed for a more urgent one.
            EngineError: the worker is closed.
        """
        future = self._submit(functools.partial(fn, *args, **kwargs), priority)
        # Cancelling the awaiting task cancels ``future``: if still queued it never runs.
        return await asyncio.wrap_future(future)

    async def stream(
        self,
        make: Callable[[], Iterator[T]],
        *,
        priority: Priority = Priority.NORMAL,
        yield_when: threading.Event | None = None,
    ) -> AsyncIterator[T]:
        """Iterate ``make()`` in the worker thread, yielding its items on the event loop.

        The iteration is one call in the queue: the worker serves nothing else until the
        generator ends, unless ``yield_when`` is set: from then on, after each item, if other
        calls are waiting the generator is set aside and its rest queued behind them at
        :attr:`Priority.BACKGROUND` (a reply whose first words are out lets the next user's
        reply start; only for a model whose generators survive other calls in between, like
        :class:`~voicebot.engines.llm_llamacpp.LlamaCppChat`). If the consumer stops early
        (break, cancellation), the generator is closed in the worker thread before its next
        item; if it stops before the call left the queue, ``make`` is never called.

        Raises:
            OverloadedError: as :meth:`run`, on the first item.
            EngineError: the worker is closed.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        made: list[Iterator[T]] = []
        current: list[Future[Any]] = []  # the call in the queue now: the first, or a rest

        def post(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def close() -> None:
            closer = getattr(made[0], "close", None) if made else None
            if closer is not None:
                closer()

        def pump() -> None:
            set_aside = False
            try:
                if not made:
                    made.append(make())
                iterator = made[0]
                try:
                    for item in iterator:
                        post(item)
                        if stop.is_set():
                            break
                        if yield_when is not None and yield_when.is_set() and self._waiting():
                            set_aside = self._set_aside(pump, current, post)
                            if set_aside:
                                return
                finally:
                    if not set_aside:
                        close()
            except BaseException as error:  # handed to the consumer
                post(_Failure(error))
            finally:
                if not set_aside:
                    post(_END)

        current.append(self._submit(pump, priority))
        # A queued call shed, or cancelled by close(), never runs ``pump``: nothing posts _END.
        current[0].add_done_callback(lambda done: post(_Shed(done)))
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, _Failure):
                    raise item.error
                if isinstance(item, _Shed):
                    if item.future.cancelled():
                        raise EngineError(f"the {self.name} worker is closed")
                    error = item.future.exception()
                    if error is not None:
                        raise error
                    continue  # pump ran: its _END came first, or its rest is queued
                yield item
        finally:
            stop.set()
            if current[-1].cancel() and made:
                # A rest still queued never runs: close its generator in the worker.
                with contextlib.suppress(Exception):
                    self._submit(close, Priority.URGENT, sheddable=False)

    def _waiting(self) -> bool:
        with self._condition:
            return bool(self._queue)

    def _set_aside(
        self,
        pump: Callable[[], None],
        current: list[Future[Any]],
        post: Callable[[Any], None],
    ) -> bool:
        """Queue the rest of a stream behind the waiting calls; False if it cannot be."""
        try:
            rest = self._submit(pump, Priority.BACKGROUND, sheddable=False)
        except (OverloadedError, EngineError):
            return False  # keep going in place
        current.append(rest)
        rest.add_done_callback(lambda done: post(_Shed(done)))
        return True

    def close(self) -> None:
        """Stop taking calls; queued calls are cancelled, the running one finishes."""
        with self._condition:
            self._closed = True
            queued, self._queue = self._queue, []
            self._condition.notify_all()
        for job in queued:
            job.future.cancel()

    def _submit(
        self, call: Callable[[], Any], priority: Priority, *, sheddable: bool = True
    ) -> Future[Any]:
        future: Future[Any] = Future()
        shed: _Job | None = None
        with self._condition:
            if self._closed:
                raise EngineError(f"the {self.name} worker is closed")
            job = _Job(int(priority), next(self._sequence), call, future, sheddable)
            if len(self._queue) >= self.max_queued and sheddable:
                # The least urgent, newest queued call makes room for a more urgent one; the
                # rest of a stream already begun is never shed.
                last = max((queued for queued in self._queue if queued.sheddable), default=job)
                if last.priority <= job.priority:
                    raise OverloadedError(
                        f"the {self.name} model is busy ({len(self._queue)} calls waiting): "
                        "try again shortly"
                    )
                self._queue.remove(last)
                heapq.heapify(self._queue)
                shed = last
            heapq.heappush(self._queue, job)
            if not self._started:
                for index in range(self.threads):
                    suffix = f"-{index + 1}" if self.threads > 1 else ""
                    thread = threading.Thread(
                        target=self._serve, name=f"voicebot-{self.name}{suffix}", daemon=True
                    )
                    thread.start()
                    self._started.append(thread)
            self._condition.notify()
        future.add_done_callback(functools.partial(self._forget, job))
        if shed is not None and shed.future.set_running_or_notify_cancel():
            shed.future.set_exception(
                OverloadedError(f"the {self.name} model is busy: more urgent work came first")
            )
        return future

    def _forget(self, job: _Job, future: Future[Any]) -> None:
        """A call cancelled while queued gives its place back at once."""
        if not future.cancelled():
            return
        with self._condition:
            if job in self._queue:
                self._queue.remove(job)
                heapq.heapify(self._queue)

    def _serve(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._closed:
                    self._condition.wait()
                if not self._queue:
                    return
                job = heapq.heappop(self._queue)
            if not job.future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                result = job.call()
            except BaseException as error:  # handed to the caller
                job.future.set_exception(error)
            else:
                job.future.set_result(result)


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Shed:
    """The stream's call finished without running ``pump`` (shed) or after it (harmless)."""

    __slots__ = ("future",)

    def __init__(self, future: Future[Any]) -> None:
        self.future = future


def prestarted_executor(threads: int | None = None) -> ThreadPoolExecutor:
    """A thread pool with all its threads started now, for a loop's default executor.

    asyncio's own pool (``asyncio.to_thread``: the store, file writes) starts a thread only
    when a call finds none idle, and keeps it: a long-running server's thread count then
    grows the first time its load peaks, hours in. Started up front, it is the same from the
    first minute, so what an hour of use adds to it is a leak (``voicebot bench --soak``).

    Args:
        threads: How many (default: asyncio's own cap, ``min(32, cpus + 4)``).
    """
    import os

    count = threads or min(32, (os.cpu_count() or 1) + 4)
    executor = ThreadPoolExecutor(max_workers=count, thread_name_prefix="asyncio")
    # Each call waits for all the others, so each takes a thread of its own.
    everyone = threading.Barrier(count)
    for future in [executor.submit(everyone.wait, 30.0) for _ in range(count)]:
        future.result()
    return executor
