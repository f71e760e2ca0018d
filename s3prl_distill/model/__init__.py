"""The shared student backbone: config, building blocks, heads and the model."""

from .config import (
    CodewordHeadConfig,
    EncoderConfig,
    FbankFrontEndConfig,
    FeatureExtractorConfig,
    PredictionHeadConfig,
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
from .student import StudentModel, StudentOutput

__all__ = [
    "CodewordHeadConfig",
    "EncoderConfig",
    "FbankFrontEndConfig",
    "FeatureExtractorConfig",
    "PredictionHeadConfig",
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
    "parse_conv_layers",
]
