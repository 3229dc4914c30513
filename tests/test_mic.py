"""The PortAudio transport's logic on a fake sounddevice: native rates, reopen, flush."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from voicebot.errors import AudioDeviceError
from voicebot.events import AudioOut, Interrupted
from voicebot.transports import mic


class FakeStream:
    def __init__(self, sd: FakeSoundDevice, **kwargs: Any) -> None:
        self.sd = sd
        self.kwargs = kwargs
        self.started = False
        sd.streams.append(self)

    def start(self) -> None:
        if self.sd.fail_opens:
            self.sd.fail_opens -= 1
            raise self.sd.PortAudioError("device unavailable")
        self.started = True

    def abort(self) -> None:
        self.started = False

    def close(self) -> None:
        pass

    def push(self, data: bytes) -> None:
        """The device delivers a block (from PortAudio's thread)."""
        status = type("Status", (), {"input_overflow": False})()
        threading.Thread(
            target=self.kwargs["callback"], args=(data, len(data) // 2, None, status)
        ).start()

    def vanish(self) -> None:
        """The device is unplugged: PortAudio ends the stream."""
        self.started = False
        threading.Thread(target=self.kwargs["finished_callback"]).start()


class FakeSoundDevice:
    class PortAudioError(Exception):
        pass

    def __init__(self, rate: int = 44100) -> None:
        self.streams: list[FakeStream] = []
        self.fail_opens = 0
        self.rate = rate
        self.default = type("Default", (), {"device": (0, 1)})()

    def query_devices(self) -> list[dict[str, Any]]:
        return [
            {
                "name": "USB Mic",
                "hostapi": 0,
                "max_input_channels": 1,
                "max_output_channels": 0,
                "default_samplerate": float(self.rate),
            },
            {
                "name": "Speakers",
                "hostapi": 0,
                "max_input_channels": 0,
                "max_output_channels": 2,
                "default_samplerate": 48000.0,
            },
        ]

    def query_hostapis(self) -> list[dict[str, Any]]:
        return [{"name": "ALSA"}]

    def RawInputStream(self, **kwargs: Any) -> FakeStream:  # noqa: N802  (sounddevice's name)
        return FakeStream(self, **kwargs)

    def RawOutputStream(self, **kwargs: Any) -> FakeStream:  # noqa: N802
        return FakeStream(self, **kwargs)


@pytest.fixture
def sd(monkeypatch: pytest.MonkeyPatch) -> FakeSoundDevice:
    fake = FakeSoundDevice()
    monkeypatch.setattr(mic, "_sd", lambda: fake)
    return fake


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
    assert sd.streams[0].kwargs["blocksize"] == 882  # 20 ms
    source.close()


async def test_a_vanished_microphone_is_reopened_and_audio_flows_again(
    sd: FakeSoundDevice,
) -> None:
    source = mic.MicrophoneSource("USB")
    source.open()
    received: list[bytes] = []

    async def consume() -> None:
        async for chunk in source.chunks():
            received.append(chunk)
            if len(received) == 2:
                return

    task = asyncio.create_task(consume())
    sd.streams[0].push(b"\x01\x00" * 882)
    await asyncio.sleep(0.1)
    sd.fail_opens = 1  # the first reopen attempt fails (still unplugged)
    sd.streams[0].vanish()
    async with asyncio.timeout(10):
        while len(sd.streams) < 3 or not sd.streams[-1].started:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    sd.streams[-1].push(b"\x02\x00" * 882)
    await asyncio.wait_for(task, 10)
    assert received == [b"\x01\x00" * 882, b"\x02\x00" * 882]
    source.close()


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
