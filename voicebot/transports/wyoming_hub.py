"""The hub for wyoming-satellite devices: voicebot drives them the way Home Assistant does.

For each satellite (``--satellite tcp://HOST:10700``, or found with ``--discover``) a
:class:`SatelliteLink` connects, asks ``describe``, sends ``run-satellite`` and pings, then
answers every ``run-pipeline`` the satellite sends with voicebot's own pipeline:

- ``wake`` start (the satellite streams all the time, remote wake word detection): the audio
  goes to a microWakeWord detector; on the wake word, ``detection``, then as for ``asr``.
  When the answer is done the link listens for the wake word again (the satellite keeps
  streaming and sends no new ``run-pipeline``);
- ``asr`` start (the satellite heard its wake word itself): the audio goes to the satellite's
  voicebot :class:`~voicebot.session.Session`: ``voice-started`` / ``voice-stopped``, the
  ``transcript``, then the spoken reply streamed back as ``synthesize`` (the text) and
  ``audio-start`` / ``audio-chunk`` / ``audio-stop`` while it is still being written.

One session per satellite, kept across wake-ups and reconnections, holds the conversation
(dialogue state, memory, timers). A satellite that goes away is reconnected with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from wyoming.asr import Transcribe
from wyoming.asr import Transcript as WyomingTranscript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event as WyomingEvent
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.satellite import RunSatellite
from wyoming.tts import Synthesize
from wyoming.vad import VoiceStarted, VoiceStopped
from wyoming.wake import Detect, Detection

from ..audio import StreamResampler
from ..engines.wake import MicroWakeWordDetector
from ..errors import AudioFormatError
from ..events import (
    AudioOut,
    ErrorEvent,
    Event,
    ReplyDone,
    ReplyText,
    SpeechStarted,
    SpeechStopped,
    Transcript,
)
from ..session import Session
from .wyoming_server import Relay, WyomingApp, parse_tcp_uri, to_16k_mono

__all__ = ["SatelliteHub", "SatelliteLink"]

_LOGGER = logging.getLogger(__name__)

_RATE_HZ = 16000
_DESCRIBE_TIMEOUT_S = 10.0
_LISTEN_TIMEOUT_S = 8.0
"""Audio after the wake word with nobody speaking: the pipeline ends."""
_TTS_CHUNK_SAMPLES = 1024

_ORDER = {
    PipelineStage.WAKE: 0,
    PipelineStage.ASR: 1,
    PipelineStage.INTENT: 2,
    PipelineStage.HANDLE: 3,
    PipelineStage.TTS: 4,
}


class _Stage:
    IDLE = "idle"
    WAKE = "wake"
    LISTEN = "listen"
    ANSWER = "answer"


class SatelliteLink:
    """One satellite: connected, driven and reconnected until :meth:`stop`."""

    def __init__(
        self,
        app: WyomingApp,
        host: str,
        port: int,
        *,
        min_backoff_s: float = 1.0,
        max_backoff_s: float = 10.0,
        ping_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the link (call :meth:`run`).

        Args:
            app: The shared models, store and skills.
            host: The satellite's address.
            port: Its port (wyoming-satellite's default is 10700).
            min_backoff_s: First wait before reconnecting; doubled on each failure.
            max_backoff_s: Longest wait before reconnecting.
            ping_interval_s: How often the satellite is pinged; one that has answered pings
                and then says nothing for three intervals is reconnected.
            clock: Monotonic seconds.
        """
        self.app = app
        self.host = host
        self.port = port
        self.name = f"{host}:{port}"
        """The satellite's name (its own, once it has described itself)."""
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.ping_interval_s = ping_interval_s
        self.connections = 0
        """Times the link has connected and started the satellite."""
        self.answered = 0
        """Replies streamed to the satellite."""
        self._clock = clock
        self._client: AsyncTcpClient | None = None
        self._relay = Relay()
        self._relay.target = self._on_session_event
        self._session: Session | None = None
        self._pipeline: RunPipeline | None = None
        self._stage = _Stage.IDLE
        self._detectors: list[MicroWakeWordDetector] = []
        self._resampler: StreamResampler | None = None
        self._resampler_rate = _RATE_HZ
        self._listen_s = 0.0
        self._heard_speech = False
        self._audio_started = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False
        self._last_event = clock()
        self._pongs = 0

    @property
    def uri(self) -> str:
        """``tcp://HOST:PORT``."""
        return f"tcp://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop reconnecting (the running :meth:`run` ends at its next wait)."""
        self._stopped = True

    async def run(self) -> None:
        """Connect, serve and reconnect with backoff until stopped or cancelled."""
        backoff_s = self.min_backoff_s
        try:
            while not self._stopped:
                started = self._clock()
                try:
                    await self._connect_and_serve()
                except asyncio.CancelledError:
                    raise
                except (ConnectionError, OSError, TimeoutError, asyncio.IncompleteReadError) as e:
                    _LOGGER.info("satellite %s: %s", self.name, e or type(e).__name__)
                except Exception:  # a loop boundary: log, reconnect
                    _LOGGER.exception("satellite %s failed", self.name)
                finally:
                    await self._disconnect()
                if self._stopped:
                    break
                if self._clock() - started > 30.0:
                    backoff_s = self.min_backoff_s  # it had been working: try again soon
                _LOGGER.info("satellite %s: reconnecting in %.0f s", self.name, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self.max_backoff_s)
        finally:
            if self._session is not None:
                await self._session.close()

    async def _connect_and_serve(self) -> None:
        client = AsyncTcpClient(self.host, self.port)
        await client.connect()
        self._client = client
        await client.write_event(Describe().event())
        async with asyncio.timeout(_DESCRIBE_TIMEOUT_S):
            while True:
                event = await client.read_event()
                if event is None:
                    raise ConnectionResetError("the satellite closed the connection")
                if Info.is_type(event.type):
                    break
        info = Info.from_event(event)
        if info.satellite is None:
            raise ConnectionRefusedError(f"{self.uri} is a Wyoming service, not a satellite")
        self.name = info.satellite.name or self.name
        if self._session is None:
            self._session = Session(
                self.app.engines,
                self.app.settings,
                sink=self._relay,
                store=self.app.store,
                realtime_playback=False,
                skills=self.app.skills,
                timer_key=f"satellite:{self.host}:{self.port}",
            )
            await self._session.start()
        await client.write_event(RunSatellite().event())
        self.connections += 1
        _LOGGER.warning("satellite %s (%s) connected and running", self.name, self.uri)
        self._last_event = self._clock()
        self._pongs = 0
        pinger = asyncio.create_task(self._ping(client), name=f"ping-{self.name}")
        try:
            while True:
                event = await client.read_event()
                if event is None:
                    raise ConnectionResetError("the satellite went away")
                self._last_event = self._clock()
                await self._on_satellite_event(event)
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger

    async def _ping(self, client: AsyncTcpClient) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            silent_s = self._clock() - self._last_event
            if self._pongs and silent_s > 3 * self.ping_interval_s:
                _LOGGER.warning("satellite %s stopped answering pings", self.name)
                await client.disconnect()  # the read loop ends and the link reconnects
                return
            with contextlib.suppress(ConnectionError, OSError):
                await client.write_event(Ping().event())

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        self._stage = _Stage.IDLE
        self._pipeline = None
        if self._session is not None and self._session.replying:
            await self._session.interrupt()
        for task in list(self._tasks):
            task.cancel()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.disconnect()

    async def _send(self, event: WyomingEvent) -> None:
        client = self._client
        if client is None:
            return
        try:
            await client.write_event(event)
        except (ConnectionError, OSError):
            _LOGGER.info("satellite %s: could not send %s", self.name, event.type)

    # --- from the satellite ---

    async def _on_satellite_event(self, event: WyomingEvent) -> None:
        kind = event.type
        if Ping.is_type(kind):
            await self._send(Pong(text=Ping.from_event(event).text).event())
        elif Pong.is_type(kind):
            self._pongs += 1
        elif RunPipeline.is_type(kind):
            try:
                await self._start_pipeline(RunPipeline.from_event(event))
            except (KeyError, ValueError) as error:
                await self._send(Error(text=f"bad run-pipeline: {error}", code="bad_event").event())
        elif AudioChunk.is_type(kind):
            await self._on_audio(AudioChunk.from_event(event))
        elif AudioStart.is_type(kind):
            pass  # every chunk carries its own format
        elif AudioStop.is_type(kind):
            await self._on_audio_stop()
        elif Detection.is_type(kind) or Info.is_type(kind):
            pass  # a local wake word: its run-pipeline follows
        else:
            _LOGGER.debug("satellite %s sent %s", self.name, kind)

    async def _start_pipeline(self, pipeline: RunPipeline) -> None:
        _LOGGER.info(
            "satellite %s: pipeline %s -> %s",
            self.name,
            pipeline.start_stage.value,
            pipeline.end_stage.value,
        )
        session = self._session
        assert session is not None
        if session.replying:
            await session.interrupt()  # a new request: the old answer is not wanted
        self._pipeline = pipeline
        if pipeline.start_stage is PipelineStage.WAKE:
            self._listen_for_wake_word(pipeline)
            await self._send(Detect(names=[d.name for d in self._detectors]).event())
        elif pipeline.start_stage is PipelineStage.ASR:
            await self._begin_listening()
        else:
            await self._send(
                Error(
                    text=f"voicebot runs pipelines from wake or asr, not {pipeline.start_stage}",
                    code="unsupported_pipeline",
                ).event()
            )
            self._pipeline = None

    def _listen_for_wake_word(self, pipeline: RunPipeline) -> None:
        offered = self.app.wake_phrases
        names = [n for n in (pipeline.wake_word_names or []) if n in offered]
        names = names or list(offered)[:1]
        if [d.name for d in self._detectors] != names:
            self._detectors = [MicroWakeWordDetector(name) for name in names]
        for detector in self._detectors:
            detector.reset()
        self._stage = _Stage.WAKE

    async def _begin_listening(self) -> None:
        session = self._session
        assert session is not None
        session.reset_input()
        self._stage = _Stage.LISTEN
        self._listen_s = 0.0
        self._heard_speech = False
        self._audio_started = False
        await self._send(Transcribe(language=self.app.settings.stt.language or None).event())

    async def _on_audio(self, chunk: AudioChunk) -> None:
        if self._stage in (_Stage.IDLE, _Stage.ANSWER):
            return  # not asked to listen, or answering (half duplex: no echo of the reply)
        if chunk.rate != self._resampler_rate:
            self._resampler_rate = chunk.rate
            self._resampler = (
                StreamResampler(chunk.rate, _RATE_HZ) if chunk.rate != _RATE_HZ else None
            )
        try:
            pcm = to_16k_mono(chunk.audio, chunk.width, chunk.channels, self._resampler)
        except AudioFormatError as error:
            await self._send(Error(text=str(error), code="bad_audio").event())
            return
        if self._stage == _Stage.WAKE:
            for detector in self._detectors:
                if await self.app.wake_worker.run(detector.process, pcm):
                    _LOGGER.info("satellite %s: wake word %s", self.name, detector.name)
                    await self._send(Detection(name=detector.name, timestamp=0).event())
                    pipeline = self._pipeline
                    if pipeline is not None and _ORDER[pipeline.end_stage] > 0:
                        await self._begin_listening()
                    else:
                        self._end_pipeline()
                    return
            return
        session = self._session
        assert session is not None
        self._listen_s += len(pcm) / 2 / _RATE_HZ
        await session.feed(pcm)
        if self._stage == _Stage.LISTEN and not self._heard_speech:
            if self._listen_s > _LISTEN_TIMEOUT_S:
                _LOGGER.info("satellite %s: nobody spoke after the wake word", self.name)
                await self._send(WyomingTranscript(text="").event())
                self._end_pipeline()

    async def _on_audio_stop(self) -> None:
        if self._stage == _Stage.LISTEN and self._session is not None:
            session = self._session
            self._stage = _Stage.ANSWER
            task = asyncio.create_task(session.end_of_input(), name=f"end-{self.name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif self._stage == _Stage.WAKE:
            self._stage = _Stage.IDLE
            self._pipeline = None

    def _end_pipeline(self) -> None:
        """The pipeline is over; a satellite that streams for remote wake gets it again."""
        pipeline = self._pipeline
        if pipeline is not None and pipeline.start_stage is PipelineStage.WAKE:
            self._listen_for_wake_word(pipeline)
        else:
            self._stage = _Stage.IDLE
            self._pipeline = None

    # --- from the session: the answer ---

    def _speaks(self, turn_id: int) -> bool:
        pipeline = self._pipeline
        if turn_id == 0:
            return True  # a timer's announcement: played whatever the satellite is doing
        return pipeline is not None and pipeline.end_stage is PipelineStage.TTS

    async def _on_session_event(self, event: Event) -> None:
        if isinstance(event, SpeechStarted):
            if self._stage == _Stage.LISTEN:
                self._heard_speech = True
                await self._send(VoiceStarted().event())
        elif isinstance(event, SpeechStopped):
            if self._stage == _Stage.LISTEN and event.duration_s > 0:
                self._stage = _Stage.ANSWER
                await self._send(VoiceStopped().event())
        elif isinstance(event, Transcript):
            _LOGGER.info("satellite %s heard: %s", self.name, event.text)
            await self._send(WyomingTranscript(text=event.text).event())
            if not event.text:
                self._end_pipeline()
        elif isinstance(event, ReplyText):
            if self._speaks(event.turn_id):
                await self._send(Synthesize(text=event.text).event())
        elif isinstance(event, AudioOut):
            if not self._speaks(event.turn_id):
                return
            rate = event.sample_rate_hz
            if not self._audio_started:
                self._audio_started = True
                await self._send(AudioStart(rate=rate, width=2, channels=1).event())
            size = 2 * _TTS_CHUNK_SAMPLES
            for offset in range(0, len(event.pcm), size):
                piece = event.pcm[offset : offset + size]
                await self._send(AudioChunk(rate=rate, width=2, channels=1, audio=piece).event())
        elif isinstance(event, ReplyDone):
            if self._audio_started:
                self._audio_started = False
                await self._send(AudioStop().event())
            if event.turn_id != 0:
                self.answered += 1
                self._end_pipeline()
        elif isinstance(event, ErrorEvent):
            await self._send(Error(text=event.message, code=event.code).event())
            if self._stage != _Stage.WAKE:
                self._end_pipeline()


class SatelliteHub:
    """Every satellite voicebot drives: given ones, and those found with zeroconf."""

    def __init__(self, app: WyomingApp) -> None:
        """Create the hub (call :meth:`add` or :meth:`discover`)."""
        self.app = app
        self.links: dict[str, SatelliteLink] = {}
        """Links by ``host:port``."""
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._discovery: object | None = None

    def add(self, uri: str) -> SatelliteLink:
        """Drive the satellite at ``tcp://HOST:PORT`` (once, however often it is added).

        Raises:
            ConfigError: not a tcp URI with a port.
        """
        host, port = parse_tcp_uri(uri)
        key = f"{host}:{port}"
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = SatelliteLink(self.app, host, port)
            self._tasks[key] = asyncio.create_task(link.run(), name=f"satellite-{key}")
        return link

    async def discover(self) -> None:
        """Browse ``_wyoming._tcp`` and drive every satellite found (until :meth:`close`)."""
        from .wyoming_discovery import SatelliteBrowser

        browser = SatelliteBrowser(self.add)
        await browser.start()
        self._discovery = browser

    async def close(self) -> None:
        """Stop every link."""
        from .wyoming_discovery import SatelliteBrowser

        if isinstance(self._discovery, SatelliteBrowser):
            await self._discovery.close()
        for link in self.links.values():
            link.stop()
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
