"""Factory functions that spell out each published student architecture."""

from __future__ import annotations

from .config import HUBERT_CONV_LAYERS, EncoderConfig, FeatureExtractorConfig, PredictionHeadConfig, StudentConfig


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
