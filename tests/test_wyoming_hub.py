"""The satellite hub against a scripted satellite (the `wyoming` package's own server).

The satellite heard its wake word itself, so it asks for `asr` to `tts` and streams the
question: the hub must send the transcript and the spoken reply, and keep the conversation
across two wake-ups (the real wyoming-satellite, which asks for remote wake detection, is
in test_wyoming_satellite.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from wyoming.asr import Transcript
from wyoming.audio import AudioChunk
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, Satellite
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.satellite import RunSatellite
from wyoming.server import AsyncEventHandler, AsyncServer
from wyoming.tts import Synthesize

from voicebot.audio import silence
from voicebot.engines import Engines
from voicebot.store import Store
from voicebot.transports.wyoming_hub import SatelliteHub
from voicebot.transports.wyoming_server import WyomingApp, WyomingOptions

from .conftest import Speech, make_settings
from .test_wyoming import free_port

pytestmark = pytest.mark.models


class ScriptedSatellite:
    """Answers describe, and on run-satellite asks one question per wake-up."""

    def __init__(self, questions: list[bytes]) -> None:
        self.questions = questions
        self.received: list[list[Event]] = [[] for _ in questions]
        self.answered = [asyncio.Event() for _ in questions]
        self._turn = 0

    def handler(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> AsyncEventHandler:
        satellite = self

        class Handler(AsyncEventHandler):
            async def handle_event(self, event: Event) -> bool:
                if Describe.is_type(event.type):
                    info = Info(
                        satellite=Satellite(
                            name="scripted",
                            description="scripted",
                            attribution=Attribution(name="", url=""),
                            installed=True,
                            version=None,
                        )
                    )
                    await self.write_event(info.event())
                elif RunSatellite.is_type(event.type):
                    await satellite.ask(self)
                elif satellite._turn < len(satellite.questions):
                    turn = satellite._turn
                    satellite.received[turn].append(event)
                    if event.type == "audio-stop":
                        satellite.answered[turn].set()
                        satellite._turn += 1
                        if satellite._turn < len(satellite.questions):
                            await satellite.ask(self)  # the next wake-up
                return True

        return Handler(reader, writer)

    async def ask(self, handler: AsyncEventHandler) -> None:
        pcm = self.questions[self._turn]
        await handler.write_event(
            RunPipeline(start_stage=PipelineStage.ASR, end_stage=PipelineStage.TTS).event()
        )
        for offset in range(0, len(pcm), 2048):
            chunk = AudioChunk(rate=16000, width=2, channels=1, audio=pcm[offset : offset + 2048])
            await handler.write_event(chunk.event())


async def test_a_local_wake_satellite_is_answered_and_remembered_across_wake_ups(
    real_engines: Engines, speech: Speech, tmp_path: Path
) -> None:
    questions = [
        silence(0.3, 16000) + speech.piper(text) + silence(2.0, 16000)
        for text in ("My name is Tom.", "What is my name?")
    ]
    satellite = ScriptedSatellite(questions)
    port = free_port()
    server = AsyncServer.from_uri(f"tcp://127.0.0.1:{port}")
    await server.start(satellite.handler)
    settings = make_settings(tmp_path)
    store = Store(settings.database_path())
    app = WyomingApp(real_engines, settings, store, WyomingOptions(wake_words=("okay_nabu",)))
    await app.start()
    hub = SatelliteHub(app)
    try:
        hub.add(f"tcp://127.0.0.1:{port}")
        async with asyncio.timeout(120):
            for answered in satellite.answered:
                await answered.wait()
    finally:
        await hub.close()
        await app.close()
        await server.stop()
        store.close()

    first, second = satellite.received
    kinds = [e.type for e in first]
    assert kinds.index("voice-started") < kinds.index("voice-stopped") < kinds.index("transcript")
    assert kinds.index("transcript") < kinds.index("audio-start") < kinds.index("audio-stop")
    assert "tom" in Transcript.from_event(first[kinds.index("transcript")]).text.lower()
    assert sum(len(AudioChunk.from_event(e).audio) for e in first if e.type == "audio-chunk") > 0
    heard = Transcript.from_event(next(e for e in second if e.type == "transcript")).text
    assert "name" in heard.lower(), heard
    said = " ".join(Synthesize.from_event(e).text for e in second if e.type == "synthesize")
    assert "tom" in said.lower(), said
