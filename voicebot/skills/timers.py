"""Timers: one service per app, stored in SQLite, heard by every session of a conversation.

A :class:`TimerService` belongs to the server (or ``voicebot chat``, or the daemon), not to
a session: a timer keeps running when the browser tab that set it closes, and survives a
restart of the server (it is a row in the store; the service reloads the running ones). When a
timer ends, every session that subscribed to its conversation gets a
:class:`~voicebot.events.TimerFinished`; it stays *ringing* until the user says "stop"
(:meth:`TimerService.dismiss`, which sends :class:`~voicebot.events.TimerDismissed`).

Replicas sharing one store each hold the timers of the conversations opened through them
(:meth:`TimerService.adopt`, when a session opens or resumes one) and those running when they
started. Several may hold a timer; the one that moves it to ``finished`` in the store first
announces it, and a replica where nobody listens to its conversation gives the one where
somebody does ``unheard_grace_s`` to do it first.
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

UNHEARD_GRACE_S = 5.0
"""How long past its end a timer nobody here listens to waits before this service ends it:
a replica holding a session of its conversation ends it first, and rings it there."""


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
        unheard_grace_s: float = UNHEARD_GRACE_S,
    ) -> None:
        """Create the service (call :meth:`start`).

        Args:
            store: Where timers are kept (the conversation store).
            clock: Unix seconds. Timers end at a wall-clock time, so one set before a restart
                ends at the same moment after it.
            poll_s: The end-of-timer task looks at the clock at least this often (a clock
                that jumps, or a fake one, is noticed within it).
            max_timers: Running timers allowed per conversation.
            unheard_grace_s: A timer whose conversation has no listener here ends this long
                after it is due (another replica may have one); 0 in a single process.
        """
        self.store = store
        self.clock = clock
        """Unix seconds."""
        self.poll_s = poll_s
        self.max_timers = max_timers
        self.unheard_grace_s = unheard_grace_s
        self._running: dict[str, Timer] = {}
        # Held across a store write and the change it makes here: adopt() reads the store
        # under it, so it never merges a snapshot older than what is held.
        self._lock = asyncio.Lock()
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
        self._changed.set()  # its due timers no longer wait for another replica

        def unsubscribe() -> None:
            listeners = self._listeners.get(conversation_id, [])
            with contextlib.suppress(ValueError):
                listeners.remove(listener)
            if not listeners:
                self._listeners.pop(conversation_id, None)

        return unsubscribe

    async def adopt(self, conversation_id: str) -> list[Timer]:
        """Hold the conversation's running timers as the store has them now.

        Called when a session opens or resumes the conversation here: a timer set through
        another replica (one drained since, or one the conversation's session left) is then
        scheduled here too, and one paused or changed there is taken as it stands. Timers the
        store no longer runs are let go.

        Returns:
            The timers this service did not hold before. A store error is logged and nothing
            changes (the session opens with the timers held here).
        """
        async with self._lock:
            try:
                stored = await asyncio.to_thread(
                    self.store.timers, state="running", conversation_id=conversation_id
                )
            except VoicebotError as error:
                _LOGGER.error("could not read the timers of %s: %s", conversation_id, error)
                return []
            held = {t.id for t in self._running.values() if t.conversation_id == conversation_id}
            adopted = [t for t in stored if t.id not in self._running]
            for timer in stored:
                self._running[timer.id] = timer
            for gone in held - {t.id for t in stored}:
                del self._running[gone]  # ended or cancelled through another replica
        if adopted:
            _LOGGER.info("adopted %d timers of %s", len(adopted), conversation_id)
        self._changed.set()
        return adopted

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
        async with self._lock:
            await asyncio.to_thread(self.store.add_timer, timer)
            self._running[timer.id] = timer
        self._changed.set()

    async def cancel(self, timer: Timer) -> bool:
        """Cancel a running timer; False when it was no longer running."""
        async with self._lock:
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
        async with self._lock:
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

        async with self._lock:
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
        """End the timers that are due; returns those this service ended.

        A timer whose conversation nobody here listens to is due ``unheard_grace_s`` late.
        """
        now = self.clock()
        due = [t for t in self._running.values() if t.paused_s is None and self._due_at(t) <= now]
        ended: list[Timer] = []
        for timer in sorted(due, key=lambda t: t.ends_at):
            async with self._lock:
                if self._running.get(timer.id) is not timer:
                    continue  # changed here meanwhile
                del self._running[timer.id]
                try:
                    mine = await asyncio.to_thread(
                        self.store.end_timer, timer.id, "finished", due_by=now
                    )
                except VoicebotError as error:
                    _LOGGER.error("could not end timer %s: %s", timer.id, error)
                    continue
                if not mine:
                    # Cancelled, or ended by another replica: let go. Paused or lengthened
                    # through another replica: held again as it stands now.
                    await self._reload(timer)
                    continue
            ended.append(timer)
            self._ringing[timer.id] = timer
            _LOGGER.info("timer %s (%r, %g s) finished", timer.id, timer.name, timer.seconds)
            await self._tell(
                timer.conversation_id, TimerFinished(timer.id, timer.name, timer.seconds)
            )
        return ended

    def _due_at(self, timer: Timer) -> float:
        if self._listeners.get(timer.conversation_id):
            return timer.ends_at
        return timer.ends_at + self.unheard_grace_s

    async def _reload(self, timer: Timer) -> None:
        try:
            stored = await asyncio.to_thread(
                self.store.timers, state="running", conversation_id=timer.conversation_id
            )
        except VoicebotError as error:
            _LOGGER.error("could not read timer %s: %s", timer.id, error)
            return
        for now_stored in stored:
            if now_stored.id == timer.id:
                self._running[timer.id] = now_stored
                self._changed.set()

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
            ends = [self._due_at(t) for t in self._running.values() if t.paused_s is None]
            if ends:
                delay = min(delay, max(0.0, min(ends) - self.clock()))
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._changed.wait()
