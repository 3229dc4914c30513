"""Text to speech with Piper."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import EngineError, ModelError
from ._hardware import physical_cores

__all__ = ["PiperTts"]

_LOGGER = logging.getLogger(__name__)


class PiperTts:
    """A Piper voice, speaking one sentence at a time."""

    def __init__(
        self,
        voice: str | Path,
        *,
        speaker: int | None = None,
        speaking_rate: float = 1.0,
        use_cuda: bool = False,
        threads: int = 0,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
    ) -> None:
        """Load a Piper ``.onnx`` voice (its ``.onnx.json`` config beside it).

        Args:
            voice: Path to the ``.onnx`` file.
            speaker: Speaker index for multi-speaker voices.
            speaking_rate: 1.0 natural; 1.2 is 20% faster.
            use_cuda: Run on CUDA (needs onnxruntime-gpu).
            threads: onnxruntime intra-op threads; 0 for the physical core count.
            noise_scale: Generator noise (None: the voice's own); 0 with ``noise_w_scale`` 0
                makes the output identical on every run (the tests use that).
            noise_w_scale: Phoneme length noise (None: the voice's own).

        Raises:
            ModelError: the voice cannot be loaded.
        """
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        path = Path(voice)
        config_path = Path(f"{path}.json")
        if not path.is_file() or not config_path.is_file():
            raise ModelError(f"Piper voice {path} (and {config_path.name} beside it) not found")
        if speaking_rate <= 0:
            raise ModelError(f"speaking rate must be positive, got {speaking_rate}")
        try:
            config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads or physical_cores()
            options.inter_op_num_threads = 1
            # Idle onnxruntime threads spin by default; on a small machine that spinning takes
            # the cores the chat model and Whisper need between sentences.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
            providers = ["CUDAExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
            session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=providers
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load Piper voice {path}: {error}") from error
        self._voice = PiperVoice(session=session, config=config)
        self._speaker = speaker
        self.speaking_rate = speaking_rate
        """Default speaking rate."""
        self.sample_rate_hz: int = config.sample_rate
        """Rate of the PCM this voice yields."""
        self.name = path.stem
        """The voice's name."""
        self._length_scale = float(config.length_scale or 1.0)
        self._noise_scale = noise_scale
        self._noise_w_scale = noise_w_scale
        _LOGGER.info("piper voice %s at %d Hz", self.name, self.sample_rate_hz)

    def synthesize(
        self,
        text: str,
        cancel: threading.Event | None = None,
        *,
        speaking_rate: float | None = None,
    ) -> Iterator[bytes]:
        """Yield PCM16 audio, one chunk per sentence of ``text``; stop once ``cancel`` is set."""
        from piper.config import SynthesisConfig

        rate = speaking_rate or self.speaking_rate
        config = SynthesisConfig(
            speaker_id=self._speaker,
            length_scale=self._length_scale / rate,
            noise_scale=self._noise_scale,
            noise_w_scale=self._noise_w_scale,
        )
        if not text.strip():
            return
        try:
            for chunk in self._voice.synthesize(text, syn_config=config):
                if cancel is not None and cancel.is_set():
                    return
                yield chunk.audio_int16_bytes
        except Exception as error:  # onnxruntime and espeak errors have no common base
            raise EngineError(f"speech synthesis failed: {error}") from error
