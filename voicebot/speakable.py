"""Text meant for the ear: cleaning model output and cutting it into speakable pieces."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

__all__ = ["SpeakableChunker", "clean_for_speech", "count_sentences"]

_CODE_FENCE = re.compile(r"```.*?(```|$)", re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`]*)`")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_URL = re.compile(r"https?://\S+|www\.\S+")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s*", re.MULTILINE)
_QUOTE = re.compile(r"^\s{0,3}>\s?", re.MULTILINE)
_BULLET = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+", re.MULTILINE)
_EMPHASIS = re.compile(r"(?<![\w*_~])(\*\*|__|\*|_|~~)(?=\S)(.+?)(?<=\S)\1(?![\w*_~])")
_TIMES = re.compile(r"(?<=\d)\s*[*×]\s*(?=\d)")
_LESS = re.compile(r"(?<=\d)\s*<\s*(?=\d)")
_MORE = re.compile(r"(?<=\d)\s*>\s*(?=\d)")
_RULE = re.compile(r"^\s*([-*_])(?:\s*\1){2,}\s*$", re.MULTILINE)
_STRAY_MARKUP = re.compile(r"[*#|~^<>{}\[\]\\]|(?<!\w)_|_(?!\w)")
_SPACES = re.compile(r"[ \t\r\f\v]+")
_NEWLINES = re.compile(r"\s*\n\s*")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:])")
_CLAUSE_END = re.compile(r"[,;:\u2014]\s")
_PHRASE_BREAK = re.compile(
    r" (?=(?:and|but|or|so|because|which|who|when|while|where|although|though|since|unless)\b)"
)
_SPACE_AFTER = re.compile(r"\S+\s")
_SENTENCE_END = re.compile(r"[.!?\u2026][\"')\]]*\s")


def clean_for_speech(text: str) -> str:
    """Remove what should not be read aloud: markdown, code, links, emoji and symbols.

    Line breaks become sentence breaks; list items stay separate sentences.
    """
    text = _CODE_FENCE.sub(" ", text)
    text = _INLINE_CODE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _URL.sub("a link", text)
    text = _RULE.sub("", text)
    text = _TIMES.sub(" times ", text)
    text = _LESS.sub(" is less than ", text)
    text = _MORE.sub(" is more than ", text)
    text = _HEADING.sub("", text)
    text = _QUOTE.sub("", text)
    text = _BULLET.sub("", text)
    for _ in range(2):  # nested emphasis (***bold italic***)
        text = _EMPHASIS.sub(r"\2", text)
    text = "".join(ch for ch in text if not _is_symbol(ch))
    text = _STRAY_MARKUP.sub(" ", text)
    lines = [line.strip() for line in _NEWLINES.split(text)]
    joined = ""
    for line in lines:
        if not line:
            continue
        if joined and not re.search(r"[.!?:;,]$", joined):
            joined += "."
        joined = f"{joined} {line}" if joined else line
    joined = _SPACES.sub(" ", joined)
    return _SPACE_BEFORE_PUNCT.sub(r"\1", joined).strip()


def _is_symbol(ch: str) -> bool:
    # Emoji and pictographs are category So; keep currency (Sc) and math (Sm) signs,
    # which Piper reads ("$5", "2 + 2"), and drop variation selectors and joiners.
    if ch in "\u200d\ufe0f\ufe0e":
        return True
    category = unicodedata.category(ch)
    return category == "So" or (category == "Sk" and ch not in "^`")


def count_sentences(text: str) -> int:
    """Number of sentences in ``text`` (by pysbd)."""
    return len([s for s in _segmenter().segment(text) if s.strip()]) if text.strip() else 0


_SEGMENTER: Any = None


def _segmenter() -> Any:
    """pysbd's English segmenter (built once: it compiles many regexes)."""
    global _SEGMENTER
    if _SEGMENTER is None:
        import pysbd

        _SEGMENTER = pysbd.Segmenter(language="en", clean=False)
    return _SEGMENTER


class SpeakableChunker:
    """Turns a stream of model text into pieces to speak as soon as they are complete.

    The first piece is cut at the first clause boundary (a comma, colon, semicolon or dash
    after at least ``first_piece_min_words`` words) so speech starts early; later pieces are
    whole sentences, found by pysbd (which knows "Dr." and "3.5" do not end a sentence).
    Code blocks are skipped entirely, even when split across fragments.
    """

    def __init__(self, *, first_piece_min_words: int = 4, max_piece_chars: int = 300) -> None:
        """Create a chunker.

        Args:
            first_piece_min_words: Words needed before a clause boundary cuts the first piece.
            max_piece_chars: A piece longer than this is cut at a word boundary.
        """
        self.first_piece_min_words = first_piece_min_words
        self.max_piece_chars = max_piece_chars
        self._buffer = ""
        self._emitted = 0
        self._in_code = False
        self._ticks = ""

    @property
    def pieces_emitted(self) -> int:
        """Pieces returned so far."""
        return self._emitted

    def feed(self, fragment: str) -> list[str]:
        """Add model text; return the pieces now complete, cleaned for speech."""
        self._buffer += self._strip_code(fragment)
        pieces: list[str] = []
        while True:
            piece = self._next_piece()
            if piece is None:
                break
            pieces.extend(self._clean(piece))
        return pieces

    def cut_first_piece(self) -> list[str]:
        """Cut the first piece now, at the last whole word, if none was emitted yet.

        For when the model is slow to end its first clause: speaking part of it beats
        waiting. Needs ``first_piece_min_words`` whole words; a word still being written
        stays in the buffer.
        """
        if self._emitted:
            return []
        cut = self._buffer.rfind(" ")
        head = self._buffer[:cut] if cut > 0 else ""
        if len(head.split()) < self.first_piece_min_words:
            return []
        self._buffer = self._buffer[cut + 1 :]
        return self._clean(head)

    def flush(self) -> list[str]:
        """Return what remains at the end of the stream."""
        tail = self._strip_code("") if not self._ticks else ("" if self._in_code else self._ticks)
        rest, self._buffer = self._buffer + tail, ""
        return self._clean(rest)

    def _strip_code(self, fragment: str) -> str:
        text = self._ticks + fragment
        body = text.rstrip("`")
        if 0 < len(text) - len(body) < 3:  # maybe the start of a fence split across fragments
            self._ticks, text = text[len(body) :], body
        else:
            self._ticks = ""
        out: list[str] = []
        parts = text.split("```")
        for i, part in enumerate(parts):
            if i > 0:
                self._in_code = not self._in_code
                if not self._in_code:
                    out.append(" ")
            if not self._in_code:
                out.append(part)
        return "".join(out)

    def _next_piece(self) -> str | None:
        buffer = self._buffer
        if self._emitted == 0:
            for match in _CLAUSE_END.finditer(buffer):
                head = buffer[: match.start() + 1]
                if len(head.split()) >= self.first_piece_min_words:
                    self._buffer = buffer[match.end() :]
                    return head
            # No comma yet: a conjunction after a few words is a natural breath too
            # ("The moon is about 384,000 km away | and it takes three days to get there").
            for match in _PHRASE_BREAK.finditer(buffer):
                head = buffer[: match.start()]
                if len(head.split()) >= self.first_piece_min_words + 1 and _SPACE_AFTER.search(
                    buffer, match.end()
                ):
                    self._buffer = buffer[match.start() + 1 :]
                    return head
        if _SENTENCE_END.search(buffer):
            sentences = _segmenter().segment(buffer)
            if len(sentences) > 1:
                head = "".join(sentences[:-1])
                if head.strip():
                    self._buffer = buffer[len(head) :] if buffer.startswith(head) else sentences[-1]
                    return head
        if len(buffer) > self.max_piece_chars:
            cut = buffer.rfind(" ", 0, self.max_piece_chars)
            cut = cut if cut > 0 else self.max_piece_chars
            self._buffer = buffer[cut:]
            return buffer[:cut]
        return None

    def _clean(self, piece: str) -> list[str]:
        text = clean_for_speech(piece)
        if not any(ch.isalnum() for ch in text):
            return []
        self._emitted += 1
        return [text]
