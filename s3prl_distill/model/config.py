"""Configuration of the student backbone.

Every student (DistilHuBERT, FitHuBERT, deep-thin, pruned) is a :class:`StudentConfig`; the model code reads nothing
else. Configs come from YAML, so they are validated strictly: an unknown or misspelt key is an error that names it.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, List, Literal, Optional, Tuple, Union

import yaml
from pydantic import Field, field_validator, model_validator

from ..errors import validated
from .config_base import StrictModel, check_probability
from .head_config import (
    CodewordHeadConfig,
    ExpandLastHeadConfig,
    LayerwiseHeadConfig,
    PredictionHeadConfig,
    ProjectionHeadConfig,
)

# Head configs live in head_config.py; they are importable from here too, with every other section of the student.
__all__ = [
    "CodewordHeadConfig", "ConvLayerSpec", "EncoderConfig", "ExpandLastHeadConfig", "FbankFrontEndConfig",
    "FeatureExtractorConfig", "HUBERT_CONV_LAYERS", "LayerwiseHeadConfig", "PredictionHeadConfig",
    "ProjectionHeadConfig", "PruningConfig", "RelativePositionConfig", "StrictModel", "StudentConfig",
    "TimeReductionConfig", "format_conv_layers", "parse_conv_layers",
]

ConvLayerSpec = Tuple[int, int, int]  # (out_channels, kernel_size, stride)

HUBERT_CONV_LAYERS = "[(512,10,5)] + [(512,3,2)]*4 + [(512,2,2)]*2"


def parse_conv_layers(spec: Union[str, List[Any]]) -> List[ConvLayerSpec]:
    """Parse a fairseq-style conv spec such as ``"[(512,10,5)] + [(512,3,2)]*4"`` without ``eval``.

    Only list/tuple literals of integers combined with ``+`` and ``*`` are accepted, so a config file can never run
    code. A list of triples (as YAML would give it) is accepted as well.
    """
    if isinstance(spec, str):
        try:
            tree = ast.parse(spec.strip(), mode="eval")
        except SyntaxError as error:
            raise ValueError(f"conv layer spec {spec!r} is not valid: {error.msg}") from None
        value = _evaluate_spec_node(tree.body, spec)
    else:
        value = spec
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"conv layer spec {spec!r} must be a non-empty list of (channels, kernel, stride) triples")
    layers = []
    for item in value:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in item)
        ):
            raise ValueError(
                f"conv layer spec {spec!r}: {item!r} is not a (channels, kernel, stride) triple of positive integers"
            )
        layers.append(tuple(item))
    return layers


def _evaluate_spec_node(node: ast.AST, spec: str) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_evaluate_spec_node(element, spec) for element in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _evaluate_spec_node(node.left, spec), _evaluate_spec_node(node.right, spec)
        return left + right if isinstance(node.op, ast.Add) else left * right
    raise ValueError(f"conv layer spec {spec!r}: only integer tuples, lists, '+' and '*' are allowed")


def format_conv_layers(layers: List[ConvLayerSpec]) -> str:
    """The canonical string form of a conv spec (readable by fairseq/s3prl's ``eval`` too)."""
    return "[" + ", ".join(f"({c},{k},{s})" for c, k, s in layers) + "]"


class FeatureExtractorConfig(StrictModel):
    """The convolutional waveform encoder."""

    conv_layers: List[ConvLayerSpec] = Field(default_factory=lambda: parse_conv_layers(HUBERT_CONV_LAYERS))
    # group_norm: a per-channel GroupNorm on the first layer only (wav2vec 2.0 / HuBERT Base "default" mode);
    # layer_norm: a LayerNorm over channels after every layer ("layer_norm" mode of the Large models).
    norm: Literal["group_norm", "layer_norm"] = "group_norm"
    bias: bool = False
    dropout: float = 0.0
    # Scales the gradient reaching the CNN (DistilHuBERT uses 0.1); 0 freezes it and skips its backward pass.
    grad_mult: float = 1.0
    # A fixed per-channel scale on the CNN output: where pruning folds the last conv layer's soft mask when a
    # LayerNorm follows (DPHuBERT's ``dummy_weight``).
    output_scale: bool = False

    @field_validator("conv_layers", mode="before")
    @classmethod
    def _parse_conv_layers(cls, value: Any) -> List[ConvLayerSpec]:
        return parse_conv_layers(value)

    @field_validator("dropout")
    @classmethod
    def _check_probability(cls, value: float) -> float:
        return check_probability(value)

    @field_validator("grad_mult")
    @classmethod
    def _check_grad_mult(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be >= 0")
        return value


class TimeReductionConfig(StrictModel):
    """A strided Conv1d (kernel = stride = ``factor``) that shortens the sequence before encoder layer ``index``
    (FitHuBERT: index 0, factor 2, so every layer runs at 40 ms). A frame stays valid only if all the frames it
    merges were valid; an odd trailing frame is dropped."""

    index: int = 0
    factor: int = 2

    @model_validator(mode="after")
    def _check(self) -> "TimeReductionConfig":
        if self.index < 0 or self.factor < 2:
            raise ValueError("index must be >= 0 and factor >= 2")
        return self


class RelativePositionConfig(StrictModel):
    """WavLM's gated relative position bias: one bucketed bias per head (``num_buckets`` buckets, log-spaced up to
    ``max_distance`` frames) computed once for the encoder, then per layer scaled by a gate computed from that
    layer's input (``gated``). ``num_heads`` is the unpruned head count the bias and gates are computed for."""

    num_buckets: int = 320
    max_distance: int = 800
    num_heads: int = 12
    gated: bool = True

    @model_validator(mode="after")
    def _check(self) -> "RelativePositionConfig":
        if self.num_buckets < 4 or self.max_distance < 2 or self.num_heads < 1:
            raise ValueError("num_buckets >= 4, max_distance >= 2 and num_heads >= 1 are required")
        return self


class EncoderConfig(StrictModel):
    """The transformer encoder: positional convolution and ``num_layers`` self-attention layers."""

    num_layers: int = 2
    embed_dim: int = 768
    # An int applies to every layer; a list gives each layer its own width (pruned students). 0 heads / 0 FFN units
    # mean the layer's attention / FFN block was removed by pruning (DPHuBERT's use_attention / use_feed_forward
    # false): it has no parameters at all; a post-LN layer still applies both LayerNorms, a pre-LN one skips it.
    ffn_dim: Union[int, List[int]] = 3072
    num_heads: Union[int, List[int]] = 12
    # Width of one attention head; defaults to embed_dim // num_heads (or // relative_position.num_heads).
    head_dim: Optional[int] = None
    relative_position: Optional[RelativePositionConfig] = None
    # With relative_position: which of its heads each layer keeps (pruned WavLM students); default all of them.
    kept_heads: Optional[List[List[int]]] = None
    layer_norm_first: bool = False
    activation: Literal["gelu", "relu"] = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    pos_conv_weight_norm: bool = True
    time_reduction: Optional[TimeReductionConfig] = None
    # Attention-map reuse (ARMHuBERT): per layer, True where the layer has no query/key projections and attends with
    # the attention map of the closest earlier layer that computes one, passed through a softmax once more (over the
    # valid keys): the released ARMHuBERT weights were trained so. Such a layer has no attention dropout (as in the
    # official code). None: every layer computes its own map.
    attention_reuse: Optional[List[bool]] = None
    # ARMHuBERT / MaskHuBERT's layer gradient scaling (their YAML's layer_grad_scale): the output of layer i
    # (0-based, of L) passes its gradient on scaled by m = (L - i) / (L - i + 1), and the copy in layer_outputs (the
    # distillation targets' side) scales its gradient by a further 1 - m. Forward values are unchanged.
    layer_grad_scale: bool = False

    @field_validator("dropout", "attention_dropout", "activation_dropout")
    @classmethod
    def _check_probability(cls, value: float) -> float:
        return check_probability(value)

    @model_validator(mode="after")
    def _check_shapes(self) -> "EncoderConfig":
        if self.num_layers < 0:
            raise ValueError("num_layers must be >= 0")
        if self.embed_dim <= 0:
            raise ValueError("embed_dim must be > 0")
        for name in ("ffn_dim", "num_heads"):
            values = getattr(self, name)
            if isinstance(values, list) and len(values) != self.num_layers:
                raise ValueError(f"{name} lists {len(values)} values for {self.num_layers} layers")
            if any(v < 0 for v in (values if isinstance(values, list) else [values])):
                raise ValueError(f"{name} must be >= 0")
        if self.head_dim is None:
            # Layers without attention (0 heads) have no head width to derive.
            reference = [self.relative_position.num_heads] if self.relative_position else \
                [h for h in self.layer_num_heads() if h > 0]
            bad = [h for h in reference if self.embed_dim % h]
            if bad:
                raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {bad[0]}; set head_dim")
        self._check_relative_position()
        self._check_attention_reuse()
        if self.pos_conv_kernel <= 0 or self.embed_dim % self.pos_conv_groups:
            raise ValueError("pos_conv_kernel must be > 0 and embed_dim divisible by pos_conv_groups")
        if self.time_reduction is not None and self.time_reduction.index > self.num_layers:
            raise ValueError(f"time_reduction.index {self.time_reduction.index} > num_layers {self.num_layers}")
        return self

    def _check_relative_position(self) -> None:
        position = self.relative_position
        if position is None:
            if self.kept_heads is not None:
                raise ValueError("kept_heads applies only with relative_position")
            return
        if self.embed_dim % position.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by relative_position.num_heads "
                             f"{position.num_heads} (the gates split the layer input per head)")
        if self.kept_heads is None and any(h != position.num_heads for h in self.layer_num_heads()):
            raise ValueError("with relative_position and fewer heads than relative_position.num_heads, list "
                             "each layer's kept_heads")
        if self.num_layers and self.layer_num_heads()[0] == 0:
            # DPHuBERT / WavLM keep the relative position embedding in layer 0's attention (ours is shared by the
            # encoder, but the official layout could not hold it): that block must survive.
            raise ValueError("with relative_position, layer 0 must keep its attention block (num_heads[0] >= 1): "
                             "it holds the relative position embedding in the DPHuBERT / WavLM layout")
        if self.kept_heads is None:
            return
        if len(self.kept_heads) != self.num_layers:
            raise ValueError(f"kept_heads lists {len(self.kept_heads)} layers for {self.num_layers}")
        for index, (kept, count) in enumerate(zip(self.kept_heads, self.layer_num_heads())):
            if len(kept) != count or len(set(kept)) != len(kept) or any(not 0 <= h < position.num_heads for h in kept):
                raise ValueError(f"kept_heads[{index}] = {kept} must be {count} distinct heads in "
                                 f"0..{position.num_heads - 1} (num_heads of that layer)")

    def _check_attention_reuse(self) -> None:
        if self.attention_reuse is None:
            return
        if len(self.attention_reuse) != self.num_layers:
            raise ValueError(f"attention_reuse lists {len(self.attention_reuse)} layers for {self.num_layers}")
        if not any(self.attention_reuse):
            return
        if self.attention_reuse[0]:
            raise ValueError("attention_reuse[0] must be false: the first layer has no earlier map to reuse")
        if self.relative_position is not None:
            raise ValueError("attention_reuse cannot be combined with relative_position")
        heads = self.layer_num_heads()
        for index, source in enumerate(self.layer_attention_sources()):
            if source is None:
                continue
            if heads[index] != heads[source] or heads[index] == 0:
                raise ValueError(f"attention_reuse: layer {index} ({heads[index]} heads) cannot reuse the map of "
                                 f"layer {source} ({heads[source]} heads); both need the same number >= 1")
            tr = self.time_reduction
            if tr is not None and source < tr.index <= index:
                raise ValueError(f"attention_reuse: layer {index} cannot reuse the map of layer {source} across the "
                                 f"time reduction before layer {tr.index} (the frame counts differ)")

    def layer_attention_sources(self) -> List[Optional[int]]:
        """Per layer, the index of the layer whose attention map it reuses (None: it computes its own)."""
        sources: List[Optional[int]] = []
        last = None
        for index, reuse in enumerate(self.attention_reuse or [False] * self.num_layers):
            sources.append(last if reuse else None)
            if not reuse:
                last = index
        return sources

    def layer_kept_heads(self) -> List[List[int]]:
        """Per layer, the heads (of relative_position.num_heads) it keeps."""
        if self.kept_heads is not None:
            return [list(kept) for kept in self.kept_heads]
        return [list(range(h)) for h in self.layer_num_heads()]

    def layer_rate_factor(self, layer: int) -> int:
        """How many input frames one output frame of layer ``layer`` (0-based) covers."""
        tr = self.time_reduction
        return tr.factor if tr is not None and layer >= tr.index else 1

    def layer_ffn_dims(self) -> List[int]:
        return self.ffn_dim if isinstance(self.ffn_dim, list) else [self.ffn_dim] * self.num_layers

    def layer_num_heads(self) -> List[int]:
        return self.num_heads if isinstance(self.num_heads, list) else [self.num_heads] * self.num_layers

    def layer_head_dim(self, num_heads: int) -> int:
        if self.head_dim is not None:
            return self.head_dim
        if self.relative_position is not None:
            return self.embed_dim // self.relative_position.num_heads
        return self.embed_dim // num_heads


class FbankFrontEndConfig(StrictModel):
    """Replaces the CNN (+ LayerNorm + projection): 80-dim Kaldi fbank every 10 ms -> global mean/variance
    normalisation (statistics from training data, stored in the checkpoint) -> Conv1d(kernel, stride 2) + GLU to
    20 ms frames -> Linear to the encoder width (Wang et al.'s input distillation; fairseq's Conv1dSubsampler)."""

    num_mel_bins: int = 80
    kernel_size: int = 5

    @model_validator(mode="after")
    def _check(self) -> "FbankFrontEndConfig":
        if self.num_mel_bins < 1 or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError("num_mel_bins must be >= 1 and kernel_size odd and >= 1")
        return self


class PruningConfig(StrictModel):
    """Hard-concrete (L0) gates for structured pruning (DPHuBERT): which units get gates, and each gate's initial
    drop probability m (log_alpha ~ N(log((1 - m) / m), 0.01); DPHuBERT's values). Pruning then removes the units
    whose final gate is 0 (``s3prl-distill prune``)."""

    conv_channels: bool = True  # output channels of every CNN layer
    attention_heads: bool = True
    ffn_units: bool = True  # FFN intermediate units
    attention_layers: bool = False  # whole attention blocks (off in DPHuBERT's recipe)
    ffn_layers: bool = False  # whole FFN blocks (idem)
    conv_initial_drop: float = 0.01
    head_initial_drop: float = 0.01
    ffn_initial_drop: float = 0.5
    layer_initial_drop: float = 0.01

    @model_validator(mode="after")
    def _check(self) -> "PruningConfig":
        for name in ("conv_initial_drop", "head_initial_drop", "ffn_initial_drop", "layer_initial_drop"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1)")
        return self


class StudentConfig(StrictModel):
    """CNN feature extractor -> (LayerNorm) -> projection -> transformer encoder -> (prediction heads), or with
    ``fbank_front_end`` the fbank front end in place of the first three."""

    feature_extractor: FeatureExtractorConfig = Field(default_factory=FeatureExtractorConfig)
    fbank_front_end: Optional[FbankFrontEndConfig] = None
    # LayerNorm on the CNN output (HuBERT and FitHuBERT have it, DistilHuBERT does not).
    feature_layer_norm: bool = False
    # CNN output channels removed by pruning that this LayerNorm still counts as zeros, so a pruned student computes
    # exactly what its gated form did (where those channels were gated to 0 but still in the statistics).
    feature_layer_norm_pruned: int = 0
    # Dropout on the projected features, before the positional convolution (fairseq's dropout_input).
    feature_dropout: float = 0.0
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    prediction_head: Optional[PredictionHeadConfig] = None
    codeword_head: Optional[CodewordHeadConfig] = None
    pruning: Optional[PruningConfig] = None
    # A learned vector replacing masked frames of the transformer input (ARMHuBERT / MaskHuBERT's ``mask_emb``, for
    # masking distillation); used only when a forward is given a frame mask, never by an upstream.
    mask_embedding: bool = False

    @field_validator("feature_dropout")
    @classmethod
    def _check_probability(cls, value: float) -> float:
        return check_probability(value)

    @model_validator(mode="after")
    def _check_heads(self) -> "StudentConfig":
        if self.fbank_front_end is not None:
            cnn_only = sorted({"feature_extractor", "feature_layer_norm", "feature_layer_norm_pruned"}
                              & self.model_fields_set)
            if cnn_only:
                raise ValueError(f"{', '.join(cnn_only)}: the CNN's options do not apply with fbank_front_end")
        if self.prediction_head is not None:
            self.prediction_head.check_encoder(self.encoder)
        if self.pruning is not None and any(self.encoder.attention_reuse or []):
            raise ValueError("pruning does not support encoder.attention_reuse")
        if self.pruning is not None and self.pruning.conv_channels:
            if self.fbank_front_end is not None or self.feature_extractor.norm != "group_norm":
                raise ValueError("pruning.conv_channels needs the CNN with group_norm (per-channel statistics); a "
                                 "LayerNorm over channels would change when channels are removed")
        return self

    @classmethod
    def from_dict(cls, data: Any, source: str = "student config") -> "StudentConfig":
        """Validate a plain dict (e.g. from YAML); errors name ``source`` and every offending key."""
        return validated(cls, data, f"invalid {source}")

    @classmethod
    def from_yaml(cls, path: Union[str, Path]) -> "StudentConfig":
        path = Path(path)
        with path.open() as file:
            return cls.from_dict(yaml.safe_load(file), source=str(path))

    def to_dict(self) -> dict:
        """A plain, YAML/torch-serialisable dict that :meth:`from_dict` reads back."""
        data = self.model_dump()
        data["feature_extractor"]["conv_layers"] = format_conv_layers(self.feature_extractor.conv_layers)
        if self.fbank_front_end is not None:  # the CNN sections are unused and would not validate back
            del data["feature_extractor"], data["feature_layer_norm"], data["feature_layer_norm_pruned"]
        return data

