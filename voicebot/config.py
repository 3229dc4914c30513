"""Settings and bot profiles.

Settings are frozen dataclasses, one per domain, whose field names carry their units. They are
built once by :func:`load_settings` with this precedence: command-line flags > ``VOICEBOT_*``
environment variables > the TOML config file > the defaults written here.

The config file (``~/.config/voicebot/config.toml`` or ``--config``) mirrors the dataclasses::

    profile = "default"          # the profile used when none is named

    [stt]
    model = "whisper-base"       # a catalog id, a local path or (with network) a hub name

    [profiles.pirate]
    display_name = "Captain Flint"
    system_prompt = "You are Captain Flint, a cheerful pirate. Answer in one short sentence."
    voice = "piper-en_US-joe-medium"
    speaking_rate = 1.1
    greeting = "Ahoy! What be your question?"

An environment variable is ``VOICEBOT_<SECTION>_<FIELD>`` (``VOICEBOT_STT_MODEL``,
``VOICEBOT_SERVER_PORT``) or, for top-level fields, ``VOICEBOT_<FIELD>`` (``VOICEBOT_PROFILE``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from .errors import ConfigError

__all__ = [
    "ADAPTER_MARK",
    "DEFAULT_PROFILE",
    "DaemonSettings",
    "LlmSettings",
    "Profile",
    "SegmenterSettings",
    "ServerSettings",
    "SessionSettings",
    "Settings",
    "SkillSettings",
    "StoreSettings",
    "SttSettings",
    "TtsSettings",
    "VadSettings",
    "default_config_path",
    "load_settings",
]


@dataclass(frozen=True)
class VadSettings:
    """Voice activity detection (webrtcvad)."""

    aggressiveness: int = 2
    """0 (lets most sound through) to 3 (strictest about what is speech)."""
    frame_ms: int = 30
    """Frame length: 10, 20 or 30 ms."""


@dataclass(frozen=True)
class SegmenterSettings:
    """How speech is cut into utterances."""

    pre_roll_ms: int = 400
    """Audio kept from before speech was detected, so the first syllable is not clipped."""
    speech_start_ms: int = 90
    """Voiced audio needed within the start window before speech counts as started."""
    min_speech_ms: int = 250
    """Utterances with less voiced audio than this (clicks, coughs) are dropped."""
    end_of_turn_silence_ms: int = 600
    """Silence that ends the user's turn when their words give no sign either way (or have
    not been transcribed yet), and the whole rule when speculative transcription is off."""
    early_end_of_turn_ms: int = 300
    """Silence that ends a turn whose words sound finished: the chat model gives an
    end-of-turn probability of at least ``end_of_turn_likely_probability`` to the transcript
    made during the pause (a chat model that cannot judge: the transcript ends in . ? or !);
    0 disables this."""
    max_end_of_turn_silence_ms: int = 1600
    """Silence that ends a turn whose words sound unfinished ("I want to"): an end-of-turn
    probability under ``end_of_turn_unlikely_probability``. The longest pause a user can make
    inside a sentence without being cut off; at most ``end_of_turn_silence_ms`` disables it."""
    end_of_turn_likely_probability: float = 0.05
    """End-of-turn probability (0-1) from which the words count as a finished turn. Set with
    the default engine (llama.cpp, SmolLM2-135M, which scores how likely the words end a
    sentence) on 32 typed development phrases, not on the benchmark's recordings: 14 of 16
    finished sentences reach it, no fragment does (the highest, "And then.", 0.003)."""
    end_of_turn_unlikely_probability: float = 0.005
    """End-of-turn probability (0-1) under which the words count as an unfinished turn. Same
    phrases: every fragment falls under it ("Tell me about the.", "I was wondering if."), no
    finished sentence does (the lowest, "Thank you.", 0.007)."""
    speculative_after_ms: int = 90
    """Silence after which transcription starts, before the end of turn is certain. The
    voice detector itself hears speech for 60-120 ms after it ends (webrtcvad's hangover), so
    90 ms here is about 180 ms of real silence: the early transcript and its judgement are
    ready before the 300 ms that end a finished sentence (200 ms left them ~50 ms late on 2
    AVX2 cores: voice-to-voice p50 716 -> 600 ms, docs/benchmarks.md)."""
    max_utterance_s: float = 20.0
    """An utterance this long is ended even if the user keeps talking."""


@dataclass(frozen=True)
class SttSettings:
    """Speech to text (faster-whisper)."""

    model: str = "whisper-tiny.en"
    """A catalog id, a CTranslate2 model directory, or a hub name (needs network)."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``."""
    compute_type: str = "auto"
    """``auto`` (float16 on CUDA, int8 on CPU) or any CTranslate2 compute type."""
    language: str = "en"
    """Spoken language code; empty to detect it (multilingual models only)."""
    beam_size: int = 1
    """Beam width; 1 is greedy and fastest."""
    cpu_threads: int = 0
    """Threads per model instance on the CPU; 0: the physical cores shared among the
    instances (1 each on 2 cores)."""
    instances: int = 0
    """Model instances transcribing in parallel, each in its own worker thread; 0: 2 on a
    CPU with at least 2 cores, 1 on CUDA or 1 core. On 2 AVX2 cores, 1 thread is faster than 2
    for one utterance (80 vs 94 ms) and two 1-thread instances transcribe 4 utterances in
    234-282 ms against 360-386 ms one after the other on 2 threads (docs/benchmarks.md)."""
    no_speech_threshold: float = 0.6
    """Segments more likely silence than this, with a low log-probability, are dropped."""
    log_prob_threshold: float = -1.0
    """Average log-probability under which a segment counts as a guess."""
    fit_window: bool = True
    """Encode the utterance plus 10 s of silence rather than Whisper's fixed 30 s: 4x faster
    on short utterances (116 vs 463 ms p50), which lets the turn end ~300 ms sooner, with the
    same accuracy on 160 test questions (word error rate 0.066 vs 0.078). A transcript that
    looks like a decoding loop is redone with the full window (docs/benchmarks.md)."""


@dataclass(frozen=True)
class LlmSettings:
    """The chat model (transformers)."""

    model: str = "smollm2-135m-instruct"
    """A catalog id, a Hugging Face model directory, or a hub name (needs network)."""
    backend: str = "auto"
    """The chat engine. ``auto`` (the default): transformers on a CUDA GPU; on the CPU the
    fastest installed engine that can run the model, measured once on first start and kept
    beside the model (``engine-choice.json``). Or ``llama-cpp`` (GGUF models, prebuilt
    ik_llama.cpp; the fastest on the CPU), ``ctranslate2`` (Hugging Face Llama/Qwen/Mistral
    style models, converted once to int8), ``transformers`` (any Hugging Face model, CPU or
    CUDA). ``device``, ``dtype`` and ``weights`` apply to transformers only."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``."""
    dtype: str = "auto"
    """``auto`` picks the fastest the device supports: bfloat16 on CUDA and on CPUs with native
    bf16 (AVX512-BF16/AMX), float32 otherwise. Or ``bfloat16``, ``float16``, ``float32``."""
    weights: str = "auto"
    """Linear weights on the CPU: ``auto`` (int4 for models converted from a Q4 GGUF, which is
    their own format; int8 for others), ``int4``, ``int8`` or ``dense``. Ignored on CUDA."""
    max_new_tokens: int = 60
    """Longest reply in tokens."""
    context_tokens: int = 1536
    """Token budget for the prompt: the oldest turns are dropped beyond it."""
    history_turns: int | None = None
    """Earlier turns sent with the prompt besides the user's facts (-1: all that fit the
    budget). Unset: what was measured best for the model, which for the embedded 135M model
    is none (its own earlier replies pull it off topic, docs/quality.md), and for any other
    model all that fit."""
    temperature: float = 0.0
    """0 decodes greedily (reproducible); above 0 samples."""
    repetition_penalty: float = 1.0
    """Penalty on repeating tokens (1.0: none). Above 1.0 the small default model forgets
    what the user told it; repeated sentences are cut by ``max_sentences`` instead."""
    max_sentences: int = 1
    """Stop after this many sentences: spoken replies should be short. 0 for no limit."""
    threads: int = 0
    """Torch threads on the CPU; 0 uses the number of physical cores."""
    base_url: str = ""
    """``backend = "openai"``: the OpenAI-compatible server, e.g. ``http://gpu-box:8080/v1``
    (llama.cpp's server), ``http://gpu-box:8000/v1`` (vLLM), ``http://gpu-box:11434/v1``
    (Ollama). ``model`` is then the name that server knows the model by."""
    api_key: str = ""
    """``backend = "openai"``: the server's API key; set it in the environment
    (``VOICEBOT_LLM_API_KEY``), not in a file. Empty sends a placeholder."""
    timeout_s: float = 10.0
    """``backend = "openai"``: longest wait for the server to connect, or for the next
    token, before the turn fails with an ``error`` event and a spoken apology."""
    tokenizer: str = ""
    """``backend = "openai"``: a local tokenizer for the token budget (a catalog id, or a
    ``tokenizer.json`` or a directory holding one). Empty: the catalog model of the same
    name when there is one, else an estimate (4 characters a token)."""


@dataclass(frozen=True)
class TtsSettings:
    """Text to speech (Piper)."""

    voice: str = "piper-en_US-joe-medium"
    """A catalog id or a path to a Piper ``.onnx`` voice (its ``.onnx.json`` beside it)."""
    speaker: int | None = None
    """Speaker index for multi-speaker voices."""
    speaking_rate: float = 1.0
    """1.0 is the voice's natural pace; 1.2 is 20% faster."""
    use_cuda: bool = False
    """Run the voice on CUDA (needs onnxruntime-gpu)."""
    threads: int = 0
    """ONNX Runtime threads for the voice on the CPU; 0 for the physical core count."""


@dataclass(frozen=True)
class SessionSettings:
    """Turn-taking behaviour."""

    barge_in: bool = True
    """Let user speech interrupt the reply. Off means half-duplex: input is ignored while the
    assistant speaks (for open speakers without echo cancellation)."""
    barge_in_min_speech_ms: int = 250
    """Voiced audio needed before user speech interrupts the reply."""
    echo_tail_ms: int = 300
    """Half-duplex only: input is still ignored this long after the reply stops playing."""
    first_piece_max_wait_ms: int = 450
    """When the chat model has not ended a clause this long after its first token (a long
    number, a list of names), the first piece is cut at the last whole word so speech starts
    anyway; 0 waits for a clause."""
    speculative_stt: bool = True
    """Start transcribing when silence begins, before the end of turn is confirmed (the end
    of turn is then judged from the words too)."""
    speculative_min_new_speech_ms: int = 200
    """A pause starts a new early transcription only after this much new voiced audio since
    the last one; less (a breath, an "um") keeps the last one and any reply built on it."""
    preemptive_reply: bool = True
    """Write and voice the reply from the early transcript while the end of turn is still
    uncertain; nothing of it is heard or stored unless the turn ends with that transcript."""
    max_reply_s: float = 60.0
    """A reply stops after the piece that brings its audio past this length."""


@dataclass(frozen=True)
class ServerSettings:
    """The websocket server."""

    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = 8765
    """Port to bind; 0 picks a free one."""
    token: str = field(default="", repr=False)  # a logged Settings must not show it
    """Shared secret clients send in ``start``; required when binding beyond loopback. Unset,
    it is read from ``$CREDENTIALS_DIRECTORY/token`` (systemd's ``LoadCredential=token:...``)."""
    insecure: bool = False
    """Allow plain ws:// (no ``certfile``) beyond loopback: audio, transcripts and the token
    then cross the network in clear text. For a trusted network or behind a TLS proxy."""
    auth_failures_per_minute: int = 5
    """Wrong or missing tokens one client address may send in a minute; past it the address
    is refused (1008 ``too many failed attempts``) before its token is checked. 0: no limit."""
    max_sessions_per_address: int = 4
    """Connections one client address may hold at once; more are closed with 1013. Behind a
    proxy every client has the proxy's address: raise it or set 0 (no cap)."""
    trusted_proxies: tuple[str, ...] = ()
    """Proxies (addresses or networks, e.g. ``10.0.0.0/8``) whose ``X-Forwarded-For`` names
    the client: per-address limits then count the client, not the proxy. Empty: the header
    is ignored (a client could write it)."""
    max_sessions: int = 8
    """Sessions served at once; more are closed with code 1013."""
    idle_timeout_s: float = 300.0
    """A session that sends nothing this long is closed."""
    max_message_bytes: int = 1 << 20
    """Largest websocket message accepted."""
    allowed_origins: tuple[str, ...] = ()
    """Browser origins allowed besides the server's own; ``*`` allows any."""
    certfile: str = ""
    """TLS certificate (PEM); with ``keyfile`` the server speaks wss/https."""
    keyfile: str = ""
    """TLS private key (PEM)."""
    audio_burst_s: float = 4.0
    """Audio a client may send ahead of real time before it is paced (the browser client
    sends up to 3 s it held while the session opened)."""
    audio_max_speed: float = 1.25
    """Beyond the burst, a client's audio is read at most this many times real time (above 1,
    so a client catching up after a network stall drains its backlog)."""
    text_burst: int = 10
    """Text frames (``text``, ``interrupt``, ...) a client may send at once before it is paced."""
    text_max_per_s: float = 2.0
    """Beyond the burst, text frames read per second."""
    max_paced_s: float = 20.0
    """A client kept paced this long without a break is closed with 1008 ``too fast``."""
    send_buffer_bytes: int = 1 << 15
    """What the server buffers for one connection beyond the system's socket buffers (32 KiB,
    websockets' own default, about 0.7 s of 22.05 kHz reply audio): above it the reply waits
    for the client to read. More delays ``interrupted`` behind queued audio on a slow link.
    More than 4 times this unsent for a connection closes it (1008 ``not reading``)."""
    send_timeout_s: float = 20.0
    """A send to a client that takes nothing this long (it does not read its socket) closes
    the connection with 1008 ``not reading``; its session ends at once."""
    drain_timeout_s: float = 20.0
    """On SIGTERM: longest wait for replies in progress to finish before the remaining
    sessions are closed with 1001 (their clients reconnect, to another replica)."""
    malloc_arenas: int = 2
    """glibc malloc arenas the process may use (``mallopt(M_ARENA_MAX)``; also ``voicebot
    daemon``). glibc's default, 8 per core, keeps the peak of each inference thread's arena
    for good. 0: glibc's default; ``MALLOC_ARENA_MAX`` in the environment wins."""
    memory_trim_interval_s: float = 60.0
    """How often freed heap memory is returned to the system (``malloc_trim``, from a worker
    thread; also ``voicebot daemon``). 0: never."""


@dataclass(frozen=True)
class DaemonSettings:
    """The smart-speaker daemon."""

    wake_word: str = "okay_nabu"
    """Bundled wake word (okay_nabu, hey_jarvis, alexa, hey_mycroft) or a model .json path."""
    wake_threshold: float = 0.0
    """Detection probability cutoff; 0 uses the model's own."""
    wake_refractory_s: float = 2.0
    """After a detection, further detections are ignored this long."""
    command_timeout_s: float = 6.0
    """After the wake word, give up if nobody speaks within this."""
    follow_up_s: float = 8.0
    """After a reply, the user can answer back without the wake word within this."""
    conversation_timeout_s: float = 300.0
    """A wake-up within this of the last turn continues the same conversation."""
    timer_ring_interval_s: float = 5.0
    """A finished timer chimes again this often until the user says "stop" (wake word, then
    "stop"), never while a conversation is going on."""
    timer_ring_max_s: float = 300.0
    """A timer nobody stops rings this long at most."""
    status_file: str = ""
    """Write the current state as JSON here on every change."""
    status_port: int = 0
    """Serve the state over HTTP on localhost at this port; 0 disables it."""
    state_hook: str = ""
    """A command run on every state change with the state as its argument (LEDs)."""
    server: str = ""
    """Satellite mode: the ``ws://`` URL of a ``voicebot serve`` to talk through."""
    cue: bool = True
    """Play a short cue when woken."""


@dataclass(frozen=True)
class SkillSettings:
    """Skills answered before the chat model (time, date, timers, arithmetic...)."""

    enabled: bool = True
    """Route the user's words to the skills first; off: everything goes to the chat model."""
    time_zone: str = ""
    """IANA zone for the time and date ("Europe/Paris"); empty: the system's."""
    templates: tuple[str, ...] = ()
    """Extra sentence template files (Home Assistant's YAML format), added to the built-in."""
    listen_again: bool = True
    """Decode again, with the skills' words as Whisper's prompt, an utterance that has a
    skill's word but matches no template; the second transcript is kept only when a skill
    understands it (``voicebot.skills.listening``; docs/skills.md gives the measurements)."""


@dataclass(frozen=True)
class StoreSettings:
    """The conversation store."""

    keep_days: float = 0.0
    """Delete conversations inactive for longer than this many days, on start and daily
    (0 keeps them until deleted with ``voicebot history delete``)."""
    url: str = ""
    """A PostgreSQL database for the store (``postgresql://user:password@host:5432/voicebot``),
    shared by replicas on several machines (docs/scaling.md); empty keeps the SQLite file
    ``voicebot.db`` in the data directory. Put a URL with a password in the environment
    (``VOICEBOT_STORE_URL``), not in a file or on a command line."""

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                "[store] url: a PostgreSQL URL (postgresql://user:password@host/database), "
                "or empty for the SQLite file"
            )


@dataclass(frozen=True)
class Profile:
    """A bot persona."""

    name: str
    """The key used to pick it (``--profile NAME``)."""
    display_name: str = "Nova"
    """What the assistant calls itself."""
    system_prompt: str = ""
    """Personality and instructions; ``{name}`` is replaced by ``display_name``."""
    voice: str = ""
    """TTS voice for this profile; empty uses ``[tts] voice``."""
    speaking_rate: float = 0.0
    """Speaking rate for this profile; 0 uses ``[tts] speaking_rate``."""
    greeting: str = ""
    """Said when a conversation starts (empty for none); ``{name}`` is the display name."""
    llm_model: str = ""
    """Chat model for this profile; empty uses ``[llm] model``."""
    llm_adapter: str = ""
    """A LoRA adapter made by ``voicebot tune`` (its name under the models directory, or a
    path) applied to the chat model; empty for none (docs/learning.md)."""
    training_data: bool = True
    """Keep this profile's conversations for training (``voicebot data export``); false
    leaves them out of every export (they are still kept as history)."""

    @property
    def llm_reference(self) -> str:
        """The chat model to load: ``llm_model``, with ``llm_adapter`` after
        :data:`ADAPTER_MARK` when set."""
        if not self.llm_adapter:
            return self.llm_model
        return f"{self.llm_model}{ADAPTER_MARK}{self.llm_adapter}"

    def prompt(self) -> str:
        """The system prompt with the display name filled in."""
        return self.system_prompt.replace("{name}", self.display_name)

    def greeting_text(self) -> str:
        """The greeting with the display name filled in."""
        return self.greeting.replace("{name}", self.display_name)


ADAPTER_MARK = "#adapter="
"""Joins a chat model reference and an adapter name in :attr:`Profile.llm_reference`."""

DEFAULT_PROFILE = Profile(
    name="default",
    display_name="Nova",
    # Measured on the default model (docs/quality.md): this wording scored 15/20 factual and
    # 8/10 memory; naming the persona in the prompt cost 3-5 answers, and "friendly voice
    # assistant" made it refuse or drift into French. The name shows in greetings and the UI.
    system_prompt="You are a helpful AI assistant. Keep answers brief.",
    greeting="Hi, I'm {name}. What can I do for you?",
)
"""The built-in profile used when the config defines none."""


@dataclass(frozen=True)
class Settings:
    """Everything voicebot is configured with."""

    vad: VadSettings = field(default_factory=VadSettings)
    """Voice activity detection."""
    segmenter: SegmenterSettings = field(default_factory=SegmenterSettings)
    """Utterance segmentation."""
    stt: SttSettings = field(default_factory=SttSettings)
    """Speech to text."""
    llm: LlmSettings = field(default_factory=LlmSettings)
    """Chat model."""
    tts: TtsSettings = field(default_factory=TtsSettings)
    """Text to speech."""
    session: SessionSettings = field(default_factory=SessionSettings)
    """Turn-taking."""
    server: ServerSettings = field(default_factory=ServerSettings)
    """Websocket server."""
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    """Smart-speaker daemon."""
    skills: SkillSettings = field(default_factory=SkillSettings)
    """Skills routed before the chat model."""
    store: StoreSettings = field(default_factory=StoreSettings)
    """The conversation store."""
    profile: str = "default"
    """The profile used when none is named."""
    profiles: Mapping[str, Profile] = field(
        default_factory=lambda: {DEFAULT_PROFILE.name: DEFAULT_PROFILE}
    )
    """Named profiles."""
    data_dir: str = ""
    """Where the conversation store lives; empty for the user data dir."""
    models_dir: str = ""
    """Where pulled models live; empty for ``$VOICEBOT_MODELS``, the checkout's ``models/``
    or the user data dir."""

    def get_profile(self, name: str | None = None) -> Profile:
        """The profile called ``name`` (default: :attr:`profile`).

        Raises:
            ConfigError: no such profile.
        """
        key = name or self.profile
        try:
            return self.profiles[key]
        except KeyError:
            known = ", ".join(sorted(self.profiles))
            raise ConfigError(f"unknown profile {key!r} (known: {known})") from None

    def data_path(self) -> Path:
        """The data directory, created if needed."""
        path = (
            Path(self.data_dir) if self.data_dir else Path(platformdirs.user_data_dir("voicebot"))
        )
        path.mkdir(parents=True, exist_ok=True)
        return path

    def database_path(self) -> Path:
        """The SQLite conversation store."""
        return self.data_path() / "voicebot.db"

    def store_location(self) -> str:
        """Where the conversation store is: ``[store] url``, else the SQLite file."""
        return self.store.url or str(self.database_path())


_SECTIONS: dict[str, type[Any]] = {
    "vad": VadSettings,
    "segmenter": SegmenterSettings,
    "stt": SttSettings,
    "llm": LlmSettings,
    "tts": TtsSettings,
    "session": SessionSettings,
    "server": ServerSettings,
    "daemon": DaemonSettings,
    "skills": SkillSettings,
    "store": StoreSettings,
}
_TOP_LEVEL = ("profile", "data_dir", "models_dir")


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$VOICEBOT_CONFIG`` or ``~/.config/voicebot/config.toml``."""
    env = (os.environ if environ is None else environ).get("VOICEBOT_CONFIG")
    if env:
        return Path(env)
    return Path(platformdirs.user_config_dir("voicebot")) / "config.toml"


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a TOML or environment value to the field's declared type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if hint is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
        if origin is tuple:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list | tuple):
                raise ValueError(value)
            return tuple(str(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: invalid value {value!r}") from None
    raise ConfigError(f"{where}: unsupported setting type")  # pragma: no cover


def _build_section(cls: type[Any], values: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from None


def _read_file(path: Path | None, required: bool) -> dict[str, Any]:
    if path is None:
        return {}
    if not path.exists():
        if required:
            raise ConfigError(f"config file {path} does not exist")
        return {}
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None


def _read_credential(name: str, env: Mapping[str, str]) -> str | None:
    """A systemd credential (``$CREDENTIALS_DIRECTORY/NAME``), stripped; ``None`` if absent."""
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the credential {path}: {error}") from None


_PROFILE_OVERRIDES: tuple[tuple[str, str, Any], ...] = (
    ("tts.voice", "voice", ""),
    ("tts.speaking_rate", "speaking_rate", 0.0),
    ("llm.model", "llm_model", ""),
)
"""Section settings that a profile may set for itself, the profile field, and its "unset"."""


def load_settings(
    config_path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, the config file, the environment and flags.

    Args:
        config_path: The TOML file; ``None`` reads the default path if it exists.
        overrides: Values from command-line flags, keyed ``"section.field"`` or ``"field"``
            for top-level fields; ``None`` values are ignored.
        environ: The environment (default ``os.environ``).

    Raises:
        ConfigError: an unreadable file, an unknown key or an invalid value.
    """
    env = os.environ if environ is None else environ
    explicit = config_path is not None
    path = Path(config_path) if config_path is not None else default_config_path(env)
    data = _read_file(path, required=explicit or "VOICEBOT_CONFIG" in env)
    where = str(path)

    layered: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    top: dict[str, Any] = {}
    profiles_data: Mapping[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            layered[key].update(value)
        elif key in _TOP_LEVEL:
            top[key] = value
        elif key == "profiles":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [profiles] must be a table of tables")
            profiles_data = value
        else:
            raise ConfigError(f"{where}: unknown setting {key!r}")

    # Keys set by the environment or a flag: both rank above the file, profiles included.
    above_file = {k for k, v in (overrides or {}).items() if v is not None}
    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            name = f"VOICEBOT_{section}_{f.name}".upper()
            if name in env:
                layered[section][f.name] = env[name]
                above_file.add(f"{section}.{f.name}")
    for key in _TOP_LEVEL:
        name = f"VOICEBOT_{key}".upper()
        if name in env:
            top[key] = env[name]
    if "VOICEBOT_MODELS" in env and "models_dir" not in top:
        top["models_dir"] = env["VOICEBOT_MODELS"]
    # systemd's LoadCredential=token:FILE: ranks with the environment, above the file.
    credential = _read_credential("token", env)
    if credential is not None and "VOICEBOT_SERVER_TOKEN" not in env:
        layered["server"]["token"] = credential

    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if "." in key:
            section, name = key.split(".", 1)
            if section not in _SECTIONS:
                raise ConfigError(f"unknown setting {key!r}")
            layered[section][name] = value
        elif key in _TOP_LEVEL:
            top[key] = value
        else:
            raise ConfigError(f"unknown setting {key!r}")

    sections = {
        name: _build_section(cls, layered[name], f"{where} [{name}]")
        for name, cls in _SECTIONS.items()
    }
    profiles: dict[str, Profile] = {DEFAULT_PROFILE.name: DEFAULT_PROFILE}
    for name, values in profiles_data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [profiles.{name}] must be a table")
        base = dataclasses.asdict(DEFAULT_PROFILE) if name == DEFAULT_PROFILE.name else {}
        merged = {**base, **values, "name": name}
        profiles[name] = _build_section(Profile, merged, f"{where} [profiles.{name}]")
    for name, profile in profiles.items():
        if name != DEFAULT_PROFILE.name and not profile.system_prompt:
            profile = dataclasses.replace(profile, system_prompt=DEFAULT_PROFILE.system_prompt)
        # A profile's voice, rate or model comes from the file: `--voice` (or
        # VOICEBOT_TTS_VOICE) outranks it, so the profile falls back to the section's value.
        blank = {
            field: empty
            for key, field, empty in _PROFILE_OVERRIDES
            if key in above_file and getattr(profile, field) != empty
        }
        profiles[name] = dataclasses.replace(profile, **blank) if blank else profile

    top_values = {k: _coerce(v, str, f"{where} {k}") for k, v in top.items()}
    settings = Settings(**sections, profiles=profiles, **top_values)
    settings.get_profile()  # the default profile must exist
    return settings
