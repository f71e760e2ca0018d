"""The small output adapters of the families that differ from the generic student (FitHuBERT's, larger, lives in
``fithubert/adapter.py``)."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

from torch import Tensor

from s3prl_distill.checkpoint import CheckpointError
from s3prl_distill.formats import StudentCheckpoint
from s3prl_distill.formats.huggingface import asr_upstream_name
from s3prl_distill.model import StudentModel

from .expert import OutputAdapter
from .interfaces import as_pad_mask, run_student, stackable, student_outputs


class DistilHuBERTOutputs(OutputAdapter):
    """s3prl's distiller checkpoints, with the outputs of s3prl's distiller upstream:

    * ``hidden_states``: [projected CNN features, each transformer layer, each prediction head];
    * ``last_hidden_state``: the last entry of ``hidden_states`` (the head predicting the deepest teacher layer);
    * ``paper``: the last transformer layer, the feature of the DistilHuBERT paper's SUPERB results;
    * ``pad_mask``: 1.0 on valid frames.
    """

    families = ("distilhubert",)
    keep_heads = True
    # Same keys as s3prl's distiller expert, so "-s paper" and friends work unchanged.
    feature_keys = ("hidden_states", "last_hidden_state", "paper", "pad_mask")

    @property
    def label(self) -> str:
        return "DistilHuBERT checkpoint"

    @property
    def wanted(self) -> str:
        return (f"the {self.name} upstream expects a DistilHuBERT checkpoint in s3prl's distiller format: "
                "{'Distiller': state_dict, 'Config': {'distiller': {...}}}")

    def rates(self, model: StudentModel) -> Dict[str, int]:
        return {key: model.downsample_rate for key in self.feature_keys}

    def batch_outputs(self, model: StudentModel, waveforms: Tensor, lengths: Optional[Tensor]) -> Mapping[str, Any]:
        out, hidden_states = run_student(model, waveforms, lengths)
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


class AsrStudentOutputs(OutputAdapter):
    """Wang et al.'s ASR students (``pretrain/asr_distill``; families ``deepthin`` and ``shallowwide``). Each entry
    name states the student's shape and front end and refuses a checkpoint holding another, naming the entry that
    fits, so a SUPERB result is never reported under the wrong model.

    Outputs: ``hidden_states`` = [front-end output (transformer input), each transformer layer], all 20 ms at the
    student's width; ``last_hidden_state`` = the last layer; ``pad_mask`` = 1.0 on valid frames."""

    families = ("asr_distill",)

    @property
    def wanted(self) -> str:
        return f"{self.name} expects a student trained with the asr_distill method (s3prl-distill pretrain)"

    def check(self, student: StudentCheckpoint, source: str) -> None:
        config = student.config
        found = student.upstream or asr_upstream_name(config)
        if found != self.name:
            raise CheckpointError(f"{source} holds a {found} student ({config.encoder.num_layers} layers of "
                                  f"{config.encoder.embed_dim}, {'fbank' if config.fbank_front_end else 'CNN'} "
                                  f"front end); load it with {found}_local")

    def batch_outputs(self, model: StudentModel, waveforms: Tensor, lengths: Optional[Tensor]) -> Mapping[str, Any]:
        out, hidden_states = run_student(model, waveforms, lengths)
        return student_outputs(out, hidden_states)


class PrunedStudentOutputs(OutputAdapter):
    """Jointly distilled and pruned students (``pretrain/dphubert``; families ``dphubert`` and ``skill``): ours after
    ``s3prl-distill prune`` (gated ones are refused with that command), and for ``dphubert`` also the official
    DPHuBERT / DPWavLM release ``{"config", "state_dict"}`` (which ``s3prl-distill export --to dphubert`` writes).
    Blocks removed by pruning have no parameters; an older pruned checkpoint of ours with zero stand-in biases for
    them loads too (see ``EncoderLayer``). The outputs are the generic student's: s3prl's HuBERT / WavLM indexing."""

    @property
    def families(self) -> Tuple[str, ...]:  # type: ignore[override]
        return (self.name,)

    @property
    def wanted(self) -> str:
        official = " or an official DPHuBERT {config, state_dict} checkpoint" if self.name == "dphubert" else ""
        return f"{self.name} expects a {self.name} student from s3prl-distill prune{official}"
