"""Skills through real speech: Piper and espeak-ng say the phrasings, Whisper tiny.en hears
them, and the router must still pick the right skill (and the right numbers)."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest

from voicebot.audio import silence
from voicebot.config import Settings
from voicebot.engines import Engines
from voicebot.events import ReplyDone, TimerFinished, Transcript
from voicebot.session import Session
from voicebot.skills import SkillRouter, TimerService
from voicebot.store import Store

from .conftest import Recorder, Speech

pytestmark = pytest.mark.models

RATE = 16000

SPOKEN: list[tuple[str, str, str]] = [
    # (what is said, the intent, and the answer or the timer's length in seconds)
    ("What time is it?", "HassGetCurrentTime", ""),
    ("What's the time?", "HassGetCurrentTime", ""),
    ("Can you tell me the time?", "HassGetCurrentTime", ""),
    ("What time is it right now?", "HassGetCurrentTime", ""),
    ("What's the date today?", "HassGetCurrentDate", ""),
    ("What day is it today?", "HassGetCurrentDate", ""),
    ("What is today's date?", "HassGetCurrentDate", ""),
    ("Set a timer for ten minutes.", "HassStartTimer", "600"),
    ("Set a timer for five seconds.", "HassStartTimer", "5"),
    ("Set a thirty second timer for the pasta.", "HassStartTimer", "30"),
    ("Start a timer for twenty minutes.", "HassStartTimer", "1200"),
    ("Set a timer for one hour.", "HassStartTimer", "3600"),
    ("Set a timer for three minutes for the eggs.", "HassStartTimer", "180"),
    ("Set a timer for two minutes and thirty seconds.", "HassStartTimer", "150"),
    ("Set a ten minute timer.", "HassStartTimer", "600"),
    ("How much time is left on my timer?", "HassTimerStatus", ""),
    ("How much time is left?", "HassTimerStatus", ""),
    ("How long is left on the pasta timer?", "HassTimerStatus", ""),
    ("Cancel the timer.", "HassCancelTimer", ""),
    ("Cancel the pasta timer.", "HassCancelTimer", ""),
    ("Cancel all timers.", "HassCancelAllTimers", ""),
    ("What is seventeen plus twenty five?", "VoicebotArithmetic", "17 plus 25 is 42."),
    ("What is fifteen percent of eighty?", "VoicebotArithmetic", "15 percent of 80 is 12."),
    ("What's seven times eight?", "VoicebotArithmetic", "7 times 8 is 56."),
    ("What is one hundred divided by four?", "VoicebotArithmetic", "100 divided by 4 is 25."),
    ("What is twelve times twelve?", "VoicebotArithmetic", "12 times 12 is 144."),
    ("What is a hundred minus fifty eight?", "VoicebotArithmetic", "100 minus 58 is 42."),
    ("What is two plus three?", "VoicebotArithmetic", "2 plus 3 is 5."),
    ("What is nine times six?", "VoicebotArithmetic", "9 times 6 is 54."),
    ("What is twenty percent of fifty?", "VoicebotArithmetic", "20 percent of 50 is 10."),
    ("Stop.", "VoicebotStop", ""),
    ("Stop talking.", "VoicebotStop", ""),
    ("Never mind.", "HassNevermind", ""),
    ("Repeat that.", "VoicebotRepeat", ""),
    ("Can you repeat that?", "VoicebotRepeat", ""),
    ("Say that again.", "VoicebotRepeat", ""),
]
"""Every skill, as a person says it (numbers in words: that is how they are spoken). The
development set: the templates' mishearing rules ("what" for "what's", "in" for "and", "on"
for "of") were added after hearing it."""

DEV_MORE: list[tuple[str, str, str]] = [
    (p["text"], p["intent"], p.get("expect", ""))
    for p in tomllib.loads((Path(__file__).parent / "data/skills_spoken_dev.toml").read_text())[
        "phrasing"
    ]
]
"""140 more development phrasings (tests/data/skills_spoken_dev.toml): the repairs of
voicebot.skills.hearing and the second listening of voicebot.skills.listening were chosen on
these and SPOKEN."""

HELD_OUT: list[tuple[str, str, str]] = [
    ("Tell me the time, please.", "HassGetCurrentTime", ""),
    ("What time is it now?", "HassGetCurrentTime", ""),
    ("Do you know what time it is?", "HassGetCurrentTime", ""),
    ("What's today's date?", "HassGetCurrentDate", ""),
    ("What day of the week is it?", "HassGetCurrentDate", ""),
    ("Set a timer for fifteen minutes.", "HassStartTimer", "900"),
    ("Set a timer for forty five seconds.", "HassStartTimer", "45"),
    ("Start a five minute timer.", "HassStartTimer", "300"),
    ("Set a timer for twelve minutes for the rice.", "HassStartTimer", "720"),
    ("Please set a timer for two hours.", "HassStartTimer", "7200"),
    ("Set a timer for half an hour.", "HassStartTimer", "1800"),
    ("Set a twenty second timer.", "HassStartTimer", "20"),
    ("How much time is left on the rice timer?", "HassTimerStatus", ""),
    ("How long is left on my timer?", "HassTimerStatus", ""),
    ("Cancel my timer.", "HassCancelTimer", ""),
    ("Stop the timer.", "HassCancelTimer", ""),
    ("Add five minutes to the timer.", "HassIncreaseTimer", ""),
    ("What is eight plus seven?", "VoicebotArithmetic", "8 plus 7 is 15."),
    ("What is forty two divided by six?", "VoicebotArithmetic", "42 divided by 6 is 7."),
    ("What is six times seven?", "VoicebotArithmetic", "6 times 7 is 42."),
    ("What is ten percent of two hundred?", "VoicebotArithmetic", "10 percent of 200 is 20."),
    ("What's fifty minus eighteen?", "VoicebotArithmetic", "50 minus 18 is 32."),
    ("What is three plus four?", "VoicebotArithmetic", "3 plus 4 is 7."),
    ("How much is eleven times eleven?", "VoicebotArithmetic", "11 times 11 is 121."),
    ("What is the square root of eighty one?", "VoicebotArithmetic", "The square root of 81 is 9."),
    ("Stop it.", "VoicebotStop", ""),
    ("Be quiet.", "VoicebotStop", ""),
    ("Never mind.", "HassNevermind", ""),
    ("Could you repeat that?", "VoicebotRepeat", ""),
    ("What did you say?", "VoicebotRepeat", ""),
]
"""Phrasings written after the templates were done and never tuned on: the reported score."""


def padded(pcm: bytes) -> bytes:
    return silence(0.5, RATE) + pcm + silence(0.8, RATE)


def right(router: SkillRouter, heard: str, intent: str, expected: str) -> bool:
    """The words Whisper wrote are routed to the intent, with the right numbers."""
    found = router.match(heard)
    if found is None or found.intent != intent:
        return False
    if intent == "HassStartTimer":
        slots = found.slots
        total = (
            float(slots.get("hours") or 0) * 3600
            + float(slots.get("minutes") or 0) * 60
            + float(slots.get("seconds") or 0)
        )
        return total == float(expected)
    if intent == "VoicebotArithmetic":
        reply = asyncio.run(router.answer(found, conversation_id="c"))
        return reply.text == expected
    return True


# Floors under the measured accuracy (docs/skills.md gives the numbers; held-out: Piper 30/30,
# espeak-ng 29/30). espeak-ng's robotic voice is still garbled past any repair at times ("Set
# a timer for one hour." -> "Set a Tyler Fortwell Tower").
FLOORS = {("development", "piper"): 0.95, ("development", "espeak"): 0.85}
FLOORS |= {("held-out", "piper"): 0.9, ("held-out", "espeak"): 0.9}


@pytest.mark.parametrize("voice", ["piper", "espeak"])
@pytest.mark.parametrize("name", ["development", "held-out"])
def test_skills_are_routed_from_speech(
    real_engines: Engines, speech: Speech, voice: str, name: str
) -> None:
    router = SkillRouter()
    say = speech.piper if voice == "piper" else speech.espeak
    phrasings = SPOKEN + DEV_MORE if name == "development" else HELD_OUT
    misses: list[tuple[str, str]] = []
    for text, intent, expected in phrasings:
        heard = real_engines.stt.transcribe(padded(say(text))).text
        if not right(router, heard, intent, expected):
            misses.append((text, heard))
    accuracy = 1 - len(misses) / len(phrasings)
    right_count = len(phrasings) - len(misses)
    print(f"\n{name} {voice}: {right_count}/{len(phrasings)} routed right; misses: {misses}")
    assert accuracy >= FLOORS[name, voice], misses


async def test_spoken_arithmetic_and_a_spoken_timer_through_the_real_engines(
    real_engines: Engines, speech: Speech, settings: Settings, tmp_path: Path
) -> None:
    store = Store(tmp_path / "voicebot.db")
    timers = TimerService(store, poll_s=0.2)
    await timers.start()
    recorder = Recorder()
    session = Session(
        real_engines,
        settings,
        sink=recorder,
        store=store,
        skills=SkillRouter(settings.skills, timers=timers),
    )
    try:
        await session.start()
        question = padded(speech.piper("What is seventeen plus twenty five?"))
        timer = padded(speech.piper("Set a timer for five seconds."))
        async with asyncio.timeout(120):
            await session.reply_to_audio(question)
            await session.reply_to_audio(timer)
        heard = [t for t in recorder.texts(Transcript) if t]
        assert len(heard) == 2, heard
        assert recorder.texts(ReplyDone) == ["17 plus 25 is 42.", "Timer set for 5 seconds."]
        async with asyncio.timeout(30):
            while "Your timer is done." not in recorder.texts(ReplyDone):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert [e.seconds for e in recorder.of(TimerFinished)] == [5.0]
        assert [t.text for t in session.dialogue.turns[:4]] == [
            heard[0],
            "17 plus 25 is 42.",
            heard[1],
            "Timer set for 5 seconds.",
        ]
    finally:
        await session.close()
        await timers.close()
        store.close()


async def test_a_timer_set_by_voice_through_the_daemon_rings_without_the_wake_word(
    real_engines: Engines, speech: Speech, settings: Settings, tmp_path: Path
) -> None:
    from voicebot.config import DaemonSettings
    from voicebot.engines.wake import MicroWakeWordDetector
    from voicebot.events import AudioOut, WakeWordDetected
    from voicebot.transports.daemon import Daemon, cue
    from voicebot.transports.file import chunks_paced

    store = Store(tmp_path / "voicebot.db")
    timers = TimerService(store, poll_s=0.2)
    await timers.start()
    skills = SkillRouter(settings.skills, timers=timers)
    recorder = Recorder()

    def conversation(sink):  # type: ignore[no-untyped-def]
        return Session(
            real_engines,
            settings,
            sink=sink,
            store=store,
            barge_in=False,
            skills=skills,
            timer_key="daemon",
        )

    rate = real_engines.tts.sample_rate_hz
    daemon = Daemon(
        DaemonSettings(follow_up_s=2.0, command_timeout_s=5.0),
        wake=MicroWakeWordDetector("okay_nabu"),
        make_conversation=conversation,
        speaker=recorder,
        output_sample_rate_hz=rate,
        mute_for_cue=False,
    )
    pcm = (
        silence(1.0, RATE)
        + speech.espeak("okay nabu", words_per_minute=140)
        + silence(0.3, RATE)
        + speech.piper("Set a timer for five seconds.", rate=0.9)
        + silence(16.0, RATE)  # no wake word: the timer ends in here
    )
    try:
        await asyncio.wait_for(daemon.run(lambda: chunks_paced(pcm, RATE), restart=False), 300)
    finally:
        await timers.close()
        store.close()
    assert len(recorder.of(WakeWordDetected)) == 1
    said = recorder.texts(ReplyDone)
    assert said[0] == "Timer set for 5 seconds.", said
    assert "Your timer is done." in said
    finished = recorder.events.index(recorder.of(TimerFinished)[0])
    chimes = [e for e in recorder.events[finished:] if isinstance(e, AudioOut) and e.turn_id == 0]
    assert chimes and chimes[0].pcm == cue("timer", rate)
