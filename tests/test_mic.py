"""The PortAudio transport's logic on a fake sounddevice: native rates, reopen, flush."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from voicebot.errors import AudioDeviceError
from voicebot.events import AudioOut, Interrupted
from voicebot.transports import mic


def device(
    name: str,
    *,
    inputs: int = 0,
    outputs: int = 0,
    rate: int = 44100,
    rates: set[int] | None = None,
    channels: set[int] | None = None,
) -> dict[str, Any]:
    """A device as sounddevice describes it; ``rates``/``channels``: what it really accepts."""
    return {
        "name": name,
        "hostapi": 0,
        "max_input_channels": inputs,
        "max_output_channels": outputs,
        "default_samplerate": float(rate),
        "accepts_rates": rates,
        "accepts_channels": channels,
    }


class FakeStream:
    def __init__(self, sd: FakeSoundDevice, **kwargs: Any) -> None:
        self.sd = sd
        self.kwargs = kwargs
        self.started = False
        self.closed = False
        self.device = sd.visible[kwargs["device"]]
        sd.streams.append(self)

    def start(self) -> None:
        if self.sd.fail_opens:
            self.sd.fail_opens -= 1
            raise self.sd.PortAudioError("Device unavailable", -9985)
        self.started = True

    def abort(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True

    def push(self, data: bytes) -> None:
        """The device delivers a block (from PortAudio's thread)."""
        status = type("Status", (), {"input_overflow": False})()
        frames = len(data) // 2 // self.kwargs["channels"]
        threading.Thread(target=self.kwargs["callback"], args=(data, frames, None, status)).start()

    def vanish(self) -> None:
        """The device is unplugged: PortAudio ends the stream."""
        self.started = False
        threading.Thread(target=self.kwargs["finished_callback"]).start()


class FakeSoundDevice:
    """sounddevice over a list of plugged devices that PortAudio sees only when initialised."""

    class PortAudioError(Exception):
        def __str__(self) -> str:  # as sounddevice's
            return f"{self.args[0]} [PaErrorCode {self.args[1]}]"

    def __init__(self, rate: int = 44100) -> None:
        self.plugged = [
            device("USB Mic", inputs=1, rate=rate),
            device("Speakers", outputs=2, rate=48000),
        ]
        self.visible = list(self.plugged)
        """PortAudio's device list: a snapshot taken by Pa_Initialize."""
        self.initializations = 1
        self.streams: list[FakeStream] = []
        self.fail_opens = 0
        self.default_names = ("USB Mic", "Speakers")

    @property
    def default(self) -> Any:
        names = [d["name"] for d in self.visible]
        found = tuple(names.index(n) if n in names else -1 for n in self.default_names)
        return type("Default", (), {"device": found})()

    def _initialize(self) -> None:
        self.visible = list(self.plugged)
        self.initializations += 1

    def _terminate(self) -> None:
        for stream in self.streams:
            stream.started = False
        self.visible = []

    def query_devices(self) -> list[dict[str, Any]]:
        return [dict(d) for d in self.visible]

    def query_hostapis(self) -> list[dict[str, Any]]:
        return [{"name": "ALSA"}]

    def plug(self, new: dict[str, Any], at: int = 0) -> None:
        self.plugged.insert(at, new)

    def unplug(self, name: str) -> None:
        gone = [d for d in self.plugged if d["name"] == name]
        self.plugged = [d for d in self.plugged if d["name"] != name]
        for stream in self.streams:
            if stream.device in gone and stream.started:
                stream.vanish()

    def _stream(self, **kwargs: Any) -> FakeStream:
        index = kwargs["device"]
        if not 0 <= index < len(self.visible):
            raise self.PortAudioError("Invalid device", -9996)
        chosen = self.visible[index]
        if not any(chosen is d for d in self.plugged):  # a stale entry: it was unplugged
            raise self.PortAudioError("Device unavailable", -9985)
        if chosen["accepts_rates"] and kwargs["samplerate"] not in chosen["accepts_rates"]:
            raise self.PortAudioError("Invalid sample rate", -9997)
        if chosen["accepts_channels"] and kwargs["channels"] not in chosen["accepts_channels"]:
            raise self.PortAudioError("Invalid number of channels", -9998)
        return FakeStream(self, **kwargs)

    def RawInputStream(self, **kwargs: Any) -> FakeStream:  # noqa: N802  (sounddevice's name)
        return self._stream(**kwargs)

    def RawOutputStream(self, **kwargs: Any) -> FakeStream:  # noqa: N802
        return self._stream(**kwargs)


@pytest.fixture
def sd(monkeypatch: pytest.MonkeyPatch) -> FakeSoundDevice:
    fake = FakeSoundDevice()
    monkeypatch.setattr(mic, "_sd", lambda: fake)
    return fake


async def until(condition: Any, timeout_s: float = 10.0) -> None:
    """Wait until ``condition()`` holds."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110  (polling a fake driven by threads)
            await asyncio.sleep(0.02)


def consume(source: mic.MicrophoneSource, received: list[bytes], count: int) -> asyncio.Task[None]:
    async def run() -> None:
        chunks: AsyncIterator[bytes] = source.chunks()
        async for chunk in chunks:
            received.append(chunk)
            if len(received) == count:
                return

    return asyncio.create_task(run())


def test_devices_are_found_by_name_index_or_default(sd: FakeSoundDevice) -> None:
    assert mic.resolve_device("usb", "input").name == "USB Mic"
    assert mic.resolve_device("1", "output").name == "Speakers"
    assert mic.resolve_device(None, "input").index == 0
    with pytest.raises(AudioDeviceError, match="no input device 'webcam'"):
        mic.resolve_device("webcam", "input")
    with pytest.raises(AudioDeviceError, match="no output device '0'"):
        mic.resolve_device("0", "output")


async def test_the_microphone_opens_at_its_native_rate(sd: FakeSoundDevice) -> None:
    source = mic.MicrophoneSource("USB")
    assert source.open() == 44100
    assert sd.streams[0].kwargs["samplerate"] == 44100
    assert sd.streams[0].kwargs["channels"] == 1
    assert sd.streams[0].kwargs["blocksize"] == 882  # 20 ms
    source.close()


async def test_a_vanished_microphone_is_reopened_and_audio_flows_again(
    sd: FakeSoundDevice,
) -> None:
    source = mic.MicrophoneSource("USB")
    source.open()
    received: list[bytes] = []
    task = consume(source, received, 2)
    sd.streams[0].push(b"\x01\x00" * 882)
    await until(lambda: received)
    sd.fail_opens = 1  # the first reopen attempt fails (still unplugged)
    sd.streams[0].vanish()
    await until(lambda: len(sd.streams) >= 3 and sd.streams[-1].started)
    sd.streams[-1].push(b"\x02\x00" * 882)
    await asyncio.wait_for(task, 10)
    assert received == [b"\x01\x00" * 882, b"\x02\x00" * 882]
    source.close()


@pytest.mark.parametrize("spec", ["USB Mic", "0"])
async def test_a_replugged_microphone_is_found_again_by_name_at_its_new_index(
    sd: FakeSoundDevice, spec: str
) -> None:
    source = mic.MicrophoneSource(spec)  # by name, or by the index it had at the start
    source.open()
    assert sd.streams[0].kwargs["device"] == 0
    received: list[bytes] = []
    task = consume(source, received, 1)
    sd.unplug("USB Mic")
    # It comes back after another device took its index. PortAudio lists it only once it is
    # initialised again: without that the source would retry the stale entry forever.
    sd.plug(device("Webcam Mic", inputs=1, rate=16000), at=0)
    sd.plug(device("USB Mic", inputs=1, rate=44100), at=2)
    await until(lambda: sd.streams[-1].started and sd.streams[-1].device["name"] == "USB Mic")
    assert sd.initializations >= 2
    assert sd.streams[-1].kwargs["device"] == 2
    assert all(s.device["name"] == "USB Mic" for s in sd.streams)  # never the webcam at 0
    sd.streams[-1].push(b"\x03\x00" * 882)
    await asyncio.wait_for(task, 10)
    assert received == [b"\x03\x00" * 882]
    source.close()


async def test_reinitialising_portaudio_reopens_the_speaker_it_closed(
    sd: FakeSoundDevice,
) -> None:
    speaker = mic.SpeakerSink("Speakers")
    speaker.open()
    source = mic.MicrophoneSource("USB")
    source.open()
    received: list[bytes] = []
    task = consume(source, received, 1)
    sd.streams[1].vanish()
    await until(lambda: len(sd.streams) >= 4 and sd.streams[-1].started)
    speakers = [s for s in sd.streams if s.device["name"] == "Speakers"]
    assert len(speakers) == 2 and speakers[0].closed and speakers[1].started
    sd.streams[-1].push(b"\x04\x00" * 882)
    await asyncio.wait_for(task, 10)
    source.close()
    speaker.close()


async def test_a_stalled_microphone_is_reopened(sd: FakeSoundDevice) -> None:
    source = mic.MicrophoneSource("USB", stall_timeout_s=0.2)
    source.open()
    received: list[bytes] = []
    task = consume(source, received, 2)
    sd.streams[0].push(b"\x01\x00" * 882)
    await until(lambda: received)
    # The device stays open but stops calling back: the watchdog reopens it.
    await until(lambda: len(sd.streams) >= 2 and sd.streams[-1].started)
    assert not sd.streams[0].started and sd.streams[0].closed
    sd.streams[0].push(b"\x09\x00" * 882)  # a late block of the stalled stream is dropped
    sd.streams[-1].push(b"\x02\x00" * 882)
    await asyncio.wait_for(task, 10)
    assert received == [b"\x01\x00" * 882, b"\x02\x00" * 882]
    source.close()


async def test_a_stuck_speaker_is_reopened_with_backoff(sd: FakeSoundDevice) -> None:
    now = [100.0]
    speaker = mic.SpeakerSink("Speakers", stall_timeout_s=2.0, clock=lambda: now[0])
    speaker.open()
    speaker.play(bytes(960), 48000)
    assert len(sd.streams) == 1
    now[0] += 5.0  # PortAudio has not asked for audio for 5 s
    sd.fail_opens = 100  # and it cannot be reopened yet
    speaker.play(bytes(960), 48000)
    attempts = len(sd.streams)
    assert attempts > 1 and speaker.queued_s == 0.0  # audio is dropped meanwhile
    speaker.play(bytes(960), 48000)
    assert len(sd.streams) == attempts  # backoff: no new attempt at once
    sd.fail_opens = 0
    now[0] += 1.0
    speaker.play(bytes(960), 48000)
    assert sd.streams[-1].started and not speaker.stalled
    assert speaker.queued_s == pytest.approx(0.01)
    speaker.close()


async def test_a_device_that_refuses_its_own_rate_and_mono_still_opens(
    sd: FakeSoundDevice,
) -> None:
    sd.plugged = sd.visible = [
        device("Picky Mic", inputs=2, rate=44100, rates={32000}, channels={2}),
        device("Picky Speaker", outputs=2, rate=48000, rates={22050}, channels={2}),
    ]
    sd.default_names = ("Picky Mic", "Picky Speaker")
    source = mic.MicrophoneSource()
    assert source.open() == 32000
    assert (sd.streams[-1].kwargs["samplerate"], sd.streams[-1].kwargs["channels"]) == (32000, 2)
    received: list[bytes] = []
    task = consume(source, received, 1)
    left_right = np.array([[100, 300]] * 640, dtype="<i2")
    sd.streams[-1].push(left_right.tobytes())
    await asyncio.wait_for(task, 10)
    assert received == [np.full(640, 200, dtype="<i2").tobytes()]  # downmixed
    source.close()

    speaker = mic.SpeakerSink()
    assert speaker.open() == 22050
    assert speaker.channels == 2
    speaker.play(np.arange(1, 5, dtype="<i2").tobytes(), 22050)
    out = bytearray(4 * 4)  # four stereo frames
    sd.streams[-1].kwargs["callback"](out, 4, None, None)
    assert np.frombuffer(bytes(out), dtype="<i2").tolist() == [1, 1, 2, 2, 3, 3, 4, 4]
    speaker.close()


async def test_a_device_that_opens_in_no_format_is_one_clear_error(
    sd: FakeSoundDevice,
) -> None:
    sd.plugged = sd.visible = [device("Broken Mic", inputs=1, rate=44100, rates={96000})]
    sd.default_names = ("Broken Mic", "")
    with pytest.raises(AudioDeviceError) as caught:
        mic.MicrophoneSource().open()
    message = str(caught.value)
    assert message.startswith("cannot open microphone 'Broken Mic' at 48000, 44100, 32000")
    assert message.endswith("8000 Hz, mono: Invalid sample rate [PaErrorCode -9997]")


async def test_the_speaker_resamples_and_an_interruption_flushes(sd: FakeSoundDevice) -> None:
    speaker = mic.SpeakerSink("Speakers")
    assert speaker.open() == 48000
    await speaker(AudioOut(1, bytes(2 * 22050), 22050))  # one second at the voice's rate
    # The streaming resampler keeps ~30 ms of filter delay back until more audio comes.
    assert speaker.queued_s == pytest.approx(1.0, abs=0.05)
    await speaker(Interrupted(1, ""))
    assert speaker.queued_s == 0.0
    speaker.close()


def test_missing_portaudio_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_portaudio(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_portaudio)
    with pytest.raises(AudioDeviceError, match="PortAudio is not installed"):
        mic.list_devices()
