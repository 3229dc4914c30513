"""``voicebot bench``: latency and speed of the real pipeline, measured the way users feel it.

Utterances are made by the project itself (:mod:`voicebot.speech_samples`: Piper at several
speeds, espeak-ng voices) plus any WAVs the user passes. Each stage is measured on its own (STT,
LLM, TTS, with reference runs of plain faster-whisper and llama.cpp on the same GGUF), then end
to end: in process through a session; the end of turn on recordings that are not clean questions
(pauses inside sentences, users who go on, complete sentences); and over the websocket server
with 1, 2 and 4 sessions that start talking at the same moment, while a monitor checks that
websocket pings stay on time.

The whole run can be repeated on an AVX2-only path (:func:`run_isa_paths`): a subprocess with
every engine's instruction-set cap set (:data:`AVX2_ENVIRONMENT`), so the numbers hold for plain
CPUs whatever machine measures them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .audio import read_audio, silence, write_wav
from .config import Settings
from .engines import Engines, Message, TextToSpeech, load_engines
from .events import AudioOut, Event, Metrics, ReplyDone, SpeechStopped, Transcript
from .session import Session
from .speech_samples import Recording, SpeechMaker, speech_end_s, turn_recordings
from .transports.file import chunks_paced

__all__ = [
    "AVX2_ENVIRONMENT",
    "BenchOptions",
    "cpu_info",
    "format_side_by_side",
    "run_bench",
    "run_isa_paths",
    "speech_end_s",
    "targets",
]

_LOGGER = logging.getLogger(__name__)

RATE = 16000

QUESTIONS = [
    "What time is it?",
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Can you tell me a fun fact about the moon and how far away it is?",
    "What should I cook for dinner tonight?",
    "Who wrote Romeo and Juliet?",
]
"""Spoken by the benchmark in several voices."""

LLM_PROMPTS = [
    "What is the capital of France?",
    "Tell me about the sun.",
    "What should I cook for dinner?",
]


@dataclass
class BenchOptions:
    """What to run."""

    turns: int = 6
    """Spoken utterances per session in the end-to-end runs."""
    concurrency: tuple[int, ...] = (1, 2, 4)
    """Concurrent websocket sessions to measure."""
    wavs: tuple[str, ...] = ()
    """User recordings added to the utterances."""
    reference: bool = True
    """Run plain faster-whisper and llama.cpp (if installed) for comparison."""
    llm_tokens: int = 64
    """Tokens generated per LLM speed run."""
    turn_sentences: int | None = None
    """Sentences from each end-of-turn set (``None``: all; 0 skips the end-of-turn run)."""
    inner_pauses_ms: tuple[int, ...] = (300, 400, 500, 600, 700, 800)
    """Pauses inside sentences in the end-of-turn run."""


@dataclass
class Utterance:
    """A spoken test input."""

    name: str
    """Voice and text."""
    pcm: bytes
    """16 kHz PCM16."""
    text: str = ""
    """What it says (empty for user WAVs)."""

    @property
    def seconds(self) -> float:
        """Its length."""
        return len(self.pcm) / 2 / RATE

    @property
    def speech_end_s(self) -> float:
        """Where its speech ends (the clip may carry silence after it)."""
        return speech_end_s(self.pcm)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """p50, p95, max and count of a list."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50": round(statistics.median(ordered), 1),
        "p95": round(p95, 1),
        "max": round(ordered[-1], 1),
        "n": len(ordered),
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def server_rss(question: bytes, sessions: int = 4, rounds: int = 2) -> dict[str, Any]:
    """Peak memory of a real ``voicebot serve`` process answering ``sessions`` clients at once.

    The benchmark process itself holds more than a server does (reference models, the
    recordings, torch for the machine report), so the server's own peak resident set is
    measured in its own process: idle after loading, then after ``rounds`` of ``sessions``
    ``voicebot client`` runs streaming ``question`` (16 kHz PCM16) at the same time.
    """
    import socket
    import urllib.request

    def status(pid: int) -> dict[str, int]:
        values: dict[str, int] = {}
        with open(f"/proc/{pid}/status") as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "Threads"):
                    values[key] = int(value.split()[0])
        return values

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "question.wav"
        write_wav(wav, question, RATE)
        environment = {**os.environ, "VOICEBOT_DATA_DIR": tmp}
        command = [sys.executable, "-m", "voicebot", "serve", "--port", str(port)]
        server = subprocess.Popen(  # noqa: S603 - our own command
            command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)  # noqa: S310
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        return {"skipped": "the server did not start"}
                    time.sleep(0.5)
            idle = status(server.pid)
            codes: list[int] = []
            for _ in range(rounds):
                clients = [
                    subprocess.Popen(  # noqa: S603 - our own command
                        [
                            sys.executable,
                            "-m",
                            "voicebot",
                            "client",
                            f"ws://127.0.0.1:{port}/ws",
                            "--input",
                            str(wav),
                            "--output",
                            str(Path(tmp) / f"reply{index}.wav"),
                        ],
                        env=environment,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    for index in range(sessions)
                ]
                codes += [client.wait(timeout=300) for client in clients]
            loaded = status(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=60)
    return {
        "sessions": sessions,
        "rounds": rounds,
        "idle_rss_mb": round(idle["VmRSS"] / 1024, 1),
        "peak_rss_mb": round(loaded["VmHWM"] / 1024, 1),
        "threads": loaded["Threads"],
        "clients_ok": sum(code == 0 for code in codes),
        "clients": len(codes),
    }


def make_utterances(maker: SpeechMaker, options: BenchOptions) -> list[Utterance]:
    """Speech in several voices and lengths, made by Piper and espeak-ng, plus user WAVs."""
    out: list[Utterance] = []
    voices = maker.voices()
    for i, text in enumerate(QUESTIONS):
        name, speak_fn = voices[i % len(voices)]
        out.append(Utterance(f"{name}: {text}", speak_fn(text), text))
    for path in options.wavs:
        out.append(Utterance(Path(path).name, read_audio(path, RATE)))
    return out


_SAME_WORD = {"favourite": "favorite", "colour": "color", "2": "two", "3": "three", "5": "five"}


def _words(text: str) -> str:
    import re

    words = re.findall(r"[a-z0-9']+", text.lower().replace("thirty-four", "34"))
    return " ".join(_SAME_WORD.get(w, w) for w in words)


def stt_accuracy(engines: Engines, log: Callable[[str], None]) -> dict[str, Any]:
    """Word error rate and time of speech recognition, fitted window against the full one.

    The answer-quality question set (docs/quality.md), 40 sentences, spoken in every voice of
    :meth:`SpeechMaker.voices`; each recording transcribed with the encoder window fitted to
    the audio and with Whisper's fixed 30 s window. Spelling variants (colour/color, 2/two)
    count as right.
    """
    try:
        import jiwer
    except ImportError as error:
        raise RuntimeError("the accuracy run needs jiwer: pip install 'voicebot[dev]'") from error
    from .quality import FACTUAL, MEMORY

    stt = engines.stt
    if not hasattr(stt, "fit_window"):
        raise RuntimeError("the accuracy run compares whisper encoder windows: whisper only")
    texts = [q for q, _ in FACTUAL] + [s for s, _, _ in MEMORY] + [q for _, q, _ in MEMORY]
    recordings = [
        (name, text, speak(text))
        for name, speak in SpeechMaker(engines.tts).voices()
        for text in texts
    ]
    log(f"stt accuracy: {len(recordings)} recordings")
    saved = stt.fit_window
    result: dict[str, Any] = {"recordings": len(recordings)}
    try:
        for label, fit in (("fitted_window", True), ("full_window", False)):
            stt.fit_window = fit
            refs, hyps, times, wrong = [], [], [], []
            for name, text, pcm in recordings:
                start = time.perf_counter()
                heard = stt.transcribe(pcm).text
                times.append((time.perf_counter() - start) * 1000)
                refs.append(_words(text))
                hyps.append(_words(heard) or "-")
                if refs[-1] != hyps[-1]:
                    wrong.append(f"{name}: {text!r} -> {heard!r}")
            result[label] = {
                "wer": round(jiwer.wer(refs, hyps), 3),
                "exact": len(recordings) - len(wrong),
                "ms": summarize(times),
                "wrong": wrong,
            }
            log(f"{label}: WER {result[label]['wer']}, {result[label]['exact']} exact")
    finally:
        stt.fit_window = saved
    return result


WAKE_VOICES = ("en-us", "en-gb", "en-gb+f3", "en-us+m3", "en-us+f4")
"""espeak-ng voices that say the wake word: speakers other than the bot."""
WAKE_SPEEDS_WPM = (120, 150, 180)


def wake_accuracy(
    tts: TextToSpeech, wake_word: str, log: Callable[[str], None], *, threshold: float = 0.0
) -> dict[str, Any]:
    """How often the wake word is heard when said, and how often it fires when it is not.

    Hits: the wake phrase said by five espeak-ng voices at three speeds and by Piper at three
    rates, each alone between silences, fed in 20 ms chunks to a fresh detector. False wakes:
    the benchmark's questions and the answer-quality sentences in every voice of
    :meth:`SpeechMaker.voices`, one continuous stream through one detector (reset after each firing,
    as the daemon does).
    """
    from .engines.wake import MicroWakeWordDetector

    maker = SpeechMaker(tts)
    if maker.espeak_path is None:
        raise RuntimeError("the wake-word run needs espeak-ng (scripts/install-system-deps.sh)")
    from .quality import FACTUAL, MEMORY

    detector = MicroWakeWordDetector(wake_word, threshold=threshold)
    phrase = detector.phrase.lower()
    said: list[tuple[str, bytes]] = []
    for voice in WAKE_VOICES:
        for wpm in WAKE_SPEEDS_WPM:
            pcm = maker.espeak(phrase, voice=voice, words_per_minute=wpm)
            said.append((f"espeak {voice} {wpm} wpm", pcm))
    for rate in (0.85, 1.0, 1.15):
        said.append((f"piper x{rate}", maker.piper(phrase, rate=rate)))

    def fires(pcm: bytes) -> int:
        count = 0
        for offset in range(0, len(pcm), 640):
            if detector.process(pcm[offset : offset + 640]):
                count += 1
                detector.reset()
        return count

    missed: list[str] = []
    for name, pcm in said:
        detector.reset()
        if not fires(silence(0.5, RATE) + pcm + silence(1.0, RATE)):
            missed.append(name)
    log(f"wake word {phrase!r}: heard {len(said) - len(missed)} of {len(said)}")
    texts = QUESTIONS + [q for q, _ in FACTUAL] + [s for s, _, _ in MEMORY]
    texts += [q for _, q, _ in MEMORY]
    stream = b"".join(
        speak(text) + silence(0.5, RATE) for _, speak in maker.voices() for text in texts
    )
    detector.reset()
    false_wakes = fires(stream)
    minutes = len(stream) / 2 / RATE / 60
    log(f"false wakes: {false_wakes} in {minutes:.1f} min of ordinary speech")
    return {
        "wake_word": detector.name,
        "threshold": detector.threshold,
        "said": len(said),
        "heard": len(said) - len(missed),
        "missed": missed,
        "false_wakes": false_wakes,
        "ordinary_speech_min": round(minutes, 1),
        "false_wakes_per_hour": round(false_wakes / minutes * 60, 2) if minutes else 0.0,
    }


# ----------------------------------------------------------------------------- stages


def bench_stt(engines: Engines, utterances: list[Utterance], reference: bool) -> dict[str, Any]:
    """STT time and real-time factor; optionally plain faster-whisper on the same audio."""
    times, factors = [], []
    for utterance in utterances:
        start = time.perf_counter()
        engines.stt.transcribe(utterance.pcm)
        elapsed = time.perf_counter() - start
        times.append(elapsed * 1000)
        factors.append(elapsed / utterance.seconds)
    result: dict[str, Any] = {"ms": summarize(times), "rtf": summarize([f * 1000 for f in factors])}
    result["rtf"] = {k: (v / 1000 if k != "n" else v) for k, v in result["rtf"].items()}
    plain_transcribe = getattr(engines.stt, "plain_transcribe", None)
    if reference and plain_transcribe is not None:
        from .audio import pcm16_to_float

        plain = []
        for utterance in utterances:
            start = time.perf_counter()
            plain_transcribe(pcm16_to_float(utterance.pcm))
            plain.append((time.perf_counter() - start) * 1000)
        result["reference_faster_whisper_ms"] = summarize(plain)
        result["ratio_vs_reference"] = round(statistics.median(times) / statistics.median(plain), 2)
    return result


def bench_llm(engines: Engines, settings: Settings, options: BenchOptions) -> dict[str, Any]:
    """Time to first token and decode tokens/s; llama.cpp on the same GGUF when installed."""
    llm = engines.llm
    ttft, rates = [], []
    count_text_tokens = getattr(llm, "count_text_tokens", None)
    for prompt in LLM_PROMPTS:
        messages: list[Message] = [
            {"role": "system", "content": settings.get_profile().prompt()},
            {"role": "user", "content": prompt},
        ]
        cancel = threading.Event()
        start = time.perf_counter()
        first = None
        text = ""
        saved = getattr(llm, "max_new_tokens", None)
        if saved is not None:
            llm.max_new_tokens = options.llm_tokens  # type: ignore[attr-defined]
        try:
            for fragment in llm.stream(messages, cancel):
                if first is None:
                    first = time.perf_counter()
                text += fragment
        finally:
            if saved is not None:
                llm.max_new_tokens = saved  # type: ignore[attr-defined]
        end = time.perf_counter()
        tokens = count_text_tokens(text) if count_text_tokens else len(text.split())
        if first is not None:
            ttft.append((first - start) * 1000)
            if tokens > 1 and end > first:
                rates.append((tokens - 1) / (end - first))
    result: dict[str, Any] = {
        "first_token_ms": summarize(ttft),
        "tokens_per_s": summarize(rates),
        "backend": getattr(llm, "backend_name", type(llm).__name__),
        "dtype": getattr(llm, "dtype", ""),
    }
    from .engines._hardware import physical_cores

    threads = int(getattr(llm, "threads", 0) or physical_cores())
    result["threads"] = threads
    if options.reference:
        result["reference_llama_cpp"] = _llama_cpp_reference(settings, options, threads)
        ref = result["reference_llama_cpp"]
        if "tokens_per_s" in ref and rates:
            result["ratio_vs_llama_cpp"] = round(
                statistics.median(rates) / ref["tokens_per_s"]["p50"], 2
            )
        if ref.get("first_token_ms", {}).get("p50") and ttft:
            result["first_token_ratio_vs_llama_cpp"] = round(
                statistics.median(ttft) / ref["first_token_ms"]["p50"], 2
            )
    return result


_LLAMA_SCRIPT = r"""
import json, sys
import numpy as np
from ik_llama_cpp import _ctypes_api as C
from ik_llama_cpp._internals import IkContext, IkModel, make_batch_range, make_batch_single
path, prompts = sys.argv[1], json.loads(sys.argv[2])
tokens, threads = int(sys.argv[3]), int(sys.argv[4])
model = IkModel(path)
context = IkContext(model, n_ctx=2048, n_threads=threads, flash_attn=False)
out = []
for prompt in prompts:
    ids = model.tokenize(prompt, add_bos=False, special=True)
    C.llama_kv_cache_clear(context.ctx)
    context.perf_reset()
    for start in range(0, len(ids), 16):
        batch = make_batch_range(ids[start:start + 16], pos_start=start, logits_last=True)
        context.decode(batch)
        C.llama_batch_free(batch)
    position = len(ids)
    for _ in range(tokens):
        logits = np.ctypeslib.as_array(context.get_logits(-1), shape=(model.n_vocab,))
        token = int(logits.argmax())
        batch = make_batch_single(token, position)
        context.decode(batch)
        C.llama_batch_free(batch)
        position += 1
    perf = context.perf()
    out.append([perf["t_p_eval_ms"], perf["n_p_eval"], perf["t_eval_ms"], perf["n_eval"]])
print(json.dumps({"runs": out, "system_info": "ik_llama.cpp (AVX2 build)"}))
"""
"""The reference: llama.cpp's own timers (prompt read, then one decode call per token, as
llama-bench times them), excluding any Python around them. The prompt is read in chunks of 16
tokens as the engine does (the build is wrong on larger batches); every token is decoded, so
no early end shortens the run."""


def _chatml(messages: Sequence[Message]) -> str:
    """The prompt as SmolLM2's chat template (ChatML) renders it, ready for the reply."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def _llama_cpp_reference(settings: Settings, options: BenchOptions, threads: int) -> dict[str, Any]:
    """llama.cpp (the prebuilt ik_llama.cpp wheel) on the same GGUF, in its own process.

    In-process it would share the cores with torch's and CTranslate2's OpenMP threads, which
    measured it at a third of its speed. It runs at ``threads``, the chat engine's own count.
    """
    from .models import ModelManager, default_models_dir

    manager = ModelManager(root=default_models_dir(settings.models_dir), progress=False)
    ggufs = sorted(manager.model_dir("smollm2-135m-instruct").glob("*.gguf"))
    if not ggufs:
        return {"skipped": "the GGUF is not pulled"}
    prompts = [
        _chatml(
            [
                {"role": "system", "content": settings.get_profile().prompt()},
                {"role": "user", "content": prompt},
            ]
        )
        for prompt in LLM_PROMPTS
    ]
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                _LLAMA_SCRIPT,
                str(ggufs[0]),
                json.dumps(prompts),
                str(options.llm_tokens),
                str(threads),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"skipped": "llama.cpp took more than 10 minutes"}
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["no error output"]
        return {"skipped": f"llama.cpp failed: {lines[-1][-300:]}"}
    report = json.loads(result.stdout.strip().splitlines()[-1])
    runs = report["runs"]
    # The first token comes after the whole prompt is read and one decode step.
    ttft = [read + decode / max(1, steps) for read, _, decode, steps in runs]
    rates = [steps * 1000 / decode for _, _, decode, steps in runs if steps and decode > 0]
    return {
        "package": "ik-llama-cpp-python",
        "gguf": ggufs[0].name,
        "first_token_ms": summarize(ttft),
        "tokens_per_s": summarize(rates),
        "threads": threads,
        "system_info": report.get("system_info", ""),
    }


def bench_tts(engines: Engines) -> dict[str, Any]:
    """Time to first audio and real-time factor."""
    sentences = [
        "Paris is the capital of France.",
        "A spider has eight legs, and most spiders have eight eyes too.",
        "Sure.",
    ]
    first_ms, factors = [], []
    for sentence in sentences:
        start = time.perf_counter()
        first = None
        audio = 0
        for pcm in engines.tts.synthesize(sentence):
            if first is None:
                first = time.perf_counter()
            audio += len(pcm)
        end = time.perf_counter()
        if first is not None:
            first_ms.append((first - start) * 1000)
        seconds = audio / 2 / engines.tts.sample_rate_hz
        if seconds:
            factors.append((end - start) / seconds)
    return {
        "first_audio_ms": summarize(first_ms),
        "rtf": {"p50": round(statistics.median(factors), 3), "max": round(max(factors), 3)},
    }


# ----------------------------------------------------------------------------- end to end


@dataclass
class _Turns:
    metrics: list[dict[str, float]] = field(default_factory=list)
    """The session's own stage metrics, per answered turn."""
    first_audio: dict[int, float] = field(default_factory=dict)
    """Turn id -> perf_counter() when its first reply audio reached the sink."""
    voice_to_voice_ms: list[float] = field(default_factory=list)
    """End of speech in the clip -> first reply audio at the sink."""
    unanswered: int = 0
    """Utterances that got no reply audio."""


async def _paced_session(
    engines: Engines, settings: Settings, utterances: list[Utterance], gap_s: float
) -> _Turns:
    turns = _Turns()

    async def sink(event: Event) -> None:
        if isinstance(event, Metrics):
            turns.metrics.append(event.values_ms)
        elif isinstance(event, AudioOut) and event.turn_id:
            turns.first_audio.setdefault(event.turn_id, time.perf_counter())

    session = Session(engines, settings, sink=sink, barge_in=False)
    await session.start()
    lead_s = 0.3
    for utterance in utterances:
        pcm = silence(lead_s, RATE) + utterance.pcm + silence(gap_s, RATE)
        known = set(turns.first_audio)
        start = time.perf_counter()
        async for chunk in chunks_paced(pcm, RATE):
            await session.feed(chunk)
        await session.wait_idle()
        new = [t for t in turns.first_audio if t not in known]
        if new:
            speech_end = start + lead_s + utterance.speech_end_s
            turns.voice_to_voice_ms.append((turns.first_audio[new[0]] - speech_end) * 1000)
        else:
            turns.unanswered += 1
    await session.close()
    return turns


async def _websocket_run(
    engines: Engines, settings: Settings, utterances: list[Utterance], sessions: int, gap_s: float
) -> dict[str, Any]:
    from dataclasses import replace

    from websockets.asyncio.client import connect

    from .store import Store
    from .transports.websocket import VoiceServer

    settings = replace(
        settings,
        # Every bench client comes from 127.0.0.1: no per-address cap.
        server=replace(
            settings.server, port=0, max_sessions=max(8, sessions), max_sessions_per_address=0
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
        server = VoiceServer(engines, settings, store)
        await server.start()
        url = f"ws://127.0.0.1:{server.port}/ws"
        latencies: list[float] = []
        server_metrics: list[dict[str, float]] = []
        late_pings: list[float] = []
        unanswered: list[str] = []
        stop = asyncio.Event()
        together = asyncio.Barrier(sessions)

        async def pinger() -> None:
            async with connect(url) as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
                await ws.recv()
                while not stop.is_set():
                    start = time.perf_counter()
                    pong = await ws.ping()
                    await pong
                    late_pings.append((time.perf_counter() - start) * 1000)
                    await asyncio.sleep(0.25)

        async def client(index: int) -> None:
            async with connect(url, max_size=None, compression=None) as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
                json.loads(await ws.recv())
                step = 2 * RATE // 50
                for utterance in utterances:
                    # Every session starts talking at the same moment, each round: the worst
                    # case for the shared workers.
                    with contextlib.suppress(TimeoutError, asyncio.BrokenBarrierError):
                        async with asyncio.timeout(120):
                            await together.wait()
                    pcm = silence(0.3, RATE) + utterance.pcm
                    speech_end_at = 0.3 + utterance.speech_end_s
                    first_audio: list[float] = []
                    replied: list[bool] = []
                    done = asyncio.Event()

                    async def receive(
                        first_audio: list[float] = first_audio,
                        replied: list[bool] = replied,
                        done: asyncio.Event = done,
                    ) -> None:
                        async for frame in ws:
                            if isinstance(frame, bytes):
                                if not first_audio:
                                    first_audio.append(time.perf_counter())
                                continue
                            event = json.loads(frame)
                            kind = event["type"]
                            if kind == "metrics":
                                server_metrics.append(event["ms"])
                            elif kind == "reply_done":
                                replied.append(True)
                            elif kind == "state" and event["state"] == "listening" and replied:
                                done.set()  # the reply has been played
                            elif kind == "transcript" and not event["text"]:
                                done.set()

                    reader = asyncio.create_task(receive())
                    start = time.perf_counter()
                    tail = silence(gap_s, RATE)
                    stream = pcm + tail
                    # Chunk i is sent once its last sample would have been captured.
                    for i, offset in enumerate(range(0, len(stream), step)):
                        delay = start + (i + 1) * 0.02 - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        await ws.send(stream[offset : offset + step])
                    try:
                        async with asyncio.timeout(60):
                            await done.wait()
                    except TimeoutError:
                        pass
                    reader.cancel()
                    if first_audio:
                        latencies.append((first_audio[0] - start - speech_end_at) * 1000)
                    else:
                        unanswered.append(utterance.name)

        ping_task = asyncio.create_task(pinger())
        try:
            await asyncio.gather(*(client(i) for i in range(sessions)))
        finally:
            stop.set()
            await asyncio.gather(ping_task, return_exceptions=True)
            await server.close()
            store.close()
    return {
        "voice_to_voice_ms": summarize(latencies),
        "server_stages_ms": _stage_summary(server_metrics),
        "ping_rtt_ms": summarize(late_pings),
        "late_pings_over_100ms": sum(1 for p in late_pings if p > 100),
        "unanswered": len(unanswered),
        "unanswered_names": unanswered,
    }


def _stage_summary(metrics: list[dict[str, float]]) -> dict[str, Any]:
    keys = ["end_of_turn", "stt", "llm_first_token", "first_piece", "first_audio", "voice_to_voice"]
    return {k: summarize([m[k] for m in metrics if k in m]) for k in keys}


# ----------------------------------------------------------------------------- end of turn

CHUNK_MS = 20
"""Audio is fed in chunks of this length, each when a microphone would deliver it."""
TURN_LEAD_S = 0.3
"""Silence before each end-of-turn recording."""
TURN_TAIL_MAX_S = 8.0
"""Silence fed after a recording at most, while waiting for its turn to end (and its reply)."""


@dataclass
class TurnOutcome:
    """What one end-of-turn recording became."""

    recording: Recording
    """The recording."""
    transcripts: list[str] = field(default_factory=list)
    """Its non-empty final transcripts: one per turn the session heard."""
    replied_turns: int = 0
    """Turns whose reply reached the sink as audio."""
    end_of_turn_ms: float | None = None
    """End of speech -> the last turn's ``SpeechStopped`` reached the sink."""
    final_transcript_ms: float | None = None
    """End of speech -> the last turn's final transcript reached the sink."""
    voice_to_voice_ms: float | None = None
    """End of speech -> the last turn's first reply audio reached the sink."""

    @property
    def turns(self) -> int:
        """Turns heard (final transcripts)."""
        return len(self.transcripts)


def _turn_done(events: list[tuple[float, Event]], speech_end_at: float, need_audio: bool) -> bool:
    """Whether the turn closing the speech has been transcribed (and answered, if needed)."""
    finals = [
        e.turn_id
        for at, e in events
        if isinstance(e, Transcript) and e.final and e.text.strip() and at >= speech_end_at
    ]
    if not finals:
        return False
    if not need_audio:
        return True
    turn = finals[-1]
    return any(isinstance(e, AudioOut | ReplyDone) and e.turn_id == turn for _, e in events)


def _turn_outcome(
    recording: Recording, events: list[tuple[float, Event]], speech_end_at: float
) -> TurnOutcome:
    outcome = TurnOutcome(recording)
    finals = [(at, e) for at, e in events if isinstance(e, Transcript) and e.final]
    finals = [(at, e) for at, e in finals if e.text.strip()]
    outcome.transcripts = [e.text for _, e in finals]
    outcome.replied_turns = len({e.turn_id for _, e in events if isinstance(e, AudioOut)})
    if not finals:
        return outcome
    last_at, last = finals[-1]
    outcome.final_transcript_ms = round((last_at - speech_end_at) * 1000, 1)
    for at, event in events:
        if isinstance(event, SpeechStopped) and event.turn_id == last.turn_id:
            outcome.end_of_turn_ms = round((at - speech_end_at) * 1000, 1)
        if isinstance(event, AudioOut) and event.turn_id == last.turn_id:
            outcome.voice_to_voice_ms = round((at - speech_end_at) * 1000, 1)
            break
    return outcome


async def run_turn(engines: Engines, settings: Settings, recording: Recording) -> TurnOutcome:
    """Speak one recording to a fresh session, in real time, and see how many turns it became.

    Silence follows the speech, as a microphone would deliver it, until the turn that closes
    the speech has its final transcript (and, for a complete sentence, its first reply audio),
    or :data:`TURN_TAIL_MAX_S` has passed.
    """
    events: list[tuple[float, Event]] = []

    async def sink(event: Event) -> None:
        events.append((time.perf_counter(), event))

    session = Session(engines, settings, sink=sink)
    await session.start()
    stream = silence(TURN_LEAD_S, RATE) + recording.pcm
    step = 2 * RATE * CHUNK_MS // 1000
    quiet = bytes(step)
    chunks = math.ceil(len(stream) / step) + round(TURN_TAIL_MAX_S * 1000 / CHUNK_MS)
    need_audio = recording.kind == "complete"
    start = time.perf_counter()
    speech_end_at = start + TURN_LEAD_S + recording.speech_end_s
    try:
        for index in range(chunks):
            offset = index * step
            delay = start + (index + 1) * CHUNK_MS / 1000 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await session.feed(stream[offset : offset + step] if offset < len(stream) else quiet)
            if offset >= len(stream) and _turn_done(events, speech_end_at, need_audio):
                break
    finally:
        async with asyncio.timeout(60):
            await session.close()  # cuts the reply: only the turn matters here
    return _turn_outcome(recording, events, speech_end_at)


def summarize_turns(outcomes: Sequence[TurnOutcome]) -> dict[str, Any]:
    """Turn counts by set and pause length, and the waits of complete sentences.

    Returns:
        ``inner_pause`` and ``goes_on``: ``by_pause_ms`` (pause -> recordings, heard as one
        turn, share) and ``one_turn_share``; ``inner_pause`` also ``one_turn_share_300_600``.
        ``complete``: ``end_of_turn_ms``, ``final_transcript_ms``, ``voice_to_voice_ms``,
        ``cut`` and ``unanswered``. ``split``: the recordings heard as more than one turn.
    """
    result: dict[str, Any] = {}
    for kind in ("inner_pause", "goes_on"):
        group = [o for o in outcomes if o.recording.kind == kind]
        if not group:
            continue
        by_pause: dict[str, dict[str, Any]] = {}
        for pause_ms in sorted({o.recording.pause_ms for o in group}):
            at = [o for o in group if o.recording.pause_ms == pause_ms]
            one = sum(1 for o in at if o.turns == 1)
            by_pause[str(pause_ms)] = {"n": len(at), "one_turn": one, "share": _share(one, at)}
        one = sum(1 for o in group if o.turns == 1)
        entry: dict[str, Any] = {
            "n": len(group),
            "one_turn_share": _share(one, group),
            "by_pause_ms": by_pause,
            "no_turn": sum(1 for o in group if o.turns == 0),
        }
        if kind == "inner_pause":
            target = [o for o in group if 300 <= o.recording.pause_ms <= 600]
            entry["one_turn_share_300_600"] = _share(sum(1 for o in target if o.turns == 1), target)
        result[kind] = entry
    complete = [o for o in outcomes if o.recording.kind == "complete"]
    if complete:
        result["complete"] = {
            "n": len(complete),
            "end_of_turn_ms": summarize(
                [o.end_of_turn_ms for o in complete if o.end_of_turn_ms is not None]
            ),
            "final_transcript_ms": summarize(
                [o.final_transcript_ms for o in complete if o.final_transcript_ms is not None]
            ),
            "voice_to_voice_ms": summarize(
                [o.voice_to_voice_ms for o in complete if o.voice_to_voice_ms is not None]
            ),
            "cut": sum(1 for o in complete if o.turns > 1),
            "unanswered": sum(1 for o in complete if o.voice_to_voice_ms is None),
        }
    result["split"] = [
        {"name": o.recording.name, "transcripts": o.transcripts} for o in outcomes if o.turns != 1
    ]
    return result


def _share(count: int, group: Sequence[object]) -> float | None:
    return round(count / len(group), 3) if group else None


def bench_turns(
    engines: Engines,
    settings: Settings,
    recordings: Sequence[Recording],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Every end-of-turn recording through its own real session; see :func:`summarize_turns`."""
    outcomes = []
    for recording in recordings:
        outcome = asyncio.run(run_turn(engines, settings, recording))
        _LOGGER.debug("%s: %d turns %s", recording.name, outcome.turns, outcome.transcripts)
        outcomes.append(outcome)
    result = summarize_turns(outcomes)
    for kind in ("inner_pause", "goes_on"):
        if kind in result:
            log(f"{kind}: {result[kind]['one_turn_share']} heard as one turn")
    if "complete" in result:
        log(f"complete sentences: turn ended after {result['complete']['end_of_turn_ms']} ms")
    return result


# ----------------------------------------------------------------------------- driver


def run_bench(
    settings: Settings, options: BenchOptions, log: Callable[[str], None]
) -> dict[str, Any]:
    """Run everything on this process's instruction set; returns one path's results.

    Skills are off: the latency measured is the chat model's path. With them on, "What time
    is it?" and "Set a timer..." among the recordings would be answered without the model.
    """
    from dataclasses import replace

    settings = replace(settings, skills=replace(settings.skills, enabled=False))
    results: dict[str, Any] = {"isa": _isa_in_effect()}
    start = time.perf_counter()
    engines = load_engines(settings)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    warm = engines.warm_up()
    results["startup"] = {
        "load_s": {k: round(v, 2) for k, v in engines.load_times_s.items()},
        "load_total_s": round(load_s, 2),
        "warm_up_s": {k: round(v, 2) for k, v in warm.items()},
        "ready_s": round(load_s + time.perf_counter() - start, 2),
    }
    log(f"models ready in {results['startup']['ready_s']} s")
    from .models import default_models_dir

    maker = SpeechMaker.load(default_models_dir(settings.models_dir))
    utterances = make_utterances(maker, options)
    log(f"{len(utterances)} utterances, {sum(u.seconds for u in utterances):.1f} s of speech")
    results["stt"] = bench_stt(engines, utterances, options.reference)
    log(f"stt: {results['stt']['ms']}")
    results["llm"] = bench_llm(engines, settings, options)
    log(f"llm: {results['llm']['tokens_per_s']} tok/s")
    results["tts"] = bench_tts(engines)
    log(f"tts: {results['tts']}")
    turns = utterances[: options.turns] if options.turns else utterances
    paced = asyncio.run(_paced_session(engines, settings, turns, gap_s=2.5))
    results["in_process"] = _stage_summary(paced.metrics)
    # The user's view: from the end of speech in the clip, not from where the VAD placed it.
    results["in_process"]["voice_to_voice"] = summarize(paced.voice_to_voice_ms)
    results["in_process"]["unanswered"] = paced.unanswered
    log(f"in-process voice-to-voice: {results['in_process']['voice_to_voice']}")
    if options.turn_sentences != 0:
        recordings = turn_recordings(
            maker, per_set=options.turn_sentences, inner_pauses_ms=options.inner_pauses_ms
        )
        log(f"end of turn: {len(recordings)} recordings")
        results["end_of_turn"] = bench_turns(engines, settings, recordings, log)
    results["websocket"] = {}
    for sessions in options.concurrency:
        outcome = asyncio.run(_websocket_run(engines, settings, turns, sessions, gap_s=2.5))
        results["websocket"][str(sessions)] = outcome
        log(f"websocket x{sessions}: {outcome['voice_to_voice_ms']}, ping {outcome['ping_rtt_ms']}")
    one = results["websocket"].get("1", {}).get("voice_to_voice_ms", {}).get("p50")
    four = results["websocket"].get("4", {}).get("voice_to_voice_ms", {}).get("p50")
    if one and four:
        results["websocket_ratio_4_to_1"] = round(four / one, 2)
    results["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    engines.close()
    results["server_rss"] = server_rss(utterances[0].pcm)
    log(f"server RSS: {results['server_rss']}")
    return results


# ----------------------------------------------------------------------------- CPU paths

SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "avx_vnni")
"""The /proc/cpuinfo flags printed with the results."""

AVX2_ENVIRONMENT = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "CT2_FORCE_CPU_ISA": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
}
"""What caps every engine that has a switch at AVX2: PyTorch's kernels (ATen), CTranslate2
(faster-whisper, and any CTranslate2 chat engine), oneDNN under both of its names."""

ISA_NOTES = (
    "PyTorch: ATEN_CPU_CAPABILITY=avx2 (the capability in effect is printed per path); "
    "its oneDNN: ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA=AVX2",
    "CTranslate2 (faster-whisper): CT2_FORCE_CPU_ISA=AVX2",
    "llama.cpp: ignores the variables; the ik_llama.cpp wheel (engine and reference) is an "
    "AVX2 build on every machine, and any llama.cpp build has its instruction set fixed "
    "when the wheel was built, so both paths run the same code",
    "ONNX Runtime (Piper voice): has no switch to cap its instruction set; it uses the best "
    "the CPU has on both paths",
)
"""Which engines the AVX2 path caps, and which ignore it."""

_CHILD_MARKER = "VOICEBOT_BENCH_ISA"  # set in the AVX2 subprocess, so it does not re-spawn


def cpu_info(cpuinfo_text: str | None = None) -> dict[str, Any]:
    """The CPU model and which of :data:`SIMD_FLAGS` it has (this machine's, or the text's)."""
    from .engines._hardware import cpu_flags, cpu_model, parse_cpuinfo

    if cpuinfo_text is None:
        model, flags = cpu_model(), cpu_flags()
    else:
        model, flags = parse_cpuinfo(cpuinfo_text)
    return {
        "model": model or platform.processor(),
        "flags": {flag: flag in flags for flag in SIMD_FLAGS},
    }


def avx2_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with every engine capped at AVX2 (see :data:`AVX2_ENVIRONMENT`)."""
    return {**environ, **AVX2_ENVIRONMENT, _CHILD_MARKER: "avx2"}


def rerun_argv(argv: Sequence[str], json_path: str) -> list[str]:
    """The arguments for the AVX2 re-run: this run's own, with ``--isa avx2`` and a JSON file.

    Args:
        argv: The command line after the program name (global options, ``bench``, its flags).
        json_path: Where the re-run writes its results.
    """
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--isa", "--json"):
            skip = True
            continue
        if arg.startswith(("--isa=", "--json=")):
            continue
        out.append(arg)
    return [*out, "--isa", "avx2", "--json", json_path]


def _isa_in_effect() -> dict[str, Any]:
    info: dict[str, Any] = {k: os.environ[k] for k in AVX2_ENVIRONMENT if k in os.environ}
    try:
        import torch

        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        pass
    return info


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def run_avx2_child(
    argv: Sequence[str],
    log: Callable[[str], None],
    *,
    environ: Mapping[str, str] | None = None,
    runner: Runner = subprocess.run,
) -> dict[str, Any]:
    """Run the benchmark again in a subprocess capped at AVX2; returns that path's results.

    Args:
        argv: This run's command line after the program name.
        log: Progress lines.
        environ: The environment to cap (default: this process's).
        runner: ``subprocess.run`` or a fake.
    """
    env = avx2_environment(os.environ if environ is None else environ)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "avx2.json"
        command = [sys.executable, "-m", "voicebot", *rerun_argv(argv, str(out))]
        log(
            "AVX2-only path: the same benchmark in a subprocess, "
            + ", ".join(f"{k}={v}" for k, v in AVX2_ENVIRONMENT.items())
        )
        done = runner(command, env=env, stdout=subprocess.DEVNULL, check=False, text=True)
        if done.returncode != 0 or not out.is_file():
            return {"failed": f"the AVX2 run exited with {done.returncode}"}
        document = json.loads(out.read_text())
    path: dict[str, Any] = document["paths"]["avx2"]
    return path


def run_isa_paths(
    settings: Settings,
    options: BenchOptions,
    isa: str,
    argv: Sequence[str],
    log: Callable[[str], None],
    *,
    runner: Runner = subprocess.run,
) -> dict[str, Any]:
    """The benchmark on the machine's best path, on an AVX2-only path, or both.

    The best path runs in this process; the AVX2 path in a subprocess, since the engines read
    their caps when they load (unless this process is already that subprocess).

    Returns:
        ``machine`` (CPU model and flags, cores, versions), ``isa_notes``, ``paths`` (``best``
        and/or ``avx2``: each a :func:`run_bench` result) and ``targets``.
    """
    if isa not in ("both", "best", "avx2"):
        raise ValueError(f"isa is both, best or avx2, not {isa!r}")
    document: dict[str, Any] = {"machine": _machine(), "isa_notes": list(ISA_NOTES), "paths": {}}
    if isa in ("both", "best"):
        document["paths"]["best"] = run_bench(settings, options, log)
    if isa in ("both", "avx2"):
        if os.environ.get(_CHILD_MARKER) == "avx2":
            document["paths"]["avx2"] = run_bench(settings, options, log)
        else:
            document["paths"]["avx2"] = run_avx2_child(argv, log, runner=runner)
    document["targets"] = targets(document["paths"])
    return document


def _machine() -> dict[str, Any]:
    import torch

    from .engines._hardware import cpu_has_bf16, cuda_available, physical_cores

    return {
        "cpu": cpu_info(),
        "physical_cores": physical_cores(),
        "bf16": cpu_has_bf16(),
        "cuda": cuda_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


# ----------------------------------------------------------------------------- targets


def _get(results: Mapping[str, Any], *keys: str) -> Any:
    value: Any = results
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _target(
    name: str, value: float | None, limit: float, unit: str, *, at_most: bool = True
) -> dict[str, Any]:
    if value is None:
        return {"name": name, "target": limit, "unit": unit, "value": None, "met": None}
    met = value <= limit if at_most else value >= limit
    return {
        "name": name,
        "target": limit,
        "unit": unit,
        "at_most": at_most,
        "value": value,
        "met": met,
        "distance": round(abs(limit - value), 3),
    }


def targets(paths: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Issue 11's targets on each path, each met or missed with its distance.

    They are meant for the AVX2-only path; the best path is judged by the same numbers.
    ``make run`` compiling nothing is not something a benchmark measures: not listed.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for label, results in paths.items():
        one = _get(results, "websocket", "1", "voice_to_voice_ms")
        unanswered = [_get(results, "websocket", key, "unanswered") for key in ("1", "4")]
        counted = [u for u in unanswered if u is not None]
        out[label] = [
            _target("voice-to-voice p50, websocket, 1 session", _get(one or {}, "p50"), 700, "ms"),
            _target("voice-to-voice p95, websocket, 1 session", _get(one or {}, "p95"), 1100, "ms"),
            _target(
                "4 sessions at once: p50 / 1 session p50",
                _get(results, "websocket_ratio_4_to_1"),
                1.3,
                "x",
            ),
            _target(
                "unanswered turns, websocket 1 and 4 sessions",
                float(sum(counted)) if counted else None,
                0,
                "turns",
            ),
            _target(
                "chat model time to first token p50",
                _get(results, "llm", "first_token_ms", "p50"),
                80,
                "ms",
            ),
            _target(
                "chat model decode / llama.cpp, same threads",
                _get(results, "llm", "ratio_vs_llama_cpp"),
                0.8,
                "x",
                at_most=False,
            ),
            _target(
                "300-600 ms pause inside: heard as one turn",
                _get(results, "end_of_turn", "inner_pause", "one_turn_share_300_600"),
                0.95,
                "share",
                at_most=False,
            ),
            _target(
                "peak RSS of the server, 4 sessions",
                _get(results, "server_rss", "peak_rss_mb"),
                1000,
                "MB",
            ),
        ]
    return out


def format_targets(document: Mapping[str, Any]) -> str:
    """One line per target and path: met or missed, and by how much."""
    lines = []
    for label, rows in document.get("targets", {}).items():
        counts = " (the path the targets are for)" if label == "avx2" else ""
        lines.append(f"targets, {label} path{counts}:")
        for row in rows:
            if row["met"] is None:
                verdict = "not measured"
            else:
                word = "met" if row["met"] else "MISSED"
                by = f"{row['distance']:g} {row['unit']}"
                verdict = f"{word} by {by} ({row['value']:g} {'<=' if row['at_most'] else '>='} "
                verdict += f"{row['target']:g})"
            lines.append(f"  {row['name']:<48} {verdict}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- tables


def _stats(stats: Mapping[str, Any] | None, unit: str = "ms") -> str:
    if not stats or stats.get("n", 1) == 0:
        return "-"
    return f"p50 {stats.get('p50', 0):.1f}  p95 {stats.get('p95', 0):.1f} {unit}"


def rows(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One path's results as (measure, value) rows."""
    if "failed" in results:
        return [("run", str(results["failed"]))]
    out: list[tuple[str, str]] = []
    isa = results.get("isa", {})
    out.append(("torch CPU capability", str(isa.get("torch_cpu_capability", "-"))))
    out.append(("models ready (load + warm-up)", f"{_get(results, 'startup', 'ready_s')} s"))
    stt = results.get("stt", {})
    out.append(("STT time", _stats(stt.get("ms"))))
    out.append(("STT real-time factor p50", str(_get(stt, "rtf", "p50"))))
    if "ratio_vs_reference" in stt:
        out.append(("STT vs plain faster-whisper", f"{stt['ratio_vs_reference']}x"))
    llm = results.get("llm", {})
    out.append(
        ("LLM backend, threads", f"{llm.get('backend')} {llm.get('dtype')}, {llm.get('threads')}")
    )
    out.append(("LLM time to first token", _stats(llm.get("first_token_ms"))))
    out.append(("LLM decode", _stats(llm.get("tokens_per_s"), "tok/s")))
    ref = llm.get("reference_llama_cpp", {})
    if "tokens_per_s" in ref:
        out.append(("llama.cpp decode (reference)", _stats(ref["tokens_per_s"], "tok/s")))
        out.append(("llama.cpp time to first token", _stats(ref.get("first_token_ms"))))
        out.append(("LLM decode vs llama.cpp", f"{llm.get('ratio_vs_llama_cpp')}x"))
        out.append(
            ("LLM first token vs llama.cpp", f"{llm.get('first_token_ratio_vs_llama_cpp')}x")
        )
    elif ref:
        out.append(("llama.cpp reference", str(ref.get("skipped"))))
    out.append(("TTS first audio", _stats(_get(results, "tts", "first_audio_ms"))))
    in_process = results.get("in_process", {})
    for key in ("end_of_turn", "stt", "llm_first_token", "first_piece", "first_audio"):
        out.append((f"in-process {key}", _stats(in_process.get(key))))
    out.append(("in-process voice-to-voice", _stats(in_process.get("voice_to_voice"))))
    out.append(("in-process unanswered", str(in_process.get("unanswered"))))
    turns = results.get("end_of_turn", {})
    for kind, label in (("inner_pause", "pause inside"), ("goes_on", "goes on after")):
        if kind not in turns:
            continue
        for pause, entry in turns[kind].get("by_pause_ms", {}).items():
            share = entry["share"]
            out.append(
                (f"{label} {pause} ms: one turn", f"{entry['one_turn']}/{entry['n']} ({share:.0%})")
            )
        if kind == "inner_pause":
            share = turns[kind].get("one_turn_share_300_600")
            out.append(
                ("pause inside 300-600 ms: one turn", "-" if share is None else f"{share:.1%}")
            )
    if "complete" in turns:
        complete = turns["complete"]
        out.append(("complete: end of speech -> turn end", _stats(complete["end_of_turn_ms"])))
        out.append(("complete: -> final transcript", _stats(complete["final_transcript_ms"])))
        out.append(("complete: voice-to-voice", _stats(complete["voice_to_voice_ms"])))
        out.append(("complete: cut, unanswered", f"{complete['cut']}, {complete['unanswered']}"))
    for sessions, outcome in results.get("websocket", {}).items():
        out.append((f"websocket x{sessions} voice-to-voice", _stats(outcome["voice_to_voice_ms"])))
        out.append((f"websocket x{sessions} ping RTT", _stats(outcome.get("ping_rtt_ms"))))
        late = outcome.get("late_pings_over_100ms")
        unanswered = outcome.get("unanswered")
        out.append((f"websocket x{sessions} late pings, unanswered", f"{late}, {unanswered}"))
    if "websocket_ratio_4_to_1" in results:
        out.append(("websocket p50 4 sessions / 1", f"{results['websocket_ratio_4_to_1']}x"))
    out.append(("peak RSS, benchmark process", f"{results.get('peak_rss_mb')} MB"))
    server = results.get("server_rss", {})
    out.append(
        (
            "peak RSS, server with 4 sessions",
            f"{server.get('peak_rss_mb')} MB (idle {server.get('idle_rss_mb')} MB)",
        )
    )
    return out


def format_table(results: Mapping[str, Any]) -> str:
    """One path's results as a plain-text table."""
    return "\n".join(f"{name:<40} {value}" for name, value in rows(results))


def format_side_by_side(document: Mapping[str, Any]) -> str:
    """The machine, then every path's results in columns, then the targets and the notes."""
    machine = document.get("machine", {})
    cpu = machine.get("cpu", {})
    flags = cpu.get("flags", {})
    have = " ".join(f for f in SIMD_FLAGS if flags.get(f)) or "none"
    lacks = " ".join(f for f in SIMD_FLAGS if not flags.get(f)) or "none"
    lines = [
        f"CPU: {cpu.get('model', '?')}, {machine.get('physical_cores', '?')} physical cores",
        f"SIMD: has {have}; lacks {lacks}",
    ]
    paths: Mapping[str, Mapping[str, Any]] = document.get("paths", {})
    tables = {label: dict(rows(results)) for label, results in paths.items()}
    order: list[str] = []
    for table in tables.values():
        order += [name for name in table if name not in order]
    width = 36
    lines.append(f"{'':<40} " + " ".join(f"{label + ' path':<{width}}" for label in tables))
    for name in order:
        values = " ".join(f"{tables[label].get(name, '-'):<{width}}" for label in tables)
        lines.append(f"{name:<40} {values}".rstrip())
    lines.append(format_targets(document))
    lines.append("instruction-set caps on the AVX2 path:")
    lines += [f"  - {note}" for note in document.get("isa_notes", [])]
    return "\n".join(lines)
