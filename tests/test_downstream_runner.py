"""s3prl's own, unmodified downstream runner trains and evaluates our DistilHuBERT checkpoint, started three ways:
``run_downstream.py`` in an s3prl git checkout, ``python -m s3prl.run_downstream``, and ``s3prl-distill downstream``.
The task is ER (emotion), on a tiny IEMOCAP-shaped set generated here."""

import pytest

from s3prl_distill.downstream_recipes.toy_emotion import EMOTIONS, accuracy

from helpers import featurizer_weights_after_training, launch

@pytest.mark.slow
@pytest.mark.parametrize("way", ["checkout", "module", "console"])
def test_runner_trains_and_evaluates_our_upstream(way, tmp_path, emotion_setup, session_distiller_ckpt):
    corpus, config = emotion_setup
    expdir = tmp_path / "exp"
    train = [
        "-m", "train", "-u", "distilhubert_local", "-k", str(session_distiller_ckpt), "-d", "emotion",
        "-c", str(config), "-p", str(expdir), "--device", "cpu",
    ]
    workdir, result = launch(way, train, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoints = sorted(expdir.glob("*.ckpt"))
    assert expdir / "states-2.ckpt" in checkpoints, checkpoints
    if way == "checkout":
        # The run really used the checkout's s3prl, not the installed one.
        assert list((workdir / "__pycache__").glob("hub.*.pyc"))

    # Evaluate rebuilds the upstream from the checkpoint's saved arguments: registration must work there too.
    evaluate = ["-m", "evaluate", "-e", str(expdir / "states-2.ckpt"), "--device", "cpu"]
    workdir, result = launch(way, evaluate, tmp_path / "eval")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    predictions = (expdir / "test_fold1_predict.txt").read_text().splitlines()
    assert len(predictions) == 3 * len(EMOTIONS)
    assert all(line.split()[1] in EMOTIONS for line in predictions)
    assert 0.0 <= accuracy(expdir) <= 1.0


@pytest.mark.slow
def test_runner_trains_fithubert_with_the_default_weighted_sum(tmp_path, emotion_setup):
    """FitHuBERT's 40 ms layers must pass s3prl's weighted-sum featurizer (the official upstream crashes it)."""
    import torch

    from s3prl_distill.checkpoint import save_checkpoint
    from s3prl_distill.formats.native import export_student
    from s3prl_distill.model import StudentModel

    from helpers import tiny_fithubert

    config = tiny_fithubert()
    torch.manual_seed(0)
    checkpoint = save_checkpoint(export_student("fithubert", config, StudentModel(config).state_dict()),
                                 tmp_path / "fithubert.ckpt")
    weights = featurizer_weights_after_training("fithubert_local", checkpoint, emotion_setup, tmp_path)
    assert weights.shape == (4,)  # transformer input + 3 layers, all at 20 ms
