"""s3prl's converted HuBERT checkpoint format, the one ``hubert_local`` reads:
``{"task_cfg": dict, "model_cfg": dict, "model_weight": state_dict, "dictionaries_symbols": [[symbols]]}``.

The model is built with s3prl's own HuBERT code, so a checkpoint written here is exactly what ``hubert_local`` would
get from a converted fairseq checkpoint (``final_proj`` and ``label_embs_concat`` included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from ..checkpoint import save_checkpoint

# A HuBERT small enough for tests: Base's layout (CNN stride 320, post-LN) at toy widths.
TINY_HUBERT = {
    "label_rate": 50.0,
    "extractor_mode": "default",
    "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
    "encoder_layers": 3,
    "encoder_embed_dim": 48,
    "encoder_ffn_embed_dim": 96,
    "encoder_attention_heads": 4,
    "conv_pos": 16,
    "conv_pos_groups": 4,
    "final_dim": 16,
    "layer_norm_first": False,
}

HUBERT_BASE = {
    "label_rate": 50.0,
    "extractor_mode": "default",
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "final_dim": 256,
    "layer_norm_first": False,
}


def build_hubert(model_cfg: Dict[str, Any], num_labels: int = 504, normalize: bool = False):
    """(s3prl HubertModel, task_cfg dict, dictionaries) with random weights."""
    from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig
    from s3prl.upstream.utils import merge_with_parent

    task_cfg = {"label_rate": float(model_cfg.get("label_rate", 50.0)), "sample_rate": 16000, "normalize": normalize}
    dictionaries = [[str(i) for i in range(num_labels)]]
    model = HubertModel(
        merge_with_parent(HubertConfig, dict(model_cfg)),
        merge_with_parent(HubertPretrainingConfig, task_cfg),
        dictionaries,
    )
    return model, task_cfg, dictionaries


def save_hubert_checkpoint(
    model: torch.nn.Module, model_cfg: Dict[str, Any], task_cfg: Dict[str, Any], dictionaries, path: Union[str, Path]
) -> Path:
    return save_checkpoint(
        {
            "task_cfg": dict(task_cfg),
            "model_cfg": dict(model_cfg),
            "model_weight": model.state_dict(),
            "dictionaries_symbols": dictionaries,
        },
        path,
    )


def write_random_hubert(
    path: Union[str, Path], model_cfg: Optional[Dict[str, Any]] = None, num_labels: int = 504, seed: int = 0
) -> Path:
    """A randomly initialised HuBERT in ``hubert_local`` format (default: :data:`TINY_HUBERT`)."""
    model_cfg = dict(TINY_HUBERT if model_cfg is None else model_cfg)
    torch.manual_seed(seed)
    model, task_cfg, dictionaries = build_hubert(model_cfg, num_labels)
    return save_hubert_checkpoint(model, model_cfg, task_cfg, dictionaries, path)
