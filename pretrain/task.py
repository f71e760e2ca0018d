"""Teacher + student + method: one distillation step's computation, shared by our runner and by the
``pretrain_expert.py`` files that plug the same code into s3prl's ``run_pretrain.py``."""

from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import soundfile

import torch
from torch import Tensor, nn

from s3prl_distill.audio_lists import AudioItem
from s3prl_distill.checkpoint import CheckpointError, load_checkpoint
from s3prl_distill.formats.native import describe_checkpoint, is_native_student
from s3prl_distill.losses import LossTerm
from s3prl_distill.model import StudentConfig, StudentModel
from s3prl_distill.model.fbank import fbank_statistics
from s3prl_distill.model.student import HEAD_PREFIXES
from s3prl_distill.progress import progress as show_progress

from .config import DataConfig, StudentInitConfig, TeacherConfig
from .method import DistillationBatch, take
from .methods import build_method, method_spec
from .teacher import Teacher, initialise_student
from .teacher_cache import TeacherCache, cache_key, required_layers

logger = logging.getLogger(__name__)

# Global mean/variance of 80 fbank bins are stable long before this (1000 LibriSpeech utterances ~ 3.4 h).
STATISTICS_UTTERANCES = 1000

class DistillationTask:
    """Not an ``nn.Module`` on purpose: the teacher must stay out of the student's state dict and optimizer."""

    def __init__(
        self,
        teacher: TeacherConfig,
        student: StudentConfig,
        student_init: StudentInitConfig,
        method,
        device: torch.device,
        cache: Optional[TeacherCache] = None,
        initialise: bool = True,
        seed: int = 0,
    ) -> None:
        """With a ``cache``, targets come from it: the teacher is loaded only when the student copies weights from
        it, and released after that (a method that masks frames keeps it for the masked pass). ``initialise=False``
        (a resume: every student weight comes from the checkpoint loaded right after) skips ``student_init``, whose
        copies would only be overwritten. ``seed``: the run's, for the masks of methods that mask frames."""
        self.cache = cache
        self.seed = seed
        masks_frames = method_spec(method.name).recipe.masks_frames
        copies_teacher = initialise and any(value for key, value in student_init.model_dump().items()
                                            if key != "checkpoint")
        self.teacher = Teacher(teacher).to(device) if cache is None or copies_teacher or masks_frames else None
        if masks_frames:
            self.teacher.masking_parts()  # a teacher that cannot be masked fails now, not at the first step
        self.student_config = student
        self.student = StudentModel(student)
        if copies_teacher:
            initialise_student(self.student, self.teacher, student_init)
        if initialise and student_init.checkpoint is not None:
            load_student_checkpoint(self.student, student_init.checkpoint)
        self.student.to(device)
        self.method = build_method(method, student)
        self.method.bind(self.student)
        if self.teacher is not None and cache is None and self.method.teacher_layer_zero == "feature_projection":
            self.teacher.feature_projection_module()  # a teacher that cannot give it fails now, not at the first step
        self.codebook = None
        if self.method.uses_codebook:
            source = cache.codebook() if cache is not None else self.teacher.codebook(self.method.codebook_ckpt)
            self.codebook = source.to(device)
            self._check_codeword_head()
        if cache is not None and masks_frames:
            logger.info("unmasked targets from the teacher cache %s; the teacher runs the masked pass",
                        cache.directory)
        elif cache is not None:
            self.teacher = None
            logger.info("targets from the teacher cache %s: no teacher forward", cache.directory)

    def check_cache(self, teacher: TeacherConfig, data: DataConfig, items: Sequence[AudioItem]) -> None:
        """Refuse a cache built for another teacher, layer set or data list, or at another frame rate than the
        student's."""
        layers = required_layers(self.method, int(self.cache.meta["num_hidden_states"]))
        self.cache.check(cache_key(teacher, data, items, layers, self.student.downsample_rate,
                                   self.method.teacher_layer_zero))

    def _check_codeword_head(self) -> None:
        head = self.student_config.codeword_head
        codewords, width = self.codebook.embeddings.shape
        expected = width if head.type == "cosine" else codewords
        if head.out_dim != expected:
            what = "projection width" if head.type == "cosine" else "number of codewords"
            raise ValueError(f"student.codeword_head.out_dim is {head.out_dim} but the teacher's {what} is "
                             f"{expected} (codebook {codewords} x {width})")

    def in_front_end_stage(self, step: int) -> bool:
        return step < self.method.front_end_steps

    def teacher_hidden_states(self, waveforms: Tensor, lengths: Tensor,
                              cached: Optional[Tensor] = None) -> List[Optional[Tensor]]:
        """The teacher's hidden states (s3prl indexing): computed, or from ``cached`` (B, T, layers, D) targets of
        the cache, with None for the layers it does not hold."""
        if cached is None:
            hidden_states = self.teacher(waveforms, lengths, self.method.teacher_layer_zero)
            self.teacher.check_layers(self.method.target_layers, len(hidden_states))
            return hidden_states
        hidden_states: List[Optional[Tensor]] = [None] * int(self.cache.meta["num_hidden_states"])
        for position, layer in enumerate(self.cache.layers):
            hidden_states[layer] = cached[:, :, position].float()
        return hidden_states

    def losses(self, student: nn.Module, waveforms: Tensor, lengths: Tensor, step: int = 0,
               cached: Optional[Tensor] = None) -> Dict[str, LossTerm]:
        """Teacher targets (computed, or ``cached`` from a teacher cache), student forward (through ``student``,
        which may be DDP-wrapped), the method's loss. ``step`` (0-based) selects the method's stage. ``lengths``
        (valid samples per row) are best kept on the CPU: then nothing here waits for the device."""
        hidden_states = self.teacher_hidden_states(waveforms, lengths, cached)
        student_lengths = _padded_lengths(lengths, waveforms)
        if self.in_front_end_stage(step):
            output = student(waveforms, student_lengths, front_end_only=True)
            return self.method.front_end_losses(output, hidden_states[0], _valid_frames(output, hidden_states[0]))
        # Teacher and student CNNs may differ by a frame at the end; compare the common frames.
        teacher_frames = next(state for state in hidden_states if state is not None).shape[1]
        frame_mask = masked_states = None
        if self.method.masks_frames:
            frame_mask, masked_states = self._masked_pass(waveforms, lengths, teacher_frames, step)
        output = student(waveforms, student_lengths, frame_mask=frame_mask)
        # A method without heads (predictions None) reads the student's hidden states, at the front end's rate.
        student_frames = output.features.shape[1] if output.predictions is None else output.predictions.shape[2]
        frames = min(student_frames, teacher_frames)
        targets = self.method.target_stack(hidden_states, frames)
        if output.predictions is not None:
            output = output._replace(
                predictions=take(output.predictions, 1, self.method.prediction_indices)[:, :, :frames])
        teacher_logits = codewords = None
        if self.codebook is not None:
            teacher_logits = self.codebook.logits(hidden_states[-1], self.method.codebook_temperature)
            codewords = self.codebook.embeddings
        masking = {} if frame_mask is None else {"frame_mask": frame_mask[:, :frames],
                                                 "masked_targets": self.method.target_stack(masked_states, frames)}
        batch = DistillationBatch(output, targets, _valid_frames(output, targets[:, 0]), hidden_states,
                                  teacher_logits, codewords, **masking)
        return {**self.method.losses(batch), **self.method.regularisers(self.student, step)}

    def _masked_pass(self, waveforms: Tensor, lengths: Tensor, teacher_frames: int,
                     step: int) -> Tuple[Tensor, List[Tensor]]:
        """The method's frame mask over the student's frames (drawn within the frames both models have and each
        row's valid frames), on the student's device, and the teacher's hidden states with that mask."""
        sample_lengths = lengths.cpu()
        student_frames = int(self.student.frame_lengths(torch.tensor([waveforms.shape[1]]))[0])
        common = min(student_frames, teacher_frames)
        mask = self.method.frame_mask(self.student.frame_lengths(sample_lengths), common, step, self.seed)
        mask = torch.nn.functional.pad(mask, (0, student_frames - common)).to(waveforms.device)
        return mask, self.teacher(waveforms, lengths, self.method.teacher_layer_zero, frame_mask=mask)

    def prepare_front_end(self, items: Sequence[AudioItem]) -> None:
        """Before the first step: the fbank front end's normalisation statistics from (up to
        ``STATISTICS_UTTERANCES`` evenly spaced) training utterances. A no-op when there are statistics already
        (no fbank front end, or a resumed run)."""
        fbank = self.student.fbank
        if fbank is None or fbank.has_statistics:
            return
        chosen = items[:: max(1, len(items) // STATISTICS_UTTERANCES)][:STATISTICS_UTTERANCES]
        waveforms = (torch.from_numpy(soundfile.read(str(item.path), dtype="float32")[0]) for item in
                     show_progress(chosen, desc="fbank statistics", leave=False))
        mean, std, frames = fbank_statistics(waveforms, fbank.num_mel_bins)
        fbank.set_statistics(mean.to(fbank.mean.device), std.to(fbank.std.device), frames)
        logger.info("fbank normalisation statistics from %d frames", frames)

    def student_state(self, checkpoint: Mapping) -> Dict[str, Tensor]:
        """The student's weights (our layout) from a checkpoint the method exported."""
        return self.method.student_state(checkpoint, self.student_config)

    def export(self, state: Optional[Mapping[str, Tensor]] = None) -> dict:
        """The method's checkpoint layout for the student's weights."""
        return self.method.export(self.student_config, self.student.state_dict() if state is None else state)


def load_student_checkpoint(student: StudentModel, path: str) -> None:
    """Start from a student checkpoint of ours (e.g. a pruned one): same config, every weight, heads included; or,
    for a student section with the same backbone but other training heads (none, for a method that trains none;
    layer-wise heads and a mask embedding for masking distillation on a pruned student), the backbone, the run's
    own heads starting fresh."""
    checkpoint = load_checkpoint(path, what="student_init.checkpoint")
    if not is_native_student(checkpoint):
        raise CheckpointError(f"student_init.checkpoint {path} is {describe_checkpoint(checkpoint)}, not an "
                              "s3prl-distill student checkpoint")
    saved = StudentConfig.from_dict(checkpoint["StudentConfig"], f"{path} (StudentConfig)")
    if saved == student.config:
        student.load_state_dict(checkpoint["Student"], strict=True)
        logger.info("student initialised from %s", path)
        return
    if _backbone(saved) != _backbone(student.config):
        raise ValueError(f"student_init.checkpoint {path} holds a student whose config differs from this run's "
                         "student section; use the config written next to it (e.g. by s3prl-distill prune), with "
                         "the same or other heads")
    backbone = {key: value for key, value in checkpoint["Student"].items() if not key.startswith(HEAD_PREFIXES)}
    missing, unexpected = student.load_state_dict(backbone, strict=False)
    left = [key for key in missing if not key.startswith(HEAD_PREFIXES)]
    if left or unexpected:  # equal backbone configs make equal backbone keys; a damaged file does not
        raise CheckpointError(f"student_init.checkpoint {path}: backbone weights missing ({', '.join(left[:3])}) or "
                              f"unexpected ({', '.join(unexpected[:3])})")
    logger.info("student initialised from %s: its backbone; the run's heads start fresh", path)


def _backbone(config: StudentConfig) -> StudentConfig:
    """The config without its training heads (what a checkpoint's backbone weights are compared by)."""
    return config.model_copy(update={"prediction_head": None, "codeword_head": None, "mask_embedding": False})


def _padded_lengths(lengths: Tensor, waveforms: Tensor) -> Optional[Tensor]:
    """``lengths`` on the student's device, or None when no row is padded, so the student takes its unmasked paths
    (one fused GroupNorm instead of masked statistics). Host-side ``lengths`` cost no device sync here."""
    if bool((lengths >= waveforms.shape[1]).all()):
        return None
    return lengths.to(waveforms.device, non_blocking=True)


def _valid_frames(output, like: Tensor) -> Optional[Tensor]:
    """(B, T) True on frames of real audio, for the T frames of ``like`` (B, T, ...); None without padding."""
    if output.lengths is None:
        return None
    return torch.arange(like.shape[1], device=like.device)[None, :] < output.lengths[:, None]
