"""File transport: a recording in, the bot's replies out, time-aligned, in a WAV file.

The same session loop as the microphone runs on the recording. By default the recording is fed
at real-time pace, so turn-taking and barge-in behave exactly as they would live; ``fast``
feeds it as quickly as the session can take it, pausing the input while the assistant replies
(no barge-in is possible then).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from ..audio import StreamResampler
from ..events import AudioOut, Event, Interrupted
from ..session import Session

__all__ = ["Timeline", "feed_recording"]

_CHUNK_MS = 20


class Timeline:
    """The assistant's audio laid out on the input's timeline.

    Each reply chunk is placed at the current position of the input (or right after the
    previous chunk if that is later: playback is sequential). An interruption erases what was
    queued after that moment, as a real player flushes its buffer.
    """

    def __init__(self, sample_rate_hz: int, position_s: Callable[[], float]) -> None:
        """Create a timeline at ``sample_rate_hz``; ``position_s`` gives the input's position."""
        self.sample_rate_hz = sample_rate_hz
        """Rate of the output."""
        self._position_s = position_s
        self._audio = bytearray()
        self._cursor = 0  # bytes: where the next queued chunk goes
        self._resamplers: dict[int, StreamResampler] = {}

    async def __call__(self, event: Event) -> None:
        """A session sink."""
        if isinstance(event, AudioOut):
            self.add(event.pcm, event.sample_rate_hz)
        elif isinstance(event, Interrupted):
            self.cut()

    def _now_bytes(self) -> int:
        return 2 * round(self._position_s() * self.sample_rate_hz)

    def add(self, pcm: bytes, sample_rate_hz: int) -> None:
        """Queue reply audio for playback."""
        if sample_rate_hz != self.sample_rate_hz:
            resampler = self._resamplers.setdefault(
                sample_rate_hz, StreamResampler(sample_rate_hz, self.sample_rate_hz)
            )
            pcm = resampler.process(pcm)
        start = max(self._now_bytes(), self._cursor)
        end = start + len(pcm)
        if len(self._audio) < end:
            self._audio.extend(bytes(end - len(self._audio)))
        self._audio[start:end] = pcm
        self._cursor = end

    def cut(self) -> None:
        """Barge-in: drop everything queued after now."""
        now = self._now_bytes()
        if self._cursor > now:
            del self._audio[now:]
            self._cursor = now

    def audio(self, min_seconds: float = 0.0) -> bytes:
        """The whole output, padded with silence to at least ``min_seconds``."""
        length = max(len(self._audio), 2 * round(min_seconds * self.sample_rate_hz))
        return bytes(self._audio) + bytes(length - len(self._audio))


async def feed_recording(
    session: Session,
    pcm: bytes,
    sample_rate_hz: int,
    *,
    realtime: bool = True,
    position: list[float] | None = None,
) -> None:
    """Feed a recording to a session in 20 ms chunks, then end its input.

    Args:
        session: A started session whose input rate is ``sample_rate_hz``.
        pcm: The recording.
        sample_rate_hz: Its rate.
        realtime: Pace the chunks at real time (else as fast as the session takes them,
            waiting while it replies).
        position: If given, ``position[0]`` is kept at the input position in seconds.
    """
    step = 2 * sample_rate_hz * _CHUNK_MS // 1000
    start = time.perf_counter()
    for index, offset in enumerate(range(0, len(pcm), step)):
        if realtime:
            delay = start + index * _CHUNK_MS / 1000 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await session.wait_idle()
        if position is not None:
            position[0] = offset / 2 / sample_rate_hz
        await session.feed(pcm[offset : offset + step])
    if position is not None:
        position[0] = len(pcm) / 2 / sample_rate_hz
    await session.end_of_input()


async def chunks(
    pcm: bytes, sample_rate_hz: int, chunk_ms: int = _CHUNK_MS
) -> AsyncIterator[bytes]:
    """Yield a recording in chunks without pacing."""
    step = 2 * sample_rate_hz * chunk_ms // 1000
    for offset in range(0, len(pcm), step):
        yield pcm[offset : offset + step]


async def chunks_paced(
    pcm: bytes, sample_rate_hz: int, chunk_ms: int = _CHUNK_MS
) -> AsyncIterator[bytes]:
    """Yield a recording in chunks at real-time pace.

    Each chunk comes when a microphone would deliver it: once its last sample was captured.
    """
    step = 2 * sample_rate_hz * chunk_ms // 1000
    start = time.perf_counter()
    for index, offset in enumerate(range(0, len(pcm), step)):
        delay = start + (index + 1) * chunk_ms / 1000 - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        yield pcm[offset : offset + step]
