"""``voicebot data export`` and ``voicebot tune``: learning from use (docs/learning.md).

The subcommands register themselves with :mod:`voicebot.cli`; this module holds their wiring.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import time
from typing import Any

from .errors import ConfigError

__all__ = ["parse_since", "register"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([dhw])$")
_UNIT_S = {"h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_since(text: str, *, now: float | None = None) -> float:
    """``--since``: a date (``2026-11-30``), a date and time, or an age (``7d``, ``12h``,
    ``2w``), as Unix time.

    Raises:
        ConfigError: none of these.
    """
    text = text.strip()
    match = _DURATION.match(text)
    if match:
        return (time.time() if now is None else now) - float(match[1]) * _UNIT_S[match[2]]
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: give a date (2026-11-30) or an age (7d, 12h, 2w)"
        ) from None


def register(sub: Any) -> None:
    """Add ``data`` and ``tune`` to the command line's subcommands."""
    from .data_export import FEEDBACK_FILTERS

    data = sub.add_parser("data", help="training data from the stored conversations")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    export = dsub.add_parser(
        "export",
        help="conversations as chat-format JSONL (TRL, OpenAI fine-tuning), corrections in",
    )
    export.add_argument("-o", "--output", metavar="FILE", help="write here (default stdout)")
    export.add_argument(
        "--since", metavar="WHEN", help="only conversations active since a date or an age (7d)"
    )
    export.add_argument(
        "--feedback",
        choices=FEEDBACK_FILTERS,
        help="only replies rated good (or corrected)",
    )
    export.add_argument(
        "--profile",
        dest="export_profile",
        metavar="NAME",
        help="only this profile's conversations",
    )
    data.set_defaults(func=_cmd_data)
    _register_tune(sub)


def _cmd_data(args: argparse.Namespace) -> int:
    from .cli import _open_store, _settings
    from .data_export import training_examples, write_jsonl

    settings = _settings(args)
    since = parse_since(args.since) if args.since else 0.0
    store = _open_store(settings)
    try:
        examples = training_examples(
            store,
            settings,
            since=since,
            feedback=args.feedback or "",
            profile=args.export_profile,
        )
        count = write_jsonl(examples, args.output or sys.stdout)
    finally:
        store.close()
    where = args.output or "stdout"
    print(f"exported {count} conversations to {where}", file=sys.stderr)
    return 0


def _register_tune(sub: Any) -> None:
    from .cli import _add_engine_flags

    tune = sub.add_parser(
        "tune",
        help="fine-tune the chat model (LoRA) on your facts and conversations, on the CPU",
    )
    tune.add_argument("--name", required=True, help="the adapter's name (a profile's llm_adapter)")
    tune.add_argument("--facts", metavar="FILE", help="your questions and answers (TOML)")
    tune.add_argument(
        "--data",
        metavar="FILE",
        action="append",
        default=[],
        help="conversations from `voicebot data export` (JSONL; repeatable)",
    )
    tune.add_argument("--steps", type=int, default=60, help="optimiser steps (default 60)")
    tune.add_argument("--learning-rate", type=float, default=5e-3, metavar="LR")
    tune.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    tune.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    tune.add_argument(
        "--stop-after", type=int, default=0, metavar="N", help="stop after N steps (resumable)"
    )
    tune.add_argument("--resume", action="store_true", help="carry on from the last checkpoint")
    tune.add_argument(
        "--force", action="store_true", help="keep the adapter even if the general set drops"
    )
    tune.add_argument("--quiet", action="store_true", help="no progress bar")
    tune.add_argument(
        "--into", metavar="DIR", default="", help="write adapters here (default MODELS/adapters)"
    )
    _add_engine_flags(tune, stt=False, llm=True, tts=False)
    tune.set_defaults(func=_cmd_tune)


def _cmd_tune(args: argparse.Namespace) -> int:
    from .cli import _settings
    from .tune import TuneOptions, TuneRefused, TuneStopped, tune

    settings = _settings(args)
    options = TuneOptions(
        name=args.name,
        steps=args.steps,
        learning_rate=args.learning_rate,
        rank=args.rank,
        alpha=2 * args.rank,
        threads=args.threads,
        stop_after=args.stop_after,
        resume=args.resume,
        force=args.force,
        progress=not args.quiet,
        adapters_dir=args.into,
    )

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        result = tune(settings, options, facts_path=args.facts, data_paths=args.data, log=log)
    except TuneStopped as stopped:
        print(f"voicebot: {stopped}", file=sys.stderr)
        return 130
    except TuneRefused as refused:
        print(f"voicebot: refused: {refused}", file=sys.stderr)
        return 1
    base, tuned = result.base, result.tuned
    print(
        f"adapter {result.adapter}\n"
        f"held-out paraphrases: base {base.held_out[0]}/{base.held_out[1]}, "
        f"tuned {tuned.held_out[0]}/{tuned.held_out[1]}\n"
        f"general test set: base {base.general[0]}/{base.general[1]}, "
        f"tuned {tuned.general[0]}/{tuned.general[1]}\n"
        f"training {result.train_s:.0f} s; load {base.load_s:.2f} -> {tuned.load_s:.2f} s; "
        f"first token {base.first_token_ms:.0f} -> {tuned.first_token_ms:.0f} ms; "
        f"{base.tokens_per_s:.0f} -> {tuned.tokens_per_s:.0f} tokens/s\n"
        f'use it: llm_adapter = "{args.name}" in a profile (docs/learning.md)'
    )
    return 0
