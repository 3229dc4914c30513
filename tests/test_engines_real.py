"""The real embedded models on the CPU: Piper speaks, Whisper hears, the LLM answers."""

from __future__ import annotations

import re
import threading
import time

import jiwer
import numpy as np
import pytest

from voicebot.audio import float_to_pcm16, silence
from voicebot.engines import Engines
from voicebot.speakable import SpeakableChunker

from .conftest import REPO, Speech

pytestmark = pytest.mark.models

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please turn off the lights in the kitchen.",
    "What is the weather like in London today?",
    "My favorite color is green and I live in Paris.",
    "Remind me to call my sister tomorrow morning.",
]


def normalise(text: str) -> str:
    text = text.lower().replace("colour", "color").replace("favourite", "favorite")
    return re.sub(r"[^a-z0-9' ]+", " ", text).strip()


def test_piper_speech_is_transcribed_back_with_low_word_error(
    real_engines: Engines, speech: Speech
) -> None:
    heard = [real_engines.stt.transcribe(speech.piper(s)).text for s in SENTENCES]
    error = jiwer.wer([normalise(s) for s in SENTENCES], [normalise(h) for h in heard])
    assert error < 0.10, list(zip(SENTENCES, heard, strict=True))


def test_another_voice_espeak_is_understood(real_engines: Engines, speech: Speech) -> None:
    sentences = SENTENCES[2:4]
    heard = [real_engines.stt.transcribe(speech.espeak(s)).text for s in sentences]
    error = jiwer.wer([normalise(s) for s in sentences], [normalise(h) for h in heard])
    assert error < 0.15, list(zip(sentences, heard, strict=True))


def test_speech_with_silence_around_it_is_transcribed(
    real_engines: Engines, speech: Speech
) -> None:
    pcm = silence(1.0, 16000) + speech.piper("Set a timer for ten minutes.") + silence(1.5, 16000)
    text = normalise(real_engines.stt.transcribe(pcm).text)
    assert "timer" in text and ("10" in text or "ten" in text)


@pytest.mark.parametrize("kind", ["silence", "white noise", "hum", "murmur", "clicks"])
def test_silence_and_noise_transcribe_to_nothing(real_engines: Engines, kind: str) -> None:
    rng = np.random.default_rng(7)
    t = np.arange(3 * 16000) / 16000
    signal = {
        "silence": np.zeros_like(t),
        "white noise": rng.normal(0, 0.1, t.size),
        "hum": 0.2 * np.sin(2 * np.pi * 60 * t),
        "murmur": sum(0.05 * np.sin(2 * np.pi * f * t) for f in (180, 260, 390, 520))
        * (1 + np.sin(2 * np.pi * 3 * t)),
        "clicks": (rng.random(t.size) > 0.999) * 0.8,
    }[kind]
    assert real_engines.stt.transcribe(float_to_pcm16(signal.astype(np.float32))).text == ""


def test_piper_voice_speaks_at_its_rate_and_speed(real_engines: Engines) -> None:
    from voicebot.engines.tts import PiperTts

    assert real_engines.tts.sample_rate_hz == 22050
    # Piper's default duration noise varies the length from run to run; without it the
    # ratio of the two speeds is exact.
    path = REPO / "models" / "piper-en_US-joe-medium" / "en_US-joe-medium.onnx"
    tts = PiperTts(path, noise_scale=0.0, noise_w_scale=0.0)
    normal = b"".join(tts.synthesize("This sentence is spoken at two different speeds."))
    fast = b"".join(
        tts.synthesize("This sentence is spoken at two different speeds.", speaking_rate=1.5)
    )
    normal_s, fast_s = len(normal) / 2 / 22050, len(fast) / 2 / 22050
    assert 2.0 < normal_s < 5.0
    assert 0.55 < fast_s / normal_s < 0.8
    samples = np.frombuffer(normal, dtype="<i2").astype(np.float32) / 32768
    assert np.sqrt(np.mean(samples**2)) > 0.05  # real sound, not silence


def test_piper_stops_between_sentences_when_cancelled(real_engines: Engines) -> None:
    cancel = threading.Event()
    chunks = []
    for pcm in real_engines.tts.synthesize("First sentence. Second sentence. Third one.", cancel):
        chunks.append(pcm)
        cancel.set()
    assert len(chunks) == 1


def test_llm_streams_a_short_answer(real_engines: Engines, settings) -> None:
    # With the prompt the assistant always sends: the default profile's.
    system = {"role": "system", "content": settings.get_profile().prompt()}
    fragments = list(
        real_engines.llm.stream(
            [system, {"role": "user", "content": "What is the capital of France?"}],
            threading.Event(),
        )
    )
    assert len(fragments) > 3
    assert "paris" in "".join(fragments).lower()


def test_cancelling_the_stream_stops_generation_within_a_few_tokens(real_engines: Engines) -> None:
    cancel = threading.Event()
    messages = [{"role": "user", "content": "Tell me a long story about a dragon and a knight."}]
    received: list[str] = []
    start = time.perf_counter()
    for fragment in real_engines.llm.stream(messages, cancel):
        received.append(fragment)
        if len(received) == 3:
            cancel.set()
    elapsed = time.perf_counter() - start
    assert 3 <= len(received) <= 5
    # The generation thread is gone: a new stream starts and finishes normally.
    again = list(
        real_engines.llm.stream([{"role": "user", "content": "Say hi."}], threading.Event())
    )
    assert again
    assert elapsed < 30


def test_the_chunker_gives_a_first_piece_before_the_reply_is_complete(
    real_engines: Engines,
) -> None:
    chunker = SpeakableChunker()
    fragments_before_first_piece = None
    total = 0
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Describe the sun in three sentences."},
    ]
    for fragment in real_engines.llm.stream(messages, threading.Event()):
        total += 1
        if chunker.feed(fragment) and fragments_before_first_piece is None:
            fragments_before_first_piece = total
    chunker.flush()
    assert fragments_before_first_piece is not None
    assert fragments_before_first_piece < total


async def test_two_turn_dialogue_remembers_and_resumes(real_engines: Engines, settings) -> None:
    import asyncio

    from voicebot.engines.fake import FakeTts
    from voicebot.events import ReplyDone
    from voicebot.session import Session
    from voicebot.store import Store

    engines = Engines(
        stt=real_engines.stt,
        llm=real_engines.llm,
        tts=FakeTts(),
        vad_factory=real_engines.vad_factory,
    )
    engines._workers = real_engines._workers  # share the model threads  # noqa: SLF001
    store = Store(settings.database_path())
    replies: list[str] = []

    async def sink(event: object) -> None:
        if isinstance(event, ReplyDone):
            replies.append(event.text)

    session = Session(engines, settings, sink=sink, store=store, realtime_playback=False)
    cid = await session.start()
    await session.send_text("My name is Ada.")
    await asyncio.wait_for(session.wait_idle(), 60)
    await session.close()

    resumed = Session(
        engines, settings, sink=sink, store=store, conversation_id=cid, realtime_playback=False
    )
    await resumed.start()
    await resumed.send_text("What is my name?")
    await asyncio.wait_for(resumed.wait_idle(), 60)
    assert "ada" in replies[-1].lower(), replies
    assert [t.role for t in store.turns(cid)] == ["user", "assistant", "user", "assistant"]


def test_the_fitted_encoder_window_is_fast_and_understands(speech: Speech) -> None:
    from voicebot.engines.stt import WhisperStt

    stt = WhisperStt(REPO / "models" / "whisper-tiny.en", fit_window=True)
    heard = [stt.transcribe(speech.piper(s)).text for s in SENTENCES]
    error = jiwer.wer([normalise(s) for s in SENTENCES], [normalise(h) for h in heard])
    assert error < 0.15, list(zip(SENTENCES, heard, strict=True))
    assert stt.transcribe(silence(2.0, 16000)).text == ""


def test_a_repeated_phrase_is_recognised_as_a_decoding_loop() -> None:
    from voicebot.engines.stt import _repeats

    assert _repeats("What is the weather like in London today? What is the weather like in")
    assert not _repeats("What is the weather like in London today?")


def test_another_chat_model_is_used_by_configuration_alone(tmp_path) -> None:
    from dataclasses import replace

    from voicebot.engines import load_llm
    from voicebot.engines._hardware import cpu_has_bf16
    from voicebot.engines.llm import TransformersChat

    from .conftest import make_settings

    # A model named by its directory (as a user's bigger model would be), on transformers,
    # the engine for any Hugging Face model; int8 weights where the CPU computes in bf16.
    directory = REPO / "models" / "smollm2-135m-instruct" / "hf"
    settings = make_settings(tmp_path)
    settings = replace(
        settings,
        llm=replace(settings.llm, model=str(directory), weights="int8", backend="transformers"),
    )
    llm = load_llm(settings)
    assert isinstance(llm, TransformersChat)
    assert llm.weights == ("int8" if cpu_has_bf16() else "dense")
    reply = "".join(
        llm.stream(
            [{"role": "user", "content": "What is the capital of France?"}], threading.Event()
        )
    )
    assert "paris" in reply.lower()
