"""`s3prl-distill superb` / `superb-report` / `submit` on a generated tiny mini-SUPERB, through s3prl's runner."""

import dataclasses
import json
import math
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

from s3prl_distill.downstream_recipes.superb import prepare, runner
from s3prl_distill.errors import ConfigError
from s3prl_distill.downstream_recipes.superb.tasks import CONFIG_DIR, TASKS, data_values, parse_settings, render_config

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
    """Our upstream over all five tasks (ER: 5 folds), fbank over two of them two at a time; 2 steps each."""
    exproot = tmp_path_factory.mktemp("superb")
    common = ["--data-root", str(data_root), "-p", str(exproot), "--steps", "2", "--num-workers", "0",
              "--set", *SMALL_HEADS]
    ours = superb(["-u", "distilhubert_local", "-k", str(session_distiller_ckpt), "-n", "distilhubert", *common],
                  exproot)
    assert ours.returncode == 0, ours.stdout[-2000:] + ours.stderr[-3000:]
    fbank = superb(["-u", "fbank", "-n", "fbank", "--jobs", "2", "--tasks", "pr,ks", *common], exproot)
    assert fbank.returncode == 0, fbank.stdout[-2000:] + fbank.stderr[-3000:]
    return exproot, common


@pytest.mark.slow
def test_all_five_tasks_produce_finite_metrics_and_a_table(sweeps):
    exproot, _ = sweeps
    for name, params, tasks in (("distilhubert", True, {"pr", "asr", "ks", "sid", "er"}),
                                ("fbank", False, {"pr", "ks"})):
        results = json.loads((exproot / name / "results.json").read_text())
        assert set(results["tasks"]) == tasks
        for task, entry in results["tasks"].items():
            assert math.isfinite(entry["value"]) and 0.0 <= entry["value"] <= 5.0, (name, task)
        assert (results["parameters"] > 0) == params
        table = (exproot / name / "results.md").read_text().splitlines()
        columns = {"pr": "PR PER % ↓", "asr": "ASR WER % ↓", "ks": "KS acc % ↑", "sid": "SID acc % ↑",
                   "er": "ER acc % ↑"}
        assert table[2].startswith("| upstream | params (M) | " + " | ".join(
            column for task, column in columns.items() if task in tasks) + " |"), table[2]
        assert len(table) == 5 and "–" not in table[4]
        assert (exproot / name / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for task in tasks:  # s3prl's own files: trained, then evaluated on test, each phase in its own log
            expdir = exproot / name / ("er_fold3" if task == "er" else task)
            assert "-m train -u " in (expdir / "train.log").read_text()
            evaluate_log = (expdir / "evaluate.log").read_text()
            assert evaluate_log.startswith(f"$ {sys.executable} -m s3prl.run_downstream -m evaluate -e {expdir}/")
            assert "overall:" not in evaluate_log  # no training output in the evaluation's log
    folds = json.loads((exproot / "distilhubert" / "results.json").read_text())["tasks"]["er"]["folds"]
    assert sorted(folds) == [f"fold{i}" for i in range(1, 6)]


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
    with pytest.raises(ConfigError, match="no such key"):
        render_config(TASKS["ks"], values, settings=[(["runner", "totl_steps"], 1)])
    with pytest.raises(ConfigError, match="TASK:dotted.key=VALUE"):
        parse_settings(["nope:runner.total_steps=1"])
    with pytest.raises(ConfigError, match=r"--set 'ks:optimizer.lr=\[1': the value is not YAML"):
        parse_settings(["ks:optimizer.lr=[1"])


@pytest.mark.parametrize("item, message", [("ks:runner.totl_steps=1", "ks:runner.totl_steps: no such key"),
                                           ("ks:optimizer.lr=[1", "the value is not YAML"),
                                           ("runner.total_steps=1", "expected TASK:dotted.key=VALUE")])
def test_a_bad_set_stops_the_sweep_before_any_run_with_its_message(item, message, data_root, tmp_path):
    result = run_python([COMMAND, "superb", "-u", "fbank", "--data-root", str(data_root), "-p", str(tmp_path),
                         "-n", "bad", "--tasks", "pr,ks", "--set", item], timeout=300)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not any(path.name.startswith(("pr", "ks")) for path in (tmp_path / "bad").glob("*"))


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


def superb_config(args, capsys):
    """``s3prl-distill superb-config ARGS`` in this process: (exit status, stdout, stderr)."""
    from s3prl_distill.cli import main

    try:
        main(["superb-config", *args])
        status = 0
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def filled_slots(template, config):
    """``(placeholder name, value)`` for each ``${name}`` of ``template``, read from the same place in ``config``."""
    if isinstance(template, dict):
        return [slot for key in template for slot in filled_slots(template[key], config[key])]
    if isinstance(template, list):
        return [slot for item, value in zip(template, config) for slot in filled_slots(item, value)]
    return [(template[2:-1], config)] if isinstance(template, str) and template.startswith("${") else []


@pytest.mark.parametrize("key", list(TASKS))
def test_superb_config_writes_what_a_sweep_runs_and_s3prl_reads_it(key, data_root, tmp_path, capsys, monkeypatch):
    import importlib

    import yaml

    import s3prl_distill

    output = tmp_path / "configs" / f"{key}.yaml"
    small = [item.partition(":")[2] for item in SMALL_HEADS] if key == "asr" else []
    fold = ["--fold", "4"] if key == "er" else []
    status, out, err = superb_config([key, "--data-root", str(data_root), "-o", str(output), "--num-workers", "0",
                                      "--device", "cpu", "-u", "fbank", *fold, "--set", *small], capsys)
    assert status == 0, err
    text = output.read_text()
    assert "${" not in text
    config = yaml.safe_load(text)
    # The sweep's own rendering of the same experiment, value for value.
    expected = render_config(TASKS[key], data_values(data_root, [key], 0), "fold4" if key == "er" else None,
                             settings=parse_settings([f"{key}:{item}" for item in small]).get(key))
    assert config == expected
    # Every placeholder became a value; those that name files name existing ones.
    template = yaml.safe_load((CONFIG_DIR / f"{key}.yaml").read_text())
    slots = dict(filled_slots(template, config))
    assert slots["num_workers"] == 0 and slots.get("fold", "fold4") == "fold4"
    paths = [path for name, value in slots.items() if name not in ("num_workers", "fold")
             for path in (value if isinstance(value, list) else [value])]
    assert paths and all(Path(path).is_absolute() and Path(path).exists() for path in paths), paths
    downstream = TASKS[key].downstream
    assert f"-u fbank -d {downstream} -c {output} -p " in out and f"-t {TASKS[key].evaluate_split} " in out
    assert ("mean of 5 folds" in out) == (key == "er")

    # s3prl's runner builds the task's expert from exactly this config: its datasets must find every file.
    s3prl_distill.register()  # PR's corpus module (PyPI s3prl lacks it)
    import s3prl.downstream.voxceleb1.dataset as voxceleb1

    monkeypatch.setattr(voxceleb1, "CACHE_PATH", str(tmp_path / "sid-cache") + "/")
    expert = importlib.import_module(f"s3prl.downstream.{downstream}.expert").DownstreamExpert
    model = expert(upstream_dim=8, upstream_rate=320, **config, expdir=str(tmp_path / "exp"), downstream=downstream)
    for split in ("train", TASKS[key].evaluate_split):
        if key == "pr":  # s3prl's PR loader pops num_workers from the config on first use (then uses 12)
            model.corpus["num_workers"] = 0
        loader = model.get_dataloader(split)
        assert len(loader.dataset) > 0 and next(iter(loader)) is not None


def test_superb_config_refuses_bad_input_naming_it(data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key, missing in [("er", "IEMOCAP"), ("ks", "speech_commands/train"), ("sid", "VoxCeleb1"),
                         ("pr", "LibriSpeech"), ("asr", "LibriSpeech")]:
        status, _, err = superb_config([key, "--data-root", str(tmp_path)], capsys)
        assert status == 2 and f"{tmp_path / missing} does not exist" in err, err
    assert not list(tmp_path.glob("*.yaml"))
    # A data root with LibriSpeech but no lexicon: a user error naming the folder, not a traceback.
    (tmp_path / "pr").mkdir()
    for split in ("train-clean-100", "dev-clean", "test-clean"):
        (tmp_path / "LibriSpeech" / split).mkdir(parents=True)
    status, _, err = superb_config(["pr", "--data-root", str(tmp_path)], capsys)
    assert status == 2 and f"no lexicon*.txt in {tmp_path / 'pr'}" in err
    good = ["--data-root", str(data_root), "--device", "cpu"]
    for args, message in [(["ks", "--fold", "2"], "--fold 2: ks has no folds"),
                          (["er", "--fold", "6"], "--fold 6: er has folds fold1..fold5"),
                          (["ks", "--set", "runner.totl_steps=1"], "no such key in the ks config"),
                          (["ks", "--set", "runner.total_steps"], "expected dotted.key=VALUE")]:
        status, _, err = superb_config([*args, *good], capsys)
        assert status == 2 and message in err, err
    assert not list(tmp_path.glob("*.yaml"))
    status, out, _ = superb_config(["er", *good, "--steps", "7"], capsys)
    written = tmp_path / "superb_er_fold1.yaml"  # the default name, in the current folder
    assert status == 0 and f"-c {written} " in out
    assert "test_fold: fold1" in written.read_text() and "total_steps: 7" in written.read_text()
    written.write_text("mine")
    status, _, err = superb_config(["er", *good], capsys)
    assert status == 2 and "superb_er_fold1.yaml exists; pass --force" in err and written.read_text() == "mine"
    assert superb_config(["er", *good, "--force"], capsys)[0] == 0 and "test_fold: fold1" in written.read_text()


def test_superb_config_writes_the_file_a_sweep_gives_s3prl(data_root, tmp_path, capsys, monkeypatch):
    from s3prl_distill.downstream_recipes.superb import runner

    def stop(plan, logs, environment=None, on_step=None, on_trained=None, server=None):
        raise InterruptedError(plan["train"])

    monkeypatch.setattr(runner, "run_experiment_process", stop)  # the sweep stops where s3prl's runner would start
    spec = runner.SweepSpec(upstream="fbank", data_root=str(data_root), name="one", tasks=["er"], steps=3,
                            num_workers=0, settings=["er:optimizer.lr=0.01"])
    with pytest.raises(InterruptedError) as started:
        runner.run_unit(spec, TASKS["er"], "fold2", data_values(data_root, ["er"], 0), tmp_path / "sweep")
    assert str(tmp_path / "sweep" / "config.yaml") in started.value.args[0]
    mine = tmp_path / "mine.yaml"
    status, _, err = superb_config(["er", "--data-root", str(data_root), "--fold", "2", "--steps", "3", "-o",
                                    str(mine), "--num-workers", "0", "--set", "optimizer.lr=0.01", "--device", "cpu"],
                                   capsys)
    assert status == 0, err
    assert mine.read_text() == (tmp_path / "sweep" / "config.yaml").read_text()


def test_report_notes_follow_the_table(tmp_path):
    from s3prl_distill.downstream_recipes.superb.report import write_report

    results = [{"label": "a", "upstream": "a", "parameters": 2_000_000, "tasks": {"ks": {"value": 0.5}}},
               {"label": "b", "upstream": "b", "parameters": None, "tasks": {"ks": {"value": 0.25}}}]
    paths = write_report(results, tmp_path, title="t", extra_columns={"time / a": ["1.00", "0.50 (0.40–0.60)"]},
                         notes=["How the time was measured.", "Where.\n"])
    lines = paths["markdown"].read_text().splitlines()
    assert lines[:2] == ["# t", ""]
    assert lines[4].split("|")[1:-1] == [" a ", " 2.00 ", " 50.00 ", " 1.00 "]
    assert lines[5].split("|")[-2] == " 0.50 (0.40–0.60) "
    assert lines[6:] == ["", "How the time was measured.", "", "Where."]


def test_a_downstream_seed_reaches_s3prl_and_another_seed_is_another_sweep(data_root, tmp_path, monkeypatch):
    from s3prl_distill.downstream_recipes.superb import runner

    def stop(plan, logs, environment=None, on_step=None, on_trained=None, server=None):
        raise InterruptedError(plan["train"])

    monkeypatch.setattr(runner, "run_experiment_process", stop)
    spec = runner.SweepSpec(upstream="fbank", data_root=str(data_root), name="seeded", tasks=["ks"], steps=3,
                            num_workers=0, seed=7, exproot=str(tmp_path))
    with pytest.raises(InterruptedError) as started:
        runner.run_unit(spec, TASKS["ks"], None, data_values(data_root, ["ks"], 0), tmp_path / "seeded" / "ks")
    arguments = started.value.args[0]
    assert arguments[arguments.index("--seed") + 1] == "7"
    (tmp_path / "seeded" / "sweep.json").write_text(json.dumps(dataclasses.asdict(spec)))
    with pytest.raises(runner.SweepExistsError, match="seed: 7 there, 8 now"):
        runner.check_same_sweep(dataclasses.replace(spec, seed=8), tmp_path / "seeded")
    runner.check_same_sweep(spec, tmp_path / "seeded")  # the same seed is the same sweep


@pytest.mark.parametrize("seed, settings, warned", [(7, [], True), (None, [], False),
                                                    (7, ["er:runner.eval_step=1"], False)])
def test_an_er_seed_that_cannot_change_the_training_is_named_before_any_run(seed, settings, warned, data_root,
                                                                          tmp_path, monkeypatch, caplog):
    """s3prl's emotion expert seeds torch with 0 before its split: with evaluation only at the end, --seed does
    not reach ER's training, and a seed sweep would report a spread of zero without saying why."""
    monkeypatch.setattr(runner, "_run_plans", lambda plans, jobs, desc: [run_dir for _, _, run_dir, _ in plans])
    spec = runner.SweepSpec(upstream="fbank", data_root=str(data_root), name="er_seed", tasks=["er"], steps=3,
                            exproot=str(tmp_path), seed=seed, settings=settings)
    with caplog.at_level("WARNING", logger=runner.__name__):
        runner.run_sweeps([spec])
    named = [r.getMessage() for r in caplog.records if "will not depend on --seed" in r.getMessage()]
    assert len(named) == int(warned)
    if warned:
        assert "er_seed: ER evaluates only at step 3" in named[0] and "--set er:runner.eval_step=1" in named[0]


def test_the_superb_command_passes_its_seed_to_the_sweep(data_root, tmp_path):
    """--seed is part of what a run directory holds: the same -n with another seed is refused before any run."""
    (tmp_path / "seeded").mkdir()
    spec = runner.SweepSpec(upstream="fbank", data_root=str(data_root), name="seeded", tasks=["ks"], seed=7)
    (tmp_path / "seeded" / "sweep.json").write_text(json.dumps(dataclasses.asdict(spec)))
    result = run_python([COMMAND, "superb", "-u", "fbank", "--data-root", str(data_root), "-p", str(tmp_path),
                         "-n", "seeded", "--tasks", "ks", "--steps", "1", "--seed", "8"], timeout=300)
    assert result.returncode == 2 and "seed: 7 there, 8 now" in result.stderr, result.stderr
    assert not (tmp_path / "seeded" / "ks").exists()


@pytest.fixture
def ks_unit(data_root, tmp_path, monkeypatch):
    """A KS unit of an fbank sweep whose run_unit stops where s3prl's runner would start: (run it, its folder, the
    plans s3prl would have been given)."""
    from s3prl_distill.downstream_recipes.superb import runner

    plans = []

    def stop(plan, logs, environment=None, on_step=None, on_trained=None, server=None):
        plans.append(plan)
        raise InterruptedError

    monkeypatch.setattr(runner, "run_experiment_process", stop)
    spec = runner.SweepSpec(upstream="fbank", data_root=str(data_root), name="cut", tasks=["ks"], steps=3,
                            num_workers=0)
    unit, values = tmp_path / "cut" / "ks", data_values(data_root, ["ks"], 0)
    unit.mkdir(parents=True)
    return (lambda: runner.run_unit(spec, TASKS["ks"], None, values, unit)), unit, plans


def test_an_unreadable_done_json_is_evaluated_again(ks_unit, caplog):
    """A done.json cut short (by a kill, before it was written atomically) is no result: the unit runs its evaluation
    again, without training again, rather than stopping the sweep with a JSON traceback."""
    run_unit, unit, plans = ks_unit
    (unit / "train.done").write_text("")
    (unit / "done.json").write_text('{"task": "ks", "val')
    with pytest.raises(InterruptedError):
        run_unit()
    assert plans[0]["train"] is None and plans[0]["expdir"] == str(unit)  # evaluation only
    assert f"{unit / 'done.json'} is unreadable" in caplog.text
    (unit / "done.json").write_text(json.dumps({"task": "ks", "value": 0.5}))
    assert run_unit() == {"task": "ks", "value": 0.5}
    assert len(plans) == 1


def test_a_checkpoint_cut_short_by_s3prl_is_set_aside_and_the_unit_resumes_or_restarts(ks_unit, caplog):
    """s3prl's runner writes its checkpoints in place after deleting the older ones: a sweep stopped mid-write leaves
    a cut file. The unit resumes from the newest whole checkpoint, or trains from the start, instead of resuming
    from the cut one (which would fail on every rerun)."""
    import torch

    run_unit, unit, plans = ks_unit
    torch.save({"Step": 50}, unit / "states-50.ckpt")
    torch.save({"Step": 100}, unit / "states-100.ckpt")
    whole = (unit / "states-100.ckpt").read_bytes()
    (unit / "states-100.ckpt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InterruptedError):
        run_unit()
    assert plans[-1]["train"][:4] == ["-m", "train", "-e", str(unit / "states-50.ckpt")]
    assert (unit / "states-100.ckpt.unreadable").read_bytes() == whole[: len(whole) // 2]
    assert "states-100.ckpt is cut short" in caplog.text and "resuming from the one before it" in caplog.text

    (unit / "states-50.ckpt").write_bytes(b"PK\x03\x04 cut")  # the only one left, cut too
    with pytest.raises(InterruptedError):
        run_unit()
    assert "-e" not in plans[-1]["train"] and "-u" in plans[-1]["train"]  # from the start
    assert "training this task from the start" in caplog.text
    assert sorted(path.name for path in unit.glob("states-*")) == ["states-100.ckpt.unreadable",
                                                                     "states-50.ckpt.unreadable"]
