"""The memory grammar: typed first-person statements, no facts from anything else, commands.

The sentences here are neither in the dev nor in the test question set: they check that the
grammar generalises beyond the wordings it was measured on.
"""

from __future__ import annotations

import pytest

from voicebot.memory import (
    Forget,
    Recall,
    answer_question,
    apply_command,
    describe_fact,
    extract,
    facts_prompt,
    learn,
    parse_command,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Folks call me Dee.", [("name", "Dee")]),
        ("You can call me Mister Brown.", [("name", "Mister Brown")]),
        ("Hey there, I go by Alex these days.", [("name", "Alex")]),
        ("I'm known as Jo at work.", [("name", "Jo")]),
        ("Hello, I'm Grace.", [("name", "Grace")]),
        ("We recently relocated to Vancouver.", [("home", "Vancouver")]),
        ("I'm based in Rio de Janeiro.", [("home", "Rio de Janeiro")]),
        ("We live in the United States.", [("home", "the United States")]),
        ("I come from Lagos originally.", [("origin", "Lagos")]),
        ("I just turned 65.", [("age", "65")]),
        ("I'm seventy-two years old.", [("age", "72")]),
        ("I've been working as a tour guide for ten years.", [("job", "tour guide")]),
        ("I'm an architect.", [("job", "architect")]),
        ("I'm retired.", [("job", "retired")]),
        ("I work for a small startup.", [("workplace", "a small startup")]),
        ("I teach history to teenagers.", [("teaches", "history")]),
        ("I'm severely allergic to shellfish.", [("allergies", "shellfish")]),
        ("I have a gluten allergy.", [("allergies", "gluten")]),
        ("I'm vegan.", [("diet", "vegan")]),
        ("I'm Brazilian.", [("nationality", "Brazilian")]),
        ("I speak Japanese.", [("languages", "Japanese")]),
        ("I play the cello in an orchestra.", [("plays", "the cello")]),
        ("I drive an old Volvo.", [("car", "an old Volvo")]),
        ("I'm a huge fan of opera.", [("likes", "opera")]),
        ("I can't stand cilantro.", [("dislikes", "cilantro")]),
        ("Green tea is my favourite drink.", [("favourite drink", "Green tea")]),
        ("My favorite color is orange.", [("favourite colour", "orange")]),
        ("My birthday is on the 4th of July.", [("birthday", "the 4th of July")]),
        ("We've got four grandchildren.", [("number of grandchildren", "four grandchildren")]),
        ("Our parrot is named Kiwi.", [("parrot's name", "Kiwi")]),
        ("I have a hamster called Nibbles.", [("hamster's name", "Nibbles")]),
        ("My grandma's name is Rosa.", [("grandma's name", "Rosa")]),
        ("My name is Ada, what is the capital of France?", [("name", "Ada")]),
        (
            "My name's Omar and I live in Cairo.",
            [("name", "Omar"), ("home", "Cairo")],
        ),
    ],
)
def test_statements_in_other_wordings_are_remembered(
    text: str, expected: list[tuple[str, str]]
) -> None:
    assert extract(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "It's Friday.",
        "It's Berlin, I think.",
        "Yes, that's London.",
        "This is Paris.",
        "I am 15 minutes early.",
        "I'm 3 hours ahead of you.",
        "I have two questions.",
        "I have 10 minutes.",
        "My neighbour's dog barks a lot.",
        "My uncle lives in Perth.",
        "My father is a pilot.",
        "I'm not from Spain.",
        "I don't live in Rome anymore.",
        "I never worked as a nurse.",
        "I'd like to live in Tokyo.",
        "I want to move to Canada.",
        "If I lived in Paris I would walk everywhere.",
        "I think I'm allergic to something.",
        "I'm sleepy.",
        "I'm at home.",
        "I'm in Madrid for a conference.",
        "Call me back later.",
        "Call me a taxi.",
        "Is my name Jane?",
        "So, is my name Jane?",
        "Well, do I live in Oslo?",
        "Where do I live?",
        "Do I live in Oslo?",
        "I love it!",
        "I like that.",
        "I like your voice.",
        "I play with my kids.",
        "I drive to work.",
        "I speak slowly.",
        "I'm a bit confused.",
        "I'm a big eater.",
        "Let's talk about Italy.",
        "Tell me about Mars.",
        "What about Paris?",
        "I'm Monday's host.",
    ],
)
def test_sentences_that_state_nothing_about_the_user_store_nothing(text: str) -> None:
    assert extract(text) == []


def test_a_later_statement_replaces_an_earlier_one() -> None:
    facts: dict[str, str] = {}
    assert learn("I live in Lyon.", facts)
    assert learn("Actually, we moved to Porto.", facts)
    assert facts == {"home": "Porto"}
    assert not learn("We moved to Porto.", facts)


def test_likes_and_allergies_accumulate() -> None:
    facts: dict[str, str] = {}
    learn("I love jazz.", facts)
    learn("I like hiking.", facts)
    learn("I love jazz.", facts)
    assert facts == {"likes": "jazz and hiking"}


def test_facts_are_described_to_the_user_and_stated_to_the_model() -> None:
    facts = {"name": "Ada", "home": "Lyon", "job": "engineer", "cat's name": "Tom"}
    assert describe_fact("home", "Lyon") == "you live in Lyon"
    assert describe_fact("cat's name", "Tom") == "your cat's name is Tom"
    assert describe_fact("job", "engineer") == "you work as an engineer"
    assert facts_prompt(facts) == (
        "The user's name is Ada. The user lives in Lyon. The user works as an engineer. "
        "The user's cat's name is Tom."
    )


@pytest.mark.parametrize(
    "text",
    [
        "What do you know about me?",
        "what do you remember about me",
        "What have I told you?",
        "Tell me what you know about me.",
        "Do you know anything about me?",
    ],
)
def test_recall_commands(text: str) -> None:
    assert parse_command(text, {}) == Recall()


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("Forget where I live.", ("home",)),
        ("Please forget my name.", ("name",)),
        ("Delete my job.", ("job",)),
        ("Forget my dog's name.", ("dog's name",)),
        ("Forget about my dog.", ("dog's name",)),
        ("Forget that I live in Lyon.", ("home",)),
        ("Forget Lyon.", ("home",)),
        ("Forget my favourite colour", ("favourite colour",)),
    ],
)
def test_forget_commands_name_the_facts(text: str, keys: tuple[str, ...]) -> None:
    facts = {
        "name": "Ada",
        "home": "Lyon",
        "job": "nurse",
        "dog's name": "Rex",
        "favourite colour": "green",
    }
    command = parse_command(text, facts)
    assert isinstance(command, Forget)
    assert command.keys == keys


@pytest.mark.parametrize(
    "text",
    [
        "Forget everything about me.",
        "Delete everything you know about me.",
        "Please erase all my data.",
        "Forget about me.",
    ],
)
def test_forget_everything(text: str) -> None:
    assert parse_command(text, {"name": "Ada"}) == Forget(None, "everything")


@pytest.mark.parametrize(
    "text", ["Forget it.", "Never mind, forget about that.", "I forgot my keys.", "Hello"]
)
def test_other_sentences_are_not_commands(text: str) -> None:
    assert parse_command(text, {"name": "Ada"}) is None


def test_commands_change_the_facts_and_answer() -> None:
    facts = {"name": "Ada", "home": "Lyon"}
    assert apply_command(Recall(), facts) == (
        "You told me that your name is Ada and you live in Lyon."
    )
    command = parse_command("Forget where I live.", facts)
    assert command is not None
    assert apply_command(command, facts) == "Okay, I've forgotten where you live."
    assert facts == {"name": "Ada"}
    command = parse_command("Forget my age.", facts)
    assert command is not None
    assert apply_command(command, facts) == "I didn't have that stored anyway."
    assert apply_command(Forget(None), facts).startswith("Okay, I've forgotten everything")
    assert facts == {}
    assert apply_command(Recall(), facts) == "I don't know anything about you yet."


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What's my name?", "Your name is Dee."),
        ("Do you remember what my name is?", None),
        ("Can you tell me where I live?", "You live in Perth."),
        ("Where do we live?", "You live in Perth."),
        ("What is my parrot called?", "Your parrot's name is Kiwi."),
        ("What's my favorite drink?", "Your favourite drink is green tea."),
        ("What instrument do I play?", "You play the cello."),
        ("How many grandchildren do I have?", "You have four grandchildren."),
        ("What is the capital of France?", None),
        ("Where is my phone?", None),
        ("How old am I?", None),
    ],
)
def test_questions_about_remembered_facts_are_answered_from_memory(
    question: str, answer: str | None
) -> None:
    facts = {
        "name": "Dee",
        "home": "Perth",
        "parrot's name": "Kiwi",
        "favourite drink": "green tea",
        "plays": "the cello",
        "number of grandchildren": "four grandchildren",
    }
    assert answer_question(question, facts) == answer


def test_a_question_about_something_never_told_is_answered_only_when_asked_to() -> None:
    assert answer_question("What is my name?", {}) is None
    assert answer_question("What is my name?", {}, unknown=True) == (
        "You haven't told me your name yet."
    )
    assert answer_question("Where do I live?", {"origin": "Oslo"}, unknown=True) == (
        "You haven't told me where you live yet."
    )
    assert answer_question("What is my parrot called?", {}, unknown=True) == (
        "You haven't told me your parrot's name yet."
    )
    assert answer_question("How many cousins do I have?", {}, unknown=True) == (
        "You haven't told me how many cousins you have."
    )
    assert answer_question("What is my parrot called?", {}) is None
