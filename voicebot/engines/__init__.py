"""Engines: the models behind voicebot, loaded once and shared by every session.

:class:`Engines` holds one speech-to-text, one chat model and one voice (plus any other voices
or chat models that profiles ask for, loaded on first use), each with its own
:class:`~voicebot.workers.ModelWorker`. Tests build it from the fakes in
:mod:`voicebot.engines.fake`; :func:`load_engines` builds it from settings.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import ConfigError, ModelNotFoundError
from ..models import ModelManager
from ..workers import ModelWorker
from .base import (
    ChatModel,
    Message,
    SpeechToText,
    TextToSpeech,
    Transcription,
    TurnDetector,
    VoiceActivityDetector,
    WakeWordDetector,
)

__all__ = [
    "ChatModel",
    "Engines",
    "Message",
    "SpeechToText",
    "TextToSpeech",
    "Transcription",
    "TurnDetector",
    "VoiceActivityDetector",
    "WakeWordDetector",
    "history_turns",
    "load_engines",
    "load_llm",
    "load_stt",
    "load_tts",
    "make_vad_factory",
    "model_manager",
    "resolve_model",
]

_LOGGER = logging.getLogger(__name__)


@dataclass
class Engines:
    """The loaded models and their worker threads."""

    stt: SpeechToText
    """Speech to text."""
    llm: ChatModel
    """The default chat model."""
    tts: TextToSpeech
    """The default voice."""
    vad_factory: Callable[[], VoiceActivityDetector]
    """Makes a voice activity detector (one per session: they keep state)."""
    voice_loader: Callable[[str], TextToSpeech] | None = None
    """Loads another voice by name, for profiles that ask for one."""
    llm_loader: Callable[[str], ChatModel] | None = None
    """Loads another chat model by name, for profiles that ask for one."""
    load_times_s: dict[str, float] = field(default_factory=dict)
    """How long each model took to load."""
    _workers: dict[int, ModelWorker] = field(default_factory=dict, repr=False)
    _voices: dict[str, TextToSpeech] = field(default_factory=dict, repr=False)
    _llms: dict[str, ChatModel] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def worker(self, model: object, name: str = "model") -> ModelWorker:
        """The single worker thread of ``model`` (created on first use)."""
        with self._lock:
            worker = self._workers.get(id(model))
            if worker is None:
                worker = self._workers[id(model)] = ModelWorker(name)
            return worker

    def voice(self, name: str = "") -> TextToSpeech:
        """The voice called ``name`` (empty: the default), loading it on first use."""
        if not name or self.voice_loader is None:
            return self.tts
        with self._lock:
            if name not in self._voices:
                self._voices[name] = self.voice_loader(name)
            return self._voices[name]

    def chat_model(self, name: str = "") -> ChatModel:
        """The chat model called ``name`` (empty: the default), loading it on first use."""
        if not name or self.llm_loader is None:
            return self.llm
        with self._lock:
            if name not in self._llms:
                self._llms[name] = self.llm_loader(name)
            return self._llms[name]

    def warm_up(self) -> dict[str, float]:
        """Run each model once so the first user does not pay for lazy initialisation.

        Returns the seconds each warm-up took.
        """
        times: dict[str, float] = {}
        start = time.perf_counter()
        self.stt.transcribe(bytes(32000))
        times["stt"] = time.perf_counter() - start
        start = time.perf_counter()
        for _ in self.llm.stream([{"role": "user", "content": "Hi"}], threading.Event()):
            pass
        times["llm"] = time.perf_counter() - start
        start = time.perf_counter()
        for _ in self.tts.synthesize("Ready."):
            pass
        times["tts"] = time.perf_counter() - start
        return times

    def close(self) -> None:
        """Stop the worker threads."""
        for worker in self._workers.values():
            worker.close()


def resolve_model(reference: str, kind: str, manager: ModelManager) -> str | Path:
    """Turn a model reference into what an engine loads.

    A catalog id gives its pulled path; an existing path is used as is; a name with a slash is
    taken as a hub name, and so is one of faster-whisper's own size names (``small.en``,
    ``large-v3``) for speech to text: both need network at load time.

    Raises:
        ModelNotFoundError: none of those, or a catalog model that is not pulled.
    """
    if reference in manager.catalog:
        entry = manager.catalog[reference]
        if entry.kind != kind:
            raise ModelNotFoundError(f"{reference!r} is a {entry.kind} model, not {kind}")
        return manager.path(reference)
    path = Path(reference).expanduser()
    if path.exists():
        return path
    if "/" in reference and not reference.startswith((".", "/", "~")):
        return reference
    if kind == "stt" and reference in _whisper_size_names():
        return reference
    ids = ", ".join(sorted(e.id for e in manager.catalog.values() if e.kind == kind))
    raise ModelNotFoundError(
        f"unknown {kind} model {reference!r}: not a catalog id ({ids}), an existing path, "
        "or a hub name"
    )


def _whisper_size_names() -> list[str]:
    """The names faster-whisper itself maps to hub repositories (``tiny.en`` ... ``turbo``)."""
    from faster_whisper.utils import available_models

    return list(available_models())


def model_manager(settings: Settings) -> ModelManager:
    """The model manager for the configured models directory."""
    from ..models import default_models_dir

    return ModelManager(root=default_models_dir(settings.models_dir))


def load_stt(settings: Settings, manager: ModelManager | None = None) -> SpeechToText:
    """Load the configured speech-to-text model."""
    from .stt import WhisperStt

    manager = manager or model_manager(settings)
    return WhisperStt(
        resolve_model(settings.stt.model, "stt", manager),
        device=settings.stt.device,
        compute_type=settings.stt.compute_type,
        language=settings.stt.language,
        beam_size=settings.stt.beam_size,
        cpu_threads=settings.stt.cpu_threads,
        no_speech_threshold=settings.stt.no_speech_threshold,
        log_prob_threshold=settings.stt.log_prob_threshold,
        fit_window=settings.stt.fit_window,
    )


def load_llm(
    settings: Settings, manager: ModelManager | None = None, reference: str = ""
) -> ChatModel:
    """Load the configured chat model (or ``reference`` instead)."""
    manager = manager or model_manager(settings)
    path = resolve_model(reference or settings.llm.model, "llm", manager)
    llm = settings.llm
    # What both backends take.
    decoding: dict[str, Any] = {
        "max_new_tokens": llm.max_new_tokens,
        "temperature": llm.temperature,
        "repetition_penalty": llm.repetition_penalty,
        "threads": llm.threads,
    }
    if llm.backend == "llama-cpp":
        from .llm_llamacpp import LlamaCppChat

        return LlamaCppChat(path, context_tokens=llm.context_tokens, **decoding)
    if llm.backend != "transformers":
        raise ConfigError(f"unknown chat backend {llm.backend!r} (known: transformers, llama-cpp)")
    from .llm import TransformersChat

    return TransformersChat(
        path, device=llm.device, dtype=llm.dtype, weights=llm.weights, **decoding
    )


def history_turns(settings: Settings, reference: str = "") -> int:
    """Earlier turns to send to the chat model ``reference`` (default: ``[llm] model``).

    ``[llm] history_turns`` when set; else the catalog's measured value for a catalog model;
    else -1 (all that fit the token budget), which suits any capable model.
    """
    if settings.llm.history_turns is not None:
        return settings.llm.history_turns
    measured = _measured_history_turns(reference or settings.llm.model)
    return -1 if measured is None else measured


@functools.cache
def _measured_history_turns(model: str) -> int | None:
    """The catalog's value for a catalog model (read once: sessions start on the event loop)."""
    from ..models import load_catalog

    entry = load_catalog().get(model)
    return None if entry is None else entry.history_turns


def load_tts(
    settings: Settings, manager: ModelManager | None = None, reference: str = ""
) -> TextToSpeech:
    """Load the configured voice (or ``reference`` instead)."""
    from .tts import PiperTts

    manager = manager or model_manager(settings)
    return PiperTts(
        resolve_model(reference or settings.tts.voice, "tts", manager),
        speaker=settings.tts.speaker,
        speaking_rate=settings.tts.speaking_rate,
        use_cuda=settings.tts.use_cuda,
    )


def make_vad_factory(settings: Settings) -> Callable[[], VoiceActivityDetector]:
    """A factory of configured webrtcvad detectors."""
    from .vad import WebRtcVad

    def make() -> VoiceActivityDetector:
        return WebRtcVad(aggressiveness=settings.vad.aggressiveness, frame_ms=settings.vad.frame_ms)

    make()  # fail now on bad settings
    return make


def load_engines(settings: Settings, manager: ModelManager | None = None) -> Engines:
    """Load every configured model, checking first that all of them are there.

    Raises:
        ModelNotFoundError: a model is not pulled (the message names the command to run).
        ModelError: a model cannot be loaded.
    """
    manager = manager or model_manager(settings)
    for reference, kind in (
        (settings.stt.model, "stt"),
        (settings.llm.model, "llm"),
        (settings.tts.voice, "tts"),
    ):
        resolve_model(reference, kind, manager)  # fail fast, before loading anything
    times: dict[str, float] = {}
    start = time.perf_counter()
    stt = load_stt(settings, manager)
    times["stt"] = time.perf_counter() - start
    start = time.perf_counter()
    llm = load_llm(settings, manager)
    times["llm"] = time.perf_counter() - start
    start = time.perf_counter()
    tts = load_tts(settings, manager)
    times["tts"] = time.perf_counter() - start
    return Engines(
        stt=stt,
        llm=llm,
        tts=tts,
        vad_factory=make_vad_factory(settings),
        voice_loader=lambda name: load_tts(settings, manager, name),
        llm_loader=lambda name: load_llm(settings, manager, name),
        load_times_s=times,
    )
