"""Follow-up questions rewritten to stand alone from the previous exchange.

None of these exchanges is in the dev or the test question set.
"""

from __future__ import annotations

import pytest

from voicebot.followup import leans_on_previous, standalone


@pytest.mark.parametrize(
    ("previous", "answer", "question", "expected"),
    [
        (
            "How many eyes does a spider have?",
            "A spider has eight eyes.",
            "And a bee?",
            "How many eyes does a bee have?",
        ),
        (
            "How many wings does a bird have?",
            "Two.",
            "What about bats?",
            "How many wings do bats have?",
        ),
        ("What is the capital of Peru?", "Lima.", "And Chile?", "What is the capital of Chile?"),
        (
            "What is the population of Tokyo?",
            "About 14 million.",
            "And of Osaka?",
            "What is the population of Osaka?",
        ),
        ("What color are lemons?", "Yellow.", "And limes?", "What color are limes?"),
        (
            "What sound does a duck make?",
            "Quack.",
            "And which one barks?",
            "Which sound barks?",
        ),
        (
            "What is the largest city in Canada?",
            "Toronto.",
            "What currency do they use there?",
            "What currency do they use in Canada?",
        ),
        ("Tell me about Jupiter.", "It is a gas giant.", "How big is it?", "How big is Jupiter?"),
        (
            "Who painted Guernica?",
            "Pablo Picasso painted Guernica.",
            "Where was he born?",
            "Where was Pablo Picasso born?",
        ),
        (
            "Who wrote Don Quixote?",
            "The Spanish writer Miguel de Cervantes wrote it.",
            "When did he live?",
            "When did Miguel de Cervantes live?",
        ),
        (
            "Who was Marie Curie?",
            "A scientist.",
            "What did she discover?",
            "What did Marie Curie discover?",
        ),
        (
            "Let's talk about whales.",
            "Sure.",
            "What do they eat?",
            "What do whales eat?",
        ),
        ("I might visit Norway.", "Nice!", "What is its capital?", "What is Norway's capital?"),
    ],
)
def test_follow_ups_are_rewritten(previous: str, answer: str, question: str, expected: str) -> None:
    assert standalone(question, previous, answer) == expected


@pytest.mark.parametrize(
    ("previous", "question"),
    [
        ("What is the capital of France?", "What is the capital of Spain?"),
        ("How are you?", "What time is it?"),
        ("Hello.", "Is it going to rain?"),
        ("What is two plus two?", "Thanks!"),
        ("How are you?", "And you?"),
        ("What is the capital of France?", "And I live in Paris."),
        ("Tell me a story.", "And then what happened?"),
        ("What is the capital of France?", "And thanks for that."),
        ("", "And an ant?"),
    ],
)
def test_questions_that_stand_alone_are_left_alone(previous: str, question: str) -> None:
    assert standalone(question, previous, "") is None


def test_a_follow_up_without_anything_to_lean_on_is_detected_but_not_rewritten() -> None:
    assert leans_on_previous("How tall is he?")
    assert standalone("How tall is he?", "Tell me a joke.", "Why did the chicken cross?") is None
    assert not leans_on_previous("How tall is the Eiffel Tower?")
