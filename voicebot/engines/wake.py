"""Wake word detection with microWakeWord (pymicro-wakeword), fully offline."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ModelError

__all__ = ["BUILTIN_WAKE_WORDS", "MicroWakeWordDetector"]

_LOGGER = logging.getLogger(__name__)

BUILTIN_WAKE_WORDS = ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft")
"""The models bundled with pymicro-wakeword."""


class MicroWakeWordDetector:
    """A microWakeWord model over 16 kHz PCM16 audio."""

    def __init__(self, model: str | Path = "okay_nabu", *, threshold: float = 0.0) -> None:
        """Load a bundled wake word by name, or a model by its ``.json`` config path.

        Args:
            model: ``okay_nabu``, ``hey_jarvis``, ``alexa``, ``hey_mycroft`` or a config path.
            threshold: Probability cutoff (0 keeps the model's own, usually 0.85-0.97).

        Raises:
            ModelError: unknown name, or the model cannot be loaded.
        """
        from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

        try:
            if str(model) in BUILTIN_WAKE_WORDS:
                self._model = MicroWakeWord.from_builtin(Model(str(model)))
            elif Path(model).suffix == ".json" and Path(model).is_file():
                self._model = MicroWakeWord.from_config(Path(model))
            else:
                raise ModelError(
                    f"unknown wake word {str(model)!r} (bundled: {', '.join(BUILTIN_WAKE_WORDS)};"
                    " or the path of a microWakeWord .json)"
                )
        except ModelError:
            raise
        except Exception as error:  # ctypes/tflite loading errors have no common base
            raise ModelError(f"cannot load wake word model {model}: {error}") from error
        if threshold:
            self._model.probability_cutoff = threshold
        self._features = MicroWakeWordFeatures()
        self._feature_class = MicroWakeWordFeatures
        self.name = str(model) if str(model) in BUILTIN_WAKE_WORDS else self._model.id
        """The wake word's id."""
        self.phrase: str = self._model.wake_word
        """How it is said ("Okay Nabu")."""
        self.threshold: float = self._model.probability_cutoff
        """The probability cutoff in use."""
        self.last_probability = 0.0
        """The latest smoothed probability (for debugging thresholds)."""

    def process(self, pcm: bytes) -> bool:
        """Feed 16 kHz PCM16 audio; True when the wake word was just heard."""
        detected = False
        for features in self._features.process_streaming(pcm):
            probability = self._model.process_streaming_prob(features)
            if probability is None:
                continue
            self.last_probability = probability
            if probability > self.threshold:
                detected = True
        return detected

    def reset(self) -> None:
        """Forget the audio seen so far (after a detection, so it does not fire twice)."""
        self._model.reset()
        self._features = self._feature_class()
        self.last_probability = 0.0
