"""The Wyoming benchmark's scoring and table (the run itself is `voicebot bench --wyoming`)."""

from __future__ import annotations

from voicebot.bench_wyoming import _word_errors, format_table


def test_word_errors_count_substitutions_drops_and_additions() -> None:
    assert _word_errors("How far is the moon?", "how far is the moon") == 0
    assert _word_errors("How far is the moon?", "How far is the mint?") == 1
    assert _word_errors("a b c", "a c") == 1
    assert _word_errors("a b", "a b c d") == 2


def test_the_table_names_the_cpu_and_both_servers() -> None:
    timing = {"p50": 80.0, "p95": 100.0, "n": 18}
    document = {
        "machine": {
            "cpu": {"model": "Test CPU", "flags": {"avx2": True, "avx512f": False}},
            "physical_cores": 2,
        },
        "stt_model": "/m/whisper-tiny.en",
        "voice": "/m/en_US-joe-medium.onnx",
        "stt_threads": 2,
        "beam_size": 1,
        "repeats": 3,
        "recordings": 6,
        "results": {
            "time_to_transcript_ms": {"voicebot": timing, "wyoming-faster-whisper": timing},
            "time_to_transcript_streamed_ms": {
                "voicebot": timing,
                "wyoming-faster-whisper": timing,
            },
            "time_to_first_audio_ms": {"voicebot": timing, "wyoming-piper": timing},
            "time_to_audio_stop_ms": {"voicebot": timing, "wyoming-piper": timing},
            "words_misheard": {"voicebot": 2, "wyoming-faster-whisper": 1},
            "words_spoken": 44,
        },
    }
    table = format_table(document)
    assert "Test CPU (2 physical cores; avx2)" in table
    assert "| time to transcript (from audio-stop) | 80 / 100 | wyoming-faster-whisper |" in table
    assert "| words misheard (of 44" in table and "| 2 |" in table
    assert "wyoming-piper" in table
