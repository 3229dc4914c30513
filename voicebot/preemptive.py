"""A reply worked during the end-of-turn silence and held back until the turn is confirmed.

Like LiveKit's preemptive generation: as soon as the early transcript of a pause exists, the
chat model writes the reply and the voice speaks its first piece, but every event is held.
If the turn ends with the same words, the held events go out at once and the reply goes on
live; otherwise it is cancelled and nothing of it was heard or stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from .dialogue import Dialogue
from .events import AudioOut, Event, ReplyText
from .responder import ReplyOutcome, Responder, Sink, ms_between

__all__ = ["PreemptiveReply"]

_LOGGER = logging.getLogger(__name__)


class PreemptiveReply:
    """One held reply to a candidate user turn.

    While held, the responder runs until the audio of its first piece is made; the next piece
    waits for :meth:`release` (the model keeps writing meanwhile), so an abandoned reply costs
    little voice time.
    """

    def __init__(
        self,
        responder: Responder,
        dialogue: Dialogue,
        candidate: str,
        turn_id: int,
        *,
        started_at: float,
        clock: Callable[[], float],
    ) -> None:
        """Start the reply (on the running loop).

        Args:
            responder: Writes and speaks it.
            dialogue: A copy of the conversation ending with the candidate user turn.
            candidate: The transcript the reply answers.
            turn_id: The turn it will be if confirmed (stamped on its events).
            started_at: Clock time of the end of the user's speech (the metrics' origin).
            clock: The session's clock.
        """
        self.candidate = candidate
        """The transcript the reply answers."""
        self.turn_id = turn_id
        """The turn it answers."""
        self.started_at = started_at
        """Where its metrics are measured from."""
        self.cancel_event = threading.Event()
        """Set to stop the engines."""
        self.metrics_ms: dict[str, float] = {}
        """Stage latencies from ``started_at``, written as they happen."""
        self._clock = clock
        self._held: list[Event] = []
        self._sink: Sink | None = None
        self._released = asyncio.Event()
        self.task: asyncio.Task[ReplyOutcome] = asyncio.create_task(
            responder.respond(
                dialogue,
                turn_id,
                self._emit,
                cancel=self.cancel_event,
                started_at=started_at,
                metrics_ms=self.metrics_ms,
            ),
            name=f"reply-preemptive-{turn_id}",
        )
        self.task.add_done_callback(_consume_result)

    @property
    def held_events(self) -> list[Event]:
        """Events made and not released (a copy)."""
        return list(self._held)

    async def _emit(self, event: Event) -> None:
        if not self._released.is_set():
            if isinstance(event, ReplyText) and any(isinstance(e, ReplyText) for e in self._held):
                await self._released.wait()  # one piece ahead is enough
            else:
                self._held.append(event)
                return
        assert self._sink is not None
        await self._sink(event)

    async def release(self, sink: Sink) -> ReplyOutcome:
        """The turn is confirmed: send what was held to ``sink``, go on live, and finish.

        Cancelling the caller cancels the reply.
        """
        self._sink = sink
        first_audio = True
        try:
            while self._held:
                event = self._held.pop(0)
                if first_audio and isinstance(event, AudioOut):
                    # Made ahead of time: it reaches the user now, not when it was made.
                    self.metrics_ms["first_audio"] = ms_between(self.started_at, self._clock())
                    first_audio = False
                await sink(event)
            self._released.set()
            return await self.task
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Abandon it: the engines stop, and what it made is dropped unheard."""
        self.cancel_event.set()
        self._held.clear()
        self.task.cancel()

    async def close(self) -> None:
        """Discard it and wait for its task to end."""
        self.discard()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


def _consume_result(task: asyncio.Task[ReplyOutcome]) -> None:
    """Retrieve an abandoned reply's outcome, so its failure is logged rather than lost."""
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.debug("preemptive reply failed", exc_info=task.exception())
