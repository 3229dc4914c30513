"""How far rewriting follow-ups can take the chat model: the DEVELOPMENT follow-ups answered
from hand-written standalone questions (scripts/followup_gold_dev.toml) instead of
:func:`voicebot.followup.standalone`'s.

Prints, for the dev follow-ups: the shipped handling (the rewrite with the previous exchange),
the gold rewrite alone, and the gold rewrite with the previous exchange. The gap between the
first and the last is what a better rewrite can still win; the last is the ceiling of rewriting
with this chat model. The test set is never run here.

    flock /tmp/voicebot-heavy.lock nice -n 10 .venv/bin/python scripts/followup_oracle.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from voicebot import dialogue  # noqa: E402 (after the path above)
from voicebot.config import load_settings  # noqa: E402
from voicebot.dialogue import Dialogue  # noqa: E402
from voicebot.engines import Engines, load_llm, make_vad_factory  # noqa: E402
from voicebot.engines.fake import FakeStt, FakeTts  # noqa: E402
from voicebot.quality import evaluate, load_set  # noqa: E402

GOLD = Path(__file__).with_name("followup_gold_dev.toml")


def main() -> int:
    """Score the dev follow-ups under each rewrite; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="voicebot config file")
    parser.add_argument("--json", help="write every answer and verdict here")
    parser.add_argument("--only", action="append", choices=["shipped", "gold", "gold + exchange"])
    args = parser.parse_args()

    gold: dict[str, str] = tomllib.loads(GOLD.read_text(encoding="utf-8"))["gold"]
    by_turns = {
        tuple(item.turns[-2:]): gold[item.id]
        for item in load_set("dev")
        if item.category == "followup" and item.id in gold
    }
    settings = load_settings(args.config)
    llm = load_llm(settings, reference=settings.get_profile().llm_reference)
    engines = Engines(stt=FakeStt(), llm=llm, tts=FakeTts(), vad_factory=make_vad_factory(settings))
    shipped_standalone = getattr(dialogue, "standalone")  # noqa: B009 - patched below
    saved = (Dialogue.FOLLOWUP_REWRITE, Dialogue.FOLLOWUP_EXCHANGE, Dialogue.FOLLOWUP_BOTH)
    setups = {
        "shipped": (shipped_standalone, True),
        "gold": (lambda q, pq, pa="": by_turns.get((pq, q)), False),
        "gold + exchange": (lambda q, pq, pa="": by_turns.get((pq, q)), True),
    }
    rows: dict[str, Any] = {}
    try:
        for name in args.only or list(setups):
            rewrite, exchange = setups[name]
            setattr(dialogue, "standalone", rewrite)  # noqa: B010 - the rewrite under test
            leans = getattr(dialogue, "leans_on_previous")  # noqa: B009
            if name != "shipped":  # every dev follow-up counts as one: the gold says so
                setattr(dialogue, "leans_on_previous", lambda text: True)  # noqa: B010
            Dialogue.FOLLOWUP_REWRITE, Dialogue.FOLLOWUP_EXCHANGE = True, exchange
            Dialogue.FOLLOWUP_BOTH = exchange
            try:
                report = evaluate(engines, settings, sets=["dev"], categories=["followup"])
            finally:
                setattr(dialogue, "leans_on_previous", leans)  # noqa: B010
            passed, total = report.sets["dev"].category("followup")
            rows[name] = {
                "total": [passed, total],
                "items": {
                    r.item.id: {"passed": r.passed, "why": r.why, "answers": r.answers}
                    for r in report.sets["dev"].results
                },
            }
            print(f"{name:<18} {passed:>3}/{total}", flush=True)
    finally:
        setattr(dialogue, "standalone", shipped_standalone)  # noqa: B010
        Dialogue.FOLLOWUP_REWRITE, Dialogue.FOLLOWUP_EXCHANGE, Dialogue.FOLLOWUP_BOTH = saved
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
