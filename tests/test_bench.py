"""The bench's table arithmetic and inputs, without training anything: SUPERB's score, the protocol's margins, the
settings' validation and the low-resource PR split. (The bench end to end: tests/test_demo.py.)"""

import json
import math
import statistics

import pytest

from s3prl_distill.downstream_recipes.bench import (PRESETS, BenchSettings, _record_settings, higher_is_better_percent,
                                                    load_settings, low_resource_data, protocol_margins, superb_root,
                                                    superb_score, summarise)
from s3prl_distill.errors import UserError


def test_superb_score_puts_fbank_at_0_the_teacher_at_1000_and_leaves_out_tied_tasks():
    means = {"fbank": {"pr": 20.0, "asr": 0.0, "ks": 50.0}, "teacher": {"pr": 60.0, "asr": 0.0, "ks": 90.0},
             "student": {"pr": 40.0, "asr": 0.0, "ks": 80.0}}
    scores, left_out = superb_score(means, floor="fbank", ceiling="teacher")
    assert left_out == ["asr"]  # teacher = fbank: no scale for this task
    assert scores["fbank"] == 0 and scores["teacher"] == pytest.approx(1000)
    # 1000 / 2 * ((40 - 20) / 40 + (80 - 50) / 40) = 500 * (0.5 + 0.75)
    assert scores["student"] == pytest.approx(625.0)
    nothing, all_out = superb_score({"fbank": {"ks": 5.0}, "teacher": {"ks": 5.0}}, "fbank", "teacher")
    assert nothing == {"fbank": None, "teacher": None} and all_out == ["ks"]


def test_metrics_are_mapped_to_higher_is_better_percent():
    assert higher_is_better_percent("pr", 0.25) == pytest.approx(75.0)
    assert higher_is_better_percent("asr", 1.0) == pytest.approx(0.0)
    assert higher_is_better_percent("ks", 0.5) == pytest.approx(50.0)


def test_protocol_margin_is_the_difference_in_pooled_seed_sds():
    teacher = {"ks": [80.0, 82.0, 84.0], "sid": [30.0, 31.0, 32.0]}
    control = {"ks": [50.0, 51.0, 52.0], "sid": [30.0, 32.0, 31.0]}
    margins = protocol_margins(teacher, control)
    pooled = math.sqrt((statistics.variance(teacher["ks"]) + statistics.variance(control["ks"])) / 2)
    assert margins["ks"]["margin_in_sd"] == pytest.approx((82.0 - 51.0) / pooled)
    assert margins["ks"]["verdict"] == "passes"
    assert margins["sid"]["margin_in_sd"] == pytest.approx(0.0) and margins["sid"]["verdict"] == "fails"
    few = protocol_margins({"ks": [80.0, 81.0]}, {"ks": [50.0, 52.0]})
    assert few["ks"]["verdict"].startswith("not assessed") and few["ks"]["margin_in_sd"] is not None
    single = protocol_margins({"ks": [80.0]}, {"ks": [50.0]})
    assert single["ks"]["margin_in_sd"] is None and single["ks"]["difference"] == pytest.approx(30.0)


def test_summary_has_no_sd_with_one_seed():
    assert summarise([0.5]) == {"values": [0.5], "mean": 0.5, "sd": None}
    assert summarise([0.4, 0.6])["sd"] == pytest.approx(statistics.stdev([0.4, 0.6]))


def test_settings_file_replaces_preset_keys_and_unknown_keys_are_errors(tmp_path):
    good = tmp_path / "bench.yaml"
    good.write_text("seeds: [4, 5]\nsuperb_steps: 7\n")
    settings = load_settings("tiny", good)
    assert settings.seeds == [4, 5] and settings.superb_steps == 7
    assert settings.student_steps == PRESETS["tiny"].student_steps
    bad = tmp_path / "typo.yaml"
    bad.write_text("seed: [4]\n")
    with pytest.raises(Exception, match="seed"):
        load_settings("tiny", bad)
    typo = tmp_path / "task.yaml"
    typo.write_text("tasks: [ks, kws]\n")
    with pytest.raises(Exception, match=r"task\.yaml\): tasks\.1"):
        load_settings("tiny", typo)
    with pytest.raises(UserError, match="nothing.yaml"):
        load_settings("tiny", tmp_path / "nothing.yaml")
    with pytest.raises(UserError, match="--preset"):
        load_settings("huge")
    assert len(PRESETS["full"].protocol_seeds) >= 3  # the protocol's minimum for teacher and control
    assert isinstance(PRESETS["full"], BenchSettings)


def test_a_resumed_run_may_change_superb_settings_but_not_its_trained_stages(tmp_path):
    """Task steps, seeds or tasks may change between invocations (the students are reused; other SUPERB settings get
    their own experiment directory, the earlier one stays); data, teacher or student settings may not."""
    tiny = PRESETS["tiny"]
    _record_settings(tmp_path, tiny, seed=0)
    first = superb_root(tmp_path, tiny)
    longer = tiny.model_copy(update={"superb_steps": 50, "seeds": [1, 2, 3], "tasks": ["pr"]})
    _record_settings(tmp_path, longer, seed=0)
    second = superb_root(tmp_path, longer)
    assert first != second and first.is_dir() and second.is_dir()
    assert json.loads((second / "settings.json").read_text())["superb_steps"] == 50
    assert superb_root(tmp_path, tiny.model_copy(update={"seeds": [7], "jobs": 1})) == first
    assert json.loads((tmp_path / "bench_settings.json").read_text())["superb_steps"] == 50
    for change in ({"student_steps": 9}, {"teacher_steps": 9}, {"student_lr": 1.0}):
        with pytest.raises(UserError, match=f"{next(iter(change))}: .* there, .* now"):
            _record_settings(tmp_path, tiny.model_copy(update=change), seed=0)
    with pytest.raises(UserError, match="seed: 0 there, 1 now"):
        _record_settings(tmp_path, tiny, seed=1)


def test_low_resource_split_keeps_a_tenth_of_pr_training_utterances(tmp_path):
    data = tmp_path / "data"
    for speaker in range(2):
        folder = data / "LibriSpeech" / "train-clean-100" / str(speaker) / "1"
        folder.mkdir(parents=True)
        lines = []
        for index in range(10):
            stem = f"{speaker}-1-{index:04d}"
            (folder / f"{stem}.flac").write_bytes(b"")
            lines.append(f"{stem} WORD{index}")
        (folder / f"{speaker}-1.trans.txt").write_text("\n".join(lines) + "\n")
    for split in ("dev-clean", "test-clean"):
        (data / "LibriSpeech" / split).mkdir(parents=True)
    (data / "pr").mkdir()
    root = low_resource_data(data, tmp_path / "low", 0.1)
    kept = sorted(p.name for p in (root / "LibriSpeech" / "train-clean-100").rglob("*.flac"))
    assert kept == ["0-1-0000.flac", "1-1-0000.flac"]  # every 10th of the 20, in sorted order
    transcript = (root / "LibriSpeech" / "train-clean-100" / "1" / "1" / "1-1.trans.txt").read_text()
    assert transcript.splitlines() == ["1-1-0000 WORD0"]
    assert (root / "LibriSpeech" / "test-clean").resolve() == (data / "LibriSpeech" / "test-clean").resolve()
    assert (root / "pr").resolve() == (data / "pr").resolve()
    with pytest.raises(UserError, match="no .flac"):
        low_resource_data(tmp_path / "empty", tmp_path / "low2", 0.1)


def test_the_chart_gives_each_of_the_benchs_twelve_rows_its_own_colour():
    import matplotlib.pyplot as plt

    from s3prl_distill.downstream_recipes.superb.report import chart_figure

    rows = [{"label": f"row {i}", "upstream": "fbank", "tasks": {"ks": {"value": 0.05 * i}}} for i in range(12)]
    figure = chart_figure(rows)
    colours = {tuple(bar.get_facecolor()) for bar in figure.axes[0].containers[0]}
    plt.close(figure)
    assert len(colours) == 12
