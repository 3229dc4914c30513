"""Text for the ear: cleaning model output and cutting a token stream into speakable pieces."""

from __future__ import annotations

import re

import pytest

from voicebot.speakable import SpeakableChunker, clean_for_speech, count_sentences

# --- clean_for_speech -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "This is **bold** and *italic* and __under__ and ~~gone~~.",
            "This is bold and italic and under and gone.",
        ),
        ("***Both*** at once.", "Both at once."),
        ("# Heading\nText here.", "Heading. Text here."),
        ("### Deep heading", "Deep heading"),
        ("- first item\n- second item\n* third item", "first item. second item. third item"),
        ("1. one\n2) two", "one. two"),
        ("> quoted text", "quoted text"),
        ("See [the docs](https://example.com/docs) now.", "See the docs now."),
        ("Go to https://example.com/x?y=1 for more.", "Go to a link for more."),
        ("Visit www.example.org today.", "Visit a link today."),
        ("Run `pip install x` first.", "Run pip install x first."),
        ("Here:\n```python\nprint('hi')\n```\nDone.", "Here: Done."),
        ("Great job 🎉👍!", "Great job!"),
        ("Thumbs 👍🏽 up ❤️ ok", "Thumbs up ok"),
        ("Line one\nline two", "Line one. line two"),
        ("Spaced   out\ttext .", "Spaced out text."),
    ],
)
def test_clean_for_speech(text: str, expected: str) -> None:
    assert clean_for_speech(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "It costs $5.99, or €4 — 50% off!",
        "Is 2 + 2 = 4? Yes.",
        "Price: £10; that's all.",
        "Café au lait, naïve résumé.",
        "Wait... really?",
    ],
)
def test_clean_for_speech_keeps_currency_numbers_and_punctuation(text: str) -> None:
    assert clean_for_speech(text) == text


def test_clean_for_speech_drops_an_unclosed_code_fence_to_the_end() -> None:
    assert clean_for_speech("Try this:\n```\nrm -rf /\nmore code") == "Try this:"


def test_clean_for_speech_of_only_markup_is_empty() -> None:
    assert clean_for_speech("**  ** 🎉 __ ~~") == ""


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("Use my_var_name here.", ["Use", "my", "var", "name", "here"]),
        ("2*3*4 is 24.", ["2", "times", "3", "times", "4", "is", "24"]),
    ],
)
def test_clean_for_speech_intraword_markers_are_not_emphasis(text: str, tokens: list[str]) -> None:
    assert re.findall(r"[A-Za-z]+|\d+", clean_for_speech(text)) == tokens


# --- count_sentences ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("   ", 0),
        ("One sentence", 1),
        ("Hello there. How are you? Fine!", 3),
        ("Dr. Smith paid 3.5 dollars. He left.", 2),
    ],
)
def test_count_sentences(text: str, expected: int) -> None:
    assert count_sentences(text) == expected


# --- SpeakableChunker -----------------------------------------------------------------------


def feed_all(chunker: SpeakableChunker, fragments: list[str]) -> list[tuple[int, list[str]]]:
    """Feed fragments one by one; return (index of the fragment, pieces) whenever pieces come."""
    out: list[tuple[int, list[str]]] = []
    for i, fragment in enumerate(fragments):
        pieces = chunker.feed(fragment)
        if pieces:
            out.append((i, pieces))
    return out


TOKENS = [
    "The", " capital", " of", " France", " is", " Paris", ",", " a", " lovely", " city", ".",
    " It", " has", " museums", ",", " parks", " and", " cafes", ".",
    " Dr", ".", " Smith", " paid", " 3", ".", "5", " euros", ".", " Bye", ".",
]  # fmt: skip


def test_first_piece_is_cut_at_a_comma_before_the_rest_arrives() -> None:
    chunker = SpeakableChunker()
    emitted = feed_all(chunker, TOKENS[:8])
    # The comma is token 6; the cut is made as soon as the space after it arrives (token 7).
    assert emitted == [(7, ["The capital of France is Paris,"])]
    assert chunker.pieces_emitted == 1


def test_later_pieces_are_whole_sentences() -> None:
    chunker = SpeakableChunker()
    emitted = feed_all(chunker, TOKENS)
    assert emitted == [
        (7, ["The capital of France is Paris,"]),
        (11, ["a lovely city."]),
        (19, ["It has museums, parks and cafes."]),
        (28, ["Dr. Smith paid 3.5 euros."]),
    ]
    assert chunker.flush() == ["Bye."]
    assert chunker.pieces_emitted == 5


def test_first_piece_needs_enough_words_before_the_comma() -> None:
    chunker = SpeakableChunker()
    assert chunker.feed("Yes, of ") == []
    assert chunker.feed("course, I can ") == []
    assert chunker.feed("help, ") == ["Yes, of course, I can help,"]


def test_first_piece_min_words_is_configurable() -> None:
    chunker = SpeakableChunker(first_piece_min_words=1)
    assert chunker.feed("Yes, of course") == ["Yes,"]


def test_first_piece_can_be_a_short_whole_sentence() -> None:
    chunker = SpeakableChunker()
    assert chunker.feed("Sure! Here") == ["Sure!"]


def test_abbreviations_and_decimals_do_not_end_a_sentence() -> None:
    chunker = SpeakableChunker()
    chunker.feed("Hello there. ")
    pieces: list[str] = []
    for word in "Dr. Smith measured 3.5 litres. Then he left. ".split(" "):
        pieces += chunker.feed(word + " ")
    pieces += chunker.flush()
    assert pieces == ["Hello there.", "Dr. Smith measured 3.5 litres.", "Then he left."]


def test_code_fence_split_across_fragments_is_skipped() -> None:
    chunker = SpeakableChunker()
    fragments = [
        "Here is the code:\n",
        "``",
        "`python\n",
        "x = 1, y = 2. print(x). Done.\n",
        "``",
        "`",
        "\nThat sets x. ",
        "Ok.",
    ]
    pieces = [p for _, batch in feed_all(chunker, fragments) for p in batch] + chunker.flush()
    assert pieces == ["Here is the code:", "That sets x.", "Ok."]


def test_unclosed_code_fence_at_the_end_is_dropped() -> None:
    chunker = SpeakableChunker()
    assert chunker.feed("Hi there") == []
    assert chunker.feed("``") == []
    assert chunker.feed("`python\nprint(1)\n") == []
    assert chunker.flush() == ["Hi there"]


def test_lone_backticks_at_the_end_are_not_a_fence() -> None:
    chunker = SpeakableChunker()
    assert chunker.feed("Use the ``") == []
    assert chunker.feed(" quotes, please") == ["Use the quotes,"]
    assert chunker.flush() == ["please"]


def test_flush_returns_the_tail_once() -> None:
    chunker = SpeakableChunker()
    assert chunker.feed("Hello world") == []
    assert chunker.flush() == ["Hello world"]
    assert chunker.flush() == []


def test_flush_of_nothing_is_empty() -> None:
    assert SpeakableChunker().flush() == []


def test_pieces_without_letters_or_digits_are_not_emitted() -> None:
    chunker = SpeakableChunker()
    pieces = chunker.feed("🎉🎉🎉. ") + chunker.feed("👍! ") + chunker.feed("*** ")
    pieces += chunker.flush()
    assert pieces == []
    assert chunker.pieces_emitted == 0


def test_emoji_sentences_are_dropped_but_text_after_them_is_kept() -> None:
    chunker = SpeakableChunker()
    pieces = chunker.feed("🎉🎉. ") + chunker.feed("Great news, everyone here. ")
    pieces += chunker.feed("More.") + chunker.flush()
    assert pieces == ["Great news, everyone here.", "More."]


def test_long_run_without_punctuation_is_cut_at_word_boundaries() -> None:
    words = [f"w{i}{'x' * (i % 7)}" for i in range(120)]
    chunker = SpeakableChunker(max_piece_chars=80)
    pieces: list[str] = []
    for word in words:
        pieces += chunker.feed(word + " ")
    # Pieces came out while feeding; only a short tail waited for the end.
    tail = chunker.flush()
    assert len(tail) == 1
    assert len(tail[0]) <= 80
    pieces += tail
    assert len(pieces) > 5
    assert all(len(piece) <= 80 for piece in pieces)
    # No word is split: the pieces hold exactly the words, in order.
    assert " ".join(pieces).split() == words


def test_long_run_is_cut_at_the_limit_when_there_is_no_space() -> None:
    chunker = SpeakableChunker(max_piece_chars=50)
    pieces = chunker.feed("a" * 120) + chunker.flush()
    assert pieces == ["a" * 50, "a" * 50, "a" * 20]


def test_first_piece_breaks_before_a_conjunction_when_there_is_no_comma() -> None:
    chunker = SpeakableChunker()
    text = "The moon is about 384,000 kilometers away and it takes three days to get there."
    pieces: list[str] = []
    for word in text.split(" "):
        pieces += chunker.feed(word + " ")
    pieces += chunker.flush()
    assert pieces == [
        "The moon is about 384,000 kilometers away",
        "and it takes three days to get there.",
    ]


def test_first_piece_keeps_short_phrases_whole() -> None:
    chunker = SpeakableChunker()
    pieces = chunker.feed("I like dogs and cats. ") + chunker.flush()
    assert pieces == ["I like dogs and cats."]


def test_the_first_piece_can_be_cut_at_the_last_whole_word() -> None:
    chunker = SpeakableChunker()
    assert chunker.feed("The moon is about 1,784,567") == []
    assert chunker.cut_first_piece() == ["The moon is about"]  # "1,784,567" may go on
    assert chunker.feed(".852 miles away from Earth. It is") == [
        "1,784,567.852 miles away from Earth."
    ]
    assert chunker.cut_first_piece() == []  # only ever the first piece
    assert chunker.flush() == ["It is"]


def test_a_forced_first_piece_needs_enough_whole_words() -> None:
    chunker = SpeakableChunker(first_piece_min_words=4)
    chunker.feed("One two three fo")
    assert chunker.cut_first_piece() == []
    chunker.feed("ur ")
    assert chunker.cut_first_piece() == ["One two three four"]
