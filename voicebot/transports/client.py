"""A Python client of the websocket server: stream a file or the microphone, get the reply.

Used by ``voicebot client``, by the daemon's satellite mode and by the benchmark.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from ..errors import ProtocolError, VoicebotError

__all__ = ["REFUSAL_CLOSE_CODES", "ServerUnavailable", "VoiceClient"]

REFUSAL_CLOSE_CODES = frozenset({1008, 1013})
"""Close codes by which the server refuses a session (policy, server full)."""
_NO_CLOSE_FRAME = 1006


class ServerUnavailable(VoicebotError):
    """The server cannot be reached, refused the session, or went away."""

    code = "server_unavailable"


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
    ) -> None:
        """Describe the session; :meth:`connect` opens it."""
        self.url = url
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
        try:
            self._connection = await connect(
                self.url,
                open_timeout=self._open_timeout_s,
                compression=None,
                max_size=4 << 20,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as error:
            raise ServerUnavailable(f"cannot reach {self.url}: {error}") from error
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
                        raise ServerUnavailable(
                            f"the server refused the session: {message.get('message')}"
                        )
        except ConnectionClosed as error:
            self._note_close(error)
            raise ServerUnavailable(
                f"the server closed the session: {self.close_code} {self.close_reason}"
            ) from error
        except TimeoutError as error:
            raise ServerUnavailable("the server did not answer 'start'") from error

    async def send_audio(self, pcm: bytes) -> None:
        """Send PCM16 mono audio at the declared rate."""
        await self.connection.send(pcm)

    async def send_text(self, text: str) -> None:
        """Send a typed message."""
        await self.connection.send(json.dumps({"type": "text", "text": text}))

    async def interrupt(self) -> None:
        """Cut the current reply."""
        await self.connection.send(json.dumps({"type": "interrupt"}))

    async def stop(self) -> None:
        """Ask the server to finish the last reply and end the session."""
        with_closed = (ConnectionClosed,)
        try:
            await self.connection.send(json.dumps({"type": "stop"}))
        except with_closed:
            pass

    async def events(self) -> AsyncIterator[dict[str, Any] | bytes]:
        """Frames from the server until it closes: dicts for events, bytes for audio.

        When it ends, :attr:`close_code` and :attr:`close_reason` say how.
        """
        connection = self.connection
        while True:
            # recv(), not ``async for``: iteration ends silently on 1001 too, losing the code.
            try:
                frame = await connection.recv()
            except ConnectionClosed as error:
                self._note_close(error)
                return
            if isinstance(frame, bytes):
                yield frame
            else:
                try:
                    yield json.loads(frame)
                except json.JSONDecodeError as error:
                    raise ProtocolError(f"the server sent invalid JSON: {error}") from error

    async def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            await self._connection.close()
