"""The command line on the real models: one-shot commands, the text chat and history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from voicebot.audio import read_audio, silence, write_wav

from .conftest import REPO, Speech, voicebot_cli

pytestmark = pytest.mark.models


voicebot = voicebot_cli


def test_transcribe_prints_only_the_transcript(speech: Speech, tmp_path: Path) -> None:
    wav = tmp_path / "q.wav"
    write_wav(
        wav, silence(0.5, 16000) + speech.piper("Please turn off the lights in the kitchen."), 16000
    )
    result = voicebot("transcribe", str(wav), data=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Please turn off the lights in the kitchen.\n"


def test_transcribe_reads_other_formats(speech: Speech, tmp_path: Path) -> None:
    import av
    import numpy as np

    pcm = speech.piper("What is the weather like in London today?")
    mp3 = tmp_path / "q.mp3"
    with av.open(str(mp3), "w") as container:
        stream = container.add_stream("mp3", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    result = voicebot("transcribe", str(mp3), data=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "weather" in result.stdout.lower() and "london" in result.stdout.lower()


def test_say_writes_speech_that_is_heard_back(speech: Speech, tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    result = voicebot("say", "Good morning, the coffee is ready.", "-o", str(out), data=tmp_path)
    assert result.returncode == 0, result.stderr
    heard = speech.engines.stt.transcribe(read_audio(out, 16000)).text.lower()
    assert "coffee" in heard and "ready" in heard


def test_reply_answers_a_recorded_question_out_loud(speech: Speech, tmp_path: Path) -> None:
    question = tmp_path / "q.wav"
    write_wav(question, speech.piper("What is the capital of France?"), 16000)
    answer = tmp_path / "a.wav"
    result = voicebot("reply", str(question), "-o", str(answer), data=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "you: What is the capital of France?"
    reply = lines[1].split(": ", 1)[1]
    assert "paris" in reply.lower()
    assert "voice_to_voice" not in result.stdout and "stt" in result.stderr  # timings on stderr
    heard = speech.engines.stt.transcribe(read_audio(answer, 16000)).text.lower()
    assert "paris" in heard
    # The turn is stored and can be listed, shown and exported.
    listed = voicebot("history", "list", data=tmp_path)
    cid = listed.stdout.split()[0]
    shown = voicebot("history", "show", cid, data=tmp_path)
    assert "user: What is the capital of France?" in shown.stdout
    exported = json.loads(voicebot("history", "export", cid, data=tmp_path).stdout)
    assert [t["role"] for t in exported["turns"]] == ["user", "assistant"]
    assert exported["turns"][1]["metrics_ms"]["stt"] > 0


def test_text_chat_remembers_and_resumes(tmp_path: Path) -> None:
    first = voicebot("text", data=tmp_path, stdin="My name is Ada.\n")
    assert first.returncode == 0, first.stderr
    cid = first.stderr.split("conversation ")[1].split()[0]
    second = voicebot("text", "--conversation", cid, data=tmp_path, stdin="What is my name?\n")
    assert second.returncode == 0, second.stderr
    assert "ada" in second.stdout.lower()


def test_text_chat_answers_skills_and_keeps_timers(tmp_path: Path) -> None:
    asked = "What is 17 plus 25?\nSet a timer for 10 minutes for the tea.\nHow much time is left?\n"
    chat = voicebot("text", data=tmp_path, stdin=asked)
    assert chat.returncode == 0, chat.stderr
    assert "17 plus 25 is 42." in chat.stdout
    assert "Tea timer set for 10 minutes." in chat.stdout
    assert "Your tea timer has " in chat.stdout
    cid = chat.stderr.split("conversation ")[1].split()[0]
    again = voicebot("text", "--conversation", cid, data=tmp_path, stdin="Cancel the tea timer.\n")
    assert "Cancelled your tea timer." in again.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("transcribe", "/no/such.wav"), "no such file"),
        (("text", "--profile", "pirate"), "unknown profile 'pirate'"),
        (("text", "--conversation", "nope"), "no conversation 'nope'"),
        (("reply", str(REPO / "README.md"), "-o", "x.wav"), "not an audio file"),
        (("say", "hi", "-o", "x.wav", "--voice", "nope"), "unknown tts model 'nope'"),
        (("models", "path", "nope"), "unknown model 'nope'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    result = voicebot(*args, data=tmp_path, stdin="")
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    # `voicebot models list | head -1`: the pipe closes before everything is printed.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "voicebot", "models", "list"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "VOICEBOT_MODELS": str(REPO / "models")},
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 141
    assert result.stderr == ""  # no traceback
