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

__all__ = ["is_refusal", "leans_on_previous", "standalone"]

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
_AFTER_VERB = _PREPOSITIONS | {"into", "onto", "out", "up", "down", "off", "over", "through"}
_AFTER_VERB |= {"away", "back", "around"}
"""Words that follow a question's main verb ("turn into", "come from"): they end its subject."""
_PARTICIPLES = {"called", "known", "made", "used", "born", "named", "found", "located"}
_PARTICIPLES |= {"written", "given", "taken", "seen", "spoken", "eaten", "worn", "grown"}
_PARTICIPLES |= {"drawn", "built", "held", "kept", "sold", "told", "brought", "bought", "said"}
_NOT_SUPERLATIVE = {"west", "rest", "test", "forest", "interest", "honest", "chest", "nest"}
_NOT_SUPERLATIVE |= {"guest", "pest", "quest", "request", "harvest", "contest", "protest"}
_NOT_SUPERLATIVE |= {"everest", "suggest", "invest", "arrest", "digest", "modest", "earnest"}
_NOT_SUPERLATIVE |= {"manifest", "northwest", "southwest", "midwest", "priest", "breast"}
_IN_NAMES = {"of", "and", "de", "da", "di", "del", "van", "von", "der", "du", "la", "le"}
"""Lowercase words inside a name or title, between capitalised ones."""
_TIMES = {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}
_TIMES |= {"january", "february", "march", "april", "may", "june", "july", "august"}
_TIMES |= {"september", "october", "november", "december", "christmas", "easter"}
"""Capitalised, but times, not things a follow-up points back to."""
_ABOUT_THE_ANSWER = {"right", "true", "correct", "so", "all", "enough", "it", "possible"}
"""After "that" ("Is that right?"): a question about the answer, not about what it names."""
_WORD = re.compile(r"(?:[A-Z]\.){2,}|[\w'-]+|[^\w\s]")
"""Words ("J.K." whole, so "J.K. Rowling" is one name) and punctuation marks."""
_REFUSAL = re.compile(
    r"\b(?:I'm sorry|I am sorry|as an? (?:helpful )?AI|language model|I (?:can't|cannot) "
    r"(?:help|answer|provide)|I don't have (?:an answer|information|access))\b",
    re.IGNORECASE,
)


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
            while (
                end < len(tokens)
                and (
                    tokens[end][:1].isupper()
                    or (
                        tokens[end] in _IN_NAMES  # "Pride and Prejudice", "Vincent van Gogh"
                        and end + 1 < len(tokens)
                        and tokens[end + 1][:1].isupper()
                    )
                )
            ):
                end += 1
            start = index - 1 if index > 0 and tokens[index - 1].lower() == "the" else index
            if not {t.lower() for t in tokens[index:end]} <= _TIMES:  # "on Friday": a time
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


def _participle(word: str) -> bool:
    lower = word.lower()
    return lower in _PARTICIPLES or (len(lower) > 4 and lower.endswith("ed"))


def _subject(tokens: list[str]) -> tuple[int, int] | None:
    """(start, end) of a question's subject: after its first auxiliary, before its verb."""
    words, _ = _strip_end(tokens)
    for index, token in enumerate(words):
        lower = token.lower()
        if lower in _AUX_DO:
            start = index + 1
            if start >= len(words) - 1:
                return None
            # The verb: before the first word that follows one ("turn into", "come from"),
            # else the last word ("How many legs does a spider have").
            verb = next(
                (j - 1 for j in range(start + 1, len(words)) if words[j].lower() in _AFTER_VERB),
                len(words) - 1,
            )
            longest = 4 if words[start].lower() in _DETERMINERS else 2
            return start, min(max(verb, start + 1), start + longest)
        if lower in _AUX_BE:
            if index == 0:  # "Are dolphins fish?": its first noun phrase
                if len(words) < 2:
                    return None
                return 1, min(len(words), 3 if words[1].lower() in _DETERMINERS else 2)
            start = index + 1
            if start >= len(words) or words[start].lower() in _PREPOSITIONS:
                return None
            if _participle(words[start]):  # "What fruit is used to make wine?": no subject here
                return None
            end = start
            while end < len(words) and words[end].lower() not in _PREPOSITIONS:
                if end > start and _participle(words[end]):  # "What is a baby dog called?"
                    break
                end += 1
            return (start, end) if end > start else None
    return None


def _superlative(word: str) -> bool:
    lower = word.lower()
    if lower in ("best", "worst", "most", "least"):
        return True
    return len(lower) > 4 and lower.endswith("est") and lower not in _NOT_SUPERLATIVE


def _singular(word: str) -> str:
    lower = word.lower()
    if lower.endswith("ies") and len(lower) > 4:
        return word[:-3] + "y"
    if re.search(r"(?:s|x|z|ch|sh)es$", lower):
        return word[:-2]
    if lower.endswith("s") and not lower.endswith("ss"):
        return word[:-1]
    return word


def _counted(tokens: list[str]) -> int | None:
    """Index of the noun after "how many" ("How many planets ..." -> 2)."""
    lowered = [t.lower() for t in tokens]
    if len(lowered) > 2 and lowered[:2] == ["how", "many"] and tokens[2].isalpha():
        return 2
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
    """What a question asks for ("What animal says woof?" -> "animal"; "How many planets
    are there?" -> "planet")."""
    if len(tokens) > 1 and tokens[0].lower() in ("what", "which") and tokens[1].isalpha():
        if tokens[1].lower() not in _AUX_DO | _AUX_BE:
            return tokens[1]
    counted = _counted(tokens)
    return _singular(tokens[counted]) if counted is not None else ""


def _ellipsis(fragment: list[str], previous: list[str]) -> list[str] | None:
    """The previous question with the part the fragment stands for replaced by it."""
    body, end = _strip_end(previous)
    if not body:
        return None
    first = fragment[0].lower()
    lowered = [t.lower() for t in body]
    if first in _WH:  # "And which one says meow?": a question of its own
        noun = _head_noun(body)
        out = [noun if t.lower() == "one" and noun else t for t in fragment]
        return out + end if out != fragment else None
    words = [t for t in fragment if t.lower() not in ("the", "one")]
    if words and _superlative(words[0]):  # "And the smallest?" after "... the largest ocean?"
        spots = [i for i, t in enumerate(body) if _superlative(t)]
        if not spots:
            return None
        at = spots[0]
        stop = at + 2 if lowered[at] in ("most", "least") and at + 1 < len(body) else at + 1
        return body[:at] + words + body[stop:] + end
    if first in _PREPOSITIONS:
        spots = [i for i, t in enumerate(lowered) if t == first]
        if not spots:
            return None
        start = spots[-1]
        stop = start + 1
        while stop < len(body) and lowered[stop] not in _PREPOSITIONS:
            stop += 1
        return body[:start] + fragment + body[stop:] + end
    if first in ("its", "his", "her", "their") and len(fragment) > 1:
        # "And its freezing point?" after "What is the boiling point of water?": the noun
        # phrase with the same head noun.
        spots = [i for i, t in enumerate(lowered) if t == fragment[-1].lower()]
        if not spots:
            return None
        stop = spots[-1] + 1
        start = stop - 1
        stops_at = _DETERMINERS | _PREPOSITIONS | _AUX_BE | _AUX_DO | _WH
        while start > 0 and lowered[start - 1] not in stops_at:
            start -= 1
        if start > 0 and lowered[start - 1] in _DETERMINERS:
            start -= 1
        return body[:start] + ["the", *fragment[1:]] + body[stop:] + end
    counted = _counted(body)
    inner = [i for i, t in enumerate(fragment) if i > 0 and t.lower() in _PREPOSITIONS]
    if counted is not None and inner:
        # "And inches in a foot?" after "How many feet are in a yard?": both nouns.
        split = inner[0]
        spots = [i for i, t in enumerate(lowered) if t == fragment[split].lower() and i > counted]
        if not spots:
            return None
        stop = spots[0] + 1
        while stop < len(body) and lowered[stop] not in _PREPOSITIONS:
            stop += 1
        return (
            body[:counted]
            + fragment[:split]
            + body[counted + 1 : spots[0]]
            + fragment[split:]
            + body[stop:]
            + end
        )
    if fragment[0][:1].isupper():
        runs = _proper_runs(body)
        if runs:
            start, stop = runs[-1]
            return body[:start] + fragment + body[stop:] + end
    subject = _subject(previous)
    if subject is not None:
        start, stop = subject
        return _agree(body[:start] + fragment + body[stop:], fragment) + end
    if counted is not None and first not in _DETERMINERS:
        # "And weeks?" after "How many months are in a year?": the counted noun.
        return body[:counted] + fragment + body[counted + 1 :] + end
    last = lowered[-1]
    if len(body) > 2 and last.isalpha() and last not in _AFTER_VERB | _AUX_BE | _AUX_DO:
        if not _participle(last):  # "And cider?" after "What fruit makes wine?": the last noun
            start = len(body) - 2 if lowered[-2] in _DETERMINERS else len(body) - 1
            return body[:start] + fragment + end
    return None


def _names(answer: list[str], known: set[str]) -> list[list[str]]:
    """Capitalised runs in ``answer`` not all in ``known`` (lowercased words)."""
    sentence = ["."] + answer
    runs = [sentence[start:stop] for start, stop in _proper_runs(sentence)]
    return [
        run
        for run in runs
        if not {t.lower() for t in run} <= known
        and run[run[0] == "the" :][0].lower() not in _NOT_PROPER  # "the Blue Whale": "Blue"
    ]


def _person(previous: list[str], answer: list[str]) -> list[str]:
    body, _ = _strip_end(previous)
    lowered = [t.lower() for t in body]
    described: list[str] = []
    if len(body) > 2 and lowered[0] == "who" and lowered[1] in _AUX_BE:
        described = body[2:]
        if described[0][:1].isupper():  # "Who was Marie Curie?"
            return described
    named = _names(answer, set(lowered))
    if named:  # a full name ("William Shakespeare") before a lone capitalised word ("French")
        return next((run for run in named if len(run) > 1), named[0])
    if described:  # "Who was the first woman to fly solo?", the answer naming nobody
        return described
    if lowered[0] == "who" and len(body) > 2:  # "Who wrote Hamlet?" -> the person who wrote it
        return ["the", "person", "who", *body[1:]]
    runs = _proper_runs(body)
    return body[runs[-1][0] : runs[-1][1]] if runs else []


def _answered_thing(body: list[str], answer: list[str]) -> list[str]:
    """What a "what/which" question's answer names ("Which planet is closest to the Sun?" /
    "Mercury is." -> "Mercury"; "What organ pumps blood?" / "The heart." -> "the heart")."""
    lowered = [t.lower() for t in body]
    if not answer or lowered[0] not in ("what", "which") or set(lowered[1:3]) & _AUX_DO:
        return []  # "What do pandas eat?": "it" is what the question is about
    known = set(lowered)
    named = _names(answer, known)
    if named:
        return named[0]
    words = _words_only(answer)
    phrase: list[str] = []
    for word in words[:5]:
        lower = word.lower()
        if phrase and (lower in _AUX_BE | _AUX_DO or lower in known - _DETERMINERS):
            break
        phrase.append(word)
    if not phrase or phrase[0].lower() in _NOT_PROPER - {"the", "a", "an"}:
        return []
    if len(phrase) > 4 or {t.lower() for t in phrase} - _DETERMINERS <= known:
        return []  # no short noun phrase, or the question's own words ("The sky is ...")
    if phrase[0].lower() in _DETERMINERS:
        phrase[0] = phrase[0].lower()
    return phrase


def _thing(previous: list[str], answer: list[str]) -> list[str]:
    body, _ = _strip_end(previous)
    lowered = [t.lower() for t in body]
    if "about" in lowered and lowered[0] in ("tell", "let's", "lets"):
        return body[lowered.index("about") + 1 :]
    answered = _answered_thing(body, answer)
    if answered:
        return answered
    subject = _subject(previous)
    if subject is not None and lowered[subject[0] - 1] in _AUX_DO:  # "does water boil"
        words = body[subject[0] : subject[1]]
        if words and words[0].lower() not in _PRONOUNS:
            return words
    runs = _proper_runs(body)
    if runs:
        return body[runs[-1][0] : runs[-1][1]]
    if "about" in lowered:
        return body[lowered.index("about") + 1 :]
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


def _pronoun_that(tokens: list[str], index: int) -> bool:
    """Whether the "that" at ``index`` stands for something ("What year was that?", "What
    country is that in?", "Why is that?"), not a conjunction or relative ("the animal that
    barks", "Where did he walk that nobody had walked before?")."""
    if tokens[index].lower() != "that":
        return False
    before = tokens[index - 1].lower() if index else ""
    after = [t.lower() for t in tokens[index + 1 :]]
    if not after or after[0] in "?.!":
        return True
    if after[0] in _AFTER_VERB and (len(after) == 1 or after[1] in "?.!"):
        return True
    return before in _AUX_BE | _AUX_DO | _PREPOSITIONS


_WHICH_ONE = re.compile(r"^(?:and\s+)?(?:which|what)\s+one\b", re.IGNORECASE)


def is_refusal(answer: str) -> bool:
    """Whether an answer declines or apologises instead of answering ("I'm sorry, but as an
    AI..."): no help to a follow-up, and a small model given it tends to repeat it."""
    return bool(_REFUSAL.search(answer.replace("\u2019", "'")))


def leans_on_previous(question: str) -> bool:
    """Whether ``question`` looks like it needs the previous exchange (ellipsis or pronoun)."""
    tokens = _tokens(question.strip())
    if not tokens:
        return False
    if _ELLIPSIS_START.match(question.strip()) and len(_words_only(tokens)) <= 8:
        return True
    if not _is_question(tokens) or _IMPERSONAL_IT.search(question):
        return False
    if _WHICH_ONE.match(question.strip()):
        return True
    return any(t.lower() in _PRONOUNS or _pronoun_that(tokens, i) for i, t in enumerate(tokens))


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
    if len(tokens) > 1 and tokens[0].lower() in ("which", "what") and tokens[1].lower() == "one":
        noun = _head_noun(_strip_end(previous)[0])  # "Which one is the longest?" -> "Which bone"
        if not noun:
            return None
        tokens = [tokens[0], noun, *tokens[2:]]
    out: list[str] = []
    resolved_there = False
    for index, token in enumerate(tokens):
        lower = token.lower()
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        if lower not in _PRONOUNS and not _pronoun_that(tokens, index):
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
        elif lower == "that" and (
            _tokens(previous_question)[0].lower() == "who" or following.lower() in _ABOUT_THE_ANSWER
        ):
            # "Who first walked on the Moon?" / "What year was that?": an event; "Is that
            # right?": the answer itself. The previous exchange tells the model.
            return None
        elif lower in ("it", "its", "that"):
            referent = _thing(previous, answer)
        else:
            referent = _plural(previous)
        if not referent:
            if lower in ("they", "them", "their"):
                out.append(token)
                continue
            return None
        possessive = lower in ("its", "his", "their") or (
            lower == "her" and following[:1].isalpha() and following.lower() not in _PREPOSITIONS
        )
        if possessive:  # "Norway's capital", "giraffes' necks"
            plural = lower == "their" and referent[-1].lower().endswith("s")
            out.extend([*referent[:-1], referent[-1] + ("'" if plural else "'s")])
        else:
            out.extend(referent)
    if [t.lower() for t in out] == [t.lower() for t in tokens] and tokens == _tokens(text):
        return None
    if any(t.lower() in ("they", "them", "their") for t in out) and not resolved_there:
        return None
    return _join(out)
