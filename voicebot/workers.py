"""One worker thread per model, bridging synchronous engines to asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["ModelWorker"]

T = TypeVar("T")

_END = object()


class ModelWorker:
    """A single-thread executor for one model.

    Calls into the model queue behind each other, so a stateful model is never entered twice
    at once (several sessions share it), and the event loop never blocks on inference.
    Generators are consumed inside the worker thread; each item crosses to the loop with
    ``loop.call_soon_threadsafe``.
    """

    def __init__(self, name: str) -> None:
        """Create the worker; its thread is named ``voicebot-<name>``."""
        self.name = name
        """The model this worker serves."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"voicebot-{name}")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in the worker thread and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def stream(self, make: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
        """Iterate ``make()`` in the worker thread, yielding its items on the event loop.

        If the consumer stops early (break, cancellation), the generator is closed in the
        worker thread before its next item.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def post(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def pump() -> None:
            try:
                iterator = make()
                try:
                    for item in iterator:
                        post(item)
                        if stop.is_set():
                            break
                finally:
                    close = getattr(iterator, "close", None)
                    if close is not None:
                        close()
            except BaseException as error:  # handed to the consumer
                post(_Failure(error))
            finally:
                post(_END)

        future = loop.run_in_executor(self._executor, pump)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            stop.set()
            if future.done():
                future.result()

    def close(self) -> None:
        """Stop accepting work; queued calls are cancelled."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error
