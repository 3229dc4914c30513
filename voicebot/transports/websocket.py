"""The websocket audio server: the browser client over HTTP at ``/``, sessions at ``/ws``.

Built on the ``websockets`` library. Models are loaded and warmed before the server listens;
every connection gets its own :class:`~voicebot.session.Session`, all sharing the models
through their worker threads, so a long inference never stalls another session's audio or the
websocket pings. See ``docs/protocol.md`` for the wire protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import mimetypes
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from ..audio import StreamResampler
from ..config import Profile, Settings
from ..engines import Engines
from ..errors import ConfigError, ModelError, ProtocolError, VoicebotError
from ..events import (
    AudioOut,
    Event,
    Interrupted,
    ReplyDone,
    SpeechStarted,
    SpeechStopped,
    Transcript,
)
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import VoiceMetrics
from ..protocol import (
    FactsMessage,
    FeedbackMessage,
    ForgetFactMessage,
    InterruptMessage,
    StartMessage,
    StopMessage,
    TextMessage,
    encode_event,
    error_frame,
    feedback_frame,
    parse_text_frame,
    ready_frame,
)
from ..session import Session
from ..skills import SkillRouter, TimerService
from ..store import Store
from .guard import (
    INSECURE_REMEDY,
    AddressSessions,
    AuthLimiter,
    hide_frame_payloads,
    plain_text_exposure,
)

__all__ = [
    "CLOSE_NOT_READING",
    "CLOSE_SERVER_ERROR",
    "CLOSE_SERVER_FULL",
    "CLOSE_TOO_FAST",
    "Pacer",
    "VoiceServer",
    "check_server_settings",
    "web_root",
]

_LOGGER = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
"""``stop`` was honoured, or the session was idle too long (reason ``idle timeout``)."""
CLOSE_GOING_AWAY = 1001
"""The server is shutting down."""
CLOSE_POLICY = 1008
"""Wrong token, unknown profile or conversation, or no ``start`` in time."""
CLOSE_TOO_FAST = CLOSE_POLICY
"""A client kept sending faster than it is read for ``[server] max_paced_s`` (reason
``too fast``)."""
CLOSE_NOT_READING = CLOSE_POLICY
"""A client took none of what it was sent for ``[server] send_timeout_s``, or let more than
4 times ``send_buffer_bytes`` pile up (reason ``not reading``)."""
CLOSE_SERVER_ERROR = 1011
"""The server failed: a profile's model cannot be loaded, or an unexpected error."""
CLOSE_SERVER_FULL = 1013
"""Too many connections: try again later."""
CLOSE_REASON_RATE_LIMITED = "too many failed attempts"
"""With 1008: this address sent ``[server] auth_failures_per_minute`` wrong tokens within a
minute; it is refused before its token is checked until the oldest is a minute old."""
CLOSE_REASON_PER_ADDRESS = "too many sessions from this address"
"""With 1013: this address holds ``[server] max_sessions_per_address`` connections already."""
_START_TIMEOUT_S = 10.0
_CLOSE_TIMEOUT_S = 10.0
"""Longest closing handshake (as websockets' own): a client that does not take the close
frame within it is disconnected."""
_MIN_FRAME_CHARGE_S = 0.005
"""Each audio frame costs at least this much of the audio budget: a flood of tiny frames is
paced like audio (a browser sends 20 ms frames)."""


def web_root() -> Path:
    """The browser client's files: the checkout's ``clients/web`` or the packaged copy."""
    checkout = Path(__file__).resolve().parents[2] / "clients" / "web"
    if checkout.is_dir():
        return checkout
    return Path(__file__).resolve().parents[1] / "web"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str | None:
    """The name in a ``Host`` header (``name``, ``name:port``, ``[v6]:port``), lower case."""
    try:
        name = urlsplit(f"//{header}").hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def check_server_settings(settings: Settings) -> None:
    """Refuse unsafe or incomplete server settings (before any model is loaded).

    Raises:
        ConfigError: beyond loopback without a token, or over plain ws:// without
            ``insecure``; half a TLS setup, unreadable TLS files.
    """
    server = settings.server
    if not is_loopback(server.host) and not server.token:
        raise ConfigError(
            f"binding to {server.host} exposes the assistant to the network: set a token "
            "(--token or VOICEBOT_SERVER_TOKEN)"
        )
    if bool(server.certfile) != bool(server.keyfile):
        raise ConfigError("TLS needs both --certfile and --keyfile")
    for name in (server.certfile, server.keyfile):
        if name and not Path(name).is_file():
            raise ConfigError(f"cannot read {name}: no such file")
    trusted_networks(server.trusted_proxies)  # raises on a bad entry
    exposure = plain_text_exposure(server, is_loopback)
    if exposure is not None and not server.insecure:
        raise ConfigError(f"{exposure}: {INSECURE_REMEDY}")


@dataclass
class _Stats:
    sessions_total: int = 0
    started_at: float = 0.0


class VoiceServer:
    """Serves voice sessions over websockets, and the browser client over HTTP."""

    def __init__(
        self,
        engines: Engines,
        settings: Settings,
        store: Store,
        *,
        web_dir: Path | None = None,
        timers: TimerService | None = None,
    ) -> None:
        """Create a server (call :meth:`start`).

        Args:
            engines: The shared models.
            settings: Settings.
            store: The conversation store (the timers are kept there too).
            web_dir: The browser client's files (default: the packaged ones).
            timers: The server's timers (default: a service on ``store``).

        Raises:
            ConfigError: binding beyond loopback without a token, or half a TLS setup.
        """
        self.engines = engines
        self.settings = settings
        self.store = store
        self.web_dir = (web_dir or web_root()).resolve()
        """Root of the static files."""
        check_server_settings(settings)
        self.sessions: dict[ServerConnection, Session] = {}
        """Live sessions by connection."""
        self._connections: set[ServerConnection] = set()
        # Every connection being served, counted against the cap from its arrival: a client
        # still to send ``start`` holds a slot, or concurrent arrivals would all get in.
        self._closing = False
        self._draining = False
        self.health = "loading"
        """``loading`` (not listening yet), ``ready``, or ``draining`` (SIGTERM: no new
        sessions, replies in progress finish): what ``/healthz`` says."""
        self._server: Server | None = None
        self._stats = _Stats()
        self._handlers: set[asyncio.Task[Any]] = set()
        self.metrics = VoiceMetrics(sessions=lambda: len(self.sessions), workers=engines.workers)
        self.auth_failures = AuthLimiter(settings.server.auth_failures_per_minute)
        """Failed tokens per client address (``[server] auth_failures_per_minute``)."""
        self._proxies = trusted_networks(settings.server.trusted_proxies)
        self.address_sessions = AddressSessions(settings.server.max_sessions_per_address)
        """Connections per client address (``[server] max_sessions_per_address``)."""
        hide_frame_payloads("websockets.server")  # the start frame holds the token
        """What ``/metrics`` serves (Prometheus)."""
        self.timers = timers or TimerService(store)
        """Every session's timers: they outlive a connection and survive a restart."""
        self.skills = (
            SkillRouter(settings.skills, timers=self.timers) if settings.skills.enabled else None
        )
        """Answers time, timers, arithmetic... before the chat model (shared by the sessions)."""

    @property
    def port(self) -> int:
        """The port listened on (useful with port 0)."""
        assert self._server is not None, "server not started"
        sockets = list(self._server.sockets)
        return int(sockets[0].getsockname()[1])

    @property
    def active_connections(self) -> int:
        """Connections being served: sessions and those still to send ``start``."""
        return len(self._connections)

    @property
    def url(self) -> str:
        """Where a browser should go."""
        scheme = "https" if self.settings.server.certfile else "http"
        host = self.settings.server.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        if ":" in shown:
            shown = f"[{shown}]"
        return f"{scheme}://{shown}:{self.port}/"

    async def start(self) -> None:
        """Start listening."""
        server = self.settings.server
        context = None
        if server.certfile:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                context.load_cert_chain(server.certfile, server.keyfile)
            except (OSError, ssl.SSLError) as error:
                raise ConfigError(f"cannot load the TLS certificate: {error}") from error
        self._stats.started_at = time.time()
        await self.timers.start()
        self._server = await serve(
            self._handle,
            server.host,
            server.port,
            process_request=self._process_request,
            max_size=server.max_message_bytes,
            compression=None,  # audio does not compress; deflate costs CPU and latency
            ssl=context,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=_CLOSE_TIMEOUT_S,
            # Above this a send waits for the client to read (the reply pauses).
            write_limit=server.send_buffer_bytes,
        )
        self.health = "ready"
        exposure = plain_text_exposure(server, is_loopback)
        if exposure is not None:
            _LOGGER.warning("--insecure: %s", exposure)

    async def serve_forever(self) -> None:
        """Serve until cancelled; then call :meth:`drain` or :meth:`close`.

        Cancelling this does not touch the connections (the websockets server's own
        ``serve_forever`` would close them all with 1001 at once, before a drain).
        """
        assert self._server is not None
        await self._server.wait_closed()

    async def drain(self, timeout_s: float | None = None) -> None:
        """Shut down gracefully, for a replica behind a load balancer (SIGTERM).

        ``/healthz`` says ``draining`` (503) and new websocket handshakes get 503 at once;
        replies in progress finish, for at most ``timeout_s`` (default ``[server]
        drain_timeout_s``); then every session is closed with 1001, so its client reconnects,
        to another replica, and resumes its conversation. Cancelling this (a second signal)
        closes at once.
        """
        if self._server is None:
            return
        self._draining = True
        self.health = "draining"
        limit_s = self.settings.server.drain_timeout_s if timeout_s is None else timeout_s
        _LOGGER.warning(
            "draining: %d sessions, %d replying (waiting up to %.0f s)",
            len(self.sessions),
            sum(s.replying for s in self.sessions.values()),
            limit_s,
        )
        try:
            async with asyncio.timeout(limit_s):
                # Polled: "replying" includes the playback still due at the client, an
                # estimate by the clock that no event marks the end of.
                while any(session.replying for session in self.sessions.values()):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        except TimeoutError:
            _LOGGER.warning("draining: replies still in progress after %.0f s", limit_s)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close every session (saving what was heard) and stop listening."""
        if self._server is None:
            return
        self._closing = True
        self._server.close(close_connections=False)
        # Sessions and connections still to send ``start`` alike: none waits for a timeout.
        await asyncio.gather(
            *(
                _close_quietly(connection, CLOSE_GOING_AWAY, "server shutting down")
                for connection in list(self._connections)
            )
        )
        await self._server.wait_closed()
        await self.timers.close()

    # -------------------------------------------------------------------------- HTTP

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        refused = self._check_host(request)
        if refused is not None:
            return refused
        path = urlsplit(request.path).path
        if path == "/ws":
            if self._draining:
                self.metrics.reject("draining")
                refusal = b"draining: connect to another replica\n"
                return _response(HTTPStatus.SERVICE_UNAVAILABLE, refusal, "text/plain")
            return self._check_origin(connection, request)
        if path == "/healthz":
            ready = self.health == "ready"
            body = {
                "status": "ok" if ready else self.health,
                "state": self.health,
                "sessions": len(self.sessions),
                "connections": len(self._connections),
                "max_sessions": self.settings.server.max_sessions,
                "sessions_total": self._stats.sessions_total,
                "uptime_s": round(time.time() - self._stats.started_at, 1),
            }
            code = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            return _response(code, json.dumps(body).encode(), "application/json")
        if path == "/metrics":
            return _response(HTTPStatus.OK, self.metrics.exposition(), METRICS_CONTENT_TYPE)
        if path == "/config.json":
            profiles = [
                {"name": p.name, "display_name": p.display_name}
                for p in self.settings.profiles.values()
            ]
            body = {
                "protocol": 1,
                "profiles": profiles,
                "default_profile": self.settings.profile,
                "token_required": bool(self.settings.server.token),
            }
            return _response(HTTPStatus.OK, json.dumps(body).encode(), "application/json")
        return self._static(path)

    def _check_host(self, request: Request) -> Response | None:
        """Without a token, serve only requests addressed to this machine by a loopback name.

        DNS rebinding: a web page at ``evil.example`` can point that name at 127.0.0.1; the
        browser then sends ``Host: evil.example`` and treats this server as the page's own
        origin. A server with a token is meant to be reached under any name, and the token
        guards it.
        """
        server = self.settings.server
        if server.token:
            return None
        values = request.headers.get_all("Host")
        name = _host_name(values[0]) if len(values) == 1 else None
        if name is not None and (is_loopback(name) or name == server.host.lower()):
            return None
        _LOGGER.warning("refused a request for host %r (not a loopback name)", values)
        self.metrics.reject("host")
        body = (
            "misdirected request: this server answers only to localhost, 127.0.0.1 or [::1] "
            "(set a token to serve other host names)\n"
        )
        return _response(HTTPStatus.MISDIRECTED_REQUEST, body.encode(), "text/plain")

    def _check_origin(self, connection: ServerConnection, request: Request) -> Response | None:
        origin = request.headers.get("Origin")
        if origin is None:
            return None  # not a browser: programs are checked by token
        allowed = self.settings.server.allowed_origins
        if "*" in allowed or origin in allowed:
            return None
        host = request.headers.get("Host", "")
        if urlsplit(origin).netloc == host:
            return None  # same origin: the page this server served
        _LOGGER.warning("refused websocket from origin %s", origin)
        self.metrics.reject("origin")
        return _response(HTTPStatus.FORBIDDEN, b"origin not allowed\n", "text/plain")

    def _static(self, path: str) -> Response:
        if path in ("", "/"):
            path = "/index.html"
        target = (self.web_dir / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.web_dir) or not target.is_file():
            return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".js":
            kind = "text/javascript"
        return _response(HTTPStatus.OK, target.read_bytes(), kind)

    # -------------------------------------------------------------------------- sessions

    async def _handle(self, connection: ServerConnection) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._serve_connection(connection)
        finally:
            if task is not None:
                self._handlers.discard(task)

    async def _serve_connection(self, connection: ServerConnection) -> None:
        if self._closing:
            await _close_within(connection, CLOSE_GOING_AWAY, "server shutting down")
            return
        address = _client_address(connection, self._proxies)
        if self.settings.server.token and self.auth_failures.blocked(address):
            await self._refuse_rate_limited(connection)
            return
        # No await between the check and the add: concurrent arrivals cannot all pass.
        if len(self._connections) >= self.settings.server.max_sessions:
            self.metrics.reject("full")
            await _close_within(connection, CLOSE_SERVER_FULL, "server full, try again later")
            return
        if not self.address_sessions.admit(address):
            self.metrics.reject("per_address")
            await _close_within(connection, CLOSE_SERVER_FULL, CLOSE_REASON_PER_ADDRESS)
            return
        self._connections.add(connection)
        try:
            await self._run_session(connection)
        finally:
            self._connections.discard(connection)
            self.address_sessions.release(address)

    async def _refuse_rate_limited(self, connection: ServerConnection) -> None:
        self.metrics.reject("rate_limited")
        await _send_quietly(
            connection,
            error_frame("rate_limited", "too many failed attempts: wait a minute, then retry"),
        )
        await _close_quietly(connection, CLOSE_POLICY, CLOSE_REASON_RATE_LIMITED)

    async def _run_session(self, connection: ServerConnection) -> None:
        start = await self._await_start(connection)
        if start is None:
            return
        if self._draining:  # it connected before the drain: another replica takes it
            await _close_quietly(connection, CLOSE_GOING_AWAY, "server shutting down")
            return
        if not await self._prepare_profile(connection, start):
            return
        server = self.settings.server
        send = _Sender(
            connection,
            start.output_sample_rate_hz,
            timeout_s=server.send_timeout_s,
            max_buffered_bytes=4 * server.send_buffer_bytes,
        )
        send.observe = self.metrics.observe
        try:
            session = Session(
                self.engines,
                self.settings,
                sink=send,
                store=self.store,
                profile=start.profile,
                conversation_id=start.conversation_id,
                input_sample_rate_hz=start.sample_rate_hz,
                barge_in=start.barge_in,
                skills=self.skills,
            )
            send.source_rate = session.output_sample_rate_hz
            self.sessions[connection] = session
            self._stats.sessions_total += 1
            await session.start()  # the greeting, if any, comes after "ready"
        except VoicebotError as error:
            self.sessions.pop(connection, None)
            await _send_quietly(connection, error_frame(error.code, str(error)))
            await _close_within(connection, CLOSE_POLICY, error.code)
            return
        try:
            history = [
                {"role": t.role, "text": t.text, "interrupted": t.interrupted}
                for t in session.dialogue.turns
            ]
            await send.write(
                ready_frame(
                    conversation_id=session.conversation_id,
                    sample_rate_hz=send.output_rate,
                    profile=session.profile.name,
                    display_name=session.profile.display_name,
                    profiles=sorted(self.settings.profiles),
                    history=history[-50:],
                )
            )
            await send.release()
            if session.dialogue.facts:  # a resumed conversation: what it remembers
                facts = encode_event(session.facts_event())
                if facts is not None:
                    await send.write(facts)
            if start.greet:
                await session.greet()
            await self._receive(connection, session, send, start.sample_rate_hz)
        except ConnectionClosed:
            pass
        finally:
            self.sessions.pop(connection, None)
            await session.close()
            await send.closed()

    async def _prepare_profile(self, connection: ServerConnection, start: StartMessage) -> bool:
        """Load the profile's own models off the event loop; on failure tell the client why.

        Other sessions go on meanwhile; the session built next finds the models loaded.
        """
        try:
            profile: Profile = self.settings.get_profile(start.profile)
            if not self.engines.is_loaded(profile):
                _LOGGER.info("loading the models of profile %s", profile.name)
            await self.engines.prepare(profile)
        except ModelError as error:
            _LOGGER.error("profile %s: %s", start.profile or self.settings.profile, error)
            await _send_quietly(connection, error_frame(error.code, str(error)))
            await _close_quietly(connection, CLOSE_SERVER_ERROR, error.code)
            return False
        except VoicebotError as error:
            await _send_quietly(connection, error_frame(error.code, str(error)))
            await _close_quietly(connection, CLOSE_POLICY, error.code)
            return False
        return True

    async def _await_start(self, connection: ServerConnection) -> StartMessage | None:
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                while True:
                    frame = await connection.recv()
                    if isinstance(frame, bytes):
                        await _send_quietly(
                            connection,
                            error_frame("not_started", "send a start message before audio"),
                        )
                        continue
                    try:
                        message = parse_text_frame(frame)
                    except ProtocolError as error:
                        await _send_quietly(connection, error_frame(error.code, str(error)))
                        continue
                    if not isinstance(message, StartMessage):
                        await _send_quietly(
                            connection,
                            error_frame("not_started", "the first message must be 'start'"),
                        )
                        if isinstance(message, StopMessage):
                            await _close_within(connection, CLOSE_NORMAL, "stopped")
                            return None
                        continue
                    token = self.settings.server.token
                    address = _client_address(connection, self._proxies)
                    if token and self.auth_failures.blocked(address):
                        # Checked again: connections opened before the address ran out.
                        await self._refuse_rate_limited(connection)
                        return None
                    if token and not hmac.compare_digest(_utf8(message.token), _utf8(token)):
                        self.auth_failures.failed(address)
                        self.metrics.reject("unauthorized")
                        await _send_quietly(
                            connection, error_frame("unauthorized", "wrong or missing token")
                        )
                        await _close_within(connection, CLOSE_POLICY, "unauthorized")
                        return None
                    if token:
                        self.auth_failures.succeeded(address)
                    return message
        except TimeoutError:
            self.metrics.reject("no_start")
            await _close_within(connection, CLOSE_POLICY, "no start message")
        except ConnectionClosed:
            pass
        return None

    async def _receive(
        self, connection: ServerConnection, session: Session, send: _Sender, input_rate_hz: int
    ) -> None:
        server = self.settings.server
        idle_s = server.idle_timeout_s
        audio_pacer = Pacer(
            burst=server.audio_burst_s,
            rate_per_s=server.audio_max_speed,
            max_paced_s=server.max_paced_s,
        )
        text_pacer = Pacer(
            burst=server.text_burst,
            rate_per_s=server.text_max_per_s,
            max_paced_s=server.max_paced_s,
        )
        bytes_per_s = 2 * input_rate_hz
        send.touch()
        while not send.cut_off:  # a client cut off for not reading: its session ends now
            # Idle means nobody speaks: a browser with its microphone on streams silence
            # all the time, so audio frames alone do not count as activity.
            if session.replying or send.user_speaking:
                send.touch()
            remaining_s = send.last_activity + idle_s - time.monotonic()
            if remaining_s <= 0:
                await _close_within(connection, CLOSE_NORMAL, "idle timeout")
                return
            try:
                async with send.reading(remaining_s):
                    frame = await connection.recv()
            except TimeoutError:
                continue
            pacer = text_pacer
            cost = 1.0
            if isinstance(frame, bytes):
                pacer = audio_pacer
                cost = max(len(frame) / bytes_per_s, _MIN_FRAME_CHARGE_S)
            wait_s = pacer.charge(cost)
            if pacer.over_limit:
                _LOGGER.warning("closing a client that kept sending faster than real time")
                await _close_unread(connection, CLOSE_TOO_FAST, "too fast")
                return
            if wait_s > 0 and connection.state is State.OPEN and not self._closing:
                # Pacing: the next frame is read later, so this client's sends back up to it
                # while the other sessions are served. Once closing, the frames still unread
                # are read at once: the client's close frame waits behind them.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await connection.wait_closed()
            if isinstance(frame, bytes):
                try:
                    await session.feed(frame)
                except VoicebotError as error:
                    self.metrics.error(error.code)
                    await send.write(error_frame(error.code, str(error)))
                continue
            try:
                message = parse_text_frame(frame)
            except ProtocolError as error:
                self.metrics.error(error.code)
                await send.write(error_frame(error.code, str(error)))
                continue
            if isinstance(message, TextMessage):
                send.touch()
                await session.send_text(message.text)
            elif isinstance(message, InterruptMessage):
                send.touch()
                await session.interrupt()
            elif isinstance(message, FactsMessage):
                facts = encode_event(session.facts_event())
                if facts is not None:
                    await send.write(facts)
            elif isinstance(message, ForgetFactMessage):
                send.touch()
                await session.forget_fact(message.key)
            elif isinstance(message, FeedbackMessage):
                send.touch()
                stored = await session.give_feedback(
                    message.rating, message.correction, turn_id=message.turn_id
                )
                await send.write(feedback_frame(message.rating, message.turn_id, stored=stored))
            elif isinstance(message, StopMessage):
                await session.end_of_input()
                await _close_within(connection, CLOSE_NORMAL, "stopped")
                return
            else:
                await send.write(error_frame("already_started", "the session has started"))


class Pacer:
    """A token bucket that paces one client's frames; sans I/O, with an injectable clock.

    A client may spend ``burst`` at once; the budget then refills at ``rate_per_s``. A frame
    over budget is still taken, and :meth:`charge` says how long to wait before reading the
    next one. A client kept waiting without a break for more than ``max_paced_s`` is
    :attr:`over_limit`: it is not slowing down.
    """

    def __init__(
        self,
        *,
        burst: float,
        rate_per_s: float,
        max_paced_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create a full bucket.

        Args:
            burst: What may be spent at once (audio seconds, or frames).
            rate_per_s: What the budget regains per second of ``clock``.
            max_paced_s: Longest time a client may stay paced without a break.
            clock: Seconds, monotonic.
        """
        if burst <= 0 or rate_per_s <= 0:
            raise ValueError("a pacer needs a positive burst and rate")
        self.burst = burst
        """What may be spent at once."""
        self.rate_per_s = rate_per_s
        """What the budget regains per second."""
        self.max_paced_s = max_paced_s
        """Longest time a client may stay paced without a break."""
        self.paced_s = 0.0
        """Total time this client was asked to wait."""
        self._clock = clock
        self._credit = burst
        self._last = clock()
        self._paced_since: float | None = None

    @property
    def over_limit(self) -> bool:
        """The client has stayed paced for longer than :attr:`max_paced_s`."""
        return (
            self._paced_since is not None and self._clock() - self._paced_since > self.max_paced_s
        )

    def charge(self, cost: float) -> float:
        """Spend ``cost`` of the budget; returns the seconds to wait before reading on."""
        now = self._clock()
        self._credit = min(self.burst, self._credit + (now - self._last) * self.rate_per_s)
        self._last = now
        self._credit -= cost
        if self._credit >= 0:
            self._paced_since = None
            return 0.0
        if self._paced_since is None:
            self._paced_since = now
        wait_s = -self._credit / self.rate_per_s
        self.paced_s += wait_s
        return wait_s


class _Sender:
    """A session sink writing frames to one connection (resampling audio if asked).

    Every frame to the client goes through :meth:`write`, which bounds what the client may
    leave unread. It also notes when the user last spoke or finished a turn, for the idle
    timeout.
    """

    def __init__(
        self,
        connection: ServerConnection,
        output_rate: int | None,
        *,
        timeout_s: float = _CLOSE_TIMEOUT_S,
        max_buffered_bytes: int = 1 << 17,
    ) -> None:
        self.connection = connection
        self.timeout_s = timeout_s
        """Longest a send may wait for the client to read."""
        self.max_buffered_bytes = max_buffered_bytes
        """Most the server holds unsent for this connection."""
        self._cut_off: asyncio.Task[None] | None = None
        self._reading: asyncio.Timeout | None = None
        self.requested_rate = output_rate
        self.source_rate = 0
        self.last_activity = time.monotonic()
        """``time.monotonic()`` of the user's last speech, turn or typed message."""
        self.user_speaking = False
        """The segmenter is inside an utterance."""
        self._resampler: StreamResampler | None = None
        self._resampler_turn = -1  # the turn whose audio the resampler holds samples of
        self._held: list[str | bytes] | None = []  # frames made before "ready" was sent
        self.observe: Callable[[Event], None] | None = None
        """Sees every event first (the server's metrics)."""

    def touch(self) -> None:
        """The user did something: the idle timeout starts again."""
        self.last_activity = time.monotonic()

    @property
    def cut_off(self) -> bool:
        """The client was found not reading and is being closed: frames are dropped."""
        return self._cut_off is not None

    async def write(self, frame: str | bytes) -> None:
        """Send one frame; a client that does not read is cut off (1008 ``not reading``).

        The send waits while the connection's buffer is full (``write_limit``), at most
        :attr:`timeout_s`; then, or when frames of cancelled sends have piled up past
        :attr:`max_buffered_bytes`, the connection is closed and this frame and every later
        one dropped. A closed connection drops frames quietly.
        """
        if self._cut_off is not None:
            return
        buffered = self.connection.transport.get_write_buffer_size()
        if buffered > self.max_buffered_bytes:  # cancelled sends left their frames
            self._cut(f"{buffered} bytes unsent")
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.connection.send(frame)
        except TimeoutError:
            self._cut(f"nothing taken for {self.timeout_s:.0f} s")
        except ConnectionClosed:
            pass

    def _cut(self, why: str) -> None:
        _LOGGER.warning("closing a client that does not read what it is sent (%s)", why)
        self._cut_off = asyncio.create_task(
            _close_within(self.connection, CLOSE_NOT_READING, "not reading"), name="cut-off"
        )
        if self._reading is not None:  # the session's wait for the client's next frame ends
            self._reading.reschedule(asyncio.get_running_loop().time())

    @contextlib.asynccontextmanager
    async def reading(self, timeout_s: float) -> AsyncIterator[None]:
        """Wait for the client's next frame: TimeoutError after ``timeout_s``, or at once when
        the client is cut off (cancelling ``recv()`` loses nothing)."""
        async with asyncio.timeout(timeout_s) as waiting:
            self._reading = waiting
            try:
                yield
            finally:
                self._reading = None

    async def closed(self) -> None:
        """After a cut-off, once the session is closed: wait for the connection to close
        (within the closing handshake's limit), reading away what the client still sends,
        or its answer to the close frame would wait behind that."""
        if self._cut_off is None:
            return
        try:
            with contextlib.suppress(ConnectionClosed):
                while not self._cut_off.done():
                    await self.connection.recv()
        finally:
            with contextlib.suppress(Exception):
                await self._cut_off

    async def release(self) -> None:
        """Send what was held back; from now on frames go out at once."""
        held, self._held = self._held or [], None
        for frame in held:
            await self.write(frame)

    @property
    def output_rate(self) -> int:
        return self.requested_rate or self.source_rate

    async def __call__(self, event: Event) -> None:
        if self.observe is not None:
            self.observe(event)
        if isinstance(event, SpeechStarted):
            self.user_speaking = True
            self.touch()
        elif isinstance(event, SpeechStopped | Transcript):
            self.user_speaking = False
            self.touch()
        frames: list[str | bytes | None] = []
        if isinstance(event, AudioOut) and self.output_rate != event.sample_rate_hz:
            resampler = self._resampler
            if (
                resampler is None
                or resampler.from_hz != event.sample_rate_hz
                or self._resampler_turn != event.turn_id
            ):
                # A fresh filter per turn: samples held of another turn are never sent.
                resampler = self._resampler = StreamResampler(
                    event.sample_rate_hz, self.output_rate
                )
                self._resampler_turn = event.turn_id
            frames.append(resampler.process(event.pcm))
        else:
            if self._resampler is not None:
                if isinstance(event, ReplyDone) and event.turn_id == self._resampler_turn:
                    # The end of the reply still sits in the filter: it goes before reply_done.
                    frames.append(self._resampler.process(b"", last=True))
                    self._resampler = None
                elif isinstance(event, Interrupted):
                    self._resampler = None  # the cut turn's held samples are dropped
            frames.append(encode_event(event))
        for frame in frames:
            if not frame:
                continue
            if self._held is not None:
                self._held.append(frame)
            else:
                await self.write(frame)


async def _send_quietly(connection: ServerConnection, frame: str | bytes) -> None:
    with contextlib.suppress(ConnectionClosed):
        await connection.send(frame)


async def _close_unread(connection: ServerConnection, code: int, reason: str) -> None:
    """Close a connection with frames still unread, reading them away meanwhile.

    Unread frames pause the connection's reading, and the client's close frame would wait
    behind them until the closing handshake times out.
    """
    closing = asyncio.ensure_future(_close_within(connection, code, reason))
    try:
        with contextlib.suppress(ConnectionClosed):
            while not closing.done():
                await connection.recv()
    finally:
        await closing


async def _close_quietly(connection: ServerConnection, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):  # shutting down: a broken connection is closed anyway
        await _close_within(connection, code, reason)


async def _close_within(connection: ServerConnection, code: int, reason: str) -> None:
    """Close, dropping the connection if the closing handshake takes over its time limit.

    The close frame goes behind what the client has not read yet; ``close()`` alone waits
    without a limit for the client to read that much before its own timeout starts.
    """
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
            await connection.close(code, reason)
    except TimeoutError:
        _LOGGER.info("dropped a connection that did not complete its closing handshake")
        connection.transport.abort()
        await connection.wait_closed()


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(entries: Sequence[str]) -> tuple[Network, ...]:
    """``[server] trusted_proxies`` parsed.

    Raises:
        ConfigError: an entry that is no address or network.
    """
    networks: list[Network] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"trusted_proxies: {entry!r} is not an address or a network (10.0.0.0/8)"
            ) from None
    return tuple(networks)


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _client_address(connection: ServerConnection, proxies: Sequence[Network] = ()) -> str:
    """The client's IP address; ``""`` when the socket has none.

    From a trusted proxy, the nearest address in ``X-Forwarded-For`` that is not itself a
    trusted proxy (each proxy appends the address it was reached from); the header of any
    other peer is ignored, as is a malformed one (the proxy's own address counts then).
    """
    remote = connection.remote_address
    peer = str(remote[0]) if isinstance(remote, tuple) and remote else ""
    if not proxies or not _trusted(peer, proxies) or connection.request is None:
        return peer
    hops = [
        hop.strip()
        for header in connection.request.headers.get_all("X-Forwarded-For")
        for hop in header.split(",")
    ]
    client = peer
    for hop in reversed(hops):
        try:
            client = str(ipaddress.ip_address(hop))
        except ValueError:
            _LOGGER.debug("ignored a malformed X-Forwarded-For from %s", peer)
            return peer
        if not _trusted(client, proxies):
            break
    return client


def _utf8(text: str) -> bytes:
    """``text`` as bytes for a constant-time compare (which refuses non-ASCII ``str``)."""
    return text.encode("utf-8", "surrogatepass")


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    if content_type.startswith("text/") or content_type.endswith("json"):
        content_type += "; charset=utf-8"
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)
