"""What every distillation method (recipe) provides to the shared training step.

A method says which students it can train (``check_student``, run when the config loads), which teacher layers it
needs (``target_layers``) and which student heads predict them (``prediction_indices``), turns one batch into named
loss terms, and writes/reads the trained student's checkpoint (by default our native format, with the family the
method is registered with).
Optional abilities default to off: a front-end-only first stage (``front_end_steps``), the teacher's codeword
distribution (``uses_codebook``), targets other than single teacher layers (``target_stack``), losses on the student's
own parameters and the method's trainable state (``regularisers``, ``parameter_groups``, ``state_dict``), masked
student and teacher passes (``masks_frames``, ``frame_mask``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional

import torch
from torch import Tensor, nn

from s3prl_distill.formats.native import export_student
from s3prl_distill.losses import LossTerm
from s3prl_distill.model.config import StrictModel, StudentConfig
from s3prl_distill.model.student import StudentOutput


def take(tensor: Tensor, dim: int, indices: List[int]) -> Tensor:
    """``tensor``'s entries ``indices`` along ``dim`` (a view when they are a contiguous run). Unlike indexing with a
    Python list, which copies the list to the device as an index tensor, this never waits for a GPU."""
    if not indices:
        return tensor.narrow(dim, 0, 0)
    start = indices[0]
    if list(indices) == list(range(start, start + len(indices))):
        return tensor.narrow(dim, start, len(indices))
    return torch.cat([tensor.narrow(dim, index, 1) for index in indices], dim=dim)


class DistillationBatch(NamedTuple):
    # predictions already reduced to ``prediction_indices`` and the common frames; None for a student without heads
    # (then the method cuts the hidden states it reads to the targets' frames)
    student: StudentOutput
    targets: Tensor  # (B, N, T, D) teacher hidden states ``target_layers``, aligned with the predictions
    valid: Optional[Tensor]  # (B, T) True on frames of real audio; None when the batch has no padding
    teacher_hidden: List[Tensor]  # every teacher hidden state (s3prl indexing), each (B, T_teacher, D)
    teacher_codeword_logits: Optional[Tensor] = None  # (B, T, C) when the method uses the teacher's codebook
    codewords: Optional[Tensor] = None  # (C, final_dim) the teacher's label embeddings, idem
    frame_mask: Optional[Tensor] = None  # (B, T) True on the frames masked, for methods that mask frames
    masked_targets: Optional[Tensor] = None  # (B, N, T, D) like ``targets``, from the teacher pass with that mask


class Method:
    target_layers: List[int]
    prediction_indices: List[int]  # empty for a method that trains no heads
    front_end_steps: int = 0  # steps at the start that train only the student's front end
    uses_codebook: bool = False
    codebook_temperature: float = 1.0
    codebook_ckpt: Optional[str] = None  # where to read the codebook when the teacher model lacks it
    # Which teacher tensor hidden state 0 is: s3prl's (the first layer's input) or DPHuBERT's (the feature
    # projection's output, before the positional convolution).
    teacher_layer_zero: str = "transformer_input"
    # The upstream family of the exported checkpoints: the registration's (``MethodSpec.family``), set by
    # ``build_method``; a recipe never spells it.
    family: Optional[str] = None
    # Masking distillation: the student's transformer input and a second teacher pass get the frames ``frame_mask``
    # draws replaced by their mask embeddings; the batch then carries the mask and that pass's targets.
    masks_frames: bool = False

    @classmethod
    def check_student(cls, config: StrictModel, student: StudentConfig) -> None:
        """Refuse (``ValueError`` naming the setting) a student this method cannot train. The config runs it when it
        loads, before any teacher is built; recipes call it in their constructor too."""

    @classmethod
    def scale_layers(cls, config: StrictModel, scale: Callable[[List[int]], List[int]],
                     student: StudentConfig) -> StrictModel:
        """The method config with its own layer lists (if any) rescaled for a teacher of another depth
        (``follow_teacher.layers_of``): ``scale`` maps layers of the teacher the recipe was written for to this
        teacher's; ``student`` is the student as it follows the teacher. The student's target layers are already
        rescaled."""
        return config

    def bind(self, student: nn.Module) -> None:
        """Called once with the built (and initialised) student, before training."""

    def target_stack(self, hidden_states: List[Tensor], frames: int) -> Tensor:
        """(B, N, T, D) targets from the teacher's hidden states: ``target_layers`` cut to ``frames``."""
        return torch.stack([hidden_states[i][:, :frames] for i in self.target_layers], dim=1)

    def losses(self, batch: DistillationBatch) -> Dict[str, LossTerm]:
        raise NotImplementedError

    def frame_mask(self, frame_lengths: Tensor, frames: int, step: int, seed: int) -> Tensor:
        """(B, ``frames``) bool, True on the frames to mask, within each row's ``frame_lengths`` valid frames;
        ``step``: the update being computed, ``seed``: the run's (methods with ``masks_frames`` only)."""
        raise NotImplementedError(f"{type(self).__name__} does not mask frames")

    def regularisers(self, student: nn.Module, step: int) -> Dict[str, LossTerm]:
        """Loss terms on the student's parameters themselves (not on a batch), added once per micro-batch."""
        return {}

    def parameter_groups(self, student: nn.Module, weight_decay: float) -> Optional[List[dict]]:
        """Optimizer groups when the method needs its own (extra parameters, other learning rates); None: the
        runner's default (weight decay on everything but biases)."""
        return None

    def scalars(self) -> Dict[str, float]:
        """Extra values to log (the latest step's)."""
        return {}

    def state_dict(self) -> dict:
        """The method's own trainable state, saved in training checkpoints."""
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        pass

    def front_end_losses(self, student: StudentOutput, target: Tensor, valid: Optional[Tensor]) -> Dict[str, LossTerm]:
        """Loss of the front-end stage: ``student.front_end_prediction`` against teacher hidden state 0."""
        raise NotImplementedError(f"{type(self).__name__} has no front-end stage")

    def export(self, student: StudentConfig, state: Mapping[str, Tensor]) -> dict:
        """The trained student's checkpoint: our native format, whose ``Family`` picks the upstream that loads it."""
        if self.family is None:
            raise RuntimeError(f"{type(self).__name__} was built without its registered family; build recipes with "
                               "pretrain.methods.build_method")
        return export_student(self.family, student, state)

    @staticmethod
    def student_state(checkpoint: Mapping, student: StudentConfig) -> Dict[str, Tensor]:
        """The inverse of :meth:`export`: the student's weights (our layout)."""
        return dict(checkpoint["Student"])


def require_head(method: str, student: StudentConfig, head_type: Optional[str] = None, note: str = "") -> Any:
    """``student.prediction_head``, or the ``ValueError`` of a ``check_student``: method ``method`` needs one (of
    ``head_type``, ``note`` saying why)."""
    head = student.prediction_head
    if head is None or (head_type is not None and head.type != head_type):
        kind = f" of type {head_type}{note}" if head_type is not None else ""
        raise ValueError(f"the {method} method needs student.prediction_head{kind}, not "
                         f"{'none' if head is None else head.type}")
    return head
