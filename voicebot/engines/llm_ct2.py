"""The chat model with CTranslate2: fast on every CPU, nothing to compile at install.

CTranslate2 comes with faster-whisper (speech recognition already needs it); its wheels carry
int8 kernels for every x86 and ARM CPU. A Hugging Face model directory is converted once to a
CTranslate2 int8 model in a cache directory beside it (that one conversion imports
transformers and torch); every later load reads the converted model and imports neither.
Tokens come from the ``tokenizers`` package and the prompt from the model's own chat template,
rendered with jinja2 the way transformers renders it.

On the development machine (2 cores, shared) the embedded SmolLM2-135M-Instruct decodes at
45-65 tokens/s on one thread, its first token 40 ms after a short prompt (80 ms cold), and
scores the end of a turn in 25 ms (measured while other work shared the machine).
Converting it takes about 15 s, once.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import EngineError, ModelError
from .base import Message
from .chat_template import compile_chat_template

__all__ = ["CTranslate2Chat", "convert_model", "converted_dir"]

_LOGGER = logging.getLogger(__name__)

_STAMP = "voicebot-ct2.json"
"""The stamp a converted directory carries: where it came from and the source files' stats."""
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
"""Files copied next to a converted model so that it is self-contained."""
_QUANTIZATION = "int8"
"""Weights of a converted model; any ``compute_type`` can run them."""
_SENTINEL = "\u2063voicebot-end-of-message\u2063"
"""Text no message holds: marks where a message's content ends in a rendered template."""


def converted_dir(hf_dir: Path) -> Path:
    """Where the CTranslate2 conversion of a Hugging Face model directory is kept.

    A catalog model's ``<model>/hf`` converts to ``<model>/ct2-int8``; any other directory
    ``<name>`` to ``<name>-ct2-int8`` beside it.
    """
    hf_dir = hf_dir.resolve()
    if hf_dir.name == "hf":
        return hf_dir.parent / f"ct2-{_QUANTIZATION}"
    return hf_dir.parent / f"{hf_dir.name}-ct2-{_QUANTIZATION}"


def _source_files(hf_dir: Path) -> list[Path]:
    names = {"config.json", *_TOKENIZER_FILES}
    files = [hf_dir / n for n in sorted(names) if (hf_dir / n).is_file()]
    return files + sorted(hf_dir.glob("*.safetensors"))


def _stamp(hf_dir: Path) -> dict[str, Any]:
    """What a conversion depends on: the source directory and its files' sizes and mtimes."""
    files = {}
    for path in _source_files(hf_dir):
        stat = path.stat()
        files[path.name] = [stat.st_size, stat.st_mtime_ns]
    return {"source": str(hf_dir.resolve()), "quantization": _QUANTIZATION, "files": files}


def _is_ct2_dir(path: Path) -> bool:
    return (path / "model.bin").is_file() and (path / "config.json").is_file()


def _is_hf_dir(path: Path) -> bool:
    return (
        (path / "config.json").is_file()
        and (path / "tokenizer.json").is_file()
        and any(path.glob("*.safetensors"))
    )


def _is_current(output: Path, stamp: dict[str, Any]) -> bool:
    try:
        found = json.loads((output / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(found, dict) or not _is_ct2_dir(output):
        return False
    # The source's path is not compared: a moved models directory keeps its conversion.
    return all(found.get(key) == stamp[key] for key in ("quantization", "files"))


def convert_model(hf_dir: Path, output: Path | None = None) -> Path:
    """Convert a Hugging Face model directory to CTranslate2 int8, once.

    The conversion is kept in ``output`` (by default :func:`converted_dir`) with a stamp of
    the source files; while they are unchanged, later calls return it at once without
    importing torch. A changed source is converted again. The conversion is written to a
    temporary directory and renamed into place, so a crash or a concurrent load never sees a
    half-written model.

    Args:
        hf_dir: Directory with ``config.json``, ``*.safetensors`` and ``tokenizer.json``.
        output: Where to keep the conversion.

    Returns:
        The converted directory, holding the tokenizer files and chat template too.

    Raises:
        ModelError: transformers or torch is missing, the conversion failed, or the output
            cannot be written.
    """
    output = output or converted_dir(hf_dir)
    stamp = _stamp(hf_dir)
    if _is_current(output, stamp):
        return output
    _LOGGER.info("converting %s to CTranslate2 %s in %s", hf_dir, _QUANTIZATION, output)
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelError(
            f"converting {hf_dir} for CTranslate2 needs {' and '.join(missing)} "
            "(pip install transformers torch)"
        )
    # Imported here: only a conversion needs transformers and torch.
    from ctranslate2 import converters

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    except OSError as error:
        raise ModelError(f"cannot write the converted model beside {hf_dir}: {error}") from error
    try:
        staged = work / "model"
        try:
            converters.TransformersConverter(str(hf_dir)).convert(
                str(staged), quantization=_QUANTIZATION
            )
        except Exception as error:  # the converter raises whatever transformers and torch raise
            raise ModelError(f"cannot convert {hf_dir} for CTranslate2: {error}") from error
        try:
            for name in _TOKENIZER_FILES:
                if (hf_dir / name).is_file():
                    shutil.copy2(hf_dir / name, staged / name)
            (staged / _STAMP).write_text(json.dumps(stamp, indent=1))
            if output.exists():
                # A stale conversion: moved aside first, since a rename cannot replace a
                # non-empty directory.
                output.rename(work / "stale")
            staged.rename(output)
        except OSError as error:
            if _is_current(output, stamp):  # another process finished the same conversion
                return output
            raise ModelError(f"cannot write the converted model {output}: {error}") from error
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return output


def _token_text(value: object) -> str:
    """A special token's text from ``tokenizer_config.json`` (a string or an AddedToken dict)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _load_template(directory: Path, config: dict[str, Any]) -> str:
    path = directory / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) or not template:
        raise ModelError(f"chat model {directory} has no chat template")
    return template


class CTranslate2Chat:
    """A causal LM run by CTranslate2 with its chat template, streaming its reply.

    It is also a :class:`~voicebot.engines.base.TurnDetector`: the probability it gives its
    end-of-message token right after the user's words. On the embedded SmolLM2-135M-Instruct
    (after a one-line system prompt) that is 0.34 for "What is the capital of France?",
    0.0022 for "What is the capital of France" and 2e-10 for "I want to know what the" or
    "My name is": unfinished words score orders of magnitude lower than finished ones.
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
        compute_type: str = "int8",
    ) -> None:
        """Load a model, converting a Hugging Face one the first time.

        Args:
            model: A CTranslate2 model directory (``model.bin``, ``config.json`` and the
                tokenizer files) or a Hugging Face one (``config.json``, ``*.safetensors``,
                ``tokenizer.json``), converted once by :func:`convert_model`.
            max_new_tokens: Longest reply.
            temperature: 0 for greedy decoding, else the sampling temperature.
            repetition_penalty: Penalty on repeated tokens (1.0 for none).
            threads: CPU threads; 0 for one. A small model gains nothing from a second
                thread (SmolLM2-135M on 2 cores: 44 tokens/s on one or two, first token 42
                against 52 ms), and the other core stays free for speech recognition and
                synthesis.
            context_tokens: Longest prompt.
            compute_type: CTranslate2 compute type (``int8``, ``int8_float32``, ``float32``,
                ``auto``...).

        Raises:
            ModelError: the model is missing or cannot be loaded or converted.
        """
        import ctranslate2
        from tokenizers import Tokenizer

        self.name = str(model)
        """The model's path."""
        path = Path(self.name).expanduser()
        if not path.is_dir():
            raise ModelError(
                f"chat model {path} not found (a CTranslate2 or Hugging Face directory)"
            )
        if _is_ct2_dir(path):
            directory = path
        elif _is_hf_dir(path):
            directory = convert_model(path)
        else:
            raise ModelError(
                f"{path} is neither a CTranslate2 model (model.bin) nor a Hugging Face model "
                "(config.json, *.safetensors, tokenizer.json)"
            )
        self.threads = threads or 1
        """CPU threads."""
        try:
            self._generator = ctranslate2.Generator(
                str(directory),
                device="cpu",
                compute_type=compute_type,
                intra_threads=self.threads,
                inter_threads=1,
            )
        except (OSError, RuntimeError, ValueError) as error:
            raise ModelError(f"cannot load chat model {directory}: {error}") from error
        try:
            self._tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as error:  # tokenizers raises a bare Exception
            raise ModelError(
                f"cannot read the tokenizer of chat model {directory}: {error}"
            ) from error
        config = self._read_tokenizer_config(directory)
        self._bos = _token_text(config.get("bos_token"))
        self._eos = _token_text(config.get("eos_token"))
        self._template = compile_chat_template(_load_template(directory, config), directory)
        self._end_ids = self._stop_tokens(directory)
        self._turn_end_id = self._token_after_message("user")
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.repetition_penalty = repetition_penalty
        self.context_tokens = context_tokens
        """Longest prompt."""
        self.compute_type = compute_type
        """The CTranslate2 compute type."""
        self.device = "cpu"
        """Where the model runs."""
        _LOGGER.info(
            "chat model %s with CTranslate2 (%s, %d threads)", directory, compute_type, self.threads
        )

    @staticmethod
    def _read_tokenizer_config(directory: Path) -> dict[str, Any]:
        path = directory / "tokenizer_config.json"
        if not path.is_file():
            return {}
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot read {path}: {error}") from error
        return config if isinstance(config, dict) else {}

    def _render(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
        import jinja2

        try:
            text: str = self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except jinja2.TemplateError as error:
            raise EngineError(f"cannot render the chat template: {error}") from error
        return text

    def _ids(self, text: str) -> list[int]:
        # The template writes the special tokens itself (its own BOS included, if any).
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def _token_after_message(self, role: str) -> int:
        """The token the template writes right after a message's content of this role."""
        messages: list[Message] = [
            {"role": "user", "content": "Hi."},
            {"role": "assistant", "content": "Hello."},
        ]
        index = 0 if role == "user" else 1
        messages[index] = {"role": role, "content": _SENTINEL}
        try:
            rendered = self._render(messages, add_generation_prompt=False)
        except EngineError as error:
            raise ModelError(f"chat model {self.name}: {error}") from error
        after = rendered.split(_SENTINEL, 1)[1] if _SENTINEL in rendered else ""
        ids = self._ids(after)
        if ids:
            return ids[0]
        eos = self._tokenizer.token_to_id(self._eos) if self._eos else None
        if eos is None:
            raise ModelError(f"chat model {self.name} has no end-of-message token")
        return int(eos)

    def _stop_tokens(self, directory: Path) -> frozenset[int]:
        """Tokens that end a reply: the template's end of message and the model's EOS ids."""
        ids = {self._token_after_message("assistant")}
        if self._eos and (eos := self._tokenizer.token_to_id(self._eos)) is not None:
            ids.add(eos)
        generation = directory / "generation_config.json"
        if generation.is_file():
            try:
                found = json.loads(generation.read_text(encoding="utf-8")).get("eos_token_id")
            except (OSError, ValueError, AttributeError):
                found = None
            listed = found if isinstance(found, list) else [found]
            ids.update(i for i in listed if isinstance(i, int))
        return frozenset(ids)

    def _prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        return self._ids(self._render(messages, add_generation_prompt=True))

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens these messages take, generation prompt included."""
        return len(self._prompt_ids(messages))

    def count_text_tokens(self, text: str) -> int:
        """Tokens in a piece of plain text (for the benchmark's tokens/s)."""
        return len(self._ids(text))

    def stream(self, messages: Sequence[Message], cancel: threading.Event) -> Iterator[str]:
        """Yield the reply in text fragments as the model writes it.

        Runs in the calling thread (the chat model's worker); checks ``cancel`` after every
        token, and leaving the loop stops CTranslate2 at its next token.

        Raises:
            EngineError: the prompt is longer than ``context_tokens``, or generation failed.
        """
        ids = self._prompt_ids(messages)
        if len(ids) > self.context_tokens:
            raise EngineError(
                f"prompt of {len(ids)} tokens does not fit the {self.context_tokens}-token context"
            )
        prompt = [self._tokenizer.id_to_token(i) for i in ids]
        sampling = self.temperature > 0
        options: dict[str, Any] = {
            "max_length": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
            "end_token": sorted(self._end_ids),
            "sampling_topk": 40 if sampling else 1,
            "sampling_topp": 0.95 if sampling else 1.0,
            "sampling_temperature": self.temperature if sampling else 1.0,
        }
        reply: list[int] = []
        sent = ""
        try:
            for step in self._generator.generate_tokens(prompt, **options):
                if cancel.is_set() or step.token_id in self._end_ids:
                    break
                reply.append(step.token_id)
                # The whole reply is decoded each time: a token may hold half a character,
                # and tokenizers (SentencePiece ones) decode a leading space by context.
                text: str = self._tokenizer.decode(reply, skip_special_tokens=True)
                if text.endswith("\ufffd") or len(text) <= len(sent):
                    continue
                fragment, sent = text[len(sent) :], text
                yield fragment
        except (RuntimeError, ValueError) as error:
            raise EngineError(f"reply generation failed: {error}") from error
        if not cancel.is_set():
            # A reply cut at max_new_tokens may end in half a character: not text, dropped.
            text = self._tokenizer.decode(reply, skip_special_tokens=True).rstrip("\ufffd")
            if len(text) > len(sent):
                yield text[len(sent) :]

    def end_of_turn_probability(self, messages: Sequence[Message]) -> float:
        """Probability (0-1) that the last message, the user's, is a finished turn.

        It is the probability of the template's end-of-message token (``<|im_end|>``) right
        after the last message's words, one forward pass over the conversation. A
        conversation longer than ``context_tokens`` is scored on its last
        ``context_tokens`` tokens.

        Raises:
            EngineError: scoring failed.
        """
        if not messages:
            return 0.0
        words = messages[-1]["content"].rstrip()
        last: Message = {"role": messages[-1]["role"], "content": words + _SENTINEL}
        rendered = self._render([*messages[:-1], last], add_generation_prompt=False)
        ids = self._ids(rendered.split(_SENTINEL, 1)[0])
        ids = [*ids[-self.context_tokens :], self._turn_end_id]
        tokens = [self._tokenizer.id_to_token(i) for i in ids]
        try:
            (result,) = self._generator.score_batch([tokens], max_input_length=0)
        except (RuntimeError, ValueError) as error:
            raise EngineError(f"end-of-turn scoring failed: {error}") from error
        return min(1.0, max(0.0, math.exp(result.log_probs[-1])))
