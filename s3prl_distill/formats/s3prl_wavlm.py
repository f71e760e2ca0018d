"""s3prl's WavLM checkpoint format, the one ``wavlm_local`` reads: ``{"cfg": dict, "model": state_dict}`` with the
model built by s3prl's own ``WavLM`` code (fairseq module names, the relative position bias in layer 0)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from ..checkpoint import save_checkpoint

# A WavLM small enough for tests: Base+'s layout (CNN stride 320, post-LN, gated relative position bias).
TINY_WAVLM = {
    "extractor_mode": "default",
    "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
    "encoder_layers": 3,
    "encoder_embed_dim": 48,
    "encoder_ffn_embed_dim": 96,
    "encoder_attention_heads": 4,
    "conv_pos": 16,
    "conv_pos_groups": 4,
    "layer_norm_first": False,
    "relative_position_embedding": True,
    "num_buckets": 32,
    "max_distance": 64,
    "gru_rel_pos": True,
    "normalize": False,
}

WAVLM_BASE_PLUS = {
    "extractor_mode": "default",
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "layer_norm_first": False,
    "relative_position_embedding": True,
    "num_buckets": 320,
    "max_distance": 800,
    "gru_rel_pos": True,
    "normalize": False,
}


def build_wavlm(cfg: Dict[str, Any]):
    """s3prl's WavLM model with random weights."""
    from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig

    return WavLM(WavLMConfig(dict(cfg)))


def write_random_wavlm(path: Union[str, Path], cfg: Optional[Dict[str, Any]] = None, seed: int = 0) -> Path:
    """A randomly initialised WavLM in ``wavlm_local`` format (default: :data:`TINY_WAVLM`). The gate constants and
    LayerNorms are perturbed away from their initial values so a test notices a weight that is not copied."""
    cfg = dict(TINY_WAVLM if cfg is None else cfg)
    torch.manual_seed(seed)
    model = build_wavlm(cfg)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("grep_a", "layer_norm.weight", "layer_norm.bias")):
                parameter.add_(0.1 * torch.randn_like(parameter))
    return save_checkpoint({"cfg": cfg, "model": model.state_dict()}, path)
