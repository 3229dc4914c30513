"""End of turn from the words: the silence each judgement asks for, and the judge's input."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from voicebot.config import Profile, SegmenterSettings
from voicebot.dialogue import Dialogue
from voicebot.engines.base import Message
from voicebot.engines.fake import FakeChat
from voicebot.turn_taking import TurnEnd, same_words, with_user_turn, words_to_judge
from voicebot.workers import ModelWorker

SETTINGS = SegmenterSettings(
    end_of_turn_silence_ms=600,
    early_end_of_turn_ms=300,
    max_end_of_turn_silence_ms=1600,
    end_of_turn_likely_probability=0.5,
    end_of_turn_unlikely_probability=0.05,
)


def dialogue_with(text: str) -> Dialogue:
    dialogue = Dialogue(Profile(name="nova", system_prompt="You are {name}."))
    dialogue.add_user("What is your name?")
    dialogue.add_assistant("Nova. And yours?")
    return with_user_turn(dialogue, text)


def test_the_silence_follows_how_finished_the_words_sound() -> None:
    rule = TurnEnd(SETTINGS)
    assert rule.silence_needed_ms(0.9) == 300
    assert rule.silence_needed_ms(0.2) == 600
    assert rule.silence_needed_ms(0.01) == 1600
    assert rule.silence_needed_ms(None) == 600  # not judged (yet): the plain rule
    off = TurnEnd(SegmenterSettings(early_end_of_turn_ms=0, max_end_of_turn_silence_ms=0))
    assert off.silence_needed_ms(0.9) == off.silence_needed_ms(0.0) == 600


def test_the_judge_sees_the_words_as_whisper_wrote_them() -> None:
    # Without its full stop a finished statement reads as unfinished to an instruct model.
    assert words_to_judge(" Tell me a joke. ") == "Tell me a joke."
    assert same_words("Tell me a joke.", "tell me a joke")
    assert not same_words("Tell me", "Tell me more")


async def test_the_chat_model_judges_in_its_worker_with_the_conversation() -> None:
    seen: list[Sequence[Message]] = []
    llm = FakeChat(turn_end=lambda text: 0.7)

    def judge(messages: Sequence[Message]) -> float:
        seen.append(list(messages))
        return llm.end_of_turn_probability(messages)

    worker = ModelWorker("llm")
    try:
        rule = TurnEnd(SETTINGS, judge=judge, worker=worker)
        probability = await asyncio.wait_for(rule.probability(dialogue_with("Ada.")), 5)
    finally:
        worker.close()
    assert probability == 0.7
    assert [m["content"] for m in seen[0][1:]] == ["What is your name?", "Nova. And yours?", "Ada."]


async def test_without_a_judge_the_punctuation_decides() -> None:
    rule = TurnEnd(SETTINGS)
    assert await rule.probability(dialogue_with("I want to go home.")) == 1.0
    assert await rule.probability(dialogue_with("I want to")) is None
    assert await rule.probability(dialogue_with("I want to...")) is None


async def test_a_failing_judge_leaves_the_silence_rule_in_charge() -> None:
    def broken(messages: Sequence[Message]) -> float:
        raise RuntimeError("judge broke")

    worker = ModelWorker("llm")
    try:
        rule = TurnEnd(SETTINGS, judge=broken, worker=worker)
        assert await asyncio.wait_for(rule.probability(dialogue_with("hi")), 5) is None
    finally:
        worker.close()
