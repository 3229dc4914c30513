"""Keep a long-running process's memory from creeping: fewer malloc arenas, freed pages returned.

glibc's malloc gives each thread that allocates under contention an arena of its own, up to
eight per core, and hands freed memory back to the system only from the top of the main heap.
A server whose inference threads allocate and free tensors, audio and strings for hours keeps
the peak of every arena: the soak (``voicebot bench --soak 60``) measured +6.5 % RSS from the
10th to the 60th minute with four sessions, and 892 -> 1133 MB idle once they had closed.

Two standard remedies, both glibc calls made through :mod:`ctypes` (elsewhere, e.g. musl or
macOS, they do nothing):

- :func:`limit_arenas`: ``mallopt(M_ARENA_MAX, n)`` at start, before the worker threads
  exist; the same as the ``MALLOC_ARENA_MAX`` environment variable, which wins when set.
- :func:`trim`: ``malloc_trim(0)`` returns the free pages inside every arena, not only the
  top. ``voicebot serve`` and the daemon call it from a worker thread every
  ``[server] memory_trim_interval_s`` (:func:`trim_periodically`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import time
from functools import cache

__all__ = ["limit_arenas", "trim", "trim_periodically"]

_LOGGER = logging.getLogger(__name__)

_M_ARENA_MAX = -8
"""``mallopt`` parameter number of ``M_ARENA_MAX`` in glibc's malloc.h."""


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):  # not glibc: no malloc_trim / mallopt
        return None
    return libc


def limit_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (call before starting threads); True when applied.

    Does nothing when ``MALLOC_ARENA_MAX`` is set (the user's choice), when ``arenas`` is 0
    or less, or without glibc.
    """
    if arenas <= 0 or "MALLOC_ARENA_MAX" in os.environ:
        return False
    libc = _libc()
    if libc is None:
        return False
    applied = bool(libc.mallopt(_M_ARENA_MAX, arenas))
    _LOGGER.debug("malloc arenas capped at %d: %s", arenas, applied)
    return applied


def trim() -> bool:
    """Return free heap pages to the system; True when some were. Blocks for a few ms."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))


async def trim_periodically(interval_s: float) -> None:
    """Call :func:`trim` in the loop's default executor every ``interval_s`` seconds, forever.

    Cancel the task to stop it. Does nothing when ``interval_s`` is 0 or less or without glibc.
    """
    if interval_s <= 0 or _libc() is None:
        return
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        started = time.perf_counter()
        released = await loop.run_in_executor(None, trim)
        _LOGGER.debug(
            "malloc_trim: %s in %.1f ms",
            "pages returned" if released else "nothing to return",
            1000 * (time.perf_counter() - started),
        )
