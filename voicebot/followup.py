"""Follow-up questions made standalone from the previous exchange.

A small chat model answers a self-contained question far better than it follows a history
(on the 135M default, earlier turns pulled its answers off topic). So a question that leans
on the previous exchange is rewritten into one that does not:

- ellipsis: "How many legs does a spider have?" / "And an ant?" -> "How many legs does an
  ant have?"; "What is the capital of Egypt?" / "And of Greece?" -> "What is the capital of
  Greece?"; "What animal says woof?" / "And which one says meow?" -> "Which animal says meow?"
- pronouns: "What is the capital of Italy?" / "What language do people speak there?" ->
  "What language do people speak in Italy?"; "Let's talk about dogs." / "How many legs do
  they have?" -> "How many legs do dogs have?"; "Who wrote Hamlet?" / "What nationality was
  he?" -> "... was William Shakespeare?" (the person named in the answer).

:func:`standalone` returns the rewrite, or ``None`` when the question stands alone or cannot
be rewritten; :func:`leans_on_previous` says whether it looks like a follow-up at all.
"""

from __future__ import annotations

import re

__all__ = ["leans_on_previous", "standalone"]

_PREPOSITIONS = {"of", "in", "on", "for", "at", "from", "to", "with", "about", "during", "by"}
_DETERMINERS = {"a", "an", "the", "some", "my", "your", "our", "his", "her", "their", "this"}
_AUX_DO = {"does", "do", "did", "can", "could", "will", "would", "should"}
_AUX_BE = {"is", "are", "was", "were"}
_WH = {"what", "who", "where", "when", "why", "how", "which", "whose"}
_ELLIPSIS = re.compile(
    r"^(?:and|but)?\s*(?:what about|how about|what of|and)?\s*(?P<x>.*?)\s*[?.!]*$",
    re.IGNORECASE,
)
_ELLIPSIS_START = re.compile(r"^(?:and|what about|how about|what of)\b", re.IGNORECASE)
_IMPERSONAL_IT = re.compile(
    r"\b(?:what time is it|what day is it|how is it going|is it (?:going to|raining|snowing|"
    r"cold|hot|warm|sunny|late|early|windy))\b",
    re.IGNORECASE,
)
_PRONOUNS = {"it", "its", "they", "them", "their", "there", "he", "she", "him", "his", "her"}
_NOT_PROPER = _WH | _AUX_DO | _AUX_BE | _PRONOUNS | _DETERMINERS | _PREPOSITIONS
_NOT_PROPER |= {"yes", "no", "sure", "well", "oh", "i", "i'm", "it's", "that", "there's", "hello"}
"""Capitalised at the start of a sentence, never a name."""
_NOT_A_FRAGMENT = {"you", "yourself", "me", "that", "this", "i", "i'm", "i've", "we", "he"}
_NOT_A_FRAGMENT |= {"she", "it", "they", "then", "so", "also", "now", "yes", "no", "thanks"}
_NOT_A_FRAGMENT |= {"thank", "ok", "okay", "please", "there", "it's", "that's"}
_WORD = re.compile(r"[\w'-]+|[^\w\s]")


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.replace("\u2019", "'"))


def _join(tokens: list[str]) -> str:
    text = " ".join(tokens)
    text = re.sub(r"\s+([?.!,;:])", r"\1", text)
    text = re.sub(r"\s+'s\b", "'s", text)
    return text[:1].upper() + text[1:]


def _words_only(tokens: list[str]) -> list[str]:
    return [t for t in tokens if re.match(r"[\w']", t)]


def _proper_runs(tokens: list[str]) -> list[tuple[int, int]]:
    """(start, end) of runs of capitalised words, the sentence's first word excluded."""
    runs: list[tuple[int, int]] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if index > 0 and token[:1].isupper() and token not in ("I", "I'm", "I've", "I'd"):
            end = index + 1
            while end < len(tokens) and (
                tokens[end][:1].isupper()
                or (
                    tokens[end] in ("of", "de")
                    and end + 1 < len(tokens)
                    and tokens[end + 1][:1].isupper()
                )
            ):
                end += 1
            start = index - 1 if index > 0 and tokens[index - 1].lower() == "the" else index
            runs.append((start, end))
            index = end
        else:
            index += 1
    return runs


def _strip_end(tokens: list[str]) -> tuple[list[str], list[str]]:
    end = len(tokens)
    while end and tokens[end - 1] in "?.!":
        end -= 1
    return tokens[:end], tokens[end:] or ["?"]


def _is_question(tokens: list[str]) -> bool:
    return bool(tokens) and (tokens[-1] == "?" or tokens[0].lower() in _WH | _AUX_DO | _AUX_BE)


def _subject(tokens: list[str]) -> tuple[int, int] | None:
    """(start, end) of the subject after the first auxiliary of a question."""
    words, _ = _strip_end(tokens)
    for index, token in enumerate(words):
        lower = token.lower()
        if lower in _AUX_DO and index + 2 < len(words) + 1:
            start = index + 1
            if start >= len(words) - 1:
                return None
            if words[start].lower() in _DETERMINERS:
                end = min(len(words) - 1, start + 4)
                return start, max(end, start + 2)
            return start, min(len(words) - 1, start + 2) if len(words) - start <= 3 else start + 1
        if lower in _AUX_BE and index > 0:
            start = index + 1
            if start >= len(words) or words[start].lower() in _PREPOSITIONS:
                return None
            end = start
            while end < len(words) and words[end].lower() not in _PREPOSITIONS:
                end += 1
            return (start, end) if end > start else None
    return None


def _agree(tokens: list[str], subject: list[str]) -> list[str]:
    """Make do/does and is/are agree with a new subject."""
    plural = (
        subject[0].lower() not in ("a", "an", "this")
        and subject[-1].lower().endswith("s")
        and not subject[-1].lower().endswith("ss")
    )
    swap = (
        {"does": "do", "is": "are", "was": "were"}
        if plural
        else {"do": "does", "are": "is", "were": "was"}
    )
    out = list(tokens)
    for index, token in enumerate(out):
        if token.lower() in swap and token.lower() in _AUX_DO | _AUX_BE:
            replacement = swap[token.lower()]
            out[index] = replacement.capitalize() if token[:1].isupper() else replacement
            break
    return out


def _head_noun(tokens: list[str]) -> str:
    """The noun after the question word ("What animal says woof?" -> "animal")."""
    if len(tokens) > 1 and tokens[0].lower() in ("what", "which") and tokens[1].isalpha():
        if tokens[1].lower() not in _AUX_DO | _AUX_BE:
            return tokens[1]
    return ""


def _ellipsis(fragment: list[str], previous: list[str]) -> list[str] | None:
    """The previous question with its subject replaced by the fragment ("an ant")."""
    body, end = _strip_end(previous)
    if not body:
        return None
    first = fragment[0].lower()
    if first in _WH:  # "And which one says meow?": a question of its own
        noun = _head_noun(body)
        out = [noun if t.lower() == "one" and noun else t for t in fragment]
        return out + end if out != fragment else None
    if first in _PREPOSITIONS:
        spots = [i for i, t in enumerate(body) if t.lower() == first]
        if not spots:
            return None
        start = spots[-1]
        stop = start + 1
        while stop < len(body) and body[stop].lower() not in _PREPOSITIONS:
            stop += 1
        return body[:start] + fragment + body[stop:] + end
    if fragment[0][:1].isupper():
        runs = _proper_runs(body)
        if runs:
            start, stop = runs[-1]
            return body[:start] + fragment + body[stop:] + end
    subject = _subject(previous)
    if subject is None:
        return None
    start, stop = subject
    return _agree(body[:start] + fragment + body[stop:], fragment) + end


def _person(previous: list[str], answer: list[str]) -> list[str]:
    body, _ = _strip_end(previous)
    lowered = [t.lower() for t in body]
    if len(body) > 2 and lowered[0] == "who" and lowered[1] in _AUX_BE:
        return body[2:]
    known = {t.lower() for t in body}
    sentence = ["."] + answer
    names = [sentence[start:stop] for start, stop in _proper_runs(sentence)]
    named = [
        run
        for run in names
        if not {t.lower() for t in run} <= known and run[0].lower() not in _NOT_PROPER
    ]
    if named:  # a full name ("William Shakespeare") before a lone capitalised word ("French")
        return next((run for run in named if len(run) > 1), named[0])
    runs = _proper_runs(body)
    return body[runs[-1][0] : runs[-1][1]] if runs else []


def _thing(previous: list[str]) -> list[str]:
    body, _ = _strip_end(previous)
    runs = _proper_runs(body)
    if runs:
        return body[runs[-1][0] : runs[-1][1]]
    lowered = [t.lower() for t in body]
    if "about" in lowered:
        return body[lowered.index("about") + 1 :]
    subject = _subject(previous)
    return body[subject[0] : subject[1]] if subject else []


def _plural(previous: list[str]) -> list[str]:
    body, _ = _strip_end(previous)
    lowered = [t.lower() for t in body]
    candidates: list[list[str]] = []
    if "about" in lowered:
        candidates.append(body[lowered.index("about") + 1 :])
    subject = _subject(previous)
    if subject is not None:
        candidates.append(body[subject[0] : subject[1]])
    for words in candidates:
        if words and words[-1].lower().endswith("s") and words[0].lower() not in ("a", "an"):
            return words
    return []


def _place(previous: list[str], answer: list[str]) -> list[str]:
    body, _ = _strip_end(previous)
    runs = _proper_runs(body)
    if runs:
        return body[runs[-1][0] : runs[-1][1]]
    runs = _proper_runs(["."] + answer)
    return (["."] + answer)[runs[-1][0] : runs[-1][1]] if runs else []


def leans_on_previous(question: str) -> bool:
    """Whether ``question`` looks like it needs the previous exchange (ellipsis or pronoun)."""
    tokens = _tokens(question.strip())
    if not tokens:
        return False
    if _ELLIPSIS_START.match(question.strip()) and len(_words_only(tokens)) <= 8:
        return True
    if not _is_question(tokens) or _IMPERSONAL_IT.search(question):
        return False
    return any(t.lower() in _PRONOUNS for t in tokens)


def standalone(question: str, previous_question: str, previous_answer: str = "") -> str | None:
    """``question`` rewritten to stand alone, or ``None`` (it stands alone, or cannot be).

    Args:
        question: What the user just asked.
        previous_question: What the user said before.
        previous_answer: What the assistant answered to it.
    """
    text = question.strip()
    if not text or not previous_question.strip() or not leans_on_previous(text):
        return None
    tokens = _tokens(text)
    previous = _tokens(previous_question.strip())
    answer = _tokens(previous_answer.strip())
    if _ELLIPSIS_START.match(text):
        match = _ELLIPSIS.match(text)
        fragment = _tokens(match.group("x")) if match else []
        fragment = [t for t in fragment if t != ","]
        if not fragment or fragment[0].lower() in _NOT_A_FRAGMENT:
            return None  # "And you?", "And I live in Paris.", "And then?": nothing to fill in
        if fragment[0].lower() not in _WH and len(_words_only(fragment)) > 5:
            return None
        if fragment[0].lower() not in _WH:
            rewritten = _ellipsis(fragment, previous)
            return _join(rewritten) if rewritten else None
        tokens = fragment + (["?"] if fragment[-1] != "?" else [])
        rewritten = _ellipsis(fragment, previous)
        if rewritten is not None:
            tokens = rewritten
        if not any(t.lower() in _PRONOUNS for t in tokens):
            return _join(tokens)
    out: list[str] = []
    resolved_there = False
    for index, token in enumerate(tokens):
        lower = token.lower()
        if lower not in _PRONOUNS:
            out.append(token)
            continue
        if lower == "there":
            place = _place(previous, answer)
            if not place:
                return None
            out.extend(["in", *place])
            resolved_there = True
            continue
        if lower in ("he", "she", "him", "his", "her"):
            referent = _person(previous, answer)
        elif lower in ("it", "its"):
            referent = _thing(previous)
        else:
            referent = _plural(previous)
        if not referent:
            if lower in ("they", "them", "their"):
                out.append(token)
                continue
            return None
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        possessive = lower in ("its", "his", "their") or (
            lower == "her" and following[:1].isalpha() and following.lower() not in _PREPOSITIONS
        )
        out.extend([*referent[:-1], referent[-1] + "'s"] if possessive else referent)
    if [t.lower() for t in out] == [t.lower() for t in tokens]:
        return None
    if any(t.lower() in ("they", "them", "their") for t in out) and not resolved_there:
        return None
    return _join(out)
