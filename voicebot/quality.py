"""Answer quality: does the assistant answer simple questions right, briefly, and remember?

A fixed question set run through the production reply path (dialogue state, chat model,
speakable chunker, sentence limit). ``voicebot bench --quality`` prints the score; a test
keeps it from regressing.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .dialogue import Dialogue
from .engines import Engines
from .events import Event, ReplyDone
from .session import Responder

__all__ = ["FACTUAL", "MEMORY", "QualityReport", "evaluate"]

FACTUAL: list[tuple[str, tuple[str, ...]]] = [
    ("What is the capital of France?", ("paris",)),
    ("How many days are in a week?", ("seven", "7")),
    ("What color is the sky?", ("blue",)),
    ("What is two plus two?", ("four", "4")),
    ("Who wrote Romeo and Juliet?", ("shakespeare",)),
    ("What is the largest planet in our solar system?", ("jupiter",)),
    ("What is the boiling point of water in Celsius?", ("100", "one hundred")),
    ("How many legs does a spider have?", ("eight", "8")),
    ("What is the opposite of hot?", ("cold",)),
    ("What do bees make?", ("honey",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("How many continents are there?", ("seven", "7")),
    ("What is the freezing point of water in Celsius?", ("0", "zero")),
    ("What animal says moo?", ("cow",)),
    ("Who was the first president of the United States?", ("washington",)),
    ("What is the chemical symbol for gold?", ("au",)),
    ("How many hours are in a day?", ("24", "twenty-four", "twenty four")),
    ("What is the capital of Germany?", ("berlin",)),
    ("What planet do we live on?", ("earth",)),
    ("What is five times three?", ("15", "fifteen")),
]
"""Simple factual questions and the words a right answer contains."""

MEMORY: list[tuple[str, str, tuple[str, ...]]] = [
    ("My name is Ada.", "What is my name?", ("ada",)),
    ("I live in Lisbon.", "Where do I live?", ("lisbon",)),
    ("My favourite colour is green.", "What is my favourite colour?", ("green",)),
    ("My dog's name is Biscuit.", "What is my dog's name?", ("biscuit",)),
    ("I work as a nurse.", "What is my job?", ("nurse",)),
    ("I am 34 years old.", "How old am I?", ("34", "thirty-four", "thirty four")),
    ("Hi, I'm Priya.", "Do you remember my name?", ("priya",)),
    ("My cat is called Whiskers.", "What is my cat called?", ("whiskers",)),
    ("My favourite food is sushi.", "What is my favourite food?", ("sushi",)),
    ("My sister's name is Maria.", "What is my sister's name?", ("maria",)),
]
"""Something the user says, a later question about it, and the words a right answer has."""


@dataclass
class QualityReport:
    """Scores and every answer."""

    factual_right: int = 0
    """Factual questions answered right."""
    memory_right: int = 0
    """Memory questions answered right."""
    answers: list[dict[str, Any]] = field(default_factory=list)
    """Question, answer, right or not."""
    mean_words: float = 0.0
    """Average answer length."""
    seconds: float = 0.0
    """Time the evaluation took."""

    @property
    def factual_total(self) -> int:
        """Number of factual questions."""
        return len(FACTUAL)

    @property
    def memory_total(self) -> int:
        """Number of memory dialogues."""
        return len(MEMORY)

    def summary(self) -> str:
        """One line."""
        return (
            f"factual {self.factual_right}/{self.factual_total}, memory "
            f"{self.memory_right}/{self.memory_total}, {self.mean_words:.1f} words per answer"
        )


def _right(answer: str, expected: tuple[str, ...]) -> bool:
    words = re.findall(r"[a-z0-9'-]+", answer.lower())
    text = " ".join(words)
    return any(re.search(rf"\b{re.escape(e)}\b", text) for e in expected)


async def _ask(responder: Responder, dialogue: Dialogue, text: str) -> str:
    done: list[str] = []

    async def sink(event: Event) -> None:
        if isinstance(event, ReplyDone):
            done.append(event.text)

    dialogue.add_user(text)
    outcome = await responder.respond(dialogue, 1, sink, cancel=threading.Event(), speak=False)
    dialogue.add_assistant(outcome.text)
    return outcome.text


async def _evaluate(engines: Engines, settings: Settings) -> QualityReport:
    report = QualityReport()
    profile = settings.get_profile()
    responder = Responder(engines, settings, profile)
    lengths: list[int] = []
    for question, expected in FACTUAL:
        answer = await _ask(responder, Dialogue(profile), question)
        right = _right(answer, expected)
        report.factual_right += right
        lengths.append(len(answer.split()))
        report.answers.append({"kind": "fact", "q": question, "a": answer, "right": right})
    for statement, question, expected in MEMORY:
        dialogue = Dialogue(profile)
        await _ask(responder, dialogue, statement)
        answer = await _ask(responder, dialogue, question)
        right = _right(answer, expected)
        report.memory_right += right
        lengths.append(len(answer.split()))
        report.answers.append(
            {"kind": "memory", "q": f"{statement} / {question}", "a": answer, "right": right}
        )
    report.mean_words = sum(lengths) / len(lengths)
    return report


def evaluate(engines: Engines, settings: Settings) -> QualityReport:
    """Run the question set through the real reply path."""
    start = time.perf_counter()
    report = asyncio.run(_evaluate(engines, settings))
    report.seconds = time.perf_counter() - start
    return report
