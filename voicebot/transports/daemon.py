"""The smart-speaker daemon: wake word, command, answer, follow-up, and unattended running.

The daemon listens all the time but does nothing until it hears the wake word. Then it plays
a short cue, passes the audio to a conversation (a local :class:`~voicebot.session.Session`,
or a remote ``voicebot serve`` in satellite mode), and keeps listening for a follow-up for a
few seconds after each reply. The wake word said while it speaks interrupts the reply.

It is built to run for months unattended: a failing audio source is reopened with backoff,
any unexpected error ends only the current cycle, SIGTERM stops it cleanly, and it talks to
systemd (``READY=1``, watchdog pings) when started as a ``Type=notify`` service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shlex
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..audio import StreamResampler, float_to_pcm16
from ..config import DaemonSettings
from ..engines.base import WakeWordDetector
from ..errors import VoicebotError
from ..events import (
    AudioOut,
    ErrorEvent,
    Event,
    Interrupted,
    ReplyDone,
    SessionState,
    SpeechStarted,
    SpeechStopped,
    StateChanged,
    TimerDismissed,
    TimerFinished,
    Transcript,
    WakeWordDetected,
)
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import VoiceMetrics
from ..workers import ModelWorker
from .client import ServerUnavailable

__all__ = [
    "Conversation",
    "Daemon",
    "ResamplingSource",
    "StatusReporter",
    "cue",
    "sd_notify",
    "watchdog_interval_s",
]

_LOGGER = logging.getLogger(__name__)

_RATE_HZ = 16000
Sink = Callable[[Event], Awaitable[None]]


class Conversation(Protocol):
    """What the daemon talks through: a local session or a remote server."""

    conversation_id: str
    """The stored conversation's id."""

    @property
    def replying(self) -> bool:
        """A reply is being prepared or played."""
        ...

    async def start(self) -> str:
        """Open the conversation; returns its id."""
        ...

    async def feed(self, pcm: bytes) -> None:
        """16 kHz PCM16 audio of the user."""
        ...

    def reset_input(self) -> None:
        """Forget a partial utterance."""
        ...

    async def interrupt(self) -> None:
        """Cut the current reply."""
        ...

    async def end_of_input(self) -> None:
        """No more audio: finish the current turn."""
        ...

    async def close(self) -> None:
        """Close it, saving what was heard."""
        ...


def cue(kind: str = "wake", sample_rate_hz: int = 22050) -> bytes:
    """A short chime: ``wake`` rises (I'm listening), ``error`` falls (I can't help now),
    ``timer`` rings twice (a timer ended)."""
    notes = {
        "wake": (660.0, 880.0),
        "error": (660.0, 440.0),
        "bye": (880.0, 660.0),
        "timer": (880.0, 1175.0, 1568.0, 880.0, 1175.0, 1568.0),
    }[kind]
    parts = []
    for freq in notes:
        n = int(0.11 * sample_rate_hz)
        t = np.arange(n) / sample_rate_hz
        envelope = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: no clicks
        parts.append(0.35 * envelope * np.sin(2 * math.pi * freq * t))
        parts.append(np.zeros(int(0.03 * sample_rate_hz)))
    return float_to_pcm16(np.concatenate(parts).astype(np.float32))


def sd_notify(message: str) -> bool:
    """Tell systemd something (``READY=1``, ``WATCHDOG=1``...); False when not under systemd.

    The protocol is one datagram to ``$NOTIFY_SOCKET``; implemented here rather than pulling
    in libsystemd bindings for it.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)  # a stuck reader must never block the event loop
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as error:
        _LOGGER.warning("cannot notify systemd: %s", error)
        return False
    return True


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """How often to ping systemd's watchdog (half its timeout), or None when it wants none.

    systemd sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, the process it watches) when the
    unit has ``WatchdogSec=``.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", "0") or 0)
        pid = int(env.get("WATCHDOG_PID", "0") or 0)
    except ValueError:
        return None
    if usec <= 0 or (pid and pid != os.getpid()):
        return None
    return usec / 2e6


async def _ping_watchdog(interval_s: float) -> None:
    """Tell systemd the event loop is alive, until cancelled."""
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)


class StatusReporter:
    """Publishes the daemon's state: log, hook command, status file and local HTTP endpoint."""

    def __init__(
        self,
        settings: DaemonSettings,
        *,
        hook_timeout_s: float = 10.0,
        workers: Callable[[], list[ModelWorker]] | None = None,
    ) -> None:
        """Create a reporter from the daemon settings.

        Args:
            settings: The daemon settings (status file, port, hook).
            hook_timeout_s: A state hook still running after this is killed.
            workers: Reads the model workers (their queues are in the metrics).
        """
        self.settings = settings
        self.metrics = VoiceMetrics(
            sessions=lambda: int(self.state not in (None, SessionState.IDLE)),
            workers=workers,
            role="daemon",
        )
        """Prometheus metrics, at ``/metrics`` on the status port (the session is the one
        conversation: active while awake)."""
        self.hook_timeout_s = hook_timeout_s
        """A state hook still running after this is killed."""
        self.state: SessionState | None = None
        """The current state (None before the daemon starts)."""
        self.info: dict[str, Any] = {"wake_words": 0, "turns": 0, "errors": 0}
        """Counters published with the state."""
        self.started_at = time.time()
        # Hooks run one at a time, in the order of the changes: an LED must not end up
        # showing an older state because a later hook finished first.
        self._hook_queue: asyncio.Queue[SessionState] = asyncio.Queue(maxsize=64)
        self._hook_runner: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None

    def snapshot(self) -> dict[str, Any]:
        """The state as JSON-ready data."""
        return {
            "state": self.state.value if self.state else "starting",
            "since": self.info.get("since", self.started_at),
            "uptime_s": round(time.time() - self.started_at, 1),
            **{k: v for k, v in self.info.items() if k != "since"},
        }

    async def start(self) -> None:
        """Start the HTTP endpoint, if configured."""
        if self.settings.status_port:
            self._server = await asyncio.start_server(
                self._serve_http, "127.0.0.1", self.settings.status_port
            )
        self._write_file()

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readuntil(b"\r\n\r\n")
            target = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
            if target.split(b"?", 1)[0] == b"/metrics":
                body, kind = self.metrics.exposition(), f"{METRICS_CONTENT_TYPE}; charset=utf-8"
            else:
                body, kind = json.dumps(self.snapshot()).encode(), "application/json"
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\n".encode()
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def set(self, state: SessionState) -> None:
        """Record a state change."""
        if state is self.state:
            return
        self.state = state
        self.info["since"] = time.time()
        _LOGGER.info("state: %s", state.value)
        self._write_file()
        if self.settings.state_hook:
            if self._hook_runner is None or self._hook_runner.done():
                self._hook_runner = asyncio.create_task(self._run_hooks(), name="state-hooks")
            try:
                self._hook_queue.put_nowait(state)
            except asyncio.QueueFull:
                _LOGGER.warning("state hook too slow; skipping %s", state.value)

    def count(self, key: str) -> None:
        """Bump a counter."""
        self.info[key] = int(self.info.get(key, 0)) + 1
        self._write_file()

    async def _run_hooks(self) -> None:
        """The one consumer of the hook queue."""
        while True:
            state = await self._hook_queue.get()
            try:
                await self._run_hook(state)
            finally:
                self._hook_queue.task_done()

    async def _run_hook(self, state: SessionState) -> None:
        try:
            process = await asyncio.create_subprocess_exec(
                *shlex.split(self.settings.state_hook),
                state.value,
                stdin=asyncio.subprocess.DEVNULL,
            )
        except (OSError, ValueError) as error:
            _LOGGER.warning("state hook failed: %s", error)
            return
        try:
            async with asyncio.timeout(self.hook_timeout_s):
                await process.wait()
        except TimeoutError:
            _LOGGER.warning("state hook still running after %g s; killed it", self.hook_timeout_s)
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await asyncio.shield(process.wait())
        if process.returncode:
            _LOGGER.warning("state hook exited with status %d", process.returncode)

    def _write_file(self) -> None:
        if not self.settings.status_file:
            return
        path = Path(self.settings.status_file)
        try:
            staging = path.with_name(path.name + ".tmp")
            staging.write_text(json.dumps(self.snapshot()) + "\n")
            staging.replace(path)
        except OSError as error:
            _LOGGER.warning("cannot write the status file: %s", error)

    async def close(self) -> None:
        """Stop the endpoint; give queued hooks a moment, then stop (and kill) them."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        runner, self._hook_runner = self._hook_runner, None
        if runner is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._hook_queue.join()
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


class ConversationMarker:
    """The daemon's conversation, named in a file of the data directory.

    So that a restart (an update, a crash, ``kill -9``, a power cut) continues the
    conversation the speaker was having, when its last turn was within
    ``conversation_timeout_s``: what the user said before is remembered, as if the daemon had
    never stopped. The store is the truth; the file only says which conversation is the
    daemon's (the same store may hold the conversations of ``voicebot chat`` or ``serve``).
    """

    def __init__(self, path: str | Path, store: Any) -> None:
        """Args:
        path: The file (written atomically).
        store: The conversation store (:class:`voicebot.store.Store`).
        """
        self.path = Path(path)
        self.store = store

    def last(self, within_s: float) -> tuple[str, float] | None:
        """The remembered conversation and the seconds since its last activity, if it is
        still stored and was active within ``within_s``."""
        try:
            conversation_id = self.path.read_text().strip()
        except OSError:
            return None
        if not conversation_id or not self.store.exists(conversation_id):
            return None
        idle_s = max(0.0, time.time() - self.store.conversation(conversation_id).updated_at)
        return (conversation_id, idle_s) if idle_s <= within_s else None

    def remember(self, conversation_id: str) -> None:
        """Name ``conversation_id`` as the daemon's (a crash mid-write leaves the old name)."""
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(conversation_id)
        os.replace(partial, self.path)


class Daemon:
    """The wake-word loop around a conversation."""

    def __init__(
        self,
        settings: DaemonSettings,
        *,
        wake: WakeWordDetector,
        make_conversation: Callable[[Sink], Conversation],
        speaker: Sink,
        status: StatusReporter | None = None,
        output_sample_rate_hz: int = 22050,
        clock: Callable[[], float] = time.monotonic,
        cue_tail_s: float = 0.3,
        mute_for_cue: bool = True,
        on_conversation: Callable[[str], Awaitable[None]] | None = None,
        resumed_idle_s: float | None = None,
    ) -> None:
        """Create a daemon.

        Args:
            settings: Wake word, windows and status settings.
            wake: The wake word detector.
            make_conversation: Builds a conversation whose events go to the given sink.
            speaker: Where audio (replies and cues) and events go.
            status: State publisher (default: log only).
            output_sample_rate_hz: Rate of the cues.
            clock: Monotonic seconds.
            cue_tail_s: After the wake cue has played, the microphone stays ignored this long
                (the cue's echo and the speaker's latency).
            mute_for_cue: Ignore the input while the wake cue plays (and ``cue_tail_s``
                after). Off for a recording, which has no speaker to echo.
            on_conversation: Called with the id of each conversation opened (to remember it
                across a restart: :class:`ConversationMarker`).
            resumed_idle_s: The first conversation ``make_conversation`` builds resumes one
                whose last activity was this long ago: a wake word within
                ``conversation_timeout_s`` of it continues it.
        """
        self.settings = settings
        self.wake = wake
        self.speaker = speaker
        self.status = status or StatusReporter(settings)
        self._make_conversation = make_conversation
        self._clock = clock
        self._rate = output_sample_rate_hz
        self._cue_tail_s = cue_tail_s
        self._mute_for_cue = mute_for_cue
        self._wake_worker = ModelWorker("wake")
        self._conversation: Conversation | None = None
        self._awake = False
        self._deadline: float | None = None
        self._refractory_until = 0.0
        self._last_activity = -math.inf if resumed_idle_s is None else clock() - resumed_idle_s
        self._on_conversation = on_conversation
        self._noted_conversation = ""
        self._session_state = SessionState.LISTENING
        self._speech_open = False
        self._deaf_until_s = 0.0  # input stream time until which the mic hears the cue
        self._deaf = False
        self.wake_times: list[float] = []
        """Input stream times (s) of every wake word detection."""
        self._stream_s = 0.0
        self._stopping = asyncio.Event()
        self._ringing: dict[str, asyncio.Task[None]] = {}  # finished timers, until "stop"

    @property
    def awake(self) -> bool:
        """True between the wake word and the end of the follow-up window."""
        return self._awake

    def stop(self) -> None:
        """Ask the run loop to end (SIGTERM)."""
        self._stopping.set()

    async def run(
        self,
        open_source: Callable[[], AsyncIterator[bytes]],
        *,
        restart: bool = True,
    ) -> None:
        """Listen until stopped or (with ``restart=False``) until the source ends.

        Under systemd it sends ``READY=1`` once listening, ``STATUS=`` on state changes,
        ``WATCHDOG=1`` pings when the unit asks for them, and ``STOPPING=1`` at the end.

        Args:
            open_source: Opens the audio source (16 kHz PCM16 chunks). If it fails or ends
                and ``restart`` is true, it is opened again with backoff. Each source opened
                is closed when its cycle ends (``aclose()`` and/or ``close()``, if it has
                them), so a device is never left open behind a restart.
            restart: Reopen the source after an error or its end.
        """
        await self.status.start()
        self.status.set(SessionState.IDLE)
        await self.speaker(StateChanged(SessionState.IDLE))
        sd_notify("READY=1")
        interval_s = watchdog_interval_s()
        watchdog = (
            asyncio.create_task(_ping_watchdog(interval_s), name="systemd-watchdog")
            if interval_s
            else None
        )
        backoff = 0.5
        try:
            while not self._stopping.is_set():
                try:
                    await self._listen(open_source())
                    backoff = 0.5
                    if not restart or self._stopping.is_set():
                        break
                    _LOGGER.warning("audio source ended; reopening")
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # the loop boundary: log, recover, keep serving
                    _LOGGER.exception("daemon cycle failed: %s", error)
                    self.status.count("errors")
                    await self._go_idle()
                    if not restart:
                        raise
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._stopping.wait()
                backoff = min(backoff * 2, 10.0)
            if self._conversation is not None:
                await self._conversation.end_of_input()
        finally:
            sd_notify("STOPPING=1")
            if watchdog is not None:
                watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watchdog
            for ring in self._ringing.values():
                ring.cancel()
            self._ringing.clear()
            if self._conversation is not None:
                await self._conversation.close()
            self._wake_worker.close()
            self.status.set(SessionState.IDLE)
            await self.status.close()

    async def _listen(self, source: AsyncIterator[bytes]) -> None:
        """One cycle: the source's audio until it ends or the daemon stops; then close it."""
        try:
            async for chunk in source:
                if self._stopping.is_set():
                    return
                await self._cycle(chunk)
        finally:
            await _close_source(source)

    async def _cycle(self, chunk: bytes) -> None:
        chunk_start_s = self._stream_s
        self._stream_s += len(chunk) / 2 / _RATE_HZ
        now = self._clock()
        heard = await self._wake_worker.run(self.wake.process, chunk)
        if heard and now >= self._refractory_until:
            await self._on_wake(now)
            return
        if not self._awake or self._conversation is None:
            return
        if self._deaf:
            if chunk_start_s < self._deaf_until_s:
                return  # the wake cue (or its echo) is playing: not the user
            self._deaf = False
            self._conversation.reset_input()
        await self._conversation.feed(chunk)
        if (
            self._deadline is not None
            and now > self._deadline
            and not self._speech_open
            and not self._conversation.replying
        ):
            await self._go_idle()

    async def _on_wake(self, now: float) -> None:
        self._refractory_until = now + self.settings.wake_refractory_s
        self.wake_times.append(self._stream_s)
        await self._wake_worker.run(self.wake.reset)
        self.status.count("wake_words")
        await self.speaker(WakeWordDetected(self.wake.name, self._stream_s))
        if self._conversation is not None and self._conversation.replying:
            await self._conversation.interrupt()  # barge-in by wake word
        if (
            self._conversation is not None
            and now - self._last_activity > self.settings.conversation_timeout_s
        ):
            await self._conversation.close()
            self._conversation = None
        if self._conversation is None:
            self._conversation = self._make_conversation(self._on_event)
        try:
            await self._note(await self._conversation.start())
        except VoicebotError as error:
            # Say so out loud (a falling chime), and stay asleep until the next wake word.
            _LOGGER.warning("cannot start the conversation: %s", error)
            self.status.count("errors")
            await self._play_cue("error")
            await self._go_idle()
            return
        self._conversation.reset_input()
        self._awake = True
        self._speech_open = False
        self._last_activity = now
        self._deadline = now + self.settings.command_timeout_s
        if self.settings.cue:
            played_s = await self._play_cue("wake")
            if self._mute_for_cue:
                # The microphone hears the cue: fed, it would start (or pre-roll) an utterance.
                self._deaf = True
                self._deaf_until_s = self._stream_s + played_s + self._cue_tail_s
        await self._publish(SessionState.LISTENING)

    async def open_conversation(self) -> None:
        """Open the conversation before any wake word (so a timer set before a restart,
        whose end the conversation announces, is heard)."""
        if self._conversation is None:
            self._conversation = self._make_conversation(self._on_event)
            await self._note(await self._conversation.start())

    async def _note(self, conversation_id: str) -> None:
        """Tell ``on_conversation`` about a conversation opened (once each)."""
        if self._on_conversation is not None and conversation_id != self._noted_conversation:
            self._noted_conversation = conversation_id
            await self._on_conversation(conversation_id)

    async def _go_idle(self) -> None:
        if self._awake:
            _LOGGER.info("back to sleep")
        self._awake = False
        self._deadline = None
        self._speech_open = False
        self._deaf = False
        await self._publish(SessionState.IDLE)

    async def _publish(self, state: SessionState) -> None:
        if state is not self.status.state:
            self.status.set(state)
            sd_notify(f"STATUS={state.value}")
            await self.speaker(StateChanged(state))

    async def _ring(self, timer_id: str) -> None:
        """Chime for a finished timer every ``timer_ring_interval_s`` until it is dismissed
        (its task is cancelled) or ``timer_ring_max_s`` has passed; quiet while awake."""
        settings = self.settings
        rings = max(0, int(settings.timer_ring_max_s / max(settings.timer_ring_interval_s, 0.1)))
        try:
            for _ in range(rings):
                await asyncio.sleep(settings.timer_ring_interval_s)
                if not self._awake:
                    await self._play_cue("timer")
        finally:
            if self._ringing.get(timer_id) is asyncio.current_task():
                del self._ringing[timer_id]

    async def _play_cue(self, kind: str) -> float:
        """Play a cue; returns its length in seconds."""
        pcm = cue(kind, self._rate)
        await self.speaker(AudioOut(0, pcm, self._rate))
        return len(pcm) / 2 / self._rate

    async def _on_event(self, event: Event) -> None:
        self.status.metrics.observe(event)
        now = self._clock()
        if isinstance(event, SpeechStarted):
            self._speech_open = True
            self._last_activity = now
        elif isinstance(event, SpeechStopped):
            self._speech_open = False
        elif isinstance(event, Transcript):
            self._speech_open = False
            self._last_activity = now
            if not event.text:
                self._deadline = now + self.settings.follow_up_s
        elif isinstance(event, ReplyDone):
            self.status.count("turns")
            self._last_activity = now
        elif isinstance(event, Interrupted):
            self._last_activity = now
        elif isinstance(event, TimerFinished):
            # Rung without a wake word: the chime now, then the conversation says which
            # timer. Asleep meanwhile, so the microphone never takes the chime or the
            # announcement for the user ("okay nabu, stop" still cuts it short).
            await self._go_idle()
            await self.speaker(event)
            await self._play_cue("timer")
            self._last_activity = now
            if event.timer_id not in self._ringing:
                self._ringing[event.timer_id] = asyncio.create_task(
                    self._ring(event.timer_id), name=f"timer-ring-{event.timer_id}"
                )
            return
        elif isinstance(event, TimerDismissed):
            ring = self._ringing.pop(event.timer_id, None)
            if ring is not None:
                ring.cancel()
        elif isinstance(event, ErrorEvent) and event.code == ServerUnavailable.code:
            # Satellite mode: the server cannot be reached or went away. Mid-conversation
            # that ends it: say so (a falling chime) and wait for the wake word again.
            if not self._awake:
                _LOGGER.info("%s", event.message)
                return
            self.status.count("errors")
            await self.speaker(event)
            await self._play_cue("error")
            await self._go_idle()
            return
        elif isinstance(event, ErrorEvent):
            self.status.count("errors")
            self._speech_open = False
        elif isinstance(event, StateChanged):
            previous, self._session_state = self._session_state, event.state
            if self._awake:
                await self._publish(event.state)
                if event.state is SessionState.LISTENING and previous in (
                    SessionState.THINKING,
                    SessionState.SPEAKING,
                ):
                    # The reply is over: the follow-up window opens.
                    self._deadline = now + self.settings.follow_up_s
                    self._speech_open = False
                    self._last_activity = now
            return  # the daemon publishes its own state
        await self.speaker(event)


async def _close_source(source: object) -> None:
    """Close an audio source: ``aclose()`` (async generators) and ``close()`` if it has them."""
    for name in ("aclose", "close"):
        method = getattr(source, name, None)
        if method is None:
            continue
        try:
            result = method()
            if asyncio.iscoroutine(result):
                await result
        except Exception as error:  # closing must not mask why the cycle ended
            _LOGGER.warning("closing the audio source failed: %s", error)


class ResamplingSource:
    """Wraps an audio iterator at any rate into 16 kHz chunks; closing it closes the device."""

    def __init__(
        self,
        source: AsyncIterator[bytes],
        sample_rate_hz: int,
        *,
        close: Callable[[], object] | None = None,
    ) -> None:
        """Resample ``source`` from ``sample_rate_hz`` to 16 kHz.

        Args:
            source: The audio at ``sample_rate_hz``.
            sample_rate_hz: Its rate.
            close: Called by :meth:`aclose` after ``source`` is closed (e.g. the
                microphone's ``close``, which releases the device).
        """
        self._source = source
        self._resampler = StreamResampler(sample_rate_hz, _RATE_HZ)
        self._close = close
        self._closed = False

    def __aiter__(self) -> ResamplingSource:
        return self

    async def __anext__(self) -> bytes:
        while True:
            chunk = self._resampler.process(await anext(self._source))
            if chunk:
                return chunk

    async def aclose(self) -> None:
        """Close the wrapped iterator and the device behind it (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            await _close_source(self._source)
        finally:
            if self._close is not None:
                result = self._close()
                if asyncio.iscoroutine(result):
                    await result
