"""``/metrics``: the Prometheus text format, parsed by prometheus_client's own parser, moving
with real turns (fake engines first, then the real models over a real websocket)."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from voicebot.audio import silence
from voicebot.config import DaemonSettings, Settings
from voicebot.engines import Engines
from voicebot.store import Store
from voicebot.transports.daemon import StatusReporter
from voicebot.transports.websocket import VoiceServer

from .conftest import Recorder, Speech, paced
from .test_daemon import free_port, make_daemon, wake_word
from .test_daemon import speech as hum
from .test_replicas import fake_engines
from .test_server import next_event, send_speech

RATE = 16000
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_raw(port: int, path: str) -> tuple[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return answer.headers["Content-Type"], answer.read().decode()


def scrape(port: int, path: str = "/metrics") -> tuple[str, Samples]:
    kind, text = scrape_raw(port, path)
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return kind, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_parse_and_move_with_turns_errors_interruptions_and_refusals(
    settings: Settings,
) -> None:
    settings = replace(settings, server=replace(settings.server, port=0, max_sessions=1))
    store = Store(settings.database_path())
    server = VoiceServer(fake_engines(token_delay_s=0.02), settings, store)
    await server.start()
    try:
        kind, before = await asyncio.to_thread(scrape, server.port)
        assert kind.startswith("text/plain") and "version=0.0.4" in kind
        assert value(before, "voicebot_turns_total", answered_by="model") == 0
        assert value(before, "voicebot_active_sessions") == 0
        info = [key for key in before if key[0] == "voicebot_build_info"]
        assert info and ("role", "serve") in info[0][1]

        ws = await connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5)
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
        await next_event(ws, "ready")
        await ws.send(json.dumps({"type": "text", "text": "tell me something"}))
        await next_event(ws, "metrics")
        await ws.send("not json")
        await next_event(ws, "error")
        await ws.send(json.dumps({"type": "text", "text": "what time is it"}))  # a skill
        await next_event(ws, "metrics")
        await ws.send(json.dumps({"type": "text", "text": "tell me a long story"}))
        await next_event(ws, "reply_text")
        await ws.send(json.dumps({"type": "interrupt"}))
        await next_event(ws, "interrupted")
        # The server is full (max_sessions 1): a second connection is refused.
        second = await connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5)
        with pytest.raises(Exception):  # noqa: B017 - closed with 1013, whichever error says so
            await asyncio.wait_for(second.recv(), 10)

        _, after = await asyncio.to_thread(scrape, server.port)
        assert value(after, "voicebot_turns_total", answered_by="model") == 1
        assert value(after, "voicebot_turns_total", answered_by="skill") == 1
        assert value(after, "voicebot_voice_to_voice_seconds_count") == 2
        assert value(after, "voicebot_llm_first_token_seconds_count") == 1
        assert value(after, "voicebot_voice_to_voice_seconds_bucket", le="+Inf") == 2
        assert value(after, "voicebot_errors_total", code="bad_json") == 1
        # Each new message also cut the playback still due of the reply before it.
        assert value(after, "voicebot_interruptions_total") >= 1
        assert value(after, "voicebot_rejected_connections_total", reason="full") == 1
        assert value(after, "voicebot_active_sessions") == 1
        workers = {dict(k[1])["worker"] for k in after if k[0] == "voicebot_worker_queue"}
        assert {"llm", "tts"} <= workers
        await ws.close()
    finally:
        await server.close()
        store.close()


async def test_the_daemon_serves_the_same_metrics_on_its_status_port(settings: Settings) -> None:
    port = free_port()
    options = DaemonSettings(follow_up_s=1.0, command_timeout_s=2.0, status_port=port)
    daemon, _ = make_daemon(settings, Recorder(), daemon=options)
    scraped: list[Samples] = []

    async def scrape_when_done() -> None:
        pcm = wake_word() + silence(0.2, RATE) + hum() + silence(2.5, RATE)
        run = asyncio.create_task(daemon.run(lambda: paced(pcm), restart=False))
        # The status server closes with the daemon: scrape once the turn is counted.
        async with asyncio.timeout(30):
            while daemon.status.info.get("turns", 0) < 1:  # noqa: ASYNC110 - a test's poll
                await asyncio.sleep(0.05)
        scraped.append((await asyncio.to_thread(scrape, port))[1])
        await asyncio.wait_for(run, 30)

    await scrape_when_done()
    samples = scraped[0]
    assert value(samples, "voicebot_turns_total", answered_by="model") == 1
    assert value(samples, "voicebot_voice_to_voice_seconds_count") == 1
    assert any(k[0] == "voicebot_build_info" and ("role", "daemon") in k[1] for k in samples)


async def test_the_status_json_still_answers_beside_the_metrics() -> None:
    port = free_port()
    reporter = StatusReporter(DaemonSettings(status_port=port))
    await reporter.start()
    try:
        _, body = await asyncio.to_thread(scrape_raw, port, "/")
        assert json.loads(body)["state"] == "starting"
        _, samples = await asyncio.to_thread(scrape, port)
        assert value(samples, "voicebot_active_sessions") == 0
    finally:
        await reporter.close()


@pytest.mark.models
async def test_a_real_spoken_turn_moves_the_counters_and_histograms(
    real_engines: Engines, speech: Speech, settings: Settings
) -> None:
    settings = replace(settings, server=replace(settings.server, port=0))
    store = Store(settings.database_path())
    server = VoiceServer(real_engines, settings, store)
    await server.start()
    try:
        _, before = await asyncio.to_thread(scrape, server.port)
        ws = await connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5)
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
        await next_event(ws, "ready")
        question = silence(0.3, RATE) + speech.piper("What is the capital of France?")
        await send_speech(ws, question + silence(1.5, RATE))
        transcript = await next_event(ws, "transcript", timeout_s=120)
        assert "france" in transcript["text"].lower()
        metrics: dict[str, Any] = await next_event(ws, "metrics", timeout_s=120)
        _, after = await asyncio.to_thread(scrape, server.port)
        await ws.close()
    finally:
        await server.close()
        store.close()
    for stage in ("end_of_turn", "stt", "llm_first_token", "first_audio", "voice_to_voice"):
        name = f"voicebot_{stage}_seconds"
        assert value(after, f"{name}_count") - value(before, f"{name}_count") == 1, stage
        observed = value(after, f"{name}_sum") - value(before, f"{name}_sum")
        assert observed == pytest.approx(metrics["ms"][stage] / 1000, abs=1e-6), stage
    assert value(after, "voicebot_turns_total", answered_by="model") == 1
    assert value(after, "voicebot_active_sessions") == 1


def test_the_grafana_dashboard_asks_only_for_metrics_that_exist() -> None:
    from voicebot.metrics import VoiceMetrics
    from voicebot.workers import ModelWorker

    from .conftest import REPO

    dashboard = json.loads((REPO / "deploy" / "grafana" / "voicebot-dashboard.json").read_text())
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"voicebot_[a-z_]+", target["expr"])
    }
    metrics = VoiceMetrics(workers=lambda: [ModelWorker("llm")])
    exposed = {name for name, _, _ in metrics.samples()}
    assert asked and asked <= exposed, asked - exposed
