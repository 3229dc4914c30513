"""``[llm] backend = "auto"``: the fastest chat engine for this machine, by measurement.

Which engine is fastest depends on the CPU (AVX2 only, AVX512, AMX), on the libraries'
builds and on the model, so it is measured rather than guessed from CPU flags: on first start
each installed engine that can run the model loads it **in its own process** (a prebuilt
binary that does not suit the CPU crashes there, not in the server) and writes the reply to
a fixed question; the one whose first 16 tokens arrive soonest (time to first token plus 16
decode steps: about the first spoken clause) wins. The choice is kept in a JSON file beside
the model, keyed by what it depends on (CPU model and flags, library versions, threads and
the ISA overrides in the environment), so later starts read it in a millisecond.

On a CUDA machine the choice is transformers without measuring: it is the engine that runs
there.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CHOICE_FILE", "BACKENDS", "Candidate", "choose_backend", "candidates", "measure"]

_LOGGER = logging.getLogger(__name__)

CHOICE_FILE = "engine-choice.json"
"""Where a model's measured choice is kept (beside the model)."""
BACKENDS = ("llama-cpp", "ctranslate2", "transformers")
"""The chat engines, in the order they are tried when measurements tie."""
_SYSTEM = "You are a helpful voice assistant. Answer in one sentence."
_QUESTIONS = (
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What colour is the sky on a clear day?",
)
"""A new question each run: an engine that keeps its cache reads the system prompt once,
as in a conversation, but never gets a whole prompt for free."""
_TOKENS = 16
"""Decode steps measured after the first token."""
_ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "CT2_FORCE_CPU_ISA", "ONEDNN_MAX_CPU_ISA")
_MEASURE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Candidate:
    """An engine that could run the model."""

    backend: str
    """``llama-cpp``, ``ctranslate2`` or ``transformers``."""
    model: str
    """What that engine loads (a GGUF file, a Hugging Face or CTranslate2 directory)."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def candidates(model: Path) -> list[Candidate]:
    """The installed engines that can load ``model`` (a catalog model's directory or file)."""
    from .llm_llamacpp import find_gguf

    found: list[Candidate] = []
    if _installed("ik_llama_cpp"):
        try:
            found.append(Candidate("llama-cpp", str(find_gguf(model))))
        except Exception:  # noqa: BLE001 - no GGUF there: llama.cpp cannot run this model
            pass
    directory = model if model.is_dir() else model.parent
    hf = directory if (directory / "config.json").exists() else directory / "hf"
    if (hf / "config.json").exists():
        if _installed("ctranslate2") and (
            (hf / "tokenizer.json").exists() or (hf / "model.bin").exists()
        ):
            found.append(Candidate("ctranslate2", str(hf)))
        if _installed("transformers") and _installed("torch"):
            found.append(Candidate("transformers", str(hf)))
    return found


def _cpu_signature() -> dict[str, str]:
    from ._hardware import SIMD_FLAGS, cpu_flags, cpu_model

    return {"cpu": cpu_model(), "flags": ",".join(f for f in SIMD_FLAGS if f in cpu_flags())}


def _key(model: Path, threads: int, found: list[Candidate]) -> dict[str, Any]:
    return {
        "model": str(model.resolve()),
        **_cpu_signature(),
        "threads": threads,
        "engines": [c.backend for c in found],
        "versions": {
            name: _version(name)
            for name in ("ik-llama-cpp-python", "ctranslate2", "torch", "transformers")
        },
        "environment": {name: os.environ.get(name, "") for name in _ISA_VARIABLES},
    }


def _choice_path(model: Path) -> Path:
    directory = model if model.is_dir() else model.parent
    return directory / CHOICE_FILE


def _cuda_present() -> bool:
    """A CUDA GPU, asked of CTranslate2 (installed with faster-whisper) to spare importing torch."""
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count()) > 0
    except Exception:  # noqa: BLE001 - no CUDA runtime at all
        return False


def choose_backend(model: Path, *, threads: int = 0, device: str = "auto") -> Candidate:
    """The engine to run ``model`` with, measured once per machine and kept beside the model.

    Args:
        model: The chat model's resolved path (a catalog model's ``hf`` directory, a GGUF file,
            or a user's directory).
        threads: The configured thread count (0: the engine's default).
        device: ``[llm] device``; ``cuda`` (or ``auto`` with a GPU) means transformers.
    """
    if device.startswith("cuda") or (device == "auto" and _cuda_present()):
        return Candidate("transformers", str(model))
    found = candidates(model)
    if not found:
        return Candidate("transformers", str(model))
    if len(found) == 1:
        return found[0]
    key = _key(model, threads, found)
    path = _choice_path(model)
    try:
        kept = json.loads(path.read_text())
        if kept.get("key") == key and kept.get("backend") in {c.backend for c in found}:
            return next(c for c in found if c.backend == kept["backend"])
    except (OSError, ValueError, AttributeError):
        pass
    _LOGGER.warning(
        "measuring the chat engines on this machine (once): %s",
        ", ".join(c.backend for c in found),
    )
    results: dict[str, dict[str, Any]] = {}
    for candidate in found:
        results[candidate.backend] = _measure_in_subprocess(candidate, threads)
        _LOGGER.info("chat engine %s: %s", candidate.backend, results[candidate.backend])
    working = [c for c in found if results[c.backend].get("ok")]
    if not working:
        _LOGGER.error("no chat engine passed its measurement; using transformers")
        return Candidate("transformers", str(model))
    best = min(working, key=lambda c: float(results[c.backend]["first_clause_ms"]))
    record = {"key": key, "backend": best.backend, "results": results, "measured": time.time()}
    try:
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record, indent=2))
        temporary.replace(path)
    except OSError as error:  # a read-only model directory: measure again next start
        _LOGGER.warning("cannot keep the engine choice in %s: %s", path, error)
    _LOGGER.warning("chat engine for this machine: %s", best.backend)
    return best


def _measure_in_subprocess(candidate: Candidate, threads: int) -> dict[str, Any]:
    command = [
        sys.executable,
        "-c",
        "import sys; from voicebot.engines.choose import main; sys.exit(main(sys.argv[1:]))",
        candidate.backend,
        candidate.model,
        str(threads),
    ]
    try:
        done = subprocess.run(  # noqa: S603 - our own module, fixed arguments
            command, capture_output=True, text=True, timeout=_MEASURE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"no answer in {_MEASURE_TIMEOUT_S:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or [""])[-1]
        return {"ok": False, "error": f"exit {done.returncode}: {tail[:200]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def load_backend(backend: str, model: str, threads: int, **decoding: Any) -> Any:
    """Load ``model`` with one engine (the settings' decoding options passed through)."""
    if backend == "llama-cpp":
        from .llm_llamacpp import LlamaCppChat

        return LlamaCppChat(model, threads=threads, **decoding)
    if backend == "ctranslate2":
        from .llm_ct2 import CTranslate2Chat

        return CTranslate2Chat(model, threads=threads, **decoding)
    from .llm import TransformersChat

    return TransformersChat(model, threads=threads, **decoding)


def measure(backend: str, model: str, threads: int) -> dict[str, Any]:
    """Load ``model`` with ``backend`` and time its answer to a fixed question (greedy)."""
    start = time.perf_counter()
    llm = load_backend(backend, model, threads, max_new_tokens=_TOKENS + 8)
    load_s = time.perf_counter() - start
    best: dict[str, Any] = {}
    for question in _QUESTIONS:  # the first run pays for lazy initialisation
        messages = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": question}]
        cancel = threading.Event()
        start = time.perf_counter()
        first = 0.0
        pieces: list[str] = []
        for piece in llm.stream(messages, cancel):
            if not pieces:
                first = time.perf_counter() - start
            pieces.append(piece)
            if len(pieces) > _TOKENS:
                cancel.set()
                break
        total = time.perf_counter() - start
        steps = max(1, len(pieces) - 1)
        run = {
            "first_token_ms": round(first * 1000, 1),
            "tokens_per_s": round(steps / max(total - first, 1e-6), 1),
            # A reply shorter than 16 tokens is extrapolated at its decode rate.
            "first_clause_ms": round((first + _TOKENS * (total - first) / steps) * 1000, 1),
            "text": "".join(pieces),
        }
        if not best or run["first_clause_ms"] < best["first_clause_ms"]:
            best = run
    return {"ok": bool(best.get("text", "").strip()), "load_s": round(load_s, 2), **best}


def main(argv: list[str]) -> int:
    """Measure one engine: ``BACKEND MODEL THREADS``; prints the result as one JSON line."""
    backend, model, threads = argv[0], argv[1], int(argv[2])
    print(json.dumps(measure(backend, model, threads)), flush=True)
    return 0
