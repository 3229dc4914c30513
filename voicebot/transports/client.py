"""A Python client of the websocket server: stream a file or the microphone, get the reply.

Used by ``voicebot client``, by the daemon's satellite mode and by the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from ..errors import ProtocolError, VoicebotError
from .guard import hide_frame_payloads

__all__ = ["RECONNECT_CLOSE_CODES", "REFUSAL_CLOSE_CODES", "ServerUnavailable", "VoiceClient"]

_LOGGER = logging.getLogger(__name__)

REFUSAL_CLOSE_CODES = frozenset({1008, 1013})
"""Close codes by which the server refuses a session (policy, server full)."""
_NO_CLOSE_FRAME = 1006
RECONNECT_CLOSE_CODES = frozenset({1001, 1006, 1011, 1012})
"""Close codes after which a client with ``reconnect_for_s`` reconnects and resumes: the
server is going away (a replica drained by SIGTERM), the connection dropped, the server
failed or restarts."""
_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 4.0)


class ServerUnavailable(VoicebotError):
    """The server cannot be reached, refused the session, or went away."""

    code = "server_unavailable"
    refused = False
    """The server answered and refused the session (a wrong token, an unknown
    conversation): trying again cannot help."""


class VoiceClient:
    """One session with a ``voicebot serve``."""

    def __init__(
        self,
        url: str,
        *,
        sample_rate_hz: int = 16000,
        token: str = "",
        profile: str | None = None,
        conversation_id: str | None = None,
        output_sample_rate_hz: int | None = None,
        barge_in: bool = True,
        greet: bool = False,
        open_timeout_s: float = 10.0,
        fallback_urls: Sequence[str] = (),
        reconnect_for_s: float = 0.0,
    ) -> None:
        """Describe the session; :meth:`connect` opens it.

        Args:
            url: ``ws://HOST:PORT/ws`` (a load balancer's, or one replica's).
            fallback_urls: Other replicas, tried in turn after ``url`` when reconnecting.
            reconnect_for_s: After a close in :data:`RECONNECT_CLOSE_CODES`, keep trying to
                reconnect for this long, resuming the conversation (:meth:`events` goes on
                over the new connection; sends wait for it). 0: do not reconnect.
            (The other arguments are the ``start`` message's fields.)
        """
        self.url = url
        self.urls = [url, *fallback_urls]
        """Where the session may be served, in the order tried."""
        self.reconnect_for_s = reconnect_for_s
        self.reconnects = 0
        """Times the session was resumed over a new connection."""
        self._url_index = 0
        self._connected = asyncio.Event()
        self._gave_up = False
        self._stopping = False
        self.sample_rate_hz = sample_rate_hz
        self._start: dict[str, Any] = {"type": "start", "sample_rate": sample_rate_hz}
        if token:
            self._start["token"] = token
        if profile:
            self._start["profile"] = profile
        if conversation_id:
            self._start["conversation_id"] = conversation_id
        if output_sample_rate_hz:
            self._start["output_sample_rate"] = output_sample_rate_hz
        self._start["barge_in"] = barge_in
        self._start["greet"] = greet
        self._open_timeout_s = open_timeout_s
        self._connection: ClientConnection | None = None
        self.ready: dict[str, Any] = {}
        """The server's ``ready`` message."""
        self.close_code: int | None = None
        """How the server ended the session (1006: the connection dropped without a close
        frame); ``None`` while it is open."""
        self.close_reason = ""
        """The reason the server gave with :attr:`close_code`."""

    @property
    def closed_abnormally(self) -> bool:
        """The server ended the session with anything but a normal close (1000)."""
        return self.close_code is not None and self.close_code != 1000

    def _note_close(self, error: ConnectionClosed) -> None:
        if error.rcvd is not None:
            self.close_code, self.close_reason = error.rcvd.code, error.rcvd.reason
        else:
            self.close_code, self.close_reason = _NO_CLOSE_FRAME, "connection lost"

    @property
    def connection(self) -> ClientConnection:
        """The open connection."""
        if self._connection is None:
            raise ServerUnavailable("not connected")
        return self._connection

    async def connect(self) -> dict[str, Any]:
        """Open the connection and the session; returns the ``ready`` message.

        Raises:
            ServerUnavailable: unreachable, refused (token, full), or no ready.
        """
        ready = await self._open(self.urls[self._url_index])
        # A reconnection resumes this conversation, wherever it is served.
        self._start["conversation_id"] = ready["conversation_id"]
        self._connected.set()
        return ready

    async def reconnect(self) -> dict[str, Any]:
        """Open a new connection resuming the conversation, trying every URL in turn with
        backoff for up to ``reconnect_for_s``; returns the new ``ready`` message.

        Raises:
            ServerUnavailable: no server took the session in time, or one refused it.
        """
        deadline = time.monotonic() + self.reconnect_for_s
        attempt = 0
        while True:
            # The next URL first: the one that closed is likely going away.
            self._url_index = (self._url_index + 1) % len(self.urls)
            url = self.urls[self._url_index]
            try:
                ready = await self.connect()
            except ServerUnavailable as error:
                if error.refused or self.close_code == 1008:
                    raise  # refused for good (token, conversation): trying again cannot help
                delay_s = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)] * random.uniform(0.8, 1.2)
                if time.monotonic() + delay_s > deadline:
                    raise ServerUnavailable(f"could not reconnect: {error}") from error
                _LOGGER.info("reconnecting to %s failed (%s); again in %.1f s", url, error, delay_s)
                attempt += 1
                await asyncio.sleep(delay_s)
                continue
            self.reconnects += 1
            self.url = url
            if self._stopping:  # asked to stop before the drop: ask again
                await self.stop()
            return ready

    async def _open(self, url: str) -> dict[str, Any]:
        self.close_code, self.close_reason = None, ""
        hide_frame_payloads("websockets.client")  # the start frame holds the token
        try:
            self._connection = await connect(
                url,
                open_timeout=self._open_timeout_s,
                compression=None,
                max_size=4 << 20,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as error:
            raise ServerUnavailable(f"cannot reach {url}: {error}") from error
        try:
            await self._connection.send(json.dumps(self._start))
            async with asyncio.timeout(self._open_timeout_s):
                while True:
                    frame = await self._connection.recv()
                    if isinstance(frame, bytes):
                        continue
                    message: dict[str, Any] = json.loads(frame)
                    if message.get("type") == "ready":
                        self.ready = message
                        return message
                    if message.get("type") == "error":
                        refusal = ServerUnavailable(
                            f"the server refused the session: {message.get('message')}"
                        )
                        refusal.refused = True
                        raise refusal
        except ConnectionClosed as error:
            self._note_close(error)
            raise ServerUnavailable(
                f"the server closed the session: {self.close_code} {self.close_reason}"
            ) from error
        except TimeoutError as error:
            raise ServerUnavailable("the server did not answer 'start'") from error

    async def _send(self, frame: str | bytes) -> None:
        """Send a frame; while reconnecting (``reconnect_for_s``), wait for the new connection.

        Raises:
            ConnectionClosed: the connection is gone and will not come back.
        """
        while True:
            connection = self.connection
            try:
                await connection.send(frame)
                return
            except ConnectionClosed:
                if not self.reconnect_for_s or self._gave_up:
                    raise
                if self._connection is connection:
                    self._connected.clear()  # events() notices the close and reconnects
                await self._connected.wait()
                if self._gave_up:
                    raise

    async def send_audio(self, pcm: bytes) -> None:
        """Send PCM16 mono audio at the declared rate."""
        await self._send(pcm)

    async def send_text(self, text: str) -> None:
        """Send a typed message."""
        await self._send(json.dumps({"type": "text", "text": text}))

    async def interrupt(self) -> None:
        """Cut the current reply."""
        await self._send(json.dumps({"type": "interrupt"}))

    async def stop(self) -> None:
        """Ask the server to finish the last reply and end the session."""
        self._stopping = True
        with contextlib.suppress(ConnectionClosed):
            await self.connection.send(json.dumps({"type": "stop"}))

    async def events(self) -> AsyncIterator[dict[str, Any] | bytes]:
        """Frames from the server until it closes: dicts for events, bytes for audio.

        When it ends, :attr:`close_code` and :attr:`close_reason` say how. With
        ``reconnect_for_s``, a close in :data:`RECONNECT_CLOSE_CODES` is followed by a
        ``{"type": "reconnecting", "code": ..., "reason": ...}`` item, then by the new
        connection's ``ready`` message (its ``history`` the conversation so far) and its
        frames; it ends when reconnecting fails.
        """
        connection = self.connection
        while True:
            # recv(), not ``async for``: iteration ends silently on 1001 too, losing the code.
            try:
                frame = await connection.recv()
            except ConnectionClosed as error:
                self._note_close(error)
                if not self.reconnect_for_s or self.close_code not in RECONNECT_CLOSE_CODES:
                    self._give_up()
                    return
                self._connected.clear()
                yield {"type": "reconnecting", "code": self.close_code, "reason": self.close_reason}
                code, reason = self.close_code, self.close_reason
                try:
                    ready = await self.reconnect()
                except ServerUnavailable as failure:
                    _LOGGER.warning("%s", failure)
                    if self.close_code is None:
                        self.close_code, self.close_reason = code, reason
                    self._give_up()
                    return
                connection = self.connection
                yield ready
                continue
            if isinstance(frame, bytes):
                yield frame
            else:
                try:
                    yield json.loads(frame)
                except json.JSONDecodeError as error:
                    raise ProtocolError(f"the server sent invalid JSON: {error}") from error

    def _give_up(self) -> None:
        """No new connection will come: waiting sends fail."""
        self._gave_up = True
        self._connected.set()

    async def close(self) -> None:
        """Close the connection."""
        self._give_up()
        if self._connection is not None:
            await self._connection.close()
