"""The upstream of jointly distilled and pruned students (``pretrain/dphubert``: DPHuBERT, SKILL), shared by the
``dphubert`` and ``skill`` families. It reads our pruned checkpoints (from ``s3prl-distill prune``) and, for
``dphubert``, the official DPHuBERT / DPWavLM release format ``{"config", "state_dict"}`` (which ``s3prl-distill
export --to dphubert`` writes). Attention / FFN blocks removed by pruning have no parameters in either; an older
pruned checkpoint of ours with zero stand-in biases for them loads too (see ``EncoderLayer``).

Outputs follow s3prl's HuBERT / WavLM experts, so a pruned student's layer weights compare with its teacher's:
``hidden_states`` = [transformer input (after the positional conv and LayerNorm), each layer's output].
"""

from __future__ import annotations

import functools

from typing import Any, List, Mapping, Union

from torch import Tensor, nn

from s3prl_distill.checkpoint import CheckpointError, describe_checkpoint, is_native_student
from s3prl_distill.formats.dphubert import dphubert_state_dict, dphubert_student_config, is_dphubert_checkpoint

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



class PrunedStudentExpert(nn.Module):
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
        if expected == "dphubert" and is_dphubert_checkpoint(checkpoint):
            try:
                config = dphubert_student_config(checkpoint["config"], ckpt)
            except ValueError as error:
                raise CheckpointError(str(error)) from None
            try:
                state = dphubert_state_dict(checkpoint["state_dict"], config)
            except ValueError as error:  # a key no rule covers
                raise CheckpointError(f"{ckpt}: {error}") from None
        elif is_native_student(checkpoint) and checkpoint.get("Family") == expected:
            config = native_student_config(checkpoint, ckpt)
            if config.pruning is not None:
                raise CheckpointError(f"{ckpt} still has its pruning gates: run `s3prl-distill prune {ckpt} "
                                      "--output DIR` and load DIR/pruned.ckpt")
            state = checkpoint["Student"]
        else:
            wanted = f"a {expected} student from s3prl-distill prune" + \
                (" or an official DPHuBERT {config, state_dict} checkpoint" if expected == "dphubert" else "")
            raise CheckpointError(f"{ckpt} is {describe_checkpoint(checkpoint)}; {expected} expects {wanted}")
        self.model = load_backbone(config, state, ckpt)
        self.name = expected

    def get_downsample_rates(self, key: str) -> int:
        check_feature_key(key, STUDENT_FEATURE_KEYS, self.name)
        return self.model.downsample_rate

    def forward(self, wavs: List[Tensor]) -> OutputDict:
        out, _ = run_student(self.model, wavs, self.name)
        return student_outputs(out, out.hidden_states())  # HuBERT's indexing: index 0 after the positional conv


# The hubconf entries: ``local_entry(expected, ckpt, model_config, **kwargs)``, ``url_entry(..., refresh, ...)``.
local_entry = functools.partial(interfaces.local_entry, PrunedStudentExpert)
url_entry = functools.partial(interfaces.url_entry, PrunedStudentExpert)
