"""Shared fixtures: settings in a temp dir, test speech made by the project, the real engines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from voicebot.config import Settings, load_settings
from voicebot.engines import Engines
from voicebot.speech_samples import SpeechMaker
from voicebot.store import Store
from voicebot.transports.websocket import VoiceServer

from .pg import postgres, store_location  # noqa: F401 - fixtures: a real PostgreSQL

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("VOICEBOT_CHROMIUM", "/usr/bin/chromium")
"""The browser the ``browser`` tests drive (scripts/install-system-deps.sh --test installs it)."""


@pytest.fixture(autouse=True)
def _browser_present(request: pytest.FixtureRequest) -> None:
    """A ``browser`` test fails with one clear line when Chromium is missing (never skipped)."""
    if request.node.get_closest_marker("browser") is not None:
        assert Path(CHROMIUM).exists(), f"Chromium is missing at {CHROMIUM} (apt install chromium)"


def voicebot_cli(
    *args: str, data: Path, stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m voicebot ARGS`` with its data in ``data`` (an empty config there), the
    checkout's models, and the output captured."""
    env = {
        **os.environ,
        "VOICEBOT_MODELS": str(REPO / "models"),
        "VOICEBOT_DATA_DIR": str(data),
        "VOICEBOT_CONFIG": str(data / "config.toml"),
    }
    (data / "config.toml").touch()
    return subprocess.run(  # noqa: S603 - our own command
        [sys.executable, "-m", "voicebot", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@contextlib.asynccontextmanager
async def voice_server(engines: Engines, settings: Settings) -> AsyncIterator[VoiceServer]:
    """A started websocket server on ``settings`` with its own store, closed after."""
    store = Store(settings.database_path())
    server = VoiceServer(engines, settings, store)
    await server.start()
    try:
        yield server
    finally:
        await asyncio.wait_for(server.close(), 30)
        store.close()


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    """The conversation store in the test's data dir."""
    store = Store(settings.database_path())
    yield store
    store.close()


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


class Speech(SpeechMaker):
    """Test speech (:class:`voicebot.speech_samples.SpeechMaker`), with the engines beside it."""

    def __init__(self, engines: Engines) -> None:
        maker = SpeechMaker.load(REPO / "models")
        super().__init__(maker.tts, espeak=maker.espeak_path)
        self.engines = engines
        """The real engines, to hear the speech back."""

    def espeak(self, text: str, *, voice: str = "en-us", words_per_minute: int = 150) -> bytes:
        """16 kHz PCM16 of espeak-ng saying ``text`` (a voice unlike the bot's)."""
        assert self.espeak_path, "espeak-ng is missing: run scripts/install-system-deps.sh --test"
        return super().espeak(text, voice=voice, words_per_minute=words_per_minute)


@pytest.fixture(scope="session")
def speech(real_engines: Engines) -> Speech:
    """Test speech maker."""
    return Speech(real_engines)


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
