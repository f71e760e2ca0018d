"""The teacher: any s3prl upstream, frozen (eval mode, no grad, fp32, layerdrop off), and copying its weights into a
student where shapes allow."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from s3prl_distill.checkpoint import CheckpointError, load_checkpoint
from s3prl_distill.formats.fairseq import fairseq_keys
from s3prl_distill.losses import codeword_logits
from s3prl_distill.model import LAYER_ZERO_CHOICES, StudentModel, hidden_state_zero
from s3prl_distill.model.student import GATE_SUFFIX, HEAD_PREFIXES

from .config import StudentInitConfig, TeacherConfig

logger = logging.getLogger(__name__)


CODEBOOK_KEYS = ("final_proj.weight", "final_proj.bias", "label_embs_concat")


@dataclass
class HubertCodebook:
    """HuBERT's prediction layer: ``final_proj`` (Linear D -> final_dim) and the label embeddings (C, final_dim) it
    is scored against by cosine; C counts every codeword of the dictionary (500 clusters + 4 specials for Base)."""

    projection_weight: Tensor
    projection_bias: Tensor
    embeddings: Tensor

    def to(self, device: torch.device) -> "HubertCodebook":
        return HubertCodebook(*(t.to(device) for t in (self.projection_weight, self.projection_bias, self.embeddings)))

    def logits(self, last_hidden: Tensor, temperature: float) -> Tensor:
        """(B, T, D) teacher last layer -> (B, T, C): cos(final_proj(h), e_c) / temperature."""
        projected = torch.nn.functional.linear(last_hidden.float(), self.projection_weight.float(),
                                               self.projection_bias.float())
        return codeword_logits(projected, self.embeddings, temperature)


def codebook_from_state(state: Mapping[str, Tensor], source: str) -> HubertCodebook:
    missing = [key for key in CODEBOOK_KEYS if key not in state]
    if missing:
        raise ValueError(
            f"{source} has no {', '.join(missing)}: the discriminative loss needs a HuBERT teacher's final "
            "projection and label embeddings (s3prl's converted hubert_local checkpoints and fairseq HuBERT "
            "checkpoints carry them; method.codebook_ckpt can name such a file)"
        )
    if state["final_proj.weight"].shape[0] != state["label_embs_concat"].shape[1]:
        raise ValueError(f"{source}: final_proj gives {state['final_proj.weight'].shape[0]} dimensions but the label "
                         f"embeddings have {state['label_embs_concat'].shape[1]} (untied projections are not supported)")
    return HubertCodebook(*(state[key].detach().float().clone() for key in CODEBOOK_KEYS))


def read_hubert_codebook(path: str, trust_checkpoint: bool = False) -> HubertCodebook:
    """The codebook from a HuBERT checkpoint file: s3prl's converted format (``model_weight``, what
    ``hubert_local`` reads) or fairseq's (``model``)."""
    checkpoint = load_checkpoint(path, trust_checkpoint, what="HuBERT checkpoint")
    for key in ("model_weight", "model"):
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
            return codebook_from_state(checkpoint[key], f"HuBERT checkpoint {path}")
    raise CheckpointError(f"{path} is neither an s3prl-converted HuBERT checkpoint ('model_weight') nor a fairseq "
                          "one ('model')")


class Teacher(nn.Module):
    """Wraps ``getattr(s3prl.hub, name)(...)``; ``forward`` returns its ``hidden_states`` in s3prl's indexing
    (0 = transformer input, i = output of layer i), or with DPHuBERT's index 0 (the feature projection's output)."""

    def __init__(self, config: TeacherConfig) -> None:
        super().__init__()
        from s3prl_distill.registry import build_upstream

        self.name = config.name
        self.ckpt = config.ckpt
        self.description = config.describe()
        self.upstream = build_upstream(config.name, config.ckpt, config.upstream_config, config.refresh,
                                       what="teacher")
        disabled = 0
        for module in self.upstream.modules():
            for attribute in ("layerdrop", "encoder_layerdrop"):
                if isinstance(getattr(module, attribute, None), float) and getattr(module, attribute) > 0:
                    setattr(module, attribute, 0.0)
                    disabled += 1
        if disabled:
            logger.info("teacher %s: layerdrop turned off in %d modules", config.name, disabled)
        self.upstream.eval()
        self.upstream.requires_grad_(False)

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # always frozen

    @torch.no_grad()
    def forward(self, waveforms: Tensor, lengths: Tensor, layer_zero: str = "transformer_input",
                frame_mask: Optional[Tensor] = None) -> List[Tensor]:
        """``waveforms`` (B, S) zero-padded, ``lengths`` (B,) -> hidden states, each (B, T, D), in fp32.

        ``layer_zero="feature_projection"`` replaces hidden state 0 (s3prl's: the first layer's input, after the
        positional convolution and LayerNorm) by the tensor DPHuBERT calls layer 0: the projected CNN features
        before the positional convolution, read from the input of the upstream's transformer encoder.
        ``frame_mask`` (B, T') bool: the teacher's own masking (fairseq's ``apply_mask``) -- frames where it is True
        enter the encoder as the teacher's ``mask_emb``; the mask is cut or padded (unmasked) to the teacher's
        frames."""
        wavs = [wave[:length] for wave, length in zip(waveforms, lengths.tolist())]
        captured: List[Tensor] = []
        hooks = []
        if layer_zero not in LAYER_ZERO_CHOICES:
            raise ValueError(f"layer_zero must be one of {LAYER_ZERO_CHOICES}, not {layer_zero!r}")
        if frame_mask is not None:
            encoder, mask_embedding = self.masking_parts()
            hooks.append(encoder.register_forward_pre_hook(
                lambda module, args, kwargs: _masked_input(args, kwargs, frame_mask, mask_embedding), with_kwargs=True))
        if layer_zero == "feature_projection":
            hooks.append(self.feature_projection_module().register_forward_pre_hook(
                lambda module, args, kwargs: captured.append(args[0] if args else kwargs["x"]), with_kwargs=True))
        try:
            with torch.autocast(device_type=waveforms.device.type, enabled=False):
                states = list(self.upstream(wavs)["hidden_states"])
        finally:
            for hook in hooks:
                hook.remove()
        if layer_zero == "feature_projection":
            if len(captured) != 1 or captured[0].shape != states[0].shape:
                raise RuntimeError(f"teacher {self.name!r}: its encoder ran {len(captured)} times or took input of "
                                   f"another shape than its hidden states; cannot read the feature projection")
            states[0] = hidden_state_zero(layer_zero, captured[0], states[0])
        return [state.float() for state in states]

    def _fairseq_parts(self) -> Tuple[Optional[nn.Module], Optional[nn.Module]]:
        """The expert's model and its fairseq-style transformer encoder (one with ``pos_conv``: s3prl's HuBERT, WavLM
        and wav2vec 2.0), or None for what it lacks."""
        model = getattr(self.upstream, "model", None)
        encoder = getattr(model, "encoder", None)
        if not isinstance(encoder, nn.Module) or not hasattr(encoder, "pos_conv"):
            encoder = None
        return model, encoder

    def feature_projection_module(
        self, setting: str = "student.prediction_head.layer_zero: transformer_input"
    ) -> nn.Module:
        """The fairseq-style transformer encoder (s3prl's HuBERT, WavLM and wav2vec 2.0 experts): its input is the
        feature projection's output, before the positional convolution. ``setting``: what the error suggests to use
        s3prl's hidden state 0 instead."""
        _, encoder = self._fairseq_parts()
        if encoder is None:
            raise ValueError(
                f"teacher {self.name!r} has no fairseq-style encoder (model.encoder with pos_conv) whose input is the "
                "feature projection's output, which layer 0 in DPHuBERT's indexing needs; use a hubert, wavlm or "
                f"wav2vec2 teacher, or set {setting}"
            )
        return encoder

    def masking_parts(self) -> Tuple[nn.Module, Tensor]:
        """The fairseq-style encoder (its input: the projected CNN features, where fairseq masks) and the learned
        ``mask_emb`` of s3prl's HuBERT, WavLM and wav2vec 2.0 experts, for masking distillation's masked pass."""
        model, encoder = self._fairseq_parts()
        mask_embedding = getattr(model, "mask_emb", None)
        if encoder is None or not isinstance(mask_embedding, Tensor):
            raise ValueError(
                f"teacher {self.name!r} has no fairseq-style encoder and mask embedding (model.encoder, "
                "model.mask_emb), which masking distillation's masked teacher pass needs; use a hubert, wavlm or "
                "wav2vec2 teacher"
            )
        return encoder, mask_embedding

    def check_layers(self, layers: List[int], hidden_count: int) -> None:
        """A clear error for target layers beyond the teacher's hidden states."""
        missing = [layer for layer in layers if layer >= hidden_count]
        if missing:
            raise ValueError(f"target layers {missing} do not exist: teacher {self.name!r} has hidden states "
                             f"0..{hidden_count - 1}")

    def codebook(self, path: Optional[str] = None) -> HubertCodebook:
        """HuBERT's final projection + label embeddings: from ``path`` if given, else from the teacher's model."""
        if path is not None:
            return read_hubert_codebook(path)
        model = getattr(self.upstream, "model", None)
        state = model.state_dict() if isinstance(model, nn.Module) else {}
        return codebook_from_state(state, self.description)

    def fairseq_model(self) -> nn.Module:
        """The fairseq-layout model inside an s3prl HuBERT / wav2vec 2.0 expert (for initialising students)."""
        model = getattr(self.upstream, "model", None)
        if not isinstance(model, nn.Module) or not hasattr(model, "feature_extractor") or not hasattr(model, "encoder"):
            raise ValueError(
                f"teacher {self.name!r} has no fairseq-style model (feature_extractor + encoder) to initialise the "
                "student from; set every student_init option to false/0"
            )
        return model


def _masked_input(args: tuple, kwargs: dict, frame_mask: Tensor, mask_embedding: Tensor) -> Tuple[tuple, dict]:
    """The encoder's (args, kwargs) with the input's masked frames replaced by ``mask_embedding``."""
    features = args[0] if args else kwargs["x"]
    if frame_mask.shape[0] != features.shape[0]:
        raise ValueError(f"frame_mask has {frame_mask.shape[0]} rows for a batch of {features.shape[0]}")
    frames = features.shape[1]
    mask = frame_mask[:, :frames].to(features.device)
    mask = torch.nn.functional.pad(mask, (0, frames - mask.shape[1]))  # the teacher's extra frames: unmasked
    masked = torch.where(mask[..., None], mask_embedding.to(features.dtype), features)
    if args:
        return (masked, *args[1:]), kwargs
    return args, {**kwargs, "x": masked}


def initialise_student(student: StudentModel, teacher: Teacher, init: StudentInitConfig) -> List[str]:
    """Copy the requested parts from the teacher; a requested part whose shapes differ is an error."""
    wanted: List[Tuple[str, str]] = []
    if init.whole:
        wanted.append(("", "the whole backbone"))
    if init.feature_extractor:
        wanted.append(("feature_extractor.", "feature_extractor"))
    if init.feature_projection:
        wanted.append(("feature_projection.", "feature_projection"))
    if init.pos_conv:
        wanted.append(("encoder.pos_conv.", "pos_conv"))
    if init.layers > student.config.encoder.num_layers:
        raise ValueError(f"student_init.layers={init.layers} but the student has {student.config.encoder.num_layers}")
    wanted += [(f"encoder.layers.{i}.", f"layer {i}") for i in range(init.layers)]
    if not wanted:
        return []
    theirs = fairseq_keys(student.config).to_ours(teacher.fairseq_model().state_dict(), skip_unmatched=True)
    ours = student.state_dict()
    update, problems = {}, []
    for prefix, part in wanted:
        # Training heads, pruning gates and the pruning scale buffer are the student's own.
        keys = [key for key in ours if key.startswith(prefix) and not key.startswith(HEAD_PREFIXES)
                and not key.endswith(GATE_SUFFIX) and key != "feature_extractor.output_scale"]
        missing = [key for key in keys if key not in theirs]
        mismatched = [key for key in keys if key in theirs and theirs[key].shape != ours[key].shape]
        if not keys:
            problems.append(f"{part}: the student has no such part")
        if missing:
            problems.append(f"{part}: missing in the teacher: {', '.join(missing[:3])}"
                            + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
        problems += [f"{part}: {key} is {tuple(theirs[key].shape)} in the teacher, {tuple(ours[key].shape)} in the "
                     "student" for key in mismatched]
        update.update({key: theirs[key] for key in keys if key in theirs})
    if problems:
        # Reached only for teachers whose architecture the config check could not read from their checkpoint.
        raise ValueError(f"student_init: cannot copy from teacher {teacher.name!r}:\n  " + "\n  ".join(problems)
                         + "\nmake the student's shape the teacher's (or follow_teacher), or copy less (student_init)")
    student.load_state_dict(update, strict=False)
    copied = [part for _, part in wanted]
    logger.info("student initialised from the teacher: %s", ", ".join(copied))
    return copied
