"""Conversation state: facts the user shares, the system prompt, and the budgeted history."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from voicebot.config import Profile
from voicebot.dialogue import Dialogue, Turn, extract_facts
from voicebot.engines.base import Message

PROFILE = Profile(name="test", display_name="Nova", system_prompt="You are {name}.")


def count_tokens(messages: Sequence[Message]) -> int:
    """Words plus 4 per message: easy to reckon by hand."""
    return sum(len(m["content"].split()) + 4 for m in messages)


def roles(messages: Sequence[Message]) -> list[str]:
    return [m["role"] for m in messages]


def contents(messages: Sequence[Message]) -> list[str]:
    return [m["content"] for m in messages]


# --- extract_facts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("My name is Ada.", {"name": "Ada"}),
        ("my name's Ada Lovelace.", {"name": "Ada Lovelace"}),
        ("Call me Bob", {"name": "Bob"}),
        ("I am called Zed.", {"name": "Zed"}),
        ("Hi, I'm Ada.", {"name": "Ada"}),
        ("This is Ada.", {}),
        ("I'm tired.", {}),
        ("I am fine", {}),
        ("I'm Fine.", {}),
        ("Well, I'm Sorry.", {}),
        ("I'm going home.", {}),
        ("I live in New York", {"home": "New York"}),
        ("I'm from Paris", {"origin": "Paris"}),
        ("I come from Buenos Aires.", {"origin": "Buenos Aires"}),
        ("I am 42 years old.", {"age": "42"}),
        ("I'm 7", {"age": "7"}),
        ("I work as a software engineer.", {"job": "software engineer"}),
        ("I'm a teacher.", {"job": "teacher"}),
        ("I like hiking in the mountains.", {"likes": "hiking in the mountains"}),
        ("I really love jazz and blues, mostly.", {"likes": "jazz and blues"}),
        ("I hate mushrooms.", {"dislikes": "mushrooms"}),
        ("I don't like rain!", {"dislikes": "rain"}),
        ("My favourite colour is green.", {"favourite colour": "green"}),
        ("My favorite food is pizza!", {"favourite food": "pizza"}),
        ("my dog is called Rex", {"dog's name": "Rex"}),
        ("My cat's name is Tom.", {"cat's name": "Tom"}),
        ("What time is it?", {}),
    ],
)
def test_extract_facts(text: str, expected: dict[str, str]) -> None:
    assert extract_facts(text) == expected


def test_extract_facts_finds_several_facts_in_one_text() -> None:
    assert extract_facts("I'm Ada. I'm 36. I live in London.") == {
        "name": "Ada",
        "age": "36",
        "home": "London",
    }


def test_extract_facts_likes_are_cut_to_six_words() -> None:
    facts = extract_facts("I love one two three four five six seven eight nine ten")
    assert facts == {"likes": "one two three four five six"}


def test_extract_facts_updates_the_given_dict_and_later_statements_win() -> None:
    facts = {"name": "Ada", "age": "30"}
    result = extract_facts("Call me Bob, please.", facts)
    assert result is facts
    assert facts == {"name": "Bob", "age": "30"}
    extract_facts("I live in Rome.", facts)
    extract_facts("We moved to Oslo", facts)
    assert facts["home"] == "Oslo"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Call me Bob. Actually, my name is Robert.", {"name": "Robert"}),
        ("I live in Paris. Now I live in Berlin.", {"home": "Berlin"}),
    ],
)
def test_extract_facts_later_statement_in_the_same_text_wins(
    text: str, expected: dict[str, str]
) -> None:
    assert extract_facts(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("My name is Zoë.", {"name": "Zoë"}),
        ("My name is José.", {"name": "José"}),
        ("I'm from Zürich.", {"origin": "Zürich"}),
    ],
)
def test_extract_facts_keeps_non_ascii_letters(text: str, expected: dict[str, str]) -> None:
    assert extract_facts(text) == expected


# --- the system prompt ----------------------------------------------------------------------


def test_system_prompt_without_facts_is_the_profile_prompt() -> None:
    assert Dialogue(PROFILE).system_prompt() == "You are Nova."


def test_system_prompt_states_the_facts() -> None:
    dialogue = Dialogue(PROFILE)
    dialogue.add_user("My name is Ada. I live in Paris. I work as an engineer.")
    dialogue.add_user("I'm 36. My favourite colour is green. My dog is called Rex.")
    prompt = dialogue.system_prompt()
    assert prompt.startswith("You are Nova. ")
    for sentence in (
        "The user's name is Ada.",
        "The user lives in Paris.",
        "The user works as an engineer.",
        "The user is 36 years old.",
        "The user's favourite colour is green.",
        "The user's dog's name is Rex.",
    ):
        assert sentence in prompt


def test_system_prompt_articles_for_jobs() -> None:
    dialogue = Dialogue(PROFILE)
    dialogue.add_user("I work as a software engineer.")
    assert "The user works as a software engineer." in dialogue.system_prompt()
    dialogue.add_user("I'm a teacher.")
    assert "The user works as a teacher." in dialogue.system_prompt()


def test_assistant_turns_do_not_teach_facts() -> None:
    dialogue = Dialogue(PROFILE)
    dialogue.add_assistant("My name is Nova. I live in the cloud.")
    assert dialogue.facts == {}
    assert dialogue.system_prompt() == "You are Nova."


def test_resumed_turns_are_learned_from() -> None:
    dialogue = Dialogue(
        PROFILE,
        conversation_id="c1",
        turns=[Turn("user", "Call me Bob.", 1.0), Turn("assistant", "Hi Bob.", 2.0)],
    )
    assert dialogue.conversation_id == "c1"
    assert dialogue.facts == {"name": "Bob"}
    assert [t.text for t in dialogue.turns] == ["Call me Bob.", "Hi Bob."]


def test_add_user_and_add_assistant_build_turns() -> None:
    dialogue = Dialogue(PROFILE)
    user = dialogue.add_user("Hello", stt=12.5)
    reply = dialogue.add_assistant("Hi th", interrupted=True)
    assert (user.role, user.text, user.metrics_ms, user.interrupted) == (
        "user",
        "Hello",
        {"stt": 12.5},
        False,
    )
    assert (reply.role, reply.text, reply.interrupted) == ("assistant", "Hi th", True)
    assert dialogue.turns == [user, reply]


# --- messages -------------------------------------------------------------------------------


def test_messages_start_with_the_system_prompt_and_alternate() -> None:
    dialogue = Dialogue(PROFILE)
    dialogue.add_user("Hello")
    dialogue.add_assistant("Hi")
    dialogue.add_user("How are you?")
    assert dialogue.messages() == [
        {"role": "system", "content": "You are Nova."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi"},
        {"role": "user", "content": "How are you?"},
    ]


def test_messages_merge_consecutive_turns_of_the_same_role() -> None:
    dialogue = Dialogue(PROFILE)
    dialogue.add_user("Hello")
    dialogue.add_user("are you there?")
    dialogue.add_assistant("Yes.")
    dialogue.add_assistant("I am.")
    dialogue.add_user("Good")
    assert dialogue.messages()[1:] == [
        {"role": "user", "content": "Hello are you there?"},
        {"role": "assistant", "content": "Yes. I am."},
        {"role": "user", "content": "Good"},
    ]


def test_messages_skip_empty_turns_and_merge_around_them() -> None:
    dialogue = Dialogue(PROFILE)
    dialogue.add_user("one")
    dialogue.add_assistant("", interrupted=True)
    dialogue.add_user("two")
    dialogue.add_assistant("   ")
    assert dialogue.messages()[1:] == [{"role": "user", "content": "one two"}]


def test_messages_without_budget_keep_everything() -> None:
    dialogue = Dialogue(PROFILE)
    for i in range(20):
        dialogue.add_user(f"question {i}")
        dialogue.add_assistant(f"answer {i}")
    assert len(dialogue.messages()) == 41
    assert len(dialogue.messages(count_tokens, budget_tokens=0)) == 41


def five_turn_dialogue() -> Dialogue:
    # Tokens with count_tokens: system 7, then 7, 6, 7, 6, 6 (39 in all).
    dialogue = Dialogue(PROFILE)
    dialogue.add_user("one two three")
    dialogue.add_assistant("four five")
    dialogue.add_user("six seven eight")
    dialogue.add_assistant("nine ten")
    dialogue.add_user("eleven twelve")
    return dialogue


def test_budget_that_fits_everything_keeps_everything() -> None:
    messages = five_turn_dialogue().messages(count_tokens, budget_tokens=39)
    assert count_tokens(messages) == 39
    assert contents(messages)[1:] == [
        "one two three",
        "four five",
        "six seven eight",
        "nine ten",
        "eleven twelve",
    ]


def test_budget_drops_the_oldest_turns_first_and_restarts_on_a_user_turn() -> None:
    messages = five_turn_dialogue().messages(count_tokens, budget_tokens=38)
    # "one two three" no longer fits; "four five" would then lead, so it goes too.
    assert messages[0] == {"role": "system", "content": "You are Nova."}
    assert contents(messages)[1:] == ["six seven eight", "nine ten", "eleven twelve"]
    assert roles(messages) == ["system", "user", "assistant", "user"]


def test_budget_is_respected_exactly_at_the_boundary() -> None:
    dialogue = five_turn_dialogue()
    assert contents(dialogue.messages(count_tokens, budget_tokens=26))[1:] == [
        "six seven eight",
        "nine ten",
        "eleven twelve",
    ]
    assert contents(dialogue.messages(count_tokens, budget_tokens=25))[1:] == ["eleven twelve"]


def test_tiny_budget_keeps_the_system_prompt_and_the_newest_user_turn() -> None:
    messages = five_turn_dialogue().messages(count_tokens, budget_tokens=1)
    assert messages == [
        {"role": "system", "content": "You are Nova."},
        {"role": "user", "content": "eleven twelve"},
    ]


def test_trimming_keeps_a_contiguous_recent_history() -> None:
    dialogue = Dialogue(PROFILE)
    dialogue.add_user("hi")
    dialogue.add_assistant("a b c d e f g h i j k l m n o p q r s t")
    dialogue.add_user("ok")
    # system 7 + "ok" 5 = 12; the long reply (24) does not fit in 20, and the short old
    # "hi" (5) would, but must not be kept across the gap.
    messages = dialogue.messages(count_tokens, budget_tokens=20)
    assert contents(messages)[1:] == ["ok"]


def test_trimmed_history_with_a_greeting_starts_with_the_user() -> None:
    dialogue = Dialogue(PROFILE)
    dialogue.add_assistant("Hi, I'm Nova.")
    dialogue.add_user("Hello")
    messages = dialogue.messages(count_tokens, budget_tokens=1000)
    assert roles(messages) == ["system", "user"]


def test_facts_survive_trimming() -> None:
    dialogue = Dialogue(PROFILE)
    dialogue.add_user("My name is Ada.")
    dialogue.add_assistant("Nice to meet you.")
    for i in range(10):
        dialogue.add_user(f"tell me fact number {i}")
        dialogue.add_assistant(f"here is fact number {i}")
    dialogue.add_user("What is my name?")
    messages = dialogue.messages(count_tokens, budget_tokens=40)
    assert count_tokens(messages) <= 40
    assert all("My name is Ada." not in m["content"] for m in messages[1:])
    assert messages[0]["content"] == "You are Nova. The user's name is Ada."
    assert messages[-1] == {"role": "user", "content": "What is my name?"}


# --- memory commands, forgetting, resuming with stored facts ---------------------------------


def test_a_memory_command_is_answered_by_the_dialogue() -> None:
    dialogue = Dialogue(PROFILE)
    dialogue.add_user("My name is Yuki. I live in Kyoto.")
    assert dialogue.direct_reply is None
    version = dialogue.facts_version
    dialogue.add_user("What do you know about me?")
    assert dialogue.direct_reply == "You told me that your name is Yuki and you live in Kyoto."
    assert dialogue.facts_version == version
    dialogue.add_assistant(dialogue.direct_reply)
    dialogue.add_user("Forget where I live.")
    assert dialogue.direct_reply == "Okay, I've forgotten where you live."
    assert dialogue.facts == {"name": "Yuki"}
    assert dialogue.facts_version == version + 1
    dialogue.add_user("What is the capital of France?")
    assert dialogue.direct_reply is None


def test_forget_drops_one_fact_or_all() -> None:
    dialogue = Dialogue(PROFILE)
    dialogue.add_user("I'm Ada and I live in Lyon.")
    assert dialogue.forget("home")
    assert not dialogue.forget("home")
    assert dialogue.facts == {"name": "Ada"}
    assert dialogue.forget()
    assert dialogue.facts == {}
    assert not dialogue.forget()


def test_resumed_with_stored_facts_does_not_learn_again() -> None:
    turns = [Turn("user", "I live in Lyon.", 1.0), Turn("assistant", "Nice.", 2.0)]
    assert Dialogue(PROFILE, turns=turns).facts == {"home": "Lyon"}
    resumed = Dialogue(PROFILE, turns=turns, facts={})
    assert resumed.facts == {}
    assert len(resumed.turns) == 2


def test_forgetting_by_voice_holds_when_facts_are_learned_again_from_turns() -> None:
    turns = [Turn("user", "I live in Lyon."), Turn("user", "Forget where I live.")]
    assert Dialogue(PROFILE, turns=turns).facts == {}


# --- follow-ups without history ------------------------------------------------------------


def test_a_follow_up_is_rewritten_and_gets_the_last_exchange_when_no_history_is_given() -> None:
    dialogue = Dialogue(PROFILE)
    dialogue.add_user("How many legs does a spider have?")
    dialogue.add_assistant("A spider has eight legs.")
    dialogue.add_user("And an ant?")
    messages = dialogue.messages(history_turns=0)
    assert contents(messages)[1:] == [
        "How many legs does a spider have?",
        "A spider has eight legs.",
        "How many legs does an ant have?",
    ]
    assert [t.text for t in dialogue.turns][-1] == "And an ant?"  # the user's words are kept
    assert contents(dialogue.messages())[-1] == "And an ant?"  # history: the model sees it all


def test_a_follow_up_that_cannot_be_rewritten_gets_the_last_exchange() -> None:
    dialogue = Dialogue(PROFILE)
    dialogue.add_user("What is the capital of France?")
    dialogue.add_assistant("Paris.")
    dialogue.add_user("Tell me a joke.")
    dialogue.add_assistant("Why did the chicken cross the road?")
    dialogue.add_user("Why did it?")
    assert contents(dialogue.messages(history_turns=0))[1:] == [
        "Tell me a joke.",
        "Why did the chicken cross the road?",
        "Why did it?",
    ]


def test_a_refusal_is_not_given_with_the_rewritten_follow_up() -> None:
    dialogue = Dialogue(PROFILE)
    dialogue.add_user("I'm flying to Lima on Friday.")
    dialogue.add_assistant("I'm sorry, but as an AI I cannot book flights.")
    dialogue.add_user("Which country is that in?")
    assert contents(dialogue.messages(history_turns=0))[1:] == ["Which country is Lima in?"]


def test_a_question_that_stands_alone_gets_no_history() -> None:
    dialogue = Dialogue(PROFILE)
    dialogue.add_user("What is the capital of France?")
    dialogue.add_assistant("Paris.")
    dialogue.add_user("What is the capital of Spain?")
    assert contents(dialogue.messages(history_turns=0))[1:] == ["What is the capital of Spain?"]


def test_with_history_corrected_and_forgotten_statements_are_left_out() -> None:
    dialogue = Dialogue(PROFILE)
    dialogue.add_user("I live in Lyon.")
    dialogue.add_assistant("Lyon is lovely.")
    dialogue.add_user("Actually, I live in Porto now.")
    dialogue.add_assistant("Porto is lovely too.")
    dialogue.add_user("My name is Ada.")
    dialogue.add_assistant("Hi Ada.")
    dialogue.forget("name")
    dialogue.add_user("Where do I live?")
    assert contents(dialogue.messages())[1:] == [
        "Actually, I live in Porto now.",
        "Porto is lovely too.",
        "Where do I live?",
    ]
