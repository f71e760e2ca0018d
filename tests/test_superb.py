"""`s3prl-distill superb` / `superb-report` / `submit` on a generated tiny mini-SUPERB, through s3prl's runner."""

import json
import math
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

from s3prl_distill.downstream_recipes.superb import prepare
from s3prl_distill.downstream_recipes.superb.tasks import TASKS, data_values, parse_settings, render_config

from helpers import run_python

COMMAND = str(Path(sys.executable).parent / "s3prl-distill")
# SUPERB's ASR head (2 x BLSTM 1024) takes minutes per step on a CPU; the smoke runs use a small one.
SMALL_HEADS = ["asr:downstream_expert.modelrc.project_dim=64", "asr:downstream_expert.modelrc.RNNs.dim=[64,64]"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("minisuperb") / "data"
    result = run_python([COMMAND, "mini-superb", str(root), "--size", "tiny"])
    assert result.returncode == 0, result.stderr[-2000:]
    return root


def superb(args, cwd):
    return run_python([COMMAND, "superb", *args], cwd=cwd, timeout=1500)


@pytest.fixture(scope="module")
def sweeps(data_root, session_distiller_ckpt, tmp_path_factory):
    """Both upstreams over all five tasks (ER: 5 folds), 2 steps each."""
    exproot = tmp_path_factory.mktemp("superb")
    common = ["--data-root", str(data_root), "-p", str(exproot), "--steps", "2", "--num-workers", "0",
              "--set", *SMALL_HEADS]
    ours = superb(["-u", "distilhubert_local", "-k", str(session_distiller_ckpt), "-n", "distilhubert", *common],
                  exproot)
    assert ours.returncode == 0, ours.stdout[-2000:] + ours.stderr[-3000:]
    fbank = superb(["-u", "fbank", "-n", "fbank", "--jobs", "2", *common], exproot)  # two experiments at a time
    assert fbank.returncode == 0, fbank.stdout[-2000:] + fbank.stderr[-3000:]
    return exproot, common


@pytest.mark.slow
def test_all_five_tasks_produce_finite_metrics_and_a_table(sweeps):
    exproot, _ = sweeps
    for name, params in (("distilhubert", True), ("fbank", False)):
        results = json.loads((exproot / name / "results.json").read_text())
        assert set(results["tasks"]) == {"pr", "asr", "ks", "sid", "er"}
        for task, entry in results["tasks"].items():
            assert math.isfinite(entry["value"]) and 0.0 <= entry["value"] <= 5.0, (name, task)
        assert sorted(results["tasks"]["er"]["folds"]) == [f"fold{i}" for i in range(1, 6)]
        assert (results["parameters"] > 0) == params
        table = (exproot / name / "results.md").read_text().splitlines()
        assert table[2].startswith("| upstream | params (M) | PR PER % ↓ | ASR WER % ↓ | KS acc % ↑ |")
        assert len(table) == 5 and "–" not in table[4]
        assert (exproot / name / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for expdir in ("pr", "asr", "ks", "sid", "er_fold3"):  # s3prl's own files, evaluated on test
            assert (exproot / name / expdir / "evaluate.log").is_file()


@pytest.mark.slow
def test_fold_selection_and_its_errors(data_root, tmp_path):
    common = ["-u", "fbank", "--data-root", str(data_root), "-p", str(tmp_path), "--steps", "1", "--num-workers", "0"]
    result = superb([*common, "-n", "er2", "--tasks", "er", "--folds", "fold2"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "er2" / "results.json").read_text())
    assert list(results["tasks"]["er"]["folds"]) == ["fold2"]
    assert sorted(p.name for p in (tmp_path / "er2").iterdir() if p.is_dir()) == ["er_fold2"]
    result = superb([*common, "-n", "bad", "--tasks", "er", "--folds", "fold9"], tmp_path)
    assert result.returncode != 0 and "folds ['fold9']: choose from ['fold1'," in result.stderr


@pytest.mark.slow
def test_rerun_skips_finished_tasks_and_resumes_interrupted_training(sweeps, session_distiller_ckpt):
    exproot, common = sweeps
    before = json.loads((exproot / "distilhubert" / "results.json").read_text())
    ks = exproot / "distilhubert" / "ks"
    (ks / "done.json").unlink()
    (ks / "train.done").unlink()  # as if killed after its checkpoint was written
    result = superb(["-u", "distilhubert_local", "-k", str(session_distiller_ckpt), "-n", "distilhubert", *common],
                    exproot)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "-m train -e " in (ks / "train.log").read_text()  # resumed through s3prl's -e, not restarted
    after = json.loads((exproot / "distilhubert" / "results.json").read_text())
    for task in ("pr", "asr", "sid", "er"):
        assert after["tasks"][task]["value"] == before["tasks"][task]["value"]


@pytest.mark.slow
def test_report_combines_runs(sweeps, tmp_path):
    exproot, _ = sweeps
    result = run_python([COMMAND, "superb-report", str(exproot / "distilhubert"), str(exproot / "fbank"),
                         "-o", str(tmp_path)])
    assert result.returncode == 0, result.stderr[-2000:]
    rows = (tmp_path / "results.md").read_text().splitlines()[4:]
    assert [row.split("|")[1].strip() for row in rows] == ["distilhubert_local", "fbank"]
    assert (tmp_path / "results.png").is_file()


@pytest.mark.slow
def test_submit_builds_the_leaderboard_zip(sweeps, tmp_path):
    exproot, _ = sweeps
    result = run_python([COMMAND, "submit", str(exproot / "distilhubert"), "-o", str(tmp_path), "--seconds", "1"])
    assert result.returncode == 0, result.stderr[-2000:]
    with zipfile.ZipFile(tmp_path / "predict.zip") as archive:
        names = sorted(archive.namelist())
        expected = sorted(["predict/pr_public/predict.ark", "predict/asr_public/predict.ark",
                           "predict/ks_public/predict.txt", "predict/sid_public/predict.txt"]
                          + [f"predict/er_fold{i}_public/predict.txt" for i in range(1, 6)])
        assert names == expected
        run = exproot / "distilhubert"
        sources = {"predict/pr_public/predict.ark": run / "pr" / "test-hyp.ark",
                   "predict/asr_public/predict.ark": run / "asr" / "test-clean-noLM-hyp.ark",
                   "predict/ks_public/predict.txt": run / "ks" / "test_predict.txt",
                   "predict/sid_public/predict.txt": run / "sid" / "test_predict.txt",
                   "predict/er_fold2_public/predict.txt": run / "er_fold2" / "test_fold2_predict.txt"}
        for name, source in sources.items():
            assert archive.read(name) == source.read_bytes(), name
    figures = json.loads((tmp_path / "efficiency.json").read_text())
    assert figures["parameters"] > 0 and figures["macs"]["1s"] > 0


def test_superb_prepare_checks_a_complete_data_root(data_root, tmp_path):
    result = run_python([COMMAND, "superb-prepare", "--data-root", str(data_root)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"iemocap_meta"' in result.stdout and '"lexicon"' in result.stdout
    broken = tmp_path / "root"
    (broken / "speech_commands" / "train").mkdir(parents=True)
    (broken / "speech_commands" / "test").mkdir()
    result = run_python([COMMAND, "superb-prepare", "--data-root", str(broken), "--tasks", "ks"])
    assert result.returncode != 0 and "no " + str(broken / "speech_commands" / "train" / "yes") in result.stderr


def test_data_root_errors_name_the_missing_piece(tmp_path):
    (tmp_path / "LibriSpeech" / "train-clean-100").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"LibriSpeech split dev-clean: .*dev-clean does not exist"):
        data_values(tmp_path, ["asr"], 0)
    with pytest.raises(FileNotFoundError, match="Speech Commands training set"):
        data_values(tmp_path, ["ks"], 0)


def test_render_config_fills_paths_and_settings(data_root):
    values = data_values(data_root, list(TASKS), 2)
    config = render_config(TASKS["er"], values, "fold3", steps=5, learning_rate=1e-3,
                           settings=parse_settings(["er:downstream_expert.modelrc.projector_dim=32"])["er"])
    datarc = config["downstream_expert"]["datarc"]
    assert datarc["test_fold"] == "fold3" and datarc["root"] == str(data_root.resolve() / "IEMOCAP")
    assert config["runner"]["total_steps"] == config["runner"]["eval_step"] == 5 and config["optimizer"]["lr"] == 1e-3
    assert config["downstream_expert"]["modelrc"]["projector_dim"] == 32
    assert render_config(TASKS["pr"], values)["downstream_expert"]["corpus"]["lexicon"] == values["lexicon"]
    with pytest.raises(KeyError, match="no such key"):
        render_config(TASKS["ks"], values, settings=[(["runner", "totl_steps"], 1)])
    with pytest.raises(ValueError, match="TASK:dotted.key=VALUE"):
        parse_settings(["nope:runner.total_steps=1"])


def test_iemocap_meta_data_from_label_files(tmp_path):
    emotions = {"neu": "neu", "exc": "hap", "ang": "ang", "sad": "sad", "fru": None}
    for session in range(1, 6):
        labels = tmp_path / f"Session{session}" / "dialog" / "EmoEvaluation"
        labels.mkdir(parents=True)
        lines = []
        for index, emotion in enumerate(emotions):
            utterance = f"Ses0{session}F_impro01_{'FM'[index % 2]}00{index}"
            wav = tmp_path / f"Session{session}" / "sentences" / "wav" / f"Ses0{session}F_impro01" / f"{utterance}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(wav, np.zeros(1600, dtype=np.float32), 16000)
            lines.append(f"[1.0 - 2.0]\t{utterance}\t{emotion}\t[2.5, 2.5, 2.5]")
        (labels / f"Ses0{session}F_impro01.txt").write_text("% header\n" + "\n".join(lines) + "\n")
    output = prepare.iemocap_meta_data(tmp_path)
    test = json.loads((output / "Session2" / "test_meta_data.json").read_text())
    train = json.loads((output / "Session2" / "train_meta_data.json").read_text())
    assert test["labels"] == {"neu": 0, "hap": 1, "ang": 2, "sad": 3}
    assert [item["label"] for item in test["meta_data"]] == ["neu", "hap", "ang", "sad"]  # exc -> hap, fru dropped
    assert len(train["meta_data"]) == 16 and all(not i["path"].startswith("Session2/") for i in train["meta_data"])
    assert test["meta_data"][1]["speaker"] == "Ses02M"
    (tmp_path / "Session3" / "sentences" / "wav" / "Ses03F_impro01" / "Ses03F_impro01_F000.wav").unlink()
    with pytest.raises(prepare.LayoutError, match="lists Ses03F_impro01_F000, but .* does not exist"):
        prepare.iemocap_meta_data(tmp_path)


def test_voxceleb1_and_speech_commands_checks(data_root, tmp_path):
    vox = data_root / "VoxCeleb1"
    assert prepare.check_voxceleb1(vox) == vox / "veri_test_class.txt"
    bad = tmp_path / "iden_split.txt"
    bad.write_text("1 id10001/missing/00001.wav\n")
    with pytest.raises(prepare.LayoutError, match="iden_split.txt:1: id10001/missing/00001.wav is in neither"):
        prepare.check_voxceleb1(vox, bad)
    prepare.check_speech_commands(data_root / "speech_commands")
    (data_root / "speech_commands" / "test" / "maybe").mkdir()
    try:
        with pytest.raises(prepare.LayoutError, match="test folder .*maybe is not one of s3prl's classes"):
            prepare.check_speech_commands(data_root / "speech_commands")
    finally:
        (data_root / "speech_commands" / "test" / "maybe").rmdir()
