"""The voice loop on the real models over recordings: turns, dialogue state, barge-in."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from voicebot.audio import float_to_pcm16, read_audio, silence, write_wav
from voicebot.config import Settings
from voicebot.engines import Engines
from voicebot.events import Interrupted, Metrics, ReplyDone, ReplyText, Transcript
from voicebot.session import Session
from voicebot.store import Store
from voicebot.transports.file import feed_recording

from .conftest import REPO, Recorder, Speech

pytestmark = pytest.mark.models

RATE = 16000


def three_questions(speech: Speech) -> bytes:
    gap = silence(8.0, RATE)
    return (
        silence(0.5, RATE)
        + speech.piper("My name is Ada. What is the capital of France?", rate=0.9)
        + gap
        + speech.piper("What is my name?", rate=0.9)
        + gap
        + speech.piper("How many legs does a spider have?", rate=0.9)
        + gap
    )


async def test_three_questions_give_three_turns_with_dialogue_state(
    real_engines: Engines, speech: Speech, settings: Settings
) -> None:
    recorder = Recorder()
    store = Store(settings.database_path())
    session = Session(real_engines, settings, sink=recorder, store=store)
    await session.start()
    await feed_recording(session, three_questions(speech), RATE)
    await session.close()
    transcripts = [e.text for e in recorder.of(Transcript) if e.text]
    replies = [e.text for e in recorder.of(ReplyDone)]
    assert len(transcripts) == 3 and len(replies) == 3, (transcripts, replies)
    assert "france" in transcripts[0].lower() and "name" in transcripts[1].lower()
    assert replies[0].strip()
    assert "ada" in replies[1].lower()  # the answer shows the dialogue state
    assert "eight" in replies[2].lower() or "8" in replies[2]
    assert not recorder.of(Interrupted)
    stored = store.turns(session.conversation_id)
    assert [t.role for t in stored] == ["user", "assistant"] * 3
    latencies = [m.values_ms["voice_to_voice"] for m in recorder.of(Metrics)]
    assert len(latencies) == 3 and all(v > 0 for v in latencies)


async def test_talking_over_the_reply_interrupts_it(
    real_engines: Engines, speech: Speech, settings: Settings
) -> None:
    long = replace(settings, llm=replace(settings.llm, max_sentences=0, max_new_tokens=60))
    recorder = Recorder()
    store = Store(settings.database_path())
    session = Session(real_engines, long, sink=recorder, store=store, barge_in=True)
    await session.start()
    question = speech.piper("Tell me a long story about a dragon who lived in a castle.")
    interruption = speech.espeak("Stop. That is enough, thank you.")
    recording = (
        silence(0.5, RATE) + question + silence(3.5, RATE) + interruption + silence(8.0, RATE)
    )
    await feed_recording(session, recording, RATE)
    await session.close()
    interrupted = recorder.of(Interrupted)
    assert interrupted, [type(e).__name__ for e in recorder.events]
    first_reply = next(t for t in store.turns(session.conversation_id) if t.role == "assistant")
    assert first_reply.interrupted
    assert first_reply.text == interrupted[0].heard_text
    # What was heard is the start of what the bot had written, and less than all of it.
    written = " ".join(e.text for e in recorder.of(ReplyText) if e.turn_id == 1)
    heard = first_reply.text.split()
    assert heard and written.split()[: len(heard)] == heard
    assert len(heard) < len(written.split())
    # The interruption itself became the next turn.
    later = [e.text.lower() for e in recorder.of(Transcript)][1:]
    assert any(w in t for t in later for w in ("stop", "enough", "thank")), later


@pytest.mark.parametrize("kind", ["silence", "noise"])
async def test_silence_or_noise_gives_no_turn(
    real_engines: Engines, settings: Settings, kind: str
) -> None:
    rng = np.random.default_rng(3)
    if kind == "silence":
        recording = silence(6.0, RATE)
    else:
        t = np.arange(6 * RATE) / RATE
        hum = 0.15 * np.sin(2 * np.pi * 100 * t) + rng.normal(0, 0.05, t.size)
        recording = float_to_pcm16(hum.astype(np.float32))
    recorder = Recorder()
    store = Store(settings.database_path())
    session = Session(real_engines, settings, sink=recorder, store=store)
    await session.start()
    await feed_recording(session, recording, RATE, realtime=False)
    await session.close()
    assert not recorder.of(ReplyDone)
    assert store.turns(session.conversation_id) == []


def chat_on_file(
    recording: bytes, tmp_path: Path, **environ: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run `voicebot chat --input IN.wav --output OUT.wav` on a recording."""
    wav_in, wav_out = tmp_path / "in.wav", tmp_path / "out.wav"
    write_wav(wav_in, recording, RATE)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicebot",
            "chat",
            "--input",
            str(wav_in),
            "--output",
            str(wav_out),
        ],
        env={
            **os.environ,
            "VOICEBOT_MODELS": str(REPO / "models"),
            "VOICEBOT_DATA_DIR": str(tmp_path),
            **environ,
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result, wav_out


def test_chat_file_mode_writes_time_aligned_replies(speech: Speech, tmp_path: Path) -> None:
    question = speech.piper("What is the capital of France?")
    recording = silence(1.0, RATE) + question + silence(8.0, RATE)
    result, wav_out = chat_on_file(recording, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "you: What is the capital of France?" in result.stdout
    assert "voice_to_voice" in result.stderr
    out = read_audio(wav_out, RATE)
    samples = np.frombuffer(out, dtype="<i2").astype(np.float32) / 32768
    assert len(samples) >= len(recording) // 2 - RATE  # at least as long as the input
    speech_end_s = (len(silence(1.0, RATE)) + len(question)) / 2 / RATE
    loud = np.flatnonzero(np.abs(samples) > 0.05)
    assert loud.size, "the reply is silent"
    first_s = loud[0] / RATE
    # The reply starts after the question ends (time-aligned), within a few seconds.
    assert speech_end_s < first_s < speech_end_s + 6.0
    heard = speech.engines.stt.transcribe(out[int(first_s * RATE) * 2 :]).text.lower()
    assert "paris" in heard


def test_chat_file_mode_barge_in_cuts_the_reply(speech: Speech, tmp_path: Path) -> None:
    # `voicebot chat --input` on a recording where the user talks over the reply.
    question = speech.piper("Tell me a long story about a dragon who lived in a castle.")
    interruption = speech.espeak("Okay that is enough thank you")
    lead = silence(0.5, RATE) + question + silence(3.5, RATE)
    recording = lead + interruption + silence(8.0, RATE)
    # A story long enough to talk over.
    result, wav_out = chat_on_file(recording, tmp_path, VOICEBOT_LLM_MAX_SENTENCES="0")
    assert result.returncode == 0, result.stderr
    assert "[interrupted; heard:" in result.stdout, result.stdout
    out = np.frombuffer(read_audio(wav_out, RATE), dtype="<i2").astype(np.float32) / 32768

    def loudness(start_s: float, end_s: float) -> float:
        part = out[int(start_s * RATE) : int(end_s * RATE)]
        return float(np.sqrt(np.mean(part**2))) if part.size else 0.0

    start_s = len(lead) / 2 / RATE
    talk_s = len(interruption) / 2 / RATE
    # The story was playing when the user cut in ...
    assert loudness(start_s - 1.5, start_s) > 0.01
    # ... and stopped within a moment: silence while the user is still talking.
    assert loudness(start_s + 0.8, start_s + talk_s) < 0.002
