"""The engine Protocols: the seams between voicebot and its models.

Engines are synchronous and know nothing of asyncio. The session calls them through one
worker thread per model (:class:`voicebot.workers.ModelWorker`), so a model is never entered
twice at once and the event loop never blocks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypedDict, runtime_checkable

__all__ = [
    "ChatModel",
    "TurnDetector",
    "Message",
    "SpeechToText",
    "TextToSpeech",
    "Transcription",
    "VoiceActivityDetector",
    "WakeWordDetector",
]


class Message(TypedDict):
    """A chat message in the format of Hugging Face chat templates."""

    role: str
    """``system``, ``user`` or ``assistant``."""
    content: str
    """The text."""


@dataclass(frozen=True, slots=True)
class Transcription:
    """What speech-to-text heard."""

    text: str
    """The transcript; empty when nothing intelligible was said."""
    language: str = ""
    """Detected or configured language code."""
    audio_s: float = 0.0
    """Length of the audio transcribed."""
    no_speech_prob: float = 0.0
    """The model's probability that the audio held no speech (highest over segments)."""


@runtime_checkable
class VoiceActivityDetector(Protocol):
    """Decides whether a short frame of 16 kHz PCM16 audio is speech."""

    frame_ms: int
    """Frame length the detector takes."""

    def is_speech(self, frame: bytes) -> bool:
        """True when the frame (exactly ``frame_ms`` of 16 kHz PCM16) holds speech."""
        ...


@runtime_checkable
class SpeechToText(Protocol):
    """Transcribes a whole utterance."""

    def transcribe(self, pcm: bytes) -> Transcription:
        """Transcribe 16 kHz PCM16 mono audio."""
        ...


@runtime_checkable
class ChatModel(Protocol):
    """Writes the assistant's reply, token by token."""

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Number of prompt tokens these messages take with the chat template."""
        ...

    def stream(self, messages: Sequence[Message], cancel: threading.Event) -> Iterator[str]:
        """Yield the reply as text fragments; stop soon after ``cancel`` is set."""
        ...


@runtime_checkable
class TurnDetector(Protocol):
    """A chat model that can also judge whether the user has finished their turn.

    The session's end-of-turn decision asks it while the user is silent: given the
    conversation so far, its last message the user's (possibly unfinished) words, how likely
    is it that the user is done talking? A chat model answers that for free: it is the
    probability it gives its own end-of-message token right after those words (the method of
    LiveKit's turn detector, which is a fine-tuned SmolLM2-135M).
    """

    def end_of_turn_probability(self, messages: Sequence[Message]) -> float:
        """Probability (0-1) that the last message, the user's, is a finished turn."""
        ...


@runtime_checkable
class TextToSpeech(Protocol):
    """Speaks text."""

    sample_rate_hz: int
    """Rate of the PCM it yields."""

    def synthesize(
        self,
        text: str,
        cancel: threading.Event | None = None,
        *,
        speaking_rate: float | None = None,
    ) -> Iterator[bytes]:
        """Yield PCM16 mono audio for ``text``; stop between chunks once ``cancel`` is set."""
        ...


@runtime_checkable
class WakeWordDetector(Protocol):
    """Listens for a wake word in 16 kHz PCM16 audio."""

    name: str
    """The wake word's id (``okay_nabu``)."""

    def process(self, pcm: bytes) -> bool:
        """Feed audio; True when the wake word was just heard."""
        ...

    def reset(self) -> None:
        """Forget the audio seen so far."""
        ...
