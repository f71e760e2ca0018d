"""The bench's table arithmetic and inputs, without training anything: SUPERB's score, the protocol's margins, the
settings' validation and the low-resource PR split. (The bench end to end: tests/test_demo.py.)"""

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

from s3prl_distill.downstream_recipes.bench import (PRESETS, BenchSettings, _record_settings, load_settings,
                                                    low_resource_data, selected_rows, superb_root)
from s3prl_distill.downstream_recipes.bench_report import (PROTOCOL_ROWS, ROW_KEYS, STUDENT_KEYS,
                                                           higher_is_better_percent, merge_benches, protocol_margins,
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


def test_rows_are_chosen_by_key_in_the_tables_order_and_unknown_keys_are_errors():
    assert selected_rows(None) == ROW_KEYS and selected_rows([]) == ROW_KEYS
    assert selected_rows(["fbank", "random_teacher", "teacher"]) == PROTOCOL_ROWS
    assert selected_rows(["skill", "distilhubert"]) == ("distilhubert", "skill")
    assert ROW_KEYS[2:-1] == STUDENT_KEYS
    with pytest.raises(UserError, match="--rows tacher skil: no such row; choose from teacher, random_teacher"):
        selected_rows(["teacher", "tacher", "skil"])



def _part(tmp_path, name, keys, low=None, **changes):
    """A bench.json of a run made with `--rows keys`, as bench_facts writes it (values per seed, per task)."""
    settings = PRESETS["tiny"].model_dump()
    rows = []
    for key in keys:
        index = ROW_KEYS.index(key)
        values = {"pr": [0.5 - 0.1 * index, 0.52 - 0.1 * index, 0.49 - 0.1 * index],
                  "ks": [0.2 + 0.2 * index, 0.25 + 0.2 * index, 0.22 + 0.2 * index]}
        if key == "fbank":
            values = {"pr": [0.9, 0.91, 0.89], "ks": [0.05, 0.06, 0.05]}
        rows.append({"key": key, "label": key.replace("_", " "), "upstream": "hubert_local", "ckpt": None,
                     "kind": "student", "seeds": [1, 2, 3], "parameters": 1_000_000 + index,
                     "backbone_parameters": 1_000_000, "macs_per_second_of_audio": 1e9, "time_vs_teacher": 1.0,
                     "time_cell": "1.00", "values": values})
    facts = {"preset": "full", "seed": 0, "settings": settings, "command": ["s3prl-distill", "bench", name],
             "commit": "abc", "data_digest": "d" * 64, "teacher_sha256": "t" * 64, "rows_selected": list(keys),
             "all_rows": False, "rows": rows, "low_resource_values": low or {},
             "sizes": {"reference_parameters": 1_000_000, "deepthin_width": 8, "fithubert_width": 8,
                       "target_sparsity": 0.4, "unpruned_parameters": 2_000_000},
             "profile": {"method": "m", "conditions": f"machine of {name}"}, "stage_seconds": {"data": 1.0},
             "parts": []}
    facts.update(changes)
    folder = tmp_path / name
    folder.mkdir()
    (folder / "bench.json").write_text(json.dumps(facts))
    return folder


def test_a_run_made_in_parts_merges_into_one_table_only_when_data_teacher_and_settings_agree(tmp_path):
    protocol = _part(tmp_path, "protocol", ["fbank", "teacher", "random_teacher"])
    students = _part(tmp_path, "students", ["teacher", "deepthin_kl0", "deepthin_kl"],
                     low={"deepthin_kl0": [0.6, 0.61, 0.62], "deepthin_kl": [0.55, 0.56, 0.57]})
    paths = merge_benches([students, protocol], tmp_path / "merged", command=["s3prl-distill", "bench-merge"])
    merged = json.loads(paths["json"].read_text())
    # the table's order, the teacher once, scores against the protocol part's fbank and teacher
    assert [row["key"] for row in merged["rows"]] == ["teacher", "random_teacher", "deepthin_kl0", "deepthin_kl",
                                                      "fbank"]
    scores = {row["key"]: row["superb_score"] for row in merged["rows"]}
    assert scores["teacher"] == pytest.approx(1000) and scores["fbank"] == pytest.approx(0)
    assert set(merged["protocol"]["margins"]) == {"pr", "ks"}
    assert merged["low_resource_pr"]["per"]["deepthin_kl"]["mean"] == pytest.approx(0.56)
    assert [part["name"] for part in merged["parts"]] == ["students", "protocol"]
    report = paths["markdown"].read_text()
    assert "Made in 2 parts" in report
    # no ASR among these rows: the report says ASR was not measured, not that it failed to learn
    assert merged["protocol"]["asr_learns"] is None and "): not measured (no teacher ASR values)." in report
    # each part timed its rows on its own machine: the note names both, not only the first part's
    assert "`CPU time / teacher`: m. Measured per part: students on machine of students; protocol on machine of " \
           "protocol." in report
    # parts timed with different round counts: each part's method is named with its machine
    rounds = _part(tmp_path, "rounds", ["teacher", "deepthin_kl0"], profile={"method": "50 rounds", "conditions": "x"})
    report = merge_benches([protocol, rounds], tmp_path / "merged_rounds", command=[])["markdown"].read_text()
    assert "`CPU time / teacher`, per part: protocol: m, on machine of protocol; rounds: 50 rounds, on x." in report
    with pytest.raises(UserError, match="already a merged table"):
        merge_benches([tmp_path / "merged", protocol], tmp_path / "again", command=[])
    # merging again replaces the earlier merge, but never a part's own record
    merge_benches([students, protocol], tmp_path / "merged", command=[])
    record = (protocol / "bench.json").read_text()
    with pytest.raises(UserError, match="--out .*protocol: holds a bench run's own bench.json"):
        merge_benches([students, protocol], protocol, command=[])
    assert (protocol / "bench.json").read_text() == record

    for name, change, message in (
            ("other_teacher", {"teacher_sha256": "x" * 64}, "teacher_sha256"),
            ("other_data", {"data_digest": "x" * 64}, "data_digest"),
            ("other_steps", {"settings": {**PRESETS["tiny"].model_dump(), "superb_steps": 9}},
             "settings.superb_steps")):
        other = _part(tmp_path, name, ["distilhubert"], **change)
        with pytest.raises(UserError, match=f"not parts of one run .*{message}"):
            merge_benches([protocol, other], tmp_path / f"merged_{name}", command=[])
    # `jobs` only changes how a part ran
    faster = _part(tmp_path, "faster", ["distilhubert"], settings={**PRESETS["tiny"].model_dump(), "jobs": 1})
    merge_benches([protocol, faster], tmp_path / "merged_jobs", command=[])
    # the same row with other results in two parts is refused
    clash = _part(tmp_path, "clash", ["fbank", "random_teacher"])
    merged_clash = json.loads((clash / "bench.json").read_text())
    merged_clash["rows"][1]["values"]["pr"][0] = 0.1
    (clash / "bench.json").write_text(json.dumps(merged_clash))
    with pytest.raises(UserError, match="row random_teacher has other results"):
        merge_benches([protocol, clash], tmp_path / "merged_clash", command=[])
    with pytest.raises(UserError, match="no bench.json"):
        merge_benches([protocol, tmp_path / "nothing"], tmp_path / "merged_none", command=[])


def test_the_bench_merge_command_prints_the_merged_table_or_names_what_differs(tmp_path):
    from helpers import run_python

    command = str(Path(sys.executable).parent / "s3prl-distill")
    protocol = _part(tmp_path, "protocol", ["fbank", "teacher", "random_teacher"])
    students = _part(tmp_path, "students", ["teacher", "distilhubert"])
    result = run_python([command, "bench-merge", str(protocol), str(students), "--out", str(tmp_path / "merged")],
                        timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| distilhubert |" in result.stdout and "Made in 2 parts" in result.stdout
    assert f"numbers: {tmp_path / 'merged' / 'bench.json'}" in result.stdout
    other = _part(tmp_path, "other", ["skill"], data_digest="x" * 64)
    result = run_python([command, "bench-merge", str(protocol), str(other), "--out", str(tmp_path / "refused")],
                        timeout=300)
    assert result.returncode == 2 and "data_digest" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "refused" / "bench.json").exists()


def test_a_teacher_from_an_earlier_run_is_copied_checked_and_recorded(tmp_path):
    """`bench --teacher CKPT` (the parts of a run on separate machines share one teacher): the stage copies it
    instead of training, records its SHA-256, refuses another architecture, and a finished stage refuses another
    teacher."""
    from s3prl_distill.checkpoint import file_sha256
    from s3prl_distill.downstream_recipes.demo import teacher_stage
    from s3prl_distill.formats.s3prl_hubert import TINY_HUBERT, write_random_hubert
    from s3prl_distill.pretrain.hubert_teacher import HubertTeacherConfig

    config = HubertTeacherConfig(model=dict(TINY_HUBERT), steps=3, batch_size=2)
    earlier = write_random_hubert(tmp_path / "earlier.ckpt", dict(TINY_HUBERT), num_labels=config.clusters, seed=5)
    missing = tmp_path / "no_such_data"  # nothing is read from the data when the teacher is given
    for run in ("run", "run2", "run3"):
        (tmp_path / run).mkdir()
    teacher, control, _ = teacher_stage(tmp_path / "run", missing, missing, config, trained=earlier)
    assert teacher.read_bytes() == earlier.read_bytes()
    assert control.is_file() and control.read_bytes() != earlier.read_bytes()
    done = json.loads((tmp_path / "run" / "stage_teacher" / "done.json").read_text())
    assert done["teacher_sha256"] == file_sha256(earlier)
    # resumed with the same teacher: nothing changes; with another one: refused, naming the digest
    assert teacher_stage(tmp_path / "run", missing, missing, config, trained=earlier)[0] == teacher
    other = write_random_hubert(tmp_path / "other.ckpt", dict(TINY_HUBERT), num_labels=config.clusters, seed=6)
    with pytest.raises(UserError, match="teacher_sha256"):
        teacher_stage(tmp_path / "run", missing, missing, config, trained=other)
    wider = write_random_hubert(tmp_path / "wider.ckpt", {**TINY_HUBERT, "encoder_embed_dim": 64},
                                num_labels=config.clusters)
    with pytest.raises(UserError, match=r"--teacher .*wider.ckpt: another architecture .*encoder_embed_dim: 64"):
        teacher_stage(tmp_path / "run2", missing, missing, config, trained=wider)
    with pytest.raises(UserError, match="--teacher .*nothing.ckpt: no such file"):
        teacher_stage(tmp_path / "run3", missing, missing, config, trained=tmp_path / "nothing.ckpt")
