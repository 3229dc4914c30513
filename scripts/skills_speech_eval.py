"""Measure the skills through speech: each phrasing spoken (Piper, espeak-ng), heard by the
configured Whisper, routed by :class:`voicebot.skills.SkillRouter`.

A development tool for tuning the router on the DEVELOPMENT phrasings (the test module's
``SPOKEN`` list and ``tests/data/skills_spoken_dev.toml``): it lists each development miss
with what Whisper heard. The test phrasings (``HELD_OUT``) are only counted, never listed,
unless ``--show-test`` is given once tuning is over. It also counts the chat questions (every
turn of the answer-quality sets and the text tests' ``TO_THE_MODEL``) that a skill would take,
in text and through speech: that must stay 0.

Transcripts are cached per voice and decoding options (``--cache``), so a change to the
router alone is re-measured in seconds.

    flock /tmp/voicebot-heavy.lock nice -n 10 .venv/bin/python scripts/skills_speech_eval.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.test_skills import TO_THE_MODEL  # noqa: E402
from tests.test_skills_real import HELD_OUT, SPOKEN, padded, right  # noqa: E402
from voicebot.engines.base import Transcription  # noqa: E402
from voicebot.quality import load_set  # noqa: E402
from voicebot.skills import SkillRouter  # noqa: E402
from voicebot.skills.listening import SKILL_PROMPT, SkillListeningStt  # noqa: E402

Phrasing = tuple[str, str, str]

MEASURED_VOICES = ("piper", "espeak")
"""The voices of the reported score."""
EXTRA_VOICES = ("espeak en-gb+f3", "espeak en-us 175", "piper x1.15")
"""More speakers, for the development phrasings only (more mishearings to learn from)."""


def dev_phrasings() -> list[Phrasing]:
    """The development phrasings: the test module's and the data file's."""
    raw = tomllib.loads((REPO / "tests/data/skills_spoken_dev.toml").read_text("utf-8"))
    extra = [(p["text"], p["intent"], p.get("expect", "")) for p in raw["phrasing"]]
    return [*SPOKEN, *extra]


def chat_questions(set_name: str) -> list[str]:
    """Every turn of an answer-quality set that is not a skill request."""
    turns: list[str] = []
    for item in load_set(set_name):
        for turn in item.turns:
            if turn not in turns:
                turns.append(turn)
    return turns


def make_speaker(maker: Any, voice: str) -> Callable[[str], bytes]:
    """A voice name ("piper", "piper x1.15", "espeak", "espeak en-gb+f3", "espeak en-us 175")."""
    parts = voice.split()
    if parts[0] == "piper":
        rate = float(parts[1][1:]) if len(parts) > 1 else 1.0
        return lambda text: maker.piper(text, rate=rate)
    name = parts[1] if len(parts) > 1 else "en-us"
    wpm = int(parts[2]) if len(parts) > 2 else 150
    return lambda text: maker.espeak(text, voice=name, words_per_minute=wpm)


class Hearing:
    """Transcripts of spoken text, through :class:`SkillListeningStt` as the app runs it,
    with Whisper's own transcripts cached on disk per voice, prompt and decoding options."""

    def __init__(
        self, cache: Path, options: dict[str, Any], router: SkillRouter, prompt: str = SKILL_PROMPT
    ) -> None:
        self.options = options
        key = hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:10]
        self.path = cache / f"whisper-{key}.json"
        self.heard: dict[str, str] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self._stt: Any = None
        self._maker: Any = None
        listen_again = options.get("skills.listen_again", True)
        self.recogniser: Any = (
            SkillListeningStt(self, router, prompt=prompt) if listen_again else self
        )

    def _load(self) -> None:
        from voicebot.config import load_settings
        from voicebot.engines import load_stt
        from voicebot.speech_samples import SpeechMaker

        decoding = {k[8:]: v for k, v in self.options.items() if k.startswith("whisper.")}
        settings = load_settings(
            None,
            environ={},
            overrides={
                "models_dir": str(REPO / "models"),
                "skills.listen_again": False,  # the plain recogniser: this class wraps it
                **{k: v for k, v in self.options.items() if not k.startswith("whisper.")},
            },
        )
        self._stt = load_stt(settings)
        if decoding:  # extra faster-whisper transcribe() arguments, to try decoding hints
            instances = [self._stt._free.get() for _ in range(self._stt.parallel_calls)]
            for model in instances:
                plain = model.transcribe
                model.transcribe = lambda *a, _p=plain, **k: _p(*a, **{**k, **decoding})
                self._stt._free.put(model)
        self._maker = SpeechMaker.load(REPO / "models")

    def transcribe(self, said: str, *, prompt: str = "") -> Transcription:
        """Whisper's transcript of ``said`` ("VOICE|TEXT"), from the cache when it is there."""
        key = f"{prompt}|{said}"
        if key not in self.heard:
            if self._stt is None:
                self._load()
            voice, _, text = said.partition("|")
            pcm = padded(make_speaker(self._maker, voice)(text))
            self.heard[key] = self._stt.transcribe(pcm, prompt=prompt).text
        return Transcription(text=self.heard[key])

    def __call__(self, voice: str, text: str) -> str:
        return str(self.recogniser.transcribe(f"{voice}|{text}").text)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.heard, indent=0, sort_keys=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default="/tmp/voicebot-skills-eval", help="transcript cache")
    parser.add_argument("--option", action="append", default=[], help="stt.KEY=JSON")
    parser.add_argument("--extra-voices", action="store_true", help="dev set in more voices")
    parser.add_argument("--prompt", default=SKILL_PROMPT, help="the second listening's prompt")
    parser.add_argument("--test", action="store_true", help="count the test set too (once)")
    parser.add_argument("--show-test", action="store_true", help="list the test set's misses")
    parser.add_argument("--no-chat", action="store_true", help="skip the spoken chat questions")
    parser.add_argument("--json", help="write the counts here")
    args = parser.parse_args()
    options: dict[str, Any] = {}
    for option in args.option:
        key, _, value = option.partition("=")
        options[key] = json.loads(value)
    router = SkillRouter()
    hearing = Hearing(Path(args.cache), options, router, args.prompt)
    result: dict[str, Any] = {"options": options}
    try:
        sets = [("dev", dev_phrasings())] + ([("test", HELD_OUT)] if args.test else [])
        for set_name, phrasings in sets:
            voices = list(MEASURED_VOICES)
            if set_name == "dev" and args.extra_voices:
                voices += EXTRA_VOICES
            for voice in voices:
                misses = []
                for text, intent, expected in phrasings:
                    heard = hearing(voice, text)
                    if not right(router, heard, intent, expected):
                        found = router.match(heard)
                        misses.append((text, heard, found.intent if found else None))
                count = len(phrasings) - len(misses)
                result[f"{set_name} {voice}"] = f"{count}/{len(phrasings)}"
                print(f"{set_name} {voice}: {count}/{len(phrasings)}")
                if set_name == "dev" or args.show_test:
                    for text, heard, got in misses:
                        print(f"    {text!r:50} heard {heard!r:50} -> {got}")
        text_right = sum(
            right(router, text, intent, expected) for text, intent, expected in HELD_OUT
        )
        print(f"test text: {text_right}/{len(HELD_OUT)}")
        for set_name in ("dev", "test") if args.test else ("dev",):
            questions = chat_questions(set_name) + (TO_THE_MODEL if set_name == "dev" else [])
            # A question the router takes in writing is a skill request ("What is two plus
            # two?"): through speech only a route to another skill, or of a question the
            # router leaves to the model in writing, is false.
            asked = {q: m.intent if (m := router.match(q)) else None for q in questions}
            routes = [(q, i) for q, i in asked.items() if i]
            print(f"chat {set_name} text: {len(routes)} of {len(questions)} are skill requests")
            for question, intent in routes:
                print(f"    {question!r} -> {intent}")
            if args.no_chat:
                continue
            for voice in MEASURED_VOICES:
                routes = []
                for question in questions:
                    heard = hearing(voice, question)
                    found = router.match(heard)
                    if found is not None and found.intent != asked[question]:
                        routes.append((question, heard, found.intent))
                print(f"chat {set_name} {voice}: {len(routes)} of {len(questions)} falsely routed")
                if set_name == "dev":
                    for question, heard, intent in routes:
                        print(f"    {question!r} heard {heard!r} -> {intent}")
                result[f"chat {set_name} {voice}"] = len(routes)
    finally:
        hearing.save()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
