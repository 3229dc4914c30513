"""The turn-taking loop on fake engines: event order, barge-in, speculation, errors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from voicebot.audio import silence
from voicebot.config import Settings, SkillSettings
from voicebot.engines import Engines
from voicebot.engines.base import Message
from voicebot.engines.fake import FakeChat, FakeStt, FakeTts, FakeVad, tone
from voicebot.events import (
    AudioOut,
    ErrorEvent,
    Interrupted,
    Metrics,
    ReplyDone,
    ReplyText,
    SessionState,
    SpeechStarted,
    SpeechStopped,
    StateChanged,
    Transcript,
)
from voicebot.session import Session
from voicebot.store import Store

from .conftest import Recorder, make_settings, paced

RATE = 16000
NO_SKILLS = SkillSettings(enabled=False)


def fake_engines(
    stt: FakeStt | None = None, llm: FakeChat | None = None, tts: FakeTts | None = None
) -> Engines:
    return Engines(
        stt=stt or FakeStt(["hello there"]),
        llm=llm or FakeChat(["Hi. How are you today?"]),
        tts=tts or FakeTts(),
        vad_factory=FakeVad,
    )


async def test_one_turn_events_in_order(settings: Settings) -> None:
    settings = replace(settings, llm=replace(settings.llm, max_sentences=2))
    recorder = Recorder()
    session = Session(fake_engines(), settings, sink=recorder)
    pcm = silence(0.3, RATE) + tone(0.8) + silence(1.0, RATE)
    await asyncio.wait_for(session.run(paced(pcm, speed=4.0)), 10)
    kinds = [type(e).__name__ for e in recorder.events if not isinstance(e, AudioOut)]
    assert kinds[:4] == ["StateChanged", "SpeechStarted", "SpeechStopped", "StateChanged"]
    assert kinds[4] == "Transcript"
    assert kinds.index("ReplyText") < kinds.index("ReplyDone") < kinds.index("Metrics")
    states = [e.state for e in recorder.of(StateChanged)]
    assert states == [
        SessionState.LISTENING,
        SessionState.THINKING,
        SessionState.SPEAKING,
        SessionState.LISTENING,
    ]
    assert [e.text for e in recorder.of(Transcript)] == ["hello there"]
    assert [e.text for e in recorder.of(ReplyText)] == ["Hi.", "How are you today?"]
    assert recorder.of(AudioOut)
    turn_ids = {e.turn_id for e in recorder.events if hasattr(e, "turn_id")}
    assert turn_ids == {1}
    metrics = recorder.of(Metrics)[0].values_ms
    assert {"end_of_turn", "stt", "llm_first_token", "first_piece", "first_audio"} <= set(metrics)
    assert metrics["voice_to_voice"] >= metrics["end_of_turn"]
    roles = [(t.role, t.text) for t in session.dialogue.turns]
    assert roles == [("user", "hello there"), ("assistant", "Hi. How are you today?")]


async def test_audio_and_text_of_each_piece_arrive_together(settings: Settings) -> None:
    settings = replace(settings, llm=replace(settings.llm, max_sentences=2))
    recorder = Recorder()
    session = Session(fake_engines(), settings, sink=recorder, realtime_playback=False)
    await session.start()
    await asyncio.wait_for(session.send_text("hi"), 5)
    await asyncio.wait_for(session.wait_idle(), 5)
    sequence = [type(e).__name__ for e in recorder.events if isinstance(e, ReplyText | AudioOut)]
    assert sequence[0] == "ReplyText" and sequence[1] == "AudioOut"
    second = sequence.index("ReplyText", 1)
    assert sequence[second + 1] == "AudioOut"


async def test_barge_in_stops_the_reply_and_keeps_only_what_was_heard(settings: Settings) -> None:
    long_reply = " ".join(f"Sentence number {i} is here." for i in range(1, 13))
    llm = FakeChat([long_reply, "Okay."], token_delay_s=0.08)
    tts = FakeTts(seconds_per_char=0.02)
    recorder = Recorder()
    session = Session(
        fake_engines(FakeStt(["tell me a story", "stop"]), llm, tts),
        # The skills would take "stop" (tests/test_skills.py); here the model answers it.
        replace(settings, llm=replace(settings.llm, max_sentences=0), skills=NO_SKILLS),
        sink=recorder,
        barge_in=True,
    )
    # The user asks, waits ~2 s into the reply, then talks over it.
    pcm = tone(0.8) + silence(2.6, RATE) + tone(0.8) + silence(1.5, RATE)
    await asyncio.wait_for(session.run(paced(pcm)), 20)

    interrupted = recorder.of(Interrupted)
    assert len(interrupted) == 1 and interrupted[0].turn_id == 1
    heard = interrupted[0].heard_text
    assert heard and long_reply.startswith(heard.rstrip("."))
    assert len(heard) < len(long_reply) / 2
    # Nothing of turn 1 is sent after the interruption.
    cut = recorder.events.index(interrupted[0])
    assert not [e for e in recorder.events[cut:] if isinstance(e, AudioOut) and e.turn_id == 1]
    # The model stopped early instead of writing the whole reply.
    assert llm.tokens_streamed < len(long_reply.split()) + 1
    first_reply = session.dialogue.turns[1]
    assert first_reply.role == "assistant" and first_reply.interrupted
    assert first_reply.text == heard
    assert [t.text for t in session.dialogue.turns if t.role == "user"] == [
        "tell me a story",
        "stop",
    ]
    assert session.dialogue.turns[-1].text == "Okay."


async def test_half_duplex_ignores_speech_while_speaking(settings: Settings) -> None:
    long_reply = " ".join(f"Sentence {i}." for i in range(1, 6))
    stt = FakeStt(["question", "echo"])
    recorder = Recorder()
    session = Session(
        fake_engines(stt, FakeChat([long_reply]), FakeTts(seconds_per_char=0.03)),
        replace(settings, llm=replace(settings.llm, max_sentences=0)),
        sink=recorder,
        barge_in=False,
    )
    pcm = tone(0.8) + silence(1.2, RATE) + tone(0.8) + silence(3.0, RATE)
    await asyncio.wait_for(session.run(paced(pcm)), 20)
    assert not recorder.of(Interrupted)
    assert len(stt.calls) == 1
    assert [e.text for e in recorder.of(Transcript)] == ["question"]


async def test_speculative_transcript_is_used_when_the_user_stays_quiet(
    settings: Settings,
) -> None:
    stt = FakeStt(lambda pcm: f"{len(pcm)} bytes")
    recorder = Recorder()
    session = Session(fake_engines(stt), settings, sink=recorder)
    await asyncio.wait_for(session.run(paced(tone(0.8) + silence(1.2, RATE), speed=4)), 10)
    assert len(stt.calls) == 1  # the early transcription was the final one
    assert recorder.of(Transcript)[0].text == f"{len(stt.calls[0])} bytes"


async def test_speculative_transcript_is_discarded_when_speech_resumes(
    settings: Settings,
) -> None:
    stt = FakeStt(lambda pcm: f"{len(pcm)} bytes")
    recorder = Recorder()
    session = Session(fake_engines(stt), settings, sink=recorder)
    pcm = tone(0.6) + silence(0.4, RATE) + tone(0.6) + silence(1.2, RATE)
    await asyncio.wait_for(session.run(paced(pcm, speed=4)), 10)
    transcripts = recorder.of(Transcript)
    assert len(transcripts) == 1
    longest = max(len(c) for c in stt.calls)
    assert len(stt.calls) >= 2
    assert transcripts[0].text == f"{longest} bytes"  # the full utterance, not the early part


async def test_silence_and_noise_make_no_turn(settings: Settings) -> None:
    recorder = Recorder()
    stt = FakeStt([""])
    session = Session(fake_engines(stt), settings, sink=recorder)
    await asyncio.wait_for(session.run(paced(silence(2.0, RATE), speed=8)), 10)
    assert not recorder.of(SpeechStarted)
    assert not stt.calls


async def test_empty_transcript_gives_no_reply(settings: Settings) -> None:
    recorder = Recorder()
    session = Session(fake_engines(FakeStt([""])), settings, sink=recorder)
    await asyncio.wait_for(session.run(paced(tone(0.8) + silence(1.0, RATE), speed=4)), 10)
    assert recorder.of(SpeechStopped)
    assert not recorder.of(ReplyText)
    assert session.state is SessionState.LISTENING
    assert session.dialogue.turns == []


@pytest.mark.parametrize("written", ["", "  ", "***"])
async def test_a_reply_with_nothing_to_say_says_so(settings: Settings, written: str) -> None:
    from voicebot.responder import NO_ANSWER

    recorder = Recorder()
    engines = fake_engines(llm=FakeChat([written, "Hi there."]))
    session = Session(engines, settings, sink=recorder, realtime_playback=False)
    await session.start()
    await asyncio.wait_for(session.send_text("hello"), 5)
    await asyncio.wait_for(session.wait_idle(), 5)
    # The user hears that there is no answer, rather than silence.
    assert [e.text for e in recorder.of(ReplyText)] == [NO_ANSWER]
    assert recorder.of(AudioOut)
    assert [e.text for e in recorder.of(ReplyDone)] == [NO_ANSWER]
    assert session.dialogue.turns[-1].text == NO_ANSWER
    await asyncio.wait_for(session.send_text("hello again"), 5)
    await asyncio.wait_for(session.wait_idle(), 5)
    assert recorder.of(ReplyDone)[-1].text == "Hi there."


async def test_an_engine_failure_is_an_error_event_and_the_session_goes_on(
    settings: Settings,
) -> None:
    recorder = Recorder()
    stt = FakeStt(["boom", "hello"], fail_on="boom")
    no_speculation = replace(settings, session=replace(settings.session, speculative_stt=False))
    session = Session(fake_engines(stt), no_speculation, sink=recorder)
    pcm = tone(0.8) + silence(1.0, RATE) + tone(0.8) + silence(1.5, RATE)
    await asyncio.wait_for(session.run(paced(pcm, speed=2)), 15)
    errors = recorder.of(ErrorEvent)
    assert len(errors) == 1 and errors[0].turn_id == 1
    assert [e.text for e in recorder.of(Transcript)] == ["hello"]
    assert recorder.of(ReplyDone)


async def test_turns_are_stored_and_a_conversation_resumes(
    settings: Settings, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store.db")
    llm = FakeChat(["Nice to meet you, Ada.", "Your name is Ada."])
    engines = fake_engines(llm=llm)
    session = Session(engines, settings, sink=Recorder(), store=store, realtime_playback=False)
    cid = await session.start()
    await session.send_text("My name is Ada.")
    await asyncio.wait_for(session.wait_idle(), 5)
    await session.close()

    resumed = Session(
        engines,
        settings,
        sink=Recorder(),
        store=store,
        conversation_id=cid,
        realtime_playback=False,
    )
    await resumed.start()
    await resumed.send_text("What is my name?")
    await asyncio.wait_for(resumed.wait_idle(), 5)
    prompt = llm.prompts[-1]
    # The default sends no earlier turns (history_turns = 0): the fact rides in the system
    # prompt, rebuilt from the stored turns.
    assert [m["role"] for m in prompt] == ["system", "user"]
    assert "The user's name is Ada." in prompt[0]["content"]
    assert [t.text for t in store.turns(cid)] == [
        "My name is Ada.",
        "Nice to meet you, Ada.",
        "What is my name?",
        "Your name is Ada.",
    ]


async def test_greeting_is_spoken_and_stored(settings: Settings, tmp_path: Path) -> None:
    recorder = Recorder()
    store = Store(tmp_path / "store.db")
    session = Session(fake_engines(), settings, sink=recorder, store=store, realtime_playback=False)
    cid = await session.start(greet=True)
    await asyncio.wait_for(session.wait_idle(), 5)
    assert recorder.of(ReplyText)[0].text == "Hi, I'm Nova. What can I do for you?"
    assert recorder.of(AudioOut)
    assert store.turns(cid)[0].role == "assistant"


async def test_odd_byte_audio_is_rejected_without_killing_the_session(
    settings: Settings,
) -> None:
    from voicebot.errors import AudioFormatError

    session = Session(fake_engines(), settings, sink=Recorder())
    await session.start()
    with pytest.raises(AudioFormatError):
        await session.feed(b"\x00\x01\x02")
    await session.feed(silence(0.1, RATE))


async def test_input_at_another_rate_is_resampled(settings: Settings) -> None:
    from voicebot.audio import resample

    recorder = Recorder()
    session = Session(fake_engines(), settings, sink=recorder, input_sample_rate_hz=44100)
    pcm = resample(silence(0.3, RATE) + tone(0.8) + silence(1.0, RATE), RATE, 44100)
    step = 2 * 441 * 2
    await session.start()
    for offset in range(0, len(pcm), step):
        await session.feed(pcm[offset : offset + step])
    await asyncio.wait_for(session.end_of_input(), 10)
    assert len(recorder.of(Transcript)) == 1


def test_make_settings_ignores_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VOICEBOT_STT_MODEL", "elsewhere")
    assert make_settings(tmp_path).stt.model == "whisper-tiny.en"


async def test_a_greeting_cut_short_keeps_only_what_was_heard(
    settings: Settings, tmp_path: Path
) -> None:
    from voicebot.config import Profile

    profile = Profile(
        name="chatty",
        system_prompt="You are {name}.",
        greeting="Hello and welcome. I can answer questions, tell jokes and keep you company.",
    )
    chatty = replace(settings, profiles={**settings.profiles, "chatty": profile})
    store = Store(tmp_path / "store.db")
    recorder = Recorder()
    session = Session(
        fake_engines(tts=FakeTts(seconds_per_char=0.04)),
        chatty,
        sink=recorder,
        store=store,
        profile="chatty",
    )
    cid = await session.start(greet=True)
    await asyncio.sleep(1.2)
    await session.interrupt()
    heard = recorder.of(Interrupted)[0].heard_text
    assert heard and profile.greeting.startswith(heard)
    assert len(heard) < len(profile.greeting) / 2
    stored = store.turns(cid)
    assert [(t.role, t.text, t.interrupted) for t in stored] == [("assistant", heard, True)]


async def test_interrupt_with_nothing_playing_sends_nothing(settings: Settings) -> None:
    recorder = Recorder()
    session = Session(fake_engines(), settings, sink=recorder, realtime_playback=False)
    await session.start()
    await session.send_text("hi")
    await asyncio.wait_for(session.wait_idle(), 5)
    await session.interrupt()
    await session.interrupt()
    assert not recorder.of(Interrupted)


async def test_history_turns_sends_earlier_turns(settings: Settings) -> None:
    llm = FakeChat(["One.", "Two.", "Three."])
    wide = replace(settings, llm=replace(settings.llm, history_turns=2))
    session = Session(fake_engines(llm=llm), wide, sink=Recorder(), realtime_playback=False)
    await session.start()
    for text in ("first", "second", "third"):
        await session.send_text(text)
        await asyncio.wait_for(session.wait_idle(), 5)
    assert [(m["role"], m["content"]) for m in llm.prompts[-1][1:]] == [
        ("user", "second"),
        ("assistant", "Two."),
        ("user", "third"),
    ]


async def test_a_complete_sentence_ends_the_turn_early(settings: Settings) -> None:
    recorder = Recorder()
    session = Session(fake_engines(FakeStt(["Is it done?"])), settings, sink=recorder)
    await asyncio.wait_for(session.run(paced(tone(0.8) + silence(1.2, RATE))), 10)
    stopped = recorder.of(SpeechStopped)[0]
    metrics = recorder.of(Metrics)[0].values_ms
    # Ended after the 300 ms early silence, not the full 600 ms.
    assert metrics["end_of_turn"] < 450
    assert stopped.stream_time_s == pytest.approx(0.8, abs=0.05)


async def test_an_unfinished_sentence_waits_for_the_full_silence(settings: Settings) -> None:
    recorder = Recorder()
    session = Session(fake_engines(FakeStt(["I want to"])), settings, sink=recorder)
    await asyncio.wait_for(session.run(paced(tone(0.8) + silence(1.2, RATE))), 10)
    assert recorder.of(Metrics)[0].values_ms["end_of_turn"] >= 580


async def test_a_reply_stops_after_max_reply_seconds(settings: Settings) -> None:
    long_reply = " ".join(f"Sentence number {i} is here." for i in range(1, 30))
    short = replace(
        settings,
        llm=replace(settings.llm, max_sentences=0),
        session=replace(settings.session, max_reply_s=1.0),
    )
    recorder = Recorder()
    session = Session(
        fake_engines(llm=FakeChat([long_reply])), short, sink=recorder, realtime_playback=False
    )
    await session.start()
    await session.send_text("talk")
    await asyncio.wait_for(session.wait_idle(), 10)
    audio_s = sum(len(e.pcm) / 2 / e.sample_rate_hz for e in recorder.of(AudioOut))
    assert 1.0 <= audio_s < 1.0 + 0.6  # the piece that crossed the limit, and no more


async def test_half_duplex_hears_the_user_go_on_while_the_reply_is_still_written(
    settings: Settings,
) -> None:
    # "Set a timer" sounds finished, so the turn ends early; the user goes on before
    # anything has played. Half-duplex only ignores the microphone while the bot's sound
    # plays, so the continuation is heard and the reply answers the whole turn.
    stt = FakeStt(["Set a timer.", "for ten minutes"])
    llm = FakeChat(
        ["Sure thing, a timer.", "A timer for ten minutes."],
        token_delay_s=0.4,
        turn_end=lambda text: 1.0,
    )
    recorder = Recorder()
    session = Session(
        fake_engines(stt, llm),
        # The skills would set that timer (tests/test_skills.py); here the model answers it.
        replace(settings, llm=replace(settings.llm, max_sentences=0), skills=NO_SKILLS),
        sink=recorder,
        barge_in=False,
    )
    pcm = tone(0.8) + silence(0.45, RATE) + tone(0.8) + silence(2.5, RATE)
    await asyncio.wait_for(session.run(paced(pcm)), 20)

    assert [e.text for e in recorder.of(Transcript)] == ["Set a timer.", "for ten minutes"]
    assert llm.prompts[-1][-1] == {"role": "user", "content": "Set a timer. for ten minutes"}
    # Nothing of the first, abandoned reply was played or remembered.
    assert recorder.of(Interrupted)[0].heard_text == ""
    assert [t.role for t in session.dialogue.turns] == ["user", "user", "assistant"]
    assert session.dialogue.turns[-1].text == "A timer for ten minutes."


async def test_half_duplex_still_ignores_the_echo_tail_after_the_reply(
    settings: Settings,
) -> None:
    stt = FakeStt(["question", "echo"])
    tail = replace(settings, session=replace(settings.session, echo_tail_ms=800))
    recorder = Recorder()
    session = Session(
        fake_engines(stt, FakeChat(["Short."]), FakeTts(seconds_per_char=0.1)),
        tail,
        sink=recorder,
        barge_in=False,
    )
    await session.start()
    await session.send_text("question")
    # Wait for the reply's sound to end, then "echo" arrives inside the 800 ms tail.
    await asyncio.wait_for(session.wait_idle(), 10)
    async for chunk in paced(tone(0.5) + silence(1.0, RATE)):
        await asyncio.wait_for(session.feed(chunk), 5)
    await asyncio.wait_for(session.end_of_input(), 10)
    assert not stt.calls  # the tail was not listened to
    assert not recorder.of(SpeechStarted)


async def test_a_discarded_speculative_transcription_is_cancelled(settings: Settings) -> None:
    # The STT worker is busy for a while on each call: a speculative transcription of the
    # first pause that was still queued when the user resumed must never run.
    stt = FakeStt(lambda pcm: f"{len(pcm)} bytes", delay_s=1.2)
    recorder = Recorder()
    session = Session(fake_engines(stt), settings, sink=recorder)
    pcm = (tone(0.4) + silence(0.3, RATE) + tone(0.4) + silence(0.3, RATE) + tone(0.4)) + silence(
        2.5, RATE
    )
    await asyncio.wait_for(session.run(paced(pcm)), 15)
    transcripts = recorder.of(Transcript)
    assert len(transcripts) == 1
    # Three pauses. The first one's transcription runs ~0.45-1.65 s; the second pause's was
    # queued behind it and cancelled when speech resumed at 1.4 s; the third is the final.
    assert len(stt.calls) == 2
    assert transcripts[0].text == f"{max(len(c) for c in stt.calls)} bytes"
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("stt-speculative")]


async def test_a_failing_greeting_is_an_error_event_and_the_session_goes_on(
    settings: Settings,
) -> None:
    class BrokenVoice(FakeTts):
        def synthesize(self, text, cancel=None, *, speaking_rate=None):  # type: ignore[no-untyped-def]
            if text.startswith("Hi, I'm"):
                raise RuntimeError("voice broke")
            yield from super().synthesize(text, cancel, speaking_rate=speaking_rate)

    recorder = Recorder()
    session = Session(
        fake_engines(tts=BrokenVoice()), settings, sink=recorder, realtime_playback=False
    )
    await session.start(greet=True)
    await asyncio.wait_for(session.wait_idle(), 5)
    errors = recorder.of(ErrorEvent)
    assert len(errors) == 1 and "voice broke" in errors[0].message
    assert session.state is SessionState.LISTENING
    await session.send_text("hi")
    await asyncio.wait_for(session.wait_idle(), 5)
    assert recorder.of(ReplyDone)[-1].text


async def test_an_interrupted_reply_keeps_its_metrics(settings: Settings, tmp_path: Path) -> None:
    long_reply = " ".join(f"Sentence number {i} is here." for i in range(1, 9))
    store = Store(tmp_path / "store.db")

    class AudioRecorder(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.first_audio = asyncio.Event()

        async def __call__(self, event: object) -> None:
            await super().__call__(event)
            if isinstance(event, AudioOut):
                self.first_audio.set()

    recorder = AudioRecorder()
    session = Session(
        fake_engines(
            llm=FakeChat([long_reply], token_delay_s=0.05), tts=FakeTts(seconds_per_char=0.05)
        ),
        replace(settings, llm=replace(settings.llm, max_sentences=0)),
        sink=recorder,
        store=store,
    )
    cid = await session.start()
    await session.send_text("tell me a story")

    await asyncio.wait_for(recorder.first_audio.wait(), 5)
    await asyncio.sleep(0.3)
    # The model is still writing (40 words at 50 ms each) when the user cuts in.
    assert not recorder.of(ReplyDone)
    await asyncio.wait_for(session.interrupt(), 5)
    reply = store.turns(cid)[-1]
    assert reply.role == "assistant" and reply.interrupted
    assert {"llm_first_token", "first_piece", "first_audio", "voice_to_voice"} <= set(
        reply.metrics_ms
    )


async def test_a_slow_first_clause_is_cut_so_speech_starts(settings: Settings) -> None:
    reply = "The moon is about 1784567852 miles away from our planet Earth."
    for wait_ms, expect_cut in ((300, True), (0, False)):
        recorder = Recorder()
        session = Session(
            fake_engines(llm=FakeChat([reply], token_delay_s=0.1)),
            replace(settings, session=replace(settings.session, first_piece_max_wait_ms=wait_ms)),
            sink=recorder,
            realtime_playback=False,
        )
        await session.start()
        await session.send_text("how far is the moon")
        await asyncio.wait_for(session.wait_idle(), 10)
        pieces = [e.text for e in recorder.of(ReplyText)]
        assert " ".join(pieces) == reply
        if expect_cut:
            # Four words were whole ~300 ms after the first token: spoken before the rest.
            assert len(pieces) == 2 and 4 <= len(pieces[0].split()) < len(reply.split())
            assert recorder.of(Metrics)[0].values_ms["first_piece"] < 700
        else:
            assert pieces == [reply]


async def test_history_is_measured_per_model_unless_set(settings: Settings) -> None:
    async def prompt_after_two_turns(settings: Settings) -> list[str]:
        llm = FakeChat(["One.", "Two."])
        session = Session(fake_engines(llm=llm), settings, sink=Recorder(), realtime_playback=False)
        await session.start()
        for text in ("first", "second"):
            await session.send_text(text)
            await asyncio.wait_for(session.wait_idle(), 5)
        return [m["content"] for m in llm.prompts[-1][1:]]

    # The embedded 135M model: the catalog's measured value, no earlier turns.
    assert await prompt_after_two_turns(settings) == ["second"]
    # Any other model (a path or hub name): all earlier turns that fit.
    other = replace(settings, llm=replace(settings.llm, model="/models/Qwen2.5-1.5B-Instruct"))
    assert await prompt_after_two_turns(other) == ["first", "One.", "second"]
    # An explicit setting wins.
    pinned = replace(other, llm=replace(other.llm, history_turns=0))
    assert await prompt_after_two_turns(pinned) == ["second"]


class CancelRecordingChat(FakeChat):
    """A fake chat model that keeps the cancel event of every reply it writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cancels: list[threading.Event] = []

    def stream(self, messages: Sequence[Message], cancel: threading.Event) -> Iterator[str]:
        self.cancels.append(cancel)
        return super().stream(messages, cancel)


def turn_settings(settings: Settings, **segmenter: Any) -> Settings:
    return replace(settings, segmenter=replace(settings.segmenter, **segmenter))


async def test_a_preemptive_reply_is_discarded_when_the_user_goes_on(
    settings: Settings, tmp_path: Path
) -> None:
    # "Tell me" sounds neither finished nor unfinished: the turn waits the plain 1 s of
    # silence, and meanwhile a reply to "Tell me" is worked. The user goes on at 0.7 s.
    stt = FakeStt(["Tell me", "Tell me a joke"])
    llm = CancelRecordingChat(
        [" ".join(["word"] * 16) + ".", "A joke."],
        token_delay_s=0.1,
        turn_end=lambda text: 0.01,
    )
    store = Store(tmp_path / "store.db")
    recorder = Recorder()
    session = Session(
        fake_engines(stt, llm),
        turn_settings(settings, end_of_turn_silence_ms=1000),
        sink=recorder,
        store=store,
    )
    cid = await session.start()
    pcm = tone(0.8) + silence(0.7, RATE) + tone(0.8) + silence(1.5, RATE)
    await asyncio.wait_for(session.run(paced(pcm)), 20)

    assert llm.prompts[0][-1] == {"role": "user", "content": "Tell me"}  # it was worked
    assert llm.cancels[0].is_set()  # and stopped
    assert llm.tokens_streamed < 16 + 2  # not all of it
    assert recorder.texts(Transcript) == ["Tell me a joke"]
    assert recorder.texts(ReplyText) == ["A joke."]
    assert {e.turn_id for e in recorder.of(AudioOut)} == {1}
    heard = sum(len(e.pcm) for e in recorder.of(AudioOut))
    assert heard == sum(len(c) for c in FakeTts().synthesize("A joke."))
    assert [t.text for t in session.dialogue.turns] == ["Tell me a joke", "A joke."]
    assert [t.text for t in store.turns(cid)] == ["Tell me a joke", "A joke."]
    assert not recorder.of(Interrupted)


async def test_a_preemptive_reply_to_other_words_is_discarded_and_rebuilt(
    settings: Settings,
) -> None:
    # A short sound after the pause (less new speech than it takes to redo the early
    # transcript) keeps the preemptive reply; the final transcript, redone on the whole
    # utterance, has other words, so the reply is rebuilt on them.
    stt = FakeStt(["Tell me", "Tell me more"])
    llm = CancelRecordingChat(["About what?", "More of what?"], turn_end=lambda text: 0.01)
    recorder = Recorder()
    session = Session(fake_engines(stt, llm), settings, sink=recorder)
    pcm = tone(0.8) + silence(0.5, RATE) + tone(0.1) + silence(1.5, RATE)
    await asyncio.wait_for(session.run(paced(pcm)), 20)

    assert len(stt.calls) == 2 and len(stt.calls[1]) > len(stt.calls[0])
    assert [p[-1]["content"] for p in llm.prompts] == ["Tell me", "Tell me more"]
    assert llm.cancels[0].is_set()
    assert recorder.texts(Transcript) == ["Tell me more"]
    assert recorder.texts(ReplyText) == ["More of what?"]
    assert [t.text for t in session.dialogue.turns] == ["Tell me more", "More of what?"]


async def test_a_confirmed_preemptive_reply_is_heard_without_asking_the_model_again(
    settings: Settings,
) -> None:
    stt = FakeStt(["What is the capital of France?"])
    llm = CancelRecordingChat(
        ["Paris is the capital of France."], token_delay_s=0.05, turn_end=lambda text: 0.01
    )
    tts = FakeTts()

    class Watcher(Recorder):
        """Notes what the voice had made when the turn ended."""

        synthesized_at_stop: list[str] | None = None

        async def __call__(self, event: Any) -> None:
            await super().__call__(event)
            if isinstance(event, SpeechStopped):
                self.synthesized_at_stop = list(tts.texts)

    recorder = Watcher()
    session = Session(
        fake_engines(stt, llm, tts),
        turn_settings(settings, end_of_turn_silence_ms=1200),
        sink=recorder,
    )
    await asyncio.wait_for(session.run(paced(tone(0.8) + silence(1.6, RATE))), 20)

    assert len(llm.prompts) == 1 and not llm.cancels[0].is_set()
    # The first piece was spoken before the turn was confirmed, and nothing came out before.
    assert recorder.synthesized_at_stop == ["Paris is the capital of France."]
    kinds = [type(e).__name__ for e in recorder.events if not isinstance(e, StateChanged)]
    assert kinds[:4] == ["SpeechStarted", "SpeechStopped", "Transcript", "ReplyText"]
    assert kinds[4] == "AudioOut"
    metrics = recorder.of(Metrics)[0].values_ms
    assert {"end_of_turn", "stt", "llm_first_token", "first_audio", "voice_to_voice"} <= set(
        metrics
    )
    assert metrics["first_audio"] >= metrics["end_of_turn"]  # heard after the turn ended
    assert metrics["llm_first_token"] < metrics["end_of_turn"]  # written before it
    assert [t.text for t in session.dialogue.turns] == [
        "What is the capital of France?",
        "Paris is the capital of France.",
    ]


def judged_by_words(text: str) -> float:
    """Unfinished after "to" (Whisper's full stop or not), finished otherwise."""
    return 0.0001 if text.rstrip(".").endswith(" to") else 0.95


async def test_an_unfinished_phrase_is_not_cut_by_a_pause_shorter_than_the_max(
    settings: Settings,
) -> None:
    stt = FakeStt(["I want to.", "I want to go home."])
    llm = FakeChat(["Okay."], turn_end=judged_by_words)
    recorder = Recorder()
    session = Session(
        fake_engines(stt, llm),
        turn_settings(settings, end_of_turn_silence_ms=900, max_end_of_turn_silence_ms=1600),
        sink=recorder,
    )
    pcm = tone(0.8) + silence(1.2, RATE) + tone(0.8) + silence(2.0, RATE)
    await asyncio.wait_for(session.run(paced(pcm)), 20)

    assert llm.turn_checks[0] == "I want to."
    assert len(recorder.of(SpeechStopped)) == 1
    assert recorder.texts(Transcript) == ["I want to go home."]
    assert [p[-1]["content"] for p in llm.prompts] == [
        "I want to go home."
    ]  # no reply to "I want to"


async def test_a_finished_phrase_ends_the_turn_after_the_short_silence(
    settings: Settings,
) -> None:
    stt = FakeStt(["I want to go home.", "Now."])
    llm = FakeChat(["Okay."], turn_end=judged_by_words)
    recorder = Recorder()
    session = Session(
        fake_engines(stt, llm),
        turn_settings(settings, end_of_turn_silence_ms=1500, early_end_of_turn_ms=300),
        sink=recorder,
    )
    pcm = tone(0.8) + silence(0.8, RATE) + tone(0.8) + silence(2.0, RATE)
    await asyncio.wait_for(session.run(paced(pcm)), 20)

    assert len(recorder.of(SpeechStopped)) == 2
    assert recorder.texts(Transcript) == ["I want to go home.", "Now."]


async def test_short_pauses_do_not_each_start_a_transcription(settings: Settings) -> None:
    stt = FakeStt(lambda pcm: f"{len(pcm)} bytes")
    recorder = Recorder()
    session = Session(fake_engines(stt), settings, sink=recorder)
    pauses = 6
    pcm = tone(0.6)
    for _ in range(pauses - 1):
        pcm += silence(0.25, RATE) + tone(0.12)
    pcm += silence(1.0, RATE)
    await asyncio.wait_for(session.run(paced(pcm, speed=2)), 20)

    assert len(recorder.of(Transcript)) == 1
    # Without the rule every pause starts one (six); the last is redone on the whole audio.
    assert len(stt.calls) <= 1 + pauses // 2
    assert recorder.texts(Transcript) == [f"{len(stt.calls[-1])} bytes"]
