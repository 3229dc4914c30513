"""Feedback in a real headless Chromium and by real speech, stored and exported.

The browser test drives the page the way tests/test_browser.py does (Debian's Chromium,
Playwright, the page's ``?test`` hook); the voice test speaks with Piper and hears with
Whisper through a real session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from playwright.async_api import expect

from voicebot.audio import silence
from voicebot.config import Settings
from voicebot.data_export import training_examples
from voicebot.engines import Engines
from voicebot.events import ReplyDone, Transcript
from voicebot.session import Session
from voicebot.store import Store

from .conftest import Recorder, Speech, paced
from .test_browser import STEP_MS, TURN_MS, chromium, page_url, running_server

pytestmark = pytest.mark.models


async def _rated(store: Store, cid: str, count: int) -> list[tuple[str, str, str]]:
    """The assistant turns once ``count`` of them carry feedback."""
    async with asyncio.timeout(TURN_MS / 1000):
        while True:
            turns = await asyncio.to_thread(store.rated_turns, cid)
            rated = [(t.text, t.feedback, t.correction) for t in turns if t.role == "assistant"]
            if sum(1 for _, feedback, _ in rated if feedback) >= count:
                return rated
            await asyncio.sleep(0.25)


async def _replies_stored(store: Store, cid: str, count: int) -> None:
    """Wait until ``count`` replies to the user are stored (a reply is kept once heard)."""
    async with asyncio.timeout(TURN_MS / 1000):
        while True:
            turns = await asyncio.to_thread(store.rated_turns, cid)
            roles = [t.role for t in turns]
            answered = sum(
                1 for a, b in zip(roles, roles[1:], strict=False) if (a, b) == ("user", "assistant")
            )
            if answered >= count:
                return
            await asyncio.sleep(0.25)


@pytest.mark.browser
async def test_thumbs_and_a_correction_in_the_browser_reach_the_export(
    real_engines: Engines, settings: Settings
) -> None:
    settings = dataclasses.replace(settings, llm=dataclasses.replace(settings.llm, max_sentences=1))
    store = Store(settings.database_path())
    async with (
        asyncio.timeout(240),
        running_server(real_engines, settings, store) as server,
        chromium([]) as browser,
    ):
        page = browser.page
        await page.goto(page_url(server), timeout=STEP_MS)
        bots = page.locator(".msg.user + .msg.bot")  # replies: the greeting is not rated
        await page.fill("#text", "What is the capital of France?")
        await page.press("#text", "Enter")
        first = bots.first.locator(".feedback")
        await expect(first).to_be_visible(timeout=TURN_MS)
        cid = (await browser.events("ready"))[0]["conversation_id"]
        await _replies_stored(store, cid, 1)  # heard to its end, as a user would
        await first.locator(".feedback-good").click()
        await expect(first).to_have_attribute("data-stored", "true", timeout=STEP_MS)
        await page.fill("#text", "What is the capital of Germany?")
        await page.press("#text", "Enter")
        second = bots.nth(1).locator(".feedback")
        await expect(second).to_be_visible(timeout=TURN_MS)
        await _replies_stored(store, cid, 2)
        await second.locator(".feedback-bad").click()
        await second.locator(".feedback-correction input").fill("The capital is Berlin.")
        await second.locator(".feedback-correction button").click()
        await browser.wait_for(
            "() => window.voicebotTest.events.filter(e => e.type === 'feedback').length >= 3"
        )
        await expect(second).to_have_attribute("data-rating", "bad")
        acks = await browser.events("feedback")
        assert all(ack["stored"] for ack in acks)
        assert browser.page_errors == [] and browser.console_errors == []
    rated = await _rated(store, cid, 2)
    assert [(feedback, correction) for _, feedback, correction in rated] == [
        ("good", ""),
        ("bad", "The capital is Berlin."),
    ]
    exported = json.dumps(list(training_examples(store, settings, feedback="good")))
    assert "The capital is Berlin." in exported and rated[0][0] in exported
    assert rated[1][0] not in exported  # the bad reply itself is never trained on
    store.close()


async def test_spoken_feedback_is_heard_and_stored(
    real_engines: Engines, settings: Settings, speech: Speech
) -> None:
    store = Store(":memory:")
    recorder = Recorder()
    session = Session(real_engines, settings, sink=recorder, store=store)
    cid = await asyncio.wait_for(session.start(), 30)
    gap = silence(2.0, 16000)
    question = silence(0.5, 16000) + speech.piper("What is the capital of Australia?") + gap
    await asyncio.wait_for(session.run(paced(question, speed=4.0)), 120)
    await asyncio.wait_for(session.wait_idle(), 60)
    await session.close()
    session = Session(real_engines, settings, sink=recorder, store=store, conversation_id=cid)
    said = silence(0.5, 16000) + speech.piper("No, that's wrong. The answer is Canberra.") + gap
    await asyncio.wait_for(session.run(paced(said, speed=4.0)), 120)
    heard = [t.text for t in recorder.of(Transcript) if t.text]
    assert len(heard) == 2, heard
    assert recorder.texts(ReplyDone)[-1] == "Thanks, I've noted the right answer."
    rated = [(t.role, t.feedback, t.correction) for t in store.rated_turns(cid)]
    assert rated[1] == ("assistant", "bad", "Canberra.")
    assert len(rated) == 2  # the feedback itself is not an exchange
    exported = json.dumps(list(training_examples(store, settings)))
    assert "Canberra." in exported
    await session.close()
