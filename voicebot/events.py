"""The one event vocabulary of a voice session.

A :class:`~voicebot.session.Session` turns audio into these events and hands each one to its
sink. Transports translate them to their own medium (speaker, websocket frames, terminal lines).
Every event of a reply carries the ``turn_id`` of the user utterance it answers, so stale output
of an interrupted turn can be recognised and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "AudioOut",
    "ErrorEvent",
    "Event",
    "FactsChanged",
    "Interrupted",
    "Metrics",
    "ReplyDone",
    "ReplyText",
    "SessionState",
    "SpeechStarted",
    "SpeechStopped",
    "StateChanged",
    "TimerCancelled",
    "TimerDismissed",
    "TimerEvent",
    "TimerFinished",
    "TimerStarted",
    "Transcript",
    "WakeWordDetected",
]


class SessionState(StrEnum):
    """What the assistant is doing, for indicators (LEDs, the browser badge, the terminal)."""

    IDLE = "idle"
    """Waiting for a wake word (daemon only)."""
    LISTENING = "listening"
    """Listening for the user's speech."""
    THINKING = "thinking"
    """Transcribing and generating a reply."""
    SPEAKING = "speaking"
    """Playing the reply."""


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The user started speaking."""

    turn_id: int
    """The turn this speech will become."""
    stream_time_s: float
    """Position in the input stream (seconds of audio since the session began)."""


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """The user's utterance ended (end-of-turn confirmed)."""

    turn_id: int
    """The turn this utterance becomes."""
    stream_time_s: float
    """Position of the end of speech in the input stream."""
    duration_s: float
    """Length of the utterance audio, pre-roll included."""


@dataclass(frozen=True, slots=True)
class Transcript:
    """What the user said."""

    turn_id: int
    """The turn it starts."""
    text: str
    """The transcript (may be empty when nothing intelligible was said)."""
    final: bool = True
    """True for the final transcript of the turn."""


@dataclass(frozen=True, slots=True)
class ReplyText:
    """The next speakable piece of the assistant's reply, as it is about to be spoken."""

    turn_id: int
    """The turn it answers."""
    text: str
    """The piece (a clause or sentence)."""


@dataclass(frozen=True, slots=True)
class AudioOut:
    """Reply audio to play: PCM16 little-endian mono."""

    turn_id: int
    """The turn it answers."""
    pcm: bytes
    """The samples."""
    sample_rate_hz: int
    """Their rate."""
    text: str = ""
    """The text this audio speaks (set on the first chunk of a piece)."""


@dataclass(frozen=True, slots=True)
class ReplyDone:
    """The reply for a turn finished (fully generated and handed to the sink)."""

    turn_id: int
    """The turn it answered."""
    text: str
    """The whole reply text."""


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The user barged in: the reply stopped; only ``heard_text`` stays in the history."""

    turn_id: int
    """The turn whose reply was cut."""
    heard_text: str
    """The part of the reply that was actually played before the interruption."""


@dataclass(frozen=True, slots=True)
class Metrics:
    """Per-turn latencies, in milliseconds; a stage that did not happen is absent."""

    turn_id: int
    """The turn measured."""
    values_ms: dict[str, float] = field(default_factory=dict)
    """Stage name to milliseconds: ``end_of_turn``, ``stt``, ``llm_first_token``,
    ``first_piece``, ``tts_first_audio``, ``voice_to_voice`` (end of user speech to first reply
    audio handed to the sink)."""


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The session's state changed."""

    state: SessionState
    """The new state."""


@dataclass(frozen=True, slots=True)
class WakeWordDetected:
    """The wake word was heard (daemon only)."""

    name: str
    """Which wake word."""
    stream_time_s: float
    """Position in the input stream."""


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """Something failed; the session carries on."""

    code: str
    """A short machine-readable code (see :mod:`voicebot.errors`)."""
    message: str
    """One human-readable line."""
    turn_id: int | None = None
    """The turn it concerns, if any."""


@dataclass(frozen=True, slots=True)
class TimerStarted:
    """A timer of the conversation is running (just set, or still running when it opened)."""

    timer_id: str
    """The timer's id."""
    name: str
    """What the user called it ("pasta"); empty when unnamed."""
    seconds: float
    """Its whole length."""
    remaining_s: float
    """Time left when the event was made."""
    paused: bool = False
    """The timer is paused: ``remaining_s`` stays as it is until it is resumed."""


@dataclass(frozen=True, slots=True)
class TimerFinished:
    """A timer of the conversation ended: ring, and say so."""

    timer_id: str
    """The timer's id."""
    name: str
    """What the user called it; empty when unnamed."""
    seconds: float
    """Its whole length."""


@dataclass(frozen=True, slots=True)
class TimerCancelled:
    """A running timer was cancelled."""

    timer_id: str
    """The timer's id."""
    name: str
    """What the user called it; empty when unnamed."""
    seconds: float
    """Its whole length."""


@dataclass(frozen=True, slots=True)
class TimerDismissed:
    """A finished timer stopped ringing (the user said "stop")."""

    timer_id: str
    """The timer's id."""
    name: str
    """What the user called it; empty when unnamed."""
    seconds: float
    """Its whole length."""


@dataclass(frozen=True, slots=True)
class FactsChanged:
    """What the assistant remembers about the user changed (or a client asked to see it)."""

    facts: tuple[tuple[str, str, str], ...]
    """(key, value, how it is said back: "you live in Lyon"), oldest first."""


TimerEvent = TimerStarted | TimerFinished | TimerCancelled | TimerDismissed
"""What a :class:`~voicebot.skills.TimerService` tells the sessions of a conversation."""


Event = (
    SpeechStarted
    | SpeechStopped
    | Transcript
    | ReplyText
    | AudioOut
    | ReplyDone
    | Interrupted
    | Metrics
    | StateChanged
    | WakeWordDetected
    | ErrorEvent
    | TimerStarted
    | TimerFinished
    | TimerCancelled
    | TimerDismissed
    | FactsChanged
)
"""Any session event."""
