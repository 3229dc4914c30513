"""Timers across replicas: two in-process servers on fake engines share one store (a SQLite
file, and a real PostgreSQL database); a conversation's running timers follow it to the replica
it resumes on, and ring there once, whether the replica it left was drained or is still up.

The timers run on one fake clock: nothing here waits for a timer in real time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from voicebot.config import Settings
from voicebot.events import TimerFinished
from voicebot.skills import Timer, TimerService
from voicebot.skills.timers import UNHEARD_GRACE_S
from voicebot.store import Store
from voicebot.transports.websocket import VoiceServer

from .pg import query
from .test_server import Running, collect_until, engines, next_event


class Clock:
    """Unix seconds that move only when told (every replica's timers read the same one)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Replicas:
    """Servers on one store location, each with a store connection of its own."""

    def __init__(self, settings: Settings, location: str) -> None:
        self.settings = replace(settings, server=replace(settings.server, port=0))
        self.location = location
        self.clock = Clock()
        self.servers: list[VoiceServer] = []
        self.stores: list[Store] = []

    async def start(self) -> Running:
        store = Store(self.location)
        timers = TimerService(store, clock=self.clock, poll_s=0.05)
        server = VoiceServer(engines(), self.settings, store, timers=timers)
        self.stores.append(store)
        self.servers.append(server)
        await server.start()
        return Running(server)

    async def close(self) -> None:
        for server in self.servers:
            await asyncio.wait_for(server.close(), 10)
        for store in self.stores:
            store.close()


@pytest.fixture
async def replicas(settings: Settings, store_location: str) -> AsyncIterator[Replicas]:
    made = Replicas(settings, store_location)
    yield made
    await made.close()


async def until(condition: Any, timeout_s: float = 10) -> None:
    """Wait for ``condition()`` (state another task changes)."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - state changed by the server's tasks
            await asyncio.sleep(0.01)


def timer_states(location: str) -> list[tuple[str, str]]:
    return [(str(r[0]), str(r[1])) for r in query(location, "SELECT id, state FROM timers")]


async def set_timer(ws: Any, text: str = "Set a timer for 3 seconds.") -> dict[str, Any]:
    await ws.send(json.dumps({"type": "text", "text": text}))
    started = await next_event(ws, "timer_started")
    done = await next_event(ws, "reply_done")
    assert done["text"] == "Timer set for 3 seconds."
    return started


async def test_a_timer_set_through_a_drained_replica_rings_on_the_one_the_client_resumes_on(
    replicas: Replicas,
) -> None:
    a = await replicas.start()
    b = await replicas.start()  # up before the timer is set: it did not load it at start
    ws, ready = await a.client()
    cid = ready["conversation_id"]
    started = await set_timer(ws)
    assert started["seconds"] == 3.0 and started["remaining_s"] == 3.0
    assert b.server.timers.running(cid) == []

    await asyncio.wait_for(a.server.drain(timeout_s=5), 10)  # SIGTERM
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(10):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001

    moved, ready = await b.client(conversation_id=cid)  # through the load balancer, to B
    assert ready["conversation_id"] == cid
    resumed = await next_event(moved, "timer_started")
    assert (resumed["id"], resumed["remaining_s"]) == (started["id"], 3.0)

    replicas.clock.now += 3
    finished = await next_event(moved, "timer_finished")
    assert finished == {"type": "timer_finished", "id": started["id"], "name": "", "seconds": 3.0}
    said = await next_event(moved, "reply_done")
    assert said["text"] == "Your timer is done."
    assert timer_states(replicas.location) == [(started["id"], "finished")]
    await moved.close()


async def test_with_both_replicas_up_the_timer_rings_once_on_the_replica_the_client_is_on(
    replicas: Replicas,
) -> None:
    a = await replicas.start()
    b = await replicas.start()
    ws, ready = await a.client()
    cid = ready["conversation_id"]
    started = await set_timer(ws)
    await ws.close()  # the connection drops; A stays up, holding the timer
    await until(lambda: not a.server.sessions)

    moved, _ = await b.client(conversation_id=cid)
    resumed = await next_event(moved, "timer_started")
    assert resumed["id"] == started["id"]
    assert [t.id for t in a.server.timers.running(cid)] == [started["id"]]  # both hold it

    replicas.clock.now += 3
    # Due on both; A, where nobody listens, leaves it to B: A checking first ends nothing.
    assert await a.server.timers.check() == []
    frames = await collect_until(moved, "timer_finished")
    assert frames[-1]["id"] == started["id"]
    said = await next_event(moved, "reply_done")
    assert said["text"] == "Your timer is done."

    replicas.clock.now += UNHEARD_GRACE_S + 1  # A's turn comes: B has ended it, A lets go
    await until(lambda: not a.server.timers.running(cid))
    assert await a.server.timers.check() == []
    assert a.server.timers.ringing(cid) == []
    await moved.send(json.dumps({"type": "text", "text": "Stop."}))
    after = await collect_until(moved, "timer_dismissed")
    after += await collect_until(moved, "reply_done")  # "stop" has no words of its own
    await moved.send(json.dumps({"type": "text", "text": "How much time is left?"}))
    after += await collect_until(moved, "reply_done")
    assert after[-1]["text"] == "You have no timers running."
    rang = [f for f in after if isinstance(f, dict) and f["type"] == "timer_finished"]
    assert rang == []  # once, not twice
    assert timer_states(replicas.location) == [(started["id"], "finished")]
    await moved.close()


def held(service: TimerService, conversation_id: str) -> dict[str, Timer]:
    return {t.id: t for t in service.running(conversation_id)}


async def test_a_replica_with_a_stale_copy_does_not_end_a_timer_changed_through_another(
    store_location: str,
) -> None:
    clock = Clock()
    first, second = Store(store_location), Store(store_location)
    a = TimerService(first, clock=clock)
    b = TimerService(second, clock=clock)
    heard: list[object] = []

    async def listener(event: object) -> None:
        heard.append(event)

    tea = await a.add("c", 60, "tea")
    eggs = await a.add("c", 60, "eggs")
    pasta = await a.add("c", 60, "pasta")
    b.subscribe("c", listener)  # the conversation's session moved to B
    assert {t.id for t in await b.adopt("c")} == {tea.id, eggs.id, pasta.id}
    assert await b.adopt("c") == []  # held already: adopted once
    longer = await b.change(held(b, "c")[tea.id], 600)  # ten minutes more, through B
    paused = await b.pause(held(b, "c")[eggs.id])
    assert longer is not None and paused is not None and paused.paused_s == 60.0
    assert await b.cancel(held(b, "c")[pasta.id])

    clock.now += 60 + UNHEARD_GRACE_S  # A's copies say all three are due
    assert await a.check() == []  # the store says otherwise: A ends none of them
    now_held = held(a, "c")
    assert set(now_held) == {tea.id, eggs.id}  # as they stand now; the cancelled one let go
    assert now_held[tea.id].ends_at == longer.ends_at and now_held[eggs.id].paused_s == 60.0

    clock.now += 600  # B, where the session is, ends tea first
    assert [t.id for t in await b.check()] == [tea.id]
    assert [type(e) for e in heard if isinstance(e, TimerFinished)] == [TimerFinished]
    assert await a.check() == []  # and A, later, finds it ended
    assert [t.id for t in a.running("c")] == [eggs.id]
    first.close()
    second.close()


async def test_a_session_opening_on_a_replica_lets_go_of_timers_ended_elsewhere(
    store_location: str,
) -> None:
    clock = Clock()
    first, second = Store(store_location), Store(store_location)
    a, b = TimerService(first, clock=clock), TimerService(second, clock=clock)
    tea = await a.add("c", 60, "tea")
    await b.adopt("c")
    assert await b.cancel(b.running("c")[0])
    assert [t.id for t in a.running("c")] == [tea.id]  # A has not heard
    assert await a.adopt("c") == []
    assert a.running("c") == []  # a session opening on A reads the store
    first.close()
    second.close()
