"""`s3prl-distill demo` end to end at tiny size: every stage, the table's shape, finite numbers, and caching."""

import json
import math
import re
import sys
from pathlib import Path

import pytest

from helpers import run_python

COMMAND = str(Path(sys.executable).parent / "s3prl-distill")


@pytest.mark.slow
def test_demo_pipeline_end_to_end_and_cached(tmp_path):
    workdir = tmp_path / "demo"
    first = run_python([COMMAND, "demo", "--preset", "tiny", "--workdir", str(workdir)], timeout=2400)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    report = (workdir / "results.md").read_text()
    lines = report.splitlines()
    header = lines[2]
    rows = [line for line in lines[4:] if line.startswith("|")]
    assert header.split("|")[1:-1] == [" upstream ", " params (M) ", " PR PER % ↓ ", " ASR WER % ↓ ", " KS acc % ↑ ",
                                       " SID acc % ↑ ", " ER acc % ↑ ", " time / teacher "]
    labels = [row.split("|")[1].strip() for row in rows]
    assert labels == ["teacher (HuBERT, pretrained)", "teacher, random weights", "DistilHuBERT-shaped student",
                      "FitHuBERT-shaped student", "fbank (s3prl)"]
    for row in rows:
        for cell in row.split("|")[2:-2]:
            assert math.isfinite(float(cell)), row
    assert rows[0].split("|")[-2].strip() == "1.00"  # time relative to the teacher itself
    for row in rows[1:]:  # "median (first quartile–third quartile)" of the per-round ratios
        median, low, high = map(float, re.fullmatch(r"\s*(\S+) \((\S+)–(\S+)\)\s*", row.split("|")[-2]).groups())
        assert 0 < low <= median <= high, row
    # The report says how and where the times were measured; the raw rounds are kept.
    assert "1 torch thread" in report and "rounds" in report and "Measured on" in report
    timing = json.loads((workdir / "timing.json").read_text())
    assert timing["threads"] == 1 and timing["rounds"] >= 15
    assert all(len(values) == timing["rounds"] for values in timing["times_s"].values())
    assert (workdir / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert set(json.loads((workdir / "timings.json").read_text())) == {"data", "teacher", "students", "superb"}

    # A second run reuses every finished stage.
    teacher = workdir / "stage_teacher" / "teacher.ckpt"
    stamp = teacher.stat().st_mtime_ns
    second = run_python([COMMAND, "demo", "--preset", "tiny", "--workdir", str(workdir)], timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert teacher.stat().st_mtime_ns == stamp
    assert "HuBERT teacher" not in second.stderr and "distill:" not in second.stderr
    assert (workdir / "results.md").read_text().splitlines()[4].split("|")[1:8] == rows[0].split("|")[1:8]
