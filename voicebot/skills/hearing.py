"""Repairs of what Whisper tiny.en mishears in a spoken request, tried when no template
matched the words as heard.

Measured on the development phrasings of the skills (``tests/test_skills_real.py``'s
``SPOKEN`` and ``tests/data/skills_spoken_dev.toml``, said by Piper and espeak-ng): number
words come back as their homophones ("What is for plus 4?", "Set it to minute timer", "What
is i plus 8?"), and "a" before a length as another short word ("Start at a 3 minute
timer"). A repair applies only where the words around it are about numbers (a unit of time
follows, or an operator is beside it), and the repaired sentence must still match a whole
template, so ordinary sentences are not changed into requests.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["number_homophone", "repair"]

_HOMOPHONES = {
    "for": "four",
    "fore": "four",
    "to": "two",
    "too": "two",
    "due": "two",
    "won": "one",
    "well": "one",
    "ate": "eight",
    "i": "nine",
    "either": "nine",
    "by": "five",
}
"""A word tiny.en writes for a number word (each heard so in at least two development
phrasings, always beside an operator or a unit: "What is i plus 8?", "What is either times
6?", "Set a timer for well-hower", "What is by plus 6?")."""

_UNITS = {"hour", "hours", "minute", "minutes", "second", "seconds"}
_OPERATORS = {"plus", "minus", "times", "time", "percent", "squared", "cubed", "over"}
_OPERATOR_PAIRS = {"multiplied by", "divided by", "to the"}
_ASKING = {"is", "what's", "what", "calculate", "does"}
""""What is for plus 4": a number right after these may start a sum."""
_AFTER_OPERATOR = _OPERATORS | {"by"}
_ARTICLE = re.compile(r"^((?:set|start|make|create)) (?:at a|it a|at|it|on|to)(?= )")
""""a" heard as "at a", "it", "on", "to" after the verb: "Start at a 3 minute timer"."""
_NOT_A_VERB = r"(?!(?:don't|do|never|not|no|i|it|the|my|what|how|is)\b)"
_TIMER_VERB = re.compile(rf"^{_NOT_A_VERB}[a-z']+ (?:a |an )?(?=timer (?:for|of) )")
"""The first word of "set a timer for..." misheard ("Search a timer for a minute", "Starter
timer for 20 minutes"): a lone word before "timer for", other than a negation or a question."""
_TIMER_LENGTH_VERB = re.compile(
    rf"^{_NOT_A_VERB}[a-z']+ (?:a |an |at a |it |on |to |up )?"
    r"(?=[a-z0-9]+ (?:minute|second|hour)s? timer$)"
)
"""The same before "<length> timer" ("Search on 8 minute timer", "Santa one hour timer")."""
_TENS_HEARD = {"4d": "forty", "id": "ninety", "may the": "eighty"}
""""-ty" heard as "-dee" after "percent of" ("50% on 4D", "10% of ID", "15% on May the")."""
_THAT = re.compile(r"^(stop|repeat|never mind) (?:now|not|note|nerd)( please)?$")
""""that" heard as "now", "not", "note" at the end of a command ("Repeat now.", "Stop, nerd.")."""
_MISHEARD: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (re.compile(r"\balzheimer'?s?\b"), "all timers"),  # "Cancel Alzheimer's"
    (
        re.compile(r"\b(percent (?:of|on)) (?:the )?(4d|id|may the)$"),
        lambda m: f"{m.group(1)} {_TENS_HEARD[m.group(2)]}",
    ),
    (_THAT, r"\1 that\2"),
    (re.compile(r"\bhower\b"), "hour"),  # "one hour" heard as "well-hower"
    (re.compile(r"^what in\b"), "what is"),  # "What in 5 plus 6?"
    (re.compile(r"\b(square root|percent) on\b"), r"\1 of"),
    (re.compile(r"(?<=\d) time (?=\d)"), " times "),
]


def number_homophone(word: str) -> str | None:
    """The number word tiny.en may have heard as ``word`` ("for" -> "four"), if any."""
    return _HOMOPHONES.get(word)


def _numeric_place(words: list[str], index: int) -> bool:
    """Whether ``words[index]`` stands where a number would: before a unit of time, or as
    an operand beside an operator."""
    after = words[index + 1] if index + 1 < len(words) else ""
    before = words[index - 1] if index else ""
    pair = " ".join(words[index + 1 : index + 3])
    if after in _UNITS:
        return True
    if (after in _OPERATORS or pair in _OPERATOR_PAIRS) and (not before or before in _ASKING):
        return True
    return before in _AFTER_OPERATOR and (not after or after in _OPERATORS)


def repair(words: str) -> str:
    """``words`` (normalised: lower case, no punctuation) with the mishearings of number words
    and small words repaired where the context is about numbers; unchanged otherwise."""
    text = words
    for pattern, replacement in _MISHEARD:
        text = pattern.sub(replacement, text)
    tokens = text.split()
    fixed = [
        _HOMOPHONES[word] if word in _HOMOPHONES and _numeric_place(tokens, i) else word
        for i, word in enumerate(tokens)
    ]
    text = _ARTICLE.sub(r"\1 a", " ".join(fixed))
    text = _TIMER_VERB.sub("set a ", text)
    return _TIMER_LENGTH_VERB.sub("set a ", text)
