"""The websocket server with the real models: a spoken WAV in, transcript, text and audio out."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from voicebot.audio import read_audio, resample, silence, write_wav
from voicebot.config import Settings
from voicebot.engines import Engines
from voicebot.store import Store
from voicebot.transports.websocket import VoiceServer

from .conftest import Speech

pytestmark = pytest.mark.models

RATE = 16000


async def start_server(engines: Engines, settings: Settings, **server: Any) -> VoiceServer:
    settings = replace(settings, server=replace(settings.server, port=0, **server))
    instance = VoiceServer(engines, settings, Store(settings.database_path()))
    await instance.start()
    return instance


async def stream(ws: Any, pcm: bytes) -> None:
    step = 2 * RATE // 50
    start = time.perf_counter()
    for i, offset in enumerate(range(0, len(pcm), step)):
        delay = start + i * 0.02 - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await ws.send(pcm[offset : offset + step])


async def turn(
    ws: Any, pcm: bytes, on_event: Callable[[dict[str, Any]], None] | None = None
) -> list[Any]:
    """Stream an utterance (and the silence after it) and collect frames to reply_done."""
    frames: list[Any] = []
    sender = asyncio.create_task(stream(ws, pcm + silence(2.0, RATE)))
    async with asyncio.timeout(120):
        while True:
            frame = await ws.recv()
            frames.append(frame if isinstance(frame, bytes) else json.loads(frame))
            if isinstance(frames[-1], dict):
                if on_event is not None:
                    on_event(frames[-1])
                if frames[-1]["type"] == "reply_done":
                    break
    await sender
    return frames


async def test_a_spoken_wav_gets_transcript_text_and_audio_in_order(
    real_engines: Engines, speech: Speech, settings: Settings
) -> None:
    server = await start_server(real_engines, settings)
    try:
        async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
            ready = json.loads(await ws.recv())
            assert ready["type"] == "ready" and ready["sample_rate"] == 22050
            frames = await turn(ws, silence(0.5, RATE) + speech.piper("My name is Ada."))
            kinds = [f["type"] if isinstance(f, dict) else "audio" for f in frames]
            kinds = [k for k in kinds if k != "state"]
            assert kinds.index("transcript") < kinds.index("reply_text") < kinds.index("audio")
            transcript = next(
                f for f in frames if isinstance(f, dict) and f["type"] == "transcript"
            )
            assert "ada" in transcript["text"].lower()
            audio = b"".join(f for f in frames if isinstance(f, bytes))
            assert len(audio) / 2 / 22050 > 0.5
            heard = speech.engines.stt.transcribe(resample(audio, 22050, RATE)).text
            assert heard
            # The second turn uses the dialogue state of the first.
            frames = await turn(ws, speech.piper("What is my name?"))
            done = frames[-1]
            assert "ada" in done["text"].lower(), done
            await ws.send(json.dumps({"type": "stop"}))
    finally:
        await server.close()


async def test_concurrent_clients_get_their_own_answers_and_pings_flow(
    real_engines: Engines, speech: Speech, settings: Settings
) -> None:
    server = await start_server(real_engines, settings)
    # (Not France here: tiny.en hears this recording of it as "friends" with the fitted
    # encoder window, a knife-edge case; this test is about concurrency.)
    questions = ["What is the capital of Japan?", "How many legs does a spider have?"]
    expected = [("tokyo",), ("eight", "8")]
    # Made before the clients start: synthesis in the test's own loop would stall the pings.
    audio = {q: silence(0.3, RATE) + speech.piper(q) for q in questions}
    # One ordered record of what happened: pongs, and each client's transcript (its reply is
    # being generated from then) and reply_done. Order, not wall-clock time, is asserted.
    log: list[tuple[str, int]] = []
    pings_sent = 0
    clients_done = asyncio.Event()
    try:
        url = f"ws://127.0.0.1:{server.port}/ws"

        async def client(index: int, question: str) -> dict[str, Any]:
            def note(event: dict[str, Any]) -> None:
                if event["type"] in ("speech_started", "transcript", "reply_done"):
                    log.append((event["type"], index))

            async with connect(url) as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
                await ws.recv()
                frames = await turn(ws, audio[question], note)
                transcript = next(
                    f for f in frames if isinstance(f, dict) and f["type"] == "transcript"
                )
                return {"transcript": transcript["text"], "reply": frames[-1]["text"]}

        async def pinger() -> None:
            nonlocal pings_sent
            async with connect(url) as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
                await ws.recv()
                while not clients_done.is_set():
                    pings_sent += 1
                    await asyncio.wait_for(await ws.ping(), 10)
                    log.append(("pong", -1))
                    await asyncio.sleep(0.1)

        ping_task = asyncio.create_task(pinger())
        try:
            results = await asyncio.gather(*(client(i, q) for i, q in enumerate(questions)))
        finally:
            clients_done.set()
            await asyncio.wait_for(ping_task, 30)
    finally:
        await server.close()
    for result, question, words in zip(results, questions, expected, strict=True):
        topic = "japan" if "Japan" in question else "spider"
        assert topic in result["transcript"].lower(), result
        assert any(w in result["reply"].lower() for w in words), result
    pongs = [i for i, (kind, _) in enumerate(log) if kind == "pong"]
    assert len(pongs) == pings_sent  # every ping was answered
    # Pongs kept arriving while the words were heard and the replies worked and spoken. The
    # window is from the first speech_started: a reply worked during the end-of-turn silence
    # (before its transcript is sent) is ready when its transcript goes out.
    heard = min(log.index(("speech_started", index)) for index in range(len(questions)))
    done = max(log.index(("reply_done", index)) for index in range(len(questions)))
    assert sum(1 for i in pongs if heard < i < done) >= 3, log


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make a test certificate"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_serves_wss_and_https(
    real_engines: Engines, settings: Settings, tmp_path: Path
) -> None:
    import urllib.request

    cert, key = _self_signed(tmp_path)
    server = await start_server(real_engines, settings, certfile=str(cert), keyfile=str(key))
    context = ssl.create_default_context(cafile=str(cert))
    try:
        assert server.url.startswith("https://")
        async with connect(f"wss://127.0.0.1:{server.port}/ws", ssl=context) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "text", "text": "Hello!"}))
            async with asyncio.timeout(60):
                while True:
                    frame = await ws.recv()
                    if isinstance(frame, str) and json.loads(frame)["type"] == "reply_done":
                        break

        def fetch() -> int:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{server.port}/healthz", context=context, timeout=10
            ) as response:
                return int(response.status)

        assert await asyncio.to_thread(fetch) == 200
        with pytest.raises((OSError, EOFError, WebSocketException, TimeoutError)):
            async with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=3):
                pass
    finally:
        await server.close()


async def test_the_python_client_streams_a_file_and_saves_the_reply(
    real_engines: Engines, speech: Speech, settings: Settings, tmp_path: Path
) -> None:
    server = await start_server(real_engines, settings, token="s3cret")
    question, reply = tmp_path / "q.wav", tmp_path / "r.wav"
    write_wav(question, silence(0.3, RATE) + speech.piper("What is the capital of Japan?"), RATE)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "voicebot",
            "client",
            f"ws://127.0.0.1:{server.port}/ws",
            "--input",
            str(question),
            "--output",
            str(reply),
            "--token",
            "s3cret",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ},
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 180)
    finally:
        await server.close()
    assert process.returncode == 0, stderr.decode()
    out = stdout.decode()
    assert "you: What is the capital of Japan?" in out
    assert "tokyo" in out.lower()
    audio = read_audio(reply, RATE)
    assert "tokyo" in speech.engines.stt.transcribe(audio).text.lower()
