"""Satellite mode: the daemon's conversation lives on a remote ``voicebot serve``.

The wake word, microphone and speaker stay on the small device; after the wake word its
audio streams to the server over the websocket protocol, and the server's events and reply
audio come back. A dropped server is reconnected with backoff, resuming the same
conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import VoicebotError
from ..events import (
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
    TimerCancelled,
    TimerDismissed,
    TimerFinished,
    TimerStarted,
    Transcript,
)
from .client import ServerUnavailable, VoiceClient

__all__ = ["RemoteConversation"]

_LOGGER = logging.getLogger(__name__)

Sink = Callable[[Event], Awaitable[None]]


class RemoteConversation:
    """A conversation held by a remote server (the daemon's :class:`Conversation`)."""

    def __init__(
        self,
        url: str,
        sink: Sink,
        *,
        token: str = "",
        profile: str | None = None,
        output_sample_rate_hz: int = 22050,
        clock: Callable[[], float] = time.monotonic,
        connect_timeout_s: float = 5.0,
        send_timeout_s: float = 2.0,
    ) -> None:
        """Describe the remote conversation; :meth:`start` connects.

        Args:
            url: The server's ``ws://`` URL.
            sink: Receives the server's events and reply audio.
            token: The server's shared secret.
            profile: The bot profile to ask for.
            output_sample_rate_hz: The rate the reply audio should come at.
            clock: Monotonic seconds.
            connect_timeout_s: Give up connecting after this (keep it below the daemon's
                command timeout, so the failure is still announced while it listens).
            send_timeout_s: A server that does not take audio for this long is lost.
        """
        self.url = url
        self.conversation_id = ""
        """The server's conversation id (kept across reconnections)."""
        self._sink = sink
        self._token = token
        self._profile = profile
        self._out_rate = output_sample_rate_hz
        self._clock = clock
        self._connect_timeout_s = connect_timeout_s
        self._send_timeout_s = send_timeout_s
        self._client: VoiceClient | None = None
        self._connector: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._abandoned: VoiceClient | None = None  # took no audio: being closed, reported
        self._closing = False
        self._state = SessionState.LISTENING
        self._turn = 0
        self._playing_until = 0.0

    @property
    def replying(self) -> bool:
        """Busy: connecting, the server is preparing a reply, or the speaker is playing one.

        While connecting the daemon must not close its listening window: the outcome (a
        connection, or the error cue) is still to come.
        """
        return (
            self.connecting
            or self._state in (SessionState.THINKING, SessionState.SPEAKING)
            or self._clock() < self._playing_until
        )

    @property
    def connected(self) -> bool:
        """The websocket is open (and usable)."""
        return (
            self._reader is not None
            and not self._reader.done()
            and self._client is not None
            and self._client is not self._abandoned
        )

    @property
    def connecting(self) -> bool:
        """A connection attempt is under way."""
        return self._connector is not None and not self._connector.done()

    async def start(self) -> str:
        """Start connecting in the background (resuming the conversation if there was one).

        Returns at once with the id known so far, so that the daemon keeps hearing the wake
        word; a failure comes to the sink as an ``ErrorEvent`` with code
        ``server_unavailable``.
        """
        if not self.connected and not self.connecting:
            self._closing = False
            self._connector = asyncio.create_task(self._connect(), name="satellite-connect")
        return self.conversation_id

    async def _connect(self) -> None:
        client = VoiceClient(
            self.url,
            sample_rate_hz=16000,
            token=self._token,
            profile=self._profile,
            conversation_id=self.conversation_id or None,
            output_sample_rate_hz=self._out_rate,
            barge_in=False,  # the satellite is half-duplex; the wake word interrupts
            open_timeout_s=self._connect_timeout_s,
        )
        try:
            ready = await client.connect()
        except ServerUnavailable as error:
            _LOGGER.warning("%s", error)
            with contextlib.suppress(Exception):
                await client.close()
            await self._sink(ErrorEvent(ServerUnavailable.code, str(error)))
            return
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()  # the reader of an abandoned connection: already reported
        self._client = client
        self.conversation_id = str(ready["conversation_id"])
        self._state = SessionState.LISTENING
        self._playing_until = 0.0
        self._reader = asyncio.create_task(self._read(client), name="satellite-reader")
        _LOGGER.info("satellite connected to %s (conversation %s)", self.url, self.conversation_id)

    async def _read(self, client: VoiceClient) -> None:
        try:
            async for item in client.events():
                try:
                    event = self._translate(item)
                except (KeyError, TypeError, ValueError) as error:
                    _LOGGER.warning("unexpected frame from the server: %s", error)
                    continue
                if event is not None:
                    await self._sink(event)
        except VoicebotError as error:  # a broken frame: the session cannot go on
            _LOGGER.warning("%s", error)
        if self._closing or client is not self._client or client is self._abandoned:
            return  # closed on purpose, or replaced, or already reported
        _LOGGER.warning("lost the connection to %s", self.url)
        with contextlib.suppress(Exception):
            await client.close()
        await self._sink(
            ErrorEvent(
                ServerUnavailable.code, f"lost the connection to {self.url}", self._turn or None
            )
        )
        if self._state is not SessionState.LISTENING:
            self._state = SessionState.LISTENING
            await self._sink(StateChanged(SessionState.LISTENING))

    def _translate(self, item: dict[str, Any] | bytes) -> Event | None:
        if isinstance(item, bytes):
            now = self._clock()
            self._playing_until = max(now, self._playing_until) + len(item) / 2 / self._out_rate
            return AudioOut(self._turn, item, self._out_rate)
        kind = item.get("type")
        turn = int(item.get("turn_id", self._turn) or 0)
        if kind == "state":
            self._state = SessionState(item["state"])
            return StateChanged(self._state)
        if kind == "speech_started":
            return SpeechStarted(turn, 0.0)
        if kind == "speech_stopped":
            return SpeechStopped(turn, 0.0, 0.0)
        if kind == "transcript":
            self._turn = turn
            return Transcript(turn, str(item["text"]), bool(item.get("final", True)))
        if kind == "reply_text":
            return ReplyText(turn, str(item["text"]))
        if kind == "reply_done":
            return ReplyDone(turn, str(item["text"]))
        if kind == "interrupted":
            self._playing_until = 0.0
            return Interrupted(turn, str(item["heard_text"]))
        if kind == "metrics":
            return Metrics(turn, {k: float(v) for k, v in item["ms"].items()})
        if kind == "error":
            return ErrorEvent(str(item["code"]), str(item["message"]), item.get("turn_id"))
        if kind == "timer_started":
            timer = (str(item["id"]), str(item["name"]), float(item["seconds"]))
            return TimerStarted(*timer, float(item["remaining_s"]), bool(item.get("paused")))
        timer_events: dict[str, type[TimerFinished | TimerCancelled | TimerDismissed]] = {
            "timer_finished": TimerFinished,
            "timer_cancelled": TimerCancelled,
            "timer_dismissed": TimerDismissed,
        }
        if kind in timer_events:
            # The server keeps the timers; the daemon chimes on TimerFinished.
            return timer_events[kind](str(item["id"]), str(item["name"]), float(item["seconds"]))
        return None

    async def feed(self, pcm: bytes) -> None:
        """Stream audio to the server; dropped while it is not connected."""
        client = self._client
        if client is None or not self.connected:
            return
        try:
            async with asyncio.timeout(self._send_timeout_s):
                await client.send_audio(pcm)
        except TimeoutError:
            # Closing waits for the server's answer: do it in the background, and say so now.
            _LOGGER.warning("%s takes no audio; dropping the connection", self.url)
            self._abandoned = client
            self._closer = asyncio.create_task(client.close(), name="satellite-close")
            await self._sink(ErrorEvent(ServerUnavailable.code, f"{self.url} takes no audio"))
        except Exception as error:  # a closing connection: the reader reports the loss
            _LOGGER.debug("cannot send audio: %s", error)

    def reset_input(self) -> None:
        """Nothing to reset locally: the server segments the audio."""

    async def interrupt(self) -> None:
        """Ask the server to cut the reply, and stop playing it now."""
        self._playing_until = 0.0
        await self._sink(Interrupted(self._turn, ""))
        if self._client is not None and self.connected:
            with contextlib.suppress(Exception):
                await self._client.interrupt()

    async def end_of_input(self) -> None:
        """Let the server finish the current reply."""
        if self._client is not None and self.connected:
            self._closing = True
            await self._client.stop()
            if self._reader is not None:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError, VoicebotError):
                    async with asyncio.timeout(60):
                        await asyncio.shield(self._reader)

    async def close(self) -> None:
        """Close the connection (and stop a connection attempt)."""
        self._closing = True
        for task in (self._connector, self._reader, self._closer):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._client.close()
        self._client = None
