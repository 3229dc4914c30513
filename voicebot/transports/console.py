"""What the terminal shows during a voice chat: what was heard, what is said, the state."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

from ..events import (
    ErrorEvent,
    Event,
    Interrupted,
    Metrics,
    ReplyDone,
    ReplyText,
    SessionState,
    StateChanged,
    TimerCancelled,
    TimerDismissed,
    TimerFinished,
    TimerStarted,
    Transcript,
    WakeWordDetected,
)

__all__ = ["ConsoleView", "fan_out", "latency_summary"]

_STATE_LABELS = {
    SessionState.IDLE: "idle (say the wake word)",
    SessionState.LISTENING: "listening...",
    SessionState.THINKING: "thinking...",
    SessionState.SPEAKING: "speaking...",
}


def fan_out(*sinks: Callable[[Event], Awaitable[None]]) -> Callable[[Event], Awaitable[None]]:
    """One sink that hands each event to several."""

    async def sink(event: Event) -> None:
        for each in sinks:
            await each(event)

    return sink


class ConsoleView:
    """A session sink printing the dialogue on ``out`` and state and timings on ``err``."""

    def __init__(
        self,
        name: str,
        *,
        out: TextIO | None = None,
        err: TextIO | None = None,
        show_state: bool = True,
        show_metrics: bool = True,
    ) -> None:
        """Create a view for an assistant called ``name``."""
        self.name = name
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.show_state = show_state
        self.show_metrics = show_metrics
        self.metrics: list[dict[str, float]] = []
        """Every turn's metrics."""
        self._line_open = False

    async def __call__(self, event: Event) -> None:
        """Print the event."""
        if isinstance(event, Transcript) and event.final and event.text:
            self._end_line()
            print(f"you: {event.text}", file=self.out, flush=True)
        elif isinstance(event, ReplyText):
            if not self._line_open:
                print(f"{self.name}:", end="", file=self.out)
                self._line_open = True
            print(f" {event.text}", end="", file=self.out, flush=True)
        elif isinstance(event, ReplyDone):
            self._end_line()
        elif isinstance(event, Interrupted):
            self._end_line()
            print(f"  [interrupted; heard: {event.heard_text!r}]", file=self.out, flush=True)
        elif isinstance(event, WakeWordDetected):
            self._end_line()
            print(f"[wake word: {event.name}]", file=self.err, flush=True)
        elif isinstance(event, Metrics):
            self.metrics.append(event.values_ms)
            if self.show_metrics:
                parts = ", ".join(f"{k} {v:.0f}" for k, v in event.values_ms.items())
                print(f"[turn {event.turn_id} ms: {parts}]", file=self.err, flush=True)
        elif isinstance(event, ErrorEvent):
            self._end_line()
            print(f"[error: {event.message}]", file=self.err, flush=True)
        elif isinstance(event, TimerStarted | TimerFinished | TimerCancelled | TimerDismissed):
            self._end_line()
            name = f"{event.name} timer" if event.name else f"{event.seconds:g} s timer"
            what = {
                TimerStarted: "running",
                TimerFinished: "DONE",
                TimerCancelled: "cancelled",
                TimerDismissed: "stopped ringing",
            }[type(event)]
            if isinstance(event, TimerStarted) and event.paused:
                what = "paused"
            print(f"[{name}: {what}]", file=self.err, flush=True)
        elif isinstance(event, StateChanged) and self.show_state:
            print(f"[{_STATE_LABELS[event.state]}]", file=self.err, flush=True)

    def _end_line(self) -> None:
        if self._line_open:
            print(file=self.out, flush=True)
            self._line_open = False


def latency_summary(metrics: list[dict[str, float]], key: str = "voice_to_voice") -> str:
    """ "p50 X ms, p95 Y ms, max Z ms over N turns" for one metric."""
    values = sorted(m[key] for m in metrics if key in m)
    if not values:
        return f"no {key} measured"
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return (
        f"{key}: p50 {statistics.median(values):.0f} ms, p95 {p95:.0f} ms, "
        f"max {values[-1]:.0f} ms over {len(values)} turns"
    )
