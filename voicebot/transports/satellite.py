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
    ) -> None:
        """Describe the remote conversation; :meth:`start` connects."""
        self.url = url
        self.conversation_id = ""
        """The server's conversation id (kept across reconnections)."""
        self._sink = sink
        self._token = token
        self._profile = profile
        self._out_rate = output_sample_rate_hz
        self._clock = clock
        self._client: VoiceClient | None = None
        self._reader: asyncio.Task[None] | None = None
        self._state = SessionState.LISTENING
        self._turn = 0
        self._playing_until = 0.0
        self._backoff_s = 0.5
        self._next_attempt = 0.0

    @property
    def replying(self) -> bool:
        """The server is preparing or the speaker is playing a reply."""
        return self._state in (SessionState.THINKING, SessionState.SPEAKING) or (
            self._clock() < self._playing_until
        )

    @property
    def connected(self) -> bool:
        """The websocket is open."""
        return self._reader is not None and not self._reader.done()

    async def start(self) -> str:
        """Connect (resuming the conversation if there was one).

        Raises:
            ServerUnavailable: the server cannot be reached.
        """
        if self.connected:
            return self.conversation_id
        client = VoiceClient(
            self.url,
            sample_rate_hz=16000,
            token=self._token,
            profile=self._profile,
            conversation_id=self.conversation_id or None,
            output_sample_rate_hz=self._out_rate,
            barge_in=False,  # the satellite is half-duplex; the wake word interrupts
        )
        try:
            ready = await client.connect()
        except ServerUnavailable:
            self._next_attempt = self._clock() + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, 30.0)
            raise
        self._backoff_s = 0.5
        self._client = client
        self.conversation_id = str(ready["conversation_id"])
        self._state = SessionState.LISTENING
        self._reader = asyncio.create_task(self._read(client), name="satellite-reader")
        _LOGGER.info("satellite connected to %s (conversation %s)", self.url, self.conversation_id)
        return self.conversation_id

    async def _read(self, client: VoiceClient) -> None:
        async for item in client.events():
            try:
                event = self._translate(item)
            except (KeyError, TypeError, ValueError) as error:
                _LOGGER.warning("unexpected frame from the server: %s", error)
                continue
            if event is not None:
                await self._sink(event)
        _LOGGER.warning("the server closed the connection")
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
        return None

    async def _ensure(self) -> VoiceClient | None:
        if self.connected and self._client is not None:
            return self._client
        if self._clock() < self._next_attempt:
            return None
        try:
            await self.start()
        except ServerUnavailable as error:
            _LOGGER.warning("%s", error)
            return None
        return self._client

    async def feed(self, pcm: bytes) -> None:
        """Stream audio to the server (dropped while it cannot be reached)."""
        client = await self._ensure()
        if client is None:
            return
        with contextlib.suppress(Exception):
            await client.send_audio(pcm)

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
            await self._client.stop()
            if self._reader is not None:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError, VoicebotError):
                    async with asyncio.timeout(60):
                        await asyncio.shield(self._reader)

    async def close(self) -> None:
        """Close the connection."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
        self._client = None
