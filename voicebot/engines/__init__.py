"""Engines: the models behind voicebot, loaded once and shared by every session.

:class:`Engines` holds one speech-to-text, one chat model and one voice (plus any other voices
or chat models that profiles ask for, loaded on first use), each with its own
:class:`~voicebot.workers.ModelWorker`. Tests build it from the fakes in
:mod:`voicebot.engines.fake`; :func:`load_engines` builds it from settings.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from ..config import Profile, Settings
from ..errors import (
    ConfigError,
    LlmUnavailableError,
    ModelError,
    ModelNotFoundError,
    VoicebotError,
)
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
from .choose import BACKENDS, choose_backend, load_backend

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

_M = TypeVar("_M")


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
    _loading: dict[str, Future[Any]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def worker(self, model: object, name: str = "model") -> ModelWorker:
        """The worker of ``model`` (created on first use): one thread, or as many as the
        model takes parallel calls (its ``parallel_calls`` attribute, e.g. a Whisper pool)."""
        with self._lock:
            worker = self._workers.get(id(model))
            if worker is None:
                threads = max(1, int(getattr(model, "parallel_calls", 1)))
                worker = self._workers[id(model)] = ModelWorker(name, threads=threads)
            return worker

    def workers(self) -> list[ModelWorker]:
        """Every model worker made so far (the metrics report their queues)."""
        with self._lock:
            return list(self._workers.values())

    def voice(self, name: str = "") -> TextToSpeech:
        """The voice called ``name`` (empty: the default), loading it on first use.

        This blocks while the voice loads: on the event loop, call :meth:`prepare` first.

        Raises:
            ModelError: the voice cannot be loaded (the next call tries again).
        """
        if not name or self.voice_loader is None:
            return self.tts
        return self._load(self._voices, "voice", name, self.voice_loader)

    def chat_model(self, name: str = "") -> ChatModel:
        """The chat model called ``name`` (empty: the default), loading it on first use.

        This blocks while the model loads: on the event loop, call :meth:`prepare` first.

        Raises:
            ModelError: the model cannot be loaded (the next call tries again).
        """
        if not name or self.llm_loader is None:
            return self.llm
        return self._load(self._llms, "chat model", name, self.llm_loader)

    def is_loaded(self, profile: Profile) -> bool:
        """True when the profile's voice and chat model are ready (no load would block)."""
        with self._lock:
            voice = not profile.voice or self.voice_loader is None or profile.voice in self._voices
            llm = (
                not profile.llm_reference
                or self.llm_loader is None
                or profile.llm_reference in self._llms
            )
        return voice and llm

    async def prepare(self, profile: Profile) -> None:
        """Load the profile's own voice and chat model in a thread, if not loaded yet.

        The event loop stays free meanwhile, and a session built for the profile afterwards
        finds both loaded. Sessions preparing the same model at once share one load.

        Raises:
            ModelError: a model cannot be loaded.
        """
        if self.is_loaded(profile):
            return
        # A task cancelled meanwhile leaves the thread to finish: the model is cached for the
        # next session that asks.
        await asyncio.to_thread(self.voice, profile.voice)
        await asyncio.to_thread(self.chat_model, profile.llm_reference)

    def _load(self, cache: dict[str, _M], kind: str, name: str, loader: Callable[[str], _M]) -> _M:
        """``cache[name]``, loaded once however many threads ask at the same time.

        The lock is held only to look up and register a load, never while loading, so a
        lookup of another model (or of a worker) does not wait for this one.
        """
        key = f"{kind}:{name}"
        with self._lock:
            if name in cache:
                return cache[name]
            pending = self._loading.get(key)
            loading = pending is None
            if pending is None:
                pending = self._loading[key] = Future()
        if not loading:
            return cast(_M, pending.result())  # another thread is loading it: share its result
        _LOGGER.info("loading %s %s", kind, name)
        start = time.perf_counter()
        try:
            model = loader(name)
        except BaseException as error:
            failure = error
            if isinstance(error, Exception) and not isinstance(error, VoicebotError):
                failure = ModelError(f"cannot load {kind} {name!r}: {error}")
                failure.__cause__ = error
            with self._lock:
                del self._loading[key]
            pending.set_exception(failure)
            raise failure  # noqa: B904 (the cause is set above when wrapping)
        with self._lock:
            cache[name] = model
            self.load_times_s[key] = time.perf_counter() - start
            del self._loading[key]
        pending.set_result(model)
        return model

    def warm_up(self) -> dict[str, float]:
        """Run each model once so the first user does not pay for lazy initialisation.

        Returns the seconds each warm-up took.
        """
        times: dict[str, float] = {}
        start = time.perf_counter()
        self.stt.transcribe(bytes(32000))
        times["stt"] = time.perf_counter() - start
        start = time.perf_counter()
        try:
            for _ in self.llm.stream([{"role": "user", "content": "Hi"}], threading.Event()):
                pass
        except LlmUnavailableError as error:  # a remote server: it may come up later
            _LOGGER.warning("the chat model did not answer its warm-up: %s", error)
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
    """Load the configured speech-to-text model (listening again for skills when they are on:
    ``voicebot.skills.listening``)."""
    from .stt import WhisperStt

    manager = manager or model_manager(settings)
    stt = WhisperStt(
        resolve_model(settings.stt.model, "stt", manager),
        device=settings.stt.device,
        compute_type=settings.stt.compute_type,
        language=settings.stt.language,
        beam_size=settings.stt.beam_size,
        cpu_threads=settings.stt.cpu_threads,
        instances=settings.stt.instances,
        no_speech_threshold=settings.stt.no_speech_threshold,
        log_prob_threshold=settings.stt.log_prob_threshold,
        fit_window=settings.stt.fit_window,
    )
    if not (settings.skills.enabled and settings.skills.listen_again):
        return stt
    from ..skills import SkillRouter
    from ..skills.listening import SkillListeningStt

    return SkillListeningStt(stt, SkillRouter(settings.skills))


def load_llm(
    settings: Settings, manager: ModelManager | None = None, reference: str = ""
) -> ChatModel:
    """Load the configured chat model (or ``reference`` instead)."""
    if settings.llm.backend == "openai":  # a server's model name, not a local model
        from .llm_openai import load_openai_chat

        return load_openai_chat(settings, manager or model_manager(settings), reference)
    from ..adapters import find_adapter, split_reference

    manager = manager or model_manager(settings)
    reference, adapter_name = split_reference(reference)
    path = resolve_model(reference or settings.llm.model, "llm", manager)
    llm = settings.llm
    # What every engine takes.
    decoding: dict[str, Any] = {
        "max_new_tokens": llm.max_new_tokens,
        "temperature": llm.temperature,
        "repetition_penalty": llm.repetition_penalty,
        "threads": llm.threads,
    }
    backend = llm.backend
    if backend not in ("auto", *BACKENDS):
        known = ", ".join(("auto", *BACKENDS))
        raise ConfigError(f"unknown chat backend {backend!r} (known: {known})")
    model = str(path)
    if backend == "auto":
        if isinstance(path, Path):
            choice = choose_backend(path, threads=llm.threads, device=llm.device)
            backend, model = choice.backend, choice.model
        else:  # a hub name: only transformers fetches one
            backend = "transformers"
    if adapter_name:  # a LoRA from `voicebot tune` (docs/learning.md)
        adapter = find_adapter(adapter_name, manager.root)
        if backend == "ctranslate2":  # it cannot apply one: the GGUF's engine, or transformers
            if llm.backend != "auto":
                raise ConfigError("the ctranslate2 chat backend cannot load a LoRA adapter")
            have_gguf = (adapter / "adapter.gguf").is_file() and _has_gguf(path)
            backend, model = ("llama-cpp" if have_gguf else "transformers"), str(path)
        if backend == "llama-cpp":
            decoding["lora"] = str(adapter / "adapter.gguf")
        elif backend == "transformers":
            decoding["adapter"] = str(adapter)
    if backend == "transformers":
        decoding.update(device=llm.device, dtype=llm.dtype, weights=llm.weights)
    else:
        decoding["context_tokens"] = llm.context_tokens
    threads = decoding.pop("threads")
    chat: ChatModel = load_backend(backend, model, threads, **decoding)
    return chat


def _has_gguf(path: str | Path) -> bool:
    from .llm_llamacpp import find_gguf

    try:
        find_gguf(path)
    except ModelError:
        return False
    return True


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
        threads=settings.tts.threads,
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
        if kind == "llm" and settings.llm.backend == "openai":
            continue  # the server's model name
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
