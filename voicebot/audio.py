"""PCM helpers: conversion, resampling, file decode and WAV output.

Audio inside voicebot is PCM16 little-endian mono ``bytes`` with an explicit sample rate. It is
converted once, at the edge, with these helpers.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soxr

from .errors import AudioFormatError

__all__ = [
    "MAX_SAMPLE_RATE_HZ",
    "MIN_SAMPLE_RATE_HZ",
    "StreamResampler",
    "check_pcm16",
    "check_sample_rate",
    "duration_s",
    "float_to_pcm16",
    "pcm16_to_float",
    "read_audio",
    "resample",
    "rms_dbfs",
    "silence",
    "write_wav",
]

MIN_SAMPLE_RATE_HZ = 8000
"""Lowest input rate accepted from clients and devices."""
MAX_SAMPLE_RATE_HZ = 48000
"""Highest input rate accepted from clients and devices."""


def check_sample_rate(sample_rate_hz: object) -> int:
    """Return ``sample_rate_hz`` as an int, or raise :class:`AudioFormatError` if unusable."""
    if isinstance(sample_rate_hz, bool) or not isinstance(sample_rate_hz, int):
        raise AudioFormatError(f"sample rate must be an integer, got {sample_rate_hz!r}")
    if not MIN_SAMPLE_RATE_HZ <= sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
        raise AudioFormatError(
            f"unsupported sample rate {sample_rate_hz} Hz "
            f"(supported: {MIN_SAMPLE_RATE_HZ}-{MAX_SAMPLE_RATE_HZ} Hz)"
        )
    return sample_rate_hz


def check_pcm16(pcm: bytes) -> None:
    """Raise :class:`AudioFormatError` unless ``pcm`` holds whole 16-bit samples."""
    if len(pcm) % 2:
        raise AudioFormatError(f"PCM16 audio must have an even number of bytes, got {len(pcm)}")


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    """Convert PCM16 LE bytes to float32 samples in [-1, 1]."""
    check_pcm16(pcm)
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Convert float samples in [-1, 1] to PCM16 LE bytes (clipping out-of-range values)."""
    scaled = np.rint(np.asarray(samples, dtype=np.float32) * 32768.0)
    return bytes(np.clip(scaled, -32768, 32767).astype("<i2").tobytes())


def duration_s(pcm: bytes, sample_rate_hz: int) -> float:
    """Length of PCM16 mono audio in seconds."""
    return len(pcm) / 2 / sample_rate_hz


def silence(seconds: float, sample_rate_hz: int) -> bytes:
    """PCM16 silence of the given length."""
    return bytes(2 * round(seconds * sample_rate_hz))


def rms_dbfs(pcm: bytes) -> float:
    """Loudness of PCM16 audio in dB relative to full scale (-inf dB for digital silence)."""
    samples = pcm16_to_float(pcm)
    if samples.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * float(np.log10(rms)) if rms > 0 else float("-inf")


def resample(pcm: bytes, from_hz: int, to_hz: int) -> bytes:
    """Resample a whole PCM16 mono buffer (soxr, high quality)."""
    check_pcm16(pcm)
    if from_hz == to_hz or not pcm:
        return pcm
    samples = np.frombuffer(pcm, dtype="<i2")
    out = soxr.resample(samples, from_hz, to_hz, quality="HQ")
    return np.asarray(out, dtype="<i2").tobytes()


class StreamResampler:
    """Resamples a PCM16 stream chunk by chunk without clicks at chunk boundaries."""

    def __init__(self, from_hz: int, to_hz: int) -> None:
        """Create a resampler from ``from_hz`` to ``to_hz``."""
        self.from_hz = from_hz
        """Input rate."""
        self.to_hz = to_hz
        """Output rate."""
        self._stream = (
            None if from_hz == to_hz else soxr.ResampleStream(from_hz, to_hz, 1, dtype="int16")
        )
        self._odd = b""

    def process(self, pcm: bytes, *, last: bool = False) -> bytes:
        """Resample the next chunk; ``last=True`` flushes what the filter still holds.

        A chunk with an odd number of bytes keeps its last byte for the next call.
        """
        data = self._odd + pcm
        if len(data) % 2:
            data, self._odd = data[:-1], data[-1:]
        else:
            self._odd = b""
        if self._stream is None:
            return data
        samples = np.frombuffer(data, dtype="<i2")
        out = self._stream.resample_chunk(samples, last=last)
        return np.asarray(out, dtype="<i2").tobytes()


def read_audio(path: str | Path, sample_rate_hz: int = 16000) -> bytes:
    """Decode any audio file ffmpeg understands (wav, flac, mp3, ogg...) to PCM16 mono.

    Raises:
        AudioFormatError: the file is missing, unreadable or holds no audio.
    """
    import av  # PyAV ships its own ffmpeg; imported lazily as it is slow to import.

    path = Path(path)
    if not path.is_file():
        raise AudioFormatError(f"cannot read {path}: no such file")
    chunks: list[bytes] = []
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioFormatError(f"cannot read {path}: it holds no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate_hz)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(bytes(out.planes[0])[: out.samples * 2])
            for out in resampler.resample(None):
                chunks.append(bytes(out.planes[0])[: out.samples * 2])
    except AudioFormatError:
        raise
    except (av.error.FFmpegError, ValueError, UnicodeDecodeError) as error:
        raise AudioFormatError(f"cannot read {path}: not an audio file ({error})") from error
    pcm = b"".join(chunks)
    if not pcm:
        raise AudioFormatError(f"cannot read {path}: it holds no audio")
    return pcm


def write_wav(path: str | Path, pcm: bytes, sample_rate_hz: int) -> None:
    """Write PCM16 mono audio to a WAV file."""
    check_pcm16(pcm)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate_hz)
        out.writeframes(pcm)
