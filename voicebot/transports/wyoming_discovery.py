"""Zeroconf for Wyoming: announce voicebot's server, find wyoming-satellite devices.

Both use the ``_wyoming._tcp`` service type that Home Assistant browses and that
wyoming-satellite announces itself under.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info

__all__ = ["SERVICE_TYPE", "SatelliteBrowser", "announce"]

_LOGGER = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."
_PROBE_TIMEOUT_S = 5.0


async def announce(name: str, port: int, host: str) -> Callable[[], Any]:
    """Announce a Wyoming server at ``host:port`` as ``name``; returns an async closer.

    ``host`` is the address others reach it at (for a server bound to 0.0.0.0, this
    machine's address on the local network).
    """
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    if host in ("0.0.0.0", ""):
        host = _local_address()
    zeroconf = AsyncZeroconf()
    info = AsyncServiceInfo(
        SERVICE_TYPE,
        f"{name}.{SERVICE_TYPE}",
        addresses=[socket.inet_aton(host)],
        port=port,
    )
    await zeroconf.async_register_service(info)
    _LOGGER.warning("announced %s on zeroconf as %s (%s:%d)", SERVICE_TYPE, name, host, port)

    async def close() -> None:
        with contextlib.suppress(Exception):
            await zeroconf.async_unregister_service(info)
        await zeroconf.async_close()

    return close


def _local_address() -> str:
    """This machine's address on the network that reaches the mDNS group."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.setblocking(False)
        probe.connect(("224.0.0.251", 5353))  # no packet is sent: this only picks a route
        return str(probe.getsockname()[0])


async def is_satellite(host: str, port: int) -> bool:
    """True when the Wyoming service at ``host:port`` describes itself as a satellite."""
    client = AsyncTcpClient(host, port)
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            await client.connect()
            await client.write_event(Describe().event())
            while (event := await client.read_event()) is not None:
                if Info.is_type(event.type):
                    return Info.from_event(event).satellite is not None
    except (OSError, TimeoutError, ConnectionError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()
    return False


class SatelliteBrowser:
    """Browses ``_wyoming._tcp`` and hands each satellite's ``tcp://HOST:PORT`` to ``found``."""

    def __init__(self, found: Callable[[str], object]) -> None:
        """Create the browser (call :meth:`start`)."""
        self._found = found
        self._zeroconf: Any = None
        self._browser: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._seen: set[str] = set()

    async def start(self) -> None:
        """Start browsing."""
        from zeroconf import ServiceStateChange
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

        self._zeroconf = AsyncZeroconf()

        def on_change(
            zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            if state_change is ServiceStateChange.Added:
                task = asyncio.create_task(self._resolve(service_type, name), name=name)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        self._browser = AsyncServiceBrowser(
            self._zeroconf.zeroconf, [SERVICE_TYPE], handlers=[on_change]
        )

    async def _resolve(self, service_type: str, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zeroconf.zeroconf, 3000):
            return
        addresses = info.parsed_addresses()
        if not addresses or info.port is None:
            return
        uri = f"tcp://{addresses[0]}:{info.port}"
        if uri in self._seen:
            return
        self._seen.add(uri)
        if await is_satellite(addresses[0], info.port):
            _LOGGER.warning("found satellite %s at %s", name, uri)
            self._found(uri)
        else:
            _LOGGER.info("%s at %s is not a satellite", name, uri)

    async def close(self) -> None:
        """Stop browsing."""
        for task in list(self._tasks):
            task.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zeroconf is not None:
            await self._zeroconf.async_close()
