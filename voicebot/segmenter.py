"""Cutting a stream of audio into utterances: webrtcvad frames, hysteresis and pre-roll."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .config import SegmenterSettings
from .engines.base import VoiceActivityDetector

__all__ = [
    "PauseBegan",
    "SegmentEvent",
    "Segmenter",
    "SpeechBegan",
    "SpeechResumed",
    "UtteranceDropped",
    "UtteranceEnded",
]

SAMPLE_RATE_HZ = 16000
_START_WINDOW_MS = 300
_RESUME_FRAMES = 2
_TRAILING_SILENCE_MS = 250


@dataclass(frozen=True, slots=True)
class SpeechBegan:
    """Enough voiced audio was heard: the user is speaking."""

    stream_time_s: float
    """Where speech began in the stream (the first voiced frame, not the pre-roll)."""


@dataclass(frozen=True, slots=True)
class PauseBegan:
    """The user went quiet; the turn may be ending (a chance to start transcribing early)."""

    audio: bytes
    """The utterance so far, pre-roll included."""
    stream_time_s: float
    """End of the last voiced frame."""


@dataclass(frozen=True, slots=True)
class SpeechResumed:
    """The user spoke again after a pause: any early transcript is stale."""

    stream_time_s: float
    """Where speech resumed."""


@dataclass(frozen=True, slots=True)
class UtteranceEnded:
    """The end of turn was reached: here is the utterance."""

    audio: bytes
    """The utterance, pre-roll included, trailing silence trimmed."""
    start_s: float
    """Stream time of the first byte of ``audio``."""
    speech_end_s: float
    """Stream time where the voiced audio ended (the user stopped talking)."""
    voiced_ms: int
    """Voiced audio it contains."""
    forced: bool = False
    """Ended by ``max_utterance_s`` rather than by silence."""


@dataclass(frozen=True, slots=True)
class UtteranceDropped:
    """Speech began but held too little voiced audio to be an utterance (a click, a cough)."""

    voiced_ms: int
    """The voiced audio it held."""


SegmentEvent = SpeechBegan | PauseBegan | SpeechResumed | UtteranceEnded | UtteranceDropped
"""Anything the segmenter reports."""


class Segmenter:
    """A VAD state machine over 16 kHz PCM16 audio.

    Speech starts once ``speech_start_ms`` of voiced frames fall within a 300 ms window; the
    ``pre_roll_ms`` before that are kept so the first syllable is not lost. The turn ends after
    :attr:`end_of_turn_silence_ms` of silence; a lone voiced frame in the silence (a click) does
    not restart the wait. ``speculative_after_ms`` of silence reports a :class:`PauseBegan`.
    """

    def __init__(
        self,
        vad: VoiceActivityDetector,
        settings: SegmenterSettings | None = None,
        *,
        speculative_after_ms: int | None = None,
    ) -> None:
        """Create a segmenter around a VAD."""
        self.settings = settings or SegmenterSettings()
        """Timing settings."""
        self.frame_ms = vad.frame_ms
        """VAD frame length."""
        self.speculative_after_ms = min(
            speculative_after_ms
            if speculative_after_ms is not None
            else self.settings.speculative_after_ms,
            self.settings.end_of_turn_silence_ms,
        )
        """Silence after which :class:`PauseBegan` is reported."""
        self._vad = vad
        self._frame_bytes = SAMPLE_RATE_HZ * self.frame_ms // 1000 * 2
        self._pending = b""
        self._samples = 0
        self._preroll: deque[bytes] = deque(
            maxlen=max(1, self.settings.pre_roll_ms // self.frame_ms)
        )
        self._window: deque[bool] = deque(maxlen=max(1, _START_WINDOW_MS // self.frame_ms))
        self._reset_utterance()

    def _reset_utterance(self) -> None:
        self.end_of_turn_silence_ms = self.settings.end_of_turn_silence_ms
        """Silence that ends the open utterance. A caller that judges the turn from its words
        may change it during a pause; it returns to the setting whenever speech (re)starts."""
        self._in_speech = False
        self._frames: list[bytes] = []
        self._utterance_start_s = 0.0
        self._voiced_ms = 0
        self._silence_ms = 0
        self._streak = 0
        self._last_voiced_frame = 0
        self._speech_end_s = 0.0
        self._paused = False

    @property
    def in_speech(self) -> bool:
        """True while an utterance is open."""
        return self._in_speech

    @property
    def voiced_ms(self) -> int:
        """Voiced audio in the open utterance."""
        return self._voiced_ms

    @property
    def silence_ms(self) -> int:
        """Silence since the last voiced audio of the open utterance."""
        return self._silence_ms if self._in_speech else 0

    @property
    def paused(self) -> bool:
        """The open utterance is in a pause long enough to have reported :class:`PauseBegan`."""
        return self._in_speech and self._paused

    def end_now(self) -> list[SegmentEvent]:
        """End the open utterance now (the caller knows the turn is complete)."""
        events: list[SegmentEvent] = []
        if self._in_speech:
            self._end(events, forced=False)
        return events

    @property
    def stream_time_s(self) -> float:
        """Seconds of audio fed so far."""
        return self._samples / SAMPLE_RATE_HZ

    def reset(self) -> None:
        """Forget any open utterance and the pre-roll (the stream position is kept)."""
        self._pending = b""
        self._preroll.clear()
        self._window.clear()
        self._reset_utterance()

    def skip(self, pcm: bytes) -> None:
        """Advance the stream clock over audio that is deliberately not listened to."""
        self._samples += len(pcm) // 2

    def feed(self, pcm: bytes) -> list[SegmentEvent]:
        """Feed 16 kHz PCM16 audio of any length; return what happened."""
        data = self._pending + pcm
        events: list[SegmentEvent] = []
        end = len(data) - len(data) % self._frame_bytes
        for offset in range(0, end, self._frame_bytes):
            frame = data[offset : offset + self._frame_bytes]
            self._samples += self._frame_bytes // 2
            self._frame(frame, self._vad.is_speech(frame), events)
        self._pending = data[end:]
        return events

    def flush(self) -> list[SegmentEvent]:
        """End the stream: an open utterance ends now (or is dropped if too short)."""
        events: list[SegmentEvent] = []
        if self._in_speech:
            self._end(events, forced=False)
        self._pending = b""
        return events

    def _frame(self, frame: bytes, voiced: bool, events: list[SegmentEvent]) -> None:
        now_s = self.stream_time_s
        if not self._in_speech:
            self._preroll.append(frame)
            self._window.append(voiced)
            if sum(self._window) * self.frame_ms >= self.settings.speech_start_ms:
                self._begin(events)
            return
        self._frames.append(frame)
        if voiced:
            self._streak += 1
            self._voiced_ms += self.frame_ms
            if self._streak >= _RESUME_FRAMES or self._silence_ms < self.frame_ms * _RESUME_FRAMES:
                if self._paused:
                    events.append(SpeechResumed(now_s))
                    self._paused = False
                    self.end_of_turn_silence_ms = self.settings.end_of_turn_silence_ms
                self._silence_ms = 0
                self._last_voiced_frame = len(self._frames)
                self._speech_end_s = now_s
        else:
            self._streak = 0
            self._silence_ms += self.frame_ms
            if (
                not self._paused
                and self._silence_ms >= self.speculative_after_ms
                and self._voiced_ms >= self.settings.min_speech_ms
            ):
                self._paused = True
                events.append(PauseBegan(b"".join(self._frames), self._speech_end_s))
        duration_s = len(self._frames) * self.frame_ms / 1000
        if self._silence_ms >= self.end_of_turn_silence_ms:
            self._end(events, forced=False)
        elif duration_s >= self.settings.max_utterance_s:
            self._end(events, forced=True)

    def _begin(self, events: list[SegmentEvent]) -> None:
        frames = list(self._preroll)
        voiced = list(self._window)
        first_voiced = voiced.index(True)
        frames_since_first = len(voiced) - first_voiced
        start_s = self.stream_time_s - frames_since_first * self.frame_ms / 1000
        self._reset_utterance()
        self._in_speech = True
        self._frames = frames
        self._utterance_start_s = self.stream_time_s - len(frames) * self.frame_ms / 1000
        self._voiced_ms = sum(voiced) * self.frame_ms
        self._last_voiced_frame = len(frames)
        self._speech_end_s = self.stream_time_s
        self._preroll.clear()
        self._window.clear()
        events.append(SpeechBegan(start_s))

    def _end(self, events: list[SegmentEvent], *, forced: bool) -> None:
        if self._voiced_ms < self.settings.min_speech_ms:
            events.append(UtteranceDropped(self._voiced_ms))
        else:
            keep = min(
                len(self._frames), self._last_voiced_frame + _TRAILING_SILENCE_MS // self.frame_ms
            )
            events.append(
                UtteranceEnded(
                    audio=b"".join(self._frames[:keep]),
                    start_s=self._utterance_start_s,
                    speech_end_s=self._speech_end_s,
                    voiced_ms=self._voiced_ms,
                    forced=forced,
                )
            )
        self._reset_utterance()
