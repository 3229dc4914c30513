"""Feedback on replies, typed: ``/good`` and ``/bad [what it should have said]``.

The browser sends a ``feedback`` message (docs/protocol.md) and speech is matched by the
skills ("that's wrong, it's the blue bin"); all three end in :meth:`Session.give_feedback
<voicebot.session.Session.give_feedback>`, which stores the rating with the reply's turn.
"""

from __future__ import annotations

__all__ = ["RATINGS", "parse_feedback_command"]

RATINGS = ("good", "bad")
"""What a reply can be rated."""


def parse_feedback_command(text: str) -> tuple[str, str] | None:
    """``(rating, correction)`` for ``/good`` or ``/bad [correction]``; ``None`` for any
    other line (a message to the assistant)."""
    command, _, rest = text.strip().partition(" ")
    if command == "/good" and not rest.strip():
        return ("good", "")
    if command == "/bad":
        return ("bad", rest.strip())
    return None
