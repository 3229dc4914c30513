"""The voicebot exception tree.

Every error voicebot raises on purpose is a :class:`VoicebotError`. Loop boundaries (a session,
a daemon cycle, the CLI) catch it, report ``str(error)`` as one clear line and keep going.
"""

from __future__ import annotations

__all__ = [
    "AudioDeviceError",
    "AudioFormatError",
    "ConfigError",
    "EngineError",
    "ModelError",
    "ModelNotFoundError",
    "ModelVerifyError",
    "OverloadedError",
    "ProtocolError",
    "StoreError",
    "VoicebotError",
]


class VoicebotError(Exception):
    """Base class of every error voicebot raises on purpose."""

    code = "error"
    """A short machine-readable code, sent to clients in ``error`` events."""


class ConfigError(VoicebotError):
    """Bad configuration: unknown profile, unreadable config file, invalid value."""

    code = "config"


class ModelError(VoicebotError):
    """A model cannot be used."""

    code = "model"


class ModelNotFoundError(ModelError):
    """A model is not on disk; the message names the command that fixes it."""

    code = "model_missing"


class ModelVerifyError(ModelError):
    """A model file does not match the catalog's size or sha256."""

    code = "model_corrupt"


class AudioFormatError(VoicebotError):
    """Audio that cannot be used: unreadable file, bad sample rate, odd byte count."""

    code = "bad_audio"


class AudioDeviceError(VoicebotError):
    """A sound device is missing, busy or vanished, or PortAudio is not installed."""

    code = "audio_device"


class EngineError(VoicebotError):
    """An engine (VAD, STT, LLM, TTS, wake word) failed while working."""

    code = "engine"


class LlmUnavailableError(EngineError):
    """The chat model's server is down, too slow, refused the key, or answered garbage."""

    code = "llm_unavailable"
    apology = "Sorry, I can't reach my language model right now. Please try again in a moment."
    """What the session says instead of the reply."""


class OverloadedError(VoicebotError):
    """A shared model's queue is full: the call was refused, or shed for more urgent work."""

    code = "overloaded"


class ProtocolError(VoicebotError):
    """A websocket client broke the wire protocol."""

    code = "protocol"


class StoreError(VoicebotError):
    """The conversation store cannot be read or written, or a conversation is unknown."""

    code = "store"
