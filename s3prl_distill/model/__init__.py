"""The shared student backbone: config, building blocks, heads and the model."""

from ..options import LAYER_ZERO_CHOICES, LayerZero
from .config import (
    CodewordHeadConfig,
    EncoderConfig,
    ExpandLastHeadConfig,
    FbankFrontEndConfig,
    FeatureExtractorConfig,
    LayerwiseHeadConfig,
    PredictionHeadConfig,
    ProjectionHeadConfig,
    PruningConfig,
    RelativePositionConfig,
    StudentConfig,
    TimeReductionConfig,
    format_conv_layers,
    parse_conv_layers,
)
from .factory import (
    deepthin_config,
    distilhubert_config,
    fithubert_config,
    pruning_student_config,
    shallowwide_config,
    with_codeword_head,
    with_fbank_front_end,
)
from .hidden_states import EncoderOutput, hidden_state_zero
from .student import StudentModel, StudentOutput

__all__ = [
    "CodewordHeadConfig",
    "EncoderConfig",
    "EncoderOutput",
    "ExpandLastHeadConfig",
    "FbankFrontEndConfig",
    "FeatureExtractorConfig",
    "LAYER_ZERO_CHOICES",
    "LayerZero",
    "LayerwiseHeadConfig",
    "PredictionHeadConfig",
    "ProjectionHeadConfig",
    "PruningConfig",
    "RelativePositionConfig",
    "StudentConfig",
    "StudentModel",
    "StudentOutput",
    "TimeReductionConfig",
    "deepthin_config",
    "distilhubert_config",
    "fithubert_config",
    "pruning_student_config",
    "shallowwide_config",
    "with_codeword_head",
    "with_fbank_front_end",
    "format_conv_layers",
    "hidden_state_zero",
    "parse_conv_layers",
]
