"""Prometheus metrics of a server or a daemon: ``/metrics`` in the text exposition format.

Each :class:`VoiceMetrics` keeps its own registry (not the process-wide default), so two
servers in one process (the tests) never share counters. What is measured comes from the
session's own events (:mod:`voicebot.events`): a :class:`~voicebot.events.Metrics` event per
answered turn gives the stage latencies, :class:`~voicebot.events.Interrupted` and
:class:`~voicebot.events.ErrorEvent` the counters; the transports add the connections they
refuse. Gauges (sessions, each model worker's queue) are read when scraped, and so are the
process's own resources (memory, descriptors, threads, asyncio tasks: what a leak shows in),
which ``voicebot bench --soak`` and a dashboard watch over hours.
"""

from __future__ import annotations

import asyncio
import os
import platform
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .events import ErrorEvent, Event, Interrupted, Metrics
from .workers import ModelWorker

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS_S", "STAGES", "VoiceMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4"
"""The ``Content-Type`` of :meth:`VoiceMetrics.exposition` (charset added by the server): the
classic text format, which every Prometheus version reads (``CONTENT_TYPE_LATEST`` of newer
prometheus-client says 1.0.0, the same text for names like ours)."""
STAGES = {
    "end_of_turn": "end of the user's speech to the end of turn decided",
    "stt": "end of turn to the final transcript",
    "llm_first_token": "end of the user's speech to the chat model's first token",
    "first_audio": "end of the user's speech to the first reply audio sent",
    "voice_to_voice": "end of the user's speech to the first reply audio sent (the headline)",
}
"""The stages of a turn's :class:`~voicebot.events.Metrics` made into histograms."""
LATENCY_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 3.0, 5.0, 10.0)
"""Bucket bounds: fine around the 0.3-1.3 s a voice reply should take."""


def _version() -> str:
    try:
        return version("voicebot")
    except PackageNotFoundError:
        return "unknown"


class _WorkerQueues(Collector):
    """``voicebot_worker_queue{worker=...}``: calls waiting at each model's worker, when scraped."""

    def __init__(self, workers: Callable[[], Sequence[ModelWorker]]) -> None:
        self._workers = workers

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "voicebot_worker_queue",
            "Calls waiting at a shared model worker (not counting the one running)",
            labels=["worker"],
        )
        seen: dict[str, int] = {}
        for worker in self._workers():
            # Two chat models (a profile's own) both have workers named "llm": number them.
            seen[worker.name] = seen.get(worker.name, 0) + 1
            label = worker.name if seen[worker.name] == 1 else f"{worker.name}-{seen[worker.name]}"
            family.add_metric([label], worker.queued)
        yield family


def _os_threads() -> int:
    """Threads of this process, native ones included (the engines' pools), from ``/proc``."""
    try:
        with open(f"/proc/{os.getpid()}/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import threading  # no /proc (macOS): the Python threads only

    return threading.active_count()


class _Runtime(Collector):
    """``voicebot_threads`` and ``voicebot_asyncio_tasks``, when scraped.

    The tasks are those of the event loop serving the scrape (the server's own); scraped
    from another thread there is none, and the gauge is left out.
    """

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "voicebot_threads", "Threads of the process, native ones included", value=_os_threads()
        )
        try:
            tasks = len(asyncio.all_tasks(asyncio.get_running_loop()))
        except RuntimeError:
            return
        yield GaugeMetricFamily("voicebot_asyncio_tasks", "asyncio tasks not done", value=tasks)


class VoiceMetrics:
    """The metrics of one server or daemon, in a registry of their own."""

    def __init__(
        self,
        *,
        sessions: Callable[[], int] | None = None,
        workers: Callable[[], Sequence[ModelWorker]] | None = None,
        role: str = "serve",
    ) -> None:
        """Create the metrics.

        Args:
            sessions: Reads the sessions open now (the active-sessions gauge).
            workers: Reads the shared model workers (a queue gauge each).
            role: ``serve`` or ``daemon``, in the build info.
        """
        self.registry = CollectorRegistry(auto_describe=True)
        """Where every metric here is registered."""
        registry = self.registry
        self.latency = {
            stage: Histogram(
                f"voicebot_{stage}_seconds",
                f"Per turn: {text}",
                buckets=LATENCY_BUCKETS_S,
                registry=registry,
            )
            for stage, text in STAGES.items()
        }
        """A histogram per stage of :data:`STAGES`."""
        self.turns = Counter(
            "voicebot_turns",
            "Turns answered, by who answered (the chat model or a skill)",
            ["answered_by"],
            registry=registry,
        )
        self.interruptions = Counter(
            "voicebot_interruptions", "Replies cut by barge-in or interrupt", registry=registry
        )
        self.errors = Counter(
            "voicebot_errors", "Error events sent to clients, by code", ["code"], registry=registry
        )
        self.rejected = Counter(
            "voicebot_rejected_connections",
            "Connections refused, by reason (full, draining, unauthorized, rate_limited, "
            "per_address, origin, host, no_start)",
            ["reason"],
            registry=registry,
        )
        self.sessions = Gauge("voicebot_active_sessions", "Sessions open now", registry=registry)
        self.sessions.set_function(sessions or (lambda: 0))
        if workers is not None:
            registry.register(_WorkerQueues(workers))
        # process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total...
        ProcessCollector(registry=registry)
        registry.register(_Runtime())
        Info("voicebot_build", "voicebot's version", registry=registry).info(
            {"version": _version(), "python": platform.python_version(), "role": role}
        )
        for answered_by in ("model", "skill"):
            self.turns.labels(answered_by)
        for code in ("internal", "llm_unavailable", "overloaded"):
            self.errors.labels(code)  # present from the start: rate() needs a zero
        for reason in ("full", "draining"):
            self.rejected.labels(reason)

    def observe(self, event: Event) -> None:
        """Count what a session's event says (any event may be given: most are ignored)."""
        if isinstance(event, Metrics):
            values = event.values_ms
            self.turns.labels("skill" if "skill" in values else "model").inc()
            for stage, histogram in self.latency.items():
                if stage in values:
                    histogram.observe(values[stage] / 1000.0)
        elif isinstance(event, Interrupted):
            self.interruptions.inc()
        elif isinstance(event, ErrorEvent):
            self.errors.labels(event.code).inc()

    def error(self, code: str) -> None:
        """Count an error sent outside a session's events (a malformed frame)."""
        self.errors.labels(code).inc()

    def reject(self, reason: str) -> None:
        """Count a refused connection."""
        self.rejected.labels(reason).inc()

    def exposition(self) -> bytes:
        """Everything, in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Every sample as ``(name, labels, value)`` (for tests and the console)."""
        for family in self.registry.collect():
            for sample in family.samples:
                yield sample.name, dict(sample.labels), float(sample.value)
