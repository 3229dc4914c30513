"""Skills answered before the chat model: the time, the date, timers, arithmetic, "stop",
"never mind" and "repeat that".

A :class:`SkillRouter` matches the user's final words against sentence templates (Home
Assistant's, through hassil, and voicebot's own in the same format) and answers what it
can; everything else goes to the chat model. Timers live in a :class:`TimerService`, one per
app, stored in the conversation store. ``docs/skills.md`` lists what is understood.
"""

from .arithmetic import calculate
from .numbers import format_duration, format_number, parse_number
from .router import IntentMatch, SkillReply, SkillRouter, normalize
from .timers import Timer, TimerService

__all__ = [
    "IntentMatch",
    "SkillReply",
    "SkillRouter",
    "Timer",
    "TimerService",
    "calculate",
    "format_duration",
    "format_number",
    "normalize",
    "parse_number",
]
