"""Writing and speaking one reply: dialogue -> chat model -> chunker -> voice, all streamed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .config import Profile, Settings
from .dialogue import Dialogue
from .engines import Engines, history_turns
from .events import AudioOut, Event, ReplyText
from .speakable import SpeakableChunker
from .workers import Priority

__all__ = ["NO_ANSWER", "ReplyOutcome", "Responder", "Sink", "ms_between"]

_LOGGER = logging.getLogger(__name__)

NO_ANSWER = "Sorry, I don't have an answer to that."
"""Said when the chat model writes nothing that can be spoken."""

Sink = Callable[[Event], Awaitable[None]]
"""Where a session's events go."""

_ENDS_SENTENCE = re.compile(r"[.!?\u2026][\"')\]]*$")
"""A piece that ends a sentence (the first piece may end at a comma: not a sentence)."""
_AUDIO_CHUNK_S = 0.2
"""Reply audio is handed to the sink in chunks this long, so an interruption flushes quickly."""


def ms_between(start: float, end: float) -> float:
    """Milliseconds from ``start`` to ``end`` (clock seconds), rounded to 0.1 ms."""
    return round((end - start) * 1000.0, 1)


@dataclass
class ReplyOutcome:
    """What a reply produced."""

    text: str = ""
    """The reply's spoken pieces, joined."""
    pieces: list[str] = field(default_factory=list)
    """The pieces, in order."""
    metrics_ms: dict[str, float] = field(default_factory=dict)
    """Stage latencies, from the reference time given to :meth:`Responder.respond`."""
    tokens: int = 0
    """Text fragments the model produced."""


class Responder:
    """Writes and speaks one reply: dialogue -> chat model -> chunker -> voice, all streamed."""

    def __init__(
        self,
        engines: Engines,
        settings: Settings,
        profile: Profile,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create a responder for a profile (its voice, speaking rate and chat model).

        Args:
            engines: The shared models.
            settings: Settings.
            profile: The persona (its chat model, voice and speaking rate).
            clock: Monotonic seconds; the metrics are measured with it.
        """
        self.engines = engines
        self.settings = settings
        self.profile = profile
        self.clock = clock
        """The clock the metrics read."""
        self.llm = engines.chat_model(profile.llm_reference)
        self.voice = engines.voice(profile.voice)
        self.speaking_rate = profile.speaking_rate or settings.tts.speaking_rate
        self.history_turns = history_turns(settings, profile.llm_model)
        """Earlier turns sent to the chat model with each prompt."""

    @property
    def output_sample_rate_hz(self) -> int:
        """Rate of the reply audio."""
        return self.voice.sample_rate_hz

    def synthesize(self, text: str, cancel: threading.Event) -> Iterator[bytes]:
        """The voice's audio for ``text`` in ~200 ms chunks (synchronous: run it in a worker)."""
        audio = self.voice.synthesize(text, cancel, speaking_rate=self.speaking_rate)
        return _chunked(audio, self.voice.sample_rate_hz)

    async def say(self, text: str, turn_id: int, emit: Sink, *, cancel: threading.Event) -> None:
        """Speak a fixed text (a greeting): one :class:`ReplyText`, then its audio.

        Args:
            text: What to say.
            turn_id: Stamped on every event.
            emit: Where events go.
            cancel: Set to stop the voice between chunks.
        """
        worker = self.engines.worker(self.voice, "tts")
        await emit(ReplyText(turn_id, text))
        first = True
        async for pcm in worker.stream(functools.partial(self.synthesize, text, cancel)):
            await emit(AudioOut(turn_id, pcm, self.voice.sample_rate_hz, text if first else ""))
            first = False

    async def respond(
        self,
        dialogue: Dialogue,
        turn_id: int,
        emit: Sink,
        *,
        cancel: threading.Event,
        speak: bool = True,
        started_at: float | None = None,
        metrics_ms: dict[str, float] | None = None,
    ) -> ReplyOutcome:
        """Stream the reply to the dialogue's last user turn.

        Emits :class:`ReplyText` for each piece (just before it is spoken) and
        :class:`AudioOut` chunks. Cancelling the calling task (barge-in) stops the model and the
        voice within one token or one chunk.

        Args:
            dialogue: The conversation, its last turn the user's.
            turn_id: The turn answered (stamped on every event).
            emit: Where events go.
            cancel: Set to stop the engines (the caller sets it on barge-in).
            speak: False for text-only replies.
            started_at: Reference time on :attr:`clock` for the metrics (default: now).
            metrics_ms: Where stage latencies are written as they happen (so a reply that is
                interrupted keeps what was measured); a new dict by default. A stage already
                in it is not measured again.
        """
        clock = self.clock
        t0 = clock() if started_at is None else started_at
        outcome = ReplyOutcome(metrics_ms={} if metrics_ms is None else metrics_ms)
        metrics = outcome.metrics_ms
        llm_worker = self.engines.worker(self.llm, "llm")
        tts_worker = self.engines.worker(self.voice, "tts")
        llm_stop = threading.Event()  # enough sentences, or the reply was cancelled
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        max_sentences = self.settings.llm.max_sentences

        def stopper() -> bool:
            return cancel.is_set() or llm_stop.is_set()

        fixed = None
        if dialogue.turns[-1:] and dialogue.turns[-1].role == "user":
            # A memory command ("forget where I live") or a question about a remembered fact
            # ("where do I live?"): the dialogue has the answer.
            fixed = dialogue.direct_reply or dialogue.answer_from_memory(
                unknown=self.history_turns == 0
            )
        if fixed is not None:
            await self._respond_fixed(fixed, turn_id, emit, cancel, speak, outcome, t0)
            return outcome
        messages = await llm_worker.run(
            dialogue.messages,
            self.llm.count_tokens,
            self.settings.llm.context_tokens,
            self.history_turns,
        )

        first_piece_wait_s = self.settings.session.first_piece_max_wait_ms / 1000

        async def write() -> None:
            chunker = SpeakableChunker()
            sentences = 0
            first_token_at = 0.0
            stop_event = _AnyEvent(cancel, llm_stop)
            # Once the first words are out the rest has the time they take to say: the model
            # may serve another user's first words in between (a model that allows it).
            first_out = threading.Event()

            async def put(piece: str) -> None:
                nonlocal sentences
                metrics.setdefault("first_piece", ms_between(t0, clock()))
                first_out.set()
                await pieces.put(piece)
                sentences += _ENDS_SENTENCE.search(piece) is not None

            try:
                async for fragment in llm_worker.stream(
                    lambda: self.llm.stream(messages, stop_event),
                    yield_when=first_out if getattr(self.llm, "resumable", False) else None,
                ):
                    if outcome.tokens == 0:
                        first_token_at = clock()
                        metrics.setdefault("llm_first_token", ms_between(t0, first_token_at))
                    outcome.tokens += 1
                    for piece in chunker.feed(fragment):
                        await put(piece)
                    if (
                        first_piece_wait_s
                        and chunker.pieces_emitted == 0
                        and clock() - first_token_at >= first_piece_wait_s
                    ):
                        for piece in chunker.cut_first_piece():
                            await put(piece)
                    if max_sentences and sentences >= max_sentences:
                        llm_stop.set()
                        break
                if not stopper():
                    for piece in chunker.flush():
                        await put(piece)
                metrics["llm_done"] = ms_between(t0, clock())
            finally:
                await pieces.put(None)

        writer = asyncio.create_task(write(), name=f"llm-turn-{turn_id}")
        spoken_s = 0.0
        try:
            while (piece := await pieces.get()) is not None:
                outcome.pieces.append(piece)
                await emit(ReplyText(turn_id, piece))
                if not speak:
                    continue
                first = True
                # The first piece is what the user waits for; later ones have time.
                priority = Priority.URGENT if len(outcome.pieces) == 1 else Priority.NORMAL
                async for pcm in tts_worker.stream(
                    functools.partial(self.synthesize, piece, cancel), priority=priority
                ):
                    metrics.setdefault("first_audio", ms_between(t0, clock()))
                    await emit(
                        AudioOut(turn_id, pcm, self.voice.sample_rate_hz, piece if first else "")
                    )
                    first = False
                    spoken_s += len(pcm) / 2 / self.voice.sample_rate_hz
                if spoken_s >= self.settings.session.max_reply_s:
                    llm_stop.set()  # long enough: no more pieces after this one
                    break
            await writer
        except BaseException:
            cancel.set()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            raise
        if not outcome.pieces and not cancel.is_set():
            # The model wrote nothing that can be said (an end of text at once, only symbols):
            # the user is told so rather than left waiting in silence.
            _LOGGER.warning("turn %d: the chat model wrote nothing to say", turn_id)
            await self._respond_fixed(NO_ANSWER, turn_id, emit, cancel, speak, outcome, t0)
            return outcome
        outcome.text = " ".join(outcome.pieces)
        return outcome

    async def _respond_fixed(
        self,
        text: str,
        turn_id: int,
        emit: Sink,
        cancel: threading.Event,
        speak: bool,
        outcome: ReplyOutcome,
        t0: float,
    ) -> None:
        """Say a reply that needs no chat model, as :meth:`respond` would have said it."""
        outcome.pieces.append(text)
        outcome.text = text
        outcome.metrics_ms.setdefault("first_piece", ms_between(t0, self.clock()))
        await emit(ReplyText(turn_id, text))
        if not speak:
            return
        tts_worker = self.engines.worker(self.voice, "tts")
        first = True
        async for pcm in tts_worker.stream(
            functools.partial(self.synthesize, text, cancel), priority=Priority.URGENT
        ):
            outcome.metrics_ms.setdefault("first_audio", ms_between(t0, self.clock()))
            await emit(AudioOut(turn_id, pcm, self.voice.sample_rate_hz, text if first else ""))
            first = False


class _AnyEvent(threading.Event):
    """An event that reads as set when any of its parts is set."""

    def __init__(self, *parts: threading.Event) -> None:
        super().__init__()
        self._parts = parts

    def is_set(self) -> bool:
        return super().is_set() or any(p.is_set() for p in self._parts)


def _chunked(audio: Iterable[bytes], sample_rate_hz: int) -> Iterator[bytes]:
    """Re-cut a stream of PCM16 buffers into ~200 ms chunks."""
    size = 2 * round(_AUDIO_CHUNK_S * sample_rate_hz)
    for pcm in audio:
        for start in range(0, len(pcm), size):
            yield pcm[start : start + size]
