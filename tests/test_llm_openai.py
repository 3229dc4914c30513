"""``[llm] backend = "openai"`` against a real OpenAI-compatible server: llama-cpp-python's
``llama_cpp.server`` serving the embedded GGUF (installed by ``make test`` into
``.venv-llm-server``), plus raw sockets for a server that hangs or answers garbage."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from voicebot.audio import silence
from voicebot.config import Settings
from voicebot.engines import Engines, load_llm
from voicebot.engines.llm_openai import OpenAIChat, estimate_tokens
from voicebot.errors import LlmUnavailableError
from voicebot.transports.websocket import VoiceServer

from .conftest import REPO, Speech, make_settings, voice_server
from .test_server import send_speech

pytestmark = pytest.mark.models

RATE = 16000
SERVER_PYTHON = REPO / ".venv-llm-server" / "bin" / "python"
GGUF = next((REPO / "models" / "smollm2-135m-instruct").glob("*.gguf"), None)
MODEL_NAME = "smollm2-135m-instruct"
KEY = "s3cret-key"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LlmServer:
    """A real ``llama_cpp.server`` process on the embedded GGUF, restartable on its port."""

    def __init__(self, log: Path) -> None:
        assert SERVER_PYTHON.exists(), "run `make test` (it installs .venv-llm-server)"
        assert GGUF is not None, "the embedded chat model is not pulled"
        self.port = free_port()
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        command = [
            str(SERVER_PYTHON),
            "-m",
            "llama_cpp.server",
            "--model",
            str(GGUF),
            "--model_alias",
            MODEL_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "1",
            "--api_key",
            KEY,
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)  # noqa: S603
        deadline = time.monotonic() + 120
        while True:
            request = urllib.request.Request(
                f"{self.base_url}/models", headers={"Authorization": f"Bearer {KEY}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=2):
                    return
            except OSError:
                assert self.process.poll() is None, self.log.read_text()[-2000:]
                assert time.monotonic() < deadline, "llama_cpp.server did not start"
                time.sleep(0.2)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlmServer]:
    server = LlmServer(tmp_path_factory.mktemp("llm-server") / "server.log")
    server.start()
    yield server
    server.kill()


def openai_settings(tmp_path: Path, server: LlmServer, **llm: Any) -> Settings:
    config = (
        f'[llm]\nbackend = "openai"\nbase_url = "{server.base_url}"\nmodel = "{MODEL_NAME}"\n'
        "timeout_s = 10\n"
    )
    settings = make_settings(tmp_path, config)
    return replace(
        settings,
        llm=replace(settings.llm, api_key=KEY, **llm),
        server=replace(settings.server, port=0),
    )


async def next_of(ws: ClientConnection, kinds: set[str], timeout_s: float = 120) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            frame = await ws.recv()
            if isinstance(frame, str):
                event: dict[str, Any] = json.loads(frame)
                if event["type"] in kinds:
                    return event


async def session(server: VoiceServer) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=10)
    await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
    await next_of(ws, {"ready"})
    return ws


@pytest.fixture
def openai_engines(
    real_engines: Engines, llm_server: LlmServer, tmp_path: Path
) -> Iterator[tuple[Engines, OpenAIChat, Settings]]:
    settings = openai_settings(tmp_path, llm_server)
    chat = load_llm(settings)
    assert isinstance(chat, OpenAIChat)
    engines = Engines(
        stt=real_engines.stt, llm=chat, tts=real_engines.tts, vad_factory=real_engines.vad_factory
    )
    yield engines, chat, settings
    engines.close()


def test_the_local_tokenizer_of_the_named_model_counts_exactly(
    llm_server: LlmServer, tmp_path: Path, real_engines: Engines
) -> None:
    chat = load_llm(openai_settings(tmp_path, llm_server))
    assert isinstance(chat, OpenAIChat) and chat.token_counting == "exact"
    messages = [
        {"role": "system", "content": "You are a helpful voice assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    # The in-process engine reads the same GGUF with the same template.
    assert chat.count_tokens(messages) == real_engines.llm.count_tokens(messages)
    other = load_llm(openai_settings(tmp_path, llm_server), reference="qwen2.5:1.5b")
    assert isinstance(other, OpenAIChat) and other.token_counting == "estimate"
    assert other.count_tokens(messages) == estimate_tokens(messages)


async def test_a_spoken_question_is_answered_by_the_server(
    openai_engines: tuple[Engines, OpenAIChat, Settings], speech: Speech
) -> None:
    engines, _, settings = openai_engines
    async with voice_server(engines, settings) as server:
        ws = await session(server)
        question = silence(0.3, RATE) + speech.piper("What is the capital of France?")
        await send_speech(ws, question + silence(1.5, RATE))
        transcript = await next_of(ws, {"transcript"})
        assert "france" in transcript["text"].lower()
        done = await next_of(ws, {"reply_done", "error"})
        assert done["type"] == "reply_done" and "paris" in done["text"].lower(), done
        metrics = await next_of(ws, {"metrics"})
        assert metrics["ms"]["llm_first_token"] > 0  # measured like the local engines'
        await ws.close()


async def test_a_barge_in_closes_the_stream(
    openai_engines: tuple[Engines, OpenAIChat, Settings],
) -> None:
    engines, chat, settings = openai_engines
    settings = replace(settings, llm=replace(settings.llm, max_sentences=0, max_new_tokens=200))
    closed: list[int] = []
    original = chat.stream

    def counting(messages: Any, cancel: threading.Event) -> Iterator[str]:
        count = 0
        try:
            for piece in original(messages, cancel):
                count += 1
                yield piece
        finally:
            closed.append(count)

    chat.stream = counting  # type: ignore[method-assign]
    async with voice_server(engines, settings) as server:
        ws = await session(server)
        await ws.send(json.dumps({"type": "text", "text": "Tell me a long story about a dragon."}))
        await next_of(ws, {"reply_text"})
        await ws.send(json.dumps({"type": "interrupt"}))
        await next_of(ws, {"interrupted"})
        async with asyncio.timeout(30):
            while not closed:  # noqa: ASYNC110 - the worker thread closes it
                await asyncio.sleep(0.02)
        # Closed early: far fewer pieces than the 200 tokens it was allowed.
        assert closed[0] < 150, closed
        # The model is free at once for the next turn.
        await ws.send(json.dumps({"type": "text", "text": "What is the capital of France?"}))
        done = await next_of(ws, {"reply_done", "error"})
        assert done["type"] == "reply_done" and "paris" in done["text"].lower(), done
        await ws.close()


async def test_the_server_killed_mid_reply_gives_an_error_and_an_apology_then_it_answers_again(
    real_engines: Engines, tmp_path: Path
) -> None:
    server_process = LlmServer(tmp_path / "own-server.log")  # its own: this test kills it
    server_process.start()
    settings = openai_settings(tmp_path, server_process)
    settings = replace(settings, llm=replace(settings.llm, max_sentences=0, max_new_tokens=200))
    chat = load_llm(settings)
    engines = Engines(
        stt=real_engines.stt, llm=chat, tts=real_engines.tts, vad_factory=real_engines.vad_factory
    )
    try:
        async with voice_server(engines, settings) as server:
            ws = await session(server)
            await ws.send(
                json.dumps({"type": "text", "text": "Tell me a long story about a dragon."})
            )
            await next_of(ws, {"reply_text"})
            server_process.kill()  # mid-reply
            error = await next_of(ws, {"error"})
            assert error["code"] == "llm_unavailable", error
            apology = await next_of(ws, {"reply_text"})
            assert apology["text"].startswith("Sorry, I can't reach my language model")

            # Still down: the next turn fails the same way, and the session lives on.
            await ws.send(json.dumps({"type": "text", "text": "Are you there?"}))
            error = await next_of(ws, {"error"})
            assert error["code"] == "llm_unavailable" and "cannot reach" in error["message"]

            server_process.start()  # back, on the same port
            await ws.send(json.dumps({"type": "text", "text": "What is the capital of France?"}))
            done = await next_of(ws, {"reply_done", "error"})
            assert done["type"] == "reply_done" and "paris" in done["text"].lower(), done
            await ws.close()
    finally:
        engines.close()
        server_process.kill()


def test_a_refused_key_is_an_unavailable_server_with_its_reason(llm_server: LlmServer) -> None:
    chat = OpenAIChat(MODEL_NAME, base_url=llm_server.base_url, api_key="wrong")
    with pytest.raises(LlmUnavailableError, match="refused the API key"):
        list(chat.stream([{"role": "user", "content": "Hi"}], threading.Event()))


def _serve_once(handler: Any) -> tuple[int, threading.Thread]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def run() -> None:
        with listener:
            connection, _ = listener.accept()
            with connection:
                handler(connection)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return int(listener.getsockname()[1]), thread


def test_a_server_that_does_not_answer_times_out() -> None:
    release = threading.Event()

    def hang(connection: socket.socket) -> None:
        connection.recv(65536)
        release.wait(30)

    port, thread = _serve_once(hang)
    chat = OpenAIChat(MODEL_NAME, base_url=f"http://127.0.0.1:{port}/v1", timeout_s=1.0)
    try:
        with pytest.raises(LlmUnavailableError, match="did not answer within 1 s"):
            list(chat.stream([{"role": "user", "content": "Hi"}], threading.Event()))
    finally:
        release.set()
        thread.join(30)


@pytest.mark.parametrize(
    "body",
    [
        b"data: this is not json\n\n",
        b'data: {"choices": [{"delta": {"content": 42}}]}\n\n',
        b"<html>a proxy's error page</html>",
    ],
)
def test_garbage_from_the_server_is_an_unavailable_server(body: bytes) -> None:
    def garbage(connection: socket.socket) -> None:
        connection.recv(65536)
        connection.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )

    port, thread = _serve_once(garbage)
    chat = OpenAIChat(MODEL_NAME, base_url=f"http://127.0.0.1:{port}/v1", timeout_s=5.0)
    with pytest.raises(LlmUnavailableError):
        list(chat.stream([{"role": "user", "content": "Hi"}], threading.Event()))
    thread.join(30)
