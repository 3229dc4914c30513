"""The skill router: a user's words matched against sentence templates, before the chat model.

Templates are Home Assistant's (the English ones of ``home-assistant-intents``, for the
intents they cover: the time, the date, timers, "never mind") and voicebot's own in the same
format (``templates/en.yaml``: arithmetic, "stop", "repeat that", and phrasings the first
set lacks). hassil matches them; a match is answered here, and anything else goes on to the
chat model.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
import zoneinfo
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from hassil import Intents, RecognizeResult, SlotList, TextSlotList, recognize_all
from hassil.util import merge_dict
from home_assistant_intents import get_intents

from ..config import SkillSettings
from ..errors import ConfigError, VoicebotError
from .arithmetic import calculate, evaluate
from .hearing import repair
from .numbers import format_duration, parse_number, words_for_speech
from .timers import Timer, TimerService

__all__ = ["HOME_ASSISTANT_INTENTS", "IntentMatch", "SkillReply", "SkillRouter", "normalize"]

_LOGGER = logging.getLogger(__name__)

HOME_ASSISTANT_INTENTS = (
    "HassGetCurrentTime",
    "HassGetCurrentDate",
    "HassStartTimer",
    "HassCancelTimer",
    "HassCancelAllTimers",
    "HassTimerStatus",
    "HassIncreaseTimer",
    "HassDecreaseTimer",
    "HassPauseTimer",
    "HassUnpauseTimer",
    "HassNevermind",
)
"""The intents taken from ``home-assistant-intents``; its others (lights, media...) are not."""

_EMPTY_LISTS = ("area", "floor", "name")
"""Lists Home Assistant fills from the user's home; empty here (no home to control)."""


@dataclass(frozen=True)
class IntentMatch:
    """What the words ask for."""

    intent: str
    """The intent's name (``HassStartTimer``, ``VoicebotArithmetic``...)."""
    slots: dict[str, Any] = field(default_factory=dict)
    """Its slot values (numbers as numbers; wildcards as the words said)."""
    text: str = ""
    """The words, as matched (normalised)."""


@dataclass(frozen=True)
class SkillReply:
    """A skill's answer."""

    text: str
    """What to say ("" says nothing)."""
    intent: str
    """The intent answered."""
    remember: bool = True
    """Store the exchange in the conversation (False for "stop" and "never mind")."""
    feedback: str = ""
    """``good`` or ``bad``: the user rated the last reply ("that's wrong"); "" otherwise."""
    correction: str = ""
    """What the last reply should have said, when the user said it."""


_FILLERS = re.compile(r"^(?:(?:okay|ok|so|well|alright|all right|hey|um|uh|oh|hmm|and) )+")
"""Words that start a sentence without changing what it asks ("Okay, what time is it?")."""


def normalize(text: str) -> str:
    """Lower case, Whisper's symbols as words, punctuation and leading fillers off (except
    inside numbers)."""
    text = words_for_speech(text).lower()
    text = re.sub(r"(?<!\d)[.,](?!\d)|[.,](?=\s|$)", " ", text)
    text = re.sub(r"[!?;:\"()\[\]{}\u2026]", " ", text)
    text = re.sub(r"(^|\s)'|'(\s|$)", " ", text)
    text = " ".join(text.split())
    return _FILLERS.sub("", text + " ").strip()


def _load_templates(extra: Iterable[str | Path]) -> dict[str, Any]:
    """Home Assistant's English templates (our intents only) merged with ours."""
    home = get_intents("en")
    if home is None:  # pragma: no cover - the package always ships English
        raise ConfigError("home-assistant-intents has no English templates")
    data: dict[str, Any] = {
        "language": "en",
        "intents": {k: v for k, v in home["intents"].items() if k in HOME_ASSISTANT_INTENTS},
        "lists": dict(home.get("lists", {})),
        "expansion_rules": dict(home.get("expansion_rules", {})),
        "skip_words": list(home.get("skip_words", [])),
    }
    own = resources.files(__package__).joinpath("templates/en.yaml").read_text("utf-8")
    sources = [("templates/en.yaml", own)]
    for path in extra:
        try:
            sources.append((str(path), Path(path).read_text("utf-8")))
        except OSError as error:
            raise ConfigError(f"cannot read skill templates {path}: {error}") from None
    for where, text in sources:
        try:
            extra_data = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{where}: invalid YAML: {error}") from None
        for name, intent in extra_data.get("intents", {}).items():
            # Sentences for an intent both sets have are added to Home Assistant's.
            known = data["intents"].setdefault(name, {"data": []})
            known["data"] = [*known["data"], *intent.get("data", [])]
        merge_dict(data["lists"], extra_data.get("lists", {}))
        merge_dict(data["expansion_rules"], extra_data.get("expansion_rules", {}))
        data["skip_words"] += [w for w in extra_data.get("skip_words", []) if w]
    return data


def _slot_value(result: RecognizeResult, name: str) -> Any:
    entity = result.entities.get(name)
    if entity is None:
        return None
    if entity.is_wildcard:
        return str(entity.text or entity.value).strip()
    return entity.value


class SkillRouter:
    """Answers what a skill can, before the chat model: time, date, timers, arithmetic,
    "stop", "never mind", "repeat that".

    One router serves every session of an app (it holds no conversation state): matching is
    pure, and the timers live in the :class:`TimerService` it is given.
    """

    def __init__(
        self,
        settings: SkillSettings | None = None,
        *,
        timers: TimerService | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Load the templates.

        Args:
            settings: The ``[skills]`` settings (time zone, extra template files).
            timers: Where timers are kept; without one, timer requests are answered with
                "I can't set timers here".
            clock: Unix seconds, for the time and date.

        Raises:
            ConfigError: an unknown time zone, or an unreadable template file.
        """
        self.settings = settings or SkillSettings()
        self.timers = timers
        self.clock = clock
        self.time_zone: dt.tzinfo | None = None
        """The configured zone; ``None``: the system's."""
        if self.settings.time_zone:
            try:
                self.time_zone = zoneinfo.ZoneInfo(self.settings.time_zone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
                raise ConfigError(
                    f"skills.time_zone: unknown time zone {self.settings.time_zone!r}"
                ) from error
        data = _load_templates(self.settings.templates)
        self._skip_words = data.pop("skip_words")
        self._intents = Intents.from_dict(data)
        self._slot_lists: dict[str, SlotList] = {
            name: TextSlotList.from_strings([]) for name in _EMPTY_LISTS
        }
        # The first match of number words builds hassil's number tables (~30 ms): done here,
        # at start, rather than on the user's first turn.
        self.match("set a timer for twenty five minutes")

    # --- matching (pure) ---

    def matches(self, text: str) -> list[IntentMatch]:
        """Every reading of ``text`` the templates allow, the best first."""
        return self._recognize(normalize(text))

    def _recognize(self, words: str) -> list[IntentMatch]:
        if not words:
            return []
        results = list(
            recognize_all(
                words,
                self._intents,
                slot_lists=self._slot_lists,
                skip_words=self._skip_words,
                language="en",
            )
        )
        results.sort(key=_score)
        found: list[IntentMatch] = []
        for result in results:
            slots = {name: _slot_value(result, name) for name in result.entities}
            found.append(IntentMatch(result.intent.name, slots, words))
        return found

    def match(self, text: str) -> IntentMatch | None:
        """The intent ``text`` asks for, when a skill can answer it (``None``: the model).

        Words no template matches are tried again with tiny.en's mishearings of number
        words repaired (:func:`~voicebot.skills.hearing.repair`).
        """
        words = normalize(text)
        for candidate in dict.fromkeys((words, repair(words))):
            for found in self._recognize(candidate):
                if self._acceptable(found):
                    return found
        return None

    def _acceptable(self, found: IntentMatch) -> bool:
        """Templates with free words ({a}, {b}) match more than they mean: check the words."""
        if found.intent == "VoicebotArithmetic" and found.slots.get("op") == "chain":
            return evaluate(str(found.slots.get("a") or "")) is not None
        if found.intent == "VoicebotArithmetic":
            return _operands(found) is not None
        if found.intent in _FEEDBACK and "correction" in found.slots:
            return 0 < len(str(found.slots["correction"] or "").split()) <= _MAX_CORRECTION_WORDS
        if found.intent in ("HassStartTimer", "HassIncreaseTimer", "HassDecreaseTimer"):
            # A name is a few words ("pasta", "the rice"), not a sentence the wildcard took.
            name = _timer_name(found.slots.get("name")).split()
            if len(name) > _MAX_NAME_WORDS or {"timer", "time"} & set(name):
                return False
            return _duration_s(found.slots) > 0
        return True

    # --- answering ---

    async def route(
        self, text: str, *, conversation_id: str, last_reply: str = ""
    ) -> SkillReply | None:
        """Answer ``text`` if a skill can; ``None`` sends it on to the chat model.

        Args:
            text: The user's final transcript (or typed message).
            conversation_id: Whose timers are meant.
            last_reply: The assistant's last words, for "repeat that".
        """
        found = await asyncio.to_thread(self.match, text)
        if found is None:
            return None
        _LOGGER.debug("skill %s %s for %r", found.intent, found.slots, text)
        return await self.answer(found, conversation_id=conversation_id, last_reply=last_reply)

    async def answer(
        self, found: IntentMatch, *, conversation_id: str, last_reply: str = ""
    ) -> SkillReply:
        """Carry out a match and say what was done."""
        intent = found.intent
        if intent == "HassGetCurrentTime":
            now = self.now()
            hour = now.hour % 12 or 12
            return SkillReply(f"It's {hour}:{now.minute:02d} {now.strftime('%p')}.", intent)
        if intent == "HassGetCurrentDate":
            now = self.now()
            return SkillReply(
                f"Today is {now.strftime('%A')}, {now.strftime('%B')} {now.day}, {now.year}.",
                intent,
            )
        if intent == "VoicebotArithmetic" and found.slots.get("op") == "chain":
            chain = evaluate(str(found.slots.get("a") or ""))
            assert chain is not None
            return SkillReply(chain[1], intent)
        if intent == "VoicebotArithmetic":
            operands = _operands(found)
            assert operands is not None
            _, text = calculate(str(found.slots["op"]), *operands)
            return SkillReply(text, intent)
        if intent == "VoicebotRepeat":
            if not last_reply:
                return SkillReply("I haven't said anything yet.", intent)
            return SkillReply(last_reply, intent)
        if intent in _FEEDBACK:
            return _feedback(found, last_reply)
        if intent in ("VoicebotStop", "HassNevermind"):
            if self.timers is not None:
                await self.timers.dismiss(conversation_id)
            return SkillReply("", intent, remember=False)
        return await self._timer(found, conversation_id)

    def now(self) -> dt.datetime:
        """The current time in the configured zone."""
        return dt.datetime.fromtimestamp(self.clock(), self.time_zone).astimezone(self.time_zone)

    async def _timer(self, found: IntentMatch, conversation_id: str) -> SkillReply:
        intent = found.intent
        timers = self.timers
        if timers is None:
            return SkillReply("Sorry, I can't set timers here.", intent)
        if intent == "HassStartTimer":
            seconds = _duration_s(found.slots)
            name = _timer_name(found.slots.get("name"))
            try:
                await timers.add(conversation_id, seconds, name)
            except VoicebotError as error:
                return SkillReply(f"Sorry, I couldn't set that timer: {error}.", intent)
            what = f"{name.capitalize()} timer" if name else "Timer"
            return SkillReply(f"{what} set for {format_duration(seconds)}.", intent)
        running = timers.running(conversation_id)
        if intent == "HassTimerStatus":
            chosen = _select(running, found.slots)
            if not chosen:
                if running:
                    return SkillReply("You have no timer by that name.", intent)
                return SkillReply("You have no timers running.", intent)
            if len(chosen) == 1:
                timer = chosen[0]
                left = format_duration(timers.remaining_s(timer))
                state = " (paused)" if timer.paused_s is not None else ""
                return SkillReply(f"Your {_describe(timer)} has {left} left{state}.", intent)
            parts = [
                f"{_describe(t)}, {format_duration(timers.remaining_s(t))}"
                + (" (paused)" if t.paused_s is not None else "")
                for t in chosen
            ]
            return SkillReply(f"You have {len(chosen)} timers: " + "; ".join(parts) + ".", intent)
        if intent in ("HassIncreaseTimer", "HassDecreaseTimer"):
            delta = _duration_s(found.slots)
            chosen = _select(running, found.slots)
            if not chosen:
                if running:
                    return SkillReply("You have no timer by that name.", intent)
                return SkillReply("You have no timers running.", intent)
            if len(chosen) > 1:
                names = _join([_describe(t) for t in chosen])
                return SkillReply(f"You have {len(chosen)} timers: {names}. Which one?", intent)
            sign = 1 if intent == "HassIncreaseTimer" else -1
            changed = await timers.change(chosen[0], sign * delta)
            if changed is None:
                return SkillReply("That timer has just ended.", intent)
            left = format_duration(timers.remaining_s(changed))
            return SkillReply(f"Your {_describe(chosen[0])} now has {left} left.", intent)
        if intent in ("HassPauseTimer", "HassUnpauseTimer"):
            pausing = intent == "HassPauseTimer"
            candidates = [t for t in running if (t.paused_s is None) == pausing]
            chosen = _select(candidates, found.slots)
            if not chosen:
                if not running:
                    return SkillReply("You have no timers running.", intent)
                state = "running" if pausing else "paused"
                return SkillReply(f"You have no {state} timer like that.", intent)
            if len(chosen) > 1:
                names = _join([_describe(t) for t in chosen])
                return SkillReply(f"You have {len(chosen)} timers: {names}. Which one?", intent)
            changed = await timers.pause(chosen[0], paused=pausing)
            if changed is None:
                return SkillReply("That timer has just ended.", intent)
            left = format_duration(timers.remaining_s(changed))
            verb = "Paused" if pausing else "Resumed"
            return SkillReply(f"{verb} your {_describe(changed)}: {left} left.", intent)
        if intent == "HassCancelAllTimers":
            for timer in running:
                await timers.cancel(timer)
            await timers.dismiss(conversation_id)
            if not running:
                return SkillReply("You have no timers running.", intent)
            count = len(running)
            return SkillReply(f"Cancelled {count} timer{'s' if count > 1 else ''}.", intent)
        # HassCancelTimer
        chosen = _select(running, found.slots)
        named = any(found.slots.get(k) for k in ("name", *_START_SLOTS))
        if not named and timers.ringing(conversation_id):
            await timers.dismiss(conversation_id)  # "stop the timer" while it rings
            return SkillReply("", intent, remember=False)
        if not chosen:
            if running:
                return SkillReply("You have no timer by that name.", intent)
            return SkillReply("You have no timers running.", intent)
        if len(chosen) > 1:
            names = _join([_describe(t) for t in chosen])
            return SkillReply(f"You have {len(chosen)} timers: {names}. Which one?", intent)
        await timers.cancel(chosen[0])
        return SkillReply(f"Cancelled your {_describe(chosen[0])}.", intent)


_START_SLOTS = ("start_hours", "start_minutes", "start_seconds")
_MAX_NAME_WORDS = 4


def _score(result: RecognizeResult) -> tuple[int, int, int, str]:
    """hassil's own ranking: fewer wildcards, more literal words, less wildcard text."""
    wildcards = [e for e in result.entities_list if e.is_wildcard]
    return (
        len(wildcards),
        -result.text_chunks_matched,
        sum(len(e.text or "") for e in wildcards),
        result.intent.name,
    )


def _operands(found: IntentMatch) -> tuple[Fraction, Fraction | None] | None:
    a = parse_number(str(found.slots.get("a") or ""))
    if a is None:
        return None
    if "b" not in found.slots:
        return a, None
    b = parse_number(str(found.slots.get("b") or ""))
    return None if b is None else (a, b)


def _number(value: Any) -> float:
    if value is None or value == "":
        return 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        parsed = parse_number(str(value))
        return float(parsed) if parsed is not None else 0.0


def _duration_s(slots: dict[str, Any]) -> float:
    return (
        _number(slots.get("hours")) * 3600
        + _number(slots.get("minutes")) * 60
        + _number(slots.get("seconds"))
    )


def _timer_name(value: Any) -> str:
    words = str(value or "").lower().split()
    while words and words[0] in ("the", "my", "a", "an", "our"):
        words = words[1:]
    if words and words[-1] in ("timer", "time"):
        words = words[:-1]
    return " ".join(words)


def _describe(timer: Timer) -> str:
    if timer.name:
        return f"{timer.name} timer"
    return f"{format_duration(timer.seconds)} timer".replace("s timer", " timer")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _select(running: list[Timer], slots: dict[str, Any]) -> list[Timer]:
    """The running timers the words point at (all of them when none is named)."""
    name = _timer_name(slots.get("name"))
    length = (
        _number(slots.get("start_hours")) * 3600
        + _number(slots.get("start_minutes")) * 60
        + _number(slots.get("start_seconds"))
    )
    chosen = running
    if name:
        chosen = [t for t in chosen if t.name == name] or [
            t for t in chosen if name in t.name or (t.name and t.name in name)
        ]
    if length:
        chosen = [t for t in chosen if abs(t.seconds - length) < 1]
    return chosen


_FEEDBACK = {"VoicebotFeedbackGood": "good", "VoicebotFeedbackBad": "bad"}
"""The intents that rate the last reply, and their rating."""
_MAX_CORRECTION_WORDS = 40


def _feedback(found: IntentMatch, last_reply: str) -> SkillReply:
    """ "That's wrong, it's Paris": a rating of the last reply, said back, never stored as an
    exchange (the session stores the rating with the reply)."""
    intent = found.intent
    if not last_reply:
        return SkillReply("I haven't answered anything yet.", intent, remember=False)
    rating = _FEEDBACK[intent]
    if rating == "good":
        return SkillReply("Thanks, good to know.", intent, remember=False, feedback="good")
    correction = " ".join(str(found.slots.get("correction") or "").split())
    if correction:
        correction = correction[0].upper() + correction[1:]
        if correction[-1] not in ".!?":
            correction += "."
        text = "Thanks, I've noted the right answer."
    else:
        text = "Sorry about that. I've noted that it was wrong."
    return SkillReply(text, intent, remember=False, feedback="bad", correction=correction)
