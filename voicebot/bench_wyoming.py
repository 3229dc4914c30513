"""``voicebot bench --wyoming``: voicebot's Wyoming server against the reference servers.

Side by side, on the same model files, the same recordings and through the same client (the
``wyoming`` package's): voicebot's ``asr`` against ``wyoming-faster-whisper`` (time from
``audio-stop`` to the ``transcript``) and voicebot's ``tts`` against ``wyoming-piper`` (time
from ``synthesize`` to the first ``audio-chunk``, and to ``audio-stop``). The reference
servers are installed from PyPI into a throwaway environment (``.venv-bench-wyoming``) and
pointed at voicebot's own model files, so nothing is downloaded from a model hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe
from wyoming.tts import Synthesize

from .config import Settings
from .engines import model_manager, resolve_model

__all__ = ["QUESTIONS", "REFERENCE_PACKAGES", "format_table", "run"]

REFERENCE_PACKAGES = ("wyoming-faster-whisper==3.8.1", "wyoming-piper==2.5.2")
"""The reference servers, pinned so runs compare the same code."""

QUESTIONS = (
    "What is the weather like in Paris today?",
    "Set a timer for ten minutes.",
    "Who wrote the novel Pride and Prejudice?",
    "Turn off the lights in the living room please.",
    "How far is the moon from the earth?",
    "Remind me to call my sister tomorrow morning.",
)
"""Recorded (Piper) for the speech-to-text runs, and spoken in the text-to-speech runs."""

_START_TIMEOUT_S = 300.0
_TRAILING_S = 0.8
"""Silence after each question in the real-time run: a client's end-of-speech wait."""


def _silence_s(seconds: float) -> bytes:
    return bytes(2 * round(16000 * seconds))


def run(
    settings: Settings,
    log: Callable[[str], None],
    *,
    repeats: int = 3,
    venv: Path = Path(".venv-bench-wyoming"),
) -> dict[str, Any]:
    """Measure both pairs of servers; returns the results (see :func:`format_table`)."""
    from .bench import _machine
    from .engines._hardware import physical_cores
    from .speech_samples import SpeechMaker

    manager = model_manager(settings)
    stt_path = Path(resolve_model(settings.stt.model, "stt", manager))
    voice_path = Path(resolve_model(settings.tts.voice, "tts", manager))
    python = _reference_environment(venv, log)
    threads = settings.stt.cpu_threads or physical_cores()
    maker = SpeechMaker.load(manager.root)
    recordings = [maker.piper(text) for text in QUESTIONS]
    with tempfile.TemporaryDirectory(prefix="voicebot-bench-wyoming-") as tmp:
        work = Path(tmp)
        config = work / "config.toml"
        config.write_text(f'data_dir = "{work / "data"}"\nmodels_dir = "{manager.root}"\n')
        voicebot_port, whisper_port, piper_port = _free_port(), _free_port(), _free_port()
        servers = {
            "voicebot": [
                sys.executable,
                "-m",
                "voicebot",
                "--config",
                str(config),
                "wyoming",
                "--uri",
                f"tcp://127.0.0.1:{voicebot_port}",
                "--stt-model",
                str(stt_path),
                "--voice",
                str(voice_path),
            ],
            "wyoming-faster-whisper": [
                str(python),
                "-m",
                "wyoming_faster_whisper",
                "--uri",
                f"tcp://127.0.0.1:{whisper_port}",
                "--model",
                str(stt_path),
                "--data-dir",
                str(work / "whisper"),
                "--local-files-only",
                "--language",
                settings.stt.language or "en",
                "--beam-size",
                str(settings.stt.beam_size),
                "--compute-type",
                "int8",
                "--cpu-threads",
                str(threads),
            ],
            "wyoming-piper": [
                str(python),
                "-m",
                "wyoming_piper",
                "--uri",
                f"tcp://127.0.0.1:{piper_port}",
                "--voice",
                voice_path.stem,
                "--data-dir",
                str(voice_path.parent),
            ],
        }
        ports = {"voicebot": voicebot_port, "wyoming-faster-whisper": whisper_port}
        ports["wyoming-piper"] = piper_port
        with _processes(servers, work, log) as ready:
            ready()
            log("servers ready; measuring")
            results = asyncio.run(_measure(ports, recordings, repeats, log))
    return {
        "machine": _machine(),
        "stt_model": str(stt_path),
        "voice": str(voice_path),
        "stt_threads": threads,
        "beam_size": settings.stt.beam_size,
        "repeats": repeats,
        "recordings": len(recordings),
        "results": results,
    }


def _reference_environment(venv: Path, log: Callable[[str], None]) -> Path:
    """The throwaway environment's python, creating it (from PyPI) the first time."""
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = " ".join(REFERENCE_PACKAGES)
    if not stamp.exists() or stamp.read_text().strip() != wanted:
        log(f"installing {wanted} into {venv} (once)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REFERENCE_PACKAGES], check=True)
        stamp.write_text(wanted + "\n")
    return python


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def _processes(
    commands: dict[str, list[str]], work: Path, log: Callable[[str], None]
) -> Iterator[Callable[[], None]]:
    """Start every server; the yielded function waits until each accepts ``describe``."""
    running: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEBOT_")}
    try:
        for name, command in commands.items():
            logs[name] = work / f"{name}.log"
            with logs[name].open("wb") as out:
                running[name] = subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, env=env
                )

        def ready() -> None:
            for name, command in commands.items():
                port = int(command[command.index("--uri") + 1].rsplit(":", 1)[1])
                deadline = time.monotonic() + _START_TIMEOUT_S
                while not asyncio.run(_describes(port)):
                    if running[name].poll() is not None or time.monotonic() > deadline:
                        tail = logs[name].read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"{name} did not start:\n{tail}")
                    time.sleep(0.5)
                log(f"{name} is serving")

        yield ready
    finally:
        for process in running.values():
            process.terminate()
        for process in running.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


async def _describes(port: int) -> bool:
    client = AsyncTcpClient("127.0.0.1", port)
    try:
        async with asyncio.timeout(5):
            await client.connect()
            await client.write_event(Describe().event())
            while (event := await client.read_event()) is not None:
                if event.type == "info":
                    return True
    except (OSError, TimeoutError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()
    return False


async def _transcribe(port: int, pcm: bytes, *, realtime: bool = False) -> tuple[float, str]:
    """Seconds from audio-stop to the transcript, and its text.

    ``realtime`` streams the audio at its own pace, as Home Assistant does (else at once).
    """
    client = AsyncTcpClient("127.0.0.1", port)
    await client.connect()
    try:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        for offset in range(0, len(pcm), 2048):
            chunk = AudioChunk(rate=16000, width=2, channels=1, audio=pcm[offset : offset + 2048])
            await client.write_event(chunk.event())
            if realtime:
                await asyncio.sleep(1024 / 16000)
        await client.write_event(AudioStop().event())
        sent = time.perf_counter()
        async with asyncio.timeout(120):
            while (event := await client.read_event()) is not None:
                if Transcript.is_type(event.type):
                    return time.perf_counter() - sent, Transcript.from_event(event).text
        raise ConnectionError("closed before the transcript")
    finally:
        await client.disconnect()


async def _synthesize(port: int, text: str) -> tuple[float, float]:
    """Seconds from synthesize to the first audio chunk, and to audio-stop."""
    client = AsyncTcpClient("127.0.0.1", port)
    await client.connect()
    try:
        await client.write_event(Synthesize(text=text).event())
        sent = time.perf_counter()
        first = 0.0
        async with asyncio.timeout(120):
            while (event := await client.read_event()) is not None:
                if AudioChunk.is_type(event.type) and not first:
                    first = time.perf_counter() - sent
                elif AudioStop.is_type(event.type):
                    return first, time.perf_counter() - sent
        raise ConnectionError("closed before audio-stop")
    finally:
        await client.disconnect()


async def _measure(
    ports: dict[str, int], recordings: list[bytes], repeats: int, log: Callable[[str], None]
) -> dict[str, Any]:
    stt_pairs = ("voicebot", "wyoming-faster-whisper")
    tts_pairs = ("voicebot", "wyoming-piper")
    for name in stt_pairs:  # warm-up: the first call pays for lazy initialisation
        await _transcribe(ports[name], recordings[0])
    for name in tts_pairs:
        await _synthesize(ports[name], QUESTIONS[0])
    stt: dict[str, list[float]] = {name: [] for name in stt_pairs}
    texts: dict[str, list[str]] = {name: [] for name in stt_pairs}
    first_audio: dict[str, list[float]] = {name: [] for name in tts_pairs}
    all_audio: dict[str, list[float]] = {name: [] for name in tts_pairs}
    for round_ in range(repeats):
        # Alternate who goes first, so neither always follows the other's cache warm-up.
        order = 1 if round_ % 2 else -1
        for pcm, question in zip(recordings, QUESTIONS, strict=True):
            for name in stt_pairs[::order]:
                seconds, text = await _transcribe(ports[name], pcm)
                stt[name].append(seconds)
                if round_ == 0:
                    texts[name].append(text)
            for name in tts_pairs[::order]:
                first, total = await _synthesize(ports[name], question)
                first_audio[name].append(first)
                all_audio[name].append(total)
        log(f"round {round_ + 1}/{repeats} done")
    streamed: dict[str, list[float]] = {name: [] for name in stt_pairs}
    for pcm in recordings:  # real time, then the end-of-speech silence a client waits for
        for name in stt_pairs:
            seconds, _ = await _transcribe(
                ports[name], pcm + _silence_s(_TRAILING_S), realtime=True
            )
            streamed[name].append(seconds)
    log("real-time round done")
    return {
        "time_to_transcript_ms": {n: _stats(v) for n, v in stt.items()},
        "time_to_transcript_streamed_ms": {n: _stats(v) for n, v in streamed.items()},
        "time_to_first_audio_ms": {n: _stats(v) for n, v in first_audio.items()},
        "time_to_audio_stop_ms": {n: _stats(v) for n, v in all_audio.items()},
        "transcripts": texts,
        "words_misheard": {
            name: sum(_word_errors(q, h) for q, h in zip(QUESTIONS, heard, strict=True))
            for name, heard in texts.items()
        },
        "words_spoken": sum(len(_words(q)) for q in QUESTIONS),
    }


def _words(text: str) -> list[str]:
    return [w.strip(".,!?'\"").lower() for w in text.split() if w.strip(".,!?'\"")]


def _word_errors(reference: str, heard: str) -> int:
    """Words substituted, dropped or added (an edit distance over words)."""
    ref, hyp = _words(reference), _words(heard)
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, other in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != other))
    return row[-1]


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return {"p50": round(statistics.median(ms), 1), "p95": round(p95, 1), "n": len(ms)}


def format_table(document: dict[str, Any]) -> str:
    """The results as the Markdown table of docs/benchmarks.md, with the CPU."""
    machine = document["machine"]
    cpu = machine["cpu"]
    flags = " ".join(f for f, present in cpu["flags"].items() if present)
    results = document["results"]
    lines = [
        f"CPU: {cpu['model']} ({machine['physical_cores']} physical cores; {flags})",
        f"{document['recordings']} recordings x {document['repeats']} rounds; "
        f"speech model {Path(document['stt_model']).name}, beam {document['beam_size']}, "
        f"wyoming-faster-whisper on {document['stt_threads']} threads, voicebot as its [stt] "
        f"settings say; voice {Path(document['voice']).stem}",
        "",
        "| measure | voicebot p50 / p95 (ms) | reference | reference p50 / p95 (ms) |",
        "|---|---|---|---|",
    ]
    rows = (
        ("time to transcript (from audio-stop)", "time_to_transcript_ms", "wyoming-faster-whisper"),
        (
            "time to transcript, streamed in real time + 0.8 s silence",
            "time_to_transcript_streamed_ms",
            "wyoming-faster-whisper",
        ),
        ("time to first audio (from synthesize)", "time_to_first_audio_ms", "wyoming-piper"),
        ("time to audio-stop (from synthesize)", "time_to_audio_stop_ms", "wyoming-piper"),
    )
    misheard = results["words_misheard"]
    spoken = results["words_spoken"]
    lines.append(
        f"| words misheard (of {spoken}; numbers as digits count as wrong) | "
        f"{misheard['voicebot']} | wyoming-faster-whisper | "
        f"{misheard['wyoming-faster-whisper']} |"
    )
    for label, key, reference in rows:
        ours = results[key]["voicebot"]
        theirs = results[key][reference]
        lines.append(
            f"| {label} | {ours['p50']:.0f} / {ours['p95']:.0f} | {reference} | "
            f"{theirs['p50']:.0f} / {theirs['p95']:.0f} |"
        )
    return "\n".join(lines)
