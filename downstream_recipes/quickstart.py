"""The smallest real end-to-end run: a DistilHuBERT-shaped checkpoint in s3prl's distiller format, through s3prl's
own downstream runner (train, then evaluate) on a generated emotion set, reporting test accuracy.

The student is randomly initialised (distillation arrives with the pretrain runner); what this proves is the path a
user's checkpoint takes: our upstream registered in s3prl, s3prl's runner, its checkpoints and prediction files.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from s3prl_distill.checkpoint import save_checkpoint
from s3prl_distill.formats.s3prl_distiller import export_distiller
from s3prl_distill.model import StudentConfig, StudentModel

from .superb.runner import run_experiment_process
from .toy_emotion import EMOTIONS, accuracy, write_emotion_config, write_emotion_corpus

logger = logging.getLogger(__name__)

# DistilHuBERT's structure (HuBERT CNN, 2 post-LN layers, expand-last heads) at a width a laptop trains in seconds.
SMALL_DISTILHUBERT = {
    "feature_extractor": {"conv_layers": "[(64,10,5)] + [(64,3,2)]*4 + [(64,2,2)]*2", "grad_mult": 0.1},
    "encoder": {"num_layers": 2, "embed_dim": 96, "ffn_dim": 384, "num_heads": 4, "pos_conv_kernel": 32,
                "pos_conv_groups": 4},
    "prediction_head": {"type": "expand_last", "target_layers": [4, 8, 12], "out_dim": 96},
}


def quickstart(workdir: Path, steps: int = 40, seed: int = 0) -> dict:
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    timings = {}

    start = time.perf_counter()
    torch.manual_seed(seed)
    config = StudentConfig.from_dict(SMALL_DISTILHUBERT)
    model = StudentModel(config)
    checkpoint = save_checkpoint(export_distiller(config, model.state_dict()), workdir / "distilhubert_small.ckpt")
    corpus = write_emotion_corpus(workdir / "toy_emotion", utterances_per_emotion=6, seed=seed)
    downstream_config = write_emotion_config(workdir / "emotion.yaml", corpus, total_steps=steps)
    timings["prepare_s"] = time.perf_counter() - start

    expdir = workdir / "er_distilhubert_local"
    # s3prl's runner trains, then evaluates the last step's checkpoint on test, in one process
    plan = {"train": ["-m", "train", "-u", "distilhubert_local", "-k", str(checkpoint), "-d", "emotion", "-c",
                      str(downstream_config), "-p", str(expdir), "--device", "cpu", "--seed", str(seed)],
            "expdir": str(expdir), "best": f"states-{steps}.ckpt", "split": "test", "device": "cpu"}
    logger.info("s3prl's runner: training %d steps, then evaluating (logs: %s, %s)", steps,
                workdir / "train.log", workdir / "evaluate.log")
    for log in ("train.log", "evaluate.log"):
        (workdir / log).unlink(missing_ok=True)  # a re-run's logs start afresh
    timings["train_s"], timings["evaluate_s"] = run_experiment_process(
        plan, [workdir / "train.log", workdir / "evaluate.log"])

    result = {
        "upstream": "distilhubert_local",
        "checkpoint": str(checkpoint),
        "parameters": model.num_parameters(),
        "task": "ER (toy, fold1)",
        "steps": steps,
        "test_accuracy": accuracy(expdir),
        "chance": 1 / len(EMOTIONS),
        **{k: round(v, 1) for k, v in timings.items()},
    }
    return result
