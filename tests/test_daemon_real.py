"""The daemon on the real models and real wake word, over recordings the project makes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from voicebot.audio import silence, write_wav
from voicebot.config import DaemonSettings, Settings
from voicebot.engines import Engines
from voicebot.engines.wake import MicroWakeWordDetector
from voicebot.events import ReplyDone, Transcript, WakeWordDetected
from voicebot.session import Session
from voicebot.store import Store
from voicebot.transports.daemon import Daemon
from voicebot.transports.file import chunks_paced
from voicebot.transports.satellite import RemoteConversation
from voicebot.transports.websocket import VoiceServer

from .conftest import REPO, Recorder, Speech

pytestmark = pytest.mark.models

RATE = 16000


def wake(speech: Speech) -> bytes:
    """ "Okay Nabu" in espeak-ng's voice: someone other than the bot."""
    return speech.espeak("okay nabu", words_per_minute=140)


def question(speech: Speech, text: str) -> bytes:
    return speech.piper(text, rate=0.9)


async def run_daemon(
    engines: Engines, settings: Settings, pcm: bytes, options: DaemonSettings
) -> tuple[Recorder, Daemon]:
    recorder = Recorder()
    store = Store(settings.database_path())

    def conversation(sink):  # type: ignore[no-untyped-def]
        return Session(engines, settings, sink=sink, store=store, barge_in=False)

    daemon = Daemon(
        options,
        wake=MicroWakeWordDetector("okay_nabu"),
        make_conversation=conversation,
        speaker=recorder,
        output_sample_rate_hz=engines.tts.sample_rate_hz,
        mute_for_cue=False,  # as `voicebot daemon --input`: a recording hears no cue
    )
    await asyncio.wait_for(daemon.run(lambda: chunks_paced(pcm, RATE), restart=False), 300)
    return recorder, daemon


async def test_wake_word_question_is_answered_and_a_plain_question_is_not(
    real_engines: Engines, speech: Speech, settings: Settings
) -> None:
    pcm = (
        silence(1.0, RATE)
        + wake(speech)
        + silence(0.3, RATE)
        + question(speech, "What is two plus two?")
        + silence(14.0, RATE)
        + question(speech, "What is the capital of France?")
        + silence(4.0, RATE)
    )
    recorder, daemon = await run_daemon(
        real_engines, settings, pcm, DaemonSettings(follow_up_s=3.0, command_timeout_s=5.0)
    )
    assert len(daemon.wake_times) == 1 and 1.0 < daemon.wake_times[0] < 3.0
    transcripts = [t.lower() for t in recorder.texts(Transcript) if t]
    assert len(transcripts) == 1 and "plus" in transcripts[0]
    assert len(recorder.texts(ReplyDone)) == 1 and recorder.texts(ReplyDone)[0]


async def test_a_follow_up_inside_the_window_is_answered_without_the_wake_word(
    real_engines: Engines, speech: Speech, settings: Settings
) -> None:
    pcm = (
        silence(1.0, RATE)
        + wake(speech)
        + silence(0.3, RATE)
        + question(speech, "My name is Ada.")
        + silence(12.0, RATE)
        + question(speech, "What is my name?")
        + silence(14.0, RATE)
    )
    recorder, daemon = await run_daemon(
        real_engines, settings, pcm, DaemonSettings(follow_up_s=20.0, command_timeout_s=5.0)
    )
    assert len(daemon.wake_times) == 1
    transcripts = [t for t in recorder.texts(Transcript) if t]
    assert len(transcripts) == 2, transcripts
    assert len(recorder.texts(ReplyDone)) == 2


async def test_the_wake_word_is_not_triggered_by_ordinary_speech(
    real_engines: Engines, speech: Speech, settings: Settings
) -> None:
    sentences = [
        "Good morning, what is the weather like today?",
        "Please add milk and eggs to the shopping list.",
        "I was talking to Nadia about the new neighbours.",
        "Okay, now let's go to the kitchen.",
    ]
    pcm = b"".join(question(speech, s) + silence(1.0, RATE) for s in sentences)
    pcm += b"".join(speech.espeak(s) + silence(1.0, RATE) for s in sentences)
    detector = MicroWakeWordDetector("okay_nabu")
    hits = sum(detector.process(pcm[i : i + 640]) for i in range(0, len(pcm), 640))
    assert hits == 0


def test_each_bundled_wake_word_fires_on_its_phrase(speech: Speech) -> None:
    for name, phrase in [
        ("okay_nabu", "okay nabu"),
        ("hey_jarvis", "hey jarvis"),
        ("alexa", "alexa"),
        ("hey_mycroft", "hey mycroft"),
    ]:
        detector = MicroWakeWordDetector(name)
        pcm = silence(0.5, RATE) + speech.piper(phrase) + silence(1.0, RATE)
        assert any(detector.process(pcm[i : i + 640]) for i in range(0, len(pcm), 640)), name


async def test_a_satellite_talks_through_a_server_and_survives_its_restart(
    real_engines: Engines, speech: Speech, settings: Settings
) -> None:
    settings = replace(settings, server=replace(settings.server, port=0))
    store = Store(settings.database_path())
    server = VoiceServer(real_engines, settings, store)
    await server.start()
    port = server.port
    url = f"ws://127.0.0.1:{port}/ws"
    recorder = Recorder()
    options = DaemonSettings(follow_up_s=2.0, command_timeout_s=6.0, server=url)
    daemon = Daemon(
        options,
        wake=MicroWakeWordDetector("okay_nabu"),
        make_conversation=lambda sink: RemoteConversation(url, sink),
        speaker=recorder,
        output_sample_rate_hz=22050,
        mute_for_cue=False,
    )
    turn = wake(speech) + silence(0.3, RATE) + question(speech, "What is two plus two?")
    restarted = asyncio.Event()

    async def source():  # type: ignore[no-untyped-def]
        async for chunk in chunks_paced(silence(0.5, RATE) + turn + silence(14.0, RATE), RATE):
            yield chunk
        await restarted.wait()
        async for chunk in chunks_paced(turn + silence(14.0, RATE), RATE):
            yield chunk

    async def restart_server() -> None:
        nonlocal server
        while not recorder.texts(ReplyDone):  # noqa: ASYNC110  (polling the recorder)
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)
        await server.close()
        server = VoiceServer(
            real_engines, replace(settings, server=replace(settings.server, port=port)), store
        )
        await server.start()
        restarted.set()

    restarter = asyncio.create_task(restart_server())
    try:
        await asyncio.wait_for(daemon.run(source, restart=False), 300)
    finally:
        restarter.cancel()
        await server.close()
    assert len([e for e in recorder.events if isinstance(e, WakeWordDetected)]) == 2
    assert len(recorder.texts(ReplyDone)) == 2, recorder.texts(Transcript)


def test_sigterm_stops_the_daemon_within_a_second(speech: Speech, tmp_path: Path) -> None:
    recording = tmp_path / "long.wav"
    write_wav(recording, silence(120.0, RATE), RATE)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voicebot",
            "daemon",
            "--input",
            str(recording),
            "--output",
            str(tmp_path / "out.wav"),
        ],
        env={
            **os.environ,
            "VOICEBOT_MODELS": str(REPO / "models"),
            "VOICEBOT_DATA_DIR": str(tmp_path),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 180
    for line in process.stderr:
        if "daemon ready" in line:
            break
        assert time.monotonic() < deadline
    time.sleep(1.0)
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    returncode = process.wait(timeout=10)
    elapsed = time.monotonic() - start
    assert returncode == 0
    assert elapsed < 1.0, elapsed


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = tmp_path / "voicebot.service"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicebot",
            "daemon",
            "--install-service",
            str(unit),
            "--",
            "--wake-word",
            "hey_jarvis",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    text = unit.read_text()
    assert "Type=notify" in text and "Restart=on-failure" in text and "WatchdogSec=" in text
    assert "daemon --wake-word hey_jarvis" in text
    assert "RuntimeDirectory=voicebot" in text and "/opt/" not in text
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0, verify.stderr
