"""PCM helpers: conversion, rate checks, resampling, file decoding and WAV output."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest

from voicebot.audio import (
    StreamResampler,
    check_pcm16,
    check_sample_rate,
    float_to_pcm16,
    pcm16_to_float,
    read_audio,
    resample,
    write_wav,
)
from voicebot.errors import AudioFormatError

RATE = 16000


def sine(seconds: float, rate: int, hz: float = 1000.0, level: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return level * np.sin(2 * math.pi * hz * t)


def pcm_tone(seconds: float, rate: int, hz: float = 1000.0) -> bytes:
    return float_to_pcm16(sine(seconds, rate, hz))


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.int64)


def dominant_hz(pcm: bytes, rate: int) -> float:
    x = pcm16_to_float(pcm).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[int(np.argmax(spectrum))])


def encode_tone(path: Path, codec: str, *, seconds: float, layout: str) -> None:
    """Write a 440 Hz tone at 44.1 kHz with PyAV."""
    rate = 44100
    mono = (sine(seconds, rate, hz=440.0) * 32767).astype(np.int16)
    channels = 2 if layout == "stereo" else 1
    packed = np.repeat(mono[:, None], channels, axis=1).reshape(1, -1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(packed, format="s16", layout=layout)
        frame.rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


# --- conversion -----------------------------------------------------------------------------


def test_pcm16_to_float_scales_to_unit_range() -> None:
    pcm = np.array([0, 16384, -16384, -32768], dtype="<i2").tobytes()
    out = pcm16_to_float(pcm)
    assert out.dtype == np.float32
    assert out.tolist() == [0.0, 0.5, -0.5, -1.0]


def test_pcm16_to_float_reads_little_endian() -> None:
    assert pcm16_to_float(b"\x00\x40").tolist() == [0.5]


def test_pcm16_float_pcm16_round_trip_is_exact() -> None:
    values = np.array([0, 1, -1, 100, -100, 12345, 32767, -32768], dtype="<i2")
    assert samples(float_to_pcm16(pcm16_to_float(values.tobytes()))).tolist() == values.tolist()


def test_float_pcm16_float_round_trip_is_within_two_lsb() -> None:
    x = np.linspace(-0.999, 0.999, 1001, dtype=np.float32)
    back = pcm16_to_float(float_to_pcm16(x))
    assert back.shape == x.shape
    assert np.max(np.abs(back - x)) <= 2 / 32768


def test_float_to_pcm16_clips_out_of_range_values() -> None:
    out = samples(float_to_pcm16(np.array([3.0, -3.0, 1.0, -1.0])))
    assert out[0] == out[2] >= 32766
    assert out[1] == out[3] <= -32767


# --- format checks --------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100, 48000])
def test_check_sample_rate_accepts_integers_in_range(rate: int) -> None:
    result = check_sample_rate(rate)
    assert result == rate
    assert type(result) is int


@pytest.mark.parametrize("rate", [7999, 48001, 0, -16000, "16000", True, 16000.0, None])
def test_check_sample_rate_rejects_out_of_range_and_non_integers(rate: object) -> None:
    with pytest.raises(AudioFormatError):
        check_sample_rate(rate)


def test_check_pcm16_rejects_odd_byte_count() -> None:
    with pytest.raises(AudioFormatError, match="3"):
        check_pcm16(b"\x00\x01\x02")


def test_check_pcm16_accepts_even_byte_count() -> None:
    check_pcm16(b"")
    check_pcm16(b"\x00\x01")


def test_pcm16_to_float_rejects_odd_byte_count() -> None:
    with pytest.raises(AudioFormatError):
        pcm16_to_float(b"\x00")


# --- resampling -----------------------------------------------------------------------------


@pytest.mark.parametrize(("from_hz", "to_hz"), [(16000, 44100), (48000, 16000), (8000, 22050)])
def test_resample_output_length_follows_the_rate_ratio(from_hz: int, to_hz: int) -> None:
    out = resample(pcm_tone(1.0, from_hz), from_hz, to_hz)
    assert len(out) % 2 == 0
    assert abs(len(out) // 2 - to_hz) <= 2


def test_resample_same_rate_returns_input_unchanged() -> None:
    pcm = pcm_tone(0.1, RATE)
    assert resample(pcm, RATE, RATE) == pcm


def test_resample_empty_input_gives_empty_output() -> None:
    assert resample(b"", 16000, 44100) == b""


def test_resample_rejects_odd_byte_count() -> None:
    with pytest.raises(AudioFormatError):
        resample(b"\x00\x00\x00", 16000, 44100)


def test_resample_round_trip_keeps_a_1khz_tone_at_1khz() -> None:
    pcm = pcm_tone(1.0, RATE, hz=1000.0)
    up = resample(pcm, 16000, 44100)
    assert abs(dominant_hz(up, 44100) - 1000.0) <= 2.0
    back = resample(up, 44100, 16000)
    assert abs(len(back) - len(pcm)) <= 4
    assert abs(dominant_hz(back, RATE) - 1000.0) <= 2.0


def stream_in_chunks(pcm: bytes, sizes: list[int], from_hz: int, to_hz: int) -> bytes:
    resampler = StreamResampler(from_hz, to_hz)
    out: list[bytes] = []
    start = 0
    i = 0
    while start < len(pcm):
        size = sizes[i % len(sizes)]
        i += 1
        chunk = pcm[start : start + size]
        start += size
        out.append(resampler.process(chunk, last=start >= len(pcm)))
    return b"".join(out)


ODD_SIZES = [1, 333, 1001, 77, 4097, 3, 2, 641]


def test_stream_resampler_in_odd_chunks_gives_as_many_samples_as_one_shot() -> None:
    pcm = pcm_tone(2.0, RATE, hz=440.0)
    streamed = stream_in_chunks(pcm, ODD_SIZES, 16000, 44100)
    one_shot = resample(pcm, 16000, 44100)
    assert len(streamed) % 2 == 0
    assert abs(len(streamed) - len(one_shot)) // 2 <= 8


def test_stream_resampler_has_no_clicks_at_chunk_boundaries() -> None:
    pcm = pcm_tone(2.0, RATE, hz=440.0)
    streamed = samples(stream_in_chunks(pcm, ODD_SIZES, 16000, 44100))
    one_shot = samples(resample(pcm, 16000, 44100))
    n = min(streamed.size, one_shot.size)
    edge = 500
    # The tone peaks near 9830; a click or a dropped/doubled sample would differ by hundreds.
    assert np.max(np.abs(streamed[edge : n - edge] - one_shot[edge : n - edge])) <= 8


def test_stream_resampler_same_rate_passes_bytes_through_across_odd_chunks() -> None:
    resampler = StreamResampler(RATE, RATE)
    assert resampler.process(b"\x01\x02\x03") == b"\x01\x02"
    assert resampler.process(b"\x04") == b"\x03\x04"
    assert resampler.process(b"", last=True) == b""


# --- files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "codec", "layout"),
    [
        ("tone.wav", "pcm_s16le", "stereo"),
        ("tone.flac", "flac", "stereo"),
        ("tone.mp3", "libmp3lame", "stereo"),
        ("mono.mp3", "libmp3lame", "mono"),
    ],
)
def test_read_audio_decodes_to_16khz_mono_with_the_right_duration(
    tmp_path: Path, name: str, codec: str, layout: str
) -> None:
    path = tmp_path / name
    encode_tone(path, codec, seconds=1.5, layout=layout)
    pcm = read_audio(path, RATE)
    assert len(pcm) % 2 == 0
    assert abs(len(pcm) / 2 / RATE - 1.5) <= 0.05
    assert abs(dominant_hz(pcm, RATE) - 440.0) <= 3.0
    # Stereo is mixed down, not one channel doubled in length: the level is still the tone's.
    assert 0.15 <= float(np.max(np.abs(pcm16_to_float(pcm)))) <= 0.45


def test_read_audio_resamples_to_the_requested_rate(tmp_path: Path) -> None:
    path = tmp_path / "tone.flac"
    encode_tone(path, "flac", seconds=1.0, layout="mono")
    pcm = read_audio(path, 8000)
    assert abs(len(pcm) / 2 / 8000 - 1.0) <= 0.05


def test_read_audio_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioFormatError, match="nope.wav") as info:
        read_audio(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.txt", b"hello, this is not audio at all\n" * 20),
        ("garbage.wav", np.random.default_rng(1234).bytes(4096)),
        ("empty.wav", b""),
    ],
)
def test_read_audio_unreadable_file_raises_with_the_path(
    tmp_path: Path, name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AudioFormatError) as info:
        read_audio(path)
    assert str(path) in str(info.value)


def test_write_wav_then_read_audio_round_trips(tmp_path: Path) -> None:
    pcm = pcm_tone(0.75, RATE, hz=440.0)
    path = tmp_path / "out.wav"
    write_wav(path, pcm, RATE)
    assert read_audio(path, RATE) == pcm


def test_write_wav_rejects_odd_byte_count(tmp_path: Path) -> None:
    with pytest.raises(AudioFormatError):
        write_wav(tmp_path / "odd.wav", b"\x00\x00\x00", RATE)
