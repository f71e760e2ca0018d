"""FitHuBERT's output adapter for the shared upstream expert.

Reads our own checkpoints and the official release (a Lightning checkpoint + its training YAML given with ``-g``).
Its layers run at 40 ms (after the 2x time reduction); s3prl's weighted sum needs one rate for every entry, so
``hidden_states`` brings them back to 20 ms (see ``upsample``), while the native 40 ms outputs stay selectable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

from torch import Tensor

from s3prl_distill.checkpoint import CheckpointError
from s3prl_distill.formats import StudentCheckpoint
from s3prl_distill.model import StudentModel

from ..expert import OutputAdapter
from ..interfaces import LazyOutputs, UpstreamOptions, head_outputs_on_demand, read_options_or_official


class FitHuBERTOptions(UpstreamOptions):
    # How 40 ms layer outputs become 20 ms in hidden_states: "repeat" each frame twice (parameter-free, the same for
    # every layer), or "trained": each layer's own hint-head ConvTranspose1d, learnt during distillation.
    upsample: Literal["repeat", "trained"] = "repeat"


def read_fithubert_config(
    model_config: Union[None, str, Path, Mapping[str, Any]], name: str
) -> Tuple[FitHuBERTOptions, Optional[Mapping[str, Any]]]:
    """``-g``: our options YAML, or the official training YAML (see ``read_options_or_official``)."""
    return read_options_or_official(model_config, name, FitHuBERTOptions)


def parameter_counts(model: StudentModel) -> Dict[str, int]:
    """The sizes the literature reports for FitHuBERT-style students.

    ``backbone``: CNN to last layer; ``inference``: + the last layer's head (the official upstream's output);
    ``with_all_heads``: + every hint head; ``paper``: ``inference`` + the official model's top-level ConvTranspose1d
    upsampler (C·C·f + C), built but never used, which the paper's 22.49 M includes.
    """
    backbone = model.num_parameters()
    heads = model.prediction_head.heads
    last = sum(p.numel() for p in heads[-1].parameters())
    tr = model.config.encoder.time_reduction
    width = model.config.encoder.embed_dim
    unused = width * width * tr.factor + width if tr is not None else 0
    return {
        "backbone": backbone,
        "inference": backbone + last,
        "with_all_heads": model.num_parameters(include_heads=True),
        "paper": backbone + last + unused,
    }


class FitHuBERTOutputs(OutputAdapter):
    """Outputs:

    * ``hidden_states``: [transformer input, layer 1, ..., layer 12] at 20 ms, width 480 (40 ms layers upsampled);
    * ``hidden_states_40ms``: the 12 raw layer outputs at their native 40 ms (``get_downsample_rates`` 640);
    * ``head_outputs``: the 12 hint heads' predictions of teacher layers 1..12 (20 ms, teacher width);
    * ``last_hidden_state``: the last head's output, the official upstream's only usable feature (FitHuBERT's
      README evaluates SUPERB with ``-s last_hidden_state``).

    20 ms outputs have ``2 * floor(T / 2)`` frames for T CNN frames (an odd last frame has no 40 ms partner).
    """

    families = ("fithubert",)
    keep_heads = True
    upsample_mode = "repeat"

    @property
    def label(self) -> str:
        return "FitHuBERT checkpoint"

    @property
    def wanted(self) -> str:
        return (f"the {self.name} upstream expects our FitHuBERT checkpoint or the official release (a Lightning "
                "checkpoint with student_model.* weights, plus its YAML via -g)")

    def read_options(self, model_config: Union[None, str, Mapping[str, Any]], upsample: Optional[str] = None,
                     **kwargs: Any) -> Tuple[FitHuBERTOptions, Optional[Mapping[str, Any]]]:
        """Our options or the official training YAML from ``-g``; ``upsample=`` (from Python) overrides."""
        options, official_yaml = read_fithubert_config(model_config, self.name)
        if upsample is not None:
            options = FitHuBERTOptions(**{**options.model_dump(), "upsample": upsample})
        self.upsample_mode = options.upsample
        return options, official_yaml

    def check(self, student: StudentCheckpoint, source: str) -> None:
        config = student.config
        if config.encoder.time_reduction is None or config.prediction_head is None \
                or config.prediction_head.type != "layerwise":
            raise CheckpointError(f"{source}: not a FitHuBERT-shaped student (time reduction + layerwise heads)")

    def rates(self, model: StudentModel) -> Dict[str, int]:
        rate, factor = model.downsample_rate, model.config.encoder.time_reduction.factor
        return {"hidden_states": rate, "hidden_states_40ms": rate * factor, "head_outputs": rate,
                "last_hidden_state": rate}

    def _to_20ms(self, model: StudentModel, index: int, layer_output: Tensor) -> Tensor:
        if self.upsample_mode == "trained":
            return model.prediction_head.heads[index].upsample(layer_output)
        return layer_output.repeat_interleave(model.config.encoder.time_reduction.factor, dim=1)

    def batch_outputs(self, model: StudentModel, waveforms: Tensor, lengths: Optional[Tensor]) -> LazyOutputs:
        """Runs the backbone; the heads and the 20 ms states are computed only for the key s3prl reads (the
        official upstream, likewise, runs only its last head)."""
        out = model(waveforms, lengths, predict=False)
        heads = model.prediction_head.heads
        tr = model.config.encoder.time_reduction
        # Every head ends at the input rate: keep the frames all of them have, factor * floor(T / factor).
        frames = min(x.shape[1] * (tr.factor if head.upsampler is not None else 1)
                     for head, x in zip(heads, out.layer_outputs))

        def hidden_states() -> List[Tensor]:
            states = [out.features[:, :frames]]
            for index, layer_output in enumerate(out.layer_outputs):
                upsampled = self._to_20ms(model, index, layer_output) if index >= tr.index else layer_output
                states.append(upsampled[:, :frames])
            return states

        head_output = head_outputs_on_demand(heads, out.layer_outputs, frames)
        return LazyOutputs({
            "hidden_states": hidden_states,
            "hidden_states_40ms": lambda: [x for i, x in enumerate(out.layer_outputs) if i >= tr.index],
            "head_outputs": lambda: [head_output(index) for index in range(len(heads))],
            "last_hidden_state": lambda: head_output(len(heads) - 1),
        })
