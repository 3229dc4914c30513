"""When has the user finished? End of turn from silence and words, and early transcripts.

While the user is silent the session transcribes what it has so far (a :class:`Speculation`)
and asks the chat model how likely those words are a finished turn (:class:`TurnEnd`). The
silence that ends the turn follows from that probability: short after words that sound
finished, long after words that do not ("I want to"), the plain setting otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .config import SegmenterSettings
from .dialogue import Dialogue
from .engines.base import Message
from .workers import ModelWorker, Priority

__all__ = ["Speculation", "TurnEnd", "same_words", "with_user_turn", "words_to_judge"]

_LOGGER = logging.getLogger(__name__)

_WORD = re.compile(r"[\w']+")
_JUDGE_HISTORY_MESSAGES = 2
"""Earlier messages shown to the end-of-turn judge: the assistant's last words (a question
answered by one word is a finished turn) and the user's turn before them."""

Judge = Callable[[Sequence[Message]], float]
"""End-of-turn probability of the last message, the user's (a ``TurnDetector`` method)."""


def words_to_judge(text: str) -> str:
    """The user's words as the end-of-turn judge sees them: as Whisper wrote them.

    Whisper ends fragments with a full stop too ("I want to."), but removing it is worse: an
    instruct model that was not trained as a turn detector reads a statement without its full
    stop as unfinished. Measured on SmolLM2-135M-Instruct (CTranslate2, 16 sentences):
    "Tell me a joke." 0.575, without the stop 0.0002; fragments with Whisper's stop score
    0.0001-0.225, finished sentences 0.001-0.685 (docs/architecture.md).
    """
    return text.strip()


def _ends_sentence(text: str) -> bool:
    text = text.rstrip()
    return bool(text) and text[-1] in ".?!" and not text.endswith("...")


def same_words(a: str, b: str) -> bool:
    """Two transcripts say the same words (case and punctuation aside)."""
    return _WORD.findall(a.casefold()) == _WORD.findall(b.casefold())


def with_user_turn(dialogue: Dialogue, text: str) -> Dialogue:
    """A copy of ``dialogue`` with a candidate user turn appended; the original is untouched."""
    copy = Dialogue(dialogue.profile, conversation_id=dialogue.conversation_id)
    copy.turns = list(dialogue.turns)
    copy.facts = dict(dialogue.facts)
    copy.add_user(text)
    return copy


class TurnEnd:
    """Decides how much silence ends the user's turn, from how finished their words sound."""

    def __init__(
        self,
        settings: SegmenterSettings,
        *,
        judge: Judge | None = None,
        worker: ModelWorker | None = None,
        count_tokens: Callable[[Sequence[Message]], int] | None = None,
        budget_tokens: int = 0,
    ) -> None:
        """Create the rule.

        Args:
            settings: The silences and probability thresholds.
            judge: End-of-turn probability of a conversation whose last message is the
                user's (the chat model's ``end_of_turn_probability``). None: a transcript
                ending in ``. ? !`` counts as finished, anything else as undecided.
            worker: The judge's model worker (required with ``judge``): the judge runs there.
            count_tokens: The chat model's token counter, to fit the messages in the budget.
            budget_tokens: Prompt token budget (0: no limit).
        """
        if judge is not None and worker is None:
            raise ValueError("a judge needs its model's worker")
        self.settings = settings
        """The silences and thresholds."""
        self._judge = judge
        self._worker = worker
        self._count_tokens = count_tokens
        self._budget_tokens = budget_tokens

    @property
    def uses_model(self) -> bool:
        """The words are judged by a model (not by their punctuation)."""
        return self._judge is not None

    def silence_needed_ms(self, probability: float | None) -> int:
        """Silence that ends the turn, given the words' end-of-turn probability (None: unknown)."""
        s = self.settings
        base = s.end_of_turn_silence_ms
        if probability is None:
            return base
        if probability >= s.end_of_turn_likely_probability and s.early_end_of_turn_ms > 0:
            return min(base, s.early_end_of_turn_ms)
        if probability < s.end_of_turn_unlikely_probability:
            return max(base, s.max_end_of_turn_silence_ms)
        return base

    def unlikely(self, probability: float | None) -> bool:
        """The words sound unfinished."""
        return (
            probability is not None and probability < self.settings.end_of_turn_unlikely_probability
        )

    async def probability(self, dialogue: Dialogue) -> float | None:
        """End-of-turn probability of the dialogue's last turn, the user's (None: no opinion).

        The model is asked in its own worker thread; its failure is logged and means None.
        """
        text = dialogue.turns[-1].text if dialogue.turns else ""
        judge, worker = self._judge, self._worker
        if judge is None or worker is None:
            return 1.0 if _ends_sentence(text) else None
        if not words_to_judge(text):
            return None

        def ask() -> float:
            messages = dialogue.messages(
                self._count_tokens, self._budget_tokens, _JUDGE_HISTORY_MESSAGES
            )
            last = messages[-1]
            messages[-1] = {"role": last["role"], "content": words_to_judge(last["content"])}
            return judge(messages)

        try:
            # A few milliseconds, and a user waits on it: ahead of queued replies.
            return float(await worker.run(ask, priority=Priority.URGENT))
        except Exception:  # a judge that fails leaves the silence rule in charge
            _LOGGER.warning("end-of-turn judge failed", exc_info=True)
            return None


@dataclass(eq=False)
class Speculation:
    """An early transcript of the utterance so far, made when the user went quiet."""

    audio_bytes: int
    """Length of the audio transcribed."""
    voiced_ms: int
    """Voiced audio the utterance held then."""
    resumes: int
    """How often the user had resumed talking in the utterance then."""
    speech_end: float
    """Clock time at which the transcribed speech ended."""
    stt: asyncio.Task[str]
    """The transcription."""
    follow_up: asyncio.Task[None] | None = None
    """What runs on the transcript (the end-of-turn judge, a preemptive reply)."""
    probability: float | None = None
    """End-of-turn probability of the transcript, once judged."""
    judged: bool = False
    """The judge has answered (``probability`` may still be None: no opinion)."""

    @property
    def text(self) -> str | None:
        """The transcript, once it is ready (None before, or when it failed)."""
        task = self.stt
        if not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    def cancel(self) -> None:
        """Stop its work: a queued transcription never runs, a running one is dropped."""
        self.stt.cancel()
        if self.follow_up is not None:
            self.follow_up.cancel()
