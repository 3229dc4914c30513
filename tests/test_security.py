"""Secure by default off the loopback: TLS or ``--insecure``, secrets kept out of logs, the
process list and the unit, failed tokens rate-limited and sessions capped per address.

In-process servers on fake engines for the limits; real ``voicebot serve`` processes (on the
embedded models) for what only a process shows: its output, its command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from voicebot.config import Settings, load_settings
from voicebot.errors import ConfigError
from voicebot.store import Store
from voicebot.transports.client import VoiceClient
from voicebot.transports.guard import AddressSessions, AuthLimiter
from voicebot.transports.websocket import VoiceServer, check_server_settings

from .conftest import REPO, make_settings, voice_server
from .test_browser import STEP_MS, chromium, running_server
from .test_server import RATE, engines, next_event
from .test_server_real import _self_signed

SECRET = "Sq7-very-secret-token-4711"
OTHER_ADDRESS = ("127.0.0.2", 0)
"""A second client address on this machine (all of 127/8 is loopback on Linux)."""


def public(settings: Settings, **server: Any) -> Settings:
    """``settings`` bound to every interface, with a token."""
    values = {"host": "0.0.0.0", "token": SECRET, **server}
    return replace(settings, server=replace(settings.server, **values))


# ------------------------------------------------------------------ plain ws:// off loopback


def test_plain_ws_beyond_loopback_is_refused_unless_insecure(
    settings: Settings, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"clear text.*--insecure"):
        check_server_settings(public(settings))
    check_server_settings(public(settings, insecure=True))
    pem = tmp_path / "cert.pem"
    pem.write_text("")
    check_server_settings(public(settings, certfile=str(pem), keyfile=str(pem)))  # TLS
    check_server_settings(settings)  # loopback: plain is fine
    # Beyond loopback a token stays required, --insecure or not.
    with pytest.raises(ConfigError, match="set a token"):
        check_server_settings(public(settings, insecure=True, token=""))


def test_insecure_is_a_config_key_and_an_environment_variable(tmp_path: Path) -> None:
    assert make_settings(tmp_path).server.insecure is False
    assert make_settings(tmp_path, "[server]\ninsecure = true\n").server.insecure is True
    config = tmp_path / "empty.toml"
    config.write_text("")
    env = {"VOICEBOT_SERVER_INSECURE": "true"}
    assert load_settings(config, environ=env).server.insecure is True


def run_voicebot(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "none.toml"
    config.write_text("")
    return subprocess.run(
        [sys.executable, "-m", "voicebot", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "VOICEBOT_MODELS": str(tmp_path),
            "VOICEBOT_CONFIG": str(config),
            **env,
        },
    )


def test_serve_refuses_plain_ws_on_the_network_before_loading(tmp_path: Path) -> None:
    result = run_voicebot(tmp_path, "serve", "--host", "0.0.0.0", "--token", SECRET)
    assert result.returncode == 2
    assert "in clear text" in result.stderr and "--insecure" in result.stderr
    assert "loading" not in result.stderr  # refused before any model is touched
    assert SECRET not in result.stderr + result.stdout


# ------------------------------------------------------------------ real serve processes


class Serve:
    """A real ``voicebot serve`` process on the embedded models, its output kept."""

    def __init__(self, tmp: Path, *argv: str, env: dict[str, str] | None = None) -> None:
        config = tmp / "serve.toml"
        config.write_text("")
        self.stdout = tmp / "serve.out"
        self.stderr = tmp / "serve.err"
        self._files = (self.stdout.open("wb"), self.stderr.open("wb"))
        self.process = subprocess.Popen(  # noqa: S603 - our own command
            [sys.executable, "-m", "voicebot", "-vv", "serve", "--port", "0", *argv],
            env={
                **os.environ,
                "VOICEBOT_DATA_DIR": str(tmp / "data"),
                "VOICEBOT_MODELS": str(REPO / "models"),
                "VOICEBOT_CONFIG": str(config),
                **(env or {}),
            },
            stdout=self._files[0],
            stderr=self._files[1],
        )
        self.port = 0

    def output(self) -> str:
        """Everything it wrote, stdout and stderr."""
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    async def ready(self, timeout_s: float = 400) -> None:
        async with asyncio.timeout(timeout_s):
            while True:
                found = re.search(r"ready in .* Open https?://[^:]+:(\d+)/", self.output())
                if found:
                    self.port = int(found.group(1))
                    return
                assert self.process.poll() is None, f"serve died:\n{self.output()[-3000:]}"
                await asyncio.sleep(0.2)

    def url(self, host: str = "127.0.0.1") -> str:
        return f"ws://{host}:{self.port}/ws"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)
        for file in self._files:
            file.close()


def http_get(port: int, path: str, context: ssl.SSLContext | None = None) -> str:
    scheme = "https" if context else "http"
    url = f"{scheme}://127.0.0.1:{port}{path}"
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return str(response.read().decode())


async def attempt(url: str, token: str | None, **connect_options: Any) -> tuple[Any, str]:
    """Open a session with ``token``: ``("ready", "")`` or the close code and reason."""
    async with asyncio.timeout(15):
        ws = await connect(url, open_timeout=10, **connect_options)
        start: dict[str, Any] = {"type": "start", "sample_rate": RATE}
        if token is not None:
            start["token"] = token
        try:
            await ws.send(json.dumps(start))
            await next_event(ws, "ready")
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return closed.rcvd.code, closed.rcvd.reason
        await ws.close()
        return "ready", ""


@pytest.mark.models
async def test_insecure_serve_warns_runs_and_never_logs_its_token(tmp_path: Path) -> None:
    serve = Serve(
        tmp_path,
        "--host",
        "0.0.0.0",
        "--insecure",
        "--token",
        SECRET,
        env={"VOICEBOT_SERVER_AUTH_FAILURES_PER_MINUTE": "3"},
    )
    try:
        await serve.ready()
        assert re.search(
            r"WARNING .*--insecure: binding to 0\.0\.0\.0 .*clear text", serve.output()
        )
        url = serve.url()
        assert await attempt(url, SECRET) == ("ready", "")
        assert await attempt(url, None) == (1008, "unauthorized")
        assert await attempt(url, SECRET[:-1] + "X") == (1008, "unauthorized")
        assert await attempt(url, SECRET.upper()) == (1008, "unauthorized")
        # Three failures: this address is refused, even with the right token.
        assert await attempt(url, SECRET) == (1008, "too many failed attempts")
        assert await attempt(url, SECRET, local_addr=OTHER_ADDRESS) == ("ready", "")
        # A malformed start with the token in it: its error goes to the client, not the log.
        async with (
            asyncio.timeout(15),
            connect(url, open_timeout=10, local_addr=OTHER_ADDRESS) as ws,
        ):
            await ws.send(json.dumps({"type": "start", "sample_rate": "x", "token": SECRET}))
            assert (await next_event(ws, "error"))["code"]
        exposition = await asyncio.to_thread(http_get, serve.port, "/metrics")
        assert 'voicebot_rejected_connections_total{reason="unauthorized"} 3.0' in exposition
        assert 'voicebot_rejected_connections_total{reason="rate_limited"} 1.0' in exposition
    finally:
        serve.stop()
    output = serve.output()
    assert "DEBUG websockets.server: < TEXT [" in output  # frames were logged, at debug level
    assert "not logged]" in output
    assert SECRET not in output
    assert SECRET[:8] not in output  # not even a truncated frame's first characters


@pytest.mark.models
async def test_tls_serve_reads_its_token_from_the_systemd_credential(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "token").write_text(SECRET + "\n")
    (credentials / "token").chmod(0o600)
    tls = ("--certfile", str(cert), "--keyfile", str(key))
    serve = Serve(
        tmp_path, "--host", "0.0.0.0", *tls, env={"CREDENTIALS_DIRECTORY": str(credentials)}
    )
    context = ssl.create_default_context(cafile=str(cert))
    try:
        await serve.ready()
        cmdline = await asyncio.to_thread(Path(f"/proc/{serve.process.pid}/cmdline").read_bytes)
        assert b"serve" in cmdline and SECRET.encode() not in cmdline
        config = await asyncio.to_thread(http_get, serve.port, "/config.json", context)
        assert json.loads(config)["token_required"] is True
        url = f"wss://127.0.0.1:{serve.port}/ws"
        assert await attempt(url, None, ssl=context) == (1008, "unauthorized")
        assert await attempt(url, SECRET, ssl=context) == ("ready", "")
    finally:
        serve.stop()
    output = serve.output()
    assert "clear text" not in output  # TLS: no --insecure, no warning
    assert "not logged]" in output  # frames were logged, at debug level
    assert SECRET not in output


def test_a_flag_or_the_environment_outranks_the_credential(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "token").write_text("from-credential\n")
    config = tmp_path / "config.toml"
    config.write_text('[server]\ntoken = "from-file"\n')
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    assert load_settings(config, environ=env).server.token == "from-credential"
    env_token = {**env, "VOICEBOT_SERVER_TOKEN": "from-env"}
    assert load_settings(config, environ=env_token).server.token == "from-env"
    flag = load_settings(config, environ=env, overrides={"server.token": "from-flag"})
    assert flag.server.token == "from-flag"
    assert load_settings(config, environ={}).server.token == "from-file"


# ------------------------------------------------------------------ the systemd unit


def test_the_unit_holds_no_token_and_systemd_verifies_it(tmp_path: Path) -> None:
    unit = tmp_path / "voicebot.service"
    credential = tmp_path / "etc" / "token"
    result = run_voicebot(
        tmp_path,
        "daemon",
        "--server",
        "wss://big-machine:8765/ws",
        f"--token={SECRET}",
        "--install-service",
        str(unit),
        "--credential-file",
        str(credential),
        "--",
        "--token",
        SECRET + "2",  # the last one given wins, as on a command line
    )
    assert result.returncode == 0, result.stderr
    text = unit.read_text()
    assert SECRET not in text and "--token" not in text
    assert "daemon --server wss://big-machine:8765/ws" in text
    assert f"LoadCredential=token:{credential}\n" in text
    assert credential.read_text() == SECRET + "2\n"
    assert credential.stat().st_mode & 0o777 == 0o600
    assert unit.stat().st_mode & 0o777 == 0o644
    assert SECRET not in result.stdout + result.stderr
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0, verify.stderr

    printed = run_voicebot(
        tmp_path, "daemon", "--token", SECRET, "--print-service", "--credential-file", "/x/t"
    )
    assert printed.returncode == 0, printed.stderr
    assert SECRET not in printed.stdout + printed.stderr
    assert "LoadCredential=token:/x/t" in printed.stdout
    assert "write the token to /x/t" in printed.stderr


def test_the_shipped_unit_template_has_no_secret() -> None:
    template = (REPO / "clients" / "systemd" / "voicebot.service").read_text()
    assert "--token" not in template


# ------------------------------------------------------------------ failed tokens


@contextlib.asynccontextmanager
async def serving(settings: Settings, **server: Any) -> AsyncIterator[VoiceServer]:
    """A server on a free port with these ``[server]`` settings, closed after."""
    settings = replace(settings, server=replace(settings.server, port=0, **server))
    async with voice_server(engines(), settings) as started:
        yield started


@pytest.fixture
async def guarded(settings: Settings) -> AsyncIterator[VoiceServer]:
    async with serving(
        settings,
        token=SECRET,
        auth_failures_per_minute=3,
        max_sessions_per_address=2,
        max_sessions=6,
    ) as server:
        yield server


def ws_url(server: VoiceServer) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


async def test_failed_tokens_are_rate_limited_per_address(guarded: VoiceServer) -> None:
    url = ws_url(guarded)
    for _ in range(3):
        assert await attempt(url, "wrong") == (1008, "unauthorized")
    # Refused before the token is checked: the right one does not get in either.
    assert await attempt(url, SECRET) == (1008, "too many failed attempts")
    async with asyncio.timeout(10), connect(url, open_timeout=5) as ws:
        error = await next_event(ws, "error")  # at once, before any start is sent
        assert error["code"] == "rate_limited"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    # Another address is not affected.
    assert await attempt(url, SECRET, local_addr=OTHER_ADDRESS) == ("ready", "")
    samples = {
        labels["reason"]: value
        for name, labels, value in guarded.metrics.samples()
        if name == "voicebot_rejected_connections_total"
    }
    assert samples["unauthorized"] == 3 and samples["rate_limited"] == 2


def forwarded(*hops: str) -> dict[str, Any]:
    return {"additional_headers": {"X-Forwarded-For": ", ".join(hops)}}


async def test_behind_a_trusted_proxy_the_forwarded_client_is_limited(
    settings: Settings,
) -> None:
    # 127.0.0.1 is the proxy; 127.0.0.2 is a client reaching the server directly.
    async with serving(
        settings,
        token=SECRET,
        auth_failures_per_minute=2,
        trusted_proxies=("127.0.0.1/32", "10.0.0.0/8"),
    ) as server:
        url = ws_url(server)
        # A chain through two trusted proxies: the client is the nearest untrusted hop.
        for _ in range(2):
            via = forwarded("198.51.100.9", "203.0.113.5", "10.1.2.3")
            assert await attempt(url, "wrong", **via) == (1008, "unauthorized")
        assert await attempt(url, SECRET, **forwarded("203.0.113.5")) == (
            1008,
            "too many failed attempts",
        )
        # Other clients behind the same proxy, and the proxy itself, are not affected.
        assert await attempt(url, SECRET, **forwarded("203.0.113.6")) == ("ready", "")
        assert await attempt(url, SECRET) == ("ready", "")
        # A peer that is not a trusted proxy cannot choose its address by writing the header,
        # and a malformed header counts against the proxy that sent it.
        for _ in range(2):
            direct = {"local_addr": OTHER_ADDRESS, **forwarded("192.0.2.77")}
            assert await attempt(url, "wrong", **direct) == (1008, "unauthorized")
        other = {"local_addr": OTHER_ADDRESS, **forwarded("192.0.2.78")}
        assert await attempt(url, SECRET, **other) == (1008, "too many failed attempts")
        for _ in range(2):
            assert await attempt(url, "wrong", **forwarded("not-an-address")) == (
                1008,
                "unauthorized",
            )
        assert await attempt(url, SECRET) == (1008, "too many failed attempts")
        assert await attempt(url, SECRET, **forwarded("203.0.113.6")) == ("ready", "")


HAPROXY_FORWARDING = """
global
    maxconn 64
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout tunnel 30s
    option forwardfor
frontend voice
    bind 127.0.0.1:{port}
    default_backend one
backend one
    server a 127.0.0.1:{backend}
"""


async def test_through_haproxy_each_client_has_its_own_failure_count(
    settings: Settings, tmp_path: Path
) -> None:

    async with serving(
        settings, token=SECRET, auth_failures_per_minute=2, trusted_proxies=("127.0.0.1",)
    ) as server:
        await _through_haproxy(server, tmp_path)


async def _through_haproxy(server: VoiceServer, tmp_path: Path) -> None:
    from .test_replicas import start_haproxy

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_FORWARDING.format(port=port, backend=server.port))
    balancer = start_haproxy(config)
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        async with asyncio.timeout(30):
            while True:  # haproxy listening
                try:
                    assert await attempt(url, SECRET) == ("ready", "")
                    break
                except OSError:
                    await asyncio.sleep(0.2)
        # HAProxy connects from 127.0.0.1 for everyone; X-Forwarded-For tells them apart.
        for _ in range(2):
            assert await attempt(url, "wrong", local_addr=OTHER_ADDRESS) == (
                1008,
                "unauthorized",
            )
        assert await attempt(url, SECRET, local_addr=OTHER_ADDRESS) == (
            1008,
            "too many failed attempts",
        )
        assert await attempt(url, SECRET, local_addr=("127.0.0.3", 0)) == ("ready", "")
        assert await attempt(url, SECRET) == ("ready", "")
    finally:
        balancer.terminate()
        balancer.wait(10)


def test_a_trusted_proxy_that_is_no_address_is_a_config_error(settings: Settings) -> None:
    bad = replace(settings, server=replace(settings.server, trusted_proxies=("10.0.0.0/33",)))
    with pytest.raises(ConfigError, match="trusted_proxies"):
        check_server_settings(bad)


async def test_a_right_token_clears_the_failures(guarded: VoiceServer) -> None:
    url = ws_url(guarded)
    for _ in range(2):
        assert await attempt(url, "wrong") == (1008, "unauthorized")
    assert await attempt(url, SECRET) == ("ready", "")
    for _ in range(2):
        assert await attempt(url, "wrong") == (1008, "unauthorized")
    assert await attempt(url, SECRET) == ("ready", "")


async def test_the_python_client_never_logs_its_token(
    guarded: VoiceServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="websockets.client")
    client = VoiceClient(ws_url(guarded), sample_rate_hz=RATE, token=SECRET)
    assert (await asyncio.wait_for(client.connect(), 10))["conversation_id"]
    await asyncio.wait_for(client.close(), 10)
    assert "> TEXT [" in caplog.text and "not logged]" in caplog.text
    assert SECRET not in caplog.text


def test_the_settings_never_show_the_token(settings: Settings) -> None:
    shown = public(settings)
    assert shown.server.token == SECRET
    assert SECRET not in repr(shown) and SECRET not in str(shown.server)


def test_failures_expire_after_a_minute_and_memory_is_bounded() -> None:
    now = [0.0]
    limiter = AuthLimiter(2, clock=lambda: now[0])
    limiter.failed("a")
    now[0] = 30.0
    limiter.failed("a")
    assert limiter.blocked("a") and not limiter.blocked("b")
    now[0] = 60.5  # the first failure is over a minute old
    assert not limiter.blocked("a")
    now[0] = 91.0
    assert len(limiter) == 0  # every entry expired: nothing kept
    for i in range(12_000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 10_000
    assert not AuthLimiter(0).blocked("a")  # 0: off


# ------------------------------------------------------------------ sessions per address


async def open_session(url: str, **connect_options: Any) -> ClientConnection:
    ws = await connect(url, open_timeout=5, **connect_options)
    await ws.send(json.dumps({"type": "start", "sample_rate": RATE, "token": SECRET}))
    await next_event(ws, "ready")
    return ws


async def test_sessions_per_address_are_capped(guarded: VoiceServer) -> None:
    url = ws_url(guarded)
    first = [await open_session(url) for _ in range(2)]
    extra = await connect(url, open_timeout=5)
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(extra.recv(), 5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
        1013,
        "too many sessions from this address",
    )
    other = [await open_session(url, local_addr=OTHER_ADDRESS) for _ in range(2)]
    await first[0].close()
    async with asyncio.timeout(5):
        while guarded.active_connections > 3:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    first[0] = await open_session(url)  # a slot freed is a slot again
    for ws in [*first, *other]:
        await ws.close()
    samples = {
        labels["reason"]: value
        for name, labels, value in guarded.metrics.samples()
        if name == "voicebot_rejected_connections_total"
    }
    assert samples["per_address"] == 1


async def test_zero_sessions_per_address_means_no_cap(settings: Settings) -> None:
    async with serving(settings, max_sessions_per_address=0) as server:
        sessions = [await open_session(ws_url(server)) for _ in range(6)]
        for ws in sessions:
            await ws.close()


def test_address_counts_are_released() -> None:
    sessions = AddressSessions(1)
    assert sessions.admit("a") and not sessions.admit("a") and sessions.admit("b")
    sessions.release("a")
    sessions.release("b")
    assert len(sessions) == 0 and sessions.admit("a")


# ------------------------------------------------------------------ the browser keeps it


@pytest.mark.browser
async def test_the_browser_keeps_the_token_for_the_tab_unless_asked(
    settings: Settings, store: Store
) -> None:
    settings = replace(settings, server=replace(settings.server, port=0, token=SECRET))
    stored = """() => [sessionStorage.getItem("voicebot.token"),
                      localStorage.getItem("voicebot.token")]"""
    async with (
        asyncio.timeout(120),
        running_server(engines(), settings, store) as server,
        chromium([]) as browser,
    ):
        page = browser.page
        await page.goto(server.url, timeout=STEP_MS)
        await page.wait_for_selector("#token", state="visible", timeout=STEP_MS)
        assert not await page.is_checked("#remember-token")
        await page.fill("#token", SECRET)
        await page.dispatch_event("#token", "change")
        assert await page.evaluate(stored) == [SECRET, None]  # this tab only
        await page.check("#remember-token")
        assert await page.evaluate(stored) == [None, SECRET]  # remembered on this device
        await page.reload()
        await page.wait_for_selector("#token", state="visible", timeout=STEP_MS)
        assert await page.input_value("#token") == SECRET
        assert await page.is_checked("#remember-token")
        await page.uncheck("#remember-token")
        assert await page.evaluate(stored) == [SECRET, None]  # forgotten by the device
        assert browser.page_errors == []
