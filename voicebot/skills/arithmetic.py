"""Arithmetic said out loud, computed exactly with :class:`~fractions.Fraction`."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from .numbers import format_number, parse_number, sqrt_exact, too_big

__all__ = ["OPERATIONS", "calculate", "evaluate"]

OPERATIONS = ("add", "subtract", "multiply", "divide", "percent", "power", "square", "cube", "sqrt")
"""The ``op`` slot values of the arithmetic templates."""

_WORDS = {
    "add": "plus",
    "subtract": "minus",
    "multiply": "times",
    "divide": "divided by",
    "percent": "percent of",
    "power": "to the power of",
}
_MAX_EXPONENT = 64


def calculate(op: str, a: Fraction, b: Fraction | None = None) -> tuple[Fraction | None, str]:
    """Compute ``a op b`` and say it ("17 plus 25 is 42.").

    Returns:
        The exact result (``None`` when there is none: division by zero, a number too big
        to say, the root of a negative number) and the sentence to speak.

    Raises:
        ValueError: an unknown operation, or a binary one without ``b``.
    """
    if op not in OPERATIONS:
        raise ValueError(f"unknown operation {op!r}")
    fa = format_number(a)
    if op in ("square", "cube"):
        result = a ** (2 if op == "square" else 3)
        return _said(result, f"{fa} {op}d")
    if op == "sqrt":
        if a < 0:
            return None, "A negative number has no real square root."
        exact = sqrt_exact(a)
        if exact is not None:
            return exact, f"The square root of {fa} is {format_number(exact)}."
        approx = Fraction(math.sqrt(a))
        return approx, f"The square root of {fa} is {format_number(approx)}."
    if b is None:
        raise ValueError(f"{op} needs two numbers")
    fb = format_number(b)
    phrase = f"{fa} {_WORDS[op]} {fb}"
    if op == "add":
        return _said(a + b, phrase)
    if op == "subtract":
        return _said(a - b, phrase)
    if op == "multiply":
        return _said(a * b, phrase)
    if op == "divide":
        if b == 0:
            return None, "You can't divide by zero."
        return _said(a / b, phrase)
    if op == "percent":
        return _said(a * b / 100, phrase)
    # power
    if b.denominator != 1 or abs(b) > _MAX_EXPONENT or (a == 0 and b < 0):
        return None, f"{phrase} is more than I can work out exactly."
    if too_big(a) or (abs(a) > 1 and abs(b) * math.log10(float(abs(a))) >= 15):
        return None, f"{phrase} is too big a number for me to say."
    return _said(a ** int(b), phrase)


def _said(result: Fraction, phrase: str) -> tuple[Fraction | None, str]:
    if too_big(result):
        return None, f"{phrase} is too big a number for me to say."
    return result, f"{phrase} is {format_number(result)}."


_CHAIN_OPS = {
    "plus": "+",
    "minus": "-",
    "times": "*",
    "multiplied by": "*",
    "x": "*",
    "divided by": "/",
    "over": "/",
}
_CHAIN_SPLIT = re.compile(r"\b(multiplied by|divided by|plus|minus|times|over|x)\b")
_SPOKEN = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}


def evaluate(words: str) -> tuple[Fraction | None, str] | None:
    """A chain of numbers and operators ("5 times 5 times 5", "2 plus 3 times 4"), with
    times and divided by before plus and minus, said back with its result.

    Returns:
        ``None`` when ``words`` are not such a chain (a word that is not a number, or no
        operator); otherwise what :func:`calculate` returns.
    """
    parts = _CHAIN_SPLIT.split(words.strip())
    operands, operators = parts[0::2], [_CHAIN_OPS[p] for p in parts[1::2]]
    if not operators:
        return None
    values = [parse_number(o) for o in operands]
    if any(v is None for v in values):
        return None
    numbers = [v for v in values if v is not None]
    phrase = format_number(numbers[0])
    for op, value in zip(operators, numbers[1:], strict=True):
        phrase += f" {_SPOKEN[op]} {format_number(value)}"
    terms: list[Fraction] = [numbers[0]]
    signs: list[str] = []
    for op, value in zip(operators, numbers[1:], strict=True):
        if op in "*/":
            if op == "/" and value == 0:
                return None, "You can't divide by zero."
            terms[-1] = terms[-1] * value if op == "*" else terms[-1] / value
            if too_big(terms[-1]):
                return None, f"{phrase} is too big a number for me to say."
        else:
            signs.append(op)
            terms.append(value)
    result = terms[0]
    for op, term in zip(signs, terms[1:], strict=True):
        result = result + term if op == "+" else result - term
    return _said(result, phrase)
