"""Speech to text with faster-whisper."""

from __future__ import annotations

import contextlib
import logging
import queue
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import pcm16_to_float
from ..errors import EngineError, ModelError
from ._hardware import physical_cores
from .base import Transcription

__all__ = ["WhisperStt"]

_LOGGER = logging.getLogger(__name__)

_SAMPLE_RATE_HZ = 16000
_SILENCE_DBFS = -55.0
"""Audio quieter than this is not sent to the model at all."""
_MIN_AUDIO_S = 0.3
"""Shorter audio cannot hold a word; Whisper guesses on it."""
_MAX_COMPRESSION_RATIO = 2.4
"""Above this a segment is a repetition loop, a known Whisper hallucination."""
_LOOP_COMPRESSION_RATIO = 1.8
"""A short-window result this repetitive is redone with the full window."""
_NOT_SPEECH = re.compile(r"^[\s\W]*$|^\s*[\[(].*[\])]\s*$")
"""Text with no word characters, or only a bracketed sound tag like ``[Music]``."""


_WINDOW_MARGIN_FRAMES = 1000
"""Silence (10 ms frames) left after the audio in a shortened encoder window: 10 s. Measured
on 160 spoken questions (4 voices): 5 s made the decoder loop on 18% of them (each then
decoded again with the full window: p95 550 ms); 10 s on 2.5% (p95 217 ms), with a word error
rate of 0.066 against 0.078 for the full 30 s window (docs/benchmarks.md)."""
_TOKENS_PER_S = 10
"""Decoding stops past this many tokens per second of audio (plus 10): a loop cannot run on."""


def _windowed_model_class() -> type:
    """faster-whisper's model with an encoder window fitted to the audio.

    Whisper's encoder always sees 30 s (3000 frames), padding short audio with silence; on 2
    cores that is 310 ms for any utterance. CTranslate2 encodes shorter windows (1000 frames
    in 54 ms), which is what whisper.cpp's ``audio_ctx`` does too. ``window_frames`` is set
    per call by :class:`WhisperStt` (one thread uses an instance at a time).
    """
    from faster_whisper import WhisperModel

    class WindowedWhisperModel(WhisperModel):  # type: ignore[misc]
        window_frames = 3000

        def encode(self, features: Any) -> Any:
            if features.shape[-1] > self.window_frames:
                features = features[..., : self.window_frames]
            return super().encode(features)

    return WindowedWhisperModel


class WhisperStt:
    """faster-whisper: CUDA float16 when available, else CPU int8.

    On the CPU it holds a small pool of model instances (:attr:`parallel_calls`), so that
    utterances of several users are transcribed at the same time, each on its own core; one
    utterance is also faster on one thread than on two for these small models.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        device: str = "auto",
        compute_type: str = "auto",
        language: str = "en",
        beam_size: int = 1,
        cpu_threads: int = 0,
        instances: int = 0,
        no_speech_threshold: float = 0.6,
        log_prob_threshold: float = -1.0,
        fit_window: bool = False,
    ) -> None:
        """Load a CTranslate2 Whisper model.

        Args:
            model: A model directory, or a faster-whisper size / hub name (needs network).
            device: ``auto``, ``cpu`` or ``cuda``.
            compute_type: ``auto`` (float16 on CUDA, int8 on CPU) or a CTranslate2 type.
            language: Spoken language; empty to detect it.
            beam_size: Beam width (1 is greedy).
            cpu_threads: CPU threads per instance; 0: the physical cores shared among the
                instances.
            instances: Model instances that transcribe in parallel (one call each at a
                time); 0: 2 on a CPU with at least 2 physical cores, else 1.
            no_speech_threshold: Drop segments more likely silence than this...
            log_prob_threshold: ...whose average log-probability is also below this.
            fit_window: Encode only the audio plus 5 s of silence instead of 30 s (5x faster
                on short utterances); a result that looks like a decoding loop is redone
                with the full window.

        Raises:
            ModelError: the model cannot be loaded.
        """
        import ctranslate2

        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        if compute_type == "auto":
            compute_type = "float16" if device == "cuda" else "int8"
        self.device = device
        """Where the model runs."""
        self.compute_type = compute_type
        """CTranslate2 compute type in use."""
        self.language = language or None
        self.beam_size = beam_size
        self.no_speech_threshold = no_speech_threshold
        self.log_prob_threshold = log_prob_threshold
        self.fit_window = fit_window
        cores = physical_cores()
        if instances <= 0:
            instances = 2 if device == "cpu" and cores >= 2 else 1
        threads = cpu_threads or max(1, cores // instances)
        self.parallel_calls = instances
        """Calls that may run at once (the model worker starts this many threads)."""
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        model_class = _windowed_model_class()
        try:
            for _ in range(instances):
                self._free.put(
                    model_class(
                        str(model),
                        device=device,
                        compute_type=compute_type,
                        cpu_threads=threads,
                        local_files_only=Path(str(model)).exists(),
                    )
                )
        except Exception as error:  # ctranslate2/hub raise many unrelated types
            raise ModelError(f"cannot load speech model {model}: {error}") from error
        _LOGGER.info(
            "whisper %s on %s (%s, %d instance(s) of %d thread(s))",
            model,
            device,
            compute_type,
            instances,
            threads,
        )

    def transcribe(self, pcm: bytes, *, prompt: str = "") -> Transcription:
        """Transcribe 16 kHz PCM16 mono audio; silence and noise give an empty text.

        Thread-safe: each call takes a free model instance (waiting for one if all are busy).

        Args:
            pcm: The utterance.
            prompt: Text Whisper takes as said just before (its ``initial_prompt``): words
                in it are heard more readily.
        """
        audio = pcm16_to_float(pcm)
        audio_s = audio.size / _SAMPLE_RATE_HZ
        if audio_s < _MIN_AUDIO_S or _dbfs(audio) < _SILENCE_DBFS:
            return Transcription(text="", language=self.language or "", audio_s=audio_s)
        with self._instance() as model:
            return self._transcribe_with(model, audio, audio_s, prompt)

    def plain_transcribe(self, audio: np.ndarray) -> None:
        """Plain faster-whisper on float audio (30 s window, its default decoding): the
        benchmark's reference."""
        with self._instance() as model:
            model.window_frames = 3000
            segments, _ = model.transcribe(audio, language=self.language)
            list(segments)

    @contextlib.contextmanager
    def _instance(self) -> Iterator[Any]:
        """A free model instance, held for the block (waiting for one if all are busy)."""
        model = self._free.get()
        try:
            yield model
        finally:
            self._free.put(model)

    def _transcribe_with(
        self, model: Any, audio: np.ndarray, audio_s: float, prompt: str = ""
    ) -> Transcription:
        frames = audio.size // 160 + _WINDOW_MARGIN_FRAMES
        if self.fit_window and frames < 3000:
            max_tokens = int(audio_s * _TOKENS_PER_S) + 10
            result = self._decode(model, audio, audio_s, frames, max_tokens, prompt)
            if result is not None:
                return result
            _LOGGER.debug("short-window transcript looked like a loop; using the full window")
        full = self._decode(model, audio, audio_s, 3000, None, prompt)
        assert full is not None
        return full

    def _decode(
        self,
        model: Any,
        audio: np.ndarray,
        audio_s: float,
        frames: int,
        max_tokens: int | None,
        prompt: str = "",
    ) -> Transcription | None:
        """Decode with an encoder window of ``frames``; None when a short window misbehaved."""
        model.window_frames = frames
        try:
            segments, info = model.transcribe(
                audio,
                language=self.language,
                beam_size=self.beam_size,
                # A single temperature: the fallback ladder re-decodes up to 5 times on a hard
                # utterance, which costs seconds for a few better words.
                temperature=0.0,
                condition_on_previous_text=False,
                without_timestamps=True,
                vad_filter=False,
                no_speech_threshold=self.no_speech_threshold,
                log_prob_threshold=self.log_prob_threshold,
                compression_ratio_threshold=_MAX_COMPRESSION_RATIO,
                max_new_tokens=max_tokens,
                initial_prompt=prompt or None,
            )
            texts: list[str] = []
            worst_no_speech = 0.0
            # The segments are a lazy generator: decoding happens here, in the caller's thread.
            tokens = 0
            for segment in segments:
                tokens += len(segment.tokens)
                if max_tokens is not None and (
                    segment.compression_ratio > _LOOP_COMPRESSION_RATIO or tokens >= max_tokens
                ):
                    return None
                worst_no_speech = max(worst_no_speech, segment.no_speech_prob)
                if (
                    segment.no_speech_prob > self.no_speech_threshold
                    and segment.avg_logprob < self.log_prob_threshold
                ) or segment.compression_ratio > _MAX_COMPRESSION_RATIO:
                    continue
                if segment.no_speech_prob > 0.9:
                    continue
                texts.append(segment.text.strip())
        except Exception as error:  # decoding errors come from ctranslate2 as RuntimeError etc.
            raise EngineError(f"speech recognition failed: {error}") from error
        text = " ".join(t for t in texts if t).strip()
        if max_tokens is not None and _repeats(text):
            return None
        if _NOT_SPEECH.match(text):
            text = ""
        return Transcription(
            text=text,
            language=info.language,
            audio_s=audio_s,
            no_speech_prob=worst_no_speech,
        )


def _repeats(text: str, n: int = 3) -> bool:
    """True when some run of ``n`` words occurs twice: the short-window decoding loop
    ("What is the weather like in London today? What is the weather like in London", "Hi,
    I'm Priya. Hi, I'm Priya"). A real repeat only costs a second, full-window decode."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def _dbfs(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return 20.0 * float(np.log10(rms)) if rms > 0 else float("-inf")
