"""Local sound devices through PortAudio (sounddevice): microphone in, speaker out.

Devices are opened at their native rate and the audio is resampled; a device that refuses its
own rate or mono is tried at the other common rates and in stereo, so "invalid sample rate"
never stops it. A device that fails, disappears or stalls is reopened with backoff (by name:
indices change when a USB device is replugged) while the session keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..audio import StreamResampler
from ..errors import AudioDeviceError
from ..events import AudioOut, Event, Interrupted, TimerFinished
from .daemon import cue

__all__ = [
    "COMMON_SAMPLE_RATES_HZ",
    "DeviceInfo",
    "MicrophoneSource",
    "SpeakerSink",
    "with_timer_chime",
    "list_devices",
    "play_blocking",
    "resolve_device",
]

_LOGGER = logging.getLogger(__name__)

_BLOCK_MS = 20
_FIRST_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 10.0

COMMON_SAMPLE_RATES_HZ = (48000, 44100, 32000, 22050, 16000, 8000)
"""Rates tried, after the device's own, when a device refuses to open."""


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

    def channels(self, kind: str) -> int:
        """The most channels it has as an ``input`` or ``output``."""
        return self.max_input_channels if kind == "input" else self.max_output_channels


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
    usable = [d for d in list_devices() if d.channels(kind) > 0]
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


def _formats(info: DeviceInfo, kind: str) -> Iterator[tuple[int, int]]:
    """(rate, channels) to try: the native rate first, mono before stereo."""
    rates = [info.default_sample_rate_hz]
    rates += [r for r in COMMON_SAMPLE_RATES_HZ if r not in rates]
    channels = (1, 2) if info.channels(kind) >= 2 else (1,)
    for rate in rates:
        for count in channels:
            yield rate, count


def _describe_formats(info: DeviceInfo, kind: str) -> str:
    rates = sorted({r for r, _ in _formats(info, kind)}, reverse=True)
    layouts = "mono or stereo" if info.channels(kind) >= 2 else "mono"
    return f"{', '.join(map(str, rates))} Hz, {layouts}"


_DEVICE_ERRORS = (-9996, -9985)  # paInvalidDevice, paDeviceUnavailable


def _is_format_error(error: Exception) -> bool:
    """Whether another rate or channel count could help (not for a missing or busy device)."""
    args: tuple[object, ...] = error.args
    if len(args) > 1 and isinstance(args[1], int):
        return args[1] not in _DEVICE_ERRORS
    text = str(error).lower()
    return "unavailable" not in text and "invalid device" not in text


def _downmix(pcm: bytes, channels: int) -> bytes:
    """Interleaved PCM16 to mono (the mean of the channels)."""
    if channels == 1:
        return pcm
    frames = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels)
    return bytes(frames.mean(axis=1, dtype=np.float32).round().astype("<i2").tobytes())


def _upmix(pcm: bytes, channels: int) -> bytes:
    """Mono PCM16 to interleaved ``channels`` (the same sound on each)."""
    if channels == 1:
        return pcm
    return bytes(np.repeat(np.frombuffer(pcm, dtype="<i2"), channels).tobytes())


_OPEN_DEVICES: weakref.WeakSet[_Device] = weakref.WeakSet()
"""Every device of this module with a stream open (re-initialising PortAudio closes them)."""


def _reinitialize_portaudio(sd: Any, caller: _Device) -> None:
    """Re-initialise PortAudio so that its device list is current again.

    PortAudio enumerates the devices once, in ``Pa_Initialize``: a USB device replugged later
    stays invisible (or is listed under a stale index) until PortAudio is terminated and
    initialised again. sounddevice exposes that only as the private ``_terminate`` and
    ``_initialize``, hence the guard for a version without them. ``Pa_Terminate`` closes every
    open stream, so this module's other open devices are closed first and reopened after.

    Raises:
        AudioDeviceError: PortAudio cannot be initialised again.
    """
    terminate = getattr(sd, "_terminate", None)
    initialize = getattr(sd, "_initialize", None)
    if not callable(terminate) or not callable(initialize):
        _LOGGER.debug("this sounddevice cannot re-initialise PortAudio; device list may be stale")
        return
    others = [d for d in list(_OPEN_DEVICES) if d is not caller]
    for device in others:
        device._close_stream()
    try:
        # Fails when a previous attempt terminated it but could not initialise it again.
        with contextlib.suppress(Exception):
            terminate()
        try:
            initialize()
        except Exception as error:  # sounddevice raises PortAudioError; be safe with others
            raise AudioDeviceError(f"cannot re-initialise PortAudio: {error}") from error
    finally:
        for device in others:
            device._reopen_in_place()


class _Device:
    """What the microphone and the speaker share: finding the device and opening a stream."""

    kind = "input"
    label = "microphone"

    def __init__(self, device: str | int | None, *, stall_timeout_s: float) -> None:
        self.device_spec = device
        """The device as the user named it."""
        self.sample_rate_hz = 0
        """The rate the device runs at (known once opened)."""
        self.channels = 0
        """The device's channel count in use (1, or 2 for devices that refuse mono)."""
        self.stall_timeout_s = stall_timeout_s
        """No callback from PortAudio for this long means the device is stuck (0: never)."""
        self.device_name = ""
        """The name of the device opened; a reopen looks it up by this name (indices change)."""
        self._device_index = -1
        self._stream: Any = None
        self._generation = 0  # bumped on each close: late callbacks of old streams are ignored

    def _locate(self) -> DeviceInfo:
        """The device to open: by the user's spec at first, by its name after that."""
        if not self.device_name:
            return resolve_device(self.device_spec, self.kind)
        usable = [d for d in list_devices() if d.channels(self.kind) > 0]
        same = [d for d in usable if d.name == self.device_name]
        if same:
            return next((d for d in same if d.index == self._device_index), same[0])
        if self.device_spec is None or self.device_spec == "":
            return resolve_device(None, self.kind)  # the default device changed
        raise AudioDeviceError(f"{self.label} {self.device_name!r} is gone")

    def _open_stream(
        self, sd: Any, *, rescan: bool, make: Callable[[DeviceInfo, int, int, int], Any]
    ) -> DeviceInfo:
        """Find the device and open a stream on it, trying other rates and stereo if needed.

        Raises:
            AudioDeviceError: the device is missing or opens in none of the formats.
        """
        if rescan:
            _reinitialize_portaudio(sd, self)
        info = self._locate()
        errors: list[str] = []
        for rate, channels in _formats(info, self.kind):
            self._generation += 1
            stream = None
            try:
                stream = make(info, rate, channels, self._generation)
                stream.start()
            except (sd.PortAudioError, ValueError) as error:
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()
                errors.append(str(error))
                if _is_format_error(error):
                    continue
                message = f"cannot open {self.label} {info.name!r}: {error}"
                raise AudioDeviceError(message) from error
            if errors:
                _LOGGER.info(
                    "%s %r refused its own format (%s); using %d Hz, %d channel(s)",
                    self.label,
                    info.name,
                    errors[0],
                    rate,
                    channels,
                )
            self._stream = stream
            self.sample_rate_hz = rate
            self.channels = channels
            self.device_name = info.name
            self._device_index = info.index
            _OPEN_DEVICES.add(self)
            return info
        raise AudioDeviceError(
            f"cannot open {self.label} {info.name!r} at {_describe_formats(info, self.kind)}: "
            f"{errors[-1] if errors else 'no format to try'}"
        )

    def _close_stream(self) -> None:
        self._generation += 1
        _OPEN_DEVICES.discard(self)
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.abort()
            with contextlib.suppress(Exception):
                stream.close()

    def _reopen_in_place(self) -> None:
        """Reopen after another device re-initialised PortAudio under this one."""
        raise NotImplementedError


class MicrophoneSource(_Device):
    """An async iterator of PCM16 mono chunks from a microphone, reopened if it fails."""

    def __init__(self, device: str | int | None = None, *, stall_timeout_s: float = 3.0) -> None:
        """Create a source for a device (name, index, or ``None`` for the default).

        Args:
            device: Name, index, or ``None`` for the default microphone.
            stall_timeout_s: No audio for this long means the device is lost (0: never).
        """
        super().__init__(device, stall_timeout_s=stall_timeout_s)
        self._queue: asyncio.Queue[tuple[bytes, int, int] | BaseException | None] = asyncio.Queue(
            maxsize=500
        )
        self._closed = False
        self._first_rate_hz = 0

    def open(self) -> int:
        """Open the device now (to learn its rate); returns the rate :meth:`chunks` yields.

        Raises:
            AudioDeviceError: the device is missing or cannot be opened.
        """
        self._open(rescan=False)
        return self._first_rate_hz

    def _open(self, *, rescan: bool) -> None:
        sd = _sd()
        loop = asyncio.get_running_loop()

        def post(item: tuple[bytes, int, int] | BaseException, generation: int) -> None:
            if generation != self._generation:
                return  # a stream closed since: its late blocks and end are not news
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(item)

        def make(info: DeviceInfo, rate: int, channels: int, generation: int) -> Any:
            def callback(data: Any, frames: int, time_info: Any, status: Any) -> None:
                if status.input_overflow:
                    _LOGGER.debug("microphone overflow")
                with contextlib.suppress(RuntimeError):  # loop closed
                    loop.call_soon_threadsafe(post, (bytes(data), rate, channels), generation)

            def finished() -> None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(
                        post, AudioDeviceError(f"microphone {info.name!r} stopped"), generation
                    )

            return sd.RawInputStream(
                device=info.index,
                samplerate=rate,
                channels=channels,
                dtype="int16",
                blocksize=rate * _BLOCK_MS // 1000,
                callback=callback,
                finished_callback=finished,
            )

        info = self._open_stream(sd, rescan=rescan, make=make)
        if not self._first_rate_hz:
            self._first_rate_hz = self.sample_rate_hz
        _LOGGER.info(
            "microphone %r (index %d) at %d Hz, %d channel(s)",
            info.name,
            info.index,
            self.sample_rate_hz,
            self.channels,
        )

    def _reopen_in_place(self) -> None:
        if self._closed:
            return
        try:
            self._open(rescan=False)
        except AudioDeviceError as error:
            with contextlib.suppress(asyncio.QueueFull):  # a full queue stalls: same outcome
                self._queue.put_nowait(error)

    async def _next(self) -> tuple[bytes, int, int] | BaseException | None:
        """The next block, or the reason the device is lost."""
        if not self.stall_timeout_s:
            return await self._queue.get()
        try:
            async with asyncio.timeout(self.stall_timeout_s):
                return await self._queue.get()
        except TimeoutError:
            return AudioDeviceError(
                f"microphone {self.device_name!r} sent no audio for {self.stall_timeout_s:g} s"
            )

    async def _reopen(self, reason: BaseException) -> None:
        """Close the lost device and open it again (re-initialising PortAudio), with backoff."""
        _LOGGER.warning("%s; reopening", reason)
        self._close_stream()
        backoff = _FIRST_BACKOFF_S
        while not self._closed:
            try:
                self._open(rescan=True)
            except AudioDeviceError as error:
                _LOGGER.warning("%s; retrying in %.1f s", error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            return

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield mono audio at the first-opened rate; a lost device is reopened with backoff.

        A device that stops calling back for ``stall_timeout_s`` counts as lost. A device
        reopened at another rate or in stereo is resampled and downmixed.
        """
        if self._stream is None and not self._first_rate_hz:
            self.open()
        rate = self._first_rate_hz
        resamplers: dict[int, StreamResampler] = {}
        while not self._closed:
            item = await self._next()
            if item is None or self._closed:
                return
            if isinstance(item, BaseException):
                await self._reopen(item)
                continue
            pcm, block_rate, channels = item
            pcm = _downmix(pcm, channels)
            if block_rate != rate:
                resampler = resamplers.get(block_rate)
                if resampler is None:
                    resampler = resamplers[block_rate] = StreamResampler(block_rate, rate)
                pcm = resampler.process(pcm)
            if pcm:
                yield pcm

    def close(self) -> None:
        """Stop listening (also ends :meth:`chunks`)."""
        self._closed = True
        self._close_stream()
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)


class SpeakerSink(_Device):
    """Plays reply audio on a speaker at its native rate; an interruption flushes at once.

    A speaker that errors, vanishes or stops asking for audio for ``stall_timeout_s`` is
    reopened (by name, re-initialising PortAudio) with backoff; audio meanwhile is dropped.
    """

    kind = "output"
    label = "speaker"

    def __init__(
        self,
        device: str | int | None = None,
        *,
        stall_timeout_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create a sink for a device.

        Args:
            device: Name, index, or ``None`` for the default speaker.
            stall_timeout_s: No callback for this long means the device is stuck (0: never).
            clock: Monotonic seconds (the stall watchdog and the backoff use it).
        """
        super().__init__(device, stall_timeout_s=stall_timeout_s)
        self._clock = clock
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._resamplers: dict[int, StreamResampler] = {}
        self._failed = False
        self._last_callback = 0.0
        self._backoff_s = _FIRST_BACKOFF_S
        self._next_attempt = 0.0
        self.played_bytes = 0
        """Bytes of mono audio sent to the device so far (at the device rate)."""

    def open(self) -> int:
        """Open the device; returns its rate.

        Raises:
            AudioDeviceError: the device is missing or cannot be opened.
        """
        self._open(rescan=False)
        return self.sample_rate_hz

    def _open(self, *, rescan: bool) -> None:
        sd = _sd()

        def make(info: DeviceInfo, rate: int, channels: int, generation: int) -> Any:
            def callback(out: Any, frames: int, time_info: Any, status: Any) -> None:
                self._last_callback = self._clock()
                wanted = len(out) // channels
                with self._lock:
                    data = bytes(self._buffer[:wanted])
                    del self._buffer[:wanted]
                self.played_bytes += len(data)
                data = _upmix(data, channels)
                out[: len(data)] = data
                if len(data) < len(out):
                    out[len(data) :] = bytes(len(out) - len(data))

            def finished() -> None:
                if generation == self._generation:
                    self._failed = True

            return sd.RawOutputStream(
                device=info.index,
                samplerate=rate,
                channels=channels,
                dtype="int16",
                blocksize=rate * _BLOCK_MS // 1000,
                callback=callback,
                finished_callback=finished,
            )

        previous_rate = self.sample_rate_hz
        info = self._open_stream(sd, rescan=rescan, make=make)
        self._failed = False
        self._last_callback = self._clock()
        if previous_rate and previous_rate != self.sample_rate_hz:
            self.flush()  # queued audio was resampled for the old rate
        _LOGGER.info(
            "speaker %r (index %d) at %d Hz, %d channel(s)",
            info.name,
            info.index,
            self.sample_rate_hz,
            self.channels,
        )

    def _reopen_in_place(self) -> None:
        try:
            self._open(rescan=False)
        except AudioDeviceError as error:
            _LOGGER.warning("%s", error)
            self._failed = True

    async def __call__(self, event: Event) -> None:
        """A session sink: plays AudioOut, flushes on Interrupted."""
        if isinstance(event, AudioOut):
            self.play(event.pcm, event.sample_rate_hz)
        elif isinstance(event, Interrupted):
            self.flush()

    @property
    def stalled(self) -> bool:
        """The open device has not asked for audio for ``stall_timeout_s``."""
        return (
            self._stream is not None
            and self.stall_timeout_s > 0
            and self._clock() - self._last_callback > self.stall_timeout_s
        )

    def _ensure_open(self) -> bool:
        """Open (or reopen, with backoff) the device; False when it cannot be had now."""
        if self.stalled:
            _LOGGER.warning(
                "speaker %r asked for no audio for %g s; reopening",
                self.device_name,
                self.stall_timeout_s,
            )
            self._failed = True
        if self._stream is not None and not self._failed:
            return True
        now = self._clock()
        if now < self._next_attempt:
            return False
        reopening = bool(self.device_name)
        self._close_stream()
        try:
            self._open(rescan=reopening)
        except AudioDeviceError as error:
            self._next_attempt = now + self._backoff_s
            _LOGGER.warning("%s; dropping audio, retrying in %.1f s", error, self._backoff_s)
            self._backoff_s = min(self._backoff_s * 2, _MAX_BACKOFF_S)
            self.flush()
            return False
        self._backoff_s = _FIRST_BACKOFF_S
        self._next_attempt = 0.0
        return True

    def play(self, pcm: bytes, sample_rate_hz: int) -> None:
        """Queue mono audio; the device is (re)opened if needed."""
        if not self._ensure_open():
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

    def close(self) -> None:
        """Stop playing."""
        self._close_stream()


def play_blocking(pcm: bytes, sample_rate_hz: int, *, device: str | int | None = None) -> None:
    """Play audio on a speaker and wait until it has been played.

    The speaker's own rate is tried first, then the other common rates and stereo.

    Raises:
        AudioDeviceError: no usable speaker.
    """
    from ..audio import resample

    sd = _sd()
    info = resolve_device(device, "output")
    error: Exception | None = None
    for rate, channels in _formats(info, "output"):
        data = resample(pcm, sample_rate_hz, rate) if rate != sample_rate_hz else pcm
        samples = np.frombuffer(data, dtype="<i2")
        if channels > 1:
            samples = np.repeat(samples[:, None], channels, axis=1)
        try:
            sd.play(samples, samplerate=rate, device=info.index, blocking=True)
        except (sd.PortAudioError, ValueError) as failure:
            error = failure
            continue
        return
    raise AudioDeviceError(
        f"cannot play on {info.name!r} at {_describe_formats(info, 'output')}: {error}"
    )


def with_timer_chime(speaker: SpeakerSink) -> Callable[[Event], Awaitable[None]]:
    """The speaker as a session sink, plus a chime when a timer ends (before it is named)."""

    async def sink(event: Event) -> None:
        if isinstance(event, TimerFinished):
            speaker.play(cue("timer", 22050), 22050)
        await speaker(event)

    return sink
