"""What tiny.en mishears in a spoken request, repaired before the templates give up
(voicebot.skills.hearing), and the second listening with the skills' words as Whisper's
prompt (voicebot.skills.listening). The mishearings are from the development phrasings."""

from __future__ import annotations

import pytest

from voicebot.engines.base import Transcription
from voicebot.skills import SkillRouter
from voicebot.skills.hearing import repair
from voicebot.skills.listening import SKILL_PROMPT, SkillListeningStt


@pytest.fixture(scope="module")
def router() -> SkillRouter:
    return SkillRouter()


MISHEARD: list[tuple[str, str, dict[str, object]]] = [
    # (what tiny.en wrote, the intent, slots that must be read)
    ("What is for plus 4?", "VoicebotArithmetic", {"text": "what is four plus 4"}),
    ("What is i plus 8?", "VoicebotArithmetic", {"text": "what is nine plus 8"}),
    ("How much is seven times i?", "VoicebotArithmetic", {"text": "how much is seven times nine"}),
    ("What is by plus 6?", "VoicebotArithmetic", {"text": "what is five plus 6"}),
    ("What in 64 plus 36?", "VoicebotArithmetic", {"a": "64"}),
    ("What is the square root on 64?", "VoicebotArithmetic", {"a": "64"}),
    ("What is 50% on 4D?", "VoicebotArithmetic", {"b": "forty"}),
    ("Set it to minute timer.", "HassStartTimer", {"minutes": 2}),
    ("Start at a 3 minute timer.", "HassStartTimer", {"minutes": 3}),
    ("Set a timer for well-hower and 30 minutes.", "HassStartTimer", {"hours": 1}),
    ("Search a timer for a minute.", "HassStartTimer", {"minutes": 1}),
    ("Search on 8 minute timer", "HassStartTimer", {"minutes": 8}),
    ("and 10 minutes to my timer", "HassIncreaseTimer", {"minutes": 10}),
    ("Cancel Alzheimer's", "HassCancelAllTimers", {}),
    ("Repeat now, please.", "VoicebotRepeat", {}),
    ("Stop, nerd.", "VoicebotStop", {}),
    ("Never mind not", "HassNevermind", {}),
    ("Tell me what time it is.", "HassGetCurrentTime", {}),
    ("Do you know today's day?", "HassGetCurrentDate", {}),
    ("How long until the timer go off?", "HassTimerStatus", {}),
]


@pytest.mark.parametrize(("heard", "intent", "slots"), MISHEARD)
def test_misheard_requests_are_routed(
    router: SkillRouter, heard: str, intent: str, slots: dict[str, object]
) -> None:
    found = router.match(heard)
    assert found is not None and found.intent == intent, (heard, found)
    for name, value in slots.items():
        got = found.text if name == "text" else found.slots.get(name)
        assert got == value, (heard, found)


@pytest.mark.parametrize(
    "text",
    [
        "Don't set a timer for 5 minutes.",
        "What is for dinner?",
        "What is i?",
        "What is it today?",
        "I set a 5 minute timer yesterday.",
        "How long to go?",
        "What in the world is a platypus?",
        "Forget now.",
        "Repeat now after me.",
        "Stop not smoking.",
        "Cancel Alzheimer's research.",
        "The best time to visit is May.",
        "What is the best time to visit?",
        "Time for bed.",
        "I did it my way.",
    ],
)
def test_repairs_leave_other_sentences_to_the_model(router: SkillRouter, text: str) -> None:
    assert router.match(text) is None


def test_repairs_change_only_numeric_places() -> None:
    assert repair("set a timer for ten minutes") == "set a timer for ten minutes"
    assert repair("what is for plus 4") == "what is four plus 4"
    assert repair("how long to go") == "how long to go"
    assert repair("i want to go for a walk") == "i want to go for a walk"


class Whisper:
    """A recogniser that hears one text plainly and another with the skills' prompt."""

    def __init__(self, plain: str, prompted: str) -> None:
        self.plain = plain
        self.prompted = prompted
        self.prompts: list[str] = []
        self.fit_window = True

    def transcribe(self, pcm: bytes, *, prompt: str = "") -> Transcription:
        self.prompts.append(prompt)
        return Transcription(text=self.prompted if prompt else self.plain)


@pytest.mark.parametrize(
    ("plain", "prompted", "expected", "decodings"),
    [
        # a request heard right: decoded once
        ("What time is it?", "What time is it?", "What time is it?", 1),
        # no skill's word in it: decoded once, even though the prompt would match
        ("What is the capital of France?", "What time is it?", "What is the capital", 1),
        # a skill's word, no template: decoded again, the prompted one kept when it matches
        ("Cancel Alzheimer's trials", "Cancel all timers.", "Cancel all timers.", 2),
        # ...and dropped when it does not
        ("What time does the shop close?", "What time does the shop close", "What time does", 2),
    ],
)
def test_a_near_miss_is_heard_again_with_the_skills_prompt(
    router: SkillRouter, plain: str, prompted: str, expected: str, decodings: int
) -> None:
    whisper = Whisper(plain, prompted)
    stt = SkillListeningStt(whisper, router)
    assert stt.transcribe(b"\0\0" * 1600).text.startswith(expected)
    assert len(whisper.prompts) == decodings
    assert whisper.prompts[1:] == [SKILL_PROMPT] * (decodings - 1)


def test_the_listening_recogniser_is_the_wrapped_one_otherwise(router: SkillRouter) -> None:
    whisper = Whisper("", "")
    stt = SkillListeningStt(whisper, router)
    assert stt.fit_window is True
    stt.fit_window = False  # the benchmark switches the window of the recogniser it is given
    assert whisper.fit_window is False
    assert stt.transcribe(b"").text == ""
    assert whisper.prompts == [""]
