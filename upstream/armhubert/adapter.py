"""The output adapters of sungnyun/ARMHuBERT's models: ARMHuBERT / MaskHuBERT (``armhubert``, ``maskhubert``) and
STaRHuBERT (``starhubert``). Each reads our checkpoints of its family and the official release (a Lightning
checkpoint + its training YAML given with ``-g``), and returns what the official upstream returns as
``hidden_states`` (so published SUPERB numbers reproduce), plus the transformer layers in s3prl's indexing under
``layer_hidden_states``.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple, Union

from torch import Tensor

from s3prl_distill.checkpoint import CheckpointError
from s3prl_distill.formats import StudentCheckpoint
from s3prl_distill.model import StudentModel

from ..expert import OutputAdapter
from ..interfaces import LazyOutputs, UpstreamOptions, as_pad_mask, head_outputs_on_demand, read_options_or_official

# Every key both adapters return; all at the CNN's rate (no time reduction).
OUTPUT_KEYS = ("hidden_states", "last_hidden_state", "layer_hidden_states", "pad_mask")
_RELEASES = {"armhubert": "ARMHuBERT / ARMwavLM", "maskhubert": "MaskHuBERT", "starhubert": "STaRHuBERT / STaRWavLM"}


def parameter_counts(model: StudentModel) -> Dict[str, int]:
    """``backbone``: CNN to last layer; ``inference``: + the heads the official upstream's features come from
    (ARMHuBERT / MaskHuBERT: all 12); ``paper``: + the mask embedding, as the published 26.45 / 22.39 / 26.64 M
    count them (STaRHuBERT: all three are the backbone)."""
    return {
        "backbone": model.num_parameters(),
        "inference": model.num_parameters() + sum(p.numel() for p in model.prediction_head.parameters())
        if model.prediction_head is not None else model.num_parameters(),
        "paper": model.num_parameters(include_heads=True),
    }


class RecycleOutputs(OutputAdapter):
    """What the three families share: one family per entry (a checkpoint of a sibling family is refused, naming its
    entry), options or the official YAML from ``-g``, and the official layout's shape checked before building."""

    @property
    def families(self) -> Tuple[str, ...]:  # type: ignore[override]
        return (self.name,)

    @property
    def label(self) -> str:
        return f"{_RELEASES[self.name]} checkpoint"

    @property
    def wanted(self) -> str:
        others = ", ".join(f"{name}_local ({release})" for name, release in _RELEASES.items() if name != self.name)
        return (f"the {self.name} upstream expects our {self.name} checkpoint or the official {_RELEASES[self.name]} "
                f"release (a Lightning checkpoint with student_model.* weights, plus its YAML via -g); other models "
                f"of that code base: {others}")

    def read_options(self, model_config: Union[None, str, Mapping[str, Any]],
                     **kwargs: Any) -> Tuple[UpstreamOptions, Optional[Mapping[str, Any]]]:
        return read_options_or_official(model_config, self.name, UpstreamOptions)

    def rates(self, model: StudentModel) -> Dict[str, int]:
        return {key: model.downsample_rate for key in OUTPUT_KEYS}

    def check(self, student: StudentCheckpoint, source: str) -> None:
        super().check(student, source)  # gates, time reduction
        head = student.config.prediction_head
        if self.keep_heads and (head is None or head.type != "layerwise"):
            raise CheckpointError(f"{source}: not a {self.name}-shaped student: its features are the outputs of "
                                  "layer-wise heads, and it has none")


class ARMHuBERTOutputs(RecycleOutputs):
    """ARMHuBERT / MaskHuBERT outputs (20 ms, all of them):

    * ``hidden_states``: the 12 layer-wise heads' outputs (768-d predictions of teacher layers 1..12), as the official
      upstream returns them (its SUPERB results are a weighted sum of these);
    * ``last_hidden_state``: the last head's output (the official upstream's);
    * ``layer_hidden_states``: [transformer input, layer 1, ..., layer 12] at the student's width (s3prl's HuBERT
      indexing);
    * ``pad_mask``: 1.0 on valid frames.
    """

    keep_heads = True

    def batch_outputs(self, model: StudentModel, waveforms: Tensor, lengths: Optional[Tensor]) -> LazyOutputs:
        """Runs the backbone; the heads run only for the keys that read them."""
        out = model(waveforms, lengths, predict=False)
        heads = model.prediction_head.heads
        head_output = head_outputs_on_demand(heads, out.layer_outputs)
        return LazyOutputs({
            "hidden_states": lambda: [head_output(index) for index in range(len(heads))],
            "last_hidden_state": lambda: head_output(len(heads) - 1),
            "layer_hidden_states": out.hidden_states,
            "pad_mask": lambda: as_pad_mask(out.padding_mask, out.features),
        })


class STaRHuBERTOutputs(RecycleOutputs):
    """STaRHuBERT outputs (20 ms):

    * ``hidden_states``: the 12 layer outputs (its width), as the official upstream returns them (no transformer
      input);
    * ``last_hidden_state``: the last layer's output, batch first (the official upstream returns it time first);
    * ``layer_hidden_states``: [transformer input, layer 1, ..., layer 12] (s3prl's HuBERT indexing);
    * ``pad_mask``: 1.0 on valid frames.
    """

    def batch_outputs(self, model: StudentModel, waveforms: Tensor, lengths: Optional[Tensor]) -> Mapping[str, Any]:
        out = model(waveforms, lengths)
        return {
            "hidden_states": list(out.layer_outputs),
            "last_hidden_state": out.layer_outputs[-1],
            "layer_hidden_states": out.hidden_states(),
            "pad_mask": as_pad_mask(out.padding_mask, out.features),
        }
