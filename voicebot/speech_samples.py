"""Test speech made by the project itself: Piper (the bot's own voice) and espeak-ng.

The benchmark and the tests both speak through :class:`SpeechMaker`, so a recording is the same
on every run (Piper's random noise off, espeak-ng deterministic) and nothing is downloaded.
It also builds the end-of-turn recordings of the benchmark: sentences with a pause inside,
a user who goes on after a short silence, and complete sentences followed by silence.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import read_audio, resample, silence
from .engines.base import TextToSpeech

__all__ = [
    "COMPLETE",
    "GOES_ON",
    "INNER_PAUSE",
    "RATE_HZ",
    "Recording",
    "SpeechMaker",
    "join_with_pause",
    "longest_quiet_ms",
    "speech_end_s",
    "trim_silence",
    "turn_recordings",
]

RATE_HZ = 16000
"""Rate of every recording made here."""

DEFAULT_VOICE_ID = "piper-en_US-joe-medium"
"""The embedded Piper voice (the bot's own)."""

_FRAME_MS = 10
_QUIET_RATIO = 0.01  # a frame under 1 % of the loudest frame's RMS (-40 dB) is silence


class SpeechMaker:
    """Speaks text as 16 kHz PCM16 with a Piper voice and, when installed, espeak-ng."""

    def __init__(self, tts: TextToSpeech, *, espeak: str | None = None) -> None:
        """Wrap a text-to-speech engine.

        Args:
            tts: The Piper voice; :meth:`load` builds the deterministic one.
            espeak: Path of the espeak-ng program (default: found on ``PATH``, if any).
        """
        self.tts = tts
        """The Piper voice."""
        self.espeak_path = espeak or shutil.which("espeak-ng")
        """espeak-ng, or ``None`` when it is not installed."""

    @classmethod
    def load(cls, models_dir: str | Path, voice_id: str = DEFAULT_VOICE_ID) -> SpeechMaker:
        """The embedded Piper voice with its random noise off, so every run hears the same audio.

        Args:
            models_dir: Where the models are pulled.
            voice_id: Catalog id of the Piper voice.

        Raises:
            ModelError: the voice is not pulled or cannot be loaded.
        """
        from .engines.tts import PiperTts
        from .models import ModelManager

        path = ModelManager(root=Path(models_dir), progress=False).path(voice_id)
        return cls(PiperTts(path, noise_scale=0.0, noise_w_scale=0.0))

    def piper(self, text: str, *, rate: float = 1.0) -> bytes:
        """16 kHz PCM16 of Piper saying ``text`` at a speaking rate (1.2 is 20 % faster)."""
        pcm = b"".join(self.tts.synthesize(text, speaking_rate=rate))
        return resample(pcm, self.tts.sample_rate_hz, RATE_HZ)

    def espeak(self, text: str, *, voice: str = "en-us", words_per_minute: int = 150) -> bytes:
        """16 kHz PCM16 of espeak-ng saying ``text`` (a voice unlike the bot's).

        Raises:
            RuntimeError: espeak-ng is not installed.
        """
        if self.espeak_path is None:
            raise RuntimeError("espeak-ng is missing: run scripts/install-system-deps.sh")
        with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
            subprocess.run(
                [self.espeak_path, "-v", voice, "-s", str(words_per_minute), "-w", tmp.name, text],
                check=True,
                capture_output=True,
            )
            return read_audio(tmp.name, RATE_HZ)

    def voices(
        self, piper_rates: Sequence[float] = (0.85, 1.15)
    ) -> list[tuple[str, Callable[[str], bytes]]]:
        """Named speakers: Piper at each rate, then two espeak-ng voices when installed."""
        voices: list[tuple[str, Callable[[str], bytes]]] = []
        for rate in piper_rates:

            def piper(text: str, rate: float = rate) -> bytes:
                return self.piper(text, rate=rate)

            voices.append((f"piper x{rate}", piper))
        if self.espeak_path:
            for voice in ("en-us", "en-gb+f3"):

                def speak(text: str, voice: str = voice) -> bytes:
                    return self.espeak(text, voice=voice, words_per_minute=150)

                voices.append((f"espeak {voice}", speak))
        return voices


# ----------------------------------------------------------------------------- silence


def _frame_rms(pcm: bytes, sample_rate_hz: int) -> tuple[np.ndarray, int]:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    frame = sample_rate_hz * _FRAME_MS // 1000
    count = len(samples) // frame
    rms = np.sqrt((samples[: count * frame].reshape(count, frame) ** 2).mean(axis=1))
    return rms, frame


def _loud(rms: np.ndarray) -> np.ndarray:
    if len(rms) == 0 or rms.max() <= 0:
        return np.zeros(len(rms), dtype=bool)
    return np.asarray(rms >= rms.max() * _QUIET_RATIO)


def speech_end_s(pcm: bytes, sample_rate_hz: int = RATE_HZ) -> float:
    """The end of the last 10 ms frame within 40 dB of the loudest one.

    Latencies are timed from there, so silence at the end of a clip never counts as speech
    (which would make the reply look faster than it is).
    """
    rms, frame = _frame_rms(pcm, sample_rate_hz)
    loud = np.flatnonzero(_loud(rms))
    if len(loud) == 0:
        return len(pcm) / 2 / sample_rate_hz
    return float(loud[-1] + 1) * frame / sample_rate_hz


def trim_silence(pcm: bytes, sample_rate_hz: int = RATE_HZ) -> bytes:
    """The speech without the quiet 10 ms frames before and after it."""
    rms, frame = _frame_rms(pcm, sample_rate_hz)
    loud = np.flatnonzero(_loud(rms))
    if len(loud) == 0:
        return b""
    return pcm[2 * frame * int(loud[0]) : 2 * frame * (int(loud[-1]) + 1)]


def longest_quiet_ms(pcm: bytes, sample_rate_hz: int = RATE_HZ) -> int:
    """The longest run of quiet 10 ms frames between the first and the last loud one."""
    rms, _ = _frame_rms(pcm, sample_rate_hz)
    loud = np.flatnonzero(_loud(rms))
    if len(loud) < 2:
        return 0
    return int(np.diff(loud).max() - 1) * _FRAME_MS


def join_with_pause(
    first: bytes, second: bytes, pause_ms: int, sample_rate_hz: int = RATE_HZ
) -> bytes:
    """Two pieces of speech, trimmed of their own silence, with exactly ``pause_ms`` between."""
    gap = silence(pause_ms / 1000, sample_rate_hz)
    return trim_silence(first, sample_rate_hz) + gap + trim_silence(second, sample_rate_hz)


# ----------------------------------------------------------------------------- recordings

INNER_PAUSE: list[tuple[str, str]] = [
    ("I would like to know", "what the weather is like in Paris."),
    ("Can you tell me", "how long it takes to boil an egg?"),
    ("My sister asked me", "whether the museum opens on Sundays."),
    ("What is the best way", "to keep basil fresh in the kitchen?"),
    ("I was wondering if", "you could recommend a good book about history."),
    ("How many minutes", "should I leave the bread in the oven?"),
    ("Please remind me", "to call the dentist tomorrow morning."),
    ("Could you explain", "why the sky turns red at sunset?"),
    ("I need to find", "a train from Boston to New York on Friday."),
    ("Tell me something", "interesting about octopuses."),
    ("What would happen if", "the moon suddenly disappeared?"),
    ("Is it true that", "cats sleep for most of the day?"),
    ("I am trying to decide", "between a bicycle and a scooter for my commute."),
    ("How do you say", "good morning in Japanese?"),
    ("Set a timer for", "twenty minutes please."),
    ("Which planet is", "the hottest in our solar system?"),
    ("My daughter wants to know", "how rainbows are made."),
    ("Can you help me", "write a short note to my neighbour?"),
    ("What time does", "the sun rise in London in December?"),
    ("I keep forgetting", "the difference between weather and climate."),
    ("Would you mind", "reading me a short poem about the sea?"),
    ("How far is it", "from the Earth to the nearest star?"),
    ("Before we go on", "what is the square root of one hundred and forty four?"),
    ("Give me a few ideas", "for a vegetarian lunch."),
    ("Who was the first person", "to walk on the moon?"),
    ("Why do leaves", "change colour in the autumn?"),
    ("I think I would like", "to learn how to play the guitar."),
    ("Do you know", "how to get a stain out of a white shirt?"),
    ("Let me think about", "what I want for dinner tonight."),
    ("Could you tell me", "the name of the tallest mountain in Africa?"),
]
"""Sentences cut in two by a pause where a speaker stops to think: one turn each."""

GOES_ON: list[tuple[str, str]] = [
    ("I need a new laptop.", "Something light that I can take on trips."),
    ("I am going to Rome next week.", "What should I pack for the weather?"),
    ("My phone battery dies quickly.", "Is there anything I can do about it?"),
    ("I want to bake a cake.", "But I have no eggs at home."),
    ("We are planning a picnic on Saturday.", "Will it rain in the afternoon?"),
    ("I started running last month.", "How often should I rest?"),
    ("My tomato plants look yellow.", "Do they need more water or less?"),
    ("I have a meeting at nine.", "Remind me to leave at half past eight."),
    ("I read a book about whales.", "How long can they hold their breath?"),
    ("The kitchen light is broken.", "How do I change the bulb safely?"),
    ("I like jazz music.", "Can you suggest a few albums to start with?"),
    ("My son has a cold.", "What can he drink to feel better?"),
    ("I finished my exams today.", "How should I celebrate?"),
    ("The car makes a strange noise.", "It happens when I turn left."),
    ("I am learning Spanish.", "What are some easy words to start with?"),
    ("It is my friend's birthday tomorrow.", "Give me an idea for a small gift."),
    ("I moved to a new city.", "How can I meet new people?"),
    ("The printer stopped working.", "It shows a blinking orange light."),
    ("I am cooking rice tonight.", "How much water do I need for two cups?"),
    ("I saw a bright light in the sky.", "Could it have been a planet?"),
]
"""A complete-sounding sentence, a short silence, then the user goes on."""

COMPLETE: list[str] = [
    "What is the capital of Canada?",
    "Turn off the lights in the living room.",
    "How many days are there in a leap year?",
    "Tell me a joke about computers.",
    "What is the boiling point of water in Fahrenheit?",
    "Who painted the Mona Lisa?",
    "Play some relaxing music.",
    "How do I make a cup of green tea?",
    "What is the largest ocean on Earth?",
    "Set an alarm for seven in the morning.",
    "Why is the ocean salty?",
    "What does a koala eat?",
    "How tall is the Eiffel Tower?",
    "Thank you, that was very helpful.",
    "What is the difference between a frog and a toad?",
    "Can you recommend a film for a rainy evening?",
    "How many players are on a football team?",
    "What language is spoken in Brazil?",
    "Explain photosynthesis in one sentence.",
    "Where do penguins live?",
    "Add milk and bread to my shopping list.",
    "What is seven times eight?",
    "How long does it take to fly from London to Tokyo?",
    "Good night.",
    "What causes thunder?",
    "Which is heavier, a kilogram of feathers or a kilogram of steel?",
    "Who invented the telephone?",
    "What should I wear for a job interview?",
    "How do bees make honey?",
    "Is a tomato a fruit or a vegetable?",
]
"""Complete turns, followed by silence."""

INNER_PAUSES_MS = (300, 400, 500, 600, 700, 800)
"""Pauses inside a sentence; each sentence is spoken with two of them (i and i + 3)."""
GOES_ON_PAUSES_MS = (300, 400, 500, 600)
"""Silences before the user goes on."""


@dataclass(frozen=True)
class Recording:
    """One end-of-turn test recording."""

    kind: str
    """``inner_pause``, ``goes_on`` or ``complete``."""
    name: str
    """Voice, pause and text, for the report."""
    text: str
    """What it says."""
    pcm: bytes
    """16 kHz PCM16, speech only (no silence before the first word or after the last)."""
    pause_ms: int = 0
    """The silence inside it (0: none)."""

    @property
    def speech_end_s(self) -> float:
        """Where its speech ends."""
        return speech_end_s(self.pcm)


def turn_recordings(
    maker: SpeechMaker,
    *,
    per_set: int | None = None,
    inner_pauses_ms: Sequence[int] = INNER_PAUSES_MS,
    goes_on_pauses_ms: Sequence[int] = GOES_ON_PAUSES_MS,
) -> list[Recording]:
    """The three sets of end-of-turn recordings, voices taken in turn.

    Args:
        maker: Speaks the text.
        per_set: Sentences taken from each set (``None``: all of them).
        inner_pauses_ms: Pause lengths inside sentences; sentence ``i`` is spoken with pause
            ``i`` and pause ``i + n // 2`` of the list (each once when it has one length).
        goes_on_pauses_ms: Silences before a user goes on, one per sentence in turn.
    """
    voices = maker.voices(piper_rates=(0.9, 1.1))
    out: list[Recording] = []
    count = len(inner_pauses_ms)
    for i, (first, second) in enumerate(INNER_PAUSE[:per_set]):
        name, speak = voices[i % len(voices)]
        head, tail = speak(first), speak(second)
        picks = {inner_pauses_ms[i % count], inner_pauses_ms[(i + count // 2) % count]}
        for pause_ms in sorted(picks):
            out.append(
                Recording(
                    "inner_pause",
                    f"{name}, {pause_ms} ms: {first} ... {second}",
                    f"{first} {second}",
                    join_with_pause(head, tail, pause_ms),
                    pause_ms,
                )
            )
    for i, (first, second) in enumerate(GOES_ON[:per_set]):
        name, speak = voices[i % len(voices)]
        pause_ms = goes_on_pauses_ms[i % len(goes_on_pauses_ms)]
        out.append(
            Recording(
                "goes_on",
                f"{name}, {pause_ms} ms: {first} ... {second}",
                f"{first} {second}",
                join_with_pause(speak(first), speak(second), pause_ms),
                pause_ms,
            )
        )
    for i, text in enumerate(COMPLETE[:per_set]):
        name, speak = voices[i % len(voices)]
        out.append(Recording("complete", f"{name}: {text}", text, trim_silence(speak(text))))
    return out
