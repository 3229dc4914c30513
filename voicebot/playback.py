"""What the listener has heard of a reply, and when half-duplex input must be ignored.

Both follow the session's one clock: the reply audio is assumed to play in real time from the
moment it is sent (after what was sent before it), which is what the sinks do.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["EchoGuard", "Playback"]


class Playback:
    """Estimates what the listener has heard, assuming real-time playback of what was sent."""

    def __init__(self, clock: Callable[[], float], *, realtime: bool = True) -> None:
        """Create an estimate on ``clock`` (monotonic seconds).

        Args:
            clock: The session's clock.
            realtime: False when the audio goes to a file: "played" the moment it is sent.
        """
        self._clock = clock
        self._realtime = realtime
        self.end = 0.0
        """Clock time at which everything sent so far has played (0: nothing sent)."""
        self._chunks: list[tuple[int, float, float]] = []  # piece index, start, end
        self._pieces: list[str] = []

    def add(self, text: str, seconds: float) -> None:
        """A chunk of ``seconds`` of audio was sent; ``text`` is set on a piece's first chunk."""
        now = self._clock()
        if text or not self._pieces:
            self._pieces.append(text)
        if not self._realtime:
            seconds = 0.0
        start = max(now, self.end)
        self.end = start + seconds
        self._chunks.append((len(self._pieces) - 1, start, self.end))

    def playing(self) -> bool:
        """Audio sent is still playing."""
        return self._clock() < self.end

    def remaining_s(self) -> float:
        """Seconds until everything sent has played (0 when it has)."""
        return max(0.0, self.end - self._clock())

    def heard(self) -> str:
        """The text played so far (a piece cut midway keeps its share of words)."""
        if not self._realtime:
            return " ".join(p for p in self._pieces if p)
        now = self._clock()
        played = [0.0] * len(self._pieces)
        total = [0.0] * len(self._pieces)
        for index, start, end in self._chunks:
            total[index] += end - start
            played[index] += max(0.0, min(now, end) - start)
        words: list[str] = []
        for text, done, length in zip(self._pieces, played, total, strict=True):
            if length <= 0 or done <= 0:
                continue
            piece_words = text.split()
            share = done / length
            keep = len(piece_words) if share >= 0.95 else int(len(piece_words) * share)
            words.extend(piece_words[:keep])
        return " ".join(words)

    def reset(self) -> None:
        """Forget the reply (a new one starts, or the speaker was flushed)."""
        self.end = 0.0
        self._chunks.clear()
        self._pieces.clear()


class EchoGuard:
    """Half-duplex: input is ignored while the reply plays and for the room's echo tail after.

    Only the reply's sound can echo back into the microphone: while a reply is still being
    written nothing plays, so the user is heard (and a continuation of their turn interrupts
    the reply, which then answers the whole turn).
    """

    def __init__(self, clock: Callable[[], float], echo_tail_ms: int) -> None:
        """Create a guard on ``clock`` with an echo tail of ``echo_tail_ms``."""
        self._clock = clock
        self._tail_s = echo_tail_ms / 1000
        self._deaf_until = 0.0

    def check(self, *, replying: bool, playback: Playback) -> bool | None:
        """Whether input must be ignored now.

        Returns:
            True: ignore it. False: listen. None: listen, and the deaf spell just ended, so
            the caller should forget any partial utterance heard before it.
        """
        if replying and playback.end > 0:
            self._deaf_until = playback.end + self._tail_s
            return True
        if self._clock() < self._deaf_until:
            return True
        if self._deaf_until:
            self._deaf_until = 0.0
            return None
        return False

    def reply_ended(self) -> None:
        """The reply's sound just ended: stay deaf for the echo tail."""
        self._deaf_until = max(self._deaf_until, self._clock() + self._tail_s)

    def speaker_flushed(self) -> None:
        """The reply was cut off: only the echo tail is left to ignore (if deaf at all)."""
        if self._deaf_until:
            self._deaf_until = self._clock() + self._tail_s
