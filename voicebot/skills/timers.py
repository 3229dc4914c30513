"""Timers: one service per app, stored in SQLite, heard by every session of a conversation.

A :class:`TimerService` belongs to the server (or ``voicebot chat``, or the daemon), not to
a session: a timer keeps running when the browser tab that set it closes, and survives a
restart of the server (it is a row in the store; the service reloads the running ones). When a
timer ends, every session that subscribed to its conversation gets a
:class:`~voicebot.events.TimerFinished`; it stays *ringing* until the user says "stop"
(:meth:`TimerService.dismiss`, which sends :class:`~voicebot.events.TimerDismissed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from ..errors import VoicebotError
from ..events import (
    TimerCancelled,
    TimerDismissed,
    TimerEvent,
    TimerFinished,
    TimerStarted,
)
from ..store import Store, TimerRecord

__all__ = ["Timer", "TimerListener", "TimerService"]

_LOGGER = logging.getLogger(__name__)

Timer = TimerRecord
"""A timer (its stored row)."""

TimerListener = Callable[[TimerEvent], Awaitable[None]]
"""Receives the timer events of one conversation."""

MAX_TIMER_S = 24 * 3600.0
"""The longest timer."""


class TimerService:
    """The running timers of every conversation, persisted in the store.

    Methods that change timers are coroutines: the store is written off the event loop, then
    the conversation's listeners hear of it. :meth:`start` reloads the running timers and
    starts the task that ends them on time; :meth:`check` ends those that are due now (the
    task calls it; tests with a fake clock call it themselves).
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        poll_s: float = 1.0,
        max_timers: int = 20,
    ) -> None:
        """Create the service (call :meth:`start`).

        Args:
            store: Where timers are kept (the conversation store).
            clock: Unix seconds. Timers end at a wall-clock time, so one set before a restart
                ends at the same moment after it.
            poll_s: The end-of-timer task looks at the clock at least this often (a clock
                that jumps, or a fake one, is noticed within it).
            max_timers: Running timers allowed per conversation.
        """
        self.store = store
        self.clock = clock
        """Unix seconds."""
        self.poll_s = poll_s
        self.max_timers = max_timers
        self._running: dict[str, Timer] = {}
        self._ringing: dict[str, Timer] = {}
        self._listeners: dict[str, list[TimerListener]] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loaded = False

    async def load(self) -> None:
        """Read the running timers from the store (once)."""
        if self._loaded:
            return
        self._loaded = True
        for timer in await asyncio.to_thread(self.store.timers, state="running"):
            self._running[timer.id] = timer

    async def start(self) -> None:
        """Reload the running timers and start ending them on time."""
        await self.load()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="timers")

    async def close(self) -> None:
        """Stop the end-of-timer task (running timers stay stored)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def subscribe(self, conversation_id: str, listener: TimerListener) -> Callable[[], None]:
        """Hear the timer events of a conversation; returns the call that stops it."""
        self._listeners.setdefault(conversation_id, []).append(listener)

        def unsubscribe() -> None:
            listeners = self._listeners.get(conversation_id, [])
            with contextlib.suppress(ValueError):
                listeners.remove(listener)
            if not listeners:
                self._listeners.pop(conversation_id, None)

        return unsubscribe

    def remaining_s(self, timer: Timer) -> float:
        """Seconds left on a timer (0 once due; what it had left, while paused)."""
        if timer.paused_s is not None:
            return timer.paused_s
        return max(0.0, timer.ends_at - self.clock())

    def started_event(self, timer: Timer) -> TimerStarted:
        """The :class:`TimerStarted` that tells a client where a timer stands."""
        paused = timer.paused_s is not None
        return TimerStarted(timer.id, timer.name, timer.seconds, self.remaining_s(timer), paused)

    def running(self, conversation_id: str) -> list[Timer]:
        """The conversation's running timers, the soonest to end first."""
        timers = [t for t in self._running.values() if t.conversation_id == conversation_id]
        return sorted(timers, key=lambda t: (t.ends_at, t.started_at))

    def ringing(self, conversation_id: str, *, within_s: float | None = None) -> list[Timer]:
        """The conversation's finished timers that still ring (those that ended at most
        ``within_s`` ago, when given)."""
        now = self.clock()
        return [
            t
            for t in self._ringing.values()
            if t.conversation_id == conversation_id
            and (within_s is None or now - t.ends_at <= within_s)
        ]

    async def add(self, conversation_id: str, seconds: float, name: str = "") -> Timer:
        """Set a timer.

        Raises:
            VoicebotError: too many timers, or a length out of range.
        """
        if not 0 < seconds <= MAX_TIMER_S:
            raise VoicebotError("a timer lasts between a second and a day")
        if len(self.running(conversation_id)) >= self.max_timers:
            raise VoicebotError(f"at most {self.max_timers} timers at once")
        now = self.clock()
        timer = Timer(
            id=uuid.uuid4().hex[:12],
            conversation_id=conversation_id,
            name=name,
            seconds=float(seconds),
            started_at=now,
            ends_at=now + seconds,
        )
        # Shielded: a barge-in during the write must not leave a stored timer unwatched.
        await asyncio.shield(self._keep(timer))
        await self._tell(conversation_id, self.started_event(timer))
        return timer

    async def _keep(self, timer: Timer) -> None:
        await asyncio.to_thread(self.store.add_timer, timer)
        self._running[timer.id] = timer
        self._changed.set()

    async def cancel(self, timer: Timer) -> bool:
        """Cancel a running timer; False when it was no longer running."""
        self._running.pop(timer.id, None)
        ended = await asyncio.to_thread(self.store.end_timer, timer.id, "cancelled")
        if ended:
            await self._tell(
                timer.conversation_id, TimerCancelled(timer.id, timer.name, timer.seconds)
            )
        return ended

    async def pause(self, timer: Timer, *, paused: bool = True) -> Timer | None:
        """Pause a running timer (or resume a paused one, ``paused=False``).

        Returns:
            The timer as it is now, or ``None`` when it was no longer running.
        """
        if (timer.paused_s is not None) == paused:
            return timer
        now = self.clock()
        if paused:
            changed = dataclasses.replace(timer, paused_s=self.remaining_s(timer))
        else:
            assert timer.paused_s is not None
            changed = dataclasses.replace(timer, paused_s=None, ends_at=now + timer.paused_s)
        stored = await asyncio.to_thread(
            self.store.pause_timer, timer.id, changed.paused_s, changed.ends_at
        )
        if not stored:
            self._running.pop(timer.id, None)
            return None
        self._running[timer.id] = changed
        self._changed.set()
        await self._tell(timer.conversation_id, self.started_event(changed))
        return changed

    async def change(self, timer: Timer, delta_s: float) -> Timer | None:
        """Add ``delta_s`` seconds to a running timer (take them off when negative).

        Returns:
            The changed timer (its length too), or ``None`` when it was no longer running.
            Taking off more than is left ends it now (a paused one keeps a second).
        """
        if timer.paused_s is not None:
            left = max(1.0, timer.paused_s + delta_s)
            seconds = max(1.0, timer.seconds + (left - timer.paused_s))
            changed = dataclasses.replace(timer, seconds=seconds, paused_s=left)
        else:
            ends_at = max(self.clock(), timer.ends_at + delta_s)
            seconds = max(1.0, timer.seconds + (ends_at - timer.ends_at))
            changed = dataclasses.replace(timer, seconds=seconds, ends_at=ends_at)

        def store() -> bool:
            return self.store.change_timer(
                timer.id, changed.seconds, changed.ends_at
            ) and self.store.pause_timer(timer.id, changed.paused_s, changed.ends_at)

        if not await asyncio.to_thread(store):
            self._running.pop(timer.id, None)
            return None
        self._running[timer.id] = changed
        self._changed.set()
        await self._tell(timer.conversation_id, self.started_event(changed))
        return changed

    async def dismiss(self, conversation_id: str) -> list[Timer]:
        """Stop the ringing of the conversation's finished timers; returns them."""
        timers = self.ringing(conversation_id)
        for timer in timers:
            self._ringing.pop(timer.id, None)
            await self._tell(conversation_id, TimerDismissed(timer.id, timer.name, timer.seconds))
        return timers

    async def check(self) -> list[Timer]:
        """End the timers that are due; returns those this service ended."""
        now = self.clock()
        due = [t for t in self._running.values() if t.ends_at <= now and t.paused_s is None]
        ended: list[Timer] = []
        for timer in sorted(due, key=lambda t: t.ends_at):
            self._running.pop(timer.id, None)
            try:
                mine = await asyncio.to_thread(self.store.end_timer, timer.id, "finished")
            except VoicebotError as error:
                _LOGGER.error("could not end timer %s: %s", timer.id, error)
                continue
            if not mine:
                continue  # cancelled meanwhile, or ended by another process on the same file
            ended.append(timer)
            self._ringing[timer.id] = timer
            _LOGGER.info("timer %s (%r, %g s) finished", timer.id, timer.name, timer.seconds)
            await self._tell(
                timer.conversation_id, TimerFinished(timer.id, timer.name, timer.seconds)
            )
        return ended

    async def _tell(self, conversation_id: str, event: TimerEvent) -> None:
        for listener in list(self._listeners.get(conversation_id, [])):
            try:
                await listener(event)
            except asyncio.CancelledError:
                raise
            except Exception:  # one broken listener must not keep the others from hearing
                _LOGGER.exception("timer listener failed on %s", type(event).__name__)

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # a loop boundary: log and keep the timers going
                _LOGGER.exception("timer check failed")
            delay = self.poll_s
            ends = [t.ends_at for t in self._running.values() if t.paused_s is None]
            if ends:
                delay = min(delay, max(0.0, min(ends) - self.clock()))
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._changed.wait()
