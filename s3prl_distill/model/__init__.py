"""The shared student backbone: config, building blocks, heads and the model."""

from .config import (
    EncoderConfig,
    FeatureExtractorConfig,
    PredictionHeadConfig,
    StudentConfig,
    TimeReductionConfig,
    format_conv_layers,
    parse_conv_layers,
)
from .factory import distilhubert_config, fithubert_config
from .student import StudentModel, StudentOutput

__all__ = [
    "EncoderConfig",
    "FeatureExtractorConfig",
    "PredictionHeadConfig",
    "StudentConfig",
    "StudentModel",
    "StudentOutput",
    "TimeReductionConfig",
    "distilhubert_config",
    "fithubert_config",
    "format_conv_layers",
    "parse_conv_layers",
]
