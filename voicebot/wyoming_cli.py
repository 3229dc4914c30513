"""``voicebot wyoming``: the Wyoming server for Home Assistant, and the satellite hub.

The subcommand registers itself with :mod:`voicebot.cli` (its flags map one-to-one onto
:class:`~voicebot.transports.wyoming_server.WyomingOptions`); this module holds its wiring.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``wyoming`` to the command line's subcommands."""
    from .cli import _add_engine_flags

    wyoming = sub.add_parser(
        "wyoming",
        help="serve Home Assistant over the Wyoming protocol, and drive wyoming-satellites",
    )
    wyoming.add_argument(
        "--uri",
        default="tcp://127.0.0.1:10300",
        help="where to listen (default tcp://127.0.0.1:10300; beyond loopback anyone on the "
        "network can use it: Wyoming has no authentication)",
    )
    wyoming.add_argument(
        "--zeroconf",
        nargs="?",
        const="",
        default=None,
        metavar="NAME",
        help="announce the server as _wyoming._tcp for Home Assistant (default name "
        "voicebot-HOSTNAME)",
    )
    wyoming.add_argument(
        "--satellite",
        action="append",
        default=[],
        metavar="URI",
        help="a wyoming-satellite to drive, tcp://HOST:10700 (repeatable)",
    )
    wyoming.add_argument(
        "--discover",
        action="store_true",
        help="also drive every satellite announced on the network (zeroconf)",
    )
    wyoming.add_argument("--max-connections", type=int, default=16, metavar="N")
    wyoming.add_argument("--max-connections-per-address", type=int, default=8, metavar="N")
    wyoming.add_argument(
        "--max-message-bytes",
        type=int,
        default=1 << 20,
        metavar="N",
        help="largest event data or payload (default 1 MiB)",
    )
    wyoming.add_argument(
        "--wake-word",
        action="append",
        default=[],
        metavar="NAME",
        help="wake words offered (default all bundled: okay_nabu, hey_jarvis, alexa, "
        "hey_mycroft; the first is the one satellites listen for)",
    )
    _add_engine_flags(wyoming, stt=True, llm=True, tts=True)
    wyoming.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the models, then serve (and drive satellites) until SIGINT or SIGTERM."""
    from .cli import _open_store, _run_until_signal, _settings
    from .engines import load_engines
    from .engines.wake import BUILTIN_WAKE_WORDS
    from .errors import ConfigError
    from .transports.wyoming_server import (
        WyomingApp,
        WyomingOptions,
        WyomingServer,
        parse_tcp_uri,
        warn_if_exposed,
    )

    options = WyomingOptions(
        uri=args.uri,
        zeroconf=args.zeroconf is not None,
        zeroconf_name=args.zeroconf or "",
        satellites=tuple(args.satellite),
        discover=args.discover,
        max_connections=args.max_connections,
        max_connections_per_address=args.max_connections_per_address,
        max_message_bytes=args.max_message_bytes,
        wake_words=tuple(args.wake_word) or BUILTIN_WAKE_WORDS,
    )
    host, _ = parse_tcp_uri(options.uri)
    for uri in options.satellites:
        parse_tcp_uri(uri)
    if min(options.max_connections, options.max_connections_per_address) < 1:
        raise ConfigError("--max-connections and --max-connections-per-address must be >= 1")
    warning = warn_if_exposed(host)
    if warning:
        print(f"voicebot: warning: {warning}", file=sys.stderr, flush=True)
    settings = _settings(args)
    store = _open_store(settings)
    started = time.perf_counter()
    print("voicebot: loading and warming up the models...", file=sys.stderr, flush=True)
    engines = load_engines(settings)
    engines.warm_up()
    app = WyomingApp(engines, settings, store, options)
    ready_s = time.perf_counter() - started

    async def serve() -> int:
        import asyncio

        from .transports.wyoming_hub import SatelliteHub

        await app.start()
        server = WyomingServer(app)
        hub = SatelliteHub(app)
        close_announcement = None
        try:
            await server.start()
            if options.zeroconf:
                from .transports.wyoming_discovery import announce

                name = options.zeroconf_name or f"voicebot-{socket.gethostname()}"
                close_announcement = await announce(name, server.port, host)
            print(
                f"voicebot: Wyoming server ready in {ready_s:.1f} s at "
                f"tcp://{server.host}:{server.port} (asr, tts, wake, handle)",
                file=sys.stderr,
                flush=True,
            )
            for uri in options.satellites:
                hub.add(uri)
            if options.discover:
                await hub.discover()
            await asyncio.Event().wait()  # until a signal cancels this task
        finally:
            await hub.close()
            if close_announcement is not None:
                await close_announcement()
            await server.close()
            await app.close()
        return 0

    try:
        return _run_until_signal(serve())
    finally:
        engines.close()
        store.close()
