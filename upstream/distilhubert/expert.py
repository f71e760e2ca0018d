"""DistilHuBERT upstream on the shared student backbone; reads s3prl's distiller checkpoint format."""

from __future__ import annotations

from typing import Any, List, Mapping, Union

from torch import Tensor, nn

from s3prl_distill.checkpoint import CheckpointError, describe_checkpoint
from s3prl_distill.formats.s3prl_distiller import import_distiller, is_distiller_checkpoint
from s3prl_distill.model import StudentModel

from ..interfaces import (
    OutputDict,
    as_pad_mask,
    check_feature_key,
    load_upstream_checkpoint,
    load_weights,
    run_student,
    stackable,
)

# Same keys as s3prl's distiller expert, so "-s paper" and friends work unchanged.
FEATURE_KEYS = ("hidden_states", "last_hidden_state", "paper", "pad_mask")


class UpstreamExpert(nn.Module):
    """Outputs (as s3prl's distiller upstream):

    * ``hidden_states``: [projected CNN features, each transformer layer, each prediction head];
    * ``last_hidden_state``: the last entry of ``hidden_states`` (the head predicting the deepest teacher layer);
    * ``paper``: the last transformer layer, the feature of the DistilHuBERT paper's SUPERB results;
    * ``pad_mask``: 1.0 on valid frames.
    """

    name = "distilhubert"

    def __init__(
        self,
        ckpt: str,
        model_config: Union[None, str, Mapping[str, Any]] = None,
        trust_checkpoint: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        checkpoint = load_upstream_checkpoint(ckpt, model_config, self.name, trust_checkpoint, "DistilHuBERT checkpoint")
        if not is_distiller_checkpoint(checkpoint):
            raise CheckpointError(
                f"{ckpt} is {describe_checkpoint(checkpoint)}; the distilhubert upstream expects a DistilHuBERT "
                "checkpoint in s3prl's distiller format: {'Distiller': state_dict, 'Config': {'distiller': {...}}}"
            )
        try:
            config, state = import_distiller(checkpoint)
        except ValueError as error:
            raise CheckpointError(f"{ckpt}: {error}") from None
        self.model = StudentModel(config)
        load_weights(self.model, state, ckpt)

    def get_downsample_rates(self, key: str) -> int:
        check_feature_key(key, FEATURE_KEYS, self.name)
        return self.model.downsample_rate

    def forward(self, wavs: List[Tensor]) -> OutputDict:
        out, hidden_states = run_student(self.model, wavs, self.name)
        if out.predictions is not None:
            heads = list(out.predictions.unbind(dim=1))
            # Heads are part of the weighted sum only when they have the backbone's width (they do in DistilHuBERT).
            if stackable(hidden_states + heads):
                hidden_states += heads
        return {
            "hidden_states": hidden_states,
            "last_hidden_state": hidden_states[-1],
            "paper": out.layer_outputs[-1] if out.layer_outputs else out.features,
            "pad_mask": as_pad_mask(out.padding_mask, out.features),
        }
