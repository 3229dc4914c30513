"""Fake engines for tests and demos: deterministic, instant, no models.

They follow the same Protocols as the real engines and are passed in through constructors
(:class:`voicebot.engines.Engines`), the way httpx takes a ``MockTransport``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ..audio import float_to_pcm16, pcm16_to_float
from .base import Message, Transcription

__all__ = ["FakeChat", "FakeStt", "FakeTts", "FakeVad", "FakeWakeWord", "tone"]


def tone(
    seconds: float, sample_rate_hz: int = 16000, *, hz: float = 220.0, level: float = 0.3
) -> bytes:
    """A sine tone as PCM16: what the fakes treat as speech."""
    n = round(seconds * sample_rate_hz)
    t = np.arange(n, dtype=np.float32) / sample_rate_hz
    return float_to_pcm16(level * np.sin(2 * math.pi * hz * t))


class FakeVad:
    """Calls a frame speech when it is louder than a threshold (tones are speech)."""

    def __init__(self, *, frame_ms: int = 30, threshold: float = 0.02) -> None:
        """Create a detector with the given frame length and RMS threshold."""
        self.frame_ms = frame_ms
        """Frame length in milliseconds."""
        self.threshold = threshold
        """RMS above which a frame is speech."""

    def is_speech(self, frame: bytes) -> bool:
        """True when the frame's RMS exceeds the threshold."""
        samples = pcm16_to_float(frame)
        return bool(samples.size and np.sqrt(np.mean(samples**2)) > self.threshold)


class FakeStt:
    """Returns scripted transcripts in order (or from a function of the audio)."""

    def __init__(
        self,
        texts: Sequence[str] | Callable[[bytes], str] = (),
        *,
        delay_s: float = 0.0,
        fail_on: str | None = None,
    ) -> None:
        """Create a fake.

        Args:
            texts: Transcripts returned in turn (the last repeats), or a function of the PCM.
            delay_s: Time each call takes.
            fail_on: Raise :class:`RuntimeError` when the transcript would be this text.
        """
        self._texts = texts
        self._index = 0
        self.delay_s = delay_s
        """Time each call takes."""
        self.fail_on = fail_on
        """Text on which the fake raises."""
        self.calls: list[bytes] = []
        """Audio of every call, in order."""

    def transcribe(self, pcm: bytes) -> Transcription:
        """Return the next scripted transcript."""
        self.calls.append(pcm)
        if self.delay_s:
            time.sleep(self.delay_s)
        if callable(self._texts):
            text = self._texts(pcm)
        elif self._texts:
            text = self._texts[min(self._index, len(self._texts) - 1)]
            self._index += 1
        else:
            text = ""
        if self.fail_on is not None and text == self.fail_on:
            raise RuntimeError(f"fake STT failure on {text!r}")
        return Transcription(text=text, audio_s=len(pcm) / 32000)


class FakeChat:
    """Streams scripted replies word by word, honouring cancellation."""

    def __init__(
        self,
        replies: Sequence[str] | Callable[[Sequence[Message]], str] = ("Hello there.",),
        *,
        token_delay_s: float = 0.0,
        turn_end: Callable[[str], float] | None = None,
    ) -> None:
        """Create a fake.

        Args:
            replies: Replies returned in turn (the last repeats), or a function of the messages.
            token_delay_s: Time per streamed word.
            turn_end: End-of-turn probability of the user's last words (default: 1.0 after
                ``. ? !``, else 0.01).
        """
        self._replies = replies
        self._index = 0
        self.token_delay_s = token_delay_s
        """Time per streamed word."""
        self.prompts: list[list[Message]] = []
        """The messages of every call, in order."""
        self.tokens_streamed = 0
        """Words yielded over all calls."""
        self._turn_end = turn_end
        self.turn_checks: list[str] = []
        """The user text of every end-of-turn question, in order."""

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Counts words, plus four per message for the template."""
        return sum(len(m["content"].split()) + 4 for m in messages)

    def end_of_turn_probability(self, messages: Sequence[Message]) -> float:
        """1.0 when the user's last words end a sentence (``. ? !``), else 0.01.

        0.01 lies between the default thresholds: such words wait the middle silence.

        ``turn_end`` given to the constructor replaces this rule.
        """
        self.turn_checks.append(messages[-1]["content"] if messages else "")
        text = messages[-1]["content"].rstrip() if messages else ""
        if self._turn_end is not None:
            return self._turn_end(text)
        return 1.0 if text.endswith((".", "?", "!")) and not text.endswith("...") else 0.01

    def stream(self, messages: Sequence[Message], cancel: threading.Event) -> Iterator[str]:
        """Yield the next reply word by word until done or cancelled."""
        self.prompts.append([dict(m) for m in messages])  # type: ignore[misc]
        if callable(self._replies):
            reply = self._replies(messages)
        else:
            reply = self._replies[min(self._index, len(self._replies) - 1)]
            self._index += 1
        for i, word in enumerate(reply.split(" ")):
            if cancel.is_set():
                return
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            if cancel.is_set():
                return
            self.tokens_streamed += 1
            yield word if i == 0 else " " + word


class FakeTts:
    """Speaks a tone whose length is proportional to the text, in short chunks."""

    def __init__(
        self,
        *,
        sample_rate_hz: int = 16000,
        seconds_per_char: float = 0.02,
        chunk_s: float = 0.1,
        delay_s: float = 0.0,
    ) -> None:
        """Create a fake.

        Args:
            sample_rate_hz: Output rate.
            seconds_per_char: Audio length per character of text.
            chunk_s: Length of each yielded chunk.
            delay_s: Time before the first chunk.
        """
        self.sample_rate_hz = sample_rate_hz
        """Output rate."""
        self.seconds_per_char = seconds_per_char
        self.chunk_s = chunk_s
        self.delay_s = delay_s
        self.texts: list[str] = []
        """Every text synthesised, in order."""

    def synthesize(
        self,
        text: str,
        cancel: threading.Event | None = None,
        *,
        speaking_rate: float | None = None,
    ) -> Iterator[bytes]:
        """Yield a tone for ``text`` chunk by chunk until done or cancelled."""
        self.texts.append(text)
        if self.delay_s:
            time.sleep(self.delay_s)
        total = len(text) * self.seconds_per_char / (speaking_rate or 1.0)
        audio = tone(total, self.sample_rate_hz, hz=440.0, level=0.2)
        step = 2 * round(self.chunk_s * self.sample_rate_hz)
        for start in range(0, len(audio), step):
            if cancel is not None and cancel.is_set():
                return
            yield audio[start : start + step]


class FakeWakeWord:
    """Fires when it hears a loud tone at a given pitch band (scripted wake word)."""

    def __init__(
        self, name: str = "okay_nabu", *, min_tone_s: float = 0.3, hz: float = 880.0
    ) -> None:
        """Create a fake that fires after ``min_tone_s`` of a tone near ``hz``."""
        self.name = name
        """Wake word id."""
        self._needed = round(min_tone_s * 16000)
        self._hz = hz
        self._heard = 0

    def process(self, pcm: bytes) -> bool:
        """Feed audio; True once enough of the wake tone was heard."""
        samples = pcm16_to_float(pcm)
        if samples.size < 32:
            return False
        spectrum = np.abs(np.fft.rfft(samples))
        peak_hz = float(np.argmax(spectrum)) * 16000 / samples.size
        loud = float(np.sqrt(np.mean(samples**2))) > 0.05
        if loud and abs(peak_hz - self._hz) < 60:
            self._heard += samples.size
            if self._heard >= self._needed:
                self._heard = 0
                return True
        else:
            self._heard = 0
        return False

    def reset(self) -> None:
        """Forget the audio seen so far."""
        self._heard = 0
