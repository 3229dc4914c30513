"""voicebot.heap: the malloc arena cap and the periodic trim a long-running server uses."""

from __future__ import annotations

import asyncio
import ctypes
import subprocess
import sys

import pytest

from voicebot import heap

GLIBC = heap._libc() is not None


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_trim_returns_freed_pages_to_the_system() -> None:
    # In a child, so this test process's heap is not what is measured. 200 MB in small
    # blocks, freed in the middle of the heap (a block kept at its top): glibc gives none
    # of it back by itself; malloc_trim does.
    code = """
import ctypes, sys
from voicebot import heap
def rss_mb():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
blocks = [ctypes.create_string_buffer(4000) for _ in range(50000)]
keep = ctypes.create_string_buffer(4000)
peak = rss_mb()
del blocks
before = rss_mb()
assert heap.trim()
after = rss_mb()
print(peak, before, after)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    peak, before, after = map(float, out)
    assert before > peak - 50, "glibc returned the blocks by itself: nothing to measure"
    assert after < before - 150


def test_the_environment_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert heap.limit_arenas(2) is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert heap.limit_arenas(0) is False
    assert heap.limit_arenas(2) is GLIBC


async def test_periodic_trim_runs_off_the_loop_and_stops_when_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    calls: list[str] = []
    monkeypatch.setattr(heap, "trim", lambda: calls.append(threading.current_thread().name))
    monkeypatch.setattr(heap, "_libc", lambda: ctypes.CDLL(None))
    task = asyncio.create_task(heap.trim_periodically(0.01))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    count = len(calls)
    assert count >= 2
    assert threading.main_thread().name not in calls
    await asyncio.sleep(0.05)
    assert len(calls) == count
    assert await heap.trim_periodically(0) is None  # disabled: returns at once
