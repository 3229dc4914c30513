"""Answer quality of the default model through the production reply path.

The scores were measured when the prompt and generation settings were chosen
(docs/quality.md: 15/20 factual, 8/10 memory); the floors here catch regressions.
"""

from __future__ import annotations

import pytest

from voicebot.config import Settings
from voicebot.engines import Engines
from voicebot.engines.fake import FakeTts
from voicebot.quality import evaluate

pytestmark = pytest.mark.models


def test_the_default_assistant_answers_and_remembers(
    real_engines: Engines, settings: Settings
) -> None:
    engines = Engines(
        stt=real_engines.stt,
        llm=real_engines.llm,
        tts=FakeTts(),
        vad_factory=real_engines.vad_factory,
    )
    report = evaluate(engines, settings)
    wrong = [a for a in report.answers if not a["right"]]
    assert report.factual_right >= 13, wrong
    assert report.memory_right >= 7, wrong
    assert report.mean_words <= 15, report.answers
