"""Listening again for a skill: a transcript that sounds like a skill request but matches no
template is decoded a second time with the skills' words as Whisper's prompt.

Whisper takes a prompt as text said just before the audio, so the words in it are heard
more readily ("Cancel all timers." is heard as "Cancel Alzheimer's" without it). Given on
every utterance, the prompt costs ordinary speech: on the 160 questions and statements of
the speech recognition benchmark (``voicebot bench --stt-accuracy``), spoken noise-free by
Piper and espeak-ng, the word error rate went from 0.072 to 0.073 and the 95th percentile
time from 194 to 424 ms. So the first decoding is always
the plain one, and the prompted one is kept only when a skill then understands it: ordinary
speech is transcribed as before, and only an utterance with a skill's word in it that no
template matched (a few in a hundred chat questions) pays a second decoding.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol

from ..engines.base import Transcription
from .router import SkillRouter, normalize

__all__ = ["SKILL_PROMPT", "SkillListeningStt"]

_LOGGER = logging.getLogger(__name__)

SKILL_PROMPT = (
    "Set a timer for ten minutes. What time is it? What is nine times eight? Cancel all timers."
)
"""The second decoding's prompt: one request of each kind, in the words people use (chosen on
the development phrasings: number words, not digits, heard the most of them right)."""

_CUE = re.compile(
    r"\b(?:timers?|time|minutes?|seconds?|hours?|plus|minus|times|divided|percent|squared"
    r"|root|power|cancel|stop|repeat|again|date|day|today|mind|forget)\b"
)
"""Words of the skills: a transcript without one is not decoded again."""


class PromptableStt(Protocol):
    """A speech recogniser that takes a prompt (:class:`~voicebot.engines.stt.WhisperStt`)."""

    def transcribe(self, pcm: bytes, *, prompt: str = "") -> Transcription:
        """Transcribe 16 kHz PCM16 mono audio, with ``prompt`` as the text said before it."""
        ...


class SkillListeningStt:
    """Wraps a Whisper recogniser: transcribes as it does, and decodes again with
    :data:`SKILL_PROMPT` an utterance that has a skill's word but matches no template,
    keeping the second transcript only when a skill understands it.

    Everything else (``parallel_calls``, ``fit_window``, ``cancel``...) is the wrapped
    recogniser's.
    """

    stt: PromptableStt
    """The wrapped recogniser."""
    router: SkillRouter
    """Tells whether a transcript is a skill request."""
    prompt: str
    """The second decoding's prompt."""

    def __init__(
        self, stt: PromptableStt, router: SkillRouter, *, prompt: str = SKILL_PROMPT
    ) -> None:
        """Wrap ``stt``.

        Args:
            stt: The recogniser (its ``transcribe`` takes ``prompt``).
            router: Tells whether a transcript is a skill request (matching only).
            prompt: The second decoding's prompt.
        """
        object.__setattr__(self, "stt", stt)
        object.__setattr__(self, "router", router)
        object.__setattr__(self, "prompt", prompt)

    def transcribe(self, pcm: bytes) -> Transcription:
        """Transcribe 16 kHz PCM16 mono audio, listening again for a skill when needed."""
        first = self.stt.transcribe(pcm)
        words = normalize(first.text)
        if not words or not _CUE.search(words) or self.router.match(first.text) is not None:
            return first
        second = self.stt.transcribe(pcm, prompt=self.prompt)
        if second.text and self.router.match(second.text) is not None:
            _LOGGER.debug("heard %r again as %r, a skill request", first.text, second.text)
            return second
        return first

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stt, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.stt, name, value)
