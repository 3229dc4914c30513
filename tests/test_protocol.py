"""The wire protocol, sans I/O: parsing client frames and encoding events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from voicebot.errors import ProtocolError
from voicebot.events import (
    AudioOut,
    ErrorEvent,
    Interrupted,
    Metrics,
    ReplyDone,
    ReplyText,
    SessionState,
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
from voicebot.protocol import (
    PROTOCOL_VERSION,
    InterruptMessage,
    StartMessage,
    StopMessage,
    TextMessage,
    encode_event,
    parse_text_frame,
    ready_frame,
)


def test_start_round_trip_with_every_field() -> None:
    frame = json.dumps(
        {
            "type": "start",
            "sample_rate": 44100,
            "conversation_id": "abc",
            "profile": "pirate",
            "token": "s3cret",
            "output_sample_rate": 16000,
            "barge_in": False,
            "greet": True,
        }
    )
    assert parse_text_frame(frame) == StartMessage(
        sample_rate_hz=44100,
        conversation_id="abc",
        profile="pirate",
        token="s3cret",
        output_sample_rate_hz=16000,
        barge_in=False,
        greet=True,
    )


def test_start_defaults() -> None:
    assert parse_text_frame('{"type":"start","sample_rate":16000}') == StartMessage(16000)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('"start"', "bad_json"),
        ('{"type": "dance"}', "unknown_type"),
        ("{}", "unknown_type"),
        ('{"type": "start"}', "bad_rate"),
        ('{"type": "start", "sample_rate": 7999}', "bad_rate"),
        ('{"type": "start", "sample_rate": 96000}', "bad_rate"),
        ('{"type": "start", "sample_rate": "16000"}', "bad_rate"),
        ('{"type": "start", "sample_rate": 16000.5}', "bad_rate"),
        ('{"type": "start", "sample_rate": 16000, "output_sample_rate": 100}', "bad_rate"),
        ('{"type": "start", "sample_rate": 16000, "token": 5}', "bad_message"),
        ('{"type": "start", "sample_rate": 16000, "barge_in": "yes"}', "bad_message"),
        ('{"type": "start", "sample_rate": 16000, "conversation_id": 7}', "bad_message"),
        ('{"type": "text"}', "bad_message"),
        ('{"type": "text", "text": "   "}', "bad_message"),
        ('{"type": "text", "text": "' + "x" * 2001 + '"}', "bad_message"),
        ("[" * 100000, "bad_json"),
        ('{"type": "start", "sample_rate": ' + "9" * 5000 + "}", "bad_json"),
        ('{"n": ' + "1" * 4301 + "}", "bad_json"),
    ],
)
def test_bad_frames_raise_with_a_code(frame: str, code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_text_frame(frame)
    assert caught.value.code == code


def test_other_client_messages() -> None:
    assert parse_text_frame('{"type":"text","text":"hi there"}') == TextMessage("hi there")
    assert parse_text_frame('{"type":"interrupt"}') == InterruptMessage()
    assert parse_text_frame('{"type":"stop"}') == StopMessage()


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (SpeechStarted(3, 1.5), {"type": "speech_started", "turn_id": 3}),
        (SpeechStopped(3, 2.5, 1.0), {"type": "speech_stopped", "turn_id": 3}),
        (
            Transcript(3, "héllo", True),
            {"type": "transcript", "turn_id": 3, "text": "héllo", "final": True},
        ),
        (ReplyText(3, "Hi."), {"type": "reply_text", "turn_id": 3, "text": "Hi."}),
        (ReplyDone(3, "Hi. Bye."), {"type": "reply_done", "turn_id": 3, "text": "Hi. Bye."}),
        (Interrupted(3, "Hi"), {"type": "interrupted", "turn_id": 3, "heard_text": "Hi"}),
        (Metrics(3, {"stt": 12.5}), {"type": "metrics", "turn_id": 3, "ms": {"stt": 12.5}}),
        (StateChanged(SessionState.SPEAKING), {"type": "state", "state": "speaking"}),
        (WakeWordDetected("okay_nabu", 3.5), {"type": "wake", "name": "okay_nabu"}),
        (
            ErrorEvent("engine", "boom", 3),
            {"type": "error", "code": "engine", "message": "boom", "turn_id": 3},
        ),
        (ErrorEvent("engine", "boom"), {"type": "error", "code": "engine", "message": "boom"}),
        (
            TimerStarted("a1", "pasta", 30.0, 29.1234),
            {
                "type": "timer_started",
                "id": "a1",
                "name": "pasta",
                "seconds": 30.0,
                "remaining_s": 29.123,
                "paused": False,
            },
        ),
        (
            TimerFinished("a1", "pasta", 30.0),
            {"type": "timer_finished", "id": "a1", "name": "pasta", "seconds": 30.0},
        ),
        (
            TimerCancelled("b2", "", 600.0),
            {"type": "timer_cancelled", "id": "b2", "name": "", "seconds": 600.0},
        ),
        (
            TimerDismissed("a1", "pasta", 30.0),
            {"type": "timer_dismissed", "id": "a1", "name": "pasta", "seconds": 30.0},
        ),
    ],
)
def test_events_encode_to_documented_frames(event: object, expected: dict[str, Any]) -> None:
    frame = encode_event(event)  # type: ignore[arg-type]
    assert isinstance(frame, str)
    assert json.loads(frame) == expected


def test_audio_is_a_binary_frame_of_the_raw_pcm() -> None:
    assert encode_event(AudioOut(1, b"\x01\x02\x03\x04", 22050)) == b"\x01\x02\x03\x04"


def test_ready_frame() -> None:
    frame = json.loads(
        ready_frame(
            conversation_id="c1",
            sample_rate_hz=22050,
            profile="default",
            display_name="Nova",
            profiles=["default"],
            history=[{"role": "user", "text": "hi"}],
        )
    )
    assert frame == {
        "type": "ready",
        "protocol": PROTOCOL_VERSION,
        "conversation_id": "c1",
        "sample_rate": 22050,
        "profile": "default",
        "display_name": "Nova",
        "profiles": ["default"],
        "history": [{"role": "user", "text": "hi"}],
    }
