"""Compare how a follow-up is answered without history, on the DEVELOPMENT set only.

The handlings are :class:`voicebot.dialogue.Dialogue`'s ``FOLLOWUP_REWRITE``,
``FOLLOWUP_EXCHANGE`` and ``FOLLOWUP_BOTH``: nothing, the previous exchange only, the
standalone rewrite only, the rewrite with the exchange when it cannot be rewritten, and both.
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from voicebot.config import load_settings  # noqa: E402 (after the path above)
from voicebot.dialogue import Dialogue  # noqa: E402
from voicebot.engines import Engines, load_llm, make_vad_factory  # noqa: E402
from voicebot.engines.fake import FakeStt, FakeTts  # noqa: E402
from voicebot.followup import standalone  # noqa: E402
from voicebot.quality import evaluate  # noqa: E402

HANDLINGS: dict[str, tuple[bool, bool, bool]] = {
    "none": (False, False, False),
    "exchange": (False, True, False),
    "rewrite": (True, False, False),
    "rewrite, else exchange": (True, True, False),
    "both": (True, True, True),
}
"""Name -> (FOLLOWUP_REWRITE, FOLLOWUP_EXCHANGE, FOLLOWUP_BOTH)."""


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
            rewrite, exchange, both = HANDLINGS[name]
            Dialogue.FOLLOWUP_REWRITE = rewrite
            Dialogue.FOLLOWUP_EXCHANGE = exchange
            Dialogue.FOLLOWUP_BOTH = both
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
