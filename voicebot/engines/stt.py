"""Speech to text with faster-whisper."""

from __future__ import annotations

import logging
import re
from pathlib import Path

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
_NOT_SPEECH = re.compile(r"^[\s\W]*$|^\s*[\[(].*[\])]\s*$")
"""Text with no word characters, or only a bracketed sound tag like ``[Music]``."""


class WhisperStt:
    """faster-whisper: CUDA float16 when available, else CPU int8."""

    def __init__(
        self,
        model: str | Path,
        *,
        device: str = "auto",
        compute_type: str = "auto",
        language: str = "en",
        beam_size: int = 1,
        cpu_threads: int = 0,
        no_speech_threshold: float = 0.6,
        log_prob_threshold: float = -1.0,
    ) -> None:
        """Load a CTranslate2 Whisper model.

        Args:
            model: A model directory, or a faster-whisper size / hub name (needs network).
            device: ``auto``, ``cpu`` or ``cuda``.
            compute_type: ``auto`` (float16 on CUDA, int8 on CPU) or a CTranslate2 type.
            language: Spoken language; empty to detect it.
            beam_size: Beam width (1 is greedy).
            cpu_threads: CPU threads; 0 for the physical core count.
            no_speech_threshold: Drop segments more likely silence than this...
            log_prob_threshold: ...whose average log-probability is also below this.

        Raises:
            ModelError: the model cannot be loaded.
        """
        import ctranslate2
        from faster_whisper import WhisperModel

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
        threads = cpu_threads or physical_cores()
        try:
            self._model = WhisperModel(
                str(model),
                device=device,
                compute_type=compute_type,
                cpu_threads=threads,
                local_files_only=Path(str(model)).exists(),
            )
        except Exception as error:  # ctranslate2/hub raise many unrelated types
            raise ModelError(f"cannot load speech model {model}: {error}") from error
        _LOGGER.info("whisper %s on %s (%s, %d threads)", model, device, compute_type, threads)

    def transcribe(self, pcm: bytes) -> Transcription:
        """Transcribe 16 kHz PCM16 mono audio; silence and noise give an empty text."""
        audio = pcm16_to_float(pcm)
        audio_s = audio.size / _SAMPLE_RATE_HZ
        if audio_s < _MIN_AUDIO_S or _dbfs(audio) < _SILENCE_DBFS:
            return Transcription(text="", language=self.language or "", audio_s=audio_s)
        try:
            segments, info = self._model.transcribe(
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
            )
            texts: list[str] = []
            worst_no_speech = 0.0
            # The segments are a lazy generator: decoding happens here, in the caller's thread.
            for segment in segments:
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
        if _NOT_SPEECH.match(text):
            text = ""
        return Transcription(
            text=text,
            language=info.language,
            audio_s=audio_s,
            no_speech_prob=worst_no_speech,
        )


def _dbfs(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return 20.0 * float(np.log10(rms)) if rms > 0 else float("-inf")
