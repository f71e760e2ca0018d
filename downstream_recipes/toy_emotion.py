"""A tiny IEMOCAP-shaped emotion set and its s3prl ER config, for smoke runs of s3prl's downstream runner.

Each "emotion" is a tone of its own pitch plus noise, so a working pipeline learns it quickly. The layout is exactly
what s3prl's ``emotion`` task reads: ``<root>/Session1/sentences/wav/<dialog>/<utt>.wav`` and
``<root>/meta_data/Session1/{train,test}_meta_data.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import soundfile
import yaml

EMOTIONS = ["neu", "hap", "ang", "sad"]
SAMPLE_RATE = 16000


def write_emotion_corpus(root: Path, utterances_per_emotion: int = 3, seed: int = 0) -> Path:
    """Write ``2 * n`` training and ``n`` test utterances per emotion under ``root``; returns ``root``."""
    rng = np.random.default_rng(seed)
    meta: Dict[str, List[dict]] = {"train": [], "test": []}
    for split, count in (("train", 2 * utterances_per_emotion), ("test", utterances_per_emotion)):
        for label_index, emotion in enumerate(EMOTIONS):
            for n in range(count):
                relative = f"Session1/sentences/wav/Ses01F_{split}/Ses01F_{split}{label_index}_{n:03d}.wav"
                path = root / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                t = np.arange(int(SAMPLE_RATE * rng.uniform(0.6, 1.2))) / SAMPLE_RATE
                tone = 0.2 * np.sin(2 * np.pi * (150 + 60 * label_index) * t) + 0.01 * rng.standard_normal(t.size)
                soundfile.write(path, tone.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
                meta[split].append({"path": relative, "label": emotion, "speaker": "Ses01F"})
    labels = {emotion: index for index, emotion in enumerate(EMOTIONS)}
    session = root / "meta_data" / "Session1"
    session.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        (session / f"{split}_meta_data.json").write_text(json.dumps({"labels": labels, "meta_data": meta[split]}))
    return root


def write_emotion_config(path: Path, corpus: Path, total_steps: int = 2, learning_rate: float = 1e-3) -> Path:
    """s3prl's ER config (its ``downstream/emotion/config.yaml`` layout) sized for the toy set."""
    config = {
        "runner": {
            "total_steps": total_steps, "gradient_clipping": 1, "gradient_accumulate_steps": 1,
            "log_step": max(1, total_steps // 4), "eval_step": total_steps, "save_step": total_steps,
            "max_keep": 1, "eval_dataloaders": ["dev", "test"],
        },
        "optimizer": {"name": "TorchOptim", "torch_optim_name": "Adam", "lr": learning_rate},
        "downstream_expert": {
            "datarc": {
                "root": str(corpus), "meta_data": str(corpus / "meta_data"), "test_fold": "fold1", "pre_load": True,
                "train_batch_size": 4, "eval_batch_size": 4, "num_workers": 0, "valid_ratio": 0.2,
            },
            "modelrc": {"projector_dim": 16, "select": "UtteranceLevel", "UtteranceLevel": {"pooling": "MeanPooling"}},
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def accuracy(expdir: Path, split: str = "test", fold: str = "fold1") -> float:
    """Accuracy from the prediction and truth files s3prl's emotion task writes."""
    predicted = dict(line.split() for line in (expdir / f"{split}_{fold}_predict.txt").read_text().splitlines())
    truth = dict(line.split() for line in (expdir / f"{split}_{fold}_truth.txt").read_text().splitlines())
    return sum(predicted[name] == label for name, label in truth.items()) / len(truth)
