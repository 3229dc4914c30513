"""Crash safety of the daemon: ``kill -9`` in the middle of a reply loses at most that turn,
the store stays whole, and the next start continues the same conversation."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from voicebot.audio import silence, write_wav
from voicebot.dialogue import Turn
from voicebot.store import Store
from voicebot.transports.daemon import ConversationMarker

from .conftest import REPO, Speech

RATE = 16000


def test_the_marker_names_a_recent_stored_conversation_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "voicebot.db")
    marker = ConversationMarker(tmp_path / "daemon-conversation", store)
    assert marker.last(300) is None  # nothing remembered yet
    conversation = store.create_conversation("default")
    store.add_turn(conversation, Turn("user", "My name is Ada."))
    marker.remember(conversation)
    found = marker.last(300)
    assert found is not None and found[0] == conversation and 0 <= found[1] < 300
    assert marker.last(-1) is None  # too long ago: a new conversation starts
    store.delete_conversation(conversation)
    assert marker.last(300) is None  # deleted by the user: not brought back
    (tmp_path / "daemon-conversation").write_text("")
    assert marker.last(300) is None
    store.close()


def _daemon(env: dict[str, str], wav: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voicebot",
            "daemon",
            "--input",
            str(wav),
            "--output",
            str(out),
            "--no-cue",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.models
def test_kill_9_mid_reply_then_the_next_start_continues_the_conversation(
    speech: Speech, tmp_path: Path
) -> None:
    wake = speech.espeak("okay nabu", words_per_minute=140)
    env = {
        **os.environ,
        "VOICEBOT_MODELS": str(REPO / "models"),
        "VOICEBOT_DATA_DIR": str(tmp_path),
    }
    first = tmp_path / "first.wav"
    write_wav(
        first,
        silence(1.0, RATE)
        + wake
        + silence(0.6, RATE)
        + speech.piper("My name is Ada.", rate=0.9)
        + silence(7.0, RATE)
        + wake
        + silence(0.6, RATE)
        + speech.piper("Can you tell me a fun fact about the moon?", rate=0.9)
        + silence(20.0, RATE),
        RATE,
    )
    daemon = _daemon(env, first, tmp_path / "first-out.wav")
    lines: list[str] = []

    def read() -> None:
        assert daemon.stdout is not None
        for line in daemon.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while not any(line.startswith("you:") and "moon" in line.lower() for line in lines):
        assert daemon.poll() is None and time.monotonic() < deadline, (
            lines,
            daemon.stderr.read() if daemon.poll() is not None and daemon.stderr else "",
        )
        time.sleep(0.05)
    time.sleep(0.3)  # the reply is being written and spoken
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(timeout=30)
    reader.join(timeout=5)
    assert daemon.returncode == -signal.SIGKILL

    database = tmp_path / "voicebot.db"
    with sqlite3.connect(database) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conversations = [row[0] for row in raw.execute("SELECT id FROM conversations")]
        turns = raw.execute(
            "SELECT role, text FROM turns WHERE conversation_id = ? ORDER BY id",
            (conversations[0],),
        ).fetchall()
    assert len(conversations) == 1
    # The first exchange was confirmed before the kill: it is all there.
    assert turns[0] == ("user", "My name is Ada.")
    assert turns[1][0] == "assistant" and turns[1][1]
    assert len(turns) <= 4  # at most the turn in flight besides
    assert (tmp_path / "daemon-conversation").read_text() == conversations[0]

    second = tmp_path / "second.wav"
    write_wav(
        second,
        silence(1.0, RATE)
        + wake
        + silence(0.6, RATE)
        + speech.piper("What is my name?", rate=0.9)
        + silence(10.0, RATE),
        RATE,
    )
    again = _daemon(env, second, tmp_path / "second-out.wav")
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert "you: What is my name?" in stdout, stdout + stderr
    reply = stdout.split("you: What is my name?", 1)[1]
    assert "Ada" in reply, stdout
    with sqlite3.connect(database) as raw:
        assert raw.execute("SELECT COUNT(*) FROM conversations").fetchone()[0] == 1
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
