"""The real PortAudio path: `voicebot chat` on virtual PulseAudio devices.

A private PulseAudio server gets a pipe source (the "microphone": we write a spoken question
into its FIFO at real-time pace) and a null sink (the "speaker": we record its monitor).
PortAudio reaches them through ALSA's pulse plugin, exactly as on a desktop.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from voicebot.audio import silence

from .conftest import REPO, Speech

pytestmark = [pytest.mark.audio, pytest.mark.models]


def start_pulse(env: dict[str, str], fifo: Path) -> None:
    """Start the private PulseAudio server of ``env`` (again, after a restart) and wait for it."""
    runtime = Path(env["PULSE_RUNTIME_PATH"])
    subprocess.run(
        [
            "pulseaudio",
            "-n",
            "--daemonize=yes",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "--log-target=file:" + str(runtime / "log"),
            "-L",
            "module-native-protocol-unix",
            "-L",
            "module-null-sink sink_name=vb_speaker rate=48000",
            "-L",
            f"module-pipe-source source_name=vb_mic file={fifo} format=s16le rate=16000 channels=1",
        ],
        env=env,
        check=True,
        timeout=30,
    )
    deadline = time.monotonic() + 10
    while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "PulseAudio did not start"
        time.sleep(0.1)


@pytest.fixture
def pulse(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private PulseAudio server with a pipe-fed microphone and a null-sink speaker."""
    for tool in ("pulseaudio", "pactl", "parec"):
        assert shutil.which(tool), f"{tool} missing: run scripts/install-system-deps.sh --test"
    runtime = tmp_path / "pulse"
    runtime.mkdir()
    env = {
        **os.environ,
        "PULSE_RUNTIME_PATH": str(runtime),
        "PULSE_STATE_PATH": str(runtime),
        "HOME": str(tmp_path),
        "PULSE_SOURCE": "vb_mic",
        "PULSE_SINK": "vb_speaker",
    }
    fifo = runtime / "mic.fifo"
    start_pulse(env, fifo)
    env["VB_FIFO"] = str(fifo)
    yield env
    subprocess.run(["pulseaudio", "--kill"], env=env, timeout=10, check=False)


def test_voicebot_devices_lists_the_virtual_devices(pulse: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "voicebot", "devices"],
        env=pulse,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "pulse" in result.stdout


def test_chat_hears_the_microphone_and_answers_on_the_speaker(
    pulse: dict[str, str], speech: Speech, tmp_path: Path
) -> None:
    question = silence(1.0, 16000) + speech.piper("What is the capital of France?")
    recording = tmp_path / "speaker.raw"
    with recording.open("wb") as out:
        recorder = subprocess.Popen(
            ["parec", "-d", "vb_speaker.monitor", "--format=s16le", "--rate=16000", "--channels=1"],
            env=pulse,
            stdout=out,
        )
    chat = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voicebot",
            "-v",
            "chat",
            "--input-device",
            "pulse",
            "--output-device",
            "pulse",
            "--no-greet",
        ],
        env={**pulse, "VOICEBOT_MODELS": str(REPO / "models"), "VOICEBOT_DATA_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr_lines: list[str] = []
    listening = threading.Event()

    def watch() -> None:
        assert chat.stderr is not None
        for line in chat.stderr:
            stderr_lines.append(line)
            if "[listening" in line:
                listening.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        # The "microphone": keep the FIFO fed in real time. Silence until the chat listens,
        # then the question, then silence while it answers.
        with open(pulse["VB_FIFO"], "wb") as mic:
            deadline = time.monotonic() + 240
            while not listening.is_set():
                assert chat.poll() is None and time.monotonic() < deadline, stderr_lines
                mic.write(silence(0.1, 16000))
                mic.flush()
                time.sleep(0.1)
            feed = silence(1.0, 16000) + question + silence(25.0, 16000)
            start = time.monotonic()
            step = 640
            for offset in range(0, len(feed), step):
                mic.write(feed[offset : offset + step])
                mic.flush()
                delay = start + (offset + step) / 32000 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if chat.poll() is not None:
                    break
    finally:
        chat.send_signal(signal.SIGINT)
        try:
            stdout, _ = chat.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            chat.kill()
            stdout, _ = chat.communicate()
        watcher.join(timeout=5)
        stderr = "".join(stderr_lines)
        recorder.terminate()
        recorder.wait(timeout=10)
    assert chat.returncode == 0, stderr
    assert "you: What is the capital of France?" in stdout, stdout + stderr
    assert "Nova:" in stdout
    # The speaker really played the reply: transcribe what its monitor recorded.
    played = recording.read_bytes()
    assert len(played) > 32000 * 10
    heard = speech.engines.stt.transcribe(played[-32000 * 28 :]).text
    assert len(heard.split()) >= 3, heard
    reply = stdout.split("Nova:", 1)[1].split()
    overlap = {w.strip(".,!?\"'").lower() for w in heard.split()} & {
        w.strip(".,!?\"'").lower() for w in reply
    }
    assert len(overlap) >= 3, (heard, reply)


def test_a_missing_device_is_one_clear_line(pulse: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "voicebot", "chat", "--input-device", "no-such-mic"],
        env={**pulse, "VOICEBOT_MODELS": str(REPO / "models")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "no input device 'no-such-mic'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_device_in_satellite_mode_is_one_clear_line(pulse: dict[str, str]) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicebot",
            "daemon",
            "--server",
            "ws://127.0.0.1:9/ws",
            "--input-device",
            "no-such-mic",
        ],
        env={**pulse, "VOICEBOT_MODELS": str(REPO / "models")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2  # not a retry loop
    assert "no input device 'no-such-mic'" in result.stderr
    assert "Traceback" not in result.stderr
