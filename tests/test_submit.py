"""``s3prl-distill submit`` and the folder it writes into: a submission already there is refused without ``--force``,
and a failed submit leaves the previous one as it was."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest

from s3prl_distill.downstream_recipes.superb.submit import STAGING_NAME, SubmissionExistsError, submit

from helpers import run_python

COMMAND = str(Path(sys.executable).parent / "s3prl-distill")


def finished_sweep(folder: Path, ckpt: Path, prediction: str) -> Path:
    """A sweep folder with KS evaluated (its done.json and test predictions) on ``ckpt``."""
    (folder / "ks").mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"upstream": "distilhubert_local", "ckpt": str(ckpt)}))
    (folder / "ks" / "done.json").write_text(json.dumps({"task": "ks"}))
    (folder / "ks" / "test_predict.txt").write_text(prediction)
    return folder


def submission(out: Path) -> dict:
    with zipfile.ZipFile(out / "predict.zip") as archive:
        zipped = {name: archive.read(name).decode() for name in archive.namelist()}
    return {"zip": zipped, "predict": (out / "predict" / "ks_public" / "predict.txt").read_text(),
            "files": json.loads((out / "efficiency.json").read_text())["files"]}


def test_a_second_submit_into_the_same_folder_is_refused_and_force_replaces_it(tmp_path, session_distiller_ckpt):
    out = tmp_path / "out"
    first = finished_sweep(tmp_path / "a", session_distiller_ckpt, "a.wav yes\n")
    second = finished_sweep(tmp_path / "b", session_distiller_ckpt, "b.wav no\n")
    submit(first, out, seconds=[0.5])
    before = submission(out)
    assert before["predict"] == "a.wav yes\n" and before["zip"] == {"predict/ks_public/predict.txt": "a.wav yes\n"}
    assert before["files"] == ["predict/ks_public/predict.txt"]

    with pytest.raises(SubmissionExistsError, match=rf"{out} already holds a submission \(predict, predict.zip, "
                                                    r"efficiency.json\): choose another -o, or pass --force"):
        submit(second, out, seconds=[0.5])
    assert submission(out) == before

    submit(second, out, seconds=[0.5], force=True)
    after = submission(out)
    assert after["predict"] == "b.wav no\n" and after["zip"] == {"predict/ks_public/predict.txt": "b.wav no\n"}
    assert sorted(path.name for path in out.iterdir()) == ["efficiency.json", "predict", "predict.zip"]


def test_a_failed_forced_submit_leaves_the_previous_submission_whole(tmp_path, session_distiller_ckpt):
    out = tmp_path / "out"
    submit(finished_sweep(tmp_path / "a", session_distiller_ckpt, "a.wav yes\n"), out, seconds=[0.5])
    before = submission(out)
    # A checkpoint that does not exist: found when the upstream loads, before anything is written.
    missing = finished_sweep(tmp_path / "b", tmp_path / "nonexistent.ckpt", "b.wav no\n")
    with pytest.raises(Exception, match="nonexistent.ckpt"):
        submit(missing, out, seconds=[0.5], force=True)
    assert submission(out) == before and not (out / STAGING_NAME).exists()
    # A task marked done without its predictions: found while the new submission is built, off to the side.
    broken = finished_sweep(tmp_path / "c", session_distiller_ckpt, "c.wav\n")
    (broken / "ks" / "test_predict.txt").unlink()
    with pytest.raises(FileNotFoundError, match="test_predict.txt is missing"):
        submit(broken, out, seconds=[0.5], force=True)
    assert submission(out) == before


def test_the_command_refuses_by_name_and_takes_force(tmp_path, session_distiller_ckpt):
    out = tmp_path / "out"
    run = finished_sweep(tmp_path / "a", session_distiller_ckpt, "a.wav yes\n")
    argv = [COMMAND, "submit", str(run), "-o", str(out), "--seconds", "0.5"]
    assert run_python(argv).returncode == 0
    refused = run_python(argv)
    assert refused.returncode != 0 and "already holds a submission" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert run_python(argv + ["--force"]).returncode == 0
