"""Factory functions that spell out each published student architecture."""

from __future__ import annotations

from .config import (
    HUBERT_CONV_LAYERS,
    EncoderConfig,
    FeatureExtractorConfig,
    PredictionHeadConfig,
    StudentConfig,
    TimeReductionConfig,
)

# FitHuBERT's thin CNN: 1x1 convolutions change the width, the total stride stays 320.
FITHUBERT_CONV_LAYERS = "[(128,10,5)] + [(256,1,1)] + [(256,3,2)]*4 + [(512,1,1)] + [(512,2,2)]*2"


def distilhubert_config(target_layers=(4, 8, 12), teacher_dim: int = 768) -> StudentConfig:
    """DistilHuBERT (Chang et al., 2022): HuBERT's CNN, 2 post-LN layers of 768 (FFN 3072, 12 heads), no LayerNorm
    on the CNN output, CNN gradient scaled by 0.1, and ``expand_last`` heads predicting teacher layers 4, 8, 12."""
    return StudentConfig(
        feature_extractor=FeatureExtractorConfig(conv_layers=HUBERT_CONV_LAYERS, norm="group_norm", grad_mult=0.1),
        feature_layer_norm=False,
        encoder=EncoderConfig(
            num_layers=2, embed_dim=768, ffn_dim=3072, num_heads=12, layer_norm_first=False,
            dropout=0.1, attention_dropout=0.1, activation_dropout=0.1,
            pos_conv_kernel=128, pos_conv_groups=16,
        ),
        prediction_head=PredictionHeadConfig(
            type="expand_last", target_layers=list(target_layers), inner_dim=768, out_dim=teacher_dim
        ),
    )


def fithubert_config(teacher_dim: int = 768) -> StudentConfig:
    """FitHuBERT (Lee et al., 2022): thin CNN, LayerNorm + projection 512 -> 480, input dropout 0.05, 12 post-LN layers
    of width 480 (FFN 480, 12 heads), a 2x time-reduction Conv1d before the first layer (layers run at 40 ms), and a
    hint head per layer (ConvTranspose1d back to 20 ms, Linear 480 -> 768) predicting teacher layer l."""
    return StudentConfig(
        feature_extractor=FeatureExtractorConfig(conv_layers=FITHUBERT_CONV_LAYERS, norm="group_norm", grad_mult=1.0),
        feature_layer_norm=True,
        feature_dropout=0.05,
        encoder=EncoderConfig(
            num_layers=12, embed_dim=480, ffn_dim=480, num_heads=12, layer_norm_first=False,
            dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, pos_conv_kernel=128, pos_conv_groups=16,
            time_reduction=TimeReductionConfig(index=0, factor=2),
        ),
        prediction_head=PredictionHeadConfig(type="layerwise", target_layers=list(range(1, 13)), out_dim=teacher_dim),
    )
