"""`voicebot wyoming` as a real process, driven by the `wyoming` package's own client.

One server process (the real embedded models) serves every test of this module. Test speech
is made by the project itself (Piper, espeak-ng); what the server says is heard back with
voicebot's own speech to text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.handle import Handled, HandledChunk
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
)
from wyoming.wake import Detect, Detection, NotDetected

from voicebot.audio import resample, silence
from voicebot.engines.base import SpeechToText
from voicebot.speech_samples import SpeechMaker

from .conftest import REPO, make_settings

pytestmark = pytest.mark.models

_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ServerProcess:
    """A running `voicebot wyoming`."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def uri(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"


def start_wyoming(tmp: Path, *extra: str) -> ServerProcess:
    """Start `voicebot wyoming` on a free port and wait until it says it is ready."""
    config = tmp / "config.toml"
    config.write_text(f'data_dir = "{tmp / "data"}"\nmodels_dir = "{REPO / "models"}"\n')
    port = free_port()
    log = tmp / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEBOT_")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "voicebot",
                "-v",
                "--config",
                str(config),
                "wyoming",
                "--uri",
                f"tcp://127.0.0.1:{port}",
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 300
    while b"Wyoming server ready" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return ServerProcess(process, port, log)


def stop(server: ServerProcess) -> None:
    """SIGTERM, and make sure it is gone."""
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One `voicebot wyoming` for the module."""
    running = start_wyoming(tmp_path_factory.mktemp("wyoming"))
    yield running
    stop(running)


@pytest.fixture(scope="module")
def maker() -> SpeechMaker:
    """Piper with its noise off (the same recordings every run), and espeak-ng."""
    return SpeechMaker.load(REPO / "models")


@pytest.fixture(scope="module")
def stt(tmp_path_factory: pytest.TempPathFactory) -> SpeechToText:
    """voicebot's own speech to text, to hear the server's speech."""
    from voicebot.engines import load_stt

    return load_stt(make_settings(tmp_path_factory.mktemp("stt")))


async def connect(server: ServerProcess) -> AsyncTcpClient:
    client = AsyncTcpClient("127.0.0.1", server.port)
    await client.connect()
    return client


async def read(client: AsyncTcpClient) -> Event:
    async with asyncio.timeout(_TIMEOUT_S):
        event = await client.read_event()
    assert event is not None, "the server closed the connection"
    return event


async def read_until(client: AsyncTcpClient, kind: str) -> list[Event]:
    """Events up to and including the first of type ``kind``."""
    events = []
    while True:
        event = await read(client)
        events.append(event)
        if event.type == kind:
            return events


async def send_audio(client: AsyncTcpClient, pcm: bytes, rate: int, chunk_samples: int = 1024):
    await client.write_event(AudioStart(rate=rate, width=2, channels=1).event())
    for offset in range(0, len(pcm), 2 * chunk_samples):
        piece = pcm[offset : offset + 2 * chunk_samples]
        await client.write_event(AudioChunk(rate=rate, width=2, channels=1, audio=piece).event())
    await client.write_event(AudioStop().event())


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[AsyncTcpClient]:
    connection = await connect(server)
    yield connection
    await connection.disconnect()


def words(text: str) -> set[str]:
    return {w.strip(".,!?'\"").lower() for w in text.split()} - {""}


async def test_describe_lists_the_four_programs(client: AsyncTcpClient) -> None:
    await client.write_event(Describe().event())
    info = Info.from_event((await read_until(client, "info"))[-1])
    assert [p.name for p in info.asr] == ["voicebot-asr"]
    assert info.asr[0].models[0].name == "whisper-tiny.en"
    assert info.asr[0].supports_transcript_streaming
    assert [v.name for v in info.tts[0].voices] == ["piper-en_US-joe-medium"]
    assert info.tts[0].supports_synthesize_streaming
    assert {m.name for m in info.wake[0].models} == {
        "okay_nabu",
        "hey_jarvis",
        "alexa",
        "hey_mycroft",
    }
    assert info.handle[0].supports_handled_streaming
    assert info.handle[0].name == "voicebot"


async def test_a_spoken_question_is_transcribed(client: AsyncTcpClient, maker: SpeechMaker) -> None:
    pcm = silence(0.3, 16000) + maker.piper("What is the capital of France?") + silence(0.3, 16000)
    await client.write_event(Transcribe(language="en").event())
    await send_audio(client, pcm, 16000)
    events = await read_until(client, "transcript")
    kinds = [e.type for e in events]
    assert kinds == ["transcript-start", "transcript-chunk", "transcript-stop", "transcript"]
    assert TranscriptStart.is_type(kinds[0]) and TranscriptStop.is_type(kinds[2])
    text = Transcript.from_event(events[-1]).text
    assert TranscriptChunk.from_event(events[1]).text == text
    assert {"capital", "france"} <= words(text), text


async def test_a_question_streamed_in_real_time_is_transcribed_once_it_ends(
    client: AsyncTcpClient, maker: SpeechMaker
) -> None:
    # As Home Assistant streams: real time, audio-stop after its own end-of-speech silence.
    # The transcript is made in the silence; it must be the whole question.
    speech = maker.piper("What time does the bakery open tomorrow?") + silence(1.0, 16000)
    await client.write_event(Transcribe(language="en").event())
    await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
    step = 2 * 1024
    for offset in range(0, len(speech), step):
        chunk = AudioChunk(rate=16000, width=2, channels=1, audio=speech[offset : offset + step])
        await client.write_event(chunk.event())
        await asyncio.sleep(1024 / 16000)
    await client.write_event(AudioStop().event())
    text = Transcript.from_event((await read_until(client, "transcript"))[-1]).text
    assert {"time", "bakery", "open", "tomorrow"} <= words(text), text


async def test_audio_at_another_rate_and_in_stereo_is_converted(
    client: AsyncTcpClient, maker: SpeechMaker
) -> None:
    mono = resample(maker.piper("Turn on the kitchen lights."), 16000, 44100)
    stereo = b"".join(mono[i : i + 2] * 2 for i in range(0, len(mono), 2))
    await client.write_event(Transcribe().event())
    await client.write_event(AudioStart(rate=44100, width=2, channels=2).event())
    for offset in range(0, len(stereo), 4096):
        chunk = AudioChunk(rate=44100, width=2, channels=2, audio=stereo[offset : offset + 4096])
        await client.write_event(chunk.event())
    await client.write_event(AudioStop().event())
    text = Transcript.from_event((await read_until(client, "transcript"))[-1]).text
    assert {"kitchen", "lights"} <= words(text), text


async def _heard(events: list[Event], stt: SpeechToText) -> str:
    starts = [AudioStart.from_event(e) for e in events if e.type == "audio-start"]
    assert starts, [e.type for e in events]
    rate = starts[0].rate
    pcm = b"".join(AudioChunk.from_event(e).audio for e in events if e.type == "audio-chunk")
    assert len(pcm) > rate  # over half a second of speech
    return (await asyncio.to_thread(stt.transcribe, resample(pcm, rate, 16000))).text


async def test_a_synthesized_sentence_is_heard_back(
    client: AsyncTcpClient, stt: SpeechToText
) -> None:
    await client.write_event(
        Synthesize(text="The quick brown fox jumps over the lazy dog.").event()
    )
    events = await read_until(client, "audio-stop")
    assert events[0].type == "audio-start"
    heard = await _heard(events, stt)
    # Piper's voice varies a little from run to run (its noise): tiny.en once heard "quit".
    assert len({"quick", "brown", "fox", "lazy", "dog"} & words(heard)) >= 4, heard


async def test_streamed_text_is_spoken_sentence_by_sentence(
    client: AsyncTcpClient, stt: SpeechToText
) -> None:
    await client.write_event(SynthesizeStart().event())
    for piece in ("Good morn", "ing to you. The weather ", "is sunny today."):
        await client.write_event(SynthesizeChunk(text=piece).event())
    # Home Assistant also sends the whole text, for servers that do not stream: ignored.
    await client.write_event(
        Synthesize(text="Good morning to you. The weather is sunny today.").event()
    )
    await client.write_event(SynthesizeStop().event())
    events = await read_until(client, "synthesize-stopped")
    assert SynthesizeStopped.is_type(events[-1].type)
    assert [e.type for e in events].count("audio-start") == 2  # one per sentence
    heard = await _heard(events, stt)
    assert {"morning", "weather", "sunny"} <= words(heard), heard


async def test_handle_answers_and_remembers_per_conversation(client: AsyncTcpClient) -> None:
    async def ask(text: str, conversation_id: str) -> tuple[str, list[Event]]:
        context = {"conversation_id": conversation_id}
        await client.write_event(Transcript(text=text, context=context).event())
        events = await read_until(client, "handled")
        handled = Handled.from_event(events[-1])
        assert handled.context == context
        return handled.text or "", events

    answer, events = await ask("What is 17 plus 25?", "ha-1")
    assert "42" in answer or "forty-two" in answer.lower(), answer
    chunks = "".join(HandledChunk.from_event(e).text for e in events if e.type == "handled-chunk")
    assert chunks.strip() == answer.strip()
    await ask("My name is Priya and I live in Lyon.", "ha-1")
    answer, _ = await ask("What is my name?", "ha-1")
    assert "priya" in answer.lower(), answer
    answer, _ = await ask("What is my name?", "ha-2")  # another conversation
    assert "priya" not in answer.lower(), answer


async def test_the_wake_word_is_detected_and_silence_is_not(
    client: AsyncTcpClient, maker: SpeechMaker
) -> None:
    wake = silence(0.5, 16000) + maker.espeak("okay nabu", words_per_minute=140)
    await client.write_event(Detect(names=["okay_nabu"]).event())
    await send_audio(client, wake + silence(1.0, 16000), 16000)
    detection = await read_until(client, "detection")
    assert Detection.from_event(detection[-1]).name == "okay_nabu"
    await client.write_event(Detect(names=["okay_nabu"]).event())
    await send_audio(client, silence(2.0, 16000), 16000)
    assert NotDetected.is_type((await read(client)).type)


async def _describes(server: ServerProcess) -> bool:
    """A fresh client is still served."""
    fresh = await connect(server)
    try:
        await fresh.write_event(Describe().event())
        return (await read_until(fresh, "info"))[-1].type == "info"
    finally:
        await fresh.disconnect()


async def test_bad_input_gets_an_error_and_the_server_keeps_serving(
    server: ServerProcess, client: AsyncTcpClient
) -> None:
    await client.write_event(Event(type="make-coffee", data={"sugar": 2}))
    assert Error.from_event(await read(client)).code == "unknown_event"
    await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(640)).event())
    assert Error.from_event(await read(client)).code == "not_started"
    await client.write_event(Transcribe().event())
    await client.write_event(AudioStart(rate=4000, width=2, channels=1).event())
    error = Error.from_event(await read(client))
    assert error.code == "bad_rate" and "4000" in error.text
    await client.write_event(AudioStart(rate=16000, width=1, channels=1).event())
    assert Error.from_event(await read(client)).code == "bad_audio"
    # The same connection still works after each mistake.
    await client.write_event(Describe().event())
    assert (await read_until(client, "info"))[-1].type == "info"

    # 10 MB in one payload: an error, then the connection is closed.
    big = await connect(server)
    huge = Event(
        type="audio-chunk",
        data={"rate": 16000, "width": 2, "channels": 1},
        payload=bytes(10_000_000),
    )

    async def send_huge() -> None:
        with contextlib.suppress(ConnectionError):
            await big.write_event(huge)

    sending = asyncio.create_task(send_huge())
    async with asyncio.timeout(_TIMEOUT_S):
        first = await big.read_event()
        assert first is not None and Error.from_event(first).code == "too_big"
        assert await big.read_event() is None
        await sending
    await big.disconnect()

    # A client that vanishes in the middle of its audio.
    gone = await connect(server)
    await gone.write_event(Transcribe().event())
    await gone.write_event(AudioStart(rate=16000, width=2, channels=1).event())
    await gone.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(32000)).event())
    assert gone._writer is not None
    gone._writer.transport.abort()
    assert await _describes(server)


async def test_connections_beyond_the_per_address_limit_are_refused(
    server: ServerProcess,
) -> None:
    clients = [await connect(server) for _ in range(8)]
    try:
        for connection in clients:  # all eight are served
            await connection.write_event(Describe().event())
            assert (await read_until(connection, "info"))[-1].type == "info"
        ninth = await connect(server)
        async with asyncio.timeout(_TIMEOUT_S):
            refused = await ninth.read_event()
            assert refused is not None and Error.from_event(refused).code == "server_full"
            assert await ninth.read_event() is None
        await ninth.disconnect()
    finally:
        for connection in clients:
            await connection.disconnect()
    await asyncio.sleep(0.5)  # the server notices the closed connections
    assert await _describes(server)
