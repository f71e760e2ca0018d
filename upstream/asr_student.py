"""The upstream of Wang et al.'s ASR students (``pretrain/asr_distill``), shared by the ``deepthin`` and
``shallowwide`` families: our native checkpoint with family ``asr_distill``, CNN or fbank front end.

Each registered name states what it expects (student shape, front end) and refuses a checkpoint holding another,
naming the name that fits, so a SUPERB result is never reported under the wrong model.
"""

from __future__ import annotations

import functools

from typing import Any, List, Mapping, Union

from torch import Tensor, nn

from s3prl_distill.checkpoint import CheckpointError, describe_checkpoint, is_native_student
from s3prl_distill.model import StudentConfig

from . import interfaces
from .interfaces import (
    STUDENT_FEATURE_KEYS,
    OutputDict,
    check_feature_key,
    load_backbone,
    load_upstream_checkpoint,
    native_student_config,
    run_student,
    student_outputs,
)

FAMILY = "asr_distill"
# Student shape by its prediction heads: one per layer (deep-thin) or DistilHuBERT's expand-last (shallow-wide).
SHAPES = {"layerwise": "deepthin", "expand_last": "shallowwide"}


def upstream_name(config: StudentConfig) -> str:
    """The registered name (without _local/_url) that fits a student config."""
    head = config.prediction_head
    shape = SHAPES.get(head.type if head is not None else "", "deepthin")
    return f"{shape}_fbank" if config.fbank_front_end is not None else shape


class AsrStudentExpert(nn.Module):
    """Outputs: ``hidden_states`` = [front-end output (transformer input), each transformer layer], all 20 ms at
    the student's width; ``last_hidden_state`` = the last layer; ``pad_mask`` = 1.0 on valid frames."""

    def __init__(
        self,
        ckpt: str,
        expected: str,
        model_config: Union[None, str, Mapping[str, Any]] = None,
        trust_checkpoint: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        checkpoint = load_upstream_checkpoint(ckpt, model_config, expected, trust_checkpoint, f"{expected} checkpoint")
        if not is_native_student(checkpoint) or checkpoint.get("Family") != FAMILY:
            raise CheckpointError(f"{ckpt} is {describe_checkpoint(checkpoint)}; {expected} expects a student "
                                  "trained with the asr_distill method (s3prl-distill pretrain)")
        config = native_student_config(checkpoint, ckpt)
        found = upstream_name(config)
        if found != expected:
            raise CheckpointError(f"{ckpt} holds a {found} student ({config.encoder.num_layers} layers of "
                                  f"{config.encoder.embed_dim}, {'fbank' if config.fbank_front_end else 'CNN'} "
                                  f"front end); load it with {found}_local")
        self.model = load_backbone(config, checkpoint["Student"], ckpt)
        if self.model.fbank is not None and not self.model.fbank.has_statistics:
            raise CheckpointError(f"{ckpt}: the fbank front end has no normalisation statistics")
        self.name = expected

    def get_downsample_rates(self, key: str) -> int:
        check_feature_key(key, STUDENT_FEATURE_KEYS, self.name)
        return self.model.downsample_rate

    def forward(self, wavs: List[Tensor]) -> OutputDict:
        out, hidden_states = run_student(self.model, wavs, self.name)
        return student_outputs(out, hidden_states)


# The hubconf entries: ``local_entry(expected, ckpt, model_config, **kwargs)``, ``url_entry(..., refresh, ...)``.
local_entry = functools.partial(interfaces.local_entry, AsrStudentExpert)
url_entry = functools.partial(interfaces.url_entry, AsrStudentExpert)
