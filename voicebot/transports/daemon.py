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
from collections.abc import AsyncIterator, Awaitable, Callable
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
    Transcript,
    WakeWordDetected,
)
from ..workers import ModelWorker

__all__ = ["Conversation", "Daemon", "StatusReporter", "cue", "sd_notify"]

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
    """A short chime: ``wake`` rises (I'm listening), ``error`` falls (I can't help now)."""
    notes = {"wake": (660.0, 880.0), "error": (660.0, 440.0), "bye": (880.0, 660.0)}[kind]
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
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as error:
        _LOGGER.warning("cannot notify systemd: %s", error)
        return False
    return True


class StatusReporter:
    """Publishes the daemon's state: log, hook command, status file and local HTTP endpoint."""

    def __init__(self, settings: DaemonSettings) -> None:
        """Create a reporter from the daemon settings."""
        self.settings = settings
        self.state: SessionState | None = None
        """The current state (None before the daemon starts)."""
        self.info: dict[str, Any] = {"wake_words": 0, "turns": 0, "errors": 0}
        """Counters published with the state."""
        self.started_at = time.time()
        self._hooks: set[asyncio.Task[None]] = set()
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
                await reader.readuntil(b"\r\n\r\n")
            body = json.dumps(self.snapshot()).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
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
            task = asyncio.create_task(self._run_hook(state), name=f"state-hook-{state.value}")
            self._hooks.add(task)
            task.add_done_callback(self._hooks.discard)

    def count(self, key: str) -> None:
        """Bump a counter."""
        self.info[key] = int(self.info.get(key, 0)) + 1
        self._write_file()

    async def _run_hook(self, state: SessionState) -> None:
        try:
            process = await asyncio.create_subprocess_exec(
                *shlex.split(self.settings.state_hook),
                state.value,
                stdin=asyncio.subprocess.DEVNULL,
            )
            async with asyncio.timeout(10):
                await process.wait()
        except (OSError, TimeoutError) as error:
            _LOGGER.warning("state hook failed: %s", error)

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
        """Stop the endpoint; give running hooks a moment."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._hooks:
            await asyncio.wait(self._hooks, timeout=2)


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
        """
        self.settings = settings
        self.wake = wake
        self.speaker = speaker
        self.status = status or StatusReporter(settings)
        self._make_conversation = make_conversation
        self._clock = clock
        self._rate = output_sample_rate_hz
        self._wake_worker = ModelWorker("wake")
        self._conversation: Conversation | None = None
        self._awake = False
        self._deadline: float | None = None
        self._refractory_until = 0.0
        self._last_activity = -math.inf
        self._session_state = SessionState.LISTENING
        self._speech_open = False
        self.wake_times: list[float] = []
        """Input stream times (s) of every wake word detection."""
        self._stream_s = 0.0
        self._stopping = asyncio.Event()

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

        Args:
            open_source: Opens the audio source (16 kHz PCM16 chunks). If it fails or ends
                and ``restart`` is true, it is opened again with backoff.
            restart: Reopen the source after an error or its end.
        """
        await self.status.start()
        self.status.set(SessionState.IDLE)
        await self.speaker(StateChanged(SessionState.IDLE))
        backoff = 0.5
        try:
            while not self._stopping.is_set():
                try:
                    async for chunk in self._until_stopped(open_source()):
                        await self._cycle(chunk)
                        backoff = 0.5
                    if not restart:
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
            if self._conversation is not None:
                await self._conversation.close()
            self._wake_worker.close()
            self.status.set(SessionState.IDLE)
            await self.status.close()

    async def _until_stopped(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in source:
                if self._stopping.is_set():
                    return
                yield chunk
        finally:
            close = getattr(source, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    async def _cycle(self, chunk: bytes) -> None:
        self._stream_s += len(chunk) / 2 / _RATE_HZ
        now = self._clock()
        heard = await self._wake_worker.run(self.wake.process, chunk)
        if heard and now >= self._refractory_until:
            await self._on_wake(now)
            return
        if not self._awake or self._conversation is None:
            return
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
            await self._conversation.start()
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
            await self._play_cue("wake")
        await self._publish(SessionState.LISTENING)

    async def _go_idle(self) -> None:
        if self._awake:
            _LOGGER.info("back to sleep")
        self._awake = False
        self._deadline = None
        self._speech_open = False
        await self._publish(SessionState.IDLE)

    async def _publish(self, state: SessionState) -> None:
        if state is not self.status.state:
            self.status.set(state)
            sd_notify(f"STATUS={state.value}")
            await self.speaker(StateChanged(state))

    async def _play_cue(self, kind: str) -> None:
        await self.speaker(AudioOut(0, cue(kind, self._rate), self._rate))

    async def _on_event(self, event: Event) -> None:
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


class ResamplingSource:
    """Wraps an audio iterator at any rate into 16 kHz chunks."""

    def __init__(self, source: AsyncIterator[bytes], sample_rate_hz: int) -> None:
        """Resample ``source`` from ``sample_rate_hz`` to 16 kHz."""
        self._source = source
        self._resampler = StreamResampler(sample_rate_hz, _RATE_HZ)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        async for chunk in self._source:
            yield self._resampler.process(chunk)
