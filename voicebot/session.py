"""The turn-taking loop shared by every transport.

A :class:`Session` takes audio chunks in (any sample rate), finds utterances with the
:class:`~voicebot.segmenter.Segmenter`, and answers each one with a reply task: the
transcript, then the :class:`~voicebot.responder.Responder` streams the reply. Everything it
does goes to its sink as :mod:`voicebot.events`.

The other concerns live beside it: what was heard and the half-duplex echo in
:mod:`voicebot.playback`, the end of turn and early transcripts in :mod:`voicebot.turn_taking`,
the reply worked during the end-of-turn silence in :mod:`voicebot.preemptive`.

Barge-in: user speech while a reply is being prepared or played cancels the reply task, stops
the engines (their cancel event), and keeps in the history only the part of the reply that
was actually played. In half-duplex mode input is ignored while the assistant speaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import AsyncIterable, Callable
from typing import Any

from .audio import StreamResampler, check_pcm16, check_sample_rate
from .config import Profile, Settings, SkillSettings
from .dialogue import Dialogue, Turn
from .engines import Engines
from .engines.base import TurnDetector
from .errors import ProtocolError, VoicebotError
from .events import (
    AudioOut,
    ErrorEvent,
    Event,
    FactsChanged,
    Interrupted,
    Metrics,
    ReplyDone,
    SessionState,
    SpeechStarted,
    SpeechStopped,
    StateChanged,
    TimerEvent,
    TimerFinished,
    Transcript,
)
from .memory import describe_fact
from .playback import EchoGuard, Playback
from .preemptive import PreemptiveReply
from .responder import ReplyOutcome, Responder, Sink, ms_between
from .segmenter import (
    PauseBegan,
    Segmenter,
    SegmentEvent,
    SpeechBegan,
    SpeechResumed,
    UtteranceDropped,
    UtteranceEnded,
)
from .skills import SkillRouter
from .store import Store
from .turn_taking import Speculation, TurnEnd, same_words, with_user_turn
from .workers import Priority

__all__ = ["ReplyOutcome", "Responder", "Session", "Sink"]

_LOGGER = logging.getLogger(__name__)

_VAD_RATE_HZ = 16000
_MISSED_TIMER_S = 300.0
"""A timer that ended at most this long before the conversation opened still rings in it."""
_REPLY_STAGES = ("llm_first_token", "first_piece", "first_audio", "llm_done")
"""Metrics the responder measures (from the reference time it is given)."""


def _add_voice_to_voice(metrics_ms: dict[str, float]) -> None:
    """End of the user's speech to the first reply audio (``first_audio`` is from there)."""
    if "first_audio" in metrics_ms:
        metrics_ms["voice_to_voice"] = metrics_ms["first_audio"]


@functools.cache
def _shared_skills(settings: SkillSettings) -> SkillRouter:
    return SkillRouter(settings)


def default_skills(settings: Settings) -> SkillRouter | None:
    """The skills of a session given none: shared, without timers (an app passes its own)."""
    return _shared_skills(settings.skills) if settings.skills.enabled else None


def _consume_result(task: asyncio.Task[str]) -> None:
    """Retrieve a dropped task's outcome, so its failure is logged rather than lost."""
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.debug("speculative transcription failed", exc_info=task.exception())


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
        skills: SkillRouter | None = None,
        timer_key: str = "",
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
            clock: Monotonic seconds: the one clock of the metrics, the playback estimate and
                the echo tail.
            realtime_playback: The sink plays audio in real time (False: it writes it to a
                file, so everything sent counts as heard at once).
            skills: Answers what it can before the chat model (the app's, with its timers);
                default: one without timers, unless ``settings.skills.enabled`` is off.
            timer_key: Whose timers this session sets and hears (default: its conversation's;
                the daemon's are the device's, whatever the conversation).

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
        self.responder = Responder(engines, settings, self.profile, clock=clock)
        """Writes and speaks the replies."""
        self.state = SessionState.LISTENING
        """What the session is doing."""
        self.metrics: list[dict[str, float]] = []
        """Metrics of every answered turn."""
        llm = self.responder.llm
        judge = llm.end_of_turn_probability if isinstance(llm, TurnDetector) else None
        self.turn_end = TurnEnd(
            settings.segmenter,
            judge=judge,
            worker=engines.worker(llm, "llm") if judge is not None else None,
            count_tokens=llm.count_tokens,
            budget_tokens=settings.llm.context_tokens,
        )
        """How much silence ends the user's turn, judged from their words."""
        self._resampler = StreamResampler(self.input_sample_rate_hz, _VAD_RATE_HZ)
        self._segmenter = Segmenter(engines.vad_factory(), settings.segmenter)
        self._stt_worker = engines.worker(engines.stt, "stt")
        self._turn_id = 0
        self._reply_task: asyncio.Task[None] | None = None
        self._reply_turn = 0
        self._reply_cancel = threading.Event()
        self._finish_task: asyncio.Task[None] | None = None
        self._speculation: Speculation | None = None
        self._preemptive: PreemptiveReply | None = None  # built on the current speculation
        self._resumes = 0  # times the user resumed talking after a pause, ever
        self._playback = Playback(clock, realtime=realtime_playback)
        self._echo = EchoGuard(clock, settings.session.echo_tail_ms)
        self._reply_open = False  # an assistant turn awaits its heard text
        self._pending_audio = b""  # an utterance not transcribed yet
        self._carry = b""  # an interrupted, untranscribed utterance, prepended to the next
        self._reply_metrics: dict[str, float] = {}
        self._adopted: tuple[PreemptiveReply, float] | None = None  # and its metrics' shift
        self._arrivals: list[tuple[float, float]] = []  # (stream time, clock) of chunks
        self._started = False
        self._facts_version = 0  # the dialogue's facts_version last stored and sent
        self._closed = False
        self.skills = skills if skills is not None else default_skills(settings)
        """Answers time, timers, arithmetic... before the chat model (None: all to it)."""
        self._timer_key = timer_key  # default: the conversation's (the session's, without one)
        self._unsubscribe_timers: Callable[[], None] | None = None
        self._reply_rows: dict[int, int] = {}  # turn id -> stored assistant row, for feedback
        self._early_feedback: dict[int, tuple[str, str]] = {}  # rated before it was stored

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
                facts = await asyncio.to_thread(store.facts, self._requested_id)
                self.dialogue = Dialogue(
                    self.profile, conversation_id=self._requested_id, turns=turns, facts=facts
                )
            else:
                cid = await asyncio.to_thread(
                    store.create_conversation,
                    self.profile.name,
                    for_training=self.profile.training_data,
                )
                self.dialogue = Dialogue(self.profile, conversation_id=cid)
        elif self._requested_id:
            self.dialogue = Dialogue(self.profile, conversation_id=self._requested_id)
        await self._emit(StateChanged(self.state))
        await self._watch_timers()
        if greet:
            await self.greet()
        return self.conversation_id

    async def greet(self) -> None:
        """Speak the profile's greeting, if it has one and the conversation is new."""
        if self.profile.greeting and not self.dialogue.turns and not self._reply_in_progress():
            self._speak_greeting(self.profile.greeting_text())

    async def run(self, audio: AsyncIterable[bytes]) -> None:
        """Consume an audio stream to its end, then let the last reply finish."""
        await self.start()
        async for chunk in audio:
            await self.feed(chunk)
        await self.end_of_input()

    async def end_of_input(self) -> None:
        """The input ended: close any open utterance and wait for the reply to finish."""
        for event in self._segmenter.flush():
            await self._on_segment(event, self._clock())
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
        now = self._clock()
        if not self.barge_in:
            deaf = self._echo.check(replying=self._reply_in_progress(), playback=self._playback)
            if deaf:
                self._segmenter.skip(audio)
                return
            if deaf is None:  # the echo tail just ended: what was heard before is stale
                self._segmenter.reset()
        self._arrivals.append((self._segmenter.stream_time_s + len(audio) / 2 / _VAD_RATE_HZ, now))
        if len(self._arrivals) > 2000:
            del self._arrivals[:1000]
        for event in self._segmenter.feed(audio):
            await self._on_segment(event, now)
        self._drop_speculation_if_user_went_on()
        segmenter = self._segmenter
        if segmenter.in_speech and segmenter.silence_ms >= max(segmenter.end_of_turn_silence_ms, 1):
            # The words' judgement came in during this pause and asks for less silence
            # than there already was.
            for event in segmenter.end_now():
                await self._on_segment(event, now)
        # In half-duplex mode input reaches this point only while nothing is playing.
        if (
            segmenter.in_speech
            and self._reply_in_progress()
            and segmenter.voiced_ms >= self.settings.session.barge_in_min_speech_ms
        ):
            await self.interrupt()

    async def reply_to_audio(self, pcm: bytes) -> None:
        """Answer a whole recording (16 kHz PCM16) as one utterance, and wait for the reply."""
        check_pcm16(pcm)
        await self.start()
        self._discard_speculation()
        if self._reply_in_progress():
            await self.interrupt()
        self._turn_id += 1
        self._launch_reply(self._turn_id, None, {}, self._clock(), pcm)
        await self.wait_idle()

    async def send_text(self, text: str) -> None:
        """A typed user message: answered like an utterance (barging in on any reply)."""
        text = text.strip()
        if not text:
            return
        await self.start()
        self._discard_speculation()
        if self._reply_in_progress():
            await self.interrupt()
        self._turn_id += 1
        turn = self._turn_id
        await self._emit(Transcript(turn, text, final=True))
        self._launch_reply(turn, text, {}, self._clock())

    @property
    def replying(self) -> bool:
        """True while a reply is being prepared or played."""
        return self._reply_in_progress()

    def reset_input(self) -> None:
        """Forget any partial utterance (the daemon calls this right after the wake word)."""
        self._segmenter.reset()
        self._discard_speculation()

    def _reply_in_progress(self) -> bool:
        task = self._reply_task
        return (task is not None and not task.done()) or self._playback.playing()

    def _arrival_of(self, stream_time_s: float, default: float) -> float:
        """Clock time at which the stream reached ``stream_time_s``.

        The chunk holding that point arrived when its last sample was captured; the point is
        earlier by the audio that follows it in the chunk.
        """
        for chunk_end, arrived in self._arrivals:
            if chunk_end >= stream_time_s - 1e-6:
                return arrived - (chunk_end - stream_time_s)
        return default

    async def _on_segment(self, event: SegmentEvent, now: float) -> None:
        if isinstance(event, SpeechBegan):
            await self._emit(SpeechStarted(self._turn_id + 1, event.stream_time_s))
        elif isinstance(event, PauseBegan):
            self._on_pause(event, now)
        elif isinstance(event, SpeechResumed):
            self._resumes += 1
        elif isinstance(event, UtteranceDropped):
            self._discard_speculation()
            # Too short to be a turn (a click, a cough): tell listeners speech is over.
            await self._emit(SpeechStopped(self._turn_id + 1, self._segmenter.stream_time_s, 0.0))
        else:
            await self._on_utterance(event, now)

    # --- speculation: an early transcript, its end-of-turn judgement, a preemptive reply ---

    def _on_pause(self, event: PauseBegan, now: float) -> None:
        """The user went quiet: transcribe early, unless the last early transcript will do."""
        if not self.settings.session.speculative_stt or self._reply_in_progress():
            return
        voiced_ms = self._segmenter.voiced_ms
        spec = self._speculation
        if spec is not None:
            # Little was said since it was made (a breath, an "um"): it still tells how
            # finished the turn sounds; the final transcript is redone if it does not cover.
            if spec.judged:
                self._apply_turn_end(spec)
            return
        turn = self._turn_id + 1
        stt = asyncio.create_task(self._transcribe(event.audio), name=f"stt-speculative-{turn}")
        stt.add_done_callback(_consume_result)
        spec = Speculation(
            audio_bytes=len(event.audio),
            voiced_ms=voiced_ms,
            resumes=self._resumes,
            speech_end=self._arrival_of(event.stream_time_s, now),
            stt=stt,
        )
        spec.follow_up = asyncio.create_task(self._follow_up(spec), name=f"turn-end-{turn}")
        self._speculation = spec

    def _drop_speculation_if_user_went_on(self) -> None:
        """Enough new speech since the early transcript: it and its reply are stale."""
        spec = self._speculation
        if spec is None or not self._segmenter.in_speech:
            return
        new_ms = self._segmenter.voiced_ms - spec.voiced_ms
        if new_ms >= max(self.settings.session.speculative_min_new_speech_ms, 1):
            self._discard_speculation()

    async def _follow_up(self, spec: Speculation) -> None:
        """Judge the early transcript's words; start the preemptive reply on them."""
        try:
            # Shielded: cancelling the follow-up must not cancel the transcription, which
            # the final transcript may still use.
            text = await asyncio.shield(spec.stt)
        except Exception:
            spec.judged = True
            return
        if not text.strip():
            spec.judged = True
            return
        candidate = with_user_turn(self.dialogue, text)
        spec.probability = await self.turn_end.probability(candidate)
        spec.judged = True
        if spec is not self._speculation:
            return
        self._apply_turn_end(spec)
        if (
            self.settings.session.preemptive_reply
            and not self.turn_end.unlikely(spec.probability)
            and self._preemptive is None
            and not self._reply_in_progress()
            # A skill will answer these words: the model's reply would be thrown away.
            # (Matching takes about a millisecond: no worker thread for it.)
            and (self.skills is None or self.skills.match(text) is None)
        ):
            self._preemptive = PreemptiveReply(
                self.responder,
                candidate,
                text,
                self._turn_id + 1,
                started_at=spec.speech_end,
                clock=self._clock,
            )

    def _apply_turn_end(self, spec: Speculation) -> None:
        if self._segmenter.paused:
            needed = self.turn_end.silence_needed_ms(spec.probability)
            self._segmenter.end_of_turn_silence_ms = needed

    def _discard_speculation(self) -> None:
        spec, self._speculation = self._speculation, None
        if spec is not None:
            # Still queued on the STT worker: it never runs. Already running: CTranslate2
            # cannot be stopped mid-call, so it finishes and its result is dropped.
            spec.cancel()
        preemptive, self._preemptive = self._preemptive, None
        if preemptive is not None:
            preemptive.discard()

    # --- the reply to a turn ---

    async def _on_utterance(self, event: UtteranceEnded, now: float) -> None:
        if self._reply_in_progress():
            await self.interrupt()
        self._turn_id += 1
        turn = self._turn_id
        speech_end = self._arrival_of(event.speech_end_s, now)
        metrics = {"end_of_turn": ms_between(speech_end, now)}
        await self._emit(
            SpeechStopped(turn, event.speech_end_s, len(event.audio) / 2 / _VAD_RATE_HZ)
        )
        spec, self._speculation = self._speculation, None
        preemptive, self._preemptive = self._preemptive, None
        audio = event.audio
        early: asyncio.Task[str] | None = None
        if self._carry:
            # The user resumed talking while their previous utterance was still being
            # transcribed: both parts make one turn.
            audio = self._carry + bytes(int(0.2 * _VAD_RATE_HZ) * 2) + audio
            self._carry = b""
        elif spec is not None and spec.resumes == self._resumes:
            # No speech came after the pause it was made in: the rest is trailing silence.
            early = spec.stt
        if spec is not None:
            if spec.follow_up is not None:
                spec.follow_up.cancel()
            if early is None:
                spec.stt.cancel()
        self._launch_reply(turn, None, metrics, speech_end, audio, early, preemptive)

    async def _transcribe(self, audio: bytes, priority: Priority = Priority.NORMAL) -> str:
        result = await self._stt_worker.run(self.engines.stt.transcribe, audio, priority=priority)
        return result.text

    def _launch_reply(
        self,
        turn: int,
        text: str | None,
        metrics: dict[str, float],
        started_at: float,
        audio: bytes = b"",
        early: asyncio.Task[str] | None = None,
        preemptive: PreemptiveReply | None = None,
    ) -> None:
        self._reply_cancel = threading.Event()
        self._reply_turn = turn
        self._playback.reset()
        self._reply_task = asyncio.create_task(
            self._reply(turn, text, metrics, started_at, audio, early, preemptive),
            name=f"reply-{turn}",
        )

    async def _reply(
        self,
        turn: int,
        text: str | None,
        metrics: dict[str, float],
        started_at: float,
        audio: bytes,
        early: asyncio.Task[str] | None,
        preemptive: PreemptiveReply | None,
    ) -> None:
        cancel = self._reply_cancel
        await self._set_state(SessionState.THINKING)
        try:
            if text is None:
                stt_start = self._clock()
                self._pending_audio = audio
                text = await self._final_transcript(audio, early)
                self._pending_audio = b""
                metrics["stt"] = ms_between(stt_start, self._clock())
                await self._emit(Transcript(turn, text, final=True))
                if not text:
                    await self._set_state(SessionState.LISTENING)
                    return
            if preemptive is not None and not (
                preemptive.turn_id == turn and same_words(preemptive.candidate, text)
            ):
                preemptive.discard()  # built on other words: answer the ones said
                preemptive = None
            if self.skills is not None and await self._answer_with_skill(
                turn, text, cancel, metrics, started_at, preemptive
            ):
                return
            user = self.dialogue.add_user(text)
            await self._save(user)
            self._reply_open = True
            self._reply_metrics = metrics
            if preemptive is None:
                outcome = await self.responder.respond(
                    self.dialogue,
                    turn,
                    self._reply_event,
                    cancel=cancel,
                    started_at=started_at,
                    metrics_ms=metrics,
                )
            else:
                self._reply_cancel = preemptive.cancel_event
                self._adopted = (preemptive, ms_between(preemptive.started_at, started_at))
                outcome = await preemptive.release(self._reply_event)
            self._settle_metrics()
            await self._emit(ReplyDone(turn, outcome.text))
            await self._emit(Metrics(turn, dict(metrics)))
            self.metrics.append(dict(metrics))
            _LOGGER.info("turn %d metrics (ms): %s", turn, metrics)
            self._finish_task = asyncio.create_task(
                self._finish_playback(turn, outcome.text), name=f"playback-{turn}"
            )
        except asyncio.CancelledError:
            if preemptive is not None:
                preemptive.discard()
            raise
        except VoicebotError as error:
            _LOGGER.warning("turn %d failed: %s", turn, error)
            await self._emit(ErrorEvent(error.code, str(error), turn))
            await self._close_reply(interrupted=True)
            apology = getattr(error, "apology", "")
            if apology:  # the chat server is unreachable: say so rather than stay silent
                with contextlib.suppress(VoicebotError):
                    await self.responder.say(apology, turn, self._reply_event, cancel=cancel)
            await self._set_state(SessionState.LISTENING)
        except Exception as error:  # a loop boundary: report, keep the session alive
            _LOGGER.exception("turn %d failed", turn)
            await self._emit(ErrorEvent("internal", f"reply failed: {error}", turn))
            await self._close_reply(interrupted=True)
            await self._set_state(SessionState.LISTENING)

    def _settle_metrics(self) -> None:
        """Put an adopted preemptive reply's stages in the turn's metrics, from its speech end."""
        metrics = self._reply_metrics
        adopted, self._adopted = self._adopted, None
        if adopted is not None:
            preemptive, shift_ms = adopted
            for key in _REPLY_STAGES:
                if key in preemptive.metrics_ms:
                    metrics[key] = round(preemptive.metrics_ms[key] - shift_ms, 1)
        _add_voice_to_voice(metrics)

    async def _final_transcript(self, audio: bytes, early: asyncio.Task[str] | None) -> str:
        if early is not None:
            try:
                return await early
            except Exception:  # fall back to a fresh transcription
                _LOGGER.debug("speculative transcription failed", exc_info=True)
        # The user has stopped and waits: ahead of other sessions' early and later work.
        return await self._transcribe(audio, Priority.URGENT)

    async def _reply_event(self, event: Event) -> None:
        if isinstance(event, AudioOut):
            if event.turn_id != self._reply_turn:
                return  # stale audio of an interrupted turn
            if self.state is not SessionState.SPEAKING:
                await self._set_state(SessionState.SPEAKING)
            self._playback.add(event.text, len(event.pcm) / 2 / event.sample_rate_hz)
        await self._emit(event)

    async def _finish_playback(self, turn: int, text: str) -> None:
        delay = self._playback.remaining_s()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._reply_turn == turn and self._reply_open:
            self._reply_sound_ended()
            await self._close_reply(interrupted=False, text=text)
            await self._set_state(SessionState.LISTENING)

    async def _close_reply(self, *, interrupted: bool, text: str | None = None) -> None:
        if not self._reply_open:
            return
        self._reply_open = False
        self._settle_metrics()
        heard = text if text is not None else self._playback.heard()
        if not heard.strip():
            return  # nothing was heard: nothing to remember
        if interrupted and self._reply_metrics:
            _LOGGER.info("interrupted turn metrics (ms): %s", self._reply_metrics)
        turn = self.dialogue.add_assistant(heard, interrupted=interrupted)
        turn.metrics_ms = dict(self._reply_metrics)
        row = await self._save(turn)
        if row is not None:
            self._reply_rows[self._reply_turn] = row
            early = self._early_feedback.pop(self._reply_turn, None)
            if early is not None:
                await self.give_feedback(*early, turn_id=self._reply_turn)

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
        self._echo.speaker_flushed()
        self._reply_turn = 0
        if active or was_open:
            await self._emit(Interrupted(turn, heard))
        await self._set_state(SessionState.LISTENING)

    # --- skills: answered before the chat model ---

    async def _answer_with_skill(
        self,
        turn: int,
        text: str,
        cancel: threading.Event,
        metrics: dict[str, float],
        started_at: float,
        preemptive: PreemptiveReply | None,
    ) -> bool:
        """Answer ``text`` with a skill if one can (True); the reply is stored like the model's,
        and measured like it (``skill`` is when the answer was known)."""
        assert self.skills is not None
        last = next((t.text for t in reversed(self.dialogue.turns) if t.role == "assistant"), "")
        reply = await self.skills.route(text, conversation_id=self._timer_key, last_reply=last)
        if reply is None:
            return False
        metrics["skill"] = ms_between(started_at, self._clock())
        if preemptive is not None:
            preemptive.discard()  # the model's words are not needed
        if reply.feedback:  # "that's wrong": about the last reply, not an exchange to keep
            await self.give_feedback(reply.feedback, reply.correction)
        if reply.remember:
            await self._save(self.dialogue.add_user(text))
        if not reply.text:  # "stop", "never mind": the interruption was the answer
            await self._emit(ReplyDone(turn, ""))
            await self._set_state(SessionState.LISTENING)
            return True
        self._reply_open = reply.remember
        self._reply_metrics = metrics

        async def emit(event: Event) -> None:
            if isinstance(event, AudioOut):
                metrics.setdefault("first_audio", ms_between(started_at, self._clock()))
            await self._reply_event(event)

        await self.responder.say(reply.text, turn, emit, cancel=cancel)
        _add_voice_to_voice(metrics)
        await self._emit(ReplyDone(turn, reply.text))
        await self._emit(Metrics(turn, dict(metrics)))
        self._finish_task = asyncio.create_task(
            self._finish_playback(turn, reply.text), name=f"playback-{turn}"
        )
        return True

    async def _watch_timers(self) -> None:
        """Hear the conversation's timers; the client learns of those already running."""
        self._timer_key = self._timer_key or self.conversation_id or f"session-{id(self):x}"
        timers = self.skills.timers if self.skills is not None else None
        if timers is None or self._unsubscribe_timers is not None:
            return
        self._unsubscribe_timers = timers.subscribe(self._timer_key, self._on_timer)
        await timers.adopt(self._timer_key)  # those set through another replica ring here too
        for timer in timers.running(self._timer_key):
            await self._emit(timers.started_event(timer))
        # One that ended lately with nobody to hear it (the page was closed, the server was
        # down) rings now; the greeting then gives way to it.
        for timer in timers.ringing(self._timer_key, within_s=_MISSED_TIMER_S):
            await self._on_timer(TimerFinished(timer.id, timer.name, timer.seconds))

    async def _on_timer(self, event: TimerEvent) -> None:
        """A timer of the conversation changed; one that ended is said out loud."""
        if self._closed:
            return
        if isinstance(event, TimerFinished) and self._reply_in_progress():
            await self.interrupt()  # the alarm goes first (and its chime is not flushed)
        await self._emit(event)
        if isinstance(event, TimerFinished):
            what = f"{event.name} timer" if event.name else "timer"
            # Spoken like the greeting: not an answer to a turn, kept in the history.
            self._speak_greeting(f"Your {what} is done.")

    # --- the greeting ---

    def _speak_greeting(self, text: str) -> None:
        self._reply_turn = 0
        self._reply_open = True  # like a reply: an interruption keeps only what was heard
        self._reply_metrics = {}
        self._playback.reset()
        cancel = threading.Event()
        self._reply_cancel = cancel

        async def greet() -> None:
            try:
                await self.responder.say(text, 0, self._reply_event, cancel=cancel)
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
        delay = self._playback.remaining_s()
        if delay > 0:
            await asyncio.sleep(delay)
        self._reply_sound_ended()
        await self._close_reply(interrupted=False, text=text)
        await self._set_state(SessionState.LISTENING)

    def _reply_sound_ended(self) -> None:
        """The reply's sound just ended: half-duplex stays deaf for the room's echo tail."""
        if not self.barge_in:
            self._echo.reply_ended()

    # --- output ---

    async def _save(self, turn: Turn) -> int | None:
        row = None
        if self.store is not None and self.conversation_id:
            try:
                row = await asyncio.to_thread(self.store.add_turn, self.conversation_id, turn)
            except VoicebotError as error:
                _LOGGER.error("could not save a turn: %s", error)
                await self._emit(ErrorEvent(error.code, str(error)))
        if turn.role == "user" and self.dialogue.facts_version != self._facts_version:
            await self._facts_changed()
        return row

    # --- feedback on replies (docs/learning.md) ---

    async def give_feedback(
        self, rating: str, correction: str = "", *, turn_id: int | None = None
    ) -> bool:
        """Rate a reply ``good`` or ``bad`` (with what it should have said), stored with it.

        Args:
            rating: ``good`` or ``bad``.
            correction: The right answer, for a bad reply ("" for none).
            turn_id: The reply's turn id, as its events carried; ``None`` for the last reply.

        Returns:
            False when there is no stored reply to rate (no store, an unknown turn).
        """
        if rating not in ("good", "bad"):
            raise ProtocolError(f"feedback is 'good' or 'bad', not {rating!r}")
        if self.store is None or not self.conversation_id:
            return False
        if turn_id is not None and turn_id == self._reply_turn and self._reply_open:
            self._early_feedback[turn_id] = (rating, correction)  # stored when it is
            return True
        if turn_id is None:
            row = await asyncio.to_thread(self.store.last_reply_row, self.conversation_id)
        else:
            row = self._reply_rows.get(turn_id)
        if row is None:
            return False
        return await asyncio.to_thread(self.store.set_feedback, row, rating, correction)

    # --- what is remembered about the user ---

    def facts_event(self) -> FactsChanged:
        """What the conversation remembers about the user, as an event for a client."""
        return FactsChanged(
            tuple((k, v, describe_fact(k, v)) for k, v in self.dialogue.facts.items())
        )

    async def forget_fact(self, key: str | None) -> None:
        """Forget one remembered fact (``None``: all of them); the client hears ``facts``."""
        self.dialogue.forget(key)
        await self._facts_changed()

    async def _facts_changed(self) -> None:
        """Store the facts (they survive a resume, forgetting included) and tell the client."""
        self._facts_version = self.dialogue.facts_version
        if self.store is not None and self.conversation_id:
            try:
                await asyncio.to_thread(
                    self.store.save_facts, self.conversation_id, dict(self.dialogue.facts)
                )
            except VoicebotError as error:
                _LOGGER.error("could not save the facts: %s", error)
                await self._emit(ErrorEvent(error.code, str(error)))
        await self._emit(self.facts_event())

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
        if self._unsubscribe_timers is not None:
            self._unsubscribe_timers()
            self._unsubscribe_timers = None
        if self._reply_task is not None and not self._reply_task.done():
            await self.interrupt()
        spec, preemptive = self._speculation, self._preemptive
        self._discard_speculation()
        if preemptive is not None:
            await preemptive.close()
        tasks: list[asyncio.Task[Any] | None] = [self._finish_task]
        if spec is not None:
            tasks += [spec.stt, spec.follow_up]
        for task in tasks:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._reply_open:
            await self._close_reply(interrupted=self._playback.playing())
