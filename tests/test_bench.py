"""`voicebot bench` runs end to end on the real models and reports what it measured.

Only that it measures (numbers present, turns answered): speed itself is reported in
docs/benchmarks.md, never asserted by a timed test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voicebot.audio import silence
from voicebot.bench import speech_end_s, summarize
from voicebot.engines.fake import tone

from .test_cli import voicebot

pytestmark = pytest.mark.models


def test_bench_measures_every_stage_and_the_voice_to_voice_latency(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = voicebot(
        "bench", "--turns", "2", "--sessions", "2", "--json", str(out), data=tmp_path, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["startup"]["ready_s"] > 0
    assert results["stt"]["ms"]["n"] == 6  # six spoken questions, each transcribed
    assert results["llm"]["tokens_per_s"]["p50"] > 0
    # The reference runs happened in the same benchmark: plain faster-whisper and llama.cpp.
    assert results["stt"]["reference_faster_whisper_ms"]["n"] == 6
    assert results["llm"]["reference_llama_cpp"]["tokens_per_s"]["p50"] > 0
    assert results["tts"]["first_audio_ms"]["p50"] > 0
    # Every spoken turn got a spoken reply, in process and over the websocket (2 sessions).
    assert results["in_process"]["voice_to_voice"]["n"] == 2
    assert results["in_process"]["unanswered"] == 0
    assert results["llm"]["first_token_ratio_vs_llama_cpp"] > 0
    websocket = results["websocket"]["2"]
    assert websocket["voice_to_voice_ms"]["n"] == 4
    assert websocket["unanswered"] == 0
    assert websocket["server_stages_ms"]["stt"]["n"] == 4
    assert "voice-to-voice" in result.stdout


def test_bench_on_the_llama_cpp_backend_reports_it(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = voicebot(
        "bench",
        "--llm-backend",
        "llama-cpp",
        "--turns",
        "1",
        "--sessions",
        "1",
        "--no-reference",
        "--json",
        str(out),
        data=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["llm"]["backend"] == "LlamaCppChat"
    assert results["llm"]["tokens_per_s"]["p50"] > 0
    assert results["in_process"]["voice_to_voice"]["n"] == 1


def test_speech_end_ignores_the_silence_after_the_speech() -> None:
    # Voice-to-voice is timed from here: trailing silence must not count as speech.
    clip = silence(0.2, 16000) + tone(1.0) + silence(0.7, 16000)
    assert speech_end_s(clip) == pytest.approx(1.2, abs=0.011)
    quiet_tail = tone(1.0) + tone(0.3, level=0.0005) + silence(0.5, 16000)
    assert speech_end_s(quiet_tail) == pytest.approx(1.0, abs=0.011)


def test_summarize_reports_percentiles_and_count() -> None:
    stats = summarize([float(v) for v in range(1, 101)])
    assert stats == {"p50": 50.5, "p95": 95.0, "max": 100.0, "n": 100}
    assert summarize([]) == {"n": 0}


def test_bench_wake_counts_hits_and_false_wakes(tmp_path: Path) -> None:
    out = tmp_path / "wake.json"
    result = voicebot("bench", "--wake", "--json", str(out), data=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    wake = json.loads(out.read_text())
    assert wake["wake_word"] == "okay_nabu" and wake["said"] == 18
    # "okay nabu" said by five espeak-ng voices at three speeds and by Piper: most are heard
    # (15 of 18 measured); minutes of ordinary speech do not wake it.
    assert wake["heard"] >= 12, wake["missed"]
    assert wake["ordinary_speech_min"] > 5 and wake["false_wakes"] <= 1
    assert "false wakes" in result.stdout
