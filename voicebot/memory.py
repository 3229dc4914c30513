"""What the user tells about themselves, and the commands that show and change it.

A small, general grammar of first-person statements: a subject ("I", "we", "my", "our"), a
verb or copula, and a typed value. Values are typed so a sentence of the right shape but the
wrong content stores nothing: a name is one to three capitalised words after a naming verb
("call me", "I go by", "my name is"), a place is capitalised words after a living or moving
verb ("live in", "moved to", "from"), an age is a bare number after "I'm" or a number of
"years old" ("I am 5 minutes late" has a unit: no age), a job after "I'm a" is a known
occupation. Questions, negations and hypotheticals ("I don't live in Paris", "I want to
visit Japan", "I think...") state nothing. Sentences about anyone else ("my friend's name is
Tom", "it's Monday") never become facts about the user.

Facts are a ``dict`` from a key ("name", "home", "cat's name", "favourite colour") to a
value; :func:`describe_fact` says one back to the user ("you live in Lyon"),
:func:`facts_prompt` states them all for the chat model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "Forget",
    "Recall",
    "answer_question",
    "apply_command",
    "describe_fact",
    "extract",
    "facts_prompt",
    "forget_reply",
    "learn",
    "parse_command",
    "recall_reply",
]

_FILLERS = re.compile(
    r"\b(?:actually|now|just|really|currently|still|also|originally|recently|truly|"
    r"honestly|basically|definitely)\b\s*",
    re.IGNORECASE,
)
"""Adverbs that do not change what a statement says ("I'm actually 31", "I live in X now")."""
_MARKERS = re.compile(
    r"^(?:(?:oh|well|so|yes|yeah|yep|no|nope|sorry|oops|hi|hello|hey|by the way|and|but|"
    r"wait|ok|okay|um|uh|er|please|anyway|right|alright|fyi|in fact|correction|"
    r"just so you know|for the record|let me tell you|you know)\b[,!:]?\s*)+",
    re.IGNORECASE,
)
"""Discourse markers before a statement ("Oops, I'm actually 31", "No wait, call me Katie")."""
_QUESTION_START = re.compile(
    r"^(?:what|who|whom|whose|where|when|why|how|which|is|are|am|was|were|do|does|did|can|"
    r"could|will|would|should|shall|may|have|has)\b",
    re.IGNORECASE,
)
_NEGATED = re.compile(r"\b(?:not|never|no longer|nobody|nothing)\b|n't\b", re.IGNORECASE)
_HYPOTHETICAL = re.compile(
    r"^(?:if|maybe|perhaps)\b|\b(?:would|wish|want|wanted|hope|hoping|plan|planning|"
    r"thinking|think|guess|suppose|believe|might|could|should|'d|going to|gonna|wanna|"
    r"used to|pretend|imagine|let's)\b",
    re.IGNORECASE,
)
_CLAUSE_SPLIT = re.compile(
    r"\s*(?:,|;|\s-\s)\s*(?:and |but |so )?(?=(?:I|I'm|I've|my|My|our|Our|we|We)\b)"
    r"|\s+(?:and|but|so)\s+(?=(?:I|I'm|I've|my|our|we)\b)"
)
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")

_NUMBER = r"(?:\d{1,3}|(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)(?:[- ](?:one|two|three|four|five|six|seven|eight|nine))?|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen)"  # noqa: E501
_UNITS = {
    "minute",
    "minutes",
    "hour",
    "hours",
    "second",
    "seconds",
    "day",
    "days",
    "week",
    "weeks",
    "month",
    "months",
    "year",
    "years",
    "percent",
    "dollars",
    "euros",
    "pounds",
    "miles",
    "kilometers",
    "kilometres",
    "meters",
    "metres",
    "feet",
    "inches",
    "kilos",
    "kg",
    "times",
    "questions",
    "things",
    "ideas",
    "problems",
    "people",
}
"""Nouns after a number that make it a measure, not something owned or an age."""
_MONTHS = {
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
}
_DAYS = {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"}
_NOT_NAMES = _DAYS | {
    "Not",
    "Fine",
    "Good",
    "Great",
    "Okay",
    "Ok",
    "OK",
    "Sorry",
    "Sure",
    "So",
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
    "The",
    "And",
    "But",
    "From",
    "In",
    "At",
    "On",
    "A",
    "An",
    "It",
    "You",
    "Me",
    "Him",
    "Her",
    "Them",
    "Today",
    "Tomorrow",
    "Yesterday",
    "Now",
    "Later",
    "Please",
    "Thanks",
    "Thank",
    "Hello",
    "Hi",
    "Home",
    "English",
    "God",
    "Mom",
    "Mum",
    "Dad",
}
_DEMONYMS = {
    "American",
    "British",
    "English",
    "Scottish",
    "Welsh",
    "Irish",
    "Canadian",
    "Mexican",
    "Brazilian",
    "Argentinian",
    "Argentine",
    "Chilean",
    "Colombian",
    "Peruvian",
    "Cuban",
    "French",
    "German",
    "Italian",
    "Spanish",
    "Portuguese",
    "Dutch",
    "Belgian",
    "Swiss",
    "Austrian",
    "Swedish",
    "Norwegian",
    "Danish",
    "Finnish",
    "Icelandic",
    "Polish",
    "Czech",
    "Slovak",
    "Hungarian",
    "Romanian",
    "Bulgarian",
    "Greek",
    "Turkish",
    "Russian",
    "Ukrainian",
    "Serbian",
    "Croatian",
    "Chinese",
    "Japanese",
    "Korean",
    "Vietnamese",
    "Thai",
    "Filipino",
    "Indonesian",
    "Malaysian",
    "Indian",
    "Pakistani",
    "Bangladeshi",
    "Iranian",
    "Iraqi",
    "Israeli",
    "Egyptian",
    "Moroccan",
    "Nigerian",
    "Kenyan",
    "Ethiopian",
    "Ghanaian",
    "South African",
    "Australian",
    "European",
    "African",
    "Asian",
    "Latino",
    "Latina",
    "Christian",
    "Muslim",
    "Jewish",
    "Catholic",
    "Buddhist",
    "Hindu",
}
"""Capitalised words after "I'm" that are not names."""
_DIETS = {
    "vegetarian",
    "vegan",
    "pescatarian",
    "pescetarian",
    "gluten-free",
    "gluten free",
    "lactose intolerant",
    "diabetic",
    "celiac",
    "coeliac",
    "kosher",
    "halal",
}
_OCCUPATIONS = set(
    """
    accountant actor actress administrator architect artist assistant astronaut athlete
    attorney author baker banker barber barista bartender biologist blogger bookkeeper
    builder butcher carpenter cashier chef chemist cleaner clerk coach composer consultant
    cook counselor counsellor courier dancer dentist designer detective developer dietitian
    director doctor driver economist editor electrician engineer entrepreneur farmer
    firefighter fisherman florist gardener geologist guard guide hairdresser historian
    housekeeper illustrator instructor interpreter janitor jeweler jeweller journalist judge
    lawyer lecturer librarian lifeguard linguist manager mathematician mechanic midwife
    miner model musician nanny nurse officer optician painter paramedic pharmacist
    photographer physician physicist physiotherapist pilot plumber poet policeman
    policewoman politician postman professor programmer psychologist psychiatrist
    receptionist reporter researcher retiree sailor salesman saleswoman scientist
    secretary singer soldier student surgeon tailor teacher technician therapist
    translator tutor veterinarian vet waiter waitress welder writer youtuber
    """.split()
)
"""Jobs recognised after "I'm a": other nouns there ("I'm a big fan") are not jobs."""
_PRONOUN_OBJECTS = {
    "you",
    "your",
    "yours",
    "it",
    "that",
    "this",
    "them",
    "him",
    "her",
    "those",
    "these",
}
_PRONOUN_OBJECTS |= {"me", "myself"}
_PREPOSITION_CUT = re.compile(
    r"\s+(?:at|in|on|with|for|from|since|during|to|every|each|because|when|while)\b.*$",
    re.IGNORECASE,
)
_TRAILERS = re.compile(
    r"\s+(?:these days|nowadays|anymore|any more|for (?:years|ages|a while|a long time|"
    r"\w+ years|\w+ months)|every day|last (?:year|month|week)|this (?:year|month|week)|"
    r"at the moment|right now|too|as well|though|lately|today|already|of course)\b.*$",
    re.IGNORECASE,
)
_ACCUMULATING = {"likes", "dislikes", "allergies", "languages"}
"""Keys whose new values join the old ones instead of replacing them."""


# --- typed values -----------------------------------------------------------------------------


def _capitalised_run(text: str, *, joiners: frozenset[str] = frozenset(), most: int = 3) -> str:
    """The leading capitalised words of ``text`` ("Ada and Bob" -> "Ada")."""
    words: list[str] = []
    for word in text.split():
        bare = word.strip(",.!?;:\"'()")
        if not bare:
            break
        if bare[0].isupper() and bare[0].isalpha():
            words.append(bare)
        elif words and bare in joiners:
            words.append(bare)
        else:
            break
        if word != bare and not word.endswith("'s"):
            break
        if len(words) >= most:
            break
    while words and words[-1] in joiners:
        words.pop()
    return " ".join(words)


def _name(text: str, *, whole: bool = False) -> str:
    """A person's name at the start of ``text`` ("" when it is not one)."""
    name = _capitalised_run(text, most=3)
    if not name:
        return ""
    first = name.split()[0]
    if first in _NOT_NAMES or first in _DEMONYMS or first in _MONTHS:
        return ""
    if whole:
        rest = text[len(name) :].strip(" ,.!?")
        if rest and rest.lower() not in ("here", "speaking", "by the way"):
            return ""
    return name.removesuffix("'s")


_PLACE_JOINERS = frozenset({"de", "da", "do", "del", "della", "di", "of", "upon", "la", "le"})


def _place(text: str) -> str:
    """A place name at the start of ``text`` ("" when it is not one)."""
    lead = ""
    if text.lower().startswith("the "):
        lead, text = "the ", text[4:]
    place = _capitalised_run(text, joiners=_PLACE_JOINERS, most=4)
    if not place or place.split()[0] in _NOT_NAMES or place.split()[0] in _MONTHS:
        return ""
    return lead + place


def _number(text: str) -> int | None:
    """A whole positive number said in digits or words ("34", "thirty-four")."""
    # Imported here: the skills package imports the store, which imports the dialogue.
    from .skills.numbers import parse_number

    value = parse_number(text)
    if value is None or value <= 0 or value.denominator != 1:
        return None
    return int(value)


def _phrase(text: str, *, cut_prepositions: bool = True, most: int = 6) -> str:
    """A noun phrase at the start of ``text``, without trailing time words."""
    value = _TRAILERS.sub("", text.split(",")[0].strip(" .!?"))
    if cut_prepositions:
        value = _PREPOSITION_CUT.sub("", value)
    words = value.split()
    if not words or words[0].lower() in _PRONOUN_OBJECTS:
        return ""
    if words[0].lower() in ("at", "in", "on", "with", "to", "for", "from", "about"):
        return ""
    if len(words) == 1 and words[0].lower().endswith("ly"):
        return ""  # an adverb ("I drive carefully")
    return " ".join(words[:most]).strip(" ,")


# --- the grammar ------------------------------------------------------------------------------

Rule = tuple[str, re.Pattern[str], Callable[[re.Match[str]], tuple[str, str] | None]]


def _r(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def _named(key: str, *, whole: bool = False) -> Callable[[re.Match[str]], tuple[str, str] | None]:
    def value(match: re.Match[str]) -> tuple[str, str] | None:
        name = _name(match.group("v"), whole=whole)
        return (key, name) if name else None

    return value


def _placed(key: str) -> Callable[[re.Match[str]], tuple[str, str] | None]:
    def value(match: re.Match[str]) -> tuple[str, str] | None:
        place = _place(match.group("v"))
        return (key, place) if place else None

    return value


def _phrased(
    key: str, *, cut_prepositions: bool = True, capitalised: bool = False
) -> Callable[[re.Match[str]], tuple[str, str] | None]:
    def value(match: re.Match[str]) -> tuple[str, str] | None:
        phrase = _phrase(match.group("v"), cut_prepositions=cut_prepositions)
        if capitalised and not any(w[:1].isupper() for w in phrase.split()):
            return None
        return (key, phrase) if phrase else None

    return value


def _aged(match: re.Match[str]) -> tuple[str, str] | None:
    age = _number(match.group("v"))
    return ("age", str(age)) if age is not None and 0 < age < 125 else None


def _job(match: re.Match[str]) -> tuple[str, str] | None:
    phrase = _phrase(match.group("v"), most=4)
    words = phrase.lower().split()
    if not words or words[-1].rstrip("s") not in _OCCUPATIONS and words[-1] not in _OCCUPATIONS:
        return None
    return "job", phrase


def _owned_name(match: re.Match[str]) -> tuple[str, str] | None:
    name = _name(match.group("v"))
    owner = match.group("k").lower()
    if not name or owner in ("name", "names"):
        return None
    return f"{owner}'s name", name


def _favourite(match: re.Match[str]) -> tuple[str, str] | None:
    phrase = _phrase(match.group("v"), cut_prepositions=False, most=5)
    thing = match.group("k").strip().lower().replace("color", "colour")
    return (f"favourite {thing}", phrase) if phrase and len(thing.split()) <= 2 else None


def _counted(match: re.Match[str]) -> tuple[str, str] | None:
    noun = match.group("k").lower()
    if noun in _UNITS or not noun.endswith(("s", "ren", "ice")):  # plurals: kids, children, mice
        return None
    return f"number of {noun}", f"{match.group('n').lower()} {noun}"


def _birthday(match: re.Match[str]) -> tuple[str, str] | None:
    phrase = _phrase(match.group("v"), cut_prepositions=False, most=4)
    if not any(m.lower() in phrase.lower() for m in _MONTHS) and not re.search(r"\d", phrase):
        return None
    return "birthday", phrase


def _diet(match: re.Match[str]) -> tuple[str, str] | None:
    value = match.group("v").lower().strip(" .!")
    return ("diet", value) if value in _DIETS else None


def _demonym(match: re.Match[str]) -> tuple[str, str] | None:
    value = _capitalised_run(match.group("v"), most=2)
    rest = match.group("v")[len(value) :].strip(" ,.!?")
    return ("nationality", value) if value in _DEMONYMS and not rest else None


_I = r"(?:I|we)"
_IM = r"(?:I'm|I am|we're|we are)"
RULES: list[Rule] = [
    # names
    ("name", _r(r"^(?:my|the) name(?:'s| is) (?P<v>.+)$"), _named("name")),
    ("name", _r(r"^name's (?P<v>.+)$"), _named("name")),
    ("name", _r(r"\bcall(?:s|ed)? me (?P<v>.+)$"), _named("name")),
    ("name", _r(r"^I go by (?P<v>.+)$"), _named("name")),
    ("name", _r(r"^(?:I'm|I am) (?:called|named|known as) (?P<v>.+)$"), _named("name")),
    ("name", re.compile(r"^(?:I'm|I am|i'm|i am) (?P<v>[^\W\d_].*)$"), _named("name", whole=True)),
    ("nationality", re.compile(r"^(?:I'm|I am) (?P<v>[A-Z].*)$"), _demonym),
    # where they live, come from, were born, grew up
    (
        "home",
        _r(
            rf"^{_I}(?:'ve| have)? (?:live|lives|living|stay|reside|moved|relocated) "
            r"(?:in|to) (?P<v>.+)$"
        ),
        _placed("home"),
    ),
    ("home", _r(rf"^{_IM} (?:living|based|staying|settled) in (?P<v>.+)$"), _placed("home")),
    ("home", _r(r"^(?:my|our) home(?: town)? is (?:in )?(?P<v>.+)$"), _placed("home")),
    ("origin", _r(rf"^{_IM} from (?P<v>.+)$"), _placed("origin")),
    ("origin", _r(rf"^{_I} come from (?P<v>.+)$"), _placed("origin")),
    ("birthplace", _r(r"^I was born in (?P<v>.+)$"), _placed("birthplace")),
    ("grew up", _r(r"^I grew up in (?P<v>.+)$"), _placed("grew up")),
    # age: a bare number, or one of years old; a number with any other unit is not an age
    ("age", _r(rf"^(?:I'm|I am) (?P<v>{_NUMBER})(?: years? old| years of age)?$"), _aged),
    ("age", _r(rf"^(?:I'm|I am) (?P<v>{_NUMBER}) years? old\b"), _aged),
    ("age", _r(rf"^I turned (?P<v>{_NUMBER})(?:$| (?:last|this|on|in|today|yesterday)\b)"), _aged),
    ("age", _r(rf"^my age is (?P<v>{_NUMBER})$"), _aged),
    # work
    (
        "job",
        _r(r"^I(?:'ve been| have been|'m| am)? work(?:s|ing)? as (?:an? )?(?P<v>.+)$"),
        _phrased("job"),
    ),
    ("job", _r(r"^my (?:job|occupation|profession) is (?:an? )?(?P<v>.+)$"), _phrased("job")),
    ("job", _r(rf"^{_IM} (?:an? )(?P<v>.+)$"), _job),
    ("job", _r(r"^(?:I'm|I am) (?P<v>retired|unemployed|self-employed)$"), _phrased("job")),
    ("workplace", _r(r"^I work (?:at|for) (?P<v>.+)$"), _phrased("workplace")),
    ("teaches", _r(r"^I teach (?P<v>.+)$"), _phrased("teaches")),
    ("studies", _r(r"^I(?:'m| am)? stud(?:y|ying) (?P<v>.+)$"), _phrased("studies")),
    # health, habits, things owned
    (
        "allergies",
        _r(rf"^{_IM} (?:very |severely |mildly )?allergic to (?P<v>.+)$"),
        _phrased("allergies"),
    ),
    ("allergies", _r(r"^I have an? (?P<v>.+?) allergy$"), _phrased("allergies")),
    ("diet", _r(rf"^{_IM} (?:an? )?(?P<v>[a-z -]+)$"), _diet),
    ("languages", _r(rf"^{_I} speak (?P<v>.+)$"), _phrased("languages", capitalised=True)),
    ("plays", _r(rf"^{_I} play (?P<v>.+)$"), _phrased("plays")),
    ("car", _r(rf"^{_I} drive (?P<v>.+)$"), _phrased("car")),
    (
        "likes",
        _r(rf"^{_I} (?:like|love|enjoy|adore) (?P<v>.+)$"),
        _phrased("likes", cut_prepositions=False),
    ),
    (
        "likes",
        _r(rf"^{_IM} (?:a )?(?:big |huge )?fan of (?P<v>.+)$"),
        _phrased("likes", cut_prepositions=False),
    ),
    (
        "dislikes",
        _r(rf"^{_I} (?:hate|dislike|detest|can't stand|don't like|do not like) (?P<v>.+)$"),
        _phrased("dislikes", cut_prepositions=False),
    ),
    ("favourite", _r(r"^(?:my|our) favou?rite (?P<k>[a-z ]{2,20}?) is (?P<v>.+)$"), _favourite),
    (
        "favourite",
        _r(r"^(?P<v>[\w' -]+?) (?:is|are) my favou?rite (?P<k>[a-z ]{2,20})$"),
        _favourite,
    ),
    ("birthday", _r(r"^my birthday is (?:on )?(?P<v>.+)$"), _birthday),
    (
        "count",
        _r(rf"^{_I}(?: have|'ve got| have got) (?P<n>{_NUMBER}) (?P<k>[a-z]+)\b"),
        _counted,
    ),
    # names of the user's people and pets ("my dog's name is Rex": the dog's, not the user's)
    (
        "owned name",
        _r(
            r"^(?:my|our) (?P<k>[a-z]+)(?:'s name is|'s name's| is called| is named| name is|"
            r"'s called) (?P<v>.+)$"
        ),
        _owned_name,
    ),
    (
        "owned name",
        _r(
            rf"^{_I}(?: have|'ve got| have got) an? (?:\w+ )?(?P<k>[a-z]+) "
            r"(?:called|named) (?P<v>.+)$"
        ),
        _owned_name,
    ),
]
"""(kind, pattern on one clause, typed value): the whole grammar."""
_NEGATION_OK = {"dislikes"}


def _clauses(text: str) -> list[str]:
    """The declarative clauses of ``text`` (questions dropped), markers and fillers removed."""
    clauses: list[str] = []
    for sentence in _SENTENCES.split(text.replace("\u2019", "'").strip()):
        sentence = sentence.strip()
        if sentence.endswith("?"):
            # "My name is Ada, what is the capital of France?" (Whisper joins them with a
            # comma): the question is the last part; what comes before it may be a statement.
            sentence = sentence.rpartition(",")[0]
        if not sentence:
            continue
        for clause in _CLAUSE_SPLIT.split(sentence):
            clause = _MARKERS.sub("", clause.strip(" .!,;")).strip()
            clause = _FILLERS.sub("", clause).strip(" ,")
            clause = re.sub(r"\s+", " ", clause)
            if clause and not _QUESTION_START.match(clause):
                clauses.append(clause)
    return clauses


def extract(text: str) -> list[tuple[str, str]]:
    """The facts ``text`` states about its speaker, as (key, value), in the order said."""
    found: list[tuple[str, str]] = []
    for clause in _clauses(text):
        negated = bool(_NEGATED.search(clause))
        if _HYPOTHETICAL.search(clause):
            continue
        for kind, pattern, typed in RULES:
            if negated and kind not in _NEGATION_OK:
                continue
            match = pattern.search(clause)
            if match is None:
                continue
            fact = typed(match)
            if fact is not None:
                found.append(fact)
                break
    return found


def learn(text: str, facts: dict[str, str]) -> bool:
    """Add what ``text`` states to ``facts`` (a later statement replaces an earlier one).

    Returns:
        Whether ``facts`` changed.
    """
    changed = False
    for key, value in extract(text):
        old = facts.get(key)
        if key in _ACCUMULATING and old:
            value = old if value.lower() in old.lower() else f"{old} and {value}"
        if old != value:
            facts.pop(key, None)  # a corrected fact moves to the end: newest last
            facts[key] = value
            changed = True
    return changed


# --- saying facts back --------------------------------------------------------------------------

_TEMPLATES: dict[str, tuple[str, str]] = {
    "name": ("your name is {}", "The user's name is {}."),
    "home": ("you live in {}", "The user lives in {}."),
    "origin": ("you are from {}", "The user is from {}."),
    "birthplace": ("you were born in {}", "The user was born in {}."),
    "grew up": ("you grew up in {}", "The user grew up in {}."),
    "age": ("you are {} years old", "The user is {} years old."),
    "job": ("you work as {}", "The user works as {}."),
    "workplace": ("you work at {}", "The user works at {}."),
    "teaches": ("you teach {}", "The user teaches {}."),
    "studies": ("you study {}", "The user studies {}."),
    "allergies": ("you are allergic to {}", "The user is allergic to {}."),
    "diet": ("you are {}", "The user is {}."),
    "nationality": ("you are {}", "The user is {}."),
    "languages": ("you speak {}", "The user speaks {}."),
    "plays": ("you play {}", "The user plays {}."),
    "car": ("you drive {}", "The user drives {}."),
    "likes": ("you like {}", "The user likes {}."),
    "dislikes": ("you dislike {}", "The user dislikes {}."),
    "birthday": ("your birthday is {}", "The user's birthday is {}."),
}


def _with_article(value: str) -> str:
    if re.match(r"(?i)(?:an?|the) ", value) or value.lower() in ("retired", "unemployed"):
        return value
    return ("an " if value[:1].lower() in "aeiou" else "a ") + value


def _forms(key: str, value: str) -> tuple[str, str]:
    if key == "job":
        if value.lower() in ("retired", "unemployed", "self-employed"):
            return f"you are {value}", f"The user is {value}."
        value = _with_article(value)
    if key.startswith("number of "):
        return f"you have {value}", f"The user has {value}."
    second, third = _TEMPLATES.get(key, (f"your {key} is {{}}", f"The user's {key} is {{}}."))
    return second.format(value), third.format(value)


def describe_fact(key: str, value: str) -> str:
    """A fact said back to the user ("you live in Lyon")."""
    return _forms(key, value)[0]


def facts_prompt(facts: dict[str, str]) -> str:
    """The user's facts as sentences for the chat model's system prompt."""
    return " ".join(_forms(key, value)[1] for key, value in facts.items())


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


# --- commands: what do you know about me, forget ------------------------------------------------


@dataclass(frozen=True)
class Recall:
    """ "What do you know about me?": list the facts."""


@dataclass(frozen=True)
class Forget:
    """ "Forget where I live": drop some facts, or all of them."""

    keys: tuple[str, ...] | None
    """The keys to drop (``None``: every fact); empty when nothing stored matches."""
    what: str = ""
    """What the user asked to forget, said back ("where you live")."""


MemoryCommand = Recall | Forget

_RECALL = re.compile(
    r"\bwhat (?:else )?(?:do|did|have|can) you (?:know|remember|recall|learn(?:ed|t)?|stored?|"
    r"kept|keep|saved?|got)(?: so far)? (?:about|of|on) me\b"
    r"|\bwhat do you (?:remember|know)\s*\??$"
    r"|\bwhat (?:have|did) I (?:told|tell) you(?: about (?:me|myself))?\b"
    r"|\b(?:tell|show|list) me (?:what|everything) you (?:know|remember)\b"
    r"|\bwhat (?:facts|things) do you (?:know|have|remember)\b"
    r"|\bdo you (?:know|remember) anything about me\b",
    re.IGNORECASE,
)
_FORGET = re.compile(
    r"^(?:please |can you |could you |would you |i want you to |now )*"
    r"(?:forget|delete|erase|remove|clear|wipe|drop|unlearn|stop remembering|don't remember|"
    r"do not remember)\b(?P<rest>.*)$",
    re.IGNORECASE,
)
_EVERYTHING = re.compile(
    r"^(?:about )?(?:me|myself)\b|\b(?:everything|all|anything)\b.*\b(?:me|myself|know|told|"
    r"remember|stored|facts)\b|^(?:all )?(?:my|the) (?:facts|data|details|information|info)\b"
    r"|^(?:everything|all of it|all that)$",
    re.IGNORECASE,
)
_KEY_WORDS: list[tuple[re.Pattern[str], tuple[str, ...], str]] = [
    (
        _r(
            r"\bmy name\b|\bwhat my name is\b|\bwhat (?:i'm|i am) called\b|\bwhat to call me\b"
            r"|\bwho i am\b"
        ),
        ("name",),
        "your name",
    ),
    (
        _r(
            r"\bwhere i (?:live|stay|moved|am living|'m living)\b|\bmy (?:home|address|city|town)\b"
        ),
        ("home",),
        "where you live",
    ),
    (_r(r"\bwhere (?:i'm|i am|i come) from\b|\bmy origin\b"), ("origin",), "where you are from"),
    (_r(r"\bmy age\b|\bhow old i am\b"), ("age",), "your age"),
    (
        _r(r"\bmy (?:job|work|occupation|profession)\b|\bwhat i do\b|\bwhere i work\b"),
        ("job", "workplace", "teaches"),
        "your job",
    ),
    (_r(r"\bmy allerg"), ("allergies",), "your allergies"),
    (_r(r"\bmy birthday\b|\bwhen i was born\b"), ("birthday",), "your birthday"),
    (_r(r"\bwhere i was born\b"), ("birthplace",), "where you were born"),
]


def parse_command(text: str, facts: dict[str, str]) -> MemoryCommand | None:
    """A request to show or change what is remembered, or ``None`` for anything else.

    "Forget it" or "forget about that" are not memory commands (nothing about the user).
    """
    plain = text.replace("\u2019", "'").strip()
    if _RECALL.search(plain):
        return Recall()
    clause = _MARKERS.sub("", plain.strip(" .!?")).strip()
    match = _FORGET.match(clause)
    if match is None:
        return None
    rest = _MARKERS.sub("", match.group("rest").strip(" .!?,")).strip()
    rest = re.sub(r"^(?:about|that|what you know about) ", "", rest, flags=re.IGNORECASE)
    if _EVERYTHING.search(rest):
        return Forget(None, "everything")
    keys: list[str] = []
    what = ""
    for pattern, key_set, said in _KEY_WORDS:
        if pattern.search(rest):
            keys.extend(k for k in key_set if k in facts)
            what = what or said
    lowered = f" {rest.lower()} "
    for key, value in facts.items():
        if key in keys:
            continue
        key_words = [w for w in re.findall(r"[a-z]+", key) if w not in ("name", "s", "of")]
        mentions_key = key_words and all(re.search(rf"\b{w}s?\b", lowered) for w in key_words)
        if mentions_key or value.lower() in lowered:
            keys.append(key)
            what = what or ("your " + key if mentions_key else value)
    if not keys and not what and not re.search(r"\b(?:my|me|i|i'm|myself)\b", rest, re.I):
        return None  # "forget it": not about the user
    return Forget(tuple(keys), what or rest)


def apply_command(command: MemoryCommand, facts: dict[str, str]) -> str:
    """Carry out a command on ``facts`` and return the spoken answer."""
    if isinstance(command, Recall):
        return recall_reply(facts)
    if command.keys is None:
        had = bool(facts)
        facts.clear()
        return forget_reply(None, had=had)
    for key in command.keys:
        facts.pop(key, None)
    return forget_reply(command, had=bool(command.keys))


def recall_reply(facts: dict[str, str]) -> str:
    """The answer to "what do you know about me?"."""
    if not facts:
        return "I don't know anything about you yet."
    return f"You told me that {_join([describe_fact(k, v) for k, v in facts.items()])}."


def forget_reply(command: Forget | None, *, had: bool) -> str:
    """The answer to a forget command (``None``: forget everything)."""
    if command is None:
        if not had:
            return "I didn't know anything about you anyway."
        return "Okay, I've forgotten everything you told me about yourself."
    if not had:
        return "I didn't have that stored anyway."
    return f"Okay, I've forgotten {command.what}."


# --- questions about the user, answered from what is remembered ---------------------------------

_QUESTION_NOISE = re.compile(
    r"^(?:(?:and|so|ok|okay|hey|please|now|then|well|quick question)\b,?\s*)*"
    r"(?:(?:do|did) you (?:remember|know|recall)|can you (?:tell me|remind me)|"
    r"(?:tell|remind) me|could you tell me|i forgot)?,?\s*",
    re.IGNORECASE,
)
_ABOUT_USER: list[tuple[re.Pattern[str], tuple[str, ...], str]] = [
    (
        _r(
            r"^(?:what(?: is|'s) my name|who am i|my name|what am i called|"
            r"what (?:should|do|can|will|would) you call me|"
            r"what (?:do|does) (?:people|they|my \w+|everyone|everybody|folks) call me)$"
        ),
        ("name",),
        "your name",
    ),
    (
        _r(
            r"^(?:where do (?:i|we) live|where (?:am i|are we) living|"
            r"where(?: is|'s) (?:my|our) home|"
            r"(?:which|what) (?:city|town|country|place) do (?:i|we) live in|"
            r"where did (?:i|we) move(?: to)?|where i live)$"
        ),
        ("home",),
        "where you live",
    ),
    (_r(r"^(?:where am i from|where do i come from)$"), ("origin", "birthplace", "grew up"), ""),
    (_r(r"^(?:where was i born)$"), ("birthplace",), "where you were born"),
    (_r(r"^(?:where did i grow up)$"), ("grew up",), ""),
    (_r(r"^(?:how old am i|what(?: is|'s) my age|my age)$"), ("age",), "your age"),
    (
        _r(
            r"^(?:what(?: is|'s) my (?:job|occupation|profession|line of work)|what do i do"
            r"(?: for (?:a living|work))?|what do i work as)$"
        ),
        ("job", "workplace", "teaches"),
        "what you do",
    ),
    (_r(r"^(?:where do i work)$"), ("workplace", "job"), ""),
    (_r(r"^(?:what am i allergic to|what(?: is|'s|are) my allerg(?:y|ies))$"), ("allergies",), ""),
    (_r(r"^(?:when is my birthday|when was i born)$"), ("birthday",), ""),
]
_VERB_KEYS = {
    "teach": "teaches",
    "study": "studies",
    "play": "plays",
    "drive": "car",
    "speak": "languages",
    "like": "likes",
    "love": "likes",
    "enjoy": "likes",
    "hate": "dislikes",
    "dislike": "dislikes",
}
_WHAT_DO_I = re.compile(
    r"^(?:what|which) (?:(?P<noun>[a-z]+) )?do (?:i|we) (?P<verb>[a-z]+)$", re.IGNORECASE
)
_WHAT_IS_MY = re.compile(
    r"^(?:what|who)(?: is|'s| are) (?:my|our) (?P<k>[a-z' ]+?)(?P<named> called| named| name)?$",
    re.IGNORECASE,
)
_HOW_MANY = re.compile(r"^how many (?P<k>[a-z]+) do (?:i|we) have$", re.IGNORECASE)


def _lookup(keys: tuple[str, ...], facts: dict[str, str]) -> tuple[str, str] | None:
    for key in keys:
        if key in facts:
            return key, facts[key]
    return None


def _said(key: str, value: str) -> str:
    text = describe_fact(key, value)
    return f"{text[:1].upper()}{text[1:]}."


def answer_question(text: str, facts: dict[str, str], *, unknown: bool = False) -> str | None:
    """The answer to a question about the user ("Where do I live?") from ``facts``.

    Args:
        text: What the user asked.
        facts: What is remembered.
        unknown: Also answer a question about something not remembered ("You haven't told me
            where you live."); only right when the model sees no history that could hold it.

    Returns:
        ``None`` when ``text`` is not such a question (or asks for something not remembered
        and ``unknown`` is off): the chat model answers it.
    """
    plain = text.replace("\u2019", "'").strip()
    if not plain.endswith("?") and not _QUESTION_START.match(plain):
        return None
    question = _QUESTION_NOISE.sub("", plain.rstrip(" ?.!")).strip().lower()
    question = re.sub(
        r"\s+", " ", question.replace("favorite", "favourite").replace("color", "colour")
    )
    for pattern, keys, missing in _ABOUT_USER:
        if pattern.match(question):
            found = _lookup(keys, facts)
            if found is not None:
                return _said(*found)
            return f"You haven't told me {missing} yet." if unknown and missing else None
    match = _WHAT_DO_I.match(question)
    if match:
        noun = (match.group("noun") or "").rstrip("s")
        keys = tuple(k for k in (_VERB_KEYS.get(match.group("verb")), noun, noun + "s") if k)
        found = _lookup(keys, facts)
        return _said(*found) if found is not None else None
    match = _WHAT_IS_MY.match(question)
    if match:
        thing = match.group("k").strip().removesuffix("'s")
        keys = (thing, f"{thing}'s name", thing.rstrip("s"), f"{thing}s")
        found = _lookup(keys, facts)
        if found is not None:
            return _said(*found)
        asked = f"your {thing}'s name" if match.group("named") else f"your {thing}"
        return f"You haven't told me {asked} yet." if unknown else None
    match = _HOW_MANY.match(question)
    if match:
        noun = match.group("k")
        found = _lookup((f"number of {noun}",), facts)
        if found is not None:
            return _said(*found)
        return f"You haven't told me how many {noun} you have." if unknown else None
    return None
