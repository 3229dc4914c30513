"""Shared fixtures: settings in a temp dir, test speech made by the project, the real engines."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from voicebot.audio import read_audio, resample
from voicebot.config import Settings, load_settings
from voicebot.engines import Engines

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Default settings with the store in a temp dir and no user config file."""
    return make_settings(tmp_path)


def make_settings(tmp_path: Path, config_text: str = "", **overrides: object) -> Settings:
    """Settings from ``config_text``, ignoring the environment and the user's config file."""
    config = tmp_path / "config.toml"
    config.write_text(config_text)
    return load_settings(
        config,
        environ={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "models_dir": str(REPO / "models"),
            **overrides,
        },
    )


@pytest.fixture(scope="session")
def real_engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    """The real embedded models, loaded once for the whole test run.

    They must have been pulled (`make test` does it): a missing model fails the tests that
    need it, it never skips them.
    """
    from voicebot.engines import load_engines

    settings = make_settings(tmp_path_factory.mktemp("engines"))
    engines = load_engines(settings)
    engines.warm_up()
    yield engines
    engines.close()


class Speech:
    """Makes test speech with the project's own voices (Piper) and espeak-ng."""

    def __init__(self, engines: Engines, tmp: Path) -> None:
        self.engines = engines
        self.tmp = tmp
        self._voice: Any = None

    def piper(self, text: str, *, rate: float = 1.0) -> bytes:
        """16 kHz PCM16 of Piper (the bot's voice) saying ``text``, identical on every run.

        Piper adds random noise to its voice by default; test speech turns it off so a test
        hears the same audio every time (flaky inputs make flaky tests).
        """
        if self._voice is None:
            from voicebot.engines.tts import PiperTts

            path = REPO / "models" / "piper-en_US-joe-medium" / "en_US-joe-medium.onnx"
            self._voice = PiperTts(path, noise_scale=0.0, noise_w_scale=0.0)
        pcm = b"".join(self._voice.synthesize(text, speaking_rate=rate))
        return resample(pcm, self._voice.sample_rate_hz, 16000)

    def espeak(self, text: str, *, voice: str = "en-us", words_per_minute: int = 150) -> bytes:
        """16 kHz PCM16 of espeak-ng saying ``text`` (a voice unlike the bot's)."""
        espeak = shutil.which("espeak-ng")
        assert espeak, "espeak-ng is missing: run scripts/install-system-deps.sh --test"
        out = self.tmp / f"espeak-{abs(hash((text, voice, words_per_minute)))}.wav"
        subprocess.run(
            [espeak, "-v", voice, "-s", str(words_per_minute), "-w", str(out), text],
            check=True,
            capture_output=True,
        )
        return read_audio(out, 16000)


@pytest.fixture(scope="session")
def speech(real_engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> Speech:
    """Test speech maker."""
    return Speech(real_engines, tmp_path_factory.mktemp("speech"))


def run_async(coro: object, timeout_s: float = 60.0) -> object:
    """Run a coroutine with a timeout (for sync tests)."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))  # type: ignore[arg-type]


class Recorder:
    """A session sink that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    async def __call__(self, event: Any) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        """The events of one type, in order."""
        return [e for e in self.events if isinstance(e, kind)]

    def texts(self, kind: type) -> list[str]:
        """The ``text`` of the events of one type."""
        return [e.text for e in self.of(kind)]


async def paced(pcm: bytes, chunk_s: float = 0.02, speed: float = 1.0) -> AsyncIterator[bytes]:
    """Yield 16 kHz audio in chunks at (a multiple of) real time."""
    step = 2 * round(chunk_s * 16000)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, offset in enumerate(range(0, len(pcm), step)):
        yield pcm[offset : offset + step]
        delay = start + (i + 1) * chunk_s / speed - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
