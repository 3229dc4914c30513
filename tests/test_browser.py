"""A real headless Chromium talks to a real server through the browser client (clients/web).

Chromium's fake microphone plays a WAV of Piper asking a question; the page streams it over
the websocket, and the test checks what the page shows, what it played and what the server
stored. Chromium is Debian's (``/usr/bin/chromium``, or ``$VOICEBOT_CHROMIUM``) driven by
Playwright; ``playwright install`` is never needed. The tests open the page with ``?test``,
which turns on its test hook (``window.voicebotTest``: events, playback state, latencies).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, async_playwright, expect

from voicebot.audio import silence, write_wav
from voicebot.config import Settings
from voicebot.engines import Engines
from voicebot.store import Store
from voicebot.transports.websocket import VoiceServer

from .conftest import CHROMIUM, Speech, make_settings

pytestmark = [pytest.mark.browser, pytest.mark.models]

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
PIRATE_CONFIG = """
[profiles.pirate]
display_name = "Captain Flint"
greeting = "Ahoy! I be {name}. What be your question?"
"""
"""A second profile, with its own name and greeting."""
LONG_GREETING = (
    "Hello, I am Nova, your test assistant. This greeting is long on purpose, "
    "so that there is plenty of time to cut me off before I am done speaking."
)
LONG_GREETING_CONFIG = f"""
[profiles.default]
greeting = "{LONG_GREETING}"
"""
"""A greeting that plays for several seconds: long enough to interrupt."""
HEARD_AFTER = re.compile(r"server (\d+(?:\.\d+)?) (ms|s) · heard after (\d+(?:\.\d+)?) (ms|s)")
"""The latency label after a spoken turn."""


def page_url(server: VoiceServer) -> str:
    """The page with its test hook (``window.voicebotTest``) turned on."""
    return f"{server.url.rstrip('/')}/?test"


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
        """A snapshot of the page's test hook (``window.voicebotTest``), getters included."""
        value = await asyncio.wait_for(
            self.page.evaluate("JSON.parse(JSON.stringify(window.voicebotTest))"), STEP_MS / 1000
        )
        assert isinstance(value, dict), "no test hook: was the page opened with ?test?"
        return value

    async def wait_for(self, expression: str, arg: Any = None, timeout_ms: int = STEP_MS) -> Any:
        """The first truthy value of ``expression`` (a JS function of ``arg``), checked on
        every animation frame of the page."""
        handle = await self.page.wait_for_function(
            expression, arg=arg, polling="raf", timeout=timeout_ms
        )
        return await handle.json_value()

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
        await page.goto(page_url(server), timeout=STEP_MS)
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
        label = page.locator("#latency-label")
        await expect(label).to_have_text(HEARD_AFTER, timeout=STEP_MS)
        answered_s = time.perf_counter() - started

        (transcript,) = [e for e in await browser.events("transcript") if e["text"]]
        assert re.search(r"capital.*france", transcript["text"], re.I), transcript
        turn = transcript["turn_id"]
        # The reply really played in the page: the AudioContext's clock went past the start
        # of the reply's first buffer, buffers played to their end, and the output was loud.
        played = await browser.wait_for(
            """turn => {
                const t = window.voicebotTest;
                const start = t.replyStarts[turn];
                return start !== undefined && t.currentTime > start + 0.2 && t.endedChunks > 0
                    && t.outputPeak > 0.01 && {start, now: t.currentTime};
            }""",
            turn,
            TURN_MS,
        )
        assert played["now"] > played["start"] > 0
        hook = await browser.hook()
        assert hook["audioBytes"] > 0
        assert hook["playedChunks"] >= hook["endedChunks"] > 0
        assert 0.01 < hook["outputPeak"] <= 1.0
        starts = [m for m in hook["sent"] if m["type"] == "start"]
        assert starts and starts[0]["barge_in"] is True and starts[0]["greet"] is True
        assert 8000 <= starts[0]["sample_rate"] <= 48000
        (metrics,) = [e for e in await browser.events("metrics") if e["turn_id"] == turn]
        assert metrics["ms"]["voice_to_voice"] > 0
        # The label: the server's number, then what this page measured (from the end of the
        # speech, which the server saw end_of_turn ms before it said speech_stopped).
        shown = HEARD_AFTER.search(await label.inner_text(timeout=STEP_MS))
        assert shown is not None
        heard_ms = hook["heardMs"][str(turn)]
        assert heard_ms > metrics["ms"]["end_of_turn"] > 0
        unit = {"ms": 1.0, "s": 1000.0}
        assert float(shown[1]) * unit[shown[2]] == pytest.approx(
            metrics["ms"]["voice_to_voice"], abs=10
        )
        assert float(shown[3]) * unit[shown[4]] == pytest.approx(heard_ms, abs=10)

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
            f"stages (ms) {metrics['ms']}, reply heard {heard_ms:.0f} ms after the speech "
            f"ended, screenshot {shot}"
        )


async def test_reply_playback_stops_at_once_when_interrupted(
    real_engines: Engines, tmp_path: Path, store: Store, silent_wav: Path
) -> None:
    settings = make_settings(tmp_path, LONG_GREETING_CONFIG)
    async with (
        asyncio.timeout(240),
        running_server(real_engines, settings, store) as server,
        chromium(fake_mic_args(silent_wav)) as browser,
    ):
        page = browser.page
        await page.goto(page_url(server), timeout=STEP_MS)
        await page.click("#start", timeout=STEP_MS)
        # The greeting plays, with more than a second of it still scheduled.
        ahead = await browser.wait_for(
            """() => {
                const t = window.voicebotTest;
                return t.playing > 0 && t.playEnd - t.currentTime > 1.0
                    && {playing: t.playing, left_s: t.playEnd - t.currentTime};
            }""",
            timeout_ms=TURN_MS,
        )
        assert ahead["playing"] > 0
        # Typing barges in: the server stops the greeting and says `interrupted`. Only that
        # event may stop the page's playback (sending a message does not).
        await page.fill("#text", "Tell me a joke.", timeout=STEP_MS)
        await page.press("#text", "Enter", timeout=STEP_MS)
        after = await browser.wait_for(
            """() => {
                const t = window.voicebotTest;
                return t.events.some(e => e.type === "interrupted")
                    && {playing: t.playing, playEnd: t.playEnd};
            }""",
            timeout_ms=STEP_MS,
        )
        # On the first animation frame after the event: every buffer stopped, none scheduled.
        assert after == {"playing": 0, "playEnd": 0}
        (interrupted,) = await browser.events("interrupted")
        assert interrupted["turn_id"] == 0  # the greeting
        greeting = page.locator(".msg.bot.cut")
        await expect(greeting).to_have_count(1, timeout=STEP_MS)
        await expect(greeting.locator(".badge")).to_have_text("interrupted")
        # The answer to the typed message plays afterwards.
        reply = page.locator(".msg.user + .msg.bot .text")
        await expect(reply.first).to_have_text(re.compile(r"\w"), timeout=TURN_MS)
        await browser.wait_for("() => window.voicebotTest.playing > 0", timeout_ms=TURN_MS)
        assert browser.page_errors == []
        assert browser.console_errors == []


async def test_profile_picker_starts_the_chosen_profile(
    real_engines: Engines, tmp_path: Path, store: Store, silent_wav: Path
) -> None:
    settings = make_settings(tmp_path, PIRATE_CONFIG)
    async with (
        asyncio.timeout(240),
        running_server(real_engines, settings, store) as server,
        chromium(fake_mic_args(silent_wav)) as browser,
    ):
        page = browser.page
        await page.goto(page_url(server), timeout=STEP_MS)
        config = await page.evaluate("fetch('/config.json').then(r => r.json())")
        assert config["profiles"] == [
            {"name": "default", "display_name": "Nova"},
            {"name": "pirate", "display_name": "Captain Flint"},
        ]
        assert config["default_profile"] == "default"
        options = page.locator("#profile option")
        await expect(options).to_have_text(["Nova (default)", "Captain Flint (pirate)"])
        await expect(page.locator("#profile")).to_have_value("default")

        await page.select_option("#profile", "pirate", timeout=STEP_MS)
        await page.click("#start", timeout=STEP_MS)
        await expect(page.locator("#bot-name")).to_have_text("· Captain Flint", timeout=STEP_MS)
        greeting = page.locator(".msg.bot .text")
        await expect(greeting.first).to_have_text(
            "Ahoy! I be Captain Flint. What be your question?", timeout=TURN_MS
        )
        hook = await browser.hook()
        (start,) = [m for m in hook["sent"] if m["type"] == "start"]
        assert start["profile"] == "pirate"
        (ready,) = await browser.events("ready")
        assert ready["profile"] == "pirate" and ready["display_name"] == "Captain Flint"
        (session,) = server.sessions.values()
        assert session.profile.name == "pirate"
        assert not [e for e in hook["events"] if "Nova" in str(e.get("text", ""))]

        # The choice is remembered by the page.
        await page.click("#hangup", timeout=STEP_MS)
        await page.reload(timeout=STEP_MS)
        await expect(page.locator("#profile")).to_have_value("pirate", timeout=STEP_MS)
        assert browser.page_errors == []
        assert browser.console_errors == []


async def test_test_hook_is_off_without_the_test_flag(
    real_engines: Engines, settings: Settings, store: Store, silent_wav: Path
) -> None:
    async with (
        asyncio.timeout(120),
        running_server(real_engines, settings, store) as server,
        chromium(fake_mic_args(silent_wav)) as browser,
    ):
        page = browser.page
        await page.goto(server.url, timeout=STEP_MS)
        # The page's script ran (it filled the picker from /config.json) without the hook.
        await expect(page.locator("#profile option")).to_have_count(1, timeout=STEP_MS)
        assert await page.evaluate("typeof window.voicebotTest") == "undefined"
        await page.goto(page_url(server), timeout=STEP_MS)
        await expect(page.locator("#profile option")).to_have_count(1, timeout=STEP_MS)
        assert await page.evaluate("typeof window.voicebotTest") == "object"
        assert browser.page_errors == []
        assert browser.console_errors == []


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
        await page.goto(page_url(server), timeout=STEP_MS)
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
            await page.goto(page_url(server), timeout=STEP_MS)
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


async def test_a_timer_counts_down_rings_and_stops_in_the_browser(
    settings: Settings, store: Store
) -> None:
    from voicebot.engines.fake import FakeChat, FakeStt, FakeTts, FakeVad

    engines = Engines(
        stt=FakeStt(["unused"]),
        llm=FakeChat(["The model answered."]),
        tts=FakeTts(sample_rate_hz=22050),
        vad_factory=FakeVad,
    )
    async with (
        asyncio.timeout(120),
        running_server(engines, settings, store) as server,
        chromium([]) as browser,
    ):
        page = browser.page
        await page.goto(page_url(server), timeout=STEP_MS)
        timers = page.locator("#timer-list .timer")
        await page.fill("#text", "Set a timer for 3 seconds for the tea.")
        await page.press("#text", "Enter")
        await expect(timers).to_have_count(1, timeout=STEP_MS)  # a second message would cut it
        await page.fill("#text", "Set a timer for ten minutes.")
        await page.press("#text", "Enter")
        await expect(timers).to_have_count(2, timeout=STEP_MS)
        await expect(timers.first.locator(".timer-name")).to_have_text("tea")
        await expect(timers.nth(1).locator(".timer-left")).to_have_text(
            re.compile(r"^(10:00|9:5\d)$")
        )
        shown = (await browser.hook())["timers"]
        assert [(t["name"], t["seconds"]) for t in shown] == [("tea", 3.0), ("", 600.0)]
        assert 0 < shown[0]["remaining_s"] <= 3.0
        # It ends: the page rings (a beep loop) and says which timer.
        await browser.wait_for(
            "() => window.voicebotTest.ringing && window.voicebotTest.beeps >= 3"
        )
        await expect(timers.first).to_have_class(re.compile(r"ringing"))
        await expect(timers.first.locator(".timer-left")).to_have_text("Done!")
        await expect(
            page.locator(".msg.bot .text", has_text="Your tea timer is done.")
        ).to_have_count(1)
        stop = page.locator("#stop-ringing")
        await expect(stop).to_be_visible()
        await stop.click()
        await browser.wait_for("() => !window.voicebotTest.ringing")
        await expect(timers).to_have_count(1)
        await expect(stop).to_be_hidden()
        await browser.wait_for(
            "() => window.voicebotTest.events.some((e) => e.type === 'timer_dismissed')"
        )
        dismissed = await browser.events("timer_dismissed")
        assert [e["name"] for e in dismissed] == ["tea"]
        # A reload of the page gets the running timer back from the server.
        await page.reload()
        await page.fill("#text", "How much time is left?")
        await page.press("#text", "Enter")
        await expect(timers).to_have_count(1, timeout=STEP_MS)
        await expect(
            page.locator(".msg.bot .text", has_text="Your 10 minute timer has")
        ).to_have_count(1)
        await page.fill("#text", "Pause the timer.")
        await page.press("#text", "Enter")
        await expect(timers.first.locator(".timer-left")).to_have_text(re.compile(r"paused$"))
        paused = (await browser.hook())["timers"][0]
        await asyncio.sleep(1.2)
        assert (await browser.hook())["timers"][0]["remaining_s"] == paused["remaining_s"]
        assert not browser.page_errors and not browser.console_errors


async def test_a_timer_set_by_voice_rings_in_the_browser(
    real_engines: Engines, short_replies: Settings, store: Store, speech: Speech, tmp_path: Path
) -> None:
    pcm = silence(0.5, 16000) + speech.piper("Set a timer for four seconds.") + silence(8.0, 16000)
    wav = tmp_path / "timer.wav"
    write_wav(wav, pcm, 16000)
    async with (
        asyncio.timeout(240),
        running_server(real_engines, short_replies, store) as server,
        chromium(fake_mic_args(wav)) as browser,
    ):
        page = browser.page
        await page.goto(page_url(server), timeout=STEP_MS)
        await page.click("#start", timeout=STEP_MS)
        timers = page.locator("#timer-list .timer")
        await expect(timers).to_have_count(1, timeout=TURN_MS)
        reply = page.locator(".msg.bot .text", has_text="Timer set for 4 seconds.")
        await expect(reply).to_have_count(1, timeout=TURN_MS)
        await browser.wait_for(
            "() => window.voicebotTest.ringing && window.voicebotTest.beeps >= 3",
            timeout_ms=TURN_MS,
        )
        done = page.locator(".msg.bot .text", has_text="Your timer is done.")
        await expect(done).to_have_count(1, timeout=TURN_MS)
        await page.click("#stop-ringing")
        await browser.wait_for("() => !window.voicebotTest.ringing")
        await expect(timers).to_have_count(0)
        assert not browser.page_errors
