"""The browser shows what the conversation remembers about the user, and forgets on a click.

A real headless Chromium and a real server with the embedded models (tests/test_browser.py
has the machinery); the facts come from a typed statement.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from playwright.async_api import expect

from voicebot.audio import silence, write_wav
from voicebot.config import Settings
from voicebot.engines import Engines
from voicebot.store import Store

from .test_browser import (
    STEP_MS,
    TURN_MS,
    chromium,
    fake_mic_args,
    page_url,
    running_server,
)

pytestmark = [pytest.mark.browser, pytest.mark.models]


@pytest.fixture
def quiet_mic(tmp_path: Path) -> Path:
    path = tmp_path / "silence.wav"
    write_wav(path, silence(2.0, 16000), 16000)
    return path


async def test_remembered_facts_are_listed_and_one_is_forgotten_with_its_button(
    real_engines: Engines, settings: Settings, store: Store, quiet_mic: Path
) -> None:
    settings = dataclasses.replace(settings, llm=dataclasses.replace(settings.llm, max_sentences=1))
    async with (
        asyncio.timeout(240),
        running_server(real_engines, settings, store) as server,
        chromium(fake_mic_args(quiet_mic)) as browser,
    ):
        page = browser.page
        await page.goto(page_url(server), timeout=STEP_MS)
        await page.click("#start", timeout=STEP_MS)
        memory = page.locator("#memory")
        facts = page.locator("#fact-list .fact-text")
        await expect(page.locator("#conversation-label")).to_contain_text("Conversation")
        await expect(memory).to_be_hidden()  # nothing remembered yet
        await page.fill("#text", "I'm Ada and I live in Lyon.", timeout=STEP_MS)
        await page.press("#text", "Enter", timeout=STEP_MS)
        await expect(facts).to_have_text(
            ["Your name is Ada.", "You live in Lyon."], timeout=TURN_MS
        )
        await expect(memory).to_be_visible()

        await page.click("#fact-list .fact[data-key='home'] .forget-fact", timeout=STEP_MS)
        await expect(facts).to_have_text(["Your name is Ada."], timeout=STEP_MS)
        cid = await page.locator("#conversation-label").get_attribute("data-conversation-id")
        assert cid and store.facts(cid) == {"name": "Ada"}

        # A reload resumes the conversation: the deletion held, the name is still there.
        await page.reload(timeout=STEP_MS)
        await page.click("#start", timeout=STEP_MS)
        await expect(facts).to_have_text(["Your name is Ada."], timeout=TURN_MS)
        assert browser.page_errors == []
        assert browser.console_errors == []
