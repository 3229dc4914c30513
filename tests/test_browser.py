"""A real headless Chromium talks to a real server through the browser client (clients/web).

Chromium's fake microphone plays a WAV of Piper asking a question; the page streams it over
the websocket, and the test checks what the page shows, what it played and what the server
stored. Chromium is Debian's (``/usr/bin/chromium``, or ``$VOICEBOT_CHROMIUM``) driven by
Playwright; ``playwright install`` is never needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, async_playwright, expect

from voicebot.audio import silence, write_wav
from voicebot.config import Settings
from voicebot.engines import Engines
from voicebot.store import Store
from voicebot.transports.websocket import VoiceServer

from .conftest import Speech

pytestmark = [pytest.mark.browser, pytest.mark.models]

CHROMIUM = os.environ.get("VOICEBOT_CHROMIUM", "/usr/bin/chromium")
# The machine may have no network at all: without these Chromium stalls on background
# connections (updates, sync, field trials) and QUIC probes.
HEADLESS_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
FAKE_DEVICE_ARGS = ["--use-fake-device-for-media-stream"]
STEP_MS = 30_000
"""Bound of one browser step (launch, navigation, a click)."""
TURN_MS = 120_000
"""Bound of a spoken turn: the question, transcription, reply and its speech on a slow CPU."""
STATUS = "#status-text"


def fake_mic_args(wav: Path, *, allow: bool = True) -> list[str]:
    """Chromium flags for a fake microphone playing ``wav`` once (``%noloop``)."""
    args = [*FAKE_DEVICE_ARGS, f"--use-file-for-fake-audio-capture={wav}%noloop"]
    if allow:
        args.append("--use-fake-ui-for-media-stream")  # grants the permission prompt
    return args


@contextlib.asynccontextmanager
async def running_server(
    engines: Engines, settings: Settings, store: Store
) -> AsyncIterator[VoiceServer]:
    """A real server on ``settings.server.port`` (0: a free one), closed on exit."""
    server = VoiceServer(engines, settings, store)
    async with asyncio.timeout(30):
        await server.start()
    try:
        yield server
    finally:
        async with asyncio.timeout(30):
            await server.close()


class BrowserPage:
    """A Chromium page with its uncaught errors and console errors collected."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on(
            "console",
            lambda message: (
                self.console_errors.append(message.text) if message.type == "error" else None
            ),
        )

    async def hook(self) -> dict[str, Any]:
        """The page's test hook (``window.voicebotTest``)."""
        value = await asyncio.wait_for(self.page.evaluate("window.voicebotTest"), STEP_MS / 1000)
        assert isinstance(value, dict)
        return value

    async def events(self, kind: str) -> list[dict[str, Any]]:
        """The server events of one type the page received."""
        return [e for e in (await self.hook())["events"] if e.get("type") == kind]


@contextlib.asynccontextmanager
async def chromium(args: list[str], **context_options: Any) -> AsyncIterator[BrowserPage]:
    """A headless Chromium with one page."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[*HEADLESS_ARGS, *args],
            timeout=STEP_MS,
        )
        try:
            context = await browser.new_context(**context_options)
            context.set_default_timeout(STEP_MS)
            page = await context.new_page()
            yield BrowserPage(page)
        finally:
            async with asyncio.timeout(30):
                await browser.close()


async def wait_for_store(store: Store, conversation_id: str) -> list[Any]:
    """The stored turns, once the answer to the user's turn is saved (after its playback)."""
    async with asyncio.timeout(TURN_MS / 1000):
        while True:
            turns = await asyncio.to_thread(store.turns, conversation_id)
            users = [i for i, t in enumerate(turns) if t.role == "user"]
            if users and any(t.role == "assistant" and t.text for t in turns[users[0] :]):
                return turns
            await asyncio.sleep(0.25)


@pytest.fixture(autouse=True)
def _chromium_installed() -> None:
    """A missing browser fails the test with one clear line (it is never skipped)."""
    assert Path(CHROMIUM).exists(), f"Chromium is missing at {CHROMIUM} (apt install chromium)"


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    """The conversation store in the test's data dir."""
    store = Store(settings.database_path())
    yield store
    store.close()


@pytest.fixture
def short_replies(settings: Settings) -> Settings:
    """The test settings with one-sentence replies: a turn stays short on a slow CPU."""
    return dataclasses.replace(settings, llm=dataclasses.replace(settings.llm, max_sentences=1))


@pytest.fixture
def question_wav(speech: Speech, tmp_path: Path) -> Path:
    """Piper asking a question, with silence around it so the turn's end is heard."""
    pcm = silence(0.5, 16000) + speech.piper("What is the capital of France?") + silence(2.5, 16000)
    path = tmp_path / "question.wav"
    write_wav(path, pcm, 16000)
    return path


@pytest.fixture
def silent_wav(tmp_path: Path) -> Path:
    """A quiet microphone."""
    path = tmp_path / "silence.wav"
    write_wav(path, silence(2.0, 16000), 16000)
    return path


async def test_spoken_question_is_answered_in_the_browser(
    real_engines: Engines,
    short_replies: Settings,
    store: Store,
    question_wav: Path,
    tmp_path: Path,
) -> None:
    settings = short_replies
    started = time.perf_counter()
    async with (
        asyncio.timeout(240),
        running_server(real_engines, settings, store) as server,
        chromium(fake_mic_args(question_wav), viewport={"width": 900, "height": 760}) as browser,
    ):
        page = browser.page
        await page.goto(server.url, timeout=STEP_MS)
        await expect(page.locator("#profile option")).to_have_count(1, timeout=STEP_MS)
        await page.click("#start", timeout=STEP_MS)

        user = page.locator(".msg.user .text", has_text=re.compile(r"capital", re.IGNORECASE))
        await expect(user.first).to_contain_text(re.compile(r"France", re.I), timeout=TURN_MS)
        heard_s = time.perf_counter() - started
        # The reply to the question (the greeting, if any, comes before it).
        reply = page.locator(".msg.user + .msg.bot .text")
        await expect(reply.first).to_have_text(re.compile(r"\w"), timeout=TURN_MS)
        latency = page.locator(".msg.bot .latency summary")
        await expect(latency.first).to_have_text(
            re.compile(r"\d+(\.\d+)? (ms|s) "), timeout=TURN_MS
        )
        await expect(page.locator("#latency-label")).to_contain_text(re.compile(r"\d"))
        answered_s = time.perf_counter() - started

        hook = await browser.hook()
        assert hook["audioBytes"] > 0
        assert hook["playedChunks"] > 0
        starts = [m for m in hook["sent"] if m["type"] == "start"]
        assert starts and starts[0]["barge_in"] is True and starts[0]["greet"] is True
        assert 8000 <= starts[0]["sample_rate"] <= 48000
        (transcript,) = [e for e in await browser.events("transcript") if e["text"]]
        assert re.search(r"capital.*france", transcript["text"], re.I), transcript
        (metrics,) = [
            e for e in await browser.events("metrics") if e["turn_id"] == transcript["turn_id"]
        ]
        assert metrics["ms"]["voice_to_voice"] > 0

        conversation_id = await page.evaluate("localStorage.getItem('voicebot.conversation_id')")
        ready = (await browser.events("ready"))[0]
        assert conversation_id == ready["conversation_id"]
        await expect(page.locator("#conversation-label")).to_contain_text(conversation_id)
        turns = await wait_for_store(store, conversation_id)
        user_turns = [t for t in turns if t.role == "user"]
        assert len(user_turns) == 1 and "capital" in user_turns[0].text.lower(), turns
        assert any(t.role == "assistant" and t.text for t in turns), turns

        shot = tmp_path / "browser.png"
        await page.screenshot(path=str(shot), timeout=STEP_MS)
        assert browser.page_errors == []
        assert browser.console_errors == []
        print(
            f"\nheard after {heard_s:.1f} s, answered after {answered_s:.1f} s, "
            f"stages (ms) {metrics['ms']}, screenshot {shot}"
        )


async def test_denied_microphone_is_explained_and_typing_still_works(
    real_engines: Engines, short_replies: Settings, store: Store, silent_wav: Path
) -> None:
    settings = short_replies
    async with (
        asyncio.timeout(180),
        running_server(real_engines, settings, store) as server,
        # No --use-fake-ui-for-media-stream and no granted permission: the prompt is refused.
        chromium(
            [*fake_mic_args(silent_wav, allow=False), "--deny-permission-prompts"],
            permissions=[],
        ) as browser,
    ):
        page = browser.page
        await page.goto(server.url, timeout=STEP_MS)
        await page.click("#start", timeout=STEP_MS)
        notice = page.locator("#notice")
        await expect(notice).to_be_visible(timeout=STEP_MS)
        await expect(notice).to_contain_text(re.compile(r"microphone.*(blocked|denied)", re.I))
        # The session still opens for typed messages.
        await expect(page.locator(STATUS)).to_contain_text("type a message", timeout=STEP_MS)
        await page.fill("#text", "Say hello.", timeout=STEP_MS)
        await page.press("#text", "Enter", timeout=STEP_MS)
        await expect(page.locator(".msg.user .text").last).to_have_text("Say hello.")
        reply = page.locator(".msg.user + .msg.bot .text")
        await expect(reply.first).to_have_text(re.compile(r"\w"), timeout=TURN_MS)
        assert not [m for m in (await browser.hook())["sent"] if m["type"] == "interrupt"]
        assert browser.page_errors == []
        assert browser.console_errors == []


async def test_page_reconnects_and_resumes_after_the_server_restarts(
    real_engines: Engines, settings: Settings, store: Store, silent_wav: Path
) -> None:
    async with (
        asyncio.timeout(240),
        chromium(fake_mic_args(silent_wav)) as browser,
    ):
        page = browser.page
        async with running_server(real_engines, settings, store) as server:
            port = server.port
            await page.goto(server.url, timeout=STEP_MS)
            await page.click("#start", timeout=STEP_MS)
            await expect(page.locator(STATUS)).to_have_text(
                re.compile(r"^(Listening|Speaking)"), timeout=STEP_MS
            )
            conversation_id = (await browser.events("ready"))[0]["conversation_id"]
        # The server is gone.
        await expect(page.locator(STATUS)).to_contain_text(
            re.compile(r"reconnecting|server unavailable", re.I), timeout=STEP_MS
        )
        await asyncio.sleep(1.0)  # let a reconnection attempt fail against the closed port
        await expect(page.locator(STATUS)).to_contain_text(re.compile(r"reconnecting", re.I))

        again = dataclasses.replace(
            settings, server=dataclasses.replace(settings.server, port=port)
        )
        async with running_server(real_engines, again, store) as server:
            await expect(page.locator(STATUS)).to_have_text(
                re.compile(r"^(Listening|Speaking)"), timeout=60_000
            )
            starts = [m for m in (await browser.hook())["sent"] if m["type"] == "start"]
            assert len(starts) >= 2
            assert "conversation_id" not in starts[0]
            assert starts[-1]["conversation_id"] == conversation_id
            assert "greet" not in starts[-1]
            assert [s.conversation_id for s in server.sessions.values()] == [conversation_id]
            readies = await browser.events("ready")
            assert readies[-1]["conversation_id"] == conversation_id
        # Console errors are expected here: Chromium logs each refused reconnection attempt.
        assert await page.evaluate("localStorage.getItem('voicebot.conversation_id')") == (
            conversation_id
        )
        assert browser.page_errors == []
