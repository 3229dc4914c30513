"""The websocket wire protocol, version 1: parsing client frames and encoding events.

Sans-I/O: nothing here touches a socket. ``docs/protocol.md`` is the reference.

Client to server: a text frame ``{"type": "start", "sample_rate": 16000, ...}`` first, then
binary frames of PCM16 little-endian mono audio at that rate, and text frames ``text``,
``interrupt`` and ``stop``. Server to client: text frames, one per event, and binary frames of
reply audio at the rate announced in ``ready``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .audio import check_sample_rate
from .errors import AudioFormatError, ProtocolError
from .events import (
    AudioOut,
    ErrorEvent,
    Event,
    FactsChanged,
    Interrupted,
    Metrics,
    ReplyDone,
    ReplyText,
    SpeechStarted,
    SpeechStopped,
    StateChanged,
    TimerCancelled,
    TimerDismissed,
    TimerFinished,
    TimerStarted,
    Transcript,
    WakeWordDetected,
)

__all__ = [
    "PROTOCOL_VERSION",
    "ClientMessage",
    "FactsMessage",
    "FeedbackMessage",
    "ForgetFactMessage",
    "InterruptMessage",
    "StartMessage",
    "StopMessage",
    "TextMessage",
    "encode_event",
    "error_frame",
    "feedback_frame",
    "parse_text_frame",
    "ready_frame",
]

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change."""

_MAX_TEXT_CHARS = 2000


@dataclass(frozen=True, slots=True)
class StartMessage:
    """Opens a session."""

    sample_rate_hz: int
    """Rate of the audio the client will send."""
    conversation_id: str | None = None
    """Resume this conversation."""
    profile: str | None = None
    """Bot profile."""
    token: str = ""
    """The server's shared secret, when it has one."""
    output_sample_rate_hz: int | None = None
    """Rate the client wants reply audio at (default: the voice's own)."""
    barge_in: bool = True
    """Let user speech interrupt replies (clients without echo cancellation turn it off)."""
    greet: bool = False
    """Speak the profile's greeting when a new conversation starts."""


@dataclass(frozen=True, slots=True)
class TextMessage:
    """A typed user message."""

    text: str
    """What the user typed."""


@dataclass(frozen=True, slots=True)
class InterruptMessage:
    """The user pressed stop: cut the current reply."""


@dataclass(frozen=True, slots=True)
class StopMessage:
    """End the session cleanly."""


@dataclass(frozen=True, slots=True)
class FactsMessage:
    """The client asks what the assistant remembers about the user (answered by ``facts``)."""


@dataclass(frozen=True, slots=True)
class ForgetFactMessage:
    """The client deletes a remembered fact (answered by ``facts``)."""

    key: str | None
    """The fact's key, as the ``facts`` frame gives it; ``None`` forgets them all."""


@dataclass(frozen=True, slots=True)
class FeedbackMessage:
    """The user rates a reply (answered by ``feedback``)."""

    rating: str
    """``good`` or ``bad``."""
    correction: str = ""
    """What the reply should have said ("" for none)."""
    turn_id: int | None = None
    """The reply's ``turn_id``; ``None`` for the last reply."""


ClientMessage = (
    StartMessage
    | TextMessage
    | InterruptMessage
    | StopMessage
    | FactsMessage
    | ForgetFactMessage
    | FeedbackMessage
)
"""Anything a client sends in a text frame."""


def _optional_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 200:
        raise ProtocolError(f"{key!r} must be a string")
    return value


def parse_text_frame(frame: str) -> ClientMessage:
    """Parse a client text frame.

    Raises:
        ProtocolError: invalid JSON, not an object, unknown type, or bad fields; its
            ``code`` attribute is what the error event carries.
    """
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError):
        # ValueError, not only JSONDecodeError: valid JSON can still be refused, e.g. an
        # integer of more digits than ``sys.get_int_max_str_digits()`` allows.
        raise _error("bad_json", "text frames must be JSON objects") from None
    if not isinstance(data, dict):
        raise _error("bad_json", "text frames must be JSON objects")
    kind = data.get("type")
    if kind == "start":
        try:
            rate = check_sample_rate(data.get("sample_rate"))
            out_rate = data.get("output_sample_rate")
            if out_rate is not None:
                out_rate = check_sample_rate(out_rate)
        except AudioFormatError as error:
            raise _error("bad_rate", str(error)) from None
        token = data.get("token", "")
        if not isinstance(token, str):
            raise _error("bad_message", "'token' must be a string")
        barge_in = data.get("barge_in", True)
        greet = data.get("greet", False)
        if not isinstance(barge_in, bool) or not isinstance(greet, bool):
            raise _error("bad_message", "'barge_in' and 'greet' must be booleans")
        try:
            return StartMessage(
                sample_rate_hz=rate,
                conversation_id=_optional_str(data, "conversation_id"),
                profile=_optional_str(data, "profile"),
                token=token,
                output_sample_rate_hz=out_rate,
                barge_in=barge_in,
                greet=greet,
            )
        except ProtocolError as error:
            raise _error("bad_message", str(error)) from None
    if kind == "text":
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _error("bad_message", "'text' must be a non-empty string")
        if len(text) > _MAX_TEXT_CHARS:
            raise _error("bad_message", f"'text' is limited to {_MAX_TEXT_CHARS} characters")
        return TextMessage(text)
    if kind == "interrupt":
        return InterruptMessage()
    if kind == "stop":
        return StopMessage()
    if kind == "facts":
        return FactsMessage()
    if kind == "forget_fact":
        if data.get("all") is True:
            return ForgetFactMessage(None)
        key = data.get("key")
        if not isinstance(key, str) or not key or len(key) > 200:
            raise _error("bad_message", "'key' must be a fact's key (or 'all': true)")
        return ForgetFactMessage(key)
    if kind == "feedback":
        return _parse_feedback(data)
    raise _error("unknown_type", f"unknown message type {kind!r}")


def _parse_feedback(data: dict[str, Any]) -> FeedbackMessage:
    rating = data.get("rating")
    if rating not in ("good", "bad"):
        raise _error("bad_message", "'rating' must be 'good' or 'bad'")
    correction = data.get("correction", "")
    if correction is None:
        correction = ""
    if not isinstance(correction, str) or len(correction) > _MAX_TEXT_CHARS:
        raise _error(
            "bad_message", f"'correction' must be a string of at most {_MAX_TEXT_CHARS} characters"
        )
    if correction.strip() and rating != "bad":
        raise _error("bad_message", "only a 'bad' rating takes a 'correction'")
    turn_id = data.get("turn_id")
    if turn_id is not None and (
        isinstance(turn_id, bool) or not isinstance(turn_id, int) or not 0 <= turn_id < 2**31
    ):
        raise _error("bad_message", "'turn_id' must be a reply's turn id")
    return FeedbackMessage(str(rating), correction.strip(), turn_id)


def _error(code: str, message: str) -> ProtocolError:
    error = ProtocolError(message)
    error.code = code
    return error


def _frame(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def ready_frame(
    *,
    conversation_id: str,
    sample_rate_hz: int,
    profile: str,
    display_name: str,
    profiles: list[str],
    history: list[dict[str, Any]],
) -> str:
    """The server's answer to ``start``."""
    return _frame(
        {
            "type": "ready",
            "protocol": PROTOCOL_VERSION,
            "conversation_id": conversation_id,
            "sample_rate": sample_rate_hz,
            "profile": profile,
            "display_name": display_name,
            "profiles": profiles,
            "history": history,
        }
    )


def feedback_frame(rating: str, turn_id: int | None, *, stored: bool) -> str:
    """The answer to ``feedback``: whether the rating was stored with its reply."""
    return _frame({"type": "feedback", "turn_id": turn_id, "rating": rating, "stored": stored})


def error_frame(code: str, message: str, turn_id: int | None = None) -> str:
    """An ``error`` frame."""
    data: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if turn_id is not None:
        data["turn_id"] = turn_id
    return _frame(data)


def encode_event(event: Event) -> str | bytes | None:
    """A session event as a frame (``bytes`` for audio); ``None`` for events not sent."""
    if isinstance(event, AudioOut):
        return event.pcm
    if isinstance(event, SpeechStarted):
        return _frame({"type": "speech_started", "turn_id": event.turn_id})
    if isinstance(event, SpeechStopped):
        return _frame({"type": "speech_stopped", "turn_id": event.turn_id})
    if isinstance(event, Transcript):
        return _frame(
            {
                "type": "transcript",
                "turn_id": event.turn_id,
                "text": event.text,
                "final": event.final,
            }
        )
    if isinstance(event, ReplyText):
        return _frame({"type": "reply_text", "turn_id": event.turn_id, "text": event.text})
    if isinstance(event, ReplyDone):
        return _frame({"type": "reply_done", "turn_id": event.turn_id, "text": event.text})
    if isinstance(event, Interrupted):
        return _frame(
            {"type": "interrupted", "turn_id": event.turn_id, "heard_text": event.heard_text}
        )
    if isinstance(event, Metrics):
        return _frame({"type": "metrics", "turn_id": event.turn_id, "ms": event.values_ms})
    if isinstance(event, StateChanged):
        return _frame({"type": "state", "state": event.state.value})
    if isinstance(event, WakeWordDetected):
        return _frame({"type": "wake", "name": event.name})
    if isinstance(event, ErrorEvent):
        return error_frame(event.code, event.message, event.turn_id)
    if isinstance(event, TimerStarted):
        return _frame(
            {
                "type": "timer_started",
                "id": event.timer_id,
                "name": event.name,
                "seconds": event.seconds,
                "remaining_s": round(event.remaining_s, 3),
                "paused": event.paused,
            }
        )
    if isinstance(event, TimerFinished | TimerCancelled | TimerDismissed):
        kind = {
            TimerFinished: "timer_finished",
            TimerCancelled: "timer_cancelled",
            TimerDismissed: "timer_dismissed",
        }[type(event)]
        return _frame(
            {"type": kind, "id": event.timer_id, "name": event.name, "seconds": event.seconds}
        )
    if isinstance(event, FactsChanged):
        return _frame(
            {
                "type": "facts",
                "facts": [
                    {"key": key, "value": value, "text": text} for key, value, text in event.facts
                ],
            }
        )
    return None
