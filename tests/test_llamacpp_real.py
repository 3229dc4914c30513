"""The llama.cpp chat engine (prebuilt ik_llama.cpp) on the embedded GGUF.

It is the default CPU engine, installed with voicebot: a missing package fails these tests, it
never skips them.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import ik_llama_cpp  # noqa: F401  (fail loudly when the engine is not installed)
import pytest

from voicebot.audio import read_audio, write_wav
from voicebot.config import Settings
from voicebot.engines import Engines, load_llm
from voicebot.engines.llm_llamacpp import LlamaCppChat, find_gguf
from voicebot.errors import ModelError

from .conftest import REPO, Speech, make_settings
from .test_cli import voicebot

pytestmark = pytest.mark.models

GGUF_DIR = REPO / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppChat]:
    settings = make_settings(tmp_path_factory.mktemp("llama"), **{"llm.backend": "llama-cpp"})
    chat = load_llm(settings)
    assert isinstance(chat, LlamaCppChat)
    yield chat


SYSTEM = {"role": "system", "content": "You are a helpful AI assistant. Keep answers brief."}


def test_it_answers_from_the_catalog_gguf(llama: LlamaCppChat) -> None:
    assert llama.name.endswith(".gguf")
    fragments = list(
        llama.stream(
            [SYSTEM, {"role": "user", "content": "What is the capital of France?"}],
            threading.Event(),
        )
    )
    assert len(fragments) > 3
    assert "paris" in "".join(fragments).lower()


def test_the_prompt_is_the_models_own_chat_template(llama: LlamaCppChat) -> None:
    from voicebot.engines.llm_ct2 import CTranslate2Chat

    # The GGUF's template and tokenizer against the Hugging Face files read by another engine:
    # the same prompt tokens, so history is trimmed to the budget identically.
    other = CTranslate2Chat(GGUF_DIR / "hf")
    messages = [
        SYSTEM,
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada!"},
        {"role": "user", "content": "What is my name?"},
    ]
    assert llama.count_tokens(messages) == other.count_tokens(messages)


def test_cancelling_stops_within_a_token_and_the_next_reply_is_whole(llama: LlamaCppChat) -> None:
    cancel = threading.Event()
    story = [SYSTEM, {"role": "user", "content": "Tell me a long story about a dragon."}]
    received: list[str] = []
    for fragment in llama.stream(story, cancel):
        received.append(fragment)
        if len(received) == 3:
            cancel.set()
    assert len(received) == 3
    # The cached prompt of the cancelled reply does not leak into the next one.
    again = "".join(
        llama.stream(
            [SYSTEM, {"role": "user", "content": "What is the capital of France?"}],
            threading.Event(),
        )
    )
    assert "paris" in again.lower()
    assert "dragon" not in again.lower()


def test_replies_stop_at_max_new_tokens(tmp_path: Path) -> None:
    chat = LlamaCppChat(GGUF_DIR, max_new_tokens=5, threads=1)
    text = "".join(
        chat.stream(
            [SYSTEM, {"role": "user", "content": "Describe the ocean in detail."}],
            threading.Event(),
        )
    )
    assert 0 < chat.count_text_tokens(text) <= 5


def test_a_model_without_a_gguf_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="needs a .gguf file"):
        find_gguf(tmp_path)
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ModelError, match="several GGUF files"):
        find_gguf(tmp_path)
    (tmp_path / "b.gguf").unlink()
    (tmp_path / "a.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ModelError, match="cannot load chat model"):
        LlamaCppChat(tmp_path / "a.gguf")


def test_without_the_package_the_error_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ik_llama_cpp", None)
    with pytest.raises(ModelError, match="pip install 'ik-llama-cpp-python"):
        LlamaCppChat(GGUF_DIR)


def test_prompts_read_in_chunks_give_the_logits_of_one_token_reads(llama: LlamaCppChat) -> None:
    # The build's batched kernels are wrong past 16 tokens: the engine picked a chunk size
    # that it verified, and a long prompt read in chunks answers as a cold, short one does.
    assert 1 <= llama.prefill_chunk <= 16
    question = {"role": "user", "content": "What is the capital of France?"}
    long_system = {
        "role": "system",
        "content": "You are a helpful AI assistant. Keep answers brief. " * 12,
    }
    reply = "".join(llama.stream([long_system, question], threading.Event()))
    assert llama.count_tokens([long_system, question]) > 4 * llama.prefill_chunk
    assert "paris" in reply.lower()


def test_the_kept_cache_gives_the_same_reply_as_a_cold_start(llama: LlamaCppChat) -> None:
    messages = [SYSTEM, {"role": "user", "content": "How many legs does a spider have?"}]
    cold = LlamaCppChat(GGUF_DIR, threads=1)
    expected = "".join(cold.stream(messages, threading.Event()))
    # Warm the cache with other prompts sharing a prefix, and an end-of-turn question on the
    # same words, then ask again: only the tokens after the common prefix are read.
    "".join(llama.stream([SYSTEM, {"role": "user", "content": "How many"}], threading.Event()))
    llama.end_of_turn_probability(messages)
    assert "".join(llama.stream(messages, threading.Event())) == expected


def test_replies_interleaved_with_other_calls_are_the_replies_alone(llama: LlamaCppChat) -> None:
    # The model worker sets a reply aside once its first words are out and serves another
    # user's in between: each generator must find its own context again.
    spider = [SYSTEM, {"role": "user", "content": "How many legs does a spider have?"}]
    capital = [SYSTEM, {"role": "user", "content": "What is the capital of Italy?"}]
    alone = ["".join(llama.stream(m, threading.Event())) for m in (spider, capital)]
    parts: list[list[str]] = [[], []]
    live = {i: llama.stream(m, threading.Event()) for i, m in enumerate((spider, capital))}
    while live:
        for index, generator in list(live.items()):
            fragment = next(generator, None)
            if fragment is None:
                del live[index]
            else:
                parts[index].append(fragment)
                llama.end_of_turn_probability([SYSTEM, {"role": "user", "content": "I want to"}])
    assert ["".join(p) for p in parts] == alone
    assert "8" in alone[0] or "eight" in alone[0].lower()


def test_users_taking_turns_each_find_their_own_history_still_read(
    llama: LlamaCppChat,
) -> None:
    history = {
        name: [
            SYSTEM,
            {"role": "user", "content": f"My name is {name}. I live in {town}."},
            {"role": "assistant", "content": f"Nice to meet you, {name}. {town} is lovely."},
        ]
        for name, town in (("Ada", "Porto"), ("Bob", "Oslo"), ("Cleo", "Lima"))
    }
    for name in history:  # each conversation read once
        "".join(llama.stream(history[name], threading.Event()))
    for name in history:  # then every user's next turn, one after the other
        asked = [*history[name], {"role": "user", "content": "Where do I live?"}]
        before = llama.tokens_read
        llama.end_of_turn_probability(asked)  # reads the prompt, writes nothing
        new_tokens = llama.count_tokens(asked) - llama.count_tokens(history[name])
        # Only the new turn is read: the history is still in its slot.
        assert llama.tokens_read - before <= new_tokens
        assert "".join(llama.stream(asked, threading.Event()))
    assert llama.slots >= len(history)


def test_finished_words_are_more_likely_the_end_of_the_turn(llama: LlamaCppChat) -> None:
    def probability(text: str) -> float:
        return llama.end_of_turn_probability([SYSTEM, {"role": "user", "content": text}])

    finished = [probability(t) for t in ("What is the capital of France?", "Tell me a joke.")]
    unfinished = [probability(t) for t in ("I want to know what the", "Set a timer for")]
    assert all(0.0 <= p <= 1.0 for p in finished + unfinished)
    assert min(finished) > 10 * max(unfinished), (finished, unfinished)


async def test_a_voice_session_on_llama_cpp_remembers_the_user(
    llama: LlamaCppChat, real_engines: Engines, settings: Settings, speech: Speech
) -> None:
    from voicebot.audio import silence
    from voicebot.events import ReplyDone, Transcript
    from voicebot.session import Session
    from voicebot.store import Store
    from voicebot.transports.file import feed_recording

    from .conftest import Recorder

    engines = Engines(
        stt=real_engines.stt,
        llm=llama,
        tts=real_engines.tts,
        vad_factory=real_engines.vad_factory,
    )
    engines._workers = real_engines._workers  # share the model threads  # noqa: SLF001
    recorder = Recorder()
    session = Session(engines, settings, sink=recorder, store=Store(settings.database_path()))
    await session.start()
    gap = silence(6.0, 16000)
    audio = (
        silence(0.5, 16000)
        + speech.piper("My name is Ada.", rate=0.9)
        + gap
        + speech.piper("What is my name?", rate=0.9)
        + gap
    )
    await feed_recording(session, audio, 16000)
    await session.close()
    heard = [t.text for t in recorder.of(Transcript) if t.final]
    assert heard == ["My name is Ada.", "What is my name?"]
    replies = recorder.texts(ReplyDone)
    assert len(replies) == 2
    assert "ada" in replies[1].lower(), replies


def test_reply_command_on_llama_cpp_answers_out_loud(speech: Speech, tmp_path: Path) -> None:
    question = tmp_path / "q.wav"
    write_wav(question, speech.piper("What is the capital of France?"), 16000)
    answer = tmp_path / "a.wav"
    result = voicebot(
        "reply", str(question), "-o", str(answer), "--llm-backend", "llama-cpp", data=tmp_path
    )
    assert result.returncode == 0, result.stderr
    reply = result.stdout.splitlines()[1].split(": ", 1)[1]
    assert "paris" in reply.lower()
    heard = speech.engines.stt.transcribe(read_audio(answer, 16000)).text.lower()
    assert "paris" in heard
