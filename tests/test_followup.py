"""Follow-up questions rewritten to stand alone from the previous exchange.

None of these exchanges is in the dev or the test question set.
"""

from __future__ import annotations

import pytest

from voicebot.followup import is_refusal, leans_on_previous, standalone


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
        # The verb ends the subject: "turn into", "come from", a participle.
        ("What do acorns grow into?", "Oak trees.", "And seeds?", "What do seeds grow into?"),
        (
            "Which city does paella come from?",
            "Valencia.",
            "And pesto?",
            "Which city does pesto come from?",
        ),
        (
            "What is a young horse called?",
            "A foal.",
            "And a young goat?",
            "What is a young goat called?",
        ),
        (
            "What grain is used to brew beer?",
            "Barley.",
            "And whisky?",
            "What grain is used to brew whisky?",
        ),
        # Superlatives, counted nouns, a noun phrase with the same head.
        (
            "Which is the longest river?",
            "The Nile.",
            "And the shortest?",
            "Which is the shortest river?",
        ),
        (
            "Which is the hottest planet?",
            "Venus.",
            "What about the coldest one?",
            "Which is the coldest planet?",
        ),
        (
            "How many days are in a fortnight?",
            "14.",
            "And hours?",
            "How many hours are in a fortnight?",
        ),
        (
            "How many ounces are in a pound?",
            "16.",
            "And pounds in a stone?",
            "How many pounds are in a stone?",
        ),
        (
            "What is the melting point of gold?",
            "1064 degrees Celsius.",
            "And its boiling point?",
            "What is the boiling point of gold?",
        ),
        (
            "How many moons are in the solar system?",
            "Hundreds.",
            "Which one is the largest?",
            "Which moon is the largest?",
        ),
        # "it" and "he" from the answer to a "which" or "who" question.
        (
            "Which planet has the most moons?",
            "Saturn has the most moons.",
            "How big is it?",
            "How big is Saturn?",
        ),
        (
            "What bird lays the largest eggs?",
            "The ostrich lays the largest eggs.",
            "Where does it live?",
            "Where does the ostrich live?",
        ),
        (
            "Who sculpted David?",
            "Michelangelo.",
            "Where was he born?",
            "Where was Michelangelo born?",
        ),
        (
            "Who invented the light bulb?",
            "It was a great invention.",
            "When did he live?",
            "When did the person who invented the light bulb live?",
        ),
        (
            "Who composed The Four Seasons?",
            "Antonio Vivaldi composed it.",
            "What country was he from?",
            "What country was Antonio Vivaldi from?",
        ),
        (
            "Who painted Sunflowers?",
            "Vincent van Gogh.",
            "Where did he live?",
            "Where did Vincent van Gogh live?",
        ),
        ("Who wrote War and Peace?", "Tolstoy.", "And Anna Karenina?", "Who wrote Anna Karenina?"),
        # "that" for a place or a thing; "their" for a plural.
        (
            "We are driving to Lyon.",
            "Have fun!",
            "Which country is that in?",
            "Which country is Lyon in?",
        ),
        (
            "Let's talk about zebras.",
            "Sure.",
            "Why are their stripes black and white?",
            "Why are zebras' stripes black and white?",
        ),
        (
            "Does water boil at 50 degrees?",
            "No.",
            "When does it boil then?",
            "When does water boil then?",
        ),
        ("Are whales fish?", "No.", "What are they?", "What are whales?"),
        (
            "Who wrote The Hobbit?",
            "The Hobbit was written by J.R.R. Tolkien.",
            "Where was he born?",
            "Where was J.R.R. Tolkien born?",
        ),
        (
            "What is the biggest fish?",
            "The biggest fish is the Whale Shark.",
            "What does it eat?",
            "What does the Whale Shark eat?",
        ),
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
        ("Who was the first person in space?", "What year was that?"),
        ("What animal barks?", "Is that right?"),
        ("What is the biggest cat?", "What is the animal that purrs?"),
    ],
)
def test_questions_that_stand_alone_are_left_alone(previous: str, question: str) -> None:
    assert standalone(question, previous, "") is None


def test_a_follow_up_without_anything_to_lean_on_is_detected_but_not_rewritten() -> None:
    assert leans_on_previous("How tall is he?")
    assert standalone("How tall is he?", "Tell me a joke.", "Why did the chicken cross?") is None
    assert not leans_on_previous("How tall is the Eiffel Tower?")


@pytest.mark.parametrize(
    ("answer", "refusal"),
    [
        ("I'm sorry, but as an AI I cannot browse the internet.", True),
        ("As a helpful AI, I'm designed to assist with many things.", True),
        ("I don\u2019t have information about that.", True),
        ("Sorry, I don't have an answer to that.", True),
        ("The capital of Peru is Lima.", False),
        ("I am sure it is Lima.", False),
    ],
)
def test_refusals_are_told_from_answers(answer: str, refusal: bool) -> None:
    assert is_refusal(answer) is refusal
