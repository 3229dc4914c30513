"""What keeps a server off the loopback safe: plain-text exposure, failed tokens, per-address caps.

Sans-I/O: the server (:mod:`voicebot.transports.websocket`) asks these objects before it
checks a token or admits a connection; they hold counts, never sockets. See the
"Authentication and per-address limits" section of ``docs/protocol.md``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from websockets.frames import DATA_OPCODES, Frame

from ..config import ServerSettings

__all__ = [
    "INSECURE_REMEDY",
    "AddressSessions",
    "AuthLimiter",
    "hide_frame_payloads",
    "plain_text_exposure",
]

_AUTH_WINDOW_S = 60.0
"""Failed attempts are counted over this sliding window (``auth_failures_per_minute``)."""
_MAX_TRACKED_ADDRESSES = 10_000
"""Addresses with recent failures remembered at most: beyond it the oldest is forgotten, so a
flood of spoofed or rotating addresses cannot grow the table without bound."""


def plain_text_exposure(server: ServerSettings, is_loopback: Callable[[str], bool]) -> str | None:
    """Why serving these settings would expose secrets, or ``None`` when it would not.

    Beyond loopback without TLS every client's audio, transcripts and the token cross the
    network in clear text, readable by anyone on the path (the Wi-Fi, the LAN).
    """
    if is_loopback(server.host) or server.certfile:
        return None
    return (
        f"binding to {server.host} over plain ws:// sends the household's audio, transcripts "
        "and the token across the network in clear text"
    )


INSECURE_REMEDY = (
    "give --certfile and --keyfile (TLS), or --insecure (config [server] insecure = true) "
    "for a network you trust or behind a proxy that terminates TLS"
)
"""What to do about :func:`plain_text_exposure`."""


class AuthLimiter:
    """Failed token attempts per client address, over a sliding minute.

    After ``limit`` failures within a minute an address is refused before its token is
    checked, until its oldest failure is a minute old. Each address keeps at most ``limit``
    timestamps and at most :data:`_MAX_TRACKED_ADDRESSES` addresses are kept, so memory stays
    bounded. ``limit`` 0 turns it off.
    """

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        """Create a limiter.

        Args:
            limit: Failures allowed per address per minute; 0 for no limit.
            clock: Seconds, monotonic (injectable for tests).
        """
        self.limit = limit
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        """Addresses with failures still inside the window."""
        self._expire(self._clock())
        return len(self._failures)

    def blocked(self, address: str) -> bool:
        """True while ``address`` has used up its failures of the last minute."""
        if self.limit <= 0:
            return False
        now = self._clock()
        self._expire(now)
        failures = self._failures.get(address)
        return failures is not None and len(failures) >= self.limit

    def failed(self, address: str) -> None:
        """Count one failed attempt from ``address``."""
        if self.limit <= 0:
            return
        now = self._clock()
        self._expire(now)
        failures = self._failures.pop(address, None) or deque(maxlen=self.limit)
        failures.append(now)
        self._failures[address] = failures  # most recently failed last
        while len(self._failures) > _MAX_TRACKED_ADDRESSES:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        """Forget ``address``'s failures: the right token was given."""
        self._failures.pop(address, None)

    def _expire(self, now: float) -> None:
        horizon = now - _AUTH_WINDOW_S
        for address in list(self._failures):
            failures = self._failures[address]
            while failures and failures[0] <= horizon:
                failures.popleft()
            if not failures:
                del self._failures[address]


class AddressSessions:
    """Connections open per client address, capped (0: no cap)."""

    def __init__(self, limit: int) -> None:
        """Create the counter.

        Args:
            limit: Connections one address may hold at once; 0 for no cap.
        """
        self.limit = limit
        self._open: dict[str, int] = {}

    def __len__(self) -> int:
        """Addresses holding a connection now."""
        return len(self._open)

    def admit(self, address: str) -> bool:
        """Count a connection from ``address``; ``False`` (not counted) when over the cap."""
        count = self._open.get(address, 0)
        if self.limit > 0 and count >= self.limit:
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        """A connection admitted from ``address`` ended."""
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)


class _HideFramePayloads(logging.Filter):
    """Debug logs of websocket frames show the kind and size of a data frame, not its bytes.

    A ``start`` message carries the token, and every frame the household's words or audio:
    none of it belongs in a log file (``voicebot -vv serve`` logs every frame).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, Frame) for a in args):
            record.args = tuple(_described(a) if isinstance(a, Frame) else a for a in args)
        return True


def _described(frame: Frame) -> str:
    if frame.opcode not in DATA_OPCODES:
        return str(frame)  # ping, pong, close: no payload of the user's
    return f"{frame.opcode.name} [{len(frame.data)} bytes, not logged]"


_FILTER = _HideFramePayloads()


def hide_frame_payloads(logger_name: str) -> None:
    """Keep data frame payloads out of the debug log of websockets' ``logger_name``."""
    logger = logging.getLogger(logger_name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
