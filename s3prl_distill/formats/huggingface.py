"""Hugging Face transformers directories <-> our :class:`StudentModel`.

A transformers directory is ``config.json`` plus ``model.safetensors`` (or the older ``pytorch_model.bin``).
``export_huggingface`` writes one from a student checkpoint of ours (or s3prl's distiller format):

- a student a stock ``HubertConfig`` or ``WavLMConfig`` expresses (:func:`stock_type` picks the one its layers are,
  :func:`inexpressible` is empty) as transformers' HuBERT / WavLM (``model_type: hubert`` / ``wavlm``):
  ``transformers.AutoModel.from_pretrained(DIR)`` builds the stock ``HubertModel`` / ``WavLMModel`` with no code of
  ours;
- any other (pruned per-layer widths, FitHuBERT's time reduction, the fbank front end, WavLM's bias with pruned
  heads or without gates...) as our own model type :data:`~s3prl_distill.options.HF_MODEL_TYPE`: ``config.json``
  holds the whole ``StudentConfig``, ``model.safetensors`` our StudentModel's own key names; our classes
  (:mod:`s3prl_distill.hf_config`, :mod:`s3prl_distill.hf_model`), registered with transformers' ``AutoConfig`` /
  ``AutoModel`` when s3prl-distill is installed, build it (no ``trust_remote_code``).

``read_huggingface_directory`` reads any of them (and anyone's HuBERT or WavLM directory, e.g.
``ntu-spml/distilhubert``) back into our config and weights. Nothing here imports transformers: the config is plain
JSON, the weights go through the ``safetensors`` library (no pickle), and a ``pytorch_model.bin`` through our safe
checkpoint reader.

What a stock ``HubertModel`` computes, next to our model (the mapping this module relies on):

- CNN: ``feat_extract_norm: group`` is our ``group_norm`` mode (a GroupNorm on the first layer only), ``layer`` our
  ``layer_norm`` mode; ``conv_bias`` is one flag for every layer, as ours; GELU after each layer.
- ``feat_proj_layer_norm`` is our ``feature_layer_norm`` (DistilHuBERT: false); transformers always has the
  projection, so a student whose CNN already has the encoder's width gets an identity projection.
- Positional convolution: weight-normed (dim 2), ``num_conv_pos_embeddings`` / ``_groups``, an even kernel drops its
  last frame, GELU; written under the legacy ``weight_g`` / ``weight_v`` names, which every transformers version
  reads (newer ones rename them to ``parametrizations.weight.original0/1`` on load, which we also read).
- ``do_stable_layer_norm: false`` is post-LN (HuBERT Base, DistilHuBERT): the encoder LayerNorm follows the
  positional convolution; ``true`` is our ``layer_norm_first`` (the LayerNorm after the last layer).
- Hidden states: transformers' ``hidden_states[0]`` is the first layer's input (after the positional convolution and,
  post-LN, its LayerNorm): s3prl's HuBERT hidden state 0, our ``encoder_input``; ``hidden_states[i]`` is layer ``i``'s
  raw output, our ``layer_outputs[i - 1]``. (s3prl's distiller upstream, and ours for DistilHuBERT, call the
  projection output before the positional convolution hidden state 0 instead; it has no transformers counterpart.)

``WavLMModel`` is the same backbone (same names) plus, in every layer, WavLM's gated relative position bias:

- The bias table (``rel_attn_embed``, ``num_buckets`` x heads) exists in layer 0 only; layer 0 computes the bias
  (T5-style bidirectional log buckets up to ``max_bucket_distance``) and every later layer reuses it ungated: our
  encoder's shared ``relative_position.embedding``. Each layer gates it with ``gru_rel_pos_linear`` /
  ``gru_rel_pos_const`` applied to its attention input split into one slice per head: our ``gate_linear`` /
  ``gate_const``. There is no switch for an ungated bias, nor for a layer that keeps only some of the bias's
  heads (pruned WavLM students): those go to our type.
- The CNN output always has its LayerNorm (no ``feat_proj_layer_norm``): a WavLM student without it goes to our
  type. Padding: ``attention_mask`` zeroes padded frames before the positional convolution and masks padded keys
  (``key_padding_mask``), which is what our encoder does.
- SpecAugment masking (``mask_time_prob``) and ``layerdrop`` are written as 0: our students have neither a learnt
  mask embedding nor layer drop. Pass e.g. ``mask_time_prob=0.05`` to ``from_pretrained`` to fine-tune with masking
  (its mask embedding is then newly initialised). Both act only in training mode anyway.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Dict, List, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ..checkpoint import CheckpointError, checkpoint_or_latest, load_checkpoint
from ..model.config import EncoderConfig, FeatureExtractorConfig, RelativePositionConfig, StudentConfig
from ..options import HF_ARCHITECTURE, HF_MODEL_TYPE, HF_STUDENT_CONFIG_KEY
from .keymap import KeyMap

if TYPE_CHECKING:
    from .reader import StudentCheckpoint

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
PYTORCH_FILE = "pytorch_model.bin"
# Our own record in config.json (transformers keeps unknown config fields as attributes and ignores them).
RECORD_KEY = "s3prl_distill"
# Weights of a transformers HuBERT / WavLM file that are not our backbone's: the mask embedding, and task heads
# (a task model's heads are also recognised as the keys outside its base-model prefix).
_NOT_BACKBONE = ("masked_spec_embed", "lm_head.", "projector.", "classifier.", "layer_weights")

# (transformers' name, ours); see KeyMap. Order matters where one prefix starts another. Shared by HuBERT and WavLM,
# whose backbones transformers names alike.
_COMMON_RULES = [
    ("feature_extractor.conv_layers.{n}.conv.", "feature_extractor.conv_layers.{n}.conv."),
    ("feature_extractor.conv_layers.{n}.layer_norm.", "feature_extractor.conv_layers.{n}.norm."),
    ("feature_projection.layer_norm.", "feature_norm."),
    ("feature_projection.projection.", "feature_projection."),
    ("encoder.pos_conv_embed.conv.weight_g", "encoder.pos_conv.conv.parametrizations.weight.original0"),
    ("encoder.pos_conv_embed.conv.weight_v", "encoder.pos_conv.conv.parametrizations.weight.original1"),
    ("encoder.pos_conv_embed.conv.", "encoder.pos_conv.conv."),
    ("encoder.layer_norm.", "encoder.layer_norm."),
    ("encoder.layers.{n}.attention.", "encoder.layers.{n}.attention."),
    ("encoder.layers.{n}.layer_norm.", "encoder.layers.{n}.attention_norm."),
    ("encoder.layers.{n}.feed_forward.intermediate_dense.", "encoder.layers.{n}.feed_forward.fc1."),
    ("encoder.layers.{n}.feed_forward.output_dense.", "encoder.layers.{n}.feed_forward.fc2."),
    ("encoder.layers.{n}.final_layer_norm.", "encoder.layers.{n}.feed_forward_norm."),
]
# WavLM's relative position bias: transformers keeps the (shared) bias table in layer 0's attention, ours in the
# encoder; each layer's gate ("gru_rel_pos") is our gate_linear / gate_const. Before the attention rule they refine.
_WAVLM_RULES = [
    ("encoder.layers.0.attention.rel_attn_embed.", "encoder.relative_position.embedding."),
    ("encoder.layers.{n}.attention.gru_rel_pos_linear.", "encoder.layers.{n}.attention.gate_linear."),
    ("encoder.layers.{n}.attention.gru_rel_pos_const", "encoder.layers.{n}.attention.gate_const"),
]


class StockType(NamedTuple):
    """A stock transformers model type our students export to."""

    model_type: str
    architecture: str
    # The base-model prefix of its task models' weights (HubertForCTC's "hubert.", WavLMForCTC's "wavlm.").
    base_prefix: str
    keys: KeyMap


HUBERT = StockType("hubert", "HubertModel", "hubert.", KeyMap(_COMMON_RULES))
WAVLM = StockType("wavlm", "WavLMModel", "wavlm.", KeyMap(_WAVLM_RULES + _COMMON_RULES))
STOCK_TYPES = {stock.model_type: stock for stock in (HUBERT, WAVLM)}

# The families whose upstream presents the prediction heads (FitHuBERT's hint heads: its last_hidden_state and
# "trained" upsampling; ARMHuBERT / MaskHuBERT's hidden_states); their heads go into our own type's export, so the
# directory loads back there. Every other
# student's heads serve training only and are left out, as the stock export does.
KEEP_HEADS_FAMILIES = ("fithubert", "armhubert", "maskhubert")
# The submodule of our transformers model holding the StudentModel (hf_model.BASE_MODEL_PREFIX): a save_pretrained
# of that class prefixes the StudentModel's key names with it.
_OWN_PREFIX = "student."


def stock_type(config: StudentConfig) -> StockType:
    """The stock transformers type whose layers ``config``'s are: WavLM's with the relative position bias, else
    HuBERT's (:func:`inexpressible` says whether its config expresses the rest)."""
    return WAVLM if config.encoder.relative_position is not None else HUBERT


def _uniform(values: List[int]) -> Optional[int]:
    """The one value every layer has, else None (an empty encoder counts as uniform with None)."""
    return values[0] if values and all(value == values[0] for value in values) else None


def inexpressible(config: StudentConfig) -> List[str]:
    """Why the stock config of ``config``'s type (:func:`stock_type`: ``HubertConfig`` or ``WavLMConfig``) cannot
    express ``config`` (empty: it can)."""
    problems = []
    encoder = config.encoder
    if config.fbank_front_end is not None:
        problems.append("the fbank front end (transformers' HuBERT / WavLM have only the CNN)")
    if config.pruning is not None:
        problems.append("hard-concrete pruning gates (prune the student first)")
    if encoder.time_reduction is not None:
        problems.append("a time reduction inside the encoder (FitHuBERT's layers run at 40 ms)")
    heads, ffn = _uniform(encoder.layer_num_heads()), _uniform(encoder.layer_ffn_dims())
    if heads is None or ffn is None:
        problems.append("per-layer head counts / FFN widths (a pruned student; a stock config has one of each)")
    elif heads < 1 or ffn < 1:
        problems.append("layers without an attention or feed-forward block")
    elif encoder.layer_head_dim(heads) * heads != encoder.embed_dim:
        problems.append(f"head_dim {encoder.layer_head_dim(heads)} x {heads} heads != width {encoder.embed_dim}")
    position = encoder.relative_position
    if position is not None:
        # transformers' WavLMAttention: the bias and its gates span all num_attention_heads heads, every layer gates.
        if not position.gated:
            problems.append("WavLM's relative position bias without gates (transformers' WavLM always gates it)")
        if heads is not None and (position.num_heads != heads or
                                  any(kept != list(range(heads)) for kept in encoder.layer_kept_heads())):
            problems.append("heads pruned out of WavLM's relative position bias (transformers' WavLM computes it "
                            "for all of a layer's heads)")
        if not config.feature_layer_norm:
            problems.append("no LayerNorm on the CNN output (transformers' WavLM always has one)")
    if any(encoder.attention_reuse or []):
        problems.append("layers reusing an earlier layer's attention map (ARMHuBERT)")
    if not encoder.pos_conv_weight_norm:
        problems.append("a positional convolution without weight norm")
    if config.fbank_front_end is None:
        if config.feature_extractor.output_scale:
            problems.append("a per-channel CNN output scale (DPHuBERT's dummy_weight)")
        if config.feature_layer_norm_pruned:
            problems.append("pruned CNN channels counted by the feature LayerNorm")
    return problems


def hf_config(config: StudentConfig, record: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """transformers' ``config.json`` (HuBERT's or WavLM's, :func:`stock_type`) for ``config`` (which
    :func:`inexpressible` must accept); ``record``: our description (method, teacher, upstream entry), kept under
    :data:`RECORD_KEY`."""
    extractor, encoder = config.feature_extractor, config.encoder
    stock = stock_type(config)
    data: Dict[str, Any] = {
        "architectures": [stock.architecture],
        "model_type": stock.model_type,
        "conv_dim": [channels for channels, _, _ in extractor.conv_layers],
        "conv_kernel": [kernel for _, kernel, _ in extractor.conv_layers],
        "conv_stride": [stride for _, _, stride in extractor.conv_layers],
        "num_feat_extract_layers": len(extractor.conv_layers),
        "conv_bias": extractor.bias,
        "feat_extract_norm": "layer" if extractor.norm == "layer_norm" else "group",
        "feat_extract_activation": "gelu",
        "feat_proj_dropout": config.feature_dropout,
        "hidden_size": encoder.embed_dim,
        "num_hidden_layers": encoder.num_layers,
        "num_attention_heads": _uniform(encoder.layer_num_heads()) or 1,
        "intermediate_size": _uniform(encoder.layer_ffn_dims()) or 1,
        "hidden_act": encoder.activation,
        "hidden_dropout": encoder.dropout,
        "attention_dropout": encoder.attention_dropout,
        "activation_dropout": encoder.activation_dropout,
        "final_dropout": encoder.dropout,
        "layerdrop": 0.0,
        "layer_norm_eps": 1e-5,
        "num_conv_pos_embeddings": encoder.pos_conv_kernel,
        "num_conv_pos_embedding_groups": encoder.pos_conv_groups,
        "do_stable_layer_norm": encoder.layer_norm_first,
        "apply_spec_augment": True,
        "mask_time_prob": 0.0,
        "mask_feature_prob": 0.0,
    }
    if stock is WAVLM:  # its feature LayerNorm is always there (inexpressible checks we have it)
        data.update(num_buckets=encoder.relative_position.num_buckets,
                    max_bucket_distance=encoder.relative_position.max_distance)
    else:
        data.update(feat_proj_layer_norm=config.feature_layer_norm, conv_pos_batch_norm=False)
    if record:
        data[RECORD_KEY] = dict(record)
    return data


def _need(cfg: Mapping[str, Any], key: str, source: str) -> Any:
    if key not in cfg:
        raise CheckpointError(f"{source}: config.json has no {key!r}")
    return cfg[key]


def student_config_from_hf(cfg: Mapping[str, Any], source: str) -> StudentConfig:
    """Our config from a transformers HuBERT or WavLM ``config.json`` (transformers' defaults for fields it leaves
    out)."""
    stock = _stock_type_of(cfg, source)
    problems = []
    if cfg.get("conv_pos_batch_norm", False):
        problems.append("conv_pos_batch_norm")
    if cfg.get("feat_extract_activation", "gelu") != "gelu":
        problems.append(f"feat_extract_activation {cfg.get('feat_extract_activation')!r}")
    if cfg.get("hidden_act", "gelu") not in ("gelu", "relu"):
        problems.append(f"hidden_act {cfg.get('hidden_act')!r}")
    if float(cfg.get("layer_norm_eps", 1e-5)) != 1e-5:
        problems.append(f"layer_norm_eps {cfg.get('layer_norm_eps')}")
    if cfg.get("adapter_attn_dim") is not None:
        problems.append("adapter_attn_dim")
    if cfg.get("add_adapter", False):
        problems.append("add_adapter")
    if problems:
        raise CheckpointError(f"{source}: our student backbone cannot express {', '.join(problems)}")
    dims, kernels, strides = (list(_need(cfg, key, source)) for key in ("conv_dim", "conv_kernel", "conv_stride"))
    if not len(dims) == len(kernels) == len(strides):
        raise CheckpointError(f"{source}: conv_dim, conv_kernel and conv_stride differ in length")
    num_heads = int(_need(cfg, "num_attention_heads", source))
    try:
        # WavLM: every layer gates the bias for all its heads; the CNN output always has its LayerNorm.
        relative_position = RelativePositionConfig(
            num_buckets=int(cfg.get("num_buckets", 320)), max_distance=int(cfg.get("max_bucket_distance", 800)),
            num_heads=num_heads, gated=True) if stock is WAVLM else None
        return StudentConfig(
            feature_extractor=FeatureExtractorConfig(
                conv_layers=[(int(c), int(k), int(s)) for c, k, s in zip(dims, kernels, strides)],
                norm="layer_norm" if cfg.get("feat_extract_norm", "group") == "layer" else "group_norm",
                bias=bool(cfg.get("conv_bias", False)),
            ),
            feature_layer_norm=stock is WAVLM or bool(cfg.get("feat_proj_layer_norm", True)),
            feature_dropout=float(cfg.get("feat_proj_dropout", 0.0)),
            encoder=EncoderConfig(
                num_layers=int(_need(cfg, "num_hidden_layers", source)),
                embed_dim=int(_need(cfg, "hidden_size", source)),
                ffn_dim=int(_need(cfg, "intermediate_size", source)),
                num_heads=num_heads,
                relative_position=relative_position,
                layer_norm_first=bool(cfg.get("do_stable_layer_norm", False)),
                activation=str(cfg.get("hidden_act", "gelu")),
                dropout=float(cfg.get("hidden_dropout", 0.1)),
                attention_dropout=float(cfg.get("attention_dropout", 0.1)),
                activation_dropout=float(cfg.get("activation_dropout", 0.1)),
                pos_conv_kernel=int(cfg.get("num_conv_pos_embeddings", 128)),
                pos_conv_groups=int(cfg.get("num_conv_pos_embedding_groups", 16)),
            ),
        )
    except ValueError as error:
        raise CheckpointError(f"{source}: config.json does not make a valid student: {error}") from None


def _stock_type_of(cfg: Mapping[str, Any], source: str) -> StockType:
    """The stock type a transformers ``config.json`` names; another ``model_type`` is refused, naming it."""
    model_type = cfg.get("model_type")
    if model_type not in STOCK_TYPES:
        raise CheckpointError(
            f"{source} is a transformers {model_type!r} model; only {' / '.join(map(repr, STOCK_TYPES))} directories "
            f"(a stock HubertConfig / WavLMConfig) and {HF_MODEL_TYPE!r} ones (s3prl-distill's own) are read")
    return STOCK_TYPES[model_type]


def state_dict_to_hf(state: Mapping[str, Tensor], config: StudentConfig) -> Dict[str, Tensor]:
    """transformers' weights (HuBERT's or WavLM's names, :func:`stock_type`) from our backbone's (heads already
    dropped); an identity projection where ours has none (a CNN as wide as the encoder)."""
    theirs = stock_type(config).keys.to_theirs(state)
    if "feature_projection.projection.weight" not in theirs:
        width = config.encoder.embed_dim
        theirs["feature_projection.projection.weight"] = torch.eye(width)
        theirs["feature_projection.projection.bias"] = torch.zeros(width)
    return {key: value.detach().contiguous() for key, value in theirs.items()}


def state_dict_from_hf(state: Mapping[str, Tensor], config: StudentConfig, source: str) -> Dict[str, Tensor]:
    """Our backbone's weights from a transformers HuBERT / WavLM state dict (of :func:`stock_type` of ``config``):
    a task model's (``HubertForCTC``, ``WavLMForXVector``...) backbone is the keys under its base-model prefix
    (``hubert.`` / ``wavlm.``), the rest its heads; those and the mask embedding are left out and named in the log."""
    stock = stock_type(config)
    task_model = any(key.startswith(stock.base_prefix) for key in state)
    backbone, dropped = {}, []
    for key, value in state.items():
        if task_model and not key.startswith(stock.base_prefix):
            dropped.append(key)
            continue
        name = key[len(stock.base_prefix):] if task_model else key
        if name.startswith(_NOT_BACKBONE):
            dropped.append(key)
        else:
            backbone[name] = value
    if dropped:
        logger.info("%s: left out weights that are not the backbone's: %s", source, ", ".join(sorted(dropped)))
    try:
        ours = stock.keys.to_ours(backbone)
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from None
    extractor = config.feature_extractor
    if extractor.conv_layers[-1][0] == config.encoder.embed_dim:
        # Our model has no projection when the CNN is as wide as the encoder: only an identity one maps onto it.
        weight, bias = ours.pop("feature_projection.weight", None), ours.pop("feature_projection.bias", None)
        if weight is None or not torch.equal(weight, torch.eye(weight.shape[0], dtype=weight.dtype)) or \
                bias is None or bool(bias.any()):
            raise CheckpointError(f"{source}: the CNN is as wide as the encoder ({config.encoder.embed_dim}) and the "
                                  "feature projection is not the identity, which our student backbone cannot hold")
    return ours


def is_huggingface_directory(path: Path) -> bool:
    """A directory with transformers' ``config.json``."""
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def read_huggingface_directory(path: Path) -> Tuple[StudentConfig, Dict[str, Tensor], Dict[str, Any]]:
    """(our config, our weights, our record from config.json or {}) from a transformers directory (HuBERT or our own
    type):
    ``model.safetensors`` read with the safetensors library, else ``pytorch_model.bin`` with our safe reader."""
    source = str(path)
    try:
        cfg = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path / CONFIG_FILE}: not a readable JSON config ({error})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path / CONFIG_FILE}: not a JSON object")
    own = cfg.get("model_type") == HF_MODEL_TYPE
    config = own_student_config(cfg, path) if own else student_config_from_hf(cfg, source)
    if (path / SAFETENSORS_FILE).is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path / SAFETENSORS_FILE))
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path / SAFETENSORS_FILE}: not a readable safetensors file ({error})") from None
    elif (path / PYTORCH_FILE).is_file():
        state = load_checkpoint(path / PYTORCH_FILE, what="transformers weights")
    else:
        raise CheckpointError(f"{source} holds {CONFIG_FILE} but no weights ({SAFETENSORS_FILE} or {PYTORCH_FILE}); "
                              "sharded weights are not read")
    record = cfg.get(RECORD_KEY)
    ours = own_state_dict(state) if own else state_dict_from_hf(state, config, source)
    return config, ours, record if isinstance(record, dict) else {}


def own_student_config(cfg: Mapping[str, Any], path: Path) -> StudentConfig:
    """The StudentConfig that our own type's ``config.json`` holds under :data:`HF_STUDENT_CONFIG_KEY`."""
    data = cfg.get(HF_STUDENT_CONFIG_KEY)
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path / CONFIG_FILE}: a {HF_MODEL_TYPE!r} config needs the student's StudentConfig "
                              f"under {HF_STUDENT_CONFIG_KEY!r}")
    try:
        return StudentConfig.from_dict(dict(data), f"{path / CONFIG_FILE} ({HF_STUDENT_CONFIG_KEY})")
    except ValueError as error:
        raise CheckpointError(str(error)) from None


# Weight-norm names transformers may write on save (its legacy renaming) -> our parametrization's.
_WEIGHT_NORM = ((".weight_g", ".parametrizations.weight.original0"), (".weight_v", ".parametrizations.weight.original1"))


def own_state_dict(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Our StudentModel's weights from our own type's file: as exported, or prefixed by a ``save_pretrained``
    (which may also write weight norm's legacy ``weight_g`` / ``weight_v`` names)."""
    ours = {}
    for key, value in state.items():
        name = key[len(_OWN_PREFIX):] if key.startswith(_OWN_PREFIX) else key
        for legacy, current in _WEIGHT_NORM:
            if name.endswith(legacy):
                name = name[:-len(legacy)] + current
        ours[name] = value
    return ours


def own_hf_config(config: StudentConfig, record: Mapping[str, Any]) -> Dict[str, Any]:
    """Our own type's ``config.json`` (what :class:`s3prl_distill.hf_config.DistilledStudentConfig` reads)."""
    return {
        "architectures": [HF_ARCHITECTURE],
        "model_type": HF_MODEL_TYPE,
        HF_STUDENT_CONFIG_KEY: config.to_dict(),
        "hidden_size": config.encoder.embed_dim,
        "num_hidden_layers": config.encoder.num_layers,
        RECORD_KEY: dict(record),
    }


def _shape(config: StudentConfig) -> str:
    """The student's shape in words, for the model card."""
    encoder = config.encoder
    if config.fbank_front_end is not None:
        front = f"fbank front end ({config.fbank_front_end.num_mel_bins} mel bins, 20 ms frames)"
    else:
        front = (f"CNN front end ({len(config.feature_extractor.conv_layers)} layers, stride {_stride(config)} samples"
                 f" = {_stride(config) / 16:.0f} ms at 16 kHz)")
    widths = f"FFN {encoder.ffn_dim}, {encoder.num_heads} heads"
    extras = []
    if encoder.time_reduction is not None:
        extras.append(f"{encoder.time_reduction.factor}x time reduction before layer {encoder.time_reduction.index}")
    if encoder.relative_position is not None:
        extras.append("WavLM gated relative position bias")
    return (f"{front}, {encoder.num_layers} transformer layers x {encoder.embed_dim} ({widths}), "
            f"{'pre' if encoder.layer_norm_first else 'post'}-LN" + "".join(f", {extra}" for extra in extras))


def _model_card(record: Mapping[str, Any], config: StudentConfig, parameters: int, stock: bool) -> str:
    encoder = config.encoder
    if stock:
        load = [f"model = AutoModel.from_pretrained(DIR).eval()  # a stock {stock_type(config).architecture}"]
        cnn = ("The CNN uses " + (
            "a GroupNorm over the whole input (`feat_extract_norm: group`): give it no attention_mask and run "
            "utterances unpadded (one at a time) for outputs that do not depend on padding."
            if config.feature_extractor.norm == "group_norm" else
            "per-frame LayerNorms (`feat_extract_norm: layer`): pass an attention_mask with padded batches."))
        rate = ""
    else:
        load = ["import s3prl_distill  # optional once installed: its start-up hook registers the model type",
                f"model = AutoModel.from_pretrained(DIR).eval()  # s3prl-distill's {HF_ARCHITECTURE}"]
        cnn = ("This student needs s3prl-distill installed (`pip install s3prl-distill`; no remote code): its "
               f"`{HF_MODEL_TYPE}` type is s3prl-distill's own class, registered with transformers' AutoConfig / "
               "AutoModel. Pass an attention_mask with padded batches: every utterance is then computed from its "
               "valid samples only.")
        rate = (" After the time reduction the layers run at 40 ms: `hidden_states[0]` has twice their frames."
                if encoder.time_reduction is not None else "")
    lines = [
        "---",
        "library_name: transformers",
        f"tags: [audio, speech, {stock_type(config).model_type}, knowledge-distillation, s3prl]",
        "---",
        "",
        f"# {record.get('method') or record.get('family') or 'distilled'} student (s3prl-distill)",
        "",
        f"A distilled speech SSL student exported by `s3prl-distill export --to hf` from `{record.get('source')}`.",
        "",
        f"- Method: {record.get('method') or record.get('family')}",
        f"- Teacher: {record.get('teacher') or 'not recorded in the checkpoint'}",
        f"- Parameters: {parameters:,} (backbone; " + ("its prediction heads are exported too, not counted here)"
                                                      if config.prediction_head is not None else
                                                      "the training heads are not exported)"),
        f"- Shape: {_shape(config)}",
        f"- s3prl upstream for the original checkpoint: `{record.get('upstream')}_local`; this directory also loads "
        f"there (`-k DIR`).",
        "",
        "```python",
        "from transformers import AutoModel",
        *load,
        "out = model(wavs, output_hidden_states=True)   # wavs: (batch, samples), 16 kHz, not normalised",
        "```",
        "",
        "Hidden states: `hidden_states[0]` is the first transformer layer's input (after the positional convolution"
        + ("" if encoder.layer_norm_first else " and its LayerNorm") + "), s3prl's HuBERT hidden state 0; "
        f"`hidden_states[i]` is the output of transformer layer i.{rate} {cnn}",
        "",
    ]
    return "\n".join(lines)


def _stride(config: StudentConfig) -> int:
    stride = 1
    for _, _, step in config.feature_extractor.conv_layers:
        stride *= step
    return stride


def _record(checkpoint: Mapping[str, Any], family: str, upstream: str, source: str) -> Dict[str, Any]:
    """What the checkpoint says about how the student was made (method, teacher), as far as it is recorded."""
    run = checkpoint.get("RunConfig") if isinstance(checkpoint.get("RunConfig"), Mapping) else {}
    method = run.get("method", {}).get("name") if isinstance(run.get("method"), Mapping) else None
    teacher = run.get("teacher")
    if teacher is None and isinstance(checkpoint.get("Config"), Mapping):
        teacher = checkpoint["Config"].get("teacher")
    if isinstance(teacher, Mapping):
        teacher = teacher.get("name") or teacher.get("model") or teacher.get("upstream") or dict(teacher)
    return {"family": family, "method": method or family, "teacher": None if teacher is None else str(teacher),
            "upstream": upstream, "source": source}


def export_huggingface(path: Path, output: Path) -> Dict[str, Any]:
    """Write the student of ``path`` (ours, a run directory's latest step, or s3prl's distiller format) to the
    directory ``output`` as transformers' HuBERT: ``config.json``, ``model.safetensors`` and a ``README.md`` card."""
    from safetensors.torch import save_file

    from ..model.student import HEAD_PREFIXES, StudentModel
    from .reader import read_student

    path = checkpoint_or_latest(path)
    checkpoint = load_checkpoint(path, what="checkpoint to export")
    student = read_student(checkpoint, str(path))
    if student.config.pruning is not None:
        raise CheckpointError(f"{path} still has its pruning gates: run `s3prl-distill prune {path} --output DIR` "
                              "and export DIR/pruned.ckpt")
    # A stock HubertConfig where it expresses the student; otherwise our own registered type.
    # (ARMHuBERT / MaskHuBERT's features are their heads' outputs: always our type, which keeps them.)
    keep_heads = student.family in KEEP_HEADS_FAMILIES
    stock = not keep_heads and not inexpressible(student.config)
    config = student.config.model_copy(
        update={"codeword_head": None, "mask_embedding": False} if keep_heads else
        {"prediction_head": None, "codeword_head": None, "mask_embedding": False})
    model = StudentModel(config)
    kept = {key: value for key, value in student.state.items()
            if not key.startswith(HEAD_PREFIXES)
            or (keep_heads and not key.startswith(("codeword_head.", "mask_embedding")))}
    try:
        model.load_state_dict(kept, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not match its StudentConfig: {error}") from None
    if model.fbank is not None and not model.fbank.has_statistics:
        raise CheckpointError(f"{path}: the fbank front end has no normalisation statistics (compute them from "
                              "training data before exporting)")
    record = _record(checkpoint, student.family, upstream_of(student.config, student.family), str(path))
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise CheckpointError(f"--to hf writes a directory; {output} is a file")
    output.mkdir(parents=True, exist_ok=True)
    if stock:
        weights, cfg = state_dict_to_hf(model.state_dict(), config), hf_config(config, record)
    else:
        weights = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
        cfg = own_hf_config(config, record)
    save_file(weights, str(output / SAFETENSORS_FILE), metadata={"format": "pt"})
    (output / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    parameters = model.num_parameters()
    (output / "README.md").write_text(_model_card(record, config, parameters, stock))
    kind = f"stock {stock_type(config).architecture}" if stock else f"s3prl-distill's own {HF_MODEL_TYPE!r} type"
    logger.info("exported %s -> %s (transformers, %s; load with AutoModel.from_pretrained or -u %s_local -k %s)",
                path, output, kind, record["upstream"], output)
    return {"source": str(path), "output": str(output), "format": "hf", "family": student.family,
            "params": parameters, "upstream": record["upstream"], "model_type": cfg["model_type"]}


# Wang et al.'s student shape by its prediction heads: one per layer (deep-thin) or DistilHuBERT's expand-last.
SHAPES = {"layerwise": "deepthin", "expand_last": "shallowwide"}


def asr_upstream_name(config: StudentConfig) -> str:
    """The registered name (without _local/_url) that fits an asr_distill student config."""
    head = config.prediction_head
    shape = SHAPES.get(head.type if head is not None else "", "deepthin")
    return f"{shape}_fbank" if config.fbank_front_end is not None else shape


# The families presented by an upstream of their own name (<family>_local); asr_distill's name follows the student's
# shape, and the generic "student" family is presented by student_local. tests/test_families.py holds every method's
# family to one of these.
OWN_UPSTREAM_FAMILIES = ("distilhubert", "fithubert", "dphubert", "skill", "armhubert", "maskhubert", "starhubert")
GENERIC_FAMILY = "student"


def upstream_of(config: StudentConfig, family: str) -> str:
    """The registered upstream (without ``_local``) that presents a student of ``family`` (the transformers export's
    record and model card, the ONNX export's forward). A family outside :data:`OWN_UPSTREAM_FAMILIES`, asr_distill
    and the generic one is an error rather than a guess: its export would name an upstream that may not present it."""
    if family == "asr_distill":
        return asr_upstream_name(config)
    if family in OWN_UPSTREAM_FAMILIES or family == GENERIC_FAMILY:
        return family
    raise CheckpointError(f"no upstream of ours is known to present a {family!r} student (known: "
                          f"{', '.join((*OWN_UPSTREAM_FAMILIES, 'asr_distill', GENERIC_FAMILY))})")


# The family a transformers directory without our record is read as: a HuBERT one as a plain HuBERT-shaped student,
# like ntu-spml/distilhubert (distilhubert_local and student_local take it); a WavLM one as a generic student
# (student_local: no DistilHuBERT has WavLM's layers).
FOREIGN_FAMILY = "distilhubert"
FOREIGN_WAVLM_FAMILY = "student"


def read_huggingface_student(path: Path, families: Optional[Collection[str]] = None,
                             wanted: Optional[str] = None) -> "StudentCheckpoint":
    """:func:`~.reader.read_student` for a transformers directory: the family is the one our export recorded, else
    :data:`FOREIGN_FAMILY` (:data:`FOREIGN_WAVLM_FAMILY` for WavLM); a family outside ``families`` is refused with
    ``wanted``."""
    from .reader import StudentCheckpoint

    config, state, record = read_huggingface_directory(Path(path))
    family = record.get("family")
    wavlm = config.encoder.relative_position is not None
    found = str(family) if family else FOREIGN_WAVLM_FAMILY if wavlm else FOREIGN_FAMILY
    description = (f"a transformers directory exported from an s3prl-distill {found} student" if family else
                   f"a transformers {'WavLM' if wavlm else 'HuBERT'} directory (no s3prl-distill record: read as a "
                   f"plain {'WavLM' if wavlm else 'HuBERT'}-shaped student)")
    if families is not None and found not in families:
        raise CheckpointError(f"{path} is {description}; {wanted or 'expected another family'}")
    upstream = record.get("upstream")
    return StudentCheckpoint(config, state, found, "transformers", description,
                             str(upstream) if upstream else None)
