"""Conversation state: the persona, the turns, what the user told about themselves, and the
prompt built from them within a token budget."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .config import Profile
from .engines.base import Message

__all__ = ["Dialogue", "Turn", "extract_facts"]


@dataclass
class Turn:
    """One utterance of the conversation."""

    role: str
    """``user`` or ``assistant``."""
    text: str
    """What was said (for the assistant: what was actually heard)."""
    created_at: float = field(default_factory=time.time)
    """Unix time."""
    interrupted: bool = False
    """An assistant turn cut short by barge-in."""
    metrics_ms: dict[str, float] = field(default_factory=dict)
    """Per-stage latencies of the turn."""


_WORD = r"[^\W\d_][\w'\-]*"
_NAME = rf"({_WORD}(?: {_WORD})?)"
_PLACE = rf"({_WORD}(?:[ -]{_WORD})*)"
_PHRASE = r"([^.,!?;]+)"
_NOT_NAMES = {
    "Not",
    "Fine",
    "Good",
    "Okay",
    "Ok",
    "Sorry",
    "Sure",
    "So",
    "Just",
    "Here",
    "Back",
    "Done",
    "Ready",
    "Tired",
    "Happy",
    "Sad",
    "Hungry",
    "Going",
    "Very",
    "Really",
    "The",
    "And",
    "But",
    "From",
    "In",
    "At",
}
_FACT_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("name", re.compile(r"\b(?i:my name(?:'s| is)) " + _NAME)),
    ("name", re.compile(r"\b(?i:call me|I'm called|I am called) " + _NAME)),
    ("name", re.compile(r"(?:^|[.!?,] )(?i:I'm|I am|this is|it's) " + _NAME + r"(?=[.!,]|$)")),
    ("home", re.compile(r"\b(?i:I (?:live|stay) in) " + _PLACE)),
    ("home", re.compile(r"\b(?i:I(?:'m| am| come) from) " + _PLACE)),
    ("age", re.compile(r"\bI(?:'m| am) (\d{1,3})(?: years old)?\b")),
    ("job", re.compile(r"\bI work as an? " + _PHRASE, re.IGNORECASE)),
    (
        "job",
        re.compile(
            r"\bI(?:'m| am) an? (teacher|doctor|nurse|engineer|student|developer|"
            r"programmer|writer|designer|lawyer|chef|farmer|artist|musician)\b",
            re.IGNORECASE,
        ),
    ),
    ("likes", re.compile(r"\bI (?:really )?(?:like|love|enjoy|adore) " + _PHRASE, re.IGNORECASE)),
    (
        "dislikes",
        re.compile(
            r"\bI (?:really )?(?:hate|dislike|don't like|do not like) " + _PHRASE, re.IGNORECASE
        ),
    ),
]
_FAVOURITE = re.compile(r"\bmy favou?rite ([a-z ]{2,20}?) is " + _PHRASE, re.IGNORECASE)
_OWNED_NAME = re.compile(r"\b(?i:my) ([a-z]{2,12})(?i:'s name is| is called| is named) " + _NAME)


def _proper(value: str) -> str:
    """The leading capitalised words of ``value`` ("Ada and" -> "Ada")."""
    words: list[str] = []
    for word in re.split(r"(?<=\S)(?=[ ])", value):
        stripped = word.strip()
        if not stripped or not stripped[0].isupper() or stripped in _NOT_NAMES:
            break
        words.append(word)
    return "".join(words).strip().rstrip("-")


def extract_facts(text: str, facts: dict[str, str] | None = None) -> dict[str, str]:
    """Update ``facts`` with what the user says about themselves in ``text``.

    Small chat models lose facts buried in history; keeping them explicitly in the dialogue
    state and stating them in the system prompt is what lets a 135M model answer
    "what is my name?". Statements are applied in the order they were said, so a later one
    replaces an earlier one.
    """
    facts = {} if facts is None else facts
    found: list[tuple[int, str, str]] = []
    for key, pattern in _FACT_PATTERNS:
        for match in pattern.finditer(text):
            value = match.group(1).strip().rstrip(".")
            if key in ("name", "home"):
                value = _proper(value)
            elif key in ("likes", "dislikes", "job"):
                value = _tidy_phrase(value)
            if value:
                found.append((match.start(), key, value))
    for match in _FAVOURITE.finditer(text):
        value = _tidy_phrase(match.group(2))
        if value:
            found.append((match.start(), f"favourite {match.group(1).strip().lower()}", value))
    for match in _OWNED_NAME.finditer(text):
        value = _proper(match.group(2))
        if value:
            found.append((match.start(), f"{match.group(1).lower()}'s name", value))
    for _, key, value in sorted(found, key=lambda item: item[0]):
        facts[key] = value
    return facts


def _tidy_phrase(value: str) -> str:
    words = value.strip().split()
    return " ".join(words[:8])


_FACT_SENTENCES = {
    "name": "The user's name is {}.",
    "home": "The user lives in {}.",
    "age": "The user is {} years old.",
    "job": "The user works as {}.",
    "likes": "The user likes {}.",
    "dislikes": "The user dislikes {}.",
}


def facts_prompt(facts: dict[str, str]) -> str:
    """The user's facts as sentences for the system prompt."""
    sentences: list[str] = []
    for key, value in facts.items():
        template = _FACT_SENTENCES.get(key)
        if template is None:
            if key.startswith("favourite "):
                sentences.append(f"The user's {key} is {value}.")
            else:
                sentences.append(f"The user's {key} is {value}.")
        else:
            if key == "job" and not re.match(r"(?i)an? ", value):
                value = ("an " if value[:1].lower() in "aeiou" else "a ") + value
            sentences.append(template.format(value))
    return " ".join(sentences)


class Dialogue:
    """A conversation: the persona, its turns, and the facts the user shared."""

    def __init__(
        self,
        profile: Profile,
        *,
        conversation_id: str = "",
        turns: Sequence[Turn] = (),
    ) -> None:
        """Start or resume a conversation.

        Args:
            profile: The persona.
            conversation_id: The store's id ("" for an unsaved conversation).
            turns: Earlier turns, oldest first (when resuming).
        """
        self.profile = profile
        """The persona."""
        self.conversation_id = conversation_id
        """The store's id."""
        self.turns: list[Turn] = []
        """All turns, oldest first."""
        self.facts: dict[str, str] = {}
        """What the user said about themselves, from every turn (trimmed ones too)."""
        for turn in turns:
            self.add(turn)

    def add(self, turn: Turn) -> Turn:
        """Append a turn (and learn from it when it is the user's)."""
        if turn.role == "user":
            extract_facts(turn.text, self.facts)
        self.turns.append(turn)
        return turn

    def add_user(self, text: str, **metrics_ms: float) -> Turn:
        """Append what the user said."""
        return self.add(Turn("user", text, metrics_ms=dict(metrics_ms)))

    def add_assistant(self, text: str, *, interrupted: bool = False) -> Turn:
        """Append what the assistant said (only what was heard)."""
        return self.add(Turn("assistant", text, interrupted=interrupted))

    def system_prompt(self) -> str:
        """The persona's prompt, followed by the user's facts."""
        prompt = self.profile.prompt()
        known = facts_prompt(self.facts)
        return f"{prompt} {known}".strip() if known else prompt

    def messages(
        self,
        count_tokens: Callable[[Sequence[Message]], int] | None = None,
        budget_tokens: int = 0,
        history_turns: int = -1,
    ) -> list[Message]:
        """The chat messages for the model: system prompt, then as many recent turns as fit.

        The oldest turns are dropped first; the system prompt is never dropped, nor the
        latest turn. Consecutive turns of the same role are merged (chat templates expect
        alternation). ``history_turns`` caps the earlier messages kept before the latest one
        (-1: no cap); the user's facts stay in the system prompt whatever is dropped.
        """
        system: Message = {"role": "system", "content": self.system_prompt()}
        history: list[Message] = []
        for turn in self.turns:
            if not turn.text.strip():
                continue
            if history and history[-1]["role"] == turn.role:
                history[-1] = {
                    "role": turn.role,
                    "content": f"{history[-1]['content']} {turn.text}",
                }
            else:
                history.append({"role": turn.role, "content": turn.text})
        if history_turns >= 0 and len(history) > history_turns + 1:
            history = history[len(history) - history_turns - 1 :]
        if count_tokens is None or budget_tokens <= 0:
            while len(history) > 1 and history[0]["role"] == "assistant":
                history.pop(0)
            return [system, *history]
        kept: list[Message] = []
        for message in reversed(history):
            candidate = [system, message, *kept]
            if kept and count_tokens(candidate) > budget_tokens:
                break
            kept.insert(0, message)
        while kept and kept[0]["role"] == "assistant" and len(kept) > 1:
            kept.pop(0)  # start the history with a user turn
        return [system, *kept]
