"""The CTranslate2 chat backend on the embedded SmolLM2-135M-Instruct: same contract as the others.

The first load converts the embedded Hugging Face model (``models/.../hf``) once into
``models/.../ct2-int8``; every later load, in these tests and in the app, reuses it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import ctranslate2
import pytest
from tokenizers import Tokenizer

from voicebot.engines.base import ChatModel, Message, TurnDetector
from voicebot.engines.llm_ct2 import CTranslate2Chat, converted_dir
from voicebot.errors import EngineError, ModelError

from .conftest import REPO

pytestmark = pytest.mark.models

HF_DIR = REPO / "models" / "smollm2-135m-instruct" / "hf"
CT2_DIR = converted_dir(HF_DIR)

SYSTEM: Message = {
    "role": "system",
    "content": "You are a helpful AI assistant. Keep answers brief.",
}


def ask(text: str) -> list[Message]:
    return [SYSTEM, {"role": "user", "content": text}]


@pytest.fixture(scope="module")
def chat() -> Iterator[CTranslate2Chat]:
    yield CTranslate2Chat(HF_DIR, threads=1)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_it_answers_and_is_a_chat_model_and_a_turn_detector(chat: CTranslate2Chat) -> None:
    assert isinstance(chat, ChatModel)
    assert isinstance(chat, TurnDetector)
    assert chat.device == "cpu"
    assert chat.threads == 1
    fragments = list(chat.stream(ask("What is the capital of France?"), threading.Event()))
    assert len(fragments) > 3
    assert "paris" in "".join(fragments).lower()


def test_streamed_fragments_join_to_the_whole_decoded_reply(chat: CTranslate2Chat) -> None:
    # Japanese: characters of three bytes, split across tokens.
    messages: list[Message] = [
        {"role": "user", "content": "How do you say 'thank you' in Japanese?"}
    ]
    fragments = list(chat.stream(messages, threading.Event()))
    assert len(fragments) > 3
    assert all("\ufffd" not in f for f in fragments)
    # The same greedy reply, generated in one batch and decoded whole.
    tokenizer = Tokenizer.from_file(str(CT2_DIR / "tokenizer.json"))
    generator = ctranslate2.Generator(str(CT2_DIR), intra_threads=1, compute_type="int8")
    prompt = tokenizer.encode(
        chat._render(messages, add_generation_prompt=True), add_special_tokens=False
    ).tokens
    (result,) = generator.generate_batch(
        [prompt],
        max_length=chat.max_new_tokens,
        sampling_topk=1,
        end_token="<|im_end|>",
        include_prompt_in_result=False,
    )
    whole = tokenizer.decode(result.sequences_ids[0], skip_special_tokens=True)
    assert "".join(fragments) == whole
    assert any(ord(c) > 0x3000 for c in whole), whole


def test_cancelling_stops_within_a_token_and_the_next_reply_is_whole(
    chat: CTranslate2Chat,
) -> None:
    cancel = threading.Event()
    received: list[str] = []
    for fragment in chat.stream(ask("Tell me a long story about a dragon."), cancel):
        received.append(fragment)
        if len(received) == 2:
            cancel.set()
    assert len(received) == 2
    again = "".join(chat.stream(ask("What is the capital of France?"), threading.Event()))
    assert "paris" in again.lower()
    assert "dragon" not in again.lower()


def test_replies_stop_at_max_new_tokens() -> None:
    short = CTranslate2Chat(CT2_DIR, max_new_tokens=5)
    text = "".join(short.stream(ask("Describe the ocean in detail."), threading.Event()))
    assert 0 < short.count_text_tokens(text) <= 5


def test_a_prompt_longer_than_the_context_is_an_engine_error() -> None:
    small = CTranslate2Chat(CT2_DIR, context_tokens=16)
    with pytest.raises(EngineError, match="does not fit the 16-token context"):
        list(small.stream(ask("What is the capital of France?"), threading.Event()))


def test_a_finished_question_ends_the_turn_more_likely_than_a_fragment(
    chat: CTranslate2Chat,
) -> None:
    finished = chat.end_of_turn_probability(ask("What is the capital of France"))
    asked = chat.end_of_turn_probability(ask("What is the capital of France?"))
    fragment = chat.end_of_turn_probability(ask("I want to know what the"))
    assert 0.0 <= fragment < finished < asked <= 1.0
    # Measured: 0.0022 against 2e-10; the margin is orders of magnitude.
    assert finished > 1000 * fragment
    # The earlier conversation counts too; trailing spaces of a transcript do not.
    history: list[Message] = [
        SYSTEM,
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada!"},
        {"role": "user", "content": "What is my name? "},
    ]
    assert chat.end_of_turn_probability(history) > chat.end_of_turn_probability(
        [*history[:-1], {"role": "user", "content": "What is my"}]
    )


def test_prompt_tokens_grow_with_the_conversation(chat: CTranslate2Chat) -> None:
    one = chat.count_tokens(ask("What is my name?"))
    three = chat.count_tokens(
        [
            SYSTEM,
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Nice to meet you, Ada!"},
            {"role": "user", "content": "What is my name?"},
        ]
    )
    assert 0 < one < three
    assert chat.count_text_tokens("Paris") == 1
    assert chat.count_text_tokens("The capital of France is Paris.") == 7


def test_the_conversion_is_reused_and_loading_it_does_not_import_torch(
    chat: CTranslate2Chat,
) -> None:
    model_bin = CT2_DIR / "model.bin"
    before = model_bin.stat().st_mtime_ns
    result = run_python(
        "import sys\n"
        "from voicebot.engines.llm_ct2 import CTranslate2Chat\n"
        f"chat = CTranslate2Chat({str(HF_DIR)!r})\n"
        "print(chat.count_text_tokens('Paris'), 'torch' in sys.modules)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "False"]
    assert model_bin.stat().st_mtime_ns == before


def test_a_changed_source_is_converted_again(tmp_path: Path) -> None:
    # A model directory of links to the embedded one's files, and a copy of its conversion
    # (which moved directories keep). Torch is blocked in the child process, so a conversion
    # attempt shows as an error naming it.
    source = tmp_path / "hf"
    source.mkdir()
    for path in HF_DIR.iterdir():
        if path.name == "tokenizer_config.json":
            shutil.copy2(path, source / path.name)
        else:
            (source / path.name).symlink_to(path)
    shutil.copytree(CT2_DIR, converted_dir(source))
    load = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from voicebot.engines.llm_ct2 import CTranslate2Chat\n"
        "from voicebot.errors import ModelError\n"
        "try:\n"
        f"    CTranslate2Chat({str(source)!r})\n"
        "except ModelError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    print('loaded')\n"
    )
    result = run_python(load)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loaded"
    (source / "tokenizer_config.json").write_text(
        (source / "tokenizer_config.json").read_text() + "\n"
    )
    result = run_python(load)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"converting {source} for CTranslate2 needs torch")


def test_a_missing_or_foreign_directory_is_a_clear_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        CTranslate2Chat(tmp_path / "nothing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="neither a CTranslate2 model"):
        CTranslate2Chat(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load chat model"):
        CTranslate2Chat(tmp_path)
