"""A short soak (``voicebot bench --soak``): a real ``voicebot serve`` on the embedded models
under real-time sessions with barge-ins, bad frames and dropped connections; once they end, the
server's threads, descriptors and asyncio tasks are back to their count after the warm-up.

Counts and behaviour are asserted, never timings (docs/benchmarks.md has the hour-long run).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .conftest import REPO


def test_short_soak_returns_to_baseline(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(  # noqa: S603 - our own command
        [
            sys.executable,
            "-m",
            "voicebot",
            "bench",
            "--soak",
            "1.5",
            "--sessions",
            "2",
            "--isa",
            "best",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["server_alive"]
    # Every question was heard and answered, in every session.
    assert report["questions"] >= 8
    assert report["unanswered"] == 0, report["unanswered_names"]
    assert report["answered"] == report["questions"]
    # Each kind of trouble happened, and was handled the documented way.
    assert report["barge_ins"] >= 1
    assert 1 <= report["interrupted"] <= report["barge_ins"] + report["reconnects"]
    assert report["bad_frames"] >= 1
    assert report["bad_frame_errors"] == report["bad_frames"]
    assert report["other_errors"] == {}
    assert report["reconnects"] >= 1
    assert report["close_codes"].get("1009", 0) == report["reconnects"]
    # Each dropped connection came back to its conversation (a session dropped as the soak
    # ended does not come back).
    sessions = report["options"]["sessions"]
    assert report["reconnects"] - sessions <= report["resumed"] <= report["reconnects"]
    assert report["resumed"] >= 1
    # The server let go of everything the sessions held.
    baseline, after = report["baseline"], report["after"]
    assert baseline["tasks"] > 0  # read from /metrics, not missing
    for key in ("threads", "fds", "tasks"):
        assert after[key] <= baseline[key], (key, baseline, after)
    assert all(report["back_to_baseline"].values())
    assert len(report["samples"]) >= 2
    # The report says what it ran on.
    assert "avx2" in report["machine"]["cpu"]["flags"]
    assert "voice-to-voice p50/p95" in done.stdout


def test_the_load_table_compares_each_count_with_the_first() -> None:
    from voicebot.bench_soak import format_load_table

    def report(sessions: int, p50: float) -> dict[str, Any]:
        return {
            "options": {"sessions": sessions},
            "questions": 10 * sessions,
            "voice_to_voice_ms": {"p50": p50, "p95": p50 * 1.5},
            "unanswered": 0,
        }

    table = format_load_table([report(1, 500.0), report(4, 650.0)]).splitlines()
    assert table[2].startswith("| 1 | 10 | 500.0 / 750.0 ms | 1.00x |")
    assert table[3].startswith("| 4 | 40 | 650.0 / 975.0 ms | 1.30x |")
