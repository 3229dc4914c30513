"""The chat model with transformers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import EngineError, ModelError
from ._hardware import cpu_has_bf16, cuda_available, physical_cores
from .base import Message

__all__ = ["TransformersChat", "pick_dtype"]

_LOGGER = logging.getLogger(__name__)


def pick_dtype(device: str, dtype: str) -> str:
    """Resolve ``auto`` to the fastest dtype the device computes well."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    # On CPUs without native bf16, bf16 matmuls are emulated and slower than fp32.
    return "bfloat16" if cpu_has_bf16() else "float32"


class TransformersChat:
    """A transformers causal LM with its chat template, streaming its reply."""

    def __init__(
        self,
        model: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_new_tokens: int = 96,
        temperature: float = 0.0,
        repetition_penalty: float = 1.0,
        threads: int = 0,
        weights: str = "auto",
        adapter: str | Path | None = None,
    ) -> None:
        """Load a model.

        Args:
            model: A Hugging Face model directory, a ``.gguf`` file (dequantised on every load:
                slow), or a hub name (needs network).
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
            dtype: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
            max_new_tokens: Longest reply.
            temperature: 0 for greedy decoding, else the sampling temperature.
            repetition_penalty: Penalty on repeated tokens (1.0 for none).
            threads: Torch CPU threads; 0 for one less than the physical cores (at least 1).
            weights: On the CPU in bf16: ``auto``, ``int4``, ``int8`` or ``dense`` linear
                weights for decoding (see :mod:`voicebot.engines.quant`).
            adapter: A peft LoRA adapter directory (``voicebot tune``), merged into the
                weights at load: no cost per token.

        Raises:
            ModelError: the model cannot be loaded.
        """
        if device == "auto":
            device = "cuda" if cuda_available() else "cpu"
        self.device = device
        """Where the model runs."""
        self.dtype = pick_dtype(device, dtype)
        """The dtype in use."""
        # Every torch call of this model runs on this one thread. Torch's OpenMP threads spin
        # between kernels; a second thread calling into torch gets a second team, and the two
        # teams' spinning made decoding 3x slower here (44 -> 15 tokens/s).
        self._torch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voicebot-torch")
        # One core is left to speech recognition and synthesis, which run while the model
        # writes: with 2 cores, the model on 1 thread (35 tokens/s) beat 2 spinning threads
        # (44 tokens/s alone) once the voice had to speak the first sentence alongside it.
        self.threads = threads or max(1, physical_cores() - 1)
        """Torch CPU threads."""
        self._adapter = adapter
        self._torch.submit(self._load, model, weights).result()
        if self._tokenizer.chat_template is None:
            raise ModelError(f"chat model {model} has no chat template")
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.repetition_penalty = repetition_penalty
        self.name = str(model)
        """The model's name or path."""
        _LOGGER.info(
            "chat model %s on %s (%s, %s weights, %d threads)",
            model,
            self.device,
            self.dtype,
            self.weights,
            self.threads,
        )

    def _load(self, model: str | Path, weights: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.device == "cpu":
            torch.set_num_threads(self.threads)
        device = self.device
        path = Path(str(model)).expanduser()
        kwargs: dict[str, Any] = {}
        source: str | Path = str(model)
        if path.is_file() and path.suffix == ".gguf":
            source, kwargs["gguf_file"] = path.parent, path.name
        elif path.exists():
            source = path
        self._tokenizer: Any
        self._model: Any
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            loaded: Any = AutoModelForCausalLM.from_pretrained(
                source, dtype=getattr(torch, self.dtype), **kwargs
            )
            if self._adapter:
                from peft import PeftModel

                loaded = PeftModel.from_pretrained(loaded, str(self._adapter)).merge_and_unload()
            self._model = loaded.to(device)
        except (OSError, ValueError, RuntimeError) as error:
            raise ModelError(f"cannot load chat model {model}: {error}") from error
        self._model.eval()
        self.weights = self._quantize(weights, path if path.is_dir() else None)
        """The weight format used for decoding."""

    def _quantize(self, weights: str, directory: Path | None) -> str:
        from .quant import int4_supported, quantize_linears

        if weights not in ("auto", "int4", "int8", "dense"):
            raise ModelError(f"unknown weights format {weights!r} (auto, int4, int8, dense)")
        if weights == "dense" or self.device != "cpu" or self.dtype != "bfloat16":
            return "dense"
        if weights == "auto":
            source = directory / "voicebot-source.json" if directory else None
            from_q4 = False
            if source is not None and source.is_file():
                import json

                from_q4 = json.loads(source.read_text()).get("file_type", "").startswith("Q4")
            weights = "int4" if from_q4 and int4_supported() else "int8"
        if weights == "int4" and not int4_supported():
            weights = "int8"
        quantize_linears(self._model, weights)
        return weights

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens these messages take, generation prompt included."""
        ids = self._tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)

    def count_text_tokens(self, text: str) -> int:
        """Tokens in a piece of plain text (for the benchmark's tokens/s)."""
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def stream(self, messages: Sequence[Message], cancel: threading.Event) -> Iterator[str]:
        """Yield the reply in text fragments as the model writes it.

        Generation runs in a short-lived thread of its own (``generate`` pushes into the
        streamer); this generator pulls from it. Once ``cancel`` is set, a stopping criterion
        ends generation at the next token and this generator returns.
        """
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        abandoned = threading.Event()  # set when the consumer stops iterating early

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full(
                    (input_ids.shape[0],),
                    cancel.is_set() or abandoned.is_set(),
                    dtype=torch.bool,
                    device=input_ids.device,
                )

        inputs = self._tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        streamer = TextIteratorStreamer(
            self._tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120.0
        )
        sampling = self.temperature > 0
        options: dict[str, Any] = {
            **inputs,
            "max_new_tokens": self.max_new_tokens,
            "do_sample": sampling,
            "repetition_penalty": self.repetition_penalty,
            "stopping_criteria": StoppingCriteriaList([_Cancelled()]),
            "streamer": streamer,
            "pad_token_id": self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
        }
        if sampling:
            options["temperature"] = self.temperature
        else:
            options.update(temperature=None, top_p=None, top_k=None)
        failure: list[BaseException] = []

        def generate() -> None:
            try:
                with torch.inference_mode():
                    self._model.generate(**options)
            except BaseException as error:  # re-raised in the consuming thread
                failure.append(error)
                streamer.on_finalized_text("", stream_end=True)

        running = self._torch.submit(generate)
        try:
            for fragment in streamer:
                if cancel.is_set():
                    break
                if fragment:
                    yield fragment
        finally:
            abandoned.set()
            running.result()
        if failure:
            raise EngineError(f"reply generation failed: {failure[0]}") from failure[0]
