"""voicebot: a local voice assistant that listens, answers out loud and remembers.

The public API: settings, the session loop, the engines and their fakes, the store.
"""

from .config import Profile, Settings, load_settings
from .dialogue import Dialogue, Turn
from .engines import Engines, load_engines
from .errors import VoicebotError
from .session import Responder, Session
from .store import Store

__all__ = [
    "Dialogue",
    "Engines",
    "Profile",
    "Responder",
    "Session",
    "Settings",
    "Store",
    "Turn",
    "VoicebotError",
    "load_engines",
    "load_settings",
]

__version__ = "0.1.0"
