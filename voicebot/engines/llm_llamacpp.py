"""The chat model with llama.cpp: the fast CPU engine for GGUF models, with no compiler.

It runs the very GGUF the default model ships as, through ``ik-llama-cpp-python``: prebuilt
wheels (AVX2, glibc 2.27, so any x86-64 CPU of the last ten years and any current Linux) of
``ik_llama.cpp``, the llama.cpp fork with the fastest CPU kernels. Nothing is compiled at
install. On 2 cores the default 135M model decodes at 185 tokens/s on one thread, 2.5x
CTranslate2 and 27x transformers on an AVX2-only CPU (docs/benchmarks.md).

Two things make it fit a voice loop:

- **The KV cache is kept between calls** and only the tokens after the longest common prefix
  are read: the system prompt is read once, an end-of-turn question
  (:meth:`~LlamaCppChat.end_of_turn_probability`) leaves the user's words in the cache for the
  reply that follows, and a turn costs only its own new tokens. The context holds several
  conversations at once (one llama.cpp sequence per slot, ``slots``): users of one server who
  take turns each find their own history still read, instead of the last user's.
- **Prompts are read 16 tokens at a time.** This build's batched matrix kernels give wrong
  logits for batches of more than 16 tokens of this model on AVX2 (measured: identical logits
  to token-by-token evaluation up to 16, different from 32 on); the engine checks the chunked
  read against one-token reads at load and falls back to smaller chunks if they ever differ.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EngineError, ModelError
from ._hardware import physical_cores
from .base import Message
from .chat_template import compile_chat_template

__all__ = ["LlamaCppChat", "find_gguf"]

_LOGGER = logging.getLogger(__name__)

_PREFILL_CHUNK = 16
"""Prompt tokens per llama_decode call (see the module docstring)."""
_SAME_CONVERSATION_TAIL = 16
"""A slot continues a conversation when the new prompt shares all its tokens but at most
this many at the end: the user's words re-read with their punctuation after the end-of-turn
judgement, a reply cut short by the user and stored as heard."""
_SELF_CHECK_TEXT = (
    "The quick brown fox jumps over the lazy dog while the cat sleeps on a warm windowsill "
    "and the birds sing in the garden behind the old stone house by the river."
)

# llama.cpp logs every load step to stderr; send it to our logger instead. The callback
# object must outlive the library, so it is a module global.
_LOG_CALLBACK_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


def _forward_log(_level: int, text: bytes | None, _data: Any) -> None:
    if text:
        _LOGGER.debug("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())


_LOG_CALLBACK = _LOG_CALLBACK_TYPE(_forward_log)


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


def _gguf_chat_metadata(path: Path) -> tuple[str, str, str]:
    """The chat template and the BOS and EOS token texts stored in a GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(name: str) -> Any:
        item = reader.fields.get(name)
        return None if item is None else item.contents()

    template = field("tokenizer.chat_template")
    tokens = field("tokenizer.ggml.tokens") or []

    def token(name: str) -> str:
        index = field(name)
        return str(tokens[index]) if isinstance(index, int) and 0 <= index < len(tokens) else ""

    if not template:
        raise ModelError(f"chat model {path} has no chat template")
    return str(template), token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")


class LlamaCppChat:
    """A GGUF chat model run by llama.cpp (ik_llama.cpp build), streaming its reply.

    The prompt is the model's own chat template (from the GGUF metadata), rendered with
    jinja2 the way transformers renders it.
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
        slots: int = 4,
        lora: str | Path | None = None,
    ) -> None:
        """Load a model.

        Args:
            model: A ``.gguf`` file, or a directory holding one (a catalog model's).
            max_new_tokens: Longest reply.
            temperature: 0 for greedy decoding, else the sampling temperature.
            repetition_penalty: Penalty on tokens already in the reply (1.0 for none).
            threads: CPU threads; 0 for one less than the physical cores (at least 1): the
                other core is left to speech recognition and synthesis.
            context_tokens: Context window to allocate (the prompt budget plus the reply).
            slots: Conversations whose keys and values the context keeps at once (each takes
                up to ``context_tokens`` of the cache, allocated as it is used).
            lora: A LoRA adapter in llama.cpp's GGUF format, applied at run time
                (``adapter.gguf`` of ``voicebot tune``, docs/learning.md).

        Raises:
            ModelError: ik-llama-cpp-python is not installed, or the model cannot be loaded.
        """
        try:
            from ik_llama_cpp import _ctypes_api
            from ik_llama_cpp._internals import IkContext, IkModel
        except (ImportError, OSError) as error:
            raise ModelError(
                "the llama-cpp chat backend needs ik-llama-cpp-python "
                f"(pip install 'ik-llama-cpp-python==0.1.5'): {error}"
            ) from error
        path = find_gguf(model)
        self._c: Any = _ctypes_api
        self._lib: Any = _ctypes_api._lib  # noqa: SLF001 - the loaded library, for the calls the wrapper lacks
        self._lib.llama_log_set(_LOG_CALLBACK, None)
        self._lib.llama_kv_cache_seq_rm.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int32,
            ctypes.c_int32,
            ctypes.c_int32,
        ]
        self._lib.llama_kv_cache_seq_rm.restype = ctypes.c_bool
        self._lib.llama_kv_cache_seq_cp.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int32,
            ctypes.c_int32,
            ctypes.c_int32,
            ctypes.c_int32,
        ]
        self._lib.llama_kv_cache_seq_cp.restype = None
        self.threads = threads or max(1, physical_cores() - 1)
        """CPU threads."""
        self.context_tokens = context_tokens + max_new_tokens
        """Tokens one conversation may take in the context."""
        self.slots = max(1, slots)
        """Conversations the context keeps at once."""
        try:
            template, self._bos, self._eos = _gguf_chat_metadata(path)
            self._model: Any = IkModel(str(path))
            self._ctx: Any = IkContext(
                self._model,
                n_ctx=self.context_tokens * self.slots,
                n_threads=self.threads,
                flash_attn=False,
                n_seq_max=self.slots,
            )
            if lora:
                self._lora = _apply_lora(self._lib, self._model.model, self._ctx.ctx, Path(lora))
        except (OSError, ValueError, RuntimeError) as error:
            raise ModelError(f"cannot load chat model {path}: {error}") from error
        self._template = compile_chat_template(template, path)
        self._n_vocab = int(self._model.n_vocab)
        # Per slot (llama.cpp sequence): the tokens whose keys and values are in the context,
        # and when the slot was last used.
        self._slot_tokens: list[list[int]] = [[] for _ in range(self.slots)]
        self._slot_used = [0] * self.slots
        self._uses = 0
        self._slot = 0  # the slot the last prefill chose
        self.tokens_read = 0
        """Tokens read into the context so far (prompts and replies): what the cache saved
        shows here."""
        # A llama.cpp context is not safe to enter from two threads; the session's worker
        # already serialises calls, this guards direct users.
        self._lock = threading.Lock()
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.repetition_penalty = repetition_penalty
        self._rng = np.random.default_rng()
        self.resumable = True
        """Other calls may run between two fragments of :meth:`stream` (the model worker
        sets a reply aside once its first words are out, to start the next user's)."""
        self.device = "cpu"
        """Where the model runs."""
        self.name = str(path)
        """The model's path."""
        self.prefill_chunk = self._check_prefill()
        """Prompt tokens read per llama_decode call (verified at load)."""
        self._end_token = self._end_of_turn_token()
        self._ends: np.ndarray[Any, np.dtype[np.intp]] | None = None  # made on first use
        _LOGGER.info(
            "chat model %s with llama.cpp (%d threads, prompt chunks of %d)",
            path,
            self.threads,
            self.prefill_chunk,
        )

    # -- tokens -----------------------------------------------------------------------------

    def _tokenize(self, text: str, *, special: bool = True) -> list[int]:
        tokens: list[int] = self._model.tokenize(text, add_bos=False, special=special)
        return tokens

    def _piece(self, token: int) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        size = self._c.llama_token_to_piece(self._model.model, token, buffer, 64, 0, False)
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = self._c.llama_token_to_piece(self._model.model, token, buffer, -size, 0, False)
        return buffer.raw[: max(0, size)]

    def _render(self, messages: Sequence[Message], *, generation_prompt: bool) -> str:
        text: str = self._template.render(
            messages=list(messages),
            add_generation_prompt=generation_prompt,
            bos_token=self._bos,
            eos_token=self._eos,
        )
        return text

    def _prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        return self._tokenize(self._render(messages, generation_prompt=True))

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens these messages take, generation prompt included."""
        return len(self._prompt_tokens(messages))

    def count_text_tokens(self, text: str) -> int:
        """Tokens in a piece of plain text (for the benchmark's tokens/s)."""
        return len(self._tokenize(text, special=False))

    def _end_of_turn_token(self) -> int:
        """The token the template writes right after a message's text (``<|im_end|>``)."""
        marker = "\u2063voicebot\u2063"
        rendered = self._render([{"role": "user", "content": marker}], generation_prompt=False)
        after = rendered.split(marker, 1)[1]
        tokens = self._tokenize(after) if after.strip() else []
        if tokens:
            return tokens[0]
        return int(self._c.llama_token_eos(self._model.model))

    # -- the context ----------------------------------------------------------------------

    @property
    def _cached(self) -> list[int]:
        """The tokens in the current slot."""
        return self._slot_tokens[self._slot]

    def _decode(self, tokens: list[int], start: int, chunk: int) -> None:
        """Read ``tokens`` into the current slot at positions from ``start``; logits for the
        last one only."""
        for offset in range(0, len(tokens), chunk):
            part = tokens[offset : offset + chunk]
            last = offset + len(part) >= len(tokens)
            batch = self._c.llama_batch_init(len(part), 0, 1)
            try:
                batch.n_tokens = len(part)
                for i, token in enumerate(part):
                    batch.token[i] = token
                    batch.pos[i] = start + offset + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = self._slot
                    batch.logits[i] = 1 if last and i == len(part) - 1 else 0
                result = self._c.llama_decode(self._ctx.ctx, batch)
            finally:
                self._c.llama_batch_free(batch)
            if result != 0:
                self._forget()
                raise EngineError(f"llama_decode failed ({result})")
            self._cached.extend(part)
            self.tokens_read += len(part)

    def _logits(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        pointer = self._c.llama_get_logits_ith(self._ctx.ctx, -1)
        values: np.ndarray[Any, np.dtype[np.float32]] = np.ctypeslib.as_array(
            pointer, shape=(self._n_vocab,)
        )
        return values

    def _forget(self) -> None:
        self._c.llama_kv_cache_clear(self._ctx.ctx)
        for tokens in self._slot_tokens:
            tokens.clear()

    def _prefill(self, tokens: list[int]) -> int:
        """Make a slot hold exactly ``tokens``, reading only what is not there yet; returns
        the slot, now the current one.

        The slot is the one holding the most of ``tokens`` when that is its own conversation
        going on (all it holds but its last few tokens is a prefix); otherwise the least
        recently used other slot, given the shared prefix (the system prompt) by a copy, so
        the conversation in the best slot stays for its user's next turn.
        """
        if len(tokens) + 1 > self.context_tokens:
            raise EngineError(
                f"prompt of {len(tokens)} tokens does not fit the {self.context_tokens}-token "
                "context"
            )
        limit = len(tokens) - 1  # read at least one token: fresh logits
        common = [_common_prefix(cached, tokens, limit) for cached in self._slot_tokens]
        best = max(range(self.slots), key=lambda i: (common[i], self._slot_used[i]))
        held = len(self._slot_tokens[best])
        if common[best] >= held - _SAME_CONVERSATION_TAIL or self.slots == 1:
            slot, shared = best, common[best]
        else:
            slot = min(
                (i for i in range(self.slots) if i != best), key=lambda i: self._slot_used[i]
            )
            shared = common[best]
            if common[slot] < shared:
                self._lib.llama_kv_cache_seq_rm(self._ctx.ctx, slot, 0, -1)
                self._lib.llama_kv_cache_seq_cp(self._ctx.ctx, best, slot, 0, shared)
                self._slot_tokens[slot] = list(tokens[:shared])
            else:
                shared = common[slot]
        self._slot = slot
        self._uses += 1
        self._slot_used[slot] = self._uses
        cached = self._slot_tokens[slot]
        if shared < len(cached):
            if not self._lib.llama_kv_cache_seq_rm(self._ctx.ctx, slot, shared, -1):
                self._lib.llama_kv_cache_seq_rm(self._ctx.ctx, slot, 0, -1)
                shared = 0
            del cached[shared:]
        self._decode(tokens[shared:], shared, self.prefill_chunk)
        return slot

    def _check_prefill(self) -> int:
        """The largest prompt chunk whose logits match one-token reads (see module doc)."""
        tokens = self._tokenize(_SELF_CHECK_TEXT, special=False)[: _PREFILL_CHUNK + 4]
        self._forget()
        self._decode(tokens, 0, 1)
        reference = self._logits().copy()
        chunk = _PREFILL_CHUNK
        while chunk > 1:
            self._forget()
            self._decode(tokens, 0, chunk)
            if float(np.abs(self._logits() - reference).max()) < 1e-2:
                break
            _LOGGER.warning("llama.cpp prompt chunks of %d disagree; trying smaller", chunk)
            chunk //= 2
        self._forget()
        return chunk

    # -- the engine protocols -------------------------------------------------------------

    def _next_token(self, generated: list[int]) -> int:
        logits = self._logits()
        if self.repetition_penalty != 1.0 and generated:
            logits = logits.copy()
            seen = np.unique(np.asarray(generated))
            values = logits[seen]
            logits[seen] = np.where(
                values > 0, values / self.repetition_penalty, values * self.repetition_penalty
            )
        if self.temperature <= 0:
            return int(np.argmax(logits))
        top = np.argpartition(logits, -40)[-40:]
        scaled = (logits[top] - logits[top].max()) / self.temperature
        probabilities = np.exp(scaled)
        probabilities /= probabilities.sum()
        return int(self._rng.choice(top, p=probabilities))

    def stream(self, messages: Sequence[Message], cancel: threading.Event) -> Iterator[str]:
        """Yield the reply in text fragments as the model writes it.

        Runs in the calling thread (the chat model's worker); checks ``cancel`` after every
        token. Other calls may run between two fragments (:attr:`resumable`): if they changed
        the context, the generator reads its prompt and words again before going on (the
        common prefix, such as the system prompt, stays).
        """
        tokens = self._prompt_tokens(messages)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        with self._lock:
            slot = self._prefill(tokens)
            token = self._next_token([])
        generated: list[int] = []
        for _ in range(self.max_new_tokens):
            if cancel.is_set():
                return
            if self._c.llama_token_is_eog(self._model.model, token):
                break
            generated.append(token)
            text = decoder.decode(self._piece(token))
            if text:
                yield text
            if cancel.is_set():
                return
            with self._lock:
                if self._slot_tokens[slot] == tokens + generated[:-1]:
                    self._slot = slot
                    self._decode([token], len(self._cached), 1)
                else:  # another call took this slot meanwhile
                    slot = self._prefill(tokens + generated)
                token = self._next_token(generated)
        rest = decoder.decode(b"", final=True)
        if rest and not cancel.is_set():
            yield rest

    def _sentence_end_tokens(self) -> np.ndarray[Any, np.dtype[np.intp]]:
        """Tokens that end a sentence: those starting with ``.``, ``?`` or ``!`` (not an
        ellipsis, which trails off), and the end-of-message token."""
        ends = {self._end_token}
        for token in range(self._n_vocab):
            piece = self._piece(token)
            if piece[:1] in (b".", b"?", b"!") and not piece.startswith(b".."):
                ends.add(token)
        return np.fromiter(sorted(ends), dtype=np.intp)

    def end_of_turn_probability(self, messages: Sequence[Message]) -> float:
        """Probability that the last message, the user's words, is a finished sentence.

        The words are read without the punctuation Whisper put after them (it puts a full stop
        after fragments too: "I want to."), and the probability is the share of the model's
        next-token distribution on ending the sentence (a ``.``, ``?`` or ``!`` token) or the
        message. An instruct model that was never trained as a turn detector judges grammar
        well this way; its bare end-of-message probability mixes in whether more sentences
        follow. On 32 typed development phrases with the default profile's prompt, finished
        sentences scored 0.007-0.70 and fragments at most 0.003 ("And then."); the bare
        end-of-message probability overlapped (finished 0.0015-0.72, fragments up to 0.37).
        The tokens read stay in the cache, so a reply that follows reads only a few more.
        """
        if not messages:
            return 1.0
        text = messages[-1]["content"].strip()
        if text.endswith(("...", "\u2026")):
            return 0.0  # Whisper's sign of speech trailing off
        words = text.rstrip(".?!\u3002 ")
        if not words:
            return 1.0
        marker = "\u2063voicebot\u2063"
        last: Message = {"role": messages[-1]["role"], "content": marker}
        rendered = self._render([*messages[:-1], last], generation_prompt=False)
        tokens = self._tokenize(rendered.split(marker, 1)[0] + words)
        with self._lock:
            if self._ends is None:
                self._ends = self._sentence_end_tokens()
            self._prefill(tokens)
            logits = self._logits().astype(np.float64)
        logits -= logits.max()
        probabilities = np.exp(logits)
        return float(probabilities[self._ends].sum() / probabilities.sum())


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, at most ``limit``."""
    count, end = 0, min(len(a), len(b), limit)
    while count < end and a[count] == b[count]:
        count += 1
    return count


def _apply_lora(lib: Any, model: Any, ctx: Any, path: Path) -> Any:
    """Load a LoRA GGUF for ``model`` and apply it (scale 1) in ``ctx``; returns the adapter.

    This build has llama.cpp's C API of mid-2024: ``llama_lora_adapter_init`` and
    ``llama_lora_adapter_set`` (not yet ``llama_adapter_lora_*``); its Python wrapper has
    no binding, so they are declared here.

    Raises:
        ModelError: the file is missing or not a LoRA of this model.
    """
    if not path.is_file():
        raise ModelError(f"no LoRA adapter file {path}")
    lib.llama_lora_adapter_init.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.llama_lora_adapter_init.restype = ctypes.c_void_p
    lib.llama_lora_adapter_set.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float]
    lib.llama_lora_adapter_set.restype = ctypes.c_int32
    adapter = lib.llama_lora_adapter_init(model, str(path).encode())
    if not adapter:
        raise ModelError(f"llama.cpp cannot load the LoRA adapter {path} for this model")
    if lib.llama_lora_adapter_set(ctx, adapter, 1.0) != 0:
        raise ModelError(f"llama.cpp cannot apply the LoRA adapter {path}")
    _LOGGER.info("LoRA adapter %s applied", path)
    return adapter
