"""The turn-taking loop shared by every transport.

A :class:`Session` takes audio chunks in (any sample rate), finds utterances with the
:class:`~voicebot.segmenter.Segmenter`, and answers each one with a reply task:
speech-to-text, then the chat model's streamed pieces, each spoken by the voice while the
model keeps writing. Everything it does goes to its sink as :mod:`voicebot.events`.

Barge-in: user speech while a reply is being prepared or played cancels the reply task, stops
the engines (their cancel event), and keeps in the history only the part of the reply that
was actually played. In half-duplex mode input is ignored while the assistant speaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import threading
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .audio import StreamResampler, check_pcm16, check_sample_rate
from .config import Profile, Settings
from .dialogue import Dialogue, Turn
from .engines import Engines, history_turns
from .errors import VoicebotError
from .events import (
    AudioOut,
    ErrorEvent,
    Event,
    Interrupted,
    Metrics,
    ReplyDone,
    ReplyText,
    SessionState,
    SpeechStarted,
    SpeechStopped,
    StateChanged,
    Transcript,
)
from .segmenter import (
    PauseBegan,
    Segmenter,
    SpeechBegan,
    SpeechResumed,
    UtteranceDropped,
    UtteranceEnded,
)
from .speakable import SpeakableChunker
from .store import Store

__all__ = ["ReplyOutcome", "Responder", "Session", "Sink"]

_LOGGER = logging.getLogger(__name__)

Sink = Callable[[Event], Awaitable[None]]
"""Where a session's events go."""

_VAD_RATE_HZ = 16000
_ENDS_SENTENCE = re.compile(r"[.!?\u2026][\"')\]]*$")
"""A piece that ends a sentence (the first piece may end at a comma: not a sentence)."""
_AUDIO_CHUNK_S = 0.2
"""Reply audio is handed to the sink in chunks this long, so an interruption flushes quickly."""


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


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

    def __init__(self, engines: Engines, settings: Settings, profile: Profile) -> None:
        """Create a responder for a profile (its voice, speaking rate and chat model)."""
        self.engines = engines
        self.settings = settings
        self.profile = profile
        self.llm = engines.chat_model(profile.llm_model)
        self.voice = engines.voice(profile.voice)
        self.speaking_rate = profile.speaking_rate or settings.tts.speaking_rate
        self.history_turns = history_turns(settings, profile.llm_model)
        """Earlier turns sent to the chat model with each prompt."""

    @property
    def output_sample_rate_hz(self) -> int:
        """Rate of the reply audio."""
        return self.voice.sample_rate_hz

    def _speak(self, text: str, cancel: threading.Event) -> Iterator[bytes]:
        audio = self.voice.synthesize(text, cancel, speaking_rate=self.speaking_rate)
        return _chunked(audio, self.voice.sample_rate_hz)

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
            started_at: ``time.perf_counter()`` reference for the metrics (default: now).
            metrics_ms: Where stage latencies are written as they happen (so a reply that is
                interrupted keeps what was measured); a new dict by default.
        """
        t0 = time.perf_counter() if started_at is None else started_at
        outcome = ReplyOutcome(metrics_ms={} if metrics_ms is None else metrics_ms)
        llm_worker = self.engines.worker(self.llm, "llm")
        tts_worker = self.engines.worker(self.voice, "tts")
        llm_stop = threading.Event()  # enough sentences, or the reply was cancelled
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        max_sentences = self.settings.llm.max_sentences

        def stopper() -> bool:
            return cancel.is_set() or llm_stop.is_set()

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

            async def put(piece: str) -> None:
                nonlocal sentences
                if "first_piece" not in outcome.metrics_ms:
                    outcome.metrics_ms["first_piece"] = _ms(time.perf_counter() - t0)
                await pieces.put(piece)
                sentences += _ENDS_SENTENCE.search(piece) is not None

            try:
                async for fragment in llm_worker.stream(
                    lambda: self.llm.stream(messages, stop_event)
                ):
                    if outcome.tokens == 0:
                        first_token_at = time.perf_counter()
                        outcome.metrics_ms["llm_first_token"] = _ms(first_token_at - t0)
                    outcome.tokens += 1
                    for piece in chunker.feed(fragment):
                        await put(piece)
                    if (
                        first_piece_wait_s
                        and chunker.pieces_emitted == 0
                        and time.perf_counter() - first_token_at >= first_piece_wait_s
                    ):
                        for piece in chunker.cut_first_piece():
                            await put(piece)
                    if max_sentences and sentences >= max_sentences:
                        llm_stop.set()
                        break
                if not stopper():
                    for piece in chunker.flush():
                        await put(piece)
                outcome.metrics_ms["llm_done"] = _ms(time.perf_counter() - t0)
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
                async for pcm in tts_worker.stream(functools.partial(self._speak, piece, cancel)):
                    if "first_audio" not in outcome.metrics_ms:
                        outcome.metrics_ms["first_audio"] = _ms(time.perf_counter() - t0)
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
        outcome.text = " ".join(outcome.pieces)
        return outcome


class _AnyEvent(threading.Event):
    """An event that reads as set when any of its parts is set."""

    def __init__(self, *parts: threading.Event) -> None:
        super().__init__()
        self._parts = parts

    def is_set(self) -> bool:
        return super().is_set() or any(p.is_set() for p in self._parts)


def _add_voice_to_voice(metrics_ms: dict[str, float]) -> None:
    """End of the user's speech to the first reply audio (``first_audio`` is from there)."""
    if "first_audio" in metrics_ms:
        metrics_ms["voice_to_voice"] = metrics_ms["first_audio"]


def _consume_result(task: asyncio.Task[str]) -> None:
    """Retrieve a dropped task's outcome, so its failure is logged rather than lost."""
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.debug("speculative transcription failed", exc_info=task.exception())


def _chunked(audio: Iterable[bytes], sample_rate_hz: int) -> Iterator[bytes]:
    """Re-cut a stream of PCM16 buffers into ~200 ms chunks."""
    size = 2 * round(_AUDIO_CHUNK_S * sample_rate_hz)
    for pcm in audio:
        for start in range(0, len(pcm), size):
            yield pcm[start : start + size]


class _Playback:
    """Estimates what the listener has heard, assuming real-time playback of what was sent."""

    def __init__(self, clock: Callable[[], float], *, realtime: bool = True) -> None:
        self._clock = clock
        self._realtime = realtime  # False: audio goes to a file, "played" the moment it is sent
        self.end = 0.0
        self._chunks: list[tuple[int, float, float]] = []  # piece index, start, end
        self._pieces: list[str] = []

    def add(self, text: str, seconds: float) -> None:
        now = self._clock()
        if text or not self._pieces:
            self._pieces.append(text)
        if not self._realtime:
            seconds = 0.0
        start = max(now, self.end)
        self.end = start + seconds
        self._chunks.append((len(self._pieces) - 1, start, self.end))

    def playing(self) -> bool:
        return self._clock() < self.end

    def heard(self) -> str:
        """The text played so far (a piece cut midway keeps its share of words)."""
        if not self._realtime:
            return " ".join(p for p in self._pieces if p)
        now = self._clock()
        played = [0.0] * len(self._pieces)
        total = [0.0] * len(self._pieces)
        for index, start, end in self._chunks:
            total[index] += end - start
            played[index] += max(0.0, min(now, end) - start)
        words: list[str] = []
        for text, done, length in zip(self._pieces, played, total, strict=True):
            if length <= 0 or done <= 0:
                continue
            piece_words = text.split()
            share = done / length
            keep = len(piece_words) if share >= 0.95 else int(len(piece_words) * share)
            words.extend(piece_words[:keep])
        return " ".join(words)

    def reset(self) -> None:
        self.end = 0.0
        self._chunks.clear()
        self._pieces.clear()


class Session:
    """One conversation over one audio stream."""

    def __init__(
        self,
        engines: Engines,
        settings: Settings,
        *,
        sink: Sink,
        store: Store | None = None,
        profile: str | Profile | None = None,
        conversation_id: str | None = None,
        input_sample_rate_hz: int = 16000,
        barge_in: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        realtime_playback: bool = True,
    ) -> None:
        """Create a session (call :meth:`start`, then :meth:`run` or :meth:`feed`).

        Args:
            engines: The shared models.
            settings: Settings.
            sink: Receives every event.
            store: Where turns are saved (``None`` keeps them in memory only).
            profile: A profile or its name (default: the settings' default profile).
            conversation_id: Resume this stored conversation.
            input_sample_rate_hz: Rate of the audio that will be fed.
            barge_in: Override ``settings.session.barge_in``.
            clock: Monotonic seconds; the playback estimate and echo tail use it.
            realtime_playback: The sink plays audio in real time (False: it writes it to a
                file, so everything sent counts as heard at once).

        Raises:
            ConfigError: unknown profile. AudioFormatError: unsupported input rate.
        """
        self.engines = engines
        self.settings = settings
        self.profile = profile if isinstance(profile, Profile) else settings.get_profile(profile)
        self.store = store
        self._sink = sink
        self._clock = clock
        self._requested_id = conversation_id
        self.barge_in = settings.session.barge_in if barge_in is None else barge_in
        """Whether user speech interrupts the assistant."""
        self.input_sample_rate_hz = check_sample_rate(input_sample_rate_hz)
        """Rate of the fed audio."""
        self.dialogue = Dialogue(self.profile)
        """The conversation state."""
        self.responder = Responder(engines, settings, self.profile)
        """Writes and speaks the replies."""
        self.state = SessionState.LISTENING
        """What the session is doing."""
        self.metrics: list[dict[str, float]] = []
        """Metrics of every answered turn."""
        self._resampler = StreamResampler(self.input_sample_rate_hz, _VAD_RATE_HZ)
        self._segmenter = Segmenter(engines.vad_factory(), settings.segmenter)
        self._stt_worker = engines.worker(engines.stt, "stt")
        self._turn_id = 0
        self._reply_task: asyncio.Task[None] | None = None
        self._reply_turn = 0
        self._reply_cancel = threading.Event()
        self._finish_task: asyncio.Task[None] | None = None
        self._speculative: tuple[int, asyncio.Task[str]] | None = None
        self._playback = _Playback(clock, realtime=realtime_playback)
        self._reply_open = False  # an assistant turn awaits its heard text
        self._pending_audio = b""  # an utterance not transcribed yet
        self._carry = b""  # an interrupted, untranscribed utterance, prepended to the next
        self._reply_metrics: dict[str, float] = {}
        self._deaf_until = 0.0
        self._arrivals: list[tuple[float, float]] = []  # (stream time, perf_counter) of chunks
        self._started = False
        self._closed = False

    @property
    def conversation_id(self) -> str:
        """The conversation's id (empty before :meth:`start` or without a store)."""
        return self.dialogue.conversation_id

    @property
    def output_sample_rate_hz(self) -> int:
        """Rate of the reply audio."""
        return self.responder.output_sample_rate_hz

    async def start(self, *, greet: bool = False) -> str:
        """Open (or resume) the conversation; optionally speak the profile's greeting.

        Returns:
            The conversation id.

        Raises:
            StoreError: the conversation to resume does not exist.
        """
        if self._started:
            return self.conversation_id
        self._started = True
        if self.store is not None:
            store = self.store
            if self._requested_id:
                turns = await asyncio.to_thread(store.turns, self._requested_id)
                self.dialogue = Dialogue(
                    self.profile, conversation_id=self._requested_id, turns=turns
                )
            else:
                cid = await asyncio.to_thread(store.create_conversation, self.profile.name)
                self.dialogue = Dialogue(self.profile, conversation_id=cid)
        elif self._requested_id:
            self.dialogue = Dialogue(self.profile, conversation_id=self._requested_id)
        await self._emit(StateChanged(self.state))
        if greet:
            await self.greet()
        return self.conversation_id

    async def greet(self) -> None:
        """Speak the profile's greeting, if it has one and the conversation is new."""
        if self.profile.greeting and not self.dialogue.turns and not self._reply_in_progress():
            await self._speak_greeting(self.profile.greeting_text())

    async def run(self, audio: AsyncIterable[bytes]) -> None:
        """Consume an audio stream to its end, then let the last reply finish."""
        await self.start()
        async for chunk in audio:
            await self.feed(chunk)
        await self.end_of_input()

    async def end_of_input(self) -> None:
        """The input ended: close any open utterance and wait for the reply to finish."""
        for event in self._segmenter.flush():
            await self._on_segment(event, time.perf_counter())
        await self.wait_idle()

    async def wait_idle(self) -> None:
        """Wait until no reply is being written or played."""
        while True:
            task = self._reply_task
            if task is not None and not task.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(task)
                continue
            finish = self._finish_task
            if finish is not None and not finish.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(finish)
                continue
            return

    async def feed(self, pcm: bytes) -> None:
        """Feed a chunk of PCM16 mono audio at the input rate.

        Raises:
            AudioFormatError: an odd number of bytes.
        """
        check_pcm16(pcm)
        if self._closed:
            return
        audio = self._resampler.process(pcm)
        now = time.perf_counter()
        if not self.barge_in and self._is_deaf():
            self._segmenter.skip(audio)
            return
        self._arrivals.append((self._segmenter.stream_time_s + len(audio) / 2 / _VAD_RATE_HZ, now))
        if len(self._arrivals) > 2000:
            del self._arrivals[:1000]
        for event in self._segmenter.feed(audio):
            await self._on_segment(event, now)
        if self._complete_sentence_heard():
            for event in self._segmenter.end_now():
                await self._on_segment(event, now)
        # In half-duplex mode input reaches this point only while nothing is playing.
        if (
            self._segmenter.in_speech
            and self._reply_in_progress()
            and self._segmenter.voiced_ms >= self.settings.session.barge_in_min_speech_ms
        ):
            await self.interrupt()

    async def reply_to_audio(self, pcm: bytes) -> None:
        """Answer a whole recording (16 kHz PCM16) as one utterance, and wait for the reply."""
        check_pcm16(pcm)
        await self.start()
        if self._reply_in_progress():
            await self.interrupt()
        self._turn_id += 1
        self._launch_reply(self._turn_id, None, {}, time.perf_counter(), pcm)
        await self.wait_idle()

    async def send_text(self, text: str) -> None:
        """A typed user message: answered like an utterance (barging in on any reply)."""
        text = text.strip()
        if not text:
            return
        await self.start()
        if self._reply_in_progress():
            await self.interrupt()
        self._turn_id += 1
        turn = self._turn_id
        await self._emit(Transcript(turn, text, final=True))
        self._launch_reply(turn, text, {}, time.perf_counter())

    @property
    def replying(self) -> bool:
        """True while a reply is being prepared or played."""
        return self._reply_in_progress()

    def reset_input(self) -> None:
        """Forget any partial utterance (the daemon calls this right after the wake word)."""
        self._segmenter.reset()
        self._discard_speculation()

    def _is_deaf(self) -> bool:
        """Half-duplex: the assistant is speaking (or just stopped).

        Only the reply's sound can echo back into the microphone: while the reply is still
        being written nothing plays, so the user is heard (and a continuation of their turn
        interrupts the reply, which then answers the whole turn).
        """
        if self._reply_in_progress() and self._playback.end > 0:
            self._deaf_until = self._playback.end + self.settings.session.echo_tail_ms / 1000
            return True
        if self._clock() < self._deaf_until:
            return True
        if self._deaf_until:
            self._deaf_until = 0.0
            self._segmenter.reset()
        return False

    def _reply_in_progress(self) -> bool:
        task = self._reply_task
        return (task is not None and not task.done()) or self._playback.playing()

    def _arrival_of(self, stream_time_s: float, default: float) -> float:
        """Wall time (perf_counter) at which the stream reached ``stream_time_s``.

        The chunk holding that point arrived when its last sample was captured; the point is
        earlier by the audio that follows it in the chunk.
        """
        for chunk_end, arrived in self._arrivals:
            if chunk_end >= stream_time_s - 1e-6:
                return arrived - (chunk_end - stream_time_s)
        return default

    async def _on_segment(self, event: object, now: float) -> None:
        if isinstance(event, SpeechBegan):
            await self._emit(SpeechStarted(self._turn_id + 1, event.stream_time_s))
        elif isinstance(event, PauseBegan):
            if self.settings.session.speculative_stt and not self._reply_in_progress():
                self._discard_speculation()
                task = asyncio.create_task(
                    self._transcribe(event.audio), name=f"stt-speculative-{self._turn_id + 1}"
                )
                task.add_done_callback(_consume_result)
                self._speculative = (len(event.audio), task)
        elif isinstance(event, SpeechResumed):
            self._discard_speculation()
        elif isinstance(event, UtteranceDropped):
            self._discard_speculation()
            # Too short to be a turn (a click, a cough): tell listeners speech is over.
            await self._emit(SpeechStopped(self._turn_id + 1, self._segmenter.stream_time_s, 0.0))
        elif isinstance(event, UtteranceEnded):
            await self._on_utterance(event, now)

    def _complete_sentence_heard(self) -> bool:
        """The early transcript of the current pause is a whole sentence: end the turn now.

        Whisper punctuates; a question or statement that ends in ``. ? !`` after a pause of
        ``early_end_of_turn_ms`` is very likely complete, and waiting the full end-of-turn
        silence would only add latency. Trailing-off speech ("I want to...") does not end so.
        """
        early_ms = self.settings.segmenter.early_end_of_turn_ms
        speculative = self._speculative
        if not early_ms or speculative is None or not self._segmenter.paused:
            return False
        task = speculative[1]
        if self._segmenter.silence_ms < early_ms or not task.done() or task.cancelled():
            return False
        if task.exception() is not None:
            return False
        text = task.result().rstrip()
        return bool(text) and text[-1] in ".?!" and not text.endswith("...")

    def _discard_speculation(self) -> None:
        if self._speculative is not None:
            # Still queued on the STT worker: it never runs. Already running: CTranslate2
            # cannot be stopped mid-call, so it finishes and its result is dropped.
            self._speculative[1].cancel()
            self._speculative = None

    async def _on_utterance(self, event: UtteranceEnded, now: float) -> None:
        if self._reply_in_progress():
            await self.interrupt()
        self._turn_id += 1
        turn = self._turn_id
        speech_end = self._arrival_of(event.speech_end_s, now)
        metrics = {"end_of_turn": _ms(now - speech_end)}
        await self._emit(
            SpeechStopped(turn, event.speech_end_s, len(event.audio) / 2 / _VAD_RATE_HZ)
        )
        speculative = self._speculative
        self._speculative = None
        audio = event.audio
        if self._carry:
            # The user resumed talking while their previous utterance was still being
            # transcribed: both parts make one turn.
            audio = self._carry + bytes(int(0.2 * _VAD_RATE_HZ) * 2) + audio
            self._carry = b""
        self._launch_reply(turn, None, metrics, speech_end, audio, speculative)

    async def _transcribe(self, audio: bytes) -> str:
        result = await self._stt_worker.run(self.engines.stt.transcribe, audio)
        return result.text

    def _launch_reply(
        self,
        turn: int,
        text: str | None,
        metrics: dict[str, float],
        started_at: float,
        audio: bytes = b"",
        speculative: tuple[int, asyncio.Task[str]] | None = None,
    ) -> None:
        self._reply_cancel = threading.Event()
        self._reply_turn = turn
        self._playback.reset()
        self._reply_task = asyncio.create_task(
            self._reply(turn, text, metrics, started_at, audio, speculative, self._reply_cancel),
            name=f"reply-{turn}",
        )

    async def _reply(
        self,
        turn: int,
        text: str | None,
        metrics: dict[str, float],
        started_at: float,
        audio: bytes,
        speculative: tuple[int, asyncio.Task[str]] | None,
        cancel: threading.Event,
    ) -> None:
        await self._set_state(SessionState.THINKING)
        try:
            if text is None:
                stt_start = time.perf_counter()
                self._pending_audio = audio
                text = await self._final_transcript(audio, speculative)
                self._pending_audio = b""
                metrics["stt"] = _ms(time.perf_counter() - stt_start)
                await self._emit(Transcript(turn, text, final=True))
                if not text:
                    await self._set_state(SessionState.LISTENING)
                    return
            user = self.dialogue.add_user(text)
            await self._save(user)
            self._reply_open = True
            self._reply_metrics = metrics
            outcome = await self.responder.respond(
                self.dialogue,
                turn,
                self._reply_event,
                cancel=cancel,
                started_at=started_at,
                metrics_ms=metrics,
            )
            _add_voice_to_voice(metrics)
            await self._emit(ReplyDone(turn, outcome.text))
            await self._emit(Metrics(turn, dict(metrics)))
            self.metrics.append(dict(metrics))
            _LOGGER.info("turn %d metrics (ms): %s", turn, metrics)
            self._finish_task = asyncio.create_task(
                self._finish_playback(turn, outcome.text), name=f"playback-{turn}"
            )
        except asyncio.CancelledError:
            raise
        except VoicebotError as error:
            _LOGGER.warning("turn %d failed: %s", turn, error)
            await self._emit(ErrorEvent(error.code, str(error), turn))
            await self._close_reply(interrupted=True)
            await self._set_state(SessionState.LISTENING)
        except Exception as error:  # a loop boundary: report, keep the session alive
            _LOGGER.exception("turn %d failed", turn)
            await self._emit(ErrorEvent("internal", f"reply failed: {error}", turn))
            await self._close_reply(interrupted=True)
            await self._set_state(SessionState.LISTENING)

    async def _final_transcript(
        self, audio: bytes, speculative: tuple[int, asyncio.Task[str]] | None
    ) -> str:
        if speculative is not None:
            covered, task = speculative
            # The early transcript is good when no speech came after the pause it started at
            # (the segmenter reported no resume); the rest of the audio is trailing silence.
            if covered >= len(audio) * 0.8:
                try:
                    return await task
                except Exception:  # fall back to a fresh transcription
                    _LOGGER.debug("speculative transcription failed", exc_info=True)
            else:
                task.cancel()
        return await self._transcribe(audio)

    async def _reply_event(self, event: Event) -> None:
        if isinstance(event, AudioOut):
            if event.turn_id != self._reply_turn:
                return  # stale audio of an interrupted turn
            if self.state is not SessionState.SPEAKING:
                await self._set_state(SessionState.SPEAKING)
            self._playback.add(event.text, len(event.pcm) / 2 / event.sample_rate_hz)
        await self._emit(event)

    async def _finish_playback(self, turn: int, text: str) -> None:
        delay = self._playback.end - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._reply_turn == turn and self._reply_open:
            self._arm_echo_tail()
            await self._close_reply(interrupted=False, text=text)
            await self._set_state(SessionState.LISTENING)

    async def _close_reply(self, *, interrupted: bool, text: str | None = None) -> None:
        if not self._reply_open:
            return
        self._reply_open = False
        heard = text if text is not None else self._playback.heard()
        if not heard.strip():
            return  # nothing was heard: nothing to remember
        _add_voice_to_voice(self._reply_metrics)
        if interrupted and self._reply_metrics:
            _LOGGER.info("interrupted turn metrics (ms): %s", self._reply_metrics)
        turn = self.dialogue.add_assistant(heard, interrupted=interrupted)
        turn.metrics_ms = dict(self._reply_metrics)
        await self._save(turn)

    async def interrupt(self) -> None:
        """Barge-in: stop the reply now and keep only what was heard."""
        task = self._reply_task
        turn = self._reply_turn
        active = self._reply_in_progress()
        self._reply_cancel.set()
        heard = self._playback.heard()
        if task is not None and not task.done():
            if self._pending_audio:
                self._carry, self._pending_audio = self._pending_audio, b""
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        finish = self._finish_task
        if finish is not None and not finish.done():
            finish.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await finish
        was_open = self._reply_open
        await self._close_reply(interrupted=True, text=heard)
        self._playback.reset()
        if self._deaf_until:
            # The speaker was flushed: only the room's echo tail is left to ignore.
            self._deaf_until = self._clock() + self.settings.session.echo_tail_ms / 1000
        self._reply_turn = 0
        if active or was_open:
            await self._emit(Interrupted(turn, heard))
        await self._set_state(SessionState.LISTENING)

    async def _speak_greeting(self, text: str) -> None:
        self._reply_turn = 0
        self._reply_open = True  # like a reply: an interruption keeps only what was heard
        self._reply_metrics = {}
        self._playback.reset()
        cancel = threading.Event()
        self._reply_cancel = cancel

        async def greet() -> None:
            voice = self.responder.voice
            worker = self.engines.worker(voice, "tts")
            await self._emit(ReplyText(0, text))
            first = True
            try:
                async for pcm in worker.stream(
                    functools.partial(self.responder._speak, text, cancel)  # noqa: SLF001
                ):
                    await self._reply_event(
                        AudioOut(0, pcm, voice.sample_rate_hz, text if first else "")
                    )
                    first = False
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a loop boundary: report, keep the session alive
                _LOGGER.exception("the greeting failed")
                code = error.code if isinstance(error, VoicebotError) else "internal"
                await self._emit(ErrorEvent(code, f"greeting failed: {error}"))
                await self._close_reply(interrupted=True)
                await self._set_state(SessionState.LISTENING)
                return
            await self._emit(ReplyDone(0, text))
            self._finish_task = asyncio.create_task(self._finish_greeting(text), name="greeting")

        self._reply_task = asyncio.create_task(greet(), name="greeting")

    async def _finish_greeting(self, text: str) -> None:
        delay = self._playback.end - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        self._arm_echo_tail()
        await self._close_reply(interrupted=False, text=text)
        await self._set_state(SessionState.LISTENING)

    def _arm_echo_tail(self) -> None:
        """The reply's sound just ended: half-duplex stays deaf for the room's echo tail."""
        if not self.barge_in:
            tail_s = self.settings.session.echo_tail_ms / 1000
            self._deaf_until = max(self._deaf_until, self._clock() + tail_s)

    async def _save(self, turn: Turn) -> None:
        if self.store is None or not self.conversation_id:
            return
        try:
            await asyncio.to_thread(self.store.add_turn, self.conversation_id, turn)
        except VoicebotError as error:
            _LOGGER.error("could not save a turn: %s", error)
            await self._emit(ErrorEvent(error.code, str(error)))

    async def _set_state(self, state: SessionState) -> None:
        if state is not self.state:
            self.state = state
            await self._emit(StateChanged(state))

    async def _emit(self, event: Event) -> None:
        try:
            await self._sink(event)
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken sink must not kill the session
            _LOGGER.exception("sink failed on %s", type(event).__name__)

    async def close(self) -> None:
        """Stop everything in flight; what was heard of a reply is saved."""
        if self._closed:
            return
        self._closed = True
        if self._reply_task is not None and not self._reply_task.done():
            await self.interrupt()
        for task in (self._finish_task, self._speculative[1] if self._speculative else None):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._reply_open:
            await self._close_reply(interrupted=self._playback.playing())
