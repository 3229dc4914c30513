"""The real wyoming-satellite (PyPI, in its own environment) driven by `voicebot wyoming`.

The satellite's microphone is a shell command that plays a recording ("Okay Nabu", then a
question) every few seconds; its speaker is a command that appends to a file. The hub
detects the wake word in the satellite's stream, answers the question, and the spoken reply
must arrive in that file, where voicebot's own speech to text hears it. Killing the
satellite and starting it again must reconnect.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from voicebot.audio import resample, silence
from voicebot.engines.base import SpeechToText
from voicebot.speech_samples import SpeechMaker

from .conftest import REPO
from .test_wyoming import ServerProcess, free_port, maker, start_wyoming, stop, stt

pytestmark = pytest.mark.models

__all__ = ["maker", "stt"]  # module fixtures shared with test_wyoming

SATELLITE_PYTHON = REPO / ".venv-satellite" / "bin" / "python"
_SND_RATE_HZ = 22050
_WAIT_S = 120.0


class Satellite:
    """A wyoming-satellite process with a recording for a microphone and a file for a speaker."""

    def __init__(self, workdir: Path, recording: Path, *, zeroconf_name: str = "") -> None:
        assert SATELLITE_PYTHON.exists(), "wyoming-satellite is missing: run `make test`"
        self.port = free_port()
        self.workdir = workdir
        self.sound = workdir / "sound.raw"
        self.transcripts = workdir / "transcripts.txt"
        self.log = workdir / "satellite.log"
        self.mic = f"sh -c 'while true; do cat {shlex.quote(str(recording))}; sleep 6; done'"
        self.process: subprocess.Popen[bytes] | None = None
        self.zeroconf = (
            ["--zeroconf-name", zeroconf_name, "--zeroconf-host", "127.0.0.1"]
            if zeroconf_name
            else ["--no-zeroconf"]
        )

    def start(self) -> None:
        self.sound.write_bytes(b"")
        self.transcripts.write_text("")
        command = [
            str(SATELLITE_PYTHON),
            "-m",
            "wyoming_satellite",
            "--name",
            "test satellite",
            "--uri",
            f"tcp://127.0.0.1:{self.port}",
            *self.zeroconf,
            "--mic-command",
            self.mic,
            "--snd-command",
            f"sh -c 'cat >> {shlex.quote(str(self.sound))}'",
            "--snd-command-rate",
            str(_SND_RATE_HZ),
            "--transcript-command",
            f"sh -c 'cat >> {shlex.quote(str(self.transcripts))}; echo >> "
            f"{shlex.quote(str(self.transcripts))}'",
            "--debug",
        ]
        with self.log.open("ab") as out:
            # Its own process group: killing it kills its microphone loop too.
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None


def wait_for(condition: Callable[[], bool], what: str, log: Path) -> None:
    deadline = time.monotonic() + _WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory, maker: SpeechMaker) -> Path:
    """ "Okay Nabu" (espeak-ng), then "What is 17 plus 25?" (Piper), as raw 16 kHz PCM."""
    pcm = (
        silence(0.5, 16000)
        + maker.espeak("okay nabu", words_per_minute=140)
        + silence(0.7, 16000)
        + maker.piper("What is 17 plus 25?")
        + silence(2.5, 16000)
    )
    path = tmp_path_factory.mktemp("satellite") / "question.raw"
    path.write_bytes(pcm)
    return path


@pytest.fixture(scope="module")
def hub_and_satellite(
    tmp_path_factory: pytest.TempPathFactory, recording: Path
) -> Iterator[tuple[ServerProcess, Satellite]]:
    satellite = Satellite(tmp_path_factory.mktemp("sat"), recording)
    satellite.start()
    try:
        server = start_wyoming(
            tmp_path_factory.mktemp("hub"), "--satellite", f"tcp://127.0.0.1:{satellite.port}"
        )
        try:
            yield server, satellite
        finally:
            stop(server)
    finally:
        satellite.kill()


def reply_heard(satellite: Satellite, stt: SpeechToText) -> str:
    pcm = satellite.sound.read_bytes()
    pcm = pcm[: len(pcm) // 2 * 2]
    return stt.transcribe(resample(pcm, _SND_RATE_HZ, 16000)).text


def test_the_satellite_is_answered_and_reconnects_after_a_kill(
    hub_and_satellite: tuple[ServerProcess, Satellite], stt: SpeechToText
) -> None:
    server, satellite = hub_and_satellite

    def answered() -> bool:
        # The reply is one short sentence: 1 s of audio means it has (mostly) arrived.
        return satellite.sound.stat().st_size > 2 * _SND_RATE_HZ * 1.0

    wait_for(answered, "the reply audio on the satellite", server.log)
    time.sleep(2.0)  # the rest of the reply
    heard = reply_heard(satellite, stt)
    assert "42" in heard or "forty-two" in heard.lower(), heard
    transcripts = satellite.transcripts.read_text().lower()
    assert "17" in transcripts or "seventeen" in transcripts, transcripts
    assert "25" in transcripts or "twenty-five" in transcripts, transcripts

    # Unplugged, then plugged in again.
    satellite.kill()
    satellite.start()
    wait_for(answered, "the reply audio after the satellite restarted", server.log)
    assert server.log.read_text().count("connected and running") >= 2
    time.sleep(2.0)
    heard = reply_heard(satellite, stt)
    assert "42" in heard or "forty-two" in heard.lower(), heard


async def test_discovery_finds_satellites_and_skips_other_wyoming_services(
    hub_and_satellite: tuple[ServerProcess, Satellite], recording: Path, tmp_path: Path
) -> None:
    from voicebot.transports.wyoming_discovery import SatelliteBrowser, announce

    server, _ = hub_and_satellite
    satellite = Satellite(tmp_path, recording, zeroconf_name="voicebot-test-satellite")
    satellite.start()
    # voicebot's own server, announced too: a Wyoming service, but not a satellite.
    close = await announce("voicebot-test-server", server.port, "127.0.0.1")
    found: list[str] = []
    wanted = f"tcp://127.0.0.1:{satellite.port}"
    seen = asyncio.Event()

    def note(uri: str) -> None:
        found.append(uri)
        if uri == wanted:
            seen.set()

    browser = SatelliteBrowser(note)
    try:
        await browser.start()
        async with asyncio.timeout(60):
            await seen.wait()
        await asyncio.sleep(2.0)  # time to (wrongly) take the server for a satellite
    finally:
        await browser.close()
        await close()
        satellite.kill()
    assert found == [wanted]
