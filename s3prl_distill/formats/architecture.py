"""The architecture of a model checkpoint (a teacher's), read from the file without building the model.

What a student that follows its teacher (``follow_teacher`` in a run config) takes from it: the backbone as our
:class:`StudentConfig` (CNN, widths, depth, attention), and HuBERT's codebook size where the file has one. Read
from s3prl's converted HuBERT / wav2vec 2.0 checkpoints (``hubert_local``, ``wav2vec2_local``: ``model_cfg``),
s3prl's WavLM checkpoints (``wavlm_local``: ``cfg``), fairseq checkpoints (``cfg.model``) and every student format
:func:`~.reader.read_student` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple, Union

from ..checkpoint import CheckpointError, load_checkpoint
from ..model.config import StudentConfig
from .fairseq import fairseq_backbone_config
from .reader import FORMATS, read_student


@dataclass(frozen=True)
class Architecture:
    """A model's shape: its backbone (heads left out), and HuBERT's codebook when it has one."""

    backbone: StudentConfig
    codewords: Optional[int] = None  # rows of HuBERT's label embeddings (clusters + special symbols)
    codeword_dim: Optional[int] = None  # HuBERT's final_proj output width (what the embeddings are compared in)

    @property
    def width(self) -> int:
        return self.backbone.encoder.embed_dim

    @property
    def num_layers(self) -> int:
        return self.backbone.encoder.num_layers


def _fairseq_fields(checkpoint: Mapping[str, Any]) -> Optional[Tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(model config fields, state dict) of a fairseq-style checkpoint, or None."""
    if isinstance(checkpoint.get("model_cfg"), Mapping):  # s3prl's converted HuBERT / wav2vec 2.0
        return checkpoint["model_cfg"], checkpoint.get("model_weight") or {}
    cfg = checkpoint.get("cfg")
    if isinstance(cfg, Mapping) and isinstance(cfg.get("model"), Mapping):  # fairseq's own
        return cfg["model"], checkpoint.get("model") or {}
    if isinstance(cfg, Mapping) and "encoder_embed_dim" in cfg:  # s3prl's WavLM
        return cfg, checkpoint.get("model") or {}
    return None


def architecture_of(checkpoint: Any, source: str) -> Architecture:
    """The architecture of a loaded checkpoint; :class:`CheckpointError` naming ``source`` when it has none we
    read."""
    if isinstance(checkpoint, Mapping):
        fields = _fairseq_fields(checkpoint)
        if fields is not None:
            cfg, state = fields
            try:
                backbone = fairseq_backbone_config(cfg)
            except ValueError as error:
                raise CheckpointError(f"{source}: its model config does not describe a backbone we build: {error}") \
                    from None
            embeddings, projection = state.get("label_embs_concat"), state.get("final_proj.weight")
            return Architecture(
                backbone,
                codewords=int(embeddings.shape[0]) if embeddings is not None else None,
                codeword_dim=int(projection.shape[0]) if projection is not None else None,
            )
        if any(detect(checkpoint) for _, detect, _, _ in FORMATS):
            student = read_student(checkpoint, source)
            return Architecture(student.config.model_copy(update={"prediction_head": None, "codeword_head": None}))
    raise CheckpointError(
        f"{source}: cannot read a model architecture from it (known: s3prl's hubert_local / wav2vec2_local / "
        "wavlm_local checkpoints, fairseq checkpoints, and the student formats s3prl-distill reads)")


def read_architecture(path: Union[str, Path], what: str = "checkpoint") -> Architecture:
    """:func:`architecture_of` the checkpoint file ``path`` (loaded as :func:`load_checkpoint` loads it)."""
    return architecture_of(load_checkpoint(path, what=what), f"{what} {path}")
