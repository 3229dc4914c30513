"""The daemon keeps working when the sound server restarts under it.

``voicebot daemon`` runs on the virtual PulseAudio devices of test_audio_device.py (a pipe-fed
microphone, a null-sink speaker). It answers a wake word and a question; then PulseAudio is
killed and started again, as an update or a crash of PulseAudio/PipeWire does on a real
speaker. Without anyone touching the daemon, the next wake word and question are heard and
the reply plays on the new server's speaker.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from voicebot.audio import silence

from .conftest import REPO, Speech
from .test_audio_device import pulse, start_pulse

__all__ = ["pulse"]  # the fixture, imported for this module's tests

pytestmark = [pytest.mark.audio, pytest.mark.models]

RATE = 16000


class _Microphone(threading.Thread):
    """Keeps PulseAudio's pipe source fed in real time: silence, or the clips queued.

    When PulseAudio goes away the pipe has no reader: it waits and opens it again.
    """

    def __init__(self, fifo: str) -> None:
        super().__init__(daemon=True)
        self.fifo = fifo
        self.clips: queue.Queue[bytes] = queue.Queue()
        self.stopping = threading.Event()
        self.reopened = 0

    def run(self) -> None:
        step = 640  # 20 ms
        quiet = silence(0.02, RATE)
        pending = b""
        while not self.stopping.is_set():
            try:
                descriptor = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader (PulseAudio is down) or no pipe yet
                time.sleep(0.1)
                continue
            os.set_blocking(descriptor, True)
            self.reopened += 1
            start = time.monotonic()
            sent = 0
            try:
                while not self.stopping.is_set():
                    if not pending and not self.clips.empty():
                        pending = self.clips.get_nowait()
                    chunk, pending = (pending[:step], pending[step:]) if pending else (quiet, b"")
                    os.write(descriptor, chunk.ljust(step, b"\0"))
                    sent += 1
                    delay = start + sent * 0.02 - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            except OSError:  # the reader went away: PulseAudio stopped
                pending = b""
            finally:
                os.close(descriptor)


class _Lines(threading.Thread):
    """Collects a stream's lines as they come."""

    def __init__(self, stream: object) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: list[str] = []

    def run(self) -> None:
        for line in self.stream:  # type: ignore[attr-defined]
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, after: int, timeout_s: float, *needles: str) -> int | None:
        """Index of the first line from ``after`` holding every needle (any case), if any."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for index in range(after, len(self.lines)):
                if all(n.lower() in self.lines[index].lower() for n in needles):
                    return index
            time.sleep(0.2)
        return None


def _ask(
    mic: _Microphone, out: _Lines, wake: bytes, question: bytes, topic: str, tries: int
) -> bool:
    """Say the wake word and the question until the daemon hears it and answers."""
    for _ in range(tries):
        mark = len(out.lines)
        mic.clips.put(wake + silence(0.6, RATE) + question + silence(1.0, RATE))
        heard = out.wait_for(mark, 40, "you:", topic)
        if heard is not None:
            return out.wait_for(heard + 1, 60, "Nova:") is not None
        time.sleep(3)
    return False


def _record(env: dict[str, str], path: Path) -> subprocess.Popen[bytes]:
    with path.open("wb") as out:
        return subprocess.Popen(
            ["parec", "-d", "vb_speaker.monitor", "--format=s16le", "--rate=16000", "--channels=1"],
            env=env,
            stdout=out,
        )


def test_the_daemon_survives_a_pulseaudio_restart(
    pulse: dict[str, str], speech: Speech, tmp_path: Path
) -> None:
    wake = speech.espeak("okay nabu", words_per_minute=140)
    first = speech.piper("What is the capital of France?", rate=0.9)
    second = speech.piper("How many legs does a spider have?", rate=0.9)
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voicebot",
            "-v",
            "daemon",
            "--input-device",
            "pulse",
            "--output-device",
            "pulse",
            "--no-cue",
        ],
        env={**pulse, "VOICEBOT_MODELS": str(REPO / "models"), "VOICEBOT_DATA_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = _Lines(daemon.stdout), _Lines(daemon.stderr)
    out.start()
    err.start()
    mic = _Microphone(pulse["VB_FIFO"])
    mic.start()
    recorder = _record(pulse, tmp_path / "before.raw")
    try:
        assert err.wait_for(0, 240, "state: idle") is not None, err.text()
        assert _ask(mic, out, wake, first, "France", tries=3), out.text() + err.text()

        # The sound server goes away under the daemon, and comes back a few seconds later.
        recorder.terminate()
        recorder.wait(timeout=10)
        subprocess.run(["pulseaudio", "--kill"], env=pulse, timeout=10, check=False)
        deadline = time.monotonic() + 10
        while subprocess.run(["pactl", "info"], env=pulse, capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "PulseAudio did not stop"
            time.sleep(0.1)
        time.sleep(3)
        assert daemon.poll() is None, err.text()
        start_pulse(pulse, Path(pulse["VB_FIFO"]))
        recorder = _record(pulse, tmp_path / "after.raw")

        assert _ask(mic, out, wake, second, "spider", tries=4), out.text() + err.text()
        time.sleep(6)  # the reply plays out on the new speaker
    finally:
        mic.stopping.set()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        recorder.terminate()
        recorder.wait(timeout=10)
    assert daemon.returncode == 0, err.text()
    assert mic.reopened >= 2  # the pipe really went away and came back
    # The daemon saw its devices go and opened them again by itself.
    assert "microphone 'pulse' stopped; reopening" in err.text()
    # The reply after the restart really played on the new PulseAudio's speaker.
    played = (tmp_path / "after.raw").read_bytes()
    heard = speech.engines.stt.transcribe(played).text.lower()
    reply = out.text().rsplit("Nova:", 1)[1].lower()
    overlap = {w.strip(".,!?\"'") for w in heard.split()} & {
        w.strip(".,!?\"'") for w in reply.split()
    }
    assert len(overlap) >= 3, (heard, reply, err.text()[-3000:])
