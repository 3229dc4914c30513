"""Compare how a follow-up is answered without history, on the DEVELOPMENT set only.

The handlings are :class:`voicebot.dialogue.Dialogue`'s ``FOLLOWUP_REWRITE``,
``FOLLOWUP_EXCHANGE`` and ``FOLLOWUP_BOTH``: nothing, the previous exchange only, the
standalone rewrite only, the rewrite with the exchange when it cannot be rewritten, and both
(shipped). Two more measure how far rewriting can go: every dev follow-up answered from a
hand-written standalone question (``scripts/followup_gold_dev.toml``: what a perfect rewrite
would ask, naming the person or thing a right previous answer names), alone and with the
exchange; the latter is the ceiling of rewriting with this chat model.

Each runs the dev set's follow-up items (``dev.toml`` and ``dev_followups.toml``) through the
production reply path with the configured chat model (the embedded 135M one by default), like
``voicebot bench --quality``. The test set cannot be chosen here: it is measured once, with the
shipped setting, by ``voicebot bench --quality`` (docs/quality.md).

    flock /tmp/voicebot-heavy.lock nice -n 10 .venv/bin/python scripts/followup_handling.py \
        --json /tmp/followup_handling.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from voicebot import dialogue  # noqa: E402 (after the path above)
from voicebot.config import load_settings  # noqa: E402
from voicebot.dialogue import Dialogue  # noqa: E402
from voicebot.engines import Engines, load_llm, make_vad_factory  # noqa: E402
from voicebot.engines.fake import FakeStt, FakeTts  # noqa: E402
from voicebot.followup import standalone  # noqa: E402
from voicebot.quality import evaluate, load_set  # noqa: E402

GOLD = Path(__file__).with_name("followup_gold_dev.toml")

HANDLINGS: dict[str, tuple[bool, bool, bool, bool]] = {
    "none": (False, False, False, False),
    "exchange": (False, True, False, False),
    "rewrite": (True, False, False, False),
    "rewrite, else exchange": (True, True, False, False),
    "both": (True, True, True, False),
    "gold rewrite": (True, False, False, True),
    "gold rewrite + exchange": (True, True, True, True),
}
"""Name -> (FOLLOWUP_REWRITE, FOLLOWUP_EXCHANGE, FOLLOWUP_BOTH, hand-written rewrites)."""


@contextmanager
def gold_rewrites() -> Iterator[None]:
    """Every dev follow-up rewritten by hand (and counted as one) while inside."""
    gold: dict[str, str] = tomllib.loads(GOLD.read_text(encoding="utf-8"))["gold"]
    by_turns = {
        tuple(item.turns[-2:]): gold[item.id]
        for item in load_set("dev")
        if item.category == "followup" and item.id in gold
    }
    rewrite: Callable[..., str | None] = lambda q, pq, pa="": by_turns.get((pq, q))  # noqa: E731
    saved = {name: getattr(dialogue, name) for name in ("standalone", "leans_on_previous")}
    setattr(dialogue, "standalone", rewrite)  # noqa: B010 - the module's own name is patched
    setattr(dialogue, "leans_on_previous", lambda text: True)  # noqa: B010
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(dialogue, name, value)


def main() -> int:
    """Run every handling (or those named) on the dev follow-ups and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(HANDLINGS), help="a handling")
    parser.add_argument("--config", help="voicebot config file")
    parser.add_argument("--json", help="write every answer and verdict here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every answer")
    args = parser.parse_args()

    settings = load_settings(args.config)
    llm = load_llm(settings, reference=settings.get_profile().llm_reference)
    engines = Engines(stt=FakeStt(), llm=llm, tts=FakeTts(), vad_factory=make_vad_factory(settings))
    saved = (Dialogue.FOLLOWUP_REWRITE, Dialogue.FOLLOWUP_EXCHANGE, Dialogue.FOLLOWUP_BOTH)
    rows: dict[str, dict[str, Any]] = {}
    try:
        for name in args.only or list(HANDLINGS):
            rewrite, exchange, both, gold = HANDLINGS[name]
            Dialogue.FOLLOWUP_REWRITE = rewrite
            Dialogue.FOLLOWUP_EXCHANGE = exchange
            Dialogue.FOLLOWUP_BOTH = both
            with gold_rewrites() if gold else nullcontext():
                report = evaluate(
                    engines,
                    settings,
                    sets=["dev"],
                    categories=["followup"],
                    log=print if args.verbose else None,
                ).sets["dev"]
            split = report.by_source("followup")
            rows[name] = {
                "total": list(report.category("followup")),
                "by_file": {f: list(pt) for f, pt in split.items()},
                "items": {
                    r.item.id: {
                        "passed": r.passed,
                        "why": r.why,
                        "rewrite": standalone(r.item.turns[-1], r.item.turns[-2], r.answers[-2])
                        if len(r.item.turns) > 1
                        else None,
                        "answers": r.answers,
                    }
                    for r in report.results
                },
            }
            by_file = ", ".join(f"{f} {p}/{t}" for f, (p, t) in split.items())
            passed, total = report.category("followup")
            print(f"{name:<24} {passed:>3}/{total:<3} ({by_file})", flush=True)
    finally:
        Dialogue.FOLLOWUP_REWRITE, Dialogue.FOLLOWUP_EXCHANGE, Dialogue.FOLLOWUP_BOTH = saved
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
