"""transformers' model class for our own model type: ``AutoModel.from_pretrained(DIR)`` on a directory that
``s3prl-distill export --to hf`` wrote for a student no stock transformers config expresses.

The model is our :class:`~s3prl_distill.model.StudentModel`, built from the ``StudentConfig`` kept in
``config.json``, as the submodule ``student`` (transformers' ``base_model_prefix``): ``model.safetensors`` holds
the StudentModel's own key names, which transformers prefixes with ``student.`` on load (a ``save_pretrained`` of
this class writes them prefixed; both read back, here and through our ``*_local`` upstream entries).

Inputs and outputs follow transformers' speech models:

- ``input_values``: (batch, samples) 16 kHz waveforms, not normalised (as our upstreams take them);
  ``attention_mask``: (batch, samples), 1 on valid samples, right-padded; its row sums are the valid lengths our
  model takes, so every front end (the CNN's GroupNorm included) sees each utterance's valid samples only.
- ``last_hidden_state``: the encoder output (the last layer's output, plus the final LayerNorm of a pre-LN
  encoder), frames past a row's length are padding.
- ``hidden_states`` (``output_hidden_states=True``): s3prl's HuBERT indexing, as the stock export: ``[0]`` is
  the first layer's input (after the positional convolution and, post-LN, its LayerNorm), ``[i]`` the raw output of
  layer ``i``. After FitHuBERT's time reduction the layers run at half the frame rate (40 ms): ``[0]`` then has
  twice the frames of the later entries.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .hf_config import DistilledStudentConfig, register_config
from .model.attention import SelfAttention
from .model.fbank import FbankFrontEnd
from .model.config import StudentConfig
from .model.student import StudentModel

logger = logging.getLogger(__name__)

# The submodule holding our StudentModel; model.safetensors keys are the StudentModel's, without it.
BASE_MODEL_PREFIX = "student"


def student_config_of(config: DistilledStudentConfig) -> StudentConfig:
    """The validated :class:`StudentConfig` in ``config`` (errors name the config field)."""
    data = config.student_config
    if data is None:
        raise ValueError(f"{type(config).__name__} has no student_config: build it from a directory that "
                         "s3prl-distill export --to hf wrote (its config.json holds the StudentConfig)")
    return StudentConfig.from_dict(data, source=f"{config.model_type} config.json student_config")


class DistilledStudentModel(PreTrainedModel):
    """A distilled speech SSL student of s3prl-distill as a transformers model (see the module docstring)."""

    config_class = DistilledStudentConfig
    base_model_prefix = BASE_MODEL_PREFIX
    main_input_name = "input_values"
    supports_gradient_checkpointing = False

    def __init__(self, config: DistilledStudentConfig) -> None:
        super().__init__(config)
        student_config = student_config_of(config)
        if student_config.pruning is not None:
            raise ValueError(f"{config.model_type} config.json: the student still has its pruning gates (run "
                             "s3prl-distill prune before exporting)")
        self.student = StudentModel(student_config)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Our modules initialise themselves when built; what transformers' meta-device construction leaves unset are
        the unsaved buffers: WavLM-style attention's (which heads of the position bias a layer keeps) and the fbank
        front end's window and filterbank."""
        if isinstance(module, SelfAttention):
            module.reset_kept_heads()
        elif isinstance(module, FbankFrontEnd):
            module.reset_constants()

    def forward(
        self,
        input_values: Tensor,
        attention_mask: Optional[Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs: Any,
    ) -> Union[BaseModelOutput, Tuple[Tensor, ...]]:
        if input_values.dim() != 2:
            raise ValueError(f"input_values must be (batch, samples) waveforms, got shape {tuple(input_values.shape)}")
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        lengths = None
        if attention_mask is not None:
            if attention_mask.shape != input_values.shape:
                raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must have input_values' shape "
                                 f"{tuple(input_values.shape)}")
            lengths = attention_mask.long().sum(-1)
        out = self.student(input_values, lengths, predict=False)
        hidden_states = tuple(out.hidden_states()) if output_hidden_states else None
        if not return_dict:
            return tuple(value for value in (out.last_hidden, hidden_states) if value is not None)
        return BaseModelOutput(last_hidden_state=out.last_hidden, hidden_states=hidden_states)


_registered = False


def register_model() -> None:
    """``AutoConfig.register`` and ``AutoModel.register`` our classes (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AutoModel

    register_config()
    AutoModel.register(DistilledStudentConfig, DistilledStudentModel, exist_ok=True)
    _registered = True
    logger.debug("registered transformers AutoModel for %r", DistilledStudentConfig.model_type)
