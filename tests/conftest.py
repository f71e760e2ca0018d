"""Shared fixtures: tiny models and checkpoints in the exact formats the production loaders read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch

# A DistilHuBERT-shaped student small enough for CI: the HuBERT CNN layout (stride 320, receptive field 400) with
# thin channels, 2 layers, expand-last heads on teacher layers [1, 2, 3].
TINY_DISTILLER_CONFIG = {
    "extractor_mode": "default",
    "extractor_conv_feature_layers": "[(32,10,5)] + [(32,3,2)]*4 + [(32,2,2)]*2",
    "extractor_dropout": 0.0,
    "feature_grad_mult": 0.1,
    "conv_pos": 16,
    "conv_pos_groups": 4,
    "encoder_layers": 2,
    "encoder_embed_dim": 48,
    "encoder_ffn_embed_dim": 96,
    "encoder_attention_heads": 4,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "attention_type": "original",
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.1,
    "encoder_layerdrop": 0.0,
    "final_dim": 48,
    "out_layer_type": "expand-last",
    "out_layer_inter_dim": -1,
    "n_tasks": 3,
    "task_emb_type": "expand-last",
    "pred_layer_id": [1, 2, 3],
    "loss_type": "l1",
    "cosine_loss": 1.0,
    "feat_pen_loss": 0.0,
    "init_teacher_conv_layers": False,
    "init_teacher_encoder_layers": False,
}


def s3prl_distiller_model(config: Dict, seed: int = 0):
    """s3prl's own DistillerModel (the reference implementation), randomly initialised."""
    from s3prl.upstream.distiller.model import DistillerConfig, DistillerModel

    torch.manual_seed(seed)
    return DistillerModel(DistillerConfig(config))


def write_s3prl_distiller_checkpoint(path: Path, config: Optional[Dict] = None, seed: int = 0) -> Path:
    """A checkpoint written by s3prl's model code in the layout its ``distiller_local`` reads."""
    config = dict(TINY_DISTILLER_CONFIG if config is None else config)
    model = s3prl_distiller_model(config, seed)
    torch.save({"Config": {"distiller": config}, "Distiller": model.state_dict()}, path)
    return path


@pytest.fixture
def distiller_ckpt(tmp_path: Path) -> Path:
    return write_s3prl_distiller_checkpoint(tmp_path / "distiller.ckpt")


@pytest.fixture(scope="session")
def session_distiller_ckpt(tmp_path_factory) -> Path:
    return write_s3prl_distiller_checkpoint(tmp_path_factory.mktemp("ckpt") / "distiller.ckpt")


def python_env(autoload: bool = True, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("S3PRL_DISTILL_NO_AUTOLOAD", None)
    if not autoload:
        env["S3PRL_DISTILL_NO_AUTOLOAD"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_python(
    args: List[str], autoload: bool = True, cwd: Optional[Path] = None, timeout: int = 600,
    extra_env: Optional[Dict[str, str]] = None,
) -> subprocess.CompletedProcess:
    """Run the interpreter under test in a fresh process (start-up hooks included)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=python_env(autoload, extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def random_waves(lengths: List[int], seed: int = 0) -> List[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(n, generator=generator) for n in lengths]
