"""transformers' config class for our own model type (:data:`~s3prl_distill.options.HF_MODEL_TYPE`): the students a
stock ``HubertConfig`` / ``WavLMConfig`` cannot express (pruned per-layer widths, FitHuBERT's time reduction, the fbank
front end, WavLM's bias with pruned heads), exported by ``s3prl-distill export --to hf``.

``config.json`` holds the whole :class:`~s3prl_distill.model.StudentConfig` as JSON under
:data:`~s3prl_distill.options.HF_STUDENT_CONFIG_KEY`; the model (:mod:`s3prl_distill.hf_model`) validates and
builds it. This module imports transformers' config base only (no torch, no model code of ours), so registering it
with ``AutoConfig`` costs nothing more than transformers' own auto-config module.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional

from transformers import PretrainedConfig

from .options import HF_MODEL_TYPE, HF_STUDENT_CONFIG_KEY

logger = logging.getLogger(__name__)

# Our export's description of the student (family, method, teacher, upstream entry); see formats.huggingface.
RECORD_KEY = "s3prl_distill"


class DistilledStudentConfig(PretrainedConfig):
    """A distilled student of s3prl-distill: ``student_config`` is its ``StudentConfig.to_dict()``; ``s3prl_distill``
    the export's record. ``hidden_size`` / ``num_hidden_layers`` are derived from it, for tools that read them."""

    model_type = HF_MODEL_TYPE

    def __init__(self, student_config: Optional[Mapping[str, Any]] = None,
                 s3prl_distill: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> None:
        if student_config is not None and not isinstance(student_config, Mapping):
            raise TypeError(f"{HF_MODEL_TYPE} config: {HF_STUDENT_CONFIG_KEY} must be a mapping (a "
                            f"StudentConfig.to_dict()), not {type(student_config).__name__}")
        self.student_config: Optional[Dict[str, Any]] = dict(student_config) if student_config is not None else None
        self.s3prl_distill: Dict[str, Any] = dict(s3prl_distill or {})
        encoder = (self.student_config or {}).get("encoder") or {}
        kwargs.pop("hidden_size", None)
        kwargs.pop("num_hidden_layers", None)
        self.hidden_size: Optional[int] = encoder.get("embed_dim")
        self.num_hidden_layers: Optional[int] = encoder.get("num_layers")
        super().__init__(**kwargs)


_registered = False


def register_config() -> None:
    """``AutoConfig.register`` our model type (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig

    AutoConfig.register(HF_MODEL_TYPE, DistilledStudentConfig, exist_ok=True)
    _registered = True
    logger.debug("registered transformers AutoConfig %r", HF_MODEL_TYPE)
