"""The VAD state machine, on tones (the fake VAD calls loud frames speech)."""

from __future__ import annotations

import numpy as np

from voicebot.audio import pcm16_to_float, silence
from voicebot.config import SegmenterSettings
from voicebot.engines.fake import FakeVad, tone
from voicebot.segmenter import (
    PauseBegan,
    Segmenter,
    SpeechBegan,
    SpeechResumed,
    UtteranceDropped,
    UtteranceEnded,
)

RATE = 16000


def feed_all(segmenter: Segmenter, pcm: bytes, chunk_s: float = 0.02) -> list[object]:
    step = 2 * round(chunk_s * RATE)
    events: list[object] = []
    for start in range(0, len(pcm), step):
        events.extend(segmenter.feed(pcm[start : start + step]))
    return events


def test_one_utterance_with_pre_roll_keeps_the_onset() -> None:
    segmenter = Segmenter(FakeVad(), SegmenterSettings(pre_roll_ms=300))
    speech = tone(1.0)
    events = feed_all(segmenter, silence(1.0, RATE) + speech + silence(1.0, RATE))
    kinds = [type(e) for e in events]
    assert kinds == [SpeechBegan, PauseBegan, UtteranceEnded]
    began = events[0]
    assert isinstance(began, SpeechBegan)
    assert abs(began.stream_time_s - 1.0) <= 0.03
    ended = events[-1]
    assert isinstance(ended, UtteranceEnded)
    audio = pcm16_to_float(ended.audio)
    # The utterance starts in the silence before the tone (pre-roll) ...
    assert ended.start_s <= 1.0 - 0.2
    lead = round((1.0 - ended.start_s) * RATE)
    assert np.max(np.abs(audio[: lead - 10])) < 0.01
    # ... and holds the tone's very first samples (its onset was not clipped).
    tone_samples = pcm16_to_float(speech)
    assert np.allclose(audio[lead : lead + 480], tone_samples[:480], atol=1e-3)
    assert abs(ended.speech_end_s - 2.0) <= 0.03
    assert ended.voiced_ms >= 900


def test_clicks_shorter_than_min_speech_are_dropped() -> None:
    segmenter = Segmenter(FakeVad(), SegmenterSettings(min_speech_ms=250))
    events = feed_all(segmenter, silence(0.5, RATE) + tone(0.12) + silence(1.0, RATE))
    assert [type(e) for e in events][-1] is UtteranceDropped
    assert not any(isinstance(e, UtteranceEnded) for e in events)


def test_pause_then_resume_reports_both_and_one_utterance() -> None:
    segmenter = Segmenter(
        FakeVad(), SegmenterSettings(end_of_turn_silence_ms=600), speculative_after_ms=200
    )
    pcm = tone(0.6) + silence(0.35, RATE) + tone(0.6) + silence(1.0, RATE)
    events = feed_all(segmenter, pcm)
    kinds = [type(e) for e in events]
    assert kinds == [SpeechBegan, PauseBegan, SpeechResumed, PauseBegan, UtteranceEnded]
    ended = events[-1]
    assert isinstance(ended, UtteranceEnded)
    assert ended.voiced_ms >= 1100


def test_long_speech_is_cut_at_max_utterance() -> None:
    segmenter = Segmenter(FakeVad(), SegmenterSettings(max_utterance_s=2.0))
    events = feed_all(segmenter, tone(5.0))
    ended = [e for e in events if isinstance(e, UtteranceEnded)]
    assert ended and ended[0].forced
    assert 1.9 <= len(ended[0].audio) / 2 / RATE <= 2.1


def test_a_lone_click_in_the_silence_does_not_restart_the_wait() -> None:
    segmenter = Segmenter(FakeVad(), SegmenterSettings(end_of_turn_silence_ms=600))
    click = tone(0.03)  # one 30 ms frame
    pcm = tone(0.6) + silence(0.3, RATE) + click + silence(0.4, RATE)
    events = feed_all(segmenter, pcm)
    assert any(isinstance(e, UtteranceEnded) for e in events)
    assert not any(isinstance(e, SpeechResumed) for e in events)


def test_flush_ends_an_open_utterance() -> None:
    segmenter = Segmenter(FakeVad())
    events = feed_all(segmenter, tone(0.8))
    assert not any(isinstance(e, UtteranceEnded) for e in events)
    assert isinstance(segmenter.flush()[-1], UtteranceEnded)


def test_odd_chunk_sizes_are_reassembled_into_frames() -> None:
    segmenter = Segmenter(FakeVad())
    pcm = silence(0.5, RATE) + tone(0.8) + silence(1.0, RATE)
    events = feed_all(segmenter, pcm, chunk_s=0.0137)
    assert [type(e) for e in events][-1] is UtteranceEnded
    assert abs(segmenter.stream_time_s - len(pcm) / 2 / RATE) < 0.031


def test_the_end_of_turn_silence_can_be_changed_in_a_pause_and_returns_on_speech() -> None:
    segmenter = Segmenter(FakeVad(), SegmenterSettings(end_of_turn_silence_ms=600))
    events = feed_all(segmenter, tone(0.8) + silence(0.3, RATE))
    assert [type(e) for e in events] == [SpeechBegan, PauseBegan]
    segmenter.end_of_turn_silence_ms = 1500  # the words sound unfinished
    assert not feed_all(segmenter, silence(0.6, RATE))  # 900 ms: still waiting
    events = feed_all(segmenter, tone(0.3) + silence(0.7, RATE))
    assert segmenter.end_of_turn_silence_ms == 600
    assert [type(e) for e in events] == [SpeechResumed, PauseBegan, UtteranceEnded]
