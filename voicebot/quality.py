"""Answer quality: does the assistant answer right, remember only what it was told, and follow up?

Two fixed sets of conversations (``voicebot/quality_sets/``), run through the production reply
path (dialogue state, chat model, speakable chunker, sentence limit): ``dev`` is what prompts,
memory and follow-up handling are tuned on (``dev.toml`` and ``dev_followups.toml``); ``test``
was written before any tuning and only measures. ``voicebot bench --quality`` prints both; the
test floors apply to ``test`` only.

Scoring is stricter than "contains the keyword": a refusal fails, a number that is neither
expected nor said by the user fails ("12 cats" is not "2 cats"), and an expected word under
a negation ("not Paris") does not count.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from .config import Settings
from .dialogue import Dialogue
from .engines import Engines
from .memory import describe_fact
from .skills.numbers import TENS, UNITS

__all__ = [
    "CATEGORIES",
    "FACTUAL",
    "MEMORY",
    "SETS",
    "SET_FILES",
    "Item",
    "ItemResult",
    "QualityReport",
    "SetReport",
    "answer_right",
    "check_facts",
    "evaluate",
    "load_set",
    "numbers_in",
]

SETS = ("dev", "test")
"""The question sets: tuned on ``dev``, measured on ``test``."""
SET_FILES: dict[str, tuple[str, ...]] = {"dev": ("dev", "dev_followups"), "test": ("test",)}
"""The files (in ``quality_sets/``, without ``.toml``) that make up each set, in order."""
CATEGORIES = ("factual", "memory", "trap", "followup", "multiturn", "correction", "control")
"""Item categories, in report order."""

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
"""The earlier factual questions (the first 20 items of ``dev``; the benchmark speaks them)."""

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
"""The earlier memory dialogues (items 21-30 of ``dev``; the benchmark speaks them)."""


@dataclass(frozen=True)
class Item:
    """One conversation of a question set."""

    id: str
    """Unique in both sets."""
    category: str
    """One of :data:`CATEGORIES`."""
    turns: tuple[str, ...]
    """What the user says, in order; the answer to the last one is scored."""
    expect: tuple[str, ...] = ()
    """The answer names at least one of these."""
    expect_all: tuple[str, ...] = ()
    """The answer names every one of these."""
    reject: tuple[str, ...] = ()
    """The answer names none of these (outside a negation)."""
    facts: tuple[str, ...] | None = None
    """Every value the memory holds at the end, and the only ones (``None``: not checked)."""
    not_facts: tuple[str, ...] = ()
    """Phrases no remembered fact may read as."""
    source: str = ""
    """The file the item comes from (``dev_followups``), when loaded from one."""

    @property
    def scores_answer(self) -> bool:
        """Whether the last answer is scored at all."""
        return bool(self.expect or self.expect_all or self.reject)


def load_set(name: str) -> list[Item]:
    """The items of a question set shipped in the package (``dev`` or ``test``).

    A set is made of the files :data:`SET_FILES` names; any other name loads that one file
    (``dev_followups``).
    """
    items: list[Item] = []
    for file in SET_FILES.get(name, (name,)):
        folder = resources.files("voicebot").joinpath("quality_sets")
        text = folder.joinpath(f"{file}.toml").read_text("utf-8")
        items.extend(_item(raw, file) for raw in tomllib.loads(text)["item"])
    return items


def _item(raw: dict[str, Any], source: str = "") -> Item:
    facts = raw.get("facts")
    return Item(
        id=raw["id"],
        category=raw["category"],
        turns=tuple(raw["turns"]),
        expect=tuple(raw.get("expect", ())),
        expect_all=tuple(raw.get("expect_all", ())),
        reject=tuple(raw.get("reject", ())),
        facts=None if facts is None else tuple(facts),
        not_facts=tuple(raw.get("not_facts", ())),
        source=source,
    )


# --- strict scoring ---------------------------------------------------------------------------

# The skills' number words, but "oh" is an exclamation in an answer, not a zero.
_UNITS = {word: value for word, value in UNITS.items() if word != "oh"}
_TENS = TENS
_ORDINALS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
}
_NUMBER_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[a-z]+")
_REFUSAL = re.compile(
    r"\b(?:i'?m sorry|i am sorry|i apologi[sz]e|i can'?t|i cannot|i'?m unable|i am unable|"
    r"as an ai|language model|i don'?t have|i do not have|i don'?t know|i do not know|"
    r"not able to|unable to)\b"
)
_NEGATORS = {"not", "never", "isn't", "aren't", "wasn't", "weren't", "don't", "doesn't"}
_NEGATORS |= {"didn't", "no", "nor", "cannot", "can't", "neither"}


def numbers_in(text: str) -> list[float]:
    """The numbers in ``text``, in digits or words ("twenty-four", "3rd", "one hundred")."""
    values: list[float] = []
    tokens = _NUMBER_TOKEN.findall(text.lower().replace("-", " "))
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token[0].isdigit():
            values.append(float(token.replace(",", "")))
            index += 1
            continue
        if token in _TENS or token in _UNITS:
            value = _TENS.get(token, _UNITS.get(token, 0))
            index += 1
            if token in _TENS and index < len(tokens) and 0 < _UNITS.get(tokens[index], 0) < 10:
                value += _UNITS[tokens[index]]
                index += 1
            while index < len(tokens) and tokens[index] in ("hundred", "thousand"):
                value *= 100 if tokens[index] == "hundred" else 1000
                index += 1
            values.append(float(value))
            continue
        if token in _ORDINALS:
            values.append(float(_ORDINALS[token]))
        elif re.fullmatch(r"(?:st|nd|rd|th)", token) and values:
            pass  # the suffix of "3rd": the number is already counted
        index += 1
    return values


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9'=]+", text.lower().replace("\u2019", "'"))


def _occurrences(words: Sequence[str], phrase: str) -> list[int]:
    target = _words(phrase)
    size = len(target)
    return [i for i in range(len(words) - size + 1) if list(words[i : i + size]) == target]


def _names(words: Sequence[str], phrase: str) -> bool:
    """``phrase`` occurs in ``words`` outside a negation ("not Paris", "isn't Paris")."""
    number = numbers_in(phrase)
    if len(number) == 1 and _words(phrase) and len(_words(phrase)) <= 2:
        return number[0] in numbers_in(" ".join(words))
    for start in _occurrences(words, phrase):
        if not _NEGATORS.intersection(words[max(0, start - 3) : start]):
            return True
    return False


def answer_right(item: Item, answer: str) -> tuple[bool, str]:
    """Whether the answer to the item's last turn is right, and why not.

    Rules: it names an expected word (all of ``expect_all``), outside a negation; it names no
    rejected word outside a negation; when it is asked to name something it does not refuse;
    when the expected answer is a number, every number in it was expected or said by the user.
    """
    words = _words(answer)
    if item.expect or item.expect_all:
        if _REFUSAL.search(" ".join(words)):
            return False, "refusal"
        if item.expect and not any(_names(words, e) for e in item.expect):
            return False, "expected word missing"
        missing = [e for e in item.expect_all if not _names(words, e)]
        if missing:
            return False, f"missing {', '.join(missing)}"
        expected_numbers = {n for e in item.expect for n in numbers_in(e)}
        if expected_numbers:
            allowed = expected_numbers | {n for t in item.turns for n in numbers_in(t)}
            wrong = [n for n in numbers_in(answer) if n not in allowed]
            if wrong:
                return False, f"wrong number {wrong[0]:g}"
    for rejected in item.reject:
        numbers = numbers_in(rejected)
        if numbers and len(_words(rejected)) == 1:
            if numbers[0] in numbers_in(answer):
                return False, f"says {rejected}"
        elif any(
            not _NEGATORS.intersection(words[max(0, s - 3) : s])
            for s in _occurrences(words, rejected)
        ):
            return False, f"says {rejected}"
    return True, ""


def _value_matches(stored: str, expected: str) -> bool:
    a, b = " ".join(_words(stored)), " ".join(_words(expected))
    return bool(a and b) and (a in b or b in a)


def check_facts(item: Item, facts: dict[str, str]) -> tuple[list[str], list[str]]:
    """What the memory misses and what it holds wrongly, against the item's ``facts``.

    Returns:
        (missing expected values, false facts as "key: value").
    """
    if item.facts is None:
        return [], []
    missing = [e for e in item.facts if not any(_value_matches(v, e) for v in facts.values())]
    false = [
        f"{key}: {value}"
        for key, value in facts.items()
        if not any(_value_matches(value, e) for e in item.facts)
    ]
    for key, value in facts.items():
        described = " ".join(_words(describe_fact(key, value)))
        if any(" ".join(_words(p)) in described for p in item.not_facts):
            false.append(f"{key}: {value}")
    return missing, sorted(set(false))


# --- reports ----------------------------------------------------------------------------------


@dataclass
class ItemResult:
    """How one item went."""

    item: Item
    """The item."""
    answers: list[str]
    """The assistant's answer to each turn."""
    answer_ok: bool | None
    """The last answer is right (``None``: not scored)."""
    why: str = ""
    """Why the answer is wrong."""
    missing_facts: list[str] = field(default_factory=list)
    """Expected values the memory does not hold."""
    false_facts: list[str] = field(default_factory=list)
    """Remembered facts the user did not state."""

    @property
    def passed(self) -> bool:
        """The item's verdict: the answer right (when scored) and no false fact.

        A control item also needs its memory exactly right (the forgotten fact gone).
        """
        if self.false_facts:
            return False
        if self.item.category == "control" and self.missing_facts:
            return False
        return self.answer_ok is not False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "id": self.item.id,
            "category": self.item.category,
            "source": self.item.source,
            "turns": list(self.item.turns),
            "answers": self.answers,
            "passed": self.passed,
            "answer_ok": self.answer_ok,
            "why": self.why,
            "missing_facts": self.missing_facts,
            "false_facts": self.false_facts,
        }


@dataclass
class SetReport:
    """The results of one question set."""

    name: str
    """``dev`` or ``test``."""
    results: list[ItemResult] = field(default_factory=list)
    """Per item, in the set's order."""

    def category(self, category: str) -> tuple[int, int]:
        """(passed, total) of a category."""
        rows = [r for r in self.results if r.item.category == category]
        return sum(r.passed for r in rows), len(rows)

    def total(self) -> tuple[int, int]:
        """(passed, total) over the whole set."""
        return sum(r.passed for r in self.results), len(self.results)

    def by_source(self, category: str) -> dict[str, tuple[int, int]]:
        """(passed, total) of a category per file of the set, in file order."""
        split: dict[str, tuple[int, int]] = {}
        for r in self.results:
            if r.item.category == category:
                passed, total = split.get(r.item.source, (0, 0))
                split[r.item.source] = (passed + r.passed, total + 1)
        return split

    def recall(self, category: str = "memory") -> tuple[int, int]:
        """(items whose expected facts are all remembered, items expecting facts)."""
        rows = [r for r in self.results if r.item.category == category and r.item.facts]
        return sum(not r.missing_facts for r in rows), len(rows)

    def traps_clean(self) -> tuple[int, int]:
        """(trap items that left no false fact, trap items)."""
        rows = [r for r in self.results if r.item.category == "trap"]
        return sum(not r.false_facts for r in rows), len(rows)

    @property
    def false_facts(self) -> int:
        """False facts remembered over the whole set."""
        return sum(len(r.false_facts) for r in self.results)

    @property
    def mean_words(self) -> float:
        """Average length of the scored answers."""
        lengths = [len(r.answers[-1].split()) for r in self.results if r.answers]
        return sum(lengths) / len(lengths) if lengths else 0.0

    def summary(self) -> str:
        """The scores on one line per category, then memory's precision and recall."""
        lines = [f"{self.name}:"]
        for category in CATEGORIES:
            passed, total = self.category(category)
            if total:
                line = f"  {category:<11} {passed:>3}/{total:<3} {100 * passed / total:5.1f} %"
                split = self.by_source(category)
                if len(split) > 1:
                    line += " (" + ", ".join(f"{f} {p}/{t}" for f, (p, t) in split.items()) + ")"
                lines.append(line)
        passed, total = self.total()
        if total:
            lines.append(f"  {'total':<11} {passed:>3}/{total:<3} {100 * passed / total:5.1f} %")
        kept, asked = self.recall()
        clean, traps = self.traps_clean()
        lines.append(
            f"  memory: paraphrases remembered (stored) {kept}/{asked}, trap items without a "
            f"false fact {clean}/{traps}, false facts in the whole set {self.false_facts}"
        )
        lines.append(f"  {self.mean_words:.1f} words per answer")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "categories": {c: list(self.category(c)) for c in CATEGORIES if self.category(c)[1]},
            "total": list(self.total()),
            "memory_stored": list(self.recall()),
            "traps_clean": list(self.traps_clean()),
            "false_facts": self.false_facts,
            "mean_words": round(self.mean_words, 2),
            "items": [r.as_dict() for r in self.results],
        }


@dataclass
class QualityReport:
    """The results of every set run."""

    sets: dict[str, SetReport] = field(default_factory=dict)
    """By set name."""
    seconds: float = 0.0
    """Time the evaluation took."""

    def summary(self) -> str:
        """Every set's scores."""
        return "\n".join(report.summary() for report in self.sets.values())


def score_item(item: Item, answers: list[str], facts: dict[str, str]) -> ItemResult:
    """Score one item from the answers given and the memory left."""
    if item.scores_answer:
        ok, why = answer_right(item, answers[-1] if answers else "")
        answer_ok: bool | None = ok
    else:
        answer_ok, why = None, ""
    missing, false = check_facts(item, facts)
    return ItemResult(item, answers, answer_ok, why, missing, false)


async def _run_item(
    respond: Callable[[Dialogue], Any], dialogue: Dialogue, item: Item
) -> ItemResult:
    answers: list[str] = []
    for text in item.turns:
        dialogue.add_user(text)
        answer = await respond(dialogue)
        dialogue.add_assistant(answer)
        answers.append(answer)
    return score_item(item, answers, dict(dialogue.facts))


async def _evaluate(
    engines: Engines,
    settings: Settings,
    sets: Iterable[str],
    log: Callable[[str], None] | None,
    categories: Iterable[str] | None = None,
    on_result: Callable[[ItemResult], None] | None = None,
) -> QualityReport:
    from .session import Responder

    profile = settings.get_profile()
    responder = Responder(engines, settings, profile)

    async def respond(dialogue: Dialogue) -> str:
        outcome = await responder.respond(
            dialogue, 1, _ignore, cancel=threading.Event(), speak=False
        )
        return outcome.text

    report = QualityReport()
    wanted = None if categories is None else set(categories)
    for name in sets:
        set_report = SetReport(name)
        for item in load_set(name):
            if wanted is not None and item.category not in wanted:
                continue
            result = await _run_item(respond, Dialogue(profile), item)
            set_report.results.append(result)
            if on_result is not None:
                on_result(result)
            if log is not None:
                mark = "ok " if result.passed else "BAD"
                said = " / ".join(item.turns)
                log(f"{mark} [{name} {item.category}] {said} -> {result.answers[-1]}")
        report.sets[name] = set_report
    return report


async def _ignore(event: object) -> None:
    return None


def evaluate(
    engines: Engines,
    settings: Settings,
    *,
    sets: Iterable[str] = SETS,
    log: Callable[[str], None] | None = None,
    categories: Iterable[str] | None = None,
    on_result: Callable[[ItemResult], None] | None = None,
) -> QualityReport:
    """Run question sets through the real reply path.

    Args:
        engines: The models (the chat model matters; speech is not used).
        settings: Settings (the default profile answers).
        sets: Which sets, by name.
        log: Called with one line per item as it is scored.
        categories: Only the items of these categories (``None``: all).
        on_result: Called with each item's result once it is scored, before the next item
            runs.
    """
    start = time.perf_counter()
    report = asyncio.run(_evaluate(engines, settings, list(sets), log, categories, on_result))
    report.seconds = time.perf_counter() - start
    return report


def memory_only(sets: Iterable[str] = SETS, profile: Any = None) -> dict[str, SetReport]:
    """The memory's verdict on every item without a chat model (answers left empty).

    Fast: what the dialogue remembers from the user's words alone, for tuning the extraction.
    """
    from .config import Profile

    profile = profile or Profile(name="memory", display_name="Memory")
    reports: dict[str, SetReport] = {}
    for name in sets:
        report = SetReport(name)
        for item in load_set(name):
            dialogue = Dialogue(profile)
            for text in item.turns:
                dialogue.add_user(text)
                dialogue.add_assistant("")
            missing, false = check_facts(item, dict(dialogue.facts))
            report.results.append(ItemResult(item, [""], None, "", missing, false))
        reports[name] = report
    return reports
