"""Training data from stored conversations: chat-format JSONL, with the user in control.

One line per conversation, ``{"messages": [{"role": "system", ...}, {"role": "user", ...},
{"role": "assistant", ...}, ...]}``: the format TRL's ``SFTTrainer`` and the OpenAI
fine-tuning API read. What goes in (docs/learning.md):

- a reply the user corrected is replaced by the correction;
- a reply rated bad without a correction, or cut short by the user, is left out with the
  question it answered;
- replies by skills (the time, timers, arithmetic) are left out: they are computed, not
  learned;
- conversations of a profile with ``training_data = false`` never appear;
- deleted conversations are gone from the store, so from every export made after.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .config import Settings
from .store import RatedTurn, Store

__all__ = ["FEEDBACK_FILTERS", "Exchange", "exchanges", "training_examples", "write_jsonl"]

FEEDBACK_FILTERS = ("good",)
"""``good``: only replies rated good, or rated bad and corrected (the correction is good)."""


@dataclass(frozen=True)
class Exchange:
    """A question and the reply to learn from it."""

    user: str
    """The user's words."""
    reply: str
    """The reply: the correction when the user gave one."""
    feedback: str
    """``good``, ``bad`` (then corrected) or ""."""


def exchanges(turns: Iterable[RatedTurn]) -> list[Exchange]:
    """The usable exchanges of a conversation's turns (see the module docstring)."""
    found: list[Exchange] = []
    question = ""
    for turn in turns:
        if turn.role == "user":
            question = turn.text
            continue
        user, question = question, ""
        if not user or turn.by_skill:
            continue  # a greeting or an announcement answers nobody; a skill is not learned
        if turn.correction:
            found.append(Exchange(user, turn.correction, "bad"))
        elif turn.feedback != "bad" and not turn.interrupted:
            found.append(Exchange(user, turn.text, turn.feedback))
    return found


def training_examples(
    store: Store,
    settings: Settings,
    *,
    since: float = 0.0,
    feedback: str = "",
    profile: str | None = None,
) -> Iterator[dict[str, Any]]:
    """The stored conversations as chat examples, oldest first.

    Args:
        store: The conversation store.
        settings: For each profile's system prompt and its ``training_data`` switch.
        since: Only conversations active since this Unix time.
        feedback: "" for every usable reply, or one of :data:`FEEDBACK_FILTERS`.
        profile: Only this profile's conversations.
    """
    if feedback and feedback not in FEEDBACK_FILTERS:
        raise ValueError(f"feedback filter {feedback!r} is not one of {FEEDBACK_FILTERS}")
    for info in store.training_conversations(since=since, profile=profile):
        known = settings.profiles.get(info.profile)
        if known is not None and not known.training_data:
            continue  # switched off since: the profile's current wish counts too
        kept = [ex for ex in exchanges(store.rated_turns(info.id)) if not feedback or ex.feedback]
        if not kept:
            continue
        messages: list[dict[str, str]] = []
        if known is not None and known.prompt():
            messages.append({"role": "system", "content": known.prompt()})
        for ex in kept:
            messages.append({"role": "user", "content": ex.user})
            messages.append({"role": "assistant", "content": ex.reply})
        yield {"messages": messages}


def write_jsonl(examples: Iterable[dict[str, Any]], out: str | Path | IO[str]) -> int:
    """Write examples one JSON object a line; returns how many."""
    if isinstance(out, str | Path):
        with Path(out).open("w", encoding="utf-8") as handle:
            return write_jsonl(examples, handle)
    count = 0
    for example in examples:
        out.write(json.dumps(example, ensure_ascii=False) + "\n")
        count += 1
    return count
