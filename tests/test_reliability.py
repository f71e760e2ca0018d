"""Issue 15's promises: no code runs from a file without consent, no run loses or mixes another's work, and bad input
gets a message naming it. Malicious checkpoints are made here; their payload creates a directory, and each test
asserts that the directory never appears."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from s3prl_distill.checkpoint import (
    TRUST_ENV,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from s3prl_distill.locking import ExclusiveLock, LockedError, directory_lock
from s3prl_distill.pretrain.config import load_config

from helpers import pretrain, run_python, write_s3prl_distiller_checkpoint


class Payload:
    """Unpickling this creates ``marker``: the stand-in for code an attacker's checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


class Arbitrary:
    """A harmless class that is simply not allow-listed."""


def malicious_distiller(folder: Path) -> tuple:
    """A working s3prl distiller checkpoint that also carries the payload; returns (checkpoint, marker)."""
    marker = folder / "PAYLOAD_RAN"
    good = write_s3prl_distiller_checkpoint(folder / "good.ckpt")
    checkpoint = torch.load(good, weights_only=True)
    checkpoint["Extra"] = Payload(marker)
    path = folder / "evil.ckpt"
    torch.save(checkpoint, path)
    return path, marker


def cli(args, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return run_python(["-m", "s3prl_distill.cli", *args], cwd=cwd, **kwargs)


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Failed with a message naming each fragment, and without a Python traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


# --- 1. the opt-in ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["false", "False", "no", "OFF", " ", "0", ""])
def test_no_values_of_the_trust_variable_refuse(tmp_path, monkeypatch, value):
    path, marker = malicious_distiller(tmp_path)
    monkeypatch.setenv(TRUST_ENV, value)
    with pytest.raises(CheckpointError, match="evil.ckpt contains Python objects outside the allow-list"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("value", ["1", "true", "YES", "On"])
def test_only_an_explicit_yes_trusts(tmp_path, monkeypatch, value):
    path, marker = malicious_distiller(tmp_path)
    monkeypatch.setenv(TRUST_ENV, value)
    assert "Distiller" in load_checkpoint(path)
    assert marker.is_dir()  # consent given: the file was unpickled fully


def test_an_unclear_trust_value_is_an_error_naming_the_variable(tmp_path, monkeypatch):
    path, marker = malicious_distiller(tmp_path)
    monkeypatch.setenv(TRUST_ENV, "maybe")
    with pytest.raises(CheckpointError, match=f"{TRUST_ENV}='maybe' is not understood: use one of 1, true, yes, on"):
        load_checkpoint(path)
    assert not marker.exists()


# --- 2. s3prl's own loaders ------------------------------------------------------------------------------------------

def test_s3prl_loaders_go_through_the_safe_reader(tmp_path, monkeypatch):
    import s3prl.hub as hub

    path, marker = malicious_distiller(tmp_path)
    monkeypatch.delenv(TRUST_ENV, raising=False)
    # s3prl's distiller loader asks torch for weights_only=False.
    with pytest.raises(CheckpointError) as error:
        hub.distiller_local(ckpt=str(path))
    message = str(error.value)
    assert str(path) in message and "read by s3prl/upstream/distiller/builder.py" in message
    assert "os.makedirs" in message and TRUST_ENV in message
    assert not marker.exists()
    assert hub.distiller_local(ckpt=str(tmp_path / "good.ckpt")) is not None  # s3prl's format still loads
    monkeypatch.setenv(TRUST_ENV, "1")
    assert hub.distiller_local(ckpt=str(path)) is not None
    assert marker.is_dir()


def test_other_callers_of_torch_load_are_untouched(tmp_path):
    import s3prl.hub  # noqa: F401 (installs the guard)

    path = tmp_path / "plain.pt"
    torch.save({"a": Arbitrary()}, path)
    assert isinstance(torch.load(path, weights_only=False)["a"], Arbitrary)


def test_unmodified_s3prl_api_in_a_fresh_process_is_guarded(tmp_path):
    """With the package installed, s3prl's own S3PRLUpstream (no import of ours in the script) refuses the file."""
    path, marker = malicious_distiller(tmp_path)
    script = textwrap.dedent("""
        import sys
        from s3prl.nn import S3PRLUpstream
        try:
            S3PRLUpstream("distiller_local", path_or_url=sys.argv[1])
            print("LOADED")
        except Exception as error:
            print("REFUSED", type(error).__name__, error)
    """)
    result = run_python(["-c", script, str(path)], cwd=tmp_path, extra_env={TRUST_ENV: "false"})
    assert "REFUSED CheckpointError" in result.stdout, result.stdout + result.stderr[-2000:]
    assert not marker.exists()


def test_our_commands_never_run_a_teachers_payload(setup, tmp_path):
    path, marker = malicious_distiller(tmp_path)
    profile = cli(["profile", "-u", "distiller_local", "-k", str(path), "--seconds", "1", "--repeats", "1",
                   "--warmup", "0", "--no-memory"], cwd=tmp_path)
    assert profile.returncode != 0 and str(path) in profile.stderr and "os.makedirs" in profile.stderr
    similarity = cli(["layer-similarity", "--teacher", "distiller_local", "--ckpt", str(path), "--data",
                      str(setup["audio"]), "--output", str(tmp_path / "similarity"), "--groups", "2"], cwd=tmp_path)
    assert similarity.returncode != 0 and "os.makedirs" in similarity.stderr
    distil = pretrain(["-g", str(setup["config"]), "-n", "evil", "-p", str(tmp_path), "-o",
                       f"config.teacher.name=distiller_local,,config.teacher.ckpt={path}"], cwd=tmp_path)
    assert_clean_error(distil, str(path), "os.makedirs", TRUST_ENV)
    assert not list((tmp_path / "evil").glob("states-*.ckpt"))
    assert not marker.exists()


def test_resuming_a_finished_run_loads_nothing_and_clears_temporary_files(setup, tmp_path):
    done = pretrain(["-g", str(setup["config"]), "-n", "done", "-p", str(tmp_path), "-o",
                     "config.runner.total_steps=1,,config.runner.save_step=1"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    expdir = tmp_path / "done"
    # Its saved config now names a teacher whose file runs code when unpickled fully; consent is even given.
    path, marker = malicious_distiller(tmp_path)
    checkpoint = load_checkpoint(expdir / "states-1.ckpt")
    checkpoint["RunConfig"]["teacher"] = {"name": "distiller_local", "ckpt": str(path)}
    checkpoint["RunConfig"]["data"]["root"] = str(tmp_path / "gone")  # nor is the data read
    save_checkpoint(checkpoint, expdir / "states-1.ckpt")
    leftover = expdir / ".states-2.ckpt.k3j2h1.tmp"  # what a write killed mid-way leaves
    leftover.write_bytes(b"partial")
    resumed = pretrain(["-e", str(expdir)], cwd=tmp_path, extra_env={TRUST_ENV: "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "already finished at step 1" in resumed.stderr
    assert not marker.exists()
    assert not leftover.exists()


# --- 3. what a refusal says ------------------------------------------------------------------------------------------

def test_a_file_that_is_no_checkpoint_is_called_that(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(noise)
    assert "noise.ckpt is not a PyTorch checkpoint: it is neither a zip archive" in str(error.value)
    assert TRUST_ENV not in str(error.value)  # nothing to opt in to
    text = tmp_path / "notes.ckpt"
    text.write_text("hello\n")
    with pytest.raises(CheckpointError, match="notes.ckpt is not a PyTorch checkpoint") as error:
        load_checkpoint(text)
    assert TRUST_ENV not in str(error.value)


def test_a_refused_pickle_names_its_classes(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    path = tmp_path / "objects.ckpt"
    torch.save({"weights": torch.zeros(2), "a": Arbitrary(), "b": Payload(tmp_path / "x")}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert f"{Arbitrary.__module__}.Arbitrary" in message and "os.makedirs" in message and TRUST_ENV in message
    assert "torch._utils" not in message  # torch's own, allowed names are not blamed
    assert not (tmp_path / "x").exists()
    legacy = tmp_path / "legacy.ckpt"  # torch's pre-1.6 format: several pickles in a row
    torch.save({"a": Arbitrary()}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=f"{Arbitrary.__module__}.Arbitrary"):
        load_checkpoint(legacy)


# --- 4, 5, 6. one run per directory ----------------------------------------------------------------------------------

def test_a_new_run_refuses_another_runs_directory_and_overwrite_moves_it_aside(setup, tmp_path):
    expdir = tmp_path / "taken"
    expdir.mkdir()
    (expdir / "states-500.ckpt").write_bytes(b"another run's weights")
    (expdir / "config.yaml").write_text("the other run's config\n")
    refused = pretrain(["-g", str(setup["config"]), "-n", "taken", "-p", str(tmp_path)], cwd=tmp_path)
    assert_clean_error(refused, f"{expdir} already holds another run's checkpoints (states-500.ckpt)",
                       f"-e {expdir}", "-n NAME", "--overwrite")
    assert (expdir / "states-500.ckpt").read_bytes() == b"another run's weights"
    assert (expdir / "config.yaml").read_text() == "the other run's config\n"
    moved = pretrain(["-g", str(setup["config"]), "-n", "taken", "-p", str(tmp_path), "--overwrite", "-o",
                      "config.runner.total_steps=1,,config.runner.save_step=1"], cwd=tmp_path)
    assert moved.returncode == 0, moved.stderr[-3000:]
    [aside] = expdir.glob("superseded-*")
    assert (aside / "states-500.ckpt").read_bytes() == b"another run's weights"
    assert (aside / "config.yaml").read_text() == "the other run's config\n"
    assert (expdir / "states-1.ckpt").is_file()
    assert yaml.safe_load((expdir / "config.yaml").read_text())["runner"]["total_steps"] == 1


def test_a_new_run_refuses_a_directory_with_another_runs_metrics_and_no_checkpoint(setup, tmp_path):
    """A run that trained but died before its first checkpoint left metrics.jsonl: a new run there would drop its
    records (a new run's metrics writer keeps none), so it is another run's work like a checkpoint."""
    expdir = tmp_path / "crashed"
    expdir.mkdir()
    records = "".join(json.dumps({"step": step, "loss": 1.0 / step}) + "\n" for step in (100, 200, 300))
    (expdir / "metrics.jsonl").write_text(records)
    refused = pretrain(["-g", str(setup["config"]), "-n", "crashed", "-p", str(tmp_path)], cwd=tmp_path)
    assert_clean_error(refused, f"{expdir} already holds another run's logged metrics ({expdir / 'metrics.jsonl'}) "
                                "but no checkpoint to resume from", "-n NAME", "--overwrite")
    assert (expdir / "metrics.jsonl").read_text() == records
    moved = pretrain(["-g", str(setup["config"]), "-n", "crashed", "-p", str(tmp_path), "--overwrite", "-o",
                      "config.runner.total_steps=1,,config.runner.save_step=1"], cwd=tmp_path)
    assert moved.returncode == 0, moved.stderr[-3000:]
    [aside] = expdir.glob("superseded-*")
    assert (aside / "metrics.jsonl").read_text() == records
    # An empty metrics file (a run stopped before its first log step) holds nothing to lose.
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    fresh = pretrain(["-g", str(setup["config"]), "-n", "empty", "-p", str(tmp_path), "-o",
                      "config.runner.total_steps=1,,config.runner.save_step=1"], cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-3000:]


def test_a_second_process_on_a_locked_output_refuses_naming_the_holder(setup, tmp_path):
    me = str(os.getpid())
    with directory_lock(tmp_path / "busy", "experiment directory"):
        result = pretrain(["-g", str(setup["config"]), "-n", "busy", "-p", str(tmp_path)], cwd=tmp_path)
        assert_clean_error(result, f"{tmp_path / 'busy'} is in use by another process (PID {me}")
        assert not list((tmp_path / "busy").glob("states-*"))
        assert not (tmp_path / "busy" / "config.yaml").exists()
    cache = tmp_path / "cache"
    with ExclusiveLock(tmp_path / ".cache.lock", "teacher cache"):
        result = cli(["cache-teacher", "-g", str(setup["config"]), "--output", str(cache)], cwd=tmp_path)
        assert_clean_error(result, f"teacher cache {cache} is in use by another process (PID {me}")
    with directory_lock(tmp_path / "sweeps" / "mine", "SUPERB run directory"):
        result = cli(["superb", "-u", "fbank", "--data-root", str(tmp_path / "nodata"), "-n", "mine", "-p",
                      str(tmp_path / "sweeps"), "--tasks", "ks"], cwd=tmp_path)
        assert_clean_error(result, f"SUPERB run directory {tmp_path / 'sweeps' / 'mine'} is in use by another "
                                   f"process (PID {me}")


def test_a_sweep_directory_of_another_upstream_is_refused(tmp_path):
    run_dir = tmp_path / "sweeps" / "mine"
    run_dir.mkdir(parents=True)
    (run_dir / "sweep.json").write_text(json.dumps({"upstream": "hubert_local", "ckpt": "/models/teacher.ckpt",
                                                    "model_config": None, "feature": None}))
    result = cli(["superb", "-u", "fbank", "--data-root", str(tmp_path), "-n", "mine", "-p",
                  str(tmp_path / "sweeps"), "--tasks", "ks"], cwd=tmp_path)
    assert_clean_error(result, "holds the sweep of another upstream", "upstream: 'hubert_local' there, 'fbank' now")
    assert json.loads((run_dir / "sweep.json").read_text())["upstream"] == "hubert_local"


def test_a_killed_holder_never_leaves_a_stale_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from s3prl_distill.locking import directory_lock
            lock = directory_lock(sys.argv[1], "experiment directory").acquire()
            print("locked", flush=True)
            time.sleep(120)
        """), str(tmp_path / "run")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=f"PID {holder.pid}"):
            directory_lock(tmp_path / "run", "experiment directory").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with directory_lock(tmp_path / "run", "experiment directory"):
        with pytest.raises(LockedError, match="already in use by this process"):
            directory_lock(tmp_path / "run", "experiment directory").acquire()


# --- 7, 8, 9. bad audio and bad values, end to end --------------------------------------------------------------------

def test_bad_audio_stops_with_the_file_named_and_no_traceback(setup, tmp_path):
    audio = tmp_path / "audio"
    shutil.copytree(setup["audio"], audio)
    csvs = tmp_path / "len_for_bucket"
    shutil.copytree(Path(load_config(setup["config"]).data.bucket_dir), csvs)
    # A NaN sample passes every header check; it is found where the audio is decoded, in a DataLoader worker.
    nan_file = audio / "train-tiny" / "nan.wav"
    wave = np.full(12000, 0.1, dtype=np.float32)
    wave[100] = np.nan
    soundfile.write(nan_file, wave, 16000, subtype="FLOAT")
    with (csvs / "train-tiny.csv").open("a") as rows:
        rows.write(f"99,train-tiny/nan.wav,12000,nan\n")
    overrides = f"config.data.root={audio},,config.data.bucket_dir={csvs},,config.data.num_workers=1"
    result = pretrain(["-g", str(setup["config"]), "-n", "nan", "-p", str(tmp_path), "-o", overrides], cwd=tmp_path)
    assert_clean_error(result, str(nan_file), "non-finite")
    assert "Original Traceback" not in result.stderr
    # A file shorter than the CNN's receptive field is found by the header check.
    short = sorted(audio.rglob("*.flac"))[1]
    soundfile.write(short, np.zeros(300, dtype=np.float32), 16000)
    result = pretrain(["-g", str(setup["config"]), "-n", "short", "-p", str(tmp_path), "-o", overrides], cwd=tmp_path)
    assert_clean_error(result, str(short), "300 samples, shorter than the 400-sample")


def test_teacher_checkpoint_missing_or_truncated_is_named(setup, tmp_path):
    missing = pretrain(["-g", str(setup["config"]), "-n", "m", "-p", str(tmp_path), "-o",
                        f"config.teacher.ckpt={tmp_path / 'absent.ckpt'}"], cwd=tmp_path)
    assert_clean_error(missing, f"teacher 'hubert_local': checkpoint {tmp_path / 'absent.ckpt'} does not exist")
    data = Path(setup["teacher"]).read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 3])
    cut = pretrain(["-g", str(setup["config"]), "-n", "t", "-p", str(tmp_path), "-o",
                    f"config.teacher.ckpt={truncated}"], cwd=tmp_path)
    assert_clean_error(cut, f"checkpoint {truncated} (read by s3prl/upstream/hubert/",
                       "is not a readable PyTorch checkpoint (truncated or corrupt)")


def test_out_of_range_values_fail_before_anything_loads(setup, tmp_path):
    # The teacher's checkpoint does not exist either: the config must be refused before the teacher is looked at.
    result = pretrain(["-g", str(setup["config"]), "-n", "v", "-p", str(tmp_path), "-o",
                       f"config.optimizer.lr=-1,,config.method.cosine_weight=-1,,config.optimizer.betas=[0.9,1.5],,"
                       f"config.teacher.ckpt={tmp_path / 'absent.ckpt'}"], cwd=tmp_path)
    assert_clean_error(result, "optimizer.lr: Input should be greater than 0", "cosine_weight: Input should be greater",
                       "betas: Value error, each beta must be in [0, 1)")
    assert "absent.ckpt" not in result.stderr
    unclear = pretrain(["-g", str(setup["config"]), "-n", "v", "-p", str(tmp_path), "-o",
                        f"config.teacher.ckpt={tmp_path / 'absent.ckpt'}"], cwd=tmp_path, extra_env={TRUST_ENV: "maybe"})
    assert_clean_error(unclear, f"{TRUST_ENV}='maybe' is not understood")
    assert "absent.ckpt" not in unclear.stderr


# --- 9d, 10. writing checkpoints -------------------------------------------------------------------------------------

def test_a_failed_write_names_the_file_and_the_free_space_and_keeps_the_last_good_one(tmp_path):
    script = textwrap.dedent("""
        import json, resource, signal, sys
        from pathlib import Path
        import torch
        from s3prl_distill.checkpoint import CheckpointError, save_checkpoint
        target = Path(sys.argv[1])
        save_checkpoint({"w": torch.zeros(10)}, target)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails like one on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        try:
            save_checkpoint({"w": torch.zeros(100000)}, target)
            print(json.dumps({"error": None}))
        except CheckpointError as error:
            print(json.dumps({"error": str(error)}))
    """)
    target = tmp_path / "states-2.ckpt"
    result = run_python(["-c", script, str(target)], cwd=tmp_path)
    error = json.loads(result.stdout.strip().splitlines()[-1])["error"]
    assert error is not None, result.stderr[-2000:]
    assert f"could not write checkpoint {target}" in error and "MiB free on the file system of" in error
    assert torch.equal(load_checkpoint(target)["w"], torch.zeros(10))  # the last good one
    assert [p.name for p in tmp_path.iterdir()] == ["states-2.ckpt"]  # no temporary file left


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoints_get_the_umask_permissions(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        path = save_checkpoint({"w": torch.zeros(1)}, tmp_path / "states-1.ckpt")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode


def test_a_resume_from_an_earlier_checkpoint_keeps_the_later_ones_and_its_own(setup, tmp_path):
    """Resuming step 2 of a run that reached step 4: refused while the later checkpoints are there (they would pass for
    the newest, keep_last would delete the resumed run's own before them, and -e DIR would pick them); --overwrite
    moves them aside with the metrics as they were, and the resumed run keeps what it writes."""
    first = pretrain(["-g", str(setup["config"]), "-n", "run", "-p", str(tmp_path), "-o",
                      "config.runner.total_steps=4,,config.runner.save_step=1,,config.runner.keep_last=4,,"
                      "config.runner.log_step=1"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    expdir = tmp_path / "run"
    later = {name: (expdir / name).read_bytes() for name in ("states-3.ckpt", "states-4.ckpt")}
    metrics = (expdir / "metrics.jsonl").read_text()
    assert [json.loads(line)["step"] for line in metrics.splitlines()] == [1, 2, 3, 4]

    resume = ["-e", str(expdir / "states-2.ckpt"), "-o", "config.runner.keep_last=1,,config.runner.total_steps=3"]
    refused = pretrain(resume, cwd=tmp_path)
    assert_clean_error(refused, f"{expdir / 'states-2.ckpt'} is step 2 of {expdir}, which also holds later "
                                "checkpoints (states-3.ckpt, states-4.ckpt)", f"-e {expdir}", "-n NAME", "--overwrite")
    assert sorted(path.name for path in expdir.glob("states-*")) == [f"states-{n}.ckpt" for n in (1, 2, 3, 4)]
    assert (expdir / "metrics.jsonl").read_text() == metrics

    resumed = pretrain(resume + ["--overwrite"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    [aside] = expdir.glob("superseded-*")
    assert {name: (aside / name).read_bytes() for name in later} == later
    assert (aside / "metrics.jsonl").read_text() == metrics
    # keep_last=1 kept the resumed run's own step 3, the newest of its steps, and nothing else of the directory's.
    assert sorted(path.name for path in expdir.glob("states-*")) == ["states-3.ckpt"]
    assert load_checkpoint(expdir / "states-3.ckpt")["TrainingState"]["step"] == 3
    assert [json.loads(line)["step"] for line in (expdir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
