"""The core's option vocabularies and machine-derived defaults, with no heavy import.

The command line offers these as ``choices`` and defaults; argparse reads every option's choices to print ``--help``
or an argument error, so they must come without torch or pydantic. Each is defined once here, and the code that
implements it (the model, the exporters, the data loaders) imports it from here.
"""

from __future__ import annotations

import os
from typing import Literal, Tuple, get_args

# Which tensor is "hidden state 0" (see :mod:`s3prl_distill.model.hidden_states`): ``transformer_input`` is s3prl's,
# ``feature_projection`` DPHuBERT's and SKILL's.
LayerZero = Literal["feature_projection", "transformer_input"]
LAYER_ZERO_CHOICES: Tuple[str, ...] = get_args(LayerZero)

# The layouts ``s3prl-distill export --to`` writes (one exporter each in :mod:`s3prl_distill.formats.export`).
EXPORT_FORMATS: Tuple[str, ...] = (
    "dphubert",
    "safetensors",
    "onnx",
    "hf",  # a transformers directory: a stock HubertModel / WavLMModel, or our own class (s3prl_distill.hf_model)
    "lightning",  # the official Lightning release layout (+ training YAML) of FitHuBERT / ARMHuBERT / STaRHuBERT
)

# How the trainer (``pretrain``) and ``prune`` write a student: ``pickle`` is our torch.save checkpoint (what a resume
# reads); ``safetensors`` writes the student as a safetensors file (no pickle, for sharing), beside the trainer's
# resumable pickle and in place of prune's.
SAVE_FORMATS: Tuple[str, ...] = ("pickle", "safetensors")

# Our own transformers model type (config.json's "model_type") for the students no stock HubertConfig / WavLMConfig
# expresses; s3prl_distill.hf_config / hf_model register it with transformers' Auto classes.
HF_MODEL_TYPE = "s3prl_distill_student"
HF_ARCHITECTURE = "DistilledStudentModel"
# config.json's key holding the whole StudentConfig (StudentConfig.to_dict()).
HF_STUDENT_CONFIG_KEY = "student_config"

# Data-loader workers by default: enough to keep one training process fed, while leaving it a core of its own.
MAX_DEFAULT_WORKERS = 8


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one, e.g. under taskset or a
    container's cpuset), which can be fewer than the machine has."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_num_workers(share: int = 1) -> int:
    """Data-loader workers of one of ``share`` training processes running at once here: its share of the usable cores
    less one (its own), at most :data:`MAX_DEFAULT_WORKERS`; 0 (load in the training process) on a single core."""
    cpus = max(1, usable_cpus() // max(1, share))
    return max(0, min(MAX_DEFAULT_WORKERS, cpus - 1))
