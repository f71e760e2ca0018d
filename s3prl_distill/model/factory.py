"""Factory functions that spell out each published student architecture."""

from __future__ import annotations

from .config import (
    HUBERT_CONV_LAYERS,
    CodewordHeadConfig,
    EncoderConfig,
    ExpandLastHeadConfig,
    FbankFrontEndConfig,
    FeatureExtractorConfig,
    LayerwiseHeadConfig,
    ProjectionHeadConfig,
    PruningConfig,
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
        prediction_head=ExpandLastHeadConfig(target_layers=list(target_layers), inner_dim=768, out_dim=teacher_dim),
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
        prediction_head=LayerwiseHeadConfig(target_layers=list(range(1, 13)), out_dim=teacher_dim),
    )


def _recycle_conv_layers(width: int) -> str:
    """The thin CNN of ARMHuBERT / MaskHuBERT / STaRHuBERT: FitHuBERT's, ending at the encoder width (no projection)."""
    return f"[(128,10,5)] + [(256,1,1)] + [(256,3,2)]*4 + [({width},1,1)] + [({width},2,2)]*2"


def _recycle_backbone(width: int, ffn_dim: int, reuse: bool) -> StudentConfig:
    """The backbone shared by sungnyun/ARMHuBERT's models: thin CNN (LayerNorm, no projection), input dropout 0.05,
    12 post-LN layers of ``width`` (12 heads) at 20 ms; with ``reuse``, every second layer (1, 3, ..., 11, 0-based)
    reuses the previous layer's attention map (the released ``reuse_pattern``) and the layer gradients are scaled
    (``layer_grad_scale``), as in the released ARMHuBERT YAMLs."""
    return StudentConfig(
        feature_extractor=FeatureExtractorConfig(conv_layers=_recycle_conv_layers(width), norm="group_norm"),
        feature_layer_norm=True,
        feature_dropout=0.05,
        encoder=EncoderConfig(
            num_layers=12, embed_dim=width, ffn_dim=ffn_dim, num_heads=12, layer_norm_first=False,
            dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, pos_conv_kernel=128, pos_conv_groups=16,
            attention_reuse=[index % 2 == 1 for index in range(12)] if reuse else None,
            layer_grad_scale=reuse,  # ARMHuBERT's YAMLs set it, MaskHuBERT's does not
        ),
    )


def armhubert_config(small: bool = False, teacher_dim: int = 768) -> StudentConfig:
    """ARMHuBERT (Jang, Kim et al., Interspeech 2023): 12 layers of 480 (FFN 864), every second layer reusing the
    previous attention map (no Q/K), a Linear head per layer (480 -> 768, its outputs are the upstream's features)
    and a learned mask embedding: 26.45 M with heads and mask embedding, as published. ``small``: ARMHuBERT-S /
    ARMwavLM-S, 432 wide, FFN 816 (22.39 M)."""
    width, ffn_dim = (432, 816) if small else (480, 864)
    return _recycle_backbone(width, ffn_dim, reuse=True).model_copy(update={
        "prediction_head": LayerwiseHeadConfig(target_layers=list(range(1, 13)), out_dim=teacher_dim),
        "mask_embedding": True,
    })


def maskhubert_config(teacher_dim: int = 768) -> StudentConfig:
    """MaskHuBERT (same paper): ARMHuBERT without attention-map reuse, FFN 640 (26.64 M with heads and mask)."""
    return _recycle_backbone(480, 640, reuse=False).model_copy(update={
        "prediction_head": LayerwiseHeadConfig(target_layers=list(range(1, 13)), out_dim=teacher_dim),
        "mask_embedding": True,
    })


def starhubert_config(large: bool = False) -> StudentConfig:
    """STaRHuBERT (Jang, Kim, Kim, ICASSP 2024): the STaR model code's backbone (no heads, no mask embedding, no
    reuse). Its training YAML is not published; the shape is derived from the model code and the published sizes:
    among 12-layer students of this CNN family (width a multiple of 48, FFN a multiple of 16), 432 wide with FFN
    976 is the one of 22.31 M (22,308,592); ``large`` (STaRHuBERT-L), 480 wide with FFN 1024, the one of 26.63 M
    (26,630,752). Dropouts follow ARMHuBERT's YAML (they do not change inference)."""
    return _recycle_backbone(480, 1024, reuse=False) if large else _recycle_backbone(432, 976, reuse=False)


def deepthin_config(teacher_dim: int = 768) -> StudentConfig:
    """Wang et al.'s deep-thin student: HuBERT's CNN (gradient scaled by 0.1, no LayerNorm on its output), projection
    512 -> 480, 12 post-LN layers of width 480 (FFN 480, 12 heads), no time reduction, and a Linear head per layer
    (480 -> 768) predicting teacher layer l. 22.94 M parameters without heads."""
    return StudentConfig(
        feature_extractor=FeatureExtractorConfig(conv_layers=HUBERT_CONV_LAYERS, norm="group_norm", grad_mult=0.1),
        feature_layer_norm=False,
        encoder=EncoderConfig(
            num_layers=12, embed_dim=480, ffn_dim=480, num_heads=12, layer_norm_first=False,
            dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, pos_conv_kernel=128, pos_conv_groups=16,
        ),
        prediction_head=LayerwiseHeadConfig(target_layers=list(range(1, 13)), out_dim=teacher_dim),
    )


def shallowwide_config(teacher_dim: int = 768) -> StudentConfig:
    """Wang et al.'s shallow-wide student: DistilHuBERT's architecture (2 layers of 768, heads on 4, 8, 12)."""
    return distilhubert_config(teacher_dim=teacher_dim)


def with_fbank_front_end(config: StudentConfig, front_end_head: bool = True) -> StudentConfig:
    """The same student with Wang et al.'s fbank front end (80-dim fbank -> Conv1d stride 2 + GLU -> Linear) in
    place of the CNN and its projection, plus (for the front-end stage) a head predicting teacher hidden state 0."""
    data = config.to_dict()
    del data["feature_extractor"], data["feature_layer_norm"], data["feature_layer_norm_pruned"]
    data["fbank_front_end"] = FbankFrontEndConfig().model_dump()
    data["feature_dropout"] = data["encoder"]["dropout"]  # the authors' front end ends with the encoder's dropout
    if data["prediction_head"] is not None:
        data["prediction_head"]["front_end"] = front_end_head
    return StudentConfig.from_dict(data)


def with_codeword_head(config: StudentConfig, kind: str = "logits", out_dim: int = 504) -> StudentConfig:
    """The same student with a codeword head for the discriminative loss (``logits``: HuBERT Base's 504 codewords;
    ``cosine``: its 256-dim projection)."""
    return config.model_copy(update={"codeword_head": CodewordHeadConfig(type=kind, out_dim=out_dim)})


def pruning_student_config(teacher_copy: StudentConfig, target_groups=((0,), (4, 8, 12)), group_target: str = "each",
                           pruning: PruningConfig = PruningConfig()) -> StudentConfig:
    """DPHuBERT / SKILL: the teacher's own architecture (``teacher_copy``, e.g. from
    ``formats.fairseq.teacher_copy_config``) with hard-concrete gates and projection heads on ``target_groups``
    (DPHuBERT's default: layer 0, and layers 4, 8, 12 sharing one Linear; SKILL: groups from layer-similarity with
    ``group_target="mean"``)."""
    head = ProjectionHeadConfig(target_groups=[list(group) for group in target_groups], group_target=group_target,
                                out_dim=teacher_copy.encoder.embed_dim)
    return teacher_copy.model_copy(update={"prediction_head": head, "pruning": pruning})
