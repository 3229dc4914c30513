"""Local sound devices through PortAudio (sounddevice): microphone in, speaker out.

Devices are opened at their native rate and the audio is resampled, so "invalid sample rate"
never happens. A device that fails or disappears is reopened (by name: indices change when a
USB device is replugged) with backoff while the session keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..audio import StreamResampler
from ..errors import AudioDeviceError
from ..events import AudioOut, Event, Interrupted

__all__ = [
    "DeviceInfo",
    "MicrophoneSource",
    "SpeakerSink",
    "list_devices",
    "play_blocking",
    "resolve_device",
]

_LOGGER = logging.getLogger(__name__)

_BLOCK_MS = 20
_MAX_BACKOFF_S = 10.0


def _sd() -> Any:
    """Import sounddevice, turning a missing PortAudio into one clear error."""
    try:
        import sounddevice
    except OSError as error:  # raised when the PortAudio library is missing
        raise AudioDeviceError(
            "PortAudio is not installed: run `scripts/install-system-deps.sh` "
            "(or `apt-get install libportaudio2`)"
        ) from error
    return sounddevice


@dataclass(frozen=True)
class DeviceInfo:
    """A sound device."""

    index: int
    """PortAudio index (changes when devices are plugged or unplugged)."""
    name: str
    """Device name."""
    host_api: str
    """ALSA, PulseAudio, CoreAudio..."""
    max_input_channels: int
    """0 for output-only devices."""
    max_output_channels: int
    """0 for input-only devices."""
    default_sample_rate_hz: int
    """The device's native rate."""
    is_default_input: bool = False
    """The system's default microphone."""
    is_default_output: bool = False
    """The system's default speaker."""


def list_devices() -> list[DeviceInfo]:
    """Every sound device PortAudio sees.

    Raises:
        AudioDeviceError: PortAudio is missing or fails.
    """
    sd = _sd()
    try:
        devices = sd.query_devices()
        apis = sd.query_hostapis()
        default_in, default_out = sd.default.device
    except sd.PortAudioError as error:
        raise AudioDeviceError(f"cannot list sound devices: {error}") from error
    return [
        DeviceInfo(
            index=i,
            name=d["name"],
            host_api=apis[d["hostapi"]]["name"],
            max_input_channels=d["max_input_channels"],
            max_output_channels=d["max_output_channels"],
            default_sample_rate_hz=int(d["default_samplerate"]),
            is_default_input=i == default_in,
            is_default_output=i == default_out,
        )
        for i, d in enumerate(devices)
    ]


def resolve_device(spec: str | int | None, kind: str) -> DeviceInfo:
    """Find a device by index, exact name or name substring (``kind``: input or output).

    Raises:
        AudioDeviceError: no such device, or it cannot do ``kind``.
    """
    devices = list_devices()
    usable = [
        d
        for d in devices
        if (d.max_input_channels if kind == "input" else d.max_output_channels) > 0
    ]
    if not usable:
        raise AudioDeviceError(f"no {kind} sound device found (see `voicebot devices`)")
    if spec is None or spec == "":
        for d in usable:
            if d.is_default_input if kind == "input" else d.is_default_output:
                return d
        return usable[0]
    text = str(spec).strip()
    if text.isdigit():
        for d in usable:
            if d.index == int(text):
                return d
    else:
        exact = [d for d in usable if d.name == text]
        partial = [d for d in usable if text.lower() in d.name.lower()]
        if exact or partial:
            return (exact or partial)[0]
    names = ", ".join(f"{d.index}: {d.name}" for d in usable)
    raise AudioDeviceError(f"no {kind} device {text!r} (available: {names})")


class MicrophoneSource:
    """An async iterator of PCM16 mono chunks from a microphone, reopened if it fails."""

    def __init__(self, device: str | int | None = None) -> None:
        """Create a source for a device (name, index, or ``None`` for the default)."""
        self.device_spec = device
        """The device as the user named it."""
        self.sample_rate_hz = 0
        """The device's native rate (known once opened)."""
        self._queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue(maxsize=500)
        self._stream: Any = None
        self._closed = False

    def open(self) -> int:
        """Open the device now (to learn its rate); returns the rate.

        Raises:
            AudioDeviceError: the device is missing or cannot be opened.
        """
        sd = _sd()
        info = resolve_device(self.device_spec, "input")
        loop = asyncio.get_running_loop()
        queue = self._queue

        def post(item: bytes | BaseException) -> None:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(item)

        def callback(data: Any, frames: int, time_info: Any, status: Any) -> None:
            if status.input_overflow:
                _LOGGER.debug("microphone overflow")
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(post, bytes(data))

        def finished() -> None:
            if not self._closed:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(
                        post, AudioDeviceError(f"microphone {info.name!r} stopped")
                    )

        rate = info.default_sample_rate_hz
        try:
            self._stream = sd.RawInputStream(
                device=info.index,
                samplerate=rate,
                channels=1,
                dtype="int16",
                blocksize=rate * _BLOCK_MS // 1000,
                callback=callback,
                finished_callback=finished,
            )
            self._stream.start()
        except (sd.PortAudioError, ValueError) as error:
            raise AudioDeviceError(f"cannot open microphone {info.name!r}: {error}") from error
        self.sample_rate_hz = rate
        _LOGGER.info("microphone %r at %d Hz", info.name, rate)
        return rate

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.abort()
                stream.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield audio at the device rate; a failing device is reopened with backoff.

        The rate stays the one first opened: a device reopened at another rate is resampled.
        """
        if self._stream is None:
            self.open()
        rate = self.sample_rate_hz
        resampler: StreamResampler | None = None
        backoff = 0.5
        while not self._closed:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                _LOGGER.warning("%s; reopening", item)
                self._close_stream()
                while not self._closed:
                    try:
                        new_rate = self.open()
                    except AudioDeviceError as error:
                        _LOGGER.warning("%s; retrying in %.1f s", error, backoff)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, _MAX_BACKOFF_S)
                        continue
                    backoff = 0.5
                    resampler = StreamResampler(new_rate, rate) if new_rate != rate else None
                    break
                continue
            yield resampler.process(item) if resampler else item

    def close(self) -> None:
        """Stop listening."""
        self._closed = True
        self._close_stream()


class SpeakerSink:
    """Plays reply audio on a speaker at its native rate; an interruption flushes at once."""

    def __init__(self, device: str | int | None = None) -> None:
        """Create a sink for a device (name, index, or ``None`` for the default)."""
        self.device_spec = device
        """The device as the user named it."""
        self.sample_rate_hz = 0
        """The device's native rate (known once opened)."""
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._resamplers: dict[int, StreamResampler] = {}
        self._stream: Any = None
        self._failed = False
        self.played_bytes = 0
        """Bytes sent to the device so far (at the device rate)."""

    def open(self) -> int:
        """Open the device; returns its rate.

        Raises:
            AudioDeviceError: the device is missing or cannot be opened.
        """
        sd = _sd()
        info = resolve_device(self.device_spec, "output")
        rate = info.default_sample_rate_hz

        def callback(out: Any, frames: int, time_info: Any, status: Any) -> None:
            wanted = len(out)
            with self._lock:
                data = bytes(self._buffer[:wanted])
                del self._buffer[:wanted]
            self.played_bytes += len(data)
            out[: len(data)] = data
            if len(data) < wanted:
                out[len(data) :] = bytes(wanted - len(data))

        def finished() -> None:
            self._failed = True

        try:
            self._stream = sd.RawOutputStream(
                device=info.index,
                samplerate=rate,
                channels=1,
                dtype="int16",
                blocksize=rate * _BLOCK_MS // 1000,
                callback=callback,
                finished_callback=finished,
            )
            self._stream.start()
        except (sd.PortAudioError, ValueError) as error:
            raise AudioDeviceError(f"cannot open speaker {info.name!r}: {error}") from error
        self._failed = False
        self.sample_rate_hz = rate
        _LOGGER.info("speaker %r at %d Hz", info.name, rate)
        return rate

    async def __call__(self, event: Event) -> None:
        """A session sink: plays AudioOut, flushes on Interrupted."""
        if isinstance(event, AudioOut):
            self.play(event.pcm, event.sample_rate_hz)
        elif isinstance(event, Interrupted):
            self.flush()

    def play(self, pcm: bytes, sample_rate_hz: int) -> None:
        """Queue audio; the device is (re)opened if needed."""
        if self._stream is None or self._failed:
            self._close_stream()
            try:
                self.open()
            except AudioDeviceError as error:
                _LOGGER.warning("%s; dropping reply audio", error)
                return
        if sample_rate_hz != self.sample_rate_hz:
            resampler = self._resamplers.get(sample_rate_hz)
            if resampler is None or resampler.to_hz != self.sample_rate_hz:
                resampler = StreamResampler(sample_rate_hz, self.sample_rate_hz)
                self._resamplers[sample_rate_hz] = resampler
            pcm = resampler.process(pcm)
        with self._lock:
            self._buffer.extend(pcm)

    def flush(self) -> None:
        """Drop everything not yet played."""
        with self._lock:
            self._buffer.clear()

    @property
    def queued_s(self) -> float:
        """Audio waiting to be played."""
        with self._lock:
            return len(self._buffer) / 2 / (self.sample_rate_hz or 1)

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.abort()
                stream.close()

    def close(self) -> None:
        """Stop playing."""
        self._close_stream()


def play_blocking(pcm: bytes, sample_rate_hz: int, *, device: str | int | None = None) -> None:
    """Play audio on a speaker and wait until it has been played.

    Raises:
        AudioDeviceError: no usable speaker.
    """
    sd = _sd()
    import numpy as np

    info = resolve_device(device, "output")
    rate = info.default_sample_rate_hz
    if rate != sample_rate_hz:
        from ..audio import resample

        pcm = resample(pcm, sample_rate_hz, rate)
    try:
        sd.play(np.frombuffer(pcm, dtype="<i2"), samplerate=rate, device=info.index, blocking=True)
    except sd.PortAudioError as error:
        raise AudioDeviceError(f"cannot play on {info.name!r}: {error}") from error
