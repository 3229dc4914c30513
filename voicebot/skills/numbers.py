"""Numbers as people say them and as Whisper writes them, read exactly and said back.

Whisper writes a spoken number either way ("twenty five", "25", "1,000", "3.5"), so a slot
captured by a template is read here into a :class:`~fractions.Fraction`: no float rounding,
and no ``eval`` of anything the user said.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = [
    "TENS",
    "UNITS",
    "format_duration",
    "format_number",
    "parse_number",
    "words_for_speech",
]

_UNITS = {
    "zero": 0,
    "oh": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fourty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
UNITS = _UNITS
"""Number words under twenty and their values (with "oh", as Whisper writes a spoken zero)."""
TENS = _TENS
"""The tens, twenty to ninety (with the misspelling "fourty")."""
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_DIGITS = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?$")
_MAX_ABS = Fraction(10**15)


def _digits(token: str) -> Fraction | None:
    if not _DIGITS.match(token):
        return None
    return Fraction(token.replace(",", ""))


def parse_number(text: str) -> Fraction | None:
    """The number in ``text`` ("25", "twenty-five", "1,000", "three point five", "2 million").

    Args:
        text: A captured slot: the number and nothing else (a leading "negative" or "minus"
            is allowed, and "a" for one before "hundred", "thousand"...).

    Returns:
        The exact value, or ``None`` when ``text`` is not a number.
    """
    words = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text.lower().strip()).split()
    if not words:
        return None
    sign = 1
    if words[0] in ("negative", "minus"):
        sign, words = -1, words[1:]
    if not words:
        return None
    if len(words) == 1 and (value := _digits(words[0])) is not None:
        return sign * value
    if "point" in words:
        at = words.index("point")
        whole = _parse_words(words[:at]) if at else Fraction(0)
        decimals = words[at + 1 :]
        if whole is None or not decimals:
            return None
        digits = ""
        for word in decimals:
            if word.isdigit():
                digits += word
            elif word in _UNITS and _UNITS[word] < 10:
                digits += str(_UNITS[word])
            else:
                return None
        return sign * (whole + Fraction(int(digits), 10 ** len(digits)))
    value = _parse_words(words)
    return None if value is None else sign * value


def _parse_words(words: list[str]) -> Fraction | None:
    """Whole number words ("one hundred and five", "2 million", "a thousand")."""
    total = Fraction(0)
    current = Fraction(0)
    last = ""  # what the previous word was: unit, teen, tens, hundred, scale, number
    seen = False
    for index, word in enumerate(words):
        if word == "and" and seen:
            continue
        if word in ("a", "an") and index + 1 < len(words):
            if words[index + 1] in ("hundred", "dozen", *_SCALES):
                current, last, seen = Fraction(1), "unit", True
                continue
            return None
        number = _digits(word)
        if word in _UNITS or number is not None:
            value = _UNITS[word] if word in _UNITS else number
            assert value is not None
            if last in ("unit", "teen", "number"):
                return None  # "five twenty": two numbers, not one
            if last == "tens" and (value >= 10 or number is not None):
                return None
            current += value
            last = "number" if number is not None else ("teen" if value >= 10 else "unit")
        elif word in _TENS:
            if last in ("unit", "teen", "tens", "number"):
                return None
            current += _TENS[word]
            last = "tens"
        elif word == "hundred":
            if last == "hundred" or current >= 100:
                return None
            current = (current or Fraction(1)) * 100
            last = "hundred"
        elif word == "dozen":
            current = (current or Fraction(1)) * 12
            last = "scale"
        elif word in _SCALES:
            total += (current or Fraction(1)) * _SCALES[word]
            current = Fraction(0)
            last = "scale"
        else:
            return None
        seen = True
    if not seen:
        return None
    return total + current


def format_number(value: Fraction) -> str:
    """A value as it is said and shown: "42", "2.5", "-7", "12,345", "about 3.3333".

    Exact values with at most six decimals are written exactly; others are rounded to four
    decimals after "about".
    """
    if value.denominator == 1:
        number = int(value)
        return f"{number:,}" if abs(number) >= 10000 else str(number)
    scaled = value * 10**6
    if scaled.denominator == 1:
        text = f"{float(value):.6f}".rstrip("0").rstrip(".")
        return text
    rounded = round(float(value), 4)
    if rounded == 0:
        return "about 0"
    text = f"{rounded:.4f}".rstrip("0").rstrip(".")
    return f"about {text}"


def too_big(value: Fraction) -> bool:
    """Past a quadrillion: not worth saying digit by digit."""
    return abs(value) >= _MAX_ABS


def sqrt_exact(value: Fraction) -> Fraction | None:
    """The exact square root of a non-negative value, when it is rational."""
    if value < 0:
        return None
    num, den = math.isqrt(value.numerator), math.isqrt(value.denominator)
    if num * num == value.numerator and den * den == value.denominator:
        return Fraction(num, den)
    return None


def _unit(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def format_duration(seconds: float) -> str:
    """A duration in words: "10 minutes", "1 hour and 30 minutes", "45 seconds".

    Rounded to the second; anything under a second is "less than a second".
    """
    total = round(seconds)
    if total <= 0:
        return "less than a second"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(_unit(hours, "hour"))
    if minutes:
        parts.append(_unit(minutes, "minute"))
    if secs:
        parts.append(_unit(secs, "second"))
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def words_for_speech(text: str) -> str:
    """Whisper's symbols as words, so templates see one spelling.

    "15%" -> "15 percent", "17 + 25" -> "17 plus 25", "7x8" and "7 × 8" -> "7 times 8",
    "100 / 4" and "100 ÷ 4" -> "100 divided by 4", "17 - 5" -> "17 minus 5", "=" and a final
    "?" dropped, "twenty-five" -> "twenty five".
    """
    text = text.replace("\u2019", "'").replace("\u2212", "-")
    text = re.sub(r"%", " percent", text)
    text = re.sub(r"\s*\+\s*", " plus ", text)
    text = re.sub(r"(?<=\d)\s*[x\u00d7*]\s*(?=[-\d])", " times ", text)
    text = re.sub(r"(?<=\d)\s*[/\u00f7]\s*(?=[-\d])", " divided by ", text)
    text = re.sub(r"(?<=\d)\s+-\s*(?=\d)", " minus ", text)
    text = re.sub(r"(?<=[A-Za-z])-(?=[A-Za-z])", " ", text)
    text = re.sub(r"\s*=\s*", " ", text)
    return " ".join(text.split())
