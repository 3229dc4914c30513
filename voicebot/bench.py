"""``voicebot bench``: latency and speed of the real pipeline, measured the way users feel it.

Utterances are made by the project itself (Piper at several speeds, espeak-ng voices) plus any
WAVs the user passes. Each stage is measured on its own (STT, LLM, TTS, with reference runs of
plain faster-whisper and, when installed, llama.cpp on the same GGUF), then end to end: in
process through a session, and over the websocket server with 1, 2 and 4 concurrent sessions,
while a monitor checks that websocket pings stay on time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .audio import read_audio, resample, silence
from .config import Settings
from .engines import Engines, Message, TextToSpeech, load_engines
from .events import AudioOut, Event, Metrics
from .session import Session
from .transports.file import chunks_paced

__all__ = ["BenchOptions", "run_bench"]

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


def speech_end_s(pcm: bytes, sample_rate_hz: int = RATE, *, frame_ms: int = 10) -> float:
    """The end of the last 10 ms frame within 40 dB of the loudest one.

    Voice-to-voice is timed from there, so silence at the end of a clip never counts as
    speech (which would make the reply look faster than it is).
    """
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    frame = sample_rate_hz * frame_ms // 1000
    count = len(samples) // frame
    if count == 0:
        return len(samples) / sample_rate_hz
    rms = np.sqrt((samples[: count * frame].reshape(count, frame) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms >= rms.max() * 0.01)
    return float(loud[-1] + 1) * frame / sample_rate_hz


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


def make_utterances(engines: Engines, options: BenchOptions) -> list[Utterance]:
    """Speech in several voices and lengths, made by Piper and espeak-ng, plus user WAVs."""
    out: list[Utterance] = []
    voices = _voices(engines.tts)
    for i, text in enumerate(QUESTIONS):
        name, speak_fn = voices[i % len(voices)]
        out.append(Utterance(f"{name}: {text}", speak_fn(text), text))
    for path in options.wavs:
        out.append(Utterance(Path(path).name, read_audio(path, RATE)))
    return out


def _voices(tts: TextToSpeech) -> list[tuple[str, Callable[[str], bytes]]]:
    """Piper at two speeds and, when installed, two espeak-ng voices: 16 kHz PCM16 makers."""
    voices: list[tuple[str, Callable[[str], bytes]]] = []
    for rate in (0.85, 1.15):

        def piper(text: str, rate: float = rate) -> bytes:
            pcm = b"".join(tts.synthesize(text, speaking_rate=rate))
            return resample(pcm, tts.sample_rate_hz, RATE)

        voices.append((f"piper x{rate}", piper))
    espeak = shutil.which("espeak-ng")
    if espeak:
        for voice in ("en-us", "en-gb+f3"):

            def speak(text: str, voice: str = voice, espeak: str = espeak) -> bytes:
                return _espeak(espeak, text, voice, 150)

            voices.append((f"espeak {voice}", speak))
    return voices


_SAME_WORD = {"favourite": "favorite", "colour": "color", "2": "two", "3": "three", "5": "five"}


def _words(text: str) -> str:
    import re

    words = re.findall(r"[a-z0-9']+", text.lower().replace("thirty-four", "34"))
    return " ".join(_SAME_WORD.get(w, w) for w in words)


def stt_accuracy(engines: Engines, log: Callable[[str], None]) -> dict[str, Any]:
    """Word error rate and time of speech recognition, fitted window against the full one.

    The answer-quality question set (docs/quality.md), 40 sentences, spoken in every voice of
    :func:`_voices`; each recording transcribed with the encoder window fitted to the audio
    and with Whisper's fixed 30 s window. Spelling variants (colour/color, 2/two) count as
    right.
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
        (name, text, speak(text)) for name, speak in _voices(engines.tts) for text in texts
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
    :func:`_voices`, one continuous stream through one detector (reset after each firing,
    as the daemon does).
    """
    from .engines.wake import MicroWakeWordDetector

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError("the wake-word run needs espeak-ng (scripts/install-system-deps.sh)")
    from .quality import FACTUAL, MEMORY

    detector = MicroWakeWordDetector(wake_word, threshold=threshold)
    phrase = detector.phrase.lower()
    said: list[tuple[str, bytes]] = []
    for voice in WAKE_VOICES:
        for wpm in WAKE_SPEEDS_WPM:
            said.append((f"espeak {voice} {wpm} wpm", _espeak(espeak, phrase, voice, wpm)))
    for rate in (0.85, 1.0, 1.15):
        pcm = b"".join(tts.synthesize(phrase, speaking_rate=rate))
        said.append((f"piper x{rate}", resample(pcm, tts.sample_rate_hz, RATE)))

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
        speak(text) + silence(0.5, RATE) for _, speak in _voices(tts) for text in texts
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


def _espeak(espeak: str, text: str, voice: str, words_per_minute: int) -> bytes:
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(
            [espeak, "-v", voice, "-s", str(words_per_minute), "-w", tmp.name, text],
            check=True,
            capture_output=True,
        )
        return read_audio(tmp.name, RATE)


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
    model = getattr(engines.stt, "_model", None)
    if reference and model is not None:
        from .audio import pcm16_to_float

        if hasattr(model, "window_frames"):
            model.window_frames = 3000  # plain faster-whisper: the full 30 s window

        plain = []
        for utterance in utterances:
            start = time.perf_counter()
            segments, _ = model.transcribe(pcm16_to_float(utterance.pcm), language="en")
            list(segments)
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
    if options.reference:
        result["reference_llama_cpp"] = _llama_cpp_reference(settings, options)
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
import json, sys, time
from llama_cpp import Llama
path, prompts = sys.argv[1], json.loads(sys.argv[2])
tokens, threads = int(sys.argv[3]), int(sys.argv[4])
model = Llama(model_path=path, n_ctx=2048, n_threads=threads, verbose=False)
out = []
for messages in prompts:
    start = time.perf_counter(); first = None; count = 0
    chunks = model.create_chat_completion(
        messages=messages, max_tokens=tokens, temperature=0.0, stream=True
    )
    for _ in chunks:
        if first is None:
            first = time.perf_counter()
        count += 1
    out.append([first - start, time.perf_counter() - first, count])
print(json.dumps(out))
"""


def _llama_cpp_reference(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    """llama.cpp on the same GGUF, in its own process.

    In-process it would share the cores with torch's and CTranslate2's OpenMP threads, which
    measured it at a third of its speed.
    """
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return {"skipped": "llama-cpp-python is not installed (make llamacpp)"}
    from .engines._hardware import physical_cores
    from .models import ModelManager, default_models_dir

    manager = ModelManager(root=default_models_dir(settings.models_dir), progress=False)
    ggufs = list(manager.model_dir("smollm2-135m-instruct").glob("*.gguf"))
    if not ggufs:
        return {"skipped": "the GGUF is not pulled"}
    prompts = [
        [
            {"role": "system", "content": settings.get_profile().prompt()},
            {"role": "user", "content": prompt},
        ]
        for prompt in LLM_PROMPTS
    ]
    threads = physical_cores()
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
    if result.returncode != 0:
        return {"skipped": f"llama.cpp failed: {result.stderr.strip()[-300:]}"}
    runs = json.loads(result.stdout)
    ttft = [first * 1000 for first, _, _ in runs]
    # The first streamed chunk carries only the role; the rest carry one token each.
    rates = [(count - 2) / rest for _, rest, count in runs if count > 2 and rest > 0]
    return {"first_token_ms": summarize(ttft), "tokens_per_s": summarize(rates), "threads": threads}


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
        settings, server=replace(settings.server, port=0, max_sessions=max(8, sessions))
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
                # Stagger the sessions so they do not all speak in lockstep.
                await asyncio.sleep(index * 0.7)
                for utterance in utterances:
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
    }


def _stage_summary(metrics: list[dict[str, float]]) -> dict[str, Any]:
    keys = ["end_of_turn", "stt", "llm_first_token", "first_piece", "first_audio", "voice_to_voice"]
    return {k: summarize([m[k] for m in metrics if k in m]) for k in keys}


# ----------------------------------------------------------------------------- driver


def run_bench(
    settings: Settings, options: BenchOptions, log: Callable[[str], None]
) -> dict[str, Any]:
    """Run everything; returns the results (also what ``--json`` writes)."""
    results: dict[str, Any] = {"machine": _machine()}
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
    utterances = make_utterances(engines, options)
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
    results["websocket"] = {}
    for sessions in options.concurrency:
        outcome = asyncio.run(_websocket_run(engines, settings, turns, sessions, gap_s=2.5))
        results["websocket"][str(sessions)] = outcome
        log(f"websocket x{sessions}: {outcome['voice_to_voice_ms']}, ping {outcome['ping_rtt_ms']}")
    results["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    engines.close()
    return results


def _machine() -> dict[str, Any]:
    from .engines._hardware import cpu_has_bf16, cuda_available, physical_cores

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "cpu": model or platform.processor(),
        "physical_cores": physical_cores(),
        "bf16": cpu_has_bf16(),
        "cuda": cuda_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def format_table(results: dict[str, Any]) -> str:
    """The results as a plain-text table."""
    lines = []

    def row(name: str, stats: dict[str, Any], unit: str = "ms") -> None:
        if not stats or stats.get("n", 1) == 0:
            lines.append(f"{name:<38} -")
            return
        lines.append(
            f"{name:<38} p50 {stats.get('p50', 0):>8.1f}  p95 {stats.get('p95', 0):>8.1f}  "
            f"max {stats.get('max', 0):>8.1f} {unit}"
        )

    startup = results["startup"]
    lines.append(f"{'models ready (load + warm-up)':<38} {startup['ready_s']} s")
    row("STT time", results["stt"]["ms"])
    lines.append(f"{'STT real-time factor p50':<38} {results['stt']['rtf'].get('p50')}")
    if "ratio_vs_reference" in results["stt"]:
        lines.append(f"{'STT vs plain faster-whisper':<38} {results['stt']['ratio_vs_reference']}x")
    row("LLM time to first token", results["llm"]["first_token_ms"])
    row("LLM decode", results["llm"]["tokens_per_s"], "tok/s")
    ref = results["llm"].get("reference_llama_cpp", {})
    if "tokens_per_s" in ref:
        row("llama.cpp decode (reference)", ref["tokens_per_s"], "tok/s")
        row("llama.cpp time to first token (ref.)", ref.get("first_token_ms", {}))
        lines.append(f"{'LLM decode vs llama.cpp':<38} {results['llm'].get('ratio_vs_llama_cpp')}x")
        ttft_ratio = results["llm"].get("first_token_ratio_vs_llama_cpp")
        lines.append(f"{'LLM first token vs llama.cpp':<38} {ttft_ratio}x")
    elif ref:
        lines.append(f"{'llama.cpp reference':<38} {ref.get('skipped')}")
    row("TTS first audio", results["tts"]["first_audio_ms"])
    for key in (
        "end_of_turn",
        "stt",
        "llm_first_token",
        "first_piece",
        "first_audio",
        "voice_to_voice",
    ):
        row(f"in-process {key}", results["in_process"].get(key, {}))
    lines.append(f"{'in-process unanswered utterances':<38} {results['in_process']['unanswered']}")
    for sessions, outcome in results["websocket"].items():
        row(f"websocket x{sessions} voice-to-voice", outcome["voice_to_voice_ms"])
        row(f"websocket x{sessions} ping RTT", outcome["ping_rtt_ms"])
        late = outcome["late_pings_over_100ms"]
        lines.append(
            f"{f'websocket x{sessions} late pings, unanswered':<38} {late}, {outcome['unanswered']}"
        )
    lines.append(f"{'peak RSS':<38} {results['peak_rss_mb']} MB")
    return "\n".join(lines)
