"""voicebot as a Wyoming server: Home Assistant's speech, wake word and conversation services.

The wire format, the events and the server loop are the ``wyoming`` package's own
(:class:`~wyoming.server.AsyncEventHandler`); this module maps them onto voicebot's engines:

- ``asr``: ``transcribe`` + ``audio-start`` / ``audio-chunk`` / ``audio-stop`` -> a
  ``transcript`` (preceded by ``transcript-start`` / ``-chunk`` / ``-stop``);
- ``tts``: ``synthesize`` (or ``synthesize-start`` / ``-chunk`` / ``-stop``) -> audio;
- ``wake``: ``detect`` + audio -> ``detection`` or ``not-detected``;
- ``handle``: a ``transcript`` -> ``handled`` (after ``handled-start`` / ``-chunk`` /
  ``-stop``), answered by a voicebot conversation (dialogue, memory, skills) per
  ``conversation_id`` of the transcript's context.

Models are the ones :func:`~voicebot.engines.load_engines` loaded, shared by every connection
through their worker threads. Wyoming has no authentication: see docs/home-assistant.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event as WyomingEvent
from wyoming.event import async_read_event
from wyoming.handle import Handled, HandledChunk, HandledStart, HandledStop, NotHandled
from wyoming.info import (
    AsrModel,
    AsrProgram,
    Attribution,
    Describe,
    HandleModel,
    HandleProgram,
    Info,
    TtsProgram,
    TtsVoice,
    WakeModel,
    WakeProgram,
)
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler, AsyncServer
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
)
from wyoming.wake import Detect, Detection, NotDetected

from ..audio import StreamResampler, check_sample_rate
from ..config import Settings
from ..engines import Engines, Transcription, VoiceActivityDetector
from ..engines.wake import BUILTIN_WAKE_WORDS, MicroWakeWordDetector
from ..errors import AudioFormatError, ConfigError, VoicebotError
from ..events import ErrorEvent, Event, ReplyDone, ReplyText
from ..session import Session
from ..skills import SkillRouter, TimerService
from ..store import Store
from ..workers import ModelWorker, Priority

__all__ = [
    "ClientError",
    "WyomingApp",
    "WyomingOptions",
    "WyomingServer",
    "parse_tcp_uri",
    "to_16k_mono",
]

_LOGGER = logging.getLogger(__name__)

_RATE_HZ = 16000
_ATTRIBUTION = Attribution(name="voicebot", url="https://github.com/voicebot")
_MAX_CONVERSATIONS = 64
"""Conversations the ``handle`` program keeps open; the least recently used is closed."""
_TTS_CHUNK_SAMPLES = 1024
"""Samples per ``audio-chunk`` of synthesized speech (wyoming-piper's default)."""
_EARLY_SILENCE_BYTES = 2 * _RATE_HZ * 300 // 1000
"""Silence after speech that starts a transcription before ``audio-stop`` (300 ms)."""
_MIN_VOICED_FRAMES = 3
"""Voiced frames in a row that count as speech (a click is not)."""
_DISCARD_S = 5.0
"""After refusing an event too big, what the client still sends is read away this long."""


@dataclass(frozen=True)
class WyomingOptions:
    """How ``voicebot wyoming`` serves and which satellites it drives."""

    uri: str = "tcp://127.0.0.1:10300"
    """Where to listen (``tcp://HOST:PORT``)."""
    zeroconf: bool = False
    """Announce the server as ``_wyoming._tcp`` (Home Assistant discovers it)."""
    zeroconf_name: str = ""
    """The announced name (default: ``voicebot-<hostname>``)."""
    satellites: tuple[str, ...] = ()
    """``tcp://HOST:PORT`` of wyoming-satellite devices to drive."""
    discover: bool = False
    """Find satellites announced as ``_wyoming._tcp`` and drive them too."""
    max_connections: int = 16
    """Connections served at once; more are told ``server full`` and closed."""
    max_connections_per_address: int = 8
    """Connections served at once from one address."""
    max_message_bytes: int = 1 << 20
    """Largest event data or payload; a bigger one gets ``too_big`` and the connection closes."""
    max_audio_s: float = 120.0
    """Longest audio one ``transcribe`` may send."""
    wake_words: tuple[str, ...] = BUILTIN_WAKE_WORDS
    """Wake words offered by the ``wake`` program (and listened for on satellites)."""


def parse_tcp_uri(uri: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` as ``(host, port)``.

    Raises:
        ConfigError: not a tcp URI with a port.
    """
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        port = None
        parts = urlsplit("")
    if parts.scheme != "tcp" or not parts.hostname or port is None:
        raise ConfigError(f"expected tcp://HOST:PORT, not {uri!r}")
    return parts.hostname, port


def to_16k_mono(pcm: bytes, width: int, channels: int, resampler: StreamResampler | None) -> bytes:
    """Client audio as 16 kHz PCM16 mono (``resampler`` from its rate; None when 16 kHz).

    Raises:
        AudioFormatError: not 16-bit samples, or a partial frame.
    """
    if width != 2:
        raise AudioFormatError(f"audio must be 16-bit (width 2), got width {width}")
    frame = 2 * channels
    if len(pcm) % frame:
        raise AudioFormatError(f"audio chunk of {len(pcm)} bytes is not whole {frame}-byte frames")
    if channels > 1:
        samples = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels).mean(axis=1)
        pcm = samples.astype("<i2").tobytes()
    return resampler.process(pcm) if resampler is not None else pcm


class ClientError(VoicebotError):
    """A client's mistake, answered with an ``error`` event of its own code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _AudioIn:
    """The format announced by ``audio-start``, converting chunks to 16 kHz mono."""

    def __init__(self, start: AudioStart) -> None:
        try:
            self.rate = check_sample_rate(start.rate)
        except AudioFormatError as error:
            raise ClientError("bad_rate", str(error)) from None
        if start.width != 2:
            raise AudioFormatError(f"audio must be 16-bit (width 2), got width {start.width}")
        if not 1 <= start.channels <= 8:
            raise AudioFormatError(f"unsupported channel count {start.channels}")
        self.channels = start.channels
        self._resampler = StreamResampler(self.rate, _RATE_HZ) if self.rate != _RATE_HZ else None

    def convert(self, chunk: AudioChunk) -> bytes:
        if chunk.rate != self.rate or chunk.channels != self.channels:
            raise AudioFormatError(
                f"audio-chunk is {chunk.rate} Hz x {chunk.channels}, but audio-start said "
                f"{self.rate} Hz x {self.channels}"
            )
        return to_16k_mono(chunk.audio, chunk.width, chunk.channels, self._resampler)


@dataclass
class _EarlyTranscript:
    voiced_end: int
    """Bytes of audio up to the end of the last speech it covers."""
    task: asyncio.Task[Transcription]


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Consume a dropped task's outcome (so a failure is not reported as never retrieved)."""
    if not task.cancelled():
        task.exception()


class _SpeechTracker:
    """Where the last speech in a stream of 16 kHz audio ended (webrtcvad frames)."""

    def __init__(self, vad_factory: Callable[[], VoiceActivityDetector]) -> None:
        self._factory = vad_factory
        self._vad = vad_factory()
        self._frame_bytes = 2 * _RATE_HZ * self._vad.frame_ms // 1000
        self._pending = b""
        self._offset = 0
        self._voiced_frames = 0
        self.voiced_end = 0
        """Bytes of audio up to the end of the last speech (0: none yet)."""

    def reset(self) -> None:
        self._vad = self._factory()
        self._pending = b""
        self._offset = 0
        self._voiced_frames = 0
        self.voiced_end = 0

    def feed(self, pcm: bytes) -> None:
        data = self._pending + pcm
        usable = len(data) - len(data) % self._frame_bytes
        for start in range(0, usable, self._frame_bytes):
            self._offset += self._frame_bytes
            if self._vad.is_speech(data[start : start + self._frame_bytes]):
                self._voiced_frames += 1
                if self._voiced_frames >= _MIN_VOICED_FRAMES:
                    self.voiced_end = self._offset
            else:
                self._voiced_frames = 0
        self._pending = data[usable:]


class _SilentVoice:
    """A voice that says nothing: ``handle`` answers in text, so no audio is made."""

    def __init__(self, sample_rate_hz: int) -> None:
        self.sample_rate_hz = sample_rate_hz

    def synthesize(
        self,
        text: str,
        cancel: threading.Event | None = None,
        *,
        speaking_rate: float | None = None,
    ) -> Iterator[bytes]:
        return iter(())


class Relay:
    """A session sink that forwards to whoever is listening now (``target``), else drops."""

    def __init__(self) -> None:
        self.target: Callable[[Event], Awaitable[None]] | None = None
        """Where events go now."""

    async def __call__(self, event: Event) -> None:
        target = self.target
        if target is not None:
            await target(event)


@dataclass
class _Conversation:
    session: Session
    relay: Relay
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class WyomingApp:
    """What every Wyoming connection and satellite shares: models, store, timers, skills."""

    def __init__(
        self, engines: Engines, settings: Settings, store: Store, options: WyomingOptions
    ) -> None:
        """Create the shared state (call :meth:`start`).

        Args:
            engines: The loaded, warmed models.
            settings: Settings.
            store: The conversation store (conversations and timers).
            options: The server's options.

        Raises:
            ModelError: a wake word model cannot be loaded.
        """
        self.engines = engines
        self.settings = settings
        self.store = store
        self.options = options
        self.timers = TimerService(store)
        """Timers set by voice: they ring on the satellite that set them."""
        self.skills = (
            SkillRouter(settings.skills, timers=self.timers) if settings.skills.enabled else None
        )
        """Answers the time, timers, arithmetic... before the chat model."""
        self.text_engines = dataclasses.replace(
            engines, tts=_SilentVoice(engines.tts.sample_rate_hz), voice_loader=None
        )
        """The models with a silent voice, for conversations that answer in text."""
        self.wake_worker = ModelWorker("wake")
        """One thread for every wake word detector (each is small and fast)."""
        self.wake_phrases = {
            name: MicroWakeWordDetector(name).phrase for name in options.wake_words
        }
        """Each offered wake word and how it is said."""
        self._conversations: collections.OrderedDict[str, _Conversation] = collections.OrderedDict()
        self._conversations_lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the timers."""
        await self.timers.start()

    async def close(self) -> None:
        """Close the conversations and the timers."""
        for conversation in list(self._conversations.values()):
            await conversation.session.close()
        self._conversations.clear()
        self.wake_worker.close()
        await self.timers.close()

    def info(self) -> Info:
        """The programs this server offers."""
        stt_name = self.settings.stt.model
        language = self.settings.stt.language or "en"
        voice_name = self.settings.tts.voice
        return Info(
            asr=[
                AsrProgram(
                    name="voicebot-asr",
                    description="voicebot speech to text (faster-whisper)",
                    attribution=_ATTRIBUTION,
                    installed=True,
                    version=_version(),
                    models=[
                        AsrModel(
                            name=stt_name,
                            description=f"faster-whisper {stt_name}",
                            attribution=_ATTRIBUTION,
                            installed=True,
                            version=None,
                            languages=[language],
                        )
                    ],
                    supports_transcript_streaming=True,
                )
            ],
            tts=[
                TtsProgram(
                    name="voicebot-tts",
                    description="voicebot text to speech (Piper)",
                    attribution=_ATTRIBUTION,
                    installed=True,
                    version=_version(),
                    voices=[
                        TtsVoice(
                            name=voice_name,
                            description=f"Piper {voice_name}",
                            attribution=_ATTRIBUTION,
                            installed=True,
                            version=None,
                            languages=[_voice_language(voice_name)],
                        )
                    ],
                    supports_synthesize_streaming=True,
                )
            ],
            wake=[
                WakeProgram(
                    name="voicebot-wake",
                    description="voicebot wake words (microWakeWord)",
                    attribution=_ATTRIBUTION,
                    installed=True,
                    version=_version(),
                    models=[
                        WakeModel(
                            name=name,
                            description=phrase,
                            phrase=phrase,
                            attribution=_ATTRIBUTION,
                            installed=True,
                            version=None,
                            languages=["en"],
                        )
                        for name, phrase in self.wake_phrases.items()
                    ],
                )
            ],
            handle=[
                HandleProgram(
                    name="voicebot",
                    description="voicebot conversation agent (dialogue, memory, skills)",
                    attribution=_ATTRIBUTION,
                    installed=True,
                    version=_version(),
                    models=[
                        HandleModel(
                            name=self.settings.llm.model,
                            description=f"voicebot with {self.settings.llm.model}",
                            attribution=_ATTRIBUTION,
                            installed=True,
                            version=None,
                            languages=["en"],
                        )
                    ],
                    supports_handled_streaming=True,
                )
            ],
        )

    async def answer(
        self, text: str, conversation_id: str, emit: Callable[[Event], Awaitable[None]]
    ) -> None:
        """Answer ``text`` in the conversation ``conversation_id`` (one answer at a time each).

        The reply's events (:class:`ReplyText` pieces, then :class:`ReplyDone`, or an
        :class:`ErrorEvent`) go to ``emit``.
        """
        conversation = await self._conversation(conversation_id)
        async with conversation.lock:
            conversation.relay.target = emit
            try:
                await conversation.session.send_text(text)
                await conversation.session.wait_idle()
            finally:
                conversation.relay.target = None

    async def _conversation(self, key: str) -> _Conversation:
        async with self._conversations_lock:
            conversation = self._conversations.get(key)
            if conversation is not None:
                self._conversations.move_to_end(key)
                return conversation
            relay = Relay()
            session = Session(
                self.text_engines,
                self.settings,
                sink=relay,
                store=self.store,
                realtime_playback=False,
                skills=self.skills,
            )
            await session.start()
            conversation = self._conversations[key] = _Conversation(session, relay)
            while len(self._conversations) > _MAX_CONVERSATIONS:
                _, old = self._conversations.popitem(last=False)
                await old.session.close()
            return conversation


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("voicebot")
    except PackageNotFoundError:
        return "0"


def _voice_language(voice: str) -> str:
    """``en_US`` from a Piper voice name like ``piper-en_US-joe-medium`` (else ``en``)."""
    for part in voice.replace("/", "-").split("-"):
        if len(part) == 5 and part[2] == "_":
            return part
    return "en"


class MessageTooBigError(VoicebotError):
    """An event announced more data or payload than the server accepts."""

    code = "too_big"


class _BoundedReader:
    """The connection's reader, refusing an announced length over the limit.

    ``wyoming.event.async_read_event`` reads whatever length an event announces; reading it
    through this keeps one client from making the server buffer gigabytes.
    """

    def __init__(self, reader: asyncio.StreamReader, max_bytes: int) -> None:
        self._reader = reader
        self._max_bytes = max_bytes

    async def readline(self) -> bytes:
        return await self._reader.readline()

    async def readexactly(self, n: int) -> bytes:
        if n > self._max_bytes:
            raise MessageTooBigError(f"an event of {n} bytes is over the {self._max_bytes} limit")
        return await self._reader.readexactly(n)


class WyomingServer:
    """Serves the four programs over TCP with the ``wyoming`` package's server."""

    def __init__(self, app: WyomingApp) -> None:
        """Create the server (call :meth:`start`)."""
        self.app = app
        self.options = app.options
        self.host, self.port = parse_tcp_uri(app.options.uri)
        self._server: AsyncServer | None = None
        self._per_address: collections.Counter[str] = collections.Counter()
        self._connections = 0

    async def start(self) -> None:
        """Start listening."""
        self._server = AsyncServer.from_uri(f"tcp://{self.host}:{self.port}")
        await self._server.start(self._make_handler)

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            await self._server.stop()
            self._server = None

    def _make_handler(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> AsyncEventHandler:
        return _Handler(self, reader, writer)

    def admit(self, address: str) -> str | None:
        """Count a new connection from ``address``; a reason when it must be refused."""
        if self._connections >= self.options.max_connections:
            return "server full, try again later"
        if self._per_address[address] >= self.options.max_connections_per_address:
            return "too many connections from this address"
        self._connections += 1
        self._per_address[address] += 1
        return None

    def release(self, address: str) -> None:
        """A connection admitted from ``address`` closed."""
        self._connections -= 1
        self._per_address[address] -= 1
        if self._per_address[address] <= 0:
            del self._per_address[address]


class _Handler(AsyncEventHandler):
    """One client connection: any of the four programs, one request at a time."""

    def __init__(
        self, server: WyomingServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super().__init__(reader, writer)
        self.server = server
        self.app = server.app
        peer = writer.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self._bounded = _BoundedReader(reader, server.options.max_message_bytes)
        self._request: Transcribe | Detect | None = None
        self._audio: _AudioIn | None = None
        self._pcm = bytearray()
        self._early: _EarlyTranscript | None = None
        self._speech = _SpeechTracker(self.app.engines.vad_factory)
        self._detector: MicroWakeWordDetector | None = None
        self._detect_names: list[str] = []
        self._detected = False
        self._tts_stream: list[str] | None = None  # text of a synthesize-start stream so far
        self._tts_voice = ""

    async def run(self) -> None:
        """Admit the client, then read its events until it leaves or misbehaves."""
        refused = self.server.admit(self.address)
        if refused is not None:
            _LOGGER.warning("refused a Wyoming connection from %s: %s", self.address, refused)
            with contextlib.suppress(ConnectionError, OSError):
                await self.write_event(Error(text=refused, code="server_full").event())
            self.writer.close()
            return
        try:
            while True:
                try:
                    event = await async_read_event(self._bounded)  # type: ignore[arg-type]
                except MessageTooBigError as error:
                    _LOGGER.warning("closing %s: %s", self.address, error)
                    await self._error(error.code, str(error))
                    await self._discard_unread()
                    break
                if event is None or not await self.handle_event(event):
                    break
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass  # the client went away
        except Exception:  # a loop boundary: log, close this client, keep serving others
            _LOGGER.exception("Wyoming connection from %s failed", self.address)
        finally:
            self._drop_early()
            self.server.release(self.address)
            self.writer.close()

    async def handle_event(self, event: WyomingEvent) -> bool:
        """Answer one event; False closes the connection."""
        kind = event.type
        try:
            if Describe.is_type(kind):
                await self.write_event(self.app.info().event())
            elif Ping.is_type(kind):
                await self.write_event(Pong(text=Ping.from_event(event).text).event())
            elif Transcribe.is_type(kind):
                self._request = Transcribe.from_event(event)
            elif Detect.is_type(kind):
                self._begin_detect(Detect.from_event(event))
            elif AudioStart.is_type(kind):
                self._audio = _AudioIn(AudioStart.from_event(event))
                self._pcm.clear()
                self._drop_early()
                self._speech.reset()
                if isinstance(self._request, Detect):
                    self._reset_detector()
            elif AudioChunk.is_type(kind):
                await self._on_chunk(AudioChunk.from_event(event))
            elif AudioStop.is_type(kind):
                await self._on_audio_stop()
            elif Synthesize.is_type(kind):
                if self._tts_stream is None:  # inside a stream it only repeats the chunks
                    synthesize = Synthesize.from_event(event)
                    await self._speak(synthesize.text, streaming=False)
            elif SynthesizeStart.is_type(kind):
                self._tts_stream = []
            elif SynthesizeChunk.is_type(kind):
                await self._on_synthesize_chunk(SynthesizeChunk.from_event(event).text)
            elif SynthesizeStop.is_type(kind):
                await self._on_synthesize_stop()
            elif Transcript.is_type(kind):
                await self._handle(Transcript.from_event(event))
            else:
                await self._error("unknown_event", f"unknown or unexpected event {kind!r}")
        except VoicebotError as error:
            await self._error(error.code, str(error))
        except (KeyError, TypeError, ValueError) as error:
            await self._error("bad_event", f"malformed {kind!r} event: {error}")
        return True

    async def _discard_unread(self) -> None:
        """Read away what the client still sends (for a while), so that closing does not reset
        the connection and lose the error event on its way to the client."""
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            async with asyncio.timeout(_DISCARD_S):
                while await self.reader.read(1 << 16):
                    pass

    async def _error(self, code: str, text: str) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.write_event(Error(text=text, code=code).event())

    # --- asr and wake: audio in ---

    def _begin_detect(self, detect: Detect) -> None:
        names = [n for n in (detect.names or []) if n in self.app.wake_phrases]
        if detect.names and not names:
            known = ", ".join(self.app.wake_phrases)
            raise ConfigError(f"unknown wake word(s) {detect.names} (offered: {known})")
        self._request = detect
        self._detect_names = names or list(self.app.wake_phrases)[:1]
        self._detector = None

    def _reset_detector(self) -> None:
        self._detector = MicroWakeWordDetector(self._detect_names[0])
        self._detected = False

    async def _on_chunk(self, chunk: AudioChunk) -> None:
        if self._audio is None:
            raise ClientError("not_started", "audio-chunk before audio-start")
        pcm = self._audio.convert(chunk)
        if isinstance(self._request, Detect):
            detector = self._detector
            if detector is None or self._detected:
                return
            if await self.app.wake_worker.run(detector.process, pcm):
                self._detected = True
                await self.write_event(Detection(name=detector.name, timestamp=0).event())
            return
        if len(self._pcm) + len(pcm) > 2 * _RATE_HZ * self.server.options.max_audio_s:
            raise AudioFormatError(
                f"audio longer than {self.server.options.max_audio_s:.0f} s: the rest is dropped"
            )
        self._pcm += pcm
        self._speech.feed(pcm)
        self._maybe_transcribe_early()

    def _maybe_transcribe_early(self) -> None:
        """The speaker has paused: transcribe what was said, before ``audio-stop`` comes.

        A client streaming in real time (Home Assistant) sends ``audio-stop`` only after its
        own end-of-speech silence; by then this transcript is usually ready. Speech after it
        makes it stale: the final one is then made from all the audio.
        """
        speech = self._speech
        if speech.voiced_end == 0 or len(self._pcm) - speech.voiced_end < _EARLY_SILENCE_BYTES:
            return
        early = self._early
        if early is not None and early.voiced_end == speech.voiced_end:
            return  # already made for this pause
        self._drop_early()
        engines = self.app.engines
        worker = engines.worker(engines.stt, "stt")
        task = asyncio.create_task(
            worker.run(engines.stt.transcribe, bytes(self._pcm), priority=Priority.NORMAL),
            name="early-transcript",
        )
        self._early = _EarlyTranscript(speech.voiced_end, task)

    def _drop_early(self) -> None:
        early, self._early = self._early, None
        if early is not None:
            early.task.cancel()  # still queued: it never runs
            early.task.add_done_callback(_retrieve)

    async def _on_audio_stop(self) -> None:
        if self._audio is None:
            raise ClientError("not_started", "audio-stop before audio-start")
        self._audio = None
        request, self._request = self._request, None
        if isinstance(request, Detect):
            if not self._detected:
                await self.write_event(NotDetected().event())
            return
        pcm, self._pcm = bytes(self._pcm), bytearray()
        early, self._early = self._early, None
        result: Transcription | None = None
        if early is not None and early.voiced_end == self._speech.voiced_end:
            with contextlib.suppress(Exception):  # failed: transcribe again below
                result = await early.task
        elif early is not None:
            early.task.cancel()
            early.task.add_done_callback(_retrieve)
        if result is None:
            engines = self.app.engines
            worker = engines.worker(engines.stt, "stt")
            result = await worker.run(engines.stt.transcribe, pcm, priority=Priority.URGENT)
        language = result.language or self.app.settings.stt.language or None
        await self.write_event(TranscriptStart(language=language).event())
        if result.text:
            await self.write_event(TranscriptChunk(text=result.text).event())
        await self.write_event(TranscriptStop().event())
        await self.write_event(Transcript(text=result.text, language=language).event())

    # --- tts: text in, audio out ---

    async def _on_synthesize_chunk(self, text: str) -> None:
        if self._tts_stream is None:
            raise ClientError("not_started", "synthesize-chunk before synthesize-start")
        self._tts_stream.append(text)
        joined = "".join(self._tts_stream)
        # Whole sentences are spoken as they arrive; the rest waits for more text.
        cut = max(joined.rfind(mark) for mark in (". ", "! ", "? ", ".\n", "!\n", "?\n"))
        if cut >= 0:
            self._tts_stream = [joined[cut + 2 :]]
            await self._speak(joined[: cut + 1], streaming=True)

    async def _on_synthesize_stop(self) -> None:
        if self._tts_stream is None:
            raise ClientError("not_started", "synthesize-stop before synthesize-start")
        rest, self._tts_stream = "".join(self._tts_stream), None
        if rest.strip():
            await self._speak(rest, streaming=True)
        await self.write_event(SynthesizeStopped().event())

    async def _speak(self, text: str, *, streaming: bool) -> None:
        """Speak ``text`` as audio-start, chunks, audio-stop (each sentence as it is made)."""
        engines = self.app.engines
        voice = engines.tts
        rate = voice.sample_rate_hz
        worker = engines.worker(voice, "tts")
        started = False
        size = 2 * _TTS_CHUNK_SAMPLES
        timestamp = 0
        cancel = threading.Event()
        make = functools.partial(voice.synthesize, text, cancel)
        try:
            async for pcm in worker.stream(make, priority=Priority.URGENT):
                if not started:
                    await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
                    started = True
                for offset in range(0, len(pcm), size):
                    piece = pcm[offset : offset + size]
                    chunk = AudioChunk(rate=rate, width=2, channels=1, audio=piece)
                    await self.write_event(chunk.event())
                    timestamp += chunk.milliseconds
        finally:
            cancel.set()
        if not started and not streaming:
            await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
            started = True
        if started:
            await self.write_event(AudioStop(timestamp=timestamp).event())

    # --- handle: a transcript in, the conversation's answer out ---

    async def _handle(self, transcript: Transcript) -> None:
        context = transcript.context or {}
        key = str(context.get("conversation_id") or f"connection-{id(self):x}")
        pieces: list[str] = []
        failure: list[ErrorEvent] = []
        done: list[str] = []

        async def emit(event: Event) -> None:
            if isinstance(event, ReplyText):
                if not pieces:
                    await self.write_event(HandledStart(context=context).event())
                pieces.append(event.text)
                text = event.text if len(pieces) == 1 else " " + event.text
                await self.write_event(HandledChunk(text=text).event())
            elif isinstance(event, ReplyDone):
                done.append(event.text)
            elif isinstance(event, ErrorEvent):
                failure.append(event)

        await self.app.answer(transcript.text, key, emit)
        text = done[-1] if done else " ".join(pieces)
        if pieces:
            await self.write_event(HandledStop().event())
        if failure and not text:
            await self.write_event(NotHandled(text=failure[0].message, context=context).event())
        else:
            await self.write_event(Handled(text=text, context=context).event())


def warn_if_exposed(host: str) -> str | None:
    """The warning for a server reachable from other machines (Wyoming has no password)."""
    from .websocket import is_loopback

    if is_loopback(host):
        return None
    return (
        f"the Wyoming server on {host} is reachable from the network without any "
        "authentication (the Wyoming protocol has none): anyone who can reach this port can "
        "use the assistant, read what it remembers and set timers. Bind to 127.0.0.1 unless "
        "Home Assistant runs on another machine of a network you trust."
    )


def info_programs(info: Info) -> dict[str, list[str]]:
    """The program names in ``info``, by kind (for logs and tests)."""
    return {
        "asr": [p.name for p in info.asr],
        "tts": [p.name for p in info.tts],
        "wake": [p.name for p in info.wake],
        "handle": [p.name for p in info.handle],
    }
