"""Answer quality: the strict scoring rules, the question sets, and the default model's floors.

The floors apply to the TEST set only (written before any tuning, never tuned on); the
numbers they guard are in docs/quality.md, with the set each one comes from.
"""

from __future__ import annotations

import pytest

from voicebot.config import Settings
from voicebot.engines import Engines
from voicebot.engines.fake import FakeChat, FakeStt, FakeTts, FakeVad
from voicebot.quality import (
    CATEGORIES,
    SETS,
    Item,
    answer_right,
    check_facts,
    evaluate,
    load_set,
    memory_only,
    numbers_in,
)


def item(**fields: object) -> Item:
    base: dict[str, object] = {"id": "x", "category": "factual", "turns": ("Q?",)}
    base.update(fields)
    return Item(**base)  # type: ignore[arg-type]


# --- the sets -----------------------------------------------------------------------------------


def test_the_sets_are_large_enough_and_do_not_share_items() -> None:
    dev, test = load_set("dev"), load_set("test")
    assert len(test) >= 80
    assert {i.category for i in dev} == {i.category for i in test} == set(CATEGORIES)
    assert not {i.id for i in dev} & {i.id for i in test}
    assert not {i.turns for i in dev} & {i.turns for i in test}
    for entry in dev + test:
        assert entry.turns and entry.category in CATEGORIES
        if entry.category in ("factual", "memory", "followup"):
            assert entry.expect or entry.expect_all, entry.id


def test_the_dev_set_is_dev_toml_and_the_new_follow_ups() -> None:
    dev, new = load_set("dev"), load_set("dev_followups")
    assert {i.source for i in dev} == {"dev", "dev_followups"}
    assert len({i.id for i in dev}) == len(dev) and len(new) >= 60
    assert {i.category for i in new} == {"followup"}
    assert all(i.id.startswith("dev2-follow-") for i in new)
    assert {i.id for i in new} <= {i.id for i in dev}
    summary = memory_only(["dev"])["dev"].summary()
    assert "dev_followups" in summary and "  total " in summary


# --- strict scoring -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("A spider has 8 legs.", [8.0]),
        ("twenty-four hours", [24.0]),
        ("one hundred degrees", [100.0]),
        ("May 3rd", [3.0]),
        ("It has 12 cats and two dogs", [12.0, 2.0]),
        ("No numbers here", []),
    ],
)
def test_numbers_in(text: str, numbers: list[float]) -> None:
    assert numbers_in(text) == numbers


@pytest.mark.parametrize(
    ("answer", "right"),
    [
        ("You have 2 cats.", True),
        ("You have two cats.", True),
        ("You have 12 cats.", False),
        ("You have 2 cats and 3 dogs.", False),
        ("I'm sorry, I can't know how many cats you have.", False),
        ("", False),
    ],
)
def test_a_wrong_number_beside_the_right_one_fails(answer: str, right: bool) -> None:
    entry = item(turns=("I have two cats.", "How many cats do I have?"), expect=("two", "2"))
    assert answer_right(entry, answer)[0] is right


def test_numbers_the_user_said_are_allowed() -> None:
    entry = item(turns=("What is five times three?",), expect=("15", "fifteen"))
    assert answer_right(entry, "Five times three is 15.")[0]
    assert not answer_right(entry, "Five times three is 16.")[0]


@pytest.mark.parametrize(
    ("answer", "right"),
    [
        ("The capital of France is Paris.", True),
        ("It is not Paris.", False),
        ("The capital isn't Paris, it's Lyon.", False),
        ("As an AI language model, I think it is Paris.", False),
        ("Lyon.", False),
    ],
)
def test_refusals_and_negations_fail(answer: str, right: bool) -> None:
    entry = item(expect=("paris",), reject=("lyon",))
    assert answer_right(entry, answer)[0] is right


def test_rejected_words_under_a_negation_are_fine() -> None:
    entry = item(expect=("porto",), reject=("lyon",))
    assert answer_right(entry, "You live in Porto now, not Lyon.")[0]
    assert not answer_right(entry, "You live in Porto and Lyon.")[0]


def test_expect_all_needs_every_word() -> None:
    entry = item(expect_all=("yuki", "kyoto"))
    assert answer_right(entry, "Your name is Yuki and you live in Kyoto.")[0]
    assert not answer_right(entry, "Your name is Yuki.")[0]


def test_facts_are_checked_for_misses_and_false_ones() -> None:
    entry = item(category="trap", facts=("Ada",), not_facts=("your name is tom",))
    assert check_facts(entry, {"name": "Ada"}) == ([], [])
    assert check_facts(entry, {"name": "Ada", "day": "Monday"}) == ([], ["day: Monday"])
    assert check_facts(entry, {}) == (["Ada"], [])
    friend = item(category="trap", facts=("Tom",), not_facts=("your name is tom",))
    assert check_facts(friend, {"friend's name": "Tom"}) == ([], [])
    assert check_facts(friend, {"name": "Tom"}) == ([], ["name: Tom"])


# --- memory without a model: the grammar's precision and recall on the test set ------------------


def test_memory_on_the_test_set_stores_no_false_fact_and_recalls_the_paraphrases() -> None:
    report = memory_only(["test"])["test"]
    assert report.false_facts == 0, [r.false_facts for r in report.results if r.false_facts]
    clean, traps = report.traps_clean()
    assert clean == traps
    kept, asked = report.recall()
    assert kept >= 0.8 * asked


# --- the runner on a fake model: both sets, every category, memory answers without the model ------


def test_the_runner_reports_both_sets_per_category(settings: Settings) -> None:
    engines = Engines(
        stt=FakeStt(), llm=FakeChat(["I am not sure."]), tts=FakeTts(), vad_factory=FakeVad
    )
    report = evaluate(engines, settings)
    assert list(report.sets) == ["dev", "test"]
    summary = report.summary()
    for category in CATEGORIES:
        assert f"  {category} " in summary
    test = report.sets["test"]
    # A model that knows nothing: the facts are still stored and answered from memory.
    assert test.category("factual")[0] == 0
    assert test.category("memory") == (20, 20)
    assert test.false_facts == 0
    data = test.as_dict()
    assert data["categories"]["trap"] == [16, 16] and len(data["items"]) == len(load_set("test"))


# --- the default model, through the production reply path ---------------------------------------


@pytest.mark.models
def test_the_default_assistant_on_the_test_set(real_engines: Engines, settings: Settings) -> None:
    engines = Engines(
        stt=real_engines.stt,
        llm=real_engines.llm,
        tts=FakeTts(),
        vad_factory=real_engines.vad_factory,
    )
    report = evaluate(engines, settings, sets=["test"]).sets["test"]
    wrong = [r.as_dict() for r in report.results if not r.passed]
    score = {c: report.category(c) for c in CATEGORIES}
    assert report.traps_clean()[0] == report.traps_clean()[1], wrong
    assert report.false_facts == 0, wrong
    # Measured (docs/quality.md): memory 20/20, follow-ups 6/15 then 7/15 with the same
    # handling (runs differ by a few answers; the 70 % target is missed),
    # factual 10/20 (as before this work, 10/20 under the same scoring). One answer of slack
    # where a different CPU's arithmetic may change a greedy answer.
    assert score["memory"][0] >= 0.8 * score["memory"][1], (score, wrong)
    assert score["followup"][0] >= 5, (score, wrong)
    assert score["factual"][0] >= 9, (score, wrong)
    for category in ("multiturn", "correction", "control"):
        assert score[category][0] >= score[category][1] - 1, (score, wrong)
    assert report.mean_words <= 15, (report.mean_words, wrong)


def test_both_sets_are_known() -> None:
    assert SETS == ("dev", "test")
