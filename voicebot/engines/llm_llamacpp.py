"""The chat model with llama.cpp: the optional faster CPU backend for GGUF models.

transformers stays the default (it runs everywhere, and on CUDA); this backend runs the very
GGUF the default model ships as, through ``llama-cpp-python`` (``pip install
'voicebot[llamacpp]'``, or ``make llamacpp``, which builds it with flags that work on every x86
CPU). On the development machine it decodes the default model at 40 tokens/s on one thread
against 34 for transformers, and reads a prompt 3x faster (docs/benchmarks.md).
"""

from __future__ import annotations

import codecs
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import EngineError, ModelError
from ._hardware import physical_cores
from .base import Message

__all__ = ["LlamaCppChat", "find_gguf"]

_LOGGER = logging.getLogger(__name__)


def find_gguf(model: str | Path) -> Path:
    """The ``.gguf`` file a model reference stands for.

    A ``.gguf`` path is itself; a directory gives the one GGUF in it or, for a catalog model's
    converted directory, in its parent.

    Raises:
        ModelError: no single GGUF file there.
    """
    path = Path(str(model)).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        for directory in (path, path.parent):
            found = sorted(directory.glob("*.gguf"))
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                names = ", ".join(p.name for p in found)
                raise ModelError(f"several GGUF files in {directory} ({names}): name one")
    raise ModelError(f"the llama-cpp chat backend needs a .gguf file; {model} is not one")


class LlamaCppChat:
    """A GGUF chat model run by llama.cpp, streaming its reply.

    The prompt is the model's own chat template (from the GGUF metadata). llama.cpp keeps the
    previous prompt's KV cache and reuses its longest common prefix, so the system prompt is
    read once, not at every turn.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        max_new_tokens: int = 96,
        temperature: float = 0.0,
        repetition_penalty: float = 1.0,
        threads: int = 0,
        context_tokens: int = 2048,
    ) -> None:
        """Load a model.

        Args:
            model: A ``.gguf`` file, or a directory holding one (a catalog model's).
            max_new_tokens: Longest reply.
            temperature: 0 for greedy decoding, else the sampling temperature.
            repetition_penalty: Penalty on repeated tokens (1.0 for none).
            threads: CPU threads; 0 for one less than the physical cores (at least 1).
            context_tokens: Context window to allocate (the prompt budget plus the reply).

        Raises:
            ModelError: llama-cpp-python is not installed, or the model cannot be loaded.
        """
        try:
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as error:
            raise ModelError(
                "the llama-cpp chat backend needs llama-cpp-python: run `make llamacpp` "
                "(or pip install 'voicebot[llamacpp]')"
            ) from error
        path = find_gguf(model)
        # Like the transformers backend: one core is left to speech recognition and synthesis.
        self.threads = threads or max(1, physical_cores() - 1)
        """CPU threads."""
        try:
            self._llama: Any = Llama(
                model_path=str(path),
                n_ctx=context_tokens + max_new_tokens,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                verbose=False,
            )
        except (OSError, ValueError, RuntimeError) as error:
            raise ModelError(f"cannot load chat model {path}: {error}") from error
        template = self._llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelError(f"chat model {path} has no chat template")
        self._format = Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(self._llama.token_eos()),
            bos_token=self._token_text(self._llama.token_bos()),
            add_generation_prompt=True,
        )
        # llama.cpp's context is not safe to enter from two threads; the session's worker
        # already serialises calls, this guards direct users.
        self._lock = threading.Lock()
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.repetition_penalty = repetition_penalty
        self.device = "cpu"
        """Where the model runs."""
        self.name = str(path)
        """The model's path."""
        _LOGGER.info("chat model %s with llama.cpp (%d threads)", path, self.threads)

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        text: str = self._llama.detokenize([token], special=True).decode("utf-8", "replace")
        return text

    def _prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        chat: Any = list(messages)  # llama_cpp's own message TypedDicts, same shape
        prompt = self._format(messages=chat).prompt
        # The template writes the special tokens itself (its own BOS included, if any).
        tokens: list[int] = self._llama.tokenize(
            prompt.encode("utf-8"), add_bos=False, special=True
        )
        return tokens

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens these messages take, generation prompt included."""
        return len(self._prompt_tokens(messages))

    def count_text_tokens(self, text: str) -> int:
        """Tokens in a piece of plain text (for the benchmark's tokens/s)."""
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False))

    def stream(self, messages: Sequence[Message], cancel: threading.Event) -> Iterator[str]:
        """Yield the reply in text fragments as the model writes it.

        Runs in the calling thread (the chat model's worker); checks ``cancel`` after every
        token.
        """
        import llama_cpp

        tokens = self._prompt_tokens(messages)
        if len(tokens) + self.max_new_tokens > self._llama.n_ctx():
            limit = self._llama.n_ctx()
            raise EngineError(
                f"prompt of {len(tokens)} tokens does not fit the {limit}-token context"
            )
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        vocab = self._llama._model.vocab
        with self._lock:
            try:
                generated = self._llama.generate(
                    tokens,
                    temp=self.temperature,
                    repeat_penalty=self.repetition_penalty,
                    top_k=40 if self.temperature > 0 else 1,
                    top_p=0.95 if self.temperature > 0 else 1.0,
                    min_p=0.05 if self.temperature > 0 else 0.0,
                )
                for count, token in enumerate(generated):
                    if cancel.is_set() or llama_cpp.llama_vocab_is_eog(vocab, token):
                        break
                    text = decoder.decode(self._llama.detokenize([token]))
                    if text:
                        yield text
                    if count + 1 >= self.max_new_tokens:
                        break
                rest = decoder.decode(b"", final=True)
                if rest and not cancel.is_set():
                    yield rest
            except RuntimeError as error:
                raise EngineError(f"reply generation failed: {error}") from error
