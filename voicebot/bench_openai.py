"""Time to first token: ``[llm] backend = "openai"`` against the in-process llama.cpp engine.

Both run the same GGUF with one thread: the in-process :class:`LlamaCppChat`, and
llama-cpp-python's OpenAI-compatible ``llama_cpp.server`` on the loopback through
:class:`OpenAIChat` (an HTTP request and a server-sent event stream in between). Questions
alternate between the two, one at a time, so each runs on an otherwise idle machine.

    python -m voicebot.bench_openai --server-python .venv-llm-server/bin/python
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .engines.base import ChatModel, Message

__all__ = ["main", "first_token_ms"]

_SYSTEM = "You are a helpful voice assistant. Answer in one short sentence."
_QUESTIONS = (
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What colour is the sky on a clear day?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?",
)


def first_token_ms(chat: ChatModel, messages: Sequence[Message]) -> float:
    """Milliseconds from asking to the first fragment of the reply (the rest is dropped)."""
    cancel = threading.Event()
    start = time.perf_counter()
    stream = chat.stream(messages, cancel)
    try:
        next(iter(stream))
        return (time.perf_counter() - start) * 1000
    finally:
        cancel.set()
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; prints a JSON summary."""
    from .engines.llm_llamacpp import LlamaCppChat, find_gguf
    from .engines.llm_openai import OpenAIChat

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server-python", default=".venv-llm-server/bin/python")
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    gguf = find_gguf(Path(args.model))
    port = _free_port()
    server = subprocess.Popen(  # noqa: S603 - our own arguments
        [
            args.server_python,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--model_alias",
            "bench",
            "--port",
            str(port),
            "--n_threads",
            "1",
            "--n_ctx",
            "2048",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2):  # noqa: S310
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("llama_cpp.server did not start") from None
                time.sleep(0.2)
        engines: dict[str, ChatModel] = {
            "llama-cpp in-process": LlamaCppChat(gguf, threads=1, max_new_tokens=8),
            "openai (llama_cpp.server)": OpenAIChat("bench", base_url=base_url, max_new_tokens=8),
        }
        times: dict[str, list[float]] = {name: [] for name in engines}
        for chat in engines.values():  # warm-up: lazy initialisation, the system prompt
            first_token_ms(chat, [{"role": "system", "content": _SYSTEM}, *_user("Hello")])
        for _ in range(args.rounds):
            for question in _QUESTIONS:
                messages: list[Message] = [
                    {"role": "system", "content": _SYSTEM},
                    *_user(question),
                ]
                for name, chat in engines.items():
                    times[name].append(first_token_ms(chat, messages))
        summary = {
            name: {
                "runs": len(values),
                "p50_ms": round(statistics.median(values), 1),
                "p90_ms": round(sorted(values)[int(0.9 * (len(values) - 1))], 1),
                "min_ms": round(min(values), 1),
            }
            for name, values in times.items()
        }
        print(json.dumps(summary, indent=2))
    finally:
        server.kill()
        server.wait(30)
    return 0


def _user(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


if __name__ == "__main__":
    raise SystemExit(main())
