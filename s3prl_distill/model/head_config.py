"""Configs of the training heads: one class per prediction-head type, told apart by ``type``, each holding only its
own fields and building its own module; and the codeword head.

``student.prediction_head`` reads ``{type: expand_last | layerwise | projection, ...}``; without ``type`` it is
``expand_last``. A field of another head type is an unknown key.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any, List, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from ..options import LayerZero
from .config_base import StrictModel
from .heads import ExpandLastHead, GroupProjectionHeads, LayerwiseHeads, PredictionHead

if TYPE_CHECKING:
    from .config import EncoderConfig

logger = logging.getLogger(__name__)

DEFAULT_HEAD_TYPE = "expand_last"

# Older versions kept every head type's fields in one class, saved them all and ignored those of other head types:
# these keys, with any value they accepted (``target_groups`` was refused unless null), so a config saved then (in a
# checkpoint's StudentConfig or RunConfig, or a YAML copied from one) still loads. A value that did something on
# another head type is dropped with a warning; any other key of another head type is an unknown key.
_LEGACY_IGNORED = {"inner_dim": None, "group_target": "each", "group_student": "mean"}
_LEGACY_NULL_ONLY = ("target_groups",)


class PredictionHeadBase(StrictModel):
    """What every prediction head has. Subclasses fix ``type`` and implement :meth:`build`."""

    type: str
    out_dim: int = 768  # the teacher's width
    # Also a Linear from the front-end output to out_dim, predicting the teacher's hidden state 0 (the fbank
    # front end's adaptation stage).
    front_end: bool = False

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        foreign = [key for key in (*_LEGACY_IGNORED, *_LEGACY_NULL_ONLY) if key in data and key not in cls.model_fields]
        stale = [key for key in foreign if key in _LEGACY_IGNORED or data[key] is None]
        ignored = [key for key in stale if key in _LEGACY_IGNORED and data[key] != _LEGACY_IGNORED[key]]
        if ignored:
            logger.warning("prediction_head of type %s: %s ignored (%s applies to other head types; older versions "
                           "ignored it too)", data.get("type", DEFAULT_HEAD_TYPE),
                           ", ".join(f"{key}={data[key]!r}" for key in ignored), "it" if len(ignored) == 1 else "each")
        return {key: value for key, value in data.items() if key not in stale} if stale else data

    def check_encoder(self, encoder: "EncoderConfig") -> None:
        """Raise ``ValueError`` when this head cannot sit on ``encoder`` (run by ``StudentConfig``'s validation)."""

    def build(self, encoder: "EncoderConfig") -> PredictionHead:
        """The head module for a student with this encoder."""
        raise NotImplementedError


class _TargetLayersHead(PredictionHeadBase):
    # Teacher hidden-state indices (s3prl indexing: 0 = transformer input, i = output of layer i).
    target_layers: List[int] = Field(default_factory=lambda: [4, 8, 12])

    @field_validator("target_layers")
    @classmethod
    def _check_targets(cls, value: List[int]) -> List[int]:
        if not value or any(v < 0 for v in value):
            raise ValueError("target_layers must be a non-empty list of indices >= 0")
        return value


class ExpandLastHeadConfig(_TargetLayersHead):
    """DistilHuBERT: the last encoder layer goes through one shared Linear expanding to ``len(target_layers) *
    inner_dim``, a GELU, then one Linear per target layer."""

    type: Literal["expand_last"] = "expand_last"
    inner_dim: Optional[int] = None  # defaults to the encoder width

    def build(self, encoder: "EncoderConfig") -> PredictionHead:
        width = encoder.embed_dim
        return ExpandLastHead(width, self.inner_dim or width, self.out_dim, len(self.target_layers))


class LayerwiseHeadConfig(_TargetLayersHead):
    """FitHuBERT hints, deep-thin students: one head per encoder layer, head ``i`` on layer ``i + 1`` predicting
    ``target_layers[i]``: a ConvTranspose1d back to 20 ms for layers after a time reduction, then a Linear to
    ``out_dim`` when the widths differ."""

    type: Literal["layerwise"] = "layerwise"

    def check_encoder(self, encoder: "EncoderConfig") -> None:
        if len(self.target_layers) != encoder.num_layers:
            raise ValueError(f"layerwise heads: {len(self.target_layers)} target_layers for {encoder.num_layers} "
                             "layers")

    def build(self, encoder: "EncoderConfig") -> PredictionHead:
        factors = [encoder.layer_rate_factor(i) for i in range(encoder.num_layers)]
        return LayerwiseHeads(encoder.embed_dim, self.out_dim, factors)


class ProjectionHeadConfig(PredictionHeadBase):
    """DPHuBERT, SKILL: student hidden state i predicts teacher hidden state i (both in s3prl indexing) through a
    Linear shared by the layers of a group of ``target_groups`` (identity-initialised when the widths match).
    ``group_target: each`` (DPHuBERT): one target per layer; ``mean`` (SKILL): one target per group, the mean of the
    teacher's states in it, predicted from the mean of the student's states at the same indices (``group_student:
    mean``) or from the group's last index (``last``). Index 0 is DPHuBERT's (``layer_zero: feature_projection``,
    the default): the feature projection's output before the positional convolution, for the student and the
    teacher alike; ``transformer_input`` uses s3prl's hidden state 0 (the first layer's input, after the positional
    convolution and LayerNorm) instead (see :mod:`~s3prl_distill.model.hidden_states`)."""

    type: Literal["projection"] = "projection"
    target_groups: List[List[int]]
    group_target: Literal["each", "mean"] = "each"
    group_student: Literal["mean", "last"] = "mean"
    layer_zero: LayerZero = "feature_projection"

    @model_validator(mode="before")
    @classmethod
    def _accept_matching_target_layers(cls, data: Any) -> Any:
        """``target_layers`` is derived from the groups; a config may still list it, but only as they give it."""
        if not isinstance(data, dict) or "target_layers" not in data:
            return data
        data = dict(data)
        given = data.pop("target_layers")
        try:
            derived = sorted(layer for group in data.get("target_groups") for layer in group)
        except TypeError:
            return data  # malformed groups: their own validation names them
        if given != derived:
            raise ValueError(f"projection heads take their layers from target_groups ({derived}); drop target_layers")
        return data

    @field_validator("target_groups")
    @classmethod
    def _check_groups(cls, groups: List[List[int]]) -> List[List[int]]:
        if not groups or any(not group for group in groups):
            raise ValueError("projection heads need target_groups: a non-empty list of non-empty layer lists")
        flat = [layer for group in groups for layer in group]
        if any(layer < 0 for layer in flat) or len(set(flat)) != len(flat):
            raise ValueError(f"target_groups {groups}: layers must be >= 0 and appear once")
        return groups

    @property
    def target_layers(self) -> List[int]:
        """The teacher layers used (for code that reads every head's ``target_layers``: logging, caches)."""
        return sorted(layer for group in self.target_groups for layer in group)

    def projection_targets(self) -> List[List[int]]:
        """Per prediction, the hidden-state indices averaged into its target (one index in ``each`` mode)."""
        if self.group_target == "each":
            return [[layer] for group in self.target_groups for layer in group]
        return [sorted(group) for group in self.target_groups]

    def projection_of_target(self) -> List[int]:
        """Per prediction, the index of the group Linear it goes through."""
        if self.group_target == "each":
            return [g for g, group in enumerate(self.target_groups) for _ in group]
        return list(range(len(self.target_groups)))

    def check_encoder(self, encoder: "EncoderConfig") -> None:
        if max(self.target_layers) > encoder.num_layers:
            raise ValueError(f"projection heads: target layer {max(self.target_layers)} but the student has hidden "
                             f"states 0..{encoder.num_layers}")

    def build(self, encoder: "EncoderConfig") -> PredictionHead:
        sources = self.projection_targets()
        if self.group_target == "mean" and self.group_student == "last":
            sources = [[max(indices)] for indices in sources]
        return GroupProjectionHeads(encoder.embed_dim, self.out_dim, sources, self.projection_of_target(),
                                    len(self.target_groups), self.layer_zero)


def _head_type(value: Any) -> Optional[str]:
    if isinstance(value, dict):
        return value.get("type", DEFAULT_HEAD_TYPE)
    return getattr(value, "type", None)


HEAD_CONFIGS = (ExpandLastHeadConfig, LayerwiseHeadConfig, ProjectionHeadConfig)
HEAD_TYPES = tuple(cls.model_fields["type"].default for cls in HEAD_CONFIGS)

# The ``student.prediction_head`` section: one of the head configs, chosen by ``type`` (a validation error's key
# path names the type it was read as, e.g. ``prediction_head.projection.target_groups``).
PredictionHeadConfig = Annotated[
    Union[
        Annotated[ExpandLastHeadConfig, Tag("expand_last")],
        Annotated[LayerwiseHeadConfig, Tag("layerwise")],
        Annotated[ProjectionHeadConfig, Tag("projection")],
    ],
    Discriminator(_head_type, custom_error_type="head_type",
                  custom_error_message=f"type must be one of {', '.join(HEAD_TYPES)}"),
]


class CodewordHeadConfig(StrictModel):
    """A head on the last encoder layer for the discriminative loss against the teacher's codeword distribution.

    ``cosine``: a Linear to ``out_dim`` = the teacher's projection width (HuBERT Base's ``final_proj``: 256), scored
    by cosine against the teacher's frozen label embeddings; ``logits``: a Linear straight to ``out_dim`` = the
    number of codewords (504 for HuBERT Base: 500 clusters + 4 special symbols).
    """

    type: Literal["cosine", "logits"] = "logits"
    out_dim: int = Field(ge=1)
