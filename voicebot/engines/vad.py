"""Voice activity detection with webrtcvad."""

from __future__ import annotations

import webrtcvad

from ..errors import AudioFormatError, ConfigError

__all__ = ["WebRtcVad"]

_SAMPLE_RATE_HZ = 16000


class WebRtcVad:
    """webrtcvad on 16 kHz PCM16 frames of 10, 20 or 30 ms."""

    def __init__(self, *, aggressiveness: int = 2, frame_ms: int = 30) -> None:
        """Create a detector.

        Args:
            aggressiveness: 0 (least strict) to 3 (most strict about what counts as speech).
            frame_ms: 10, 20 or 30.
        """
        if aggressiveness not in (0, 1, 2, 3):
            raise ConfigError(f"VAD aggressiveness must be 0-3, got {aggressiveness}")
        if frame_ms not in (10, 20, 30):
            raise ConfigError(f"VAD frame must be 10, 20 or 30 ms, got {frame_ms}")
        self.frame_ms = frame_ms
        """Frame length in milliseconds."""
        self._frame_bytes = _SAMPLE_RATE_HZ * frame_ms // 1000 * 2
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: bytes) -> bool:
        """True when the frame holds speech."""
        if len(frame) != self._frame_bytes:
            raise AudioFormatError(
                f"VAD frame must be {self._frame_bytes} bytes ({self.frame_ms} ms at 16 kHz), "
                f"got {len(frame)}"
            )
        return bool(self._vad.is_speech(frame, _SAMPLE_RATE_HZ))
