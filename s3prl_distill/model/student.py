"""The one student backbone every method builds from a :class:`StudentConfig`."""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from .blocks import ConvFeatureExtractor, TransformerEncoder, lengths_to_padding_mask
from .config import StudentConfig
from .heads import ExpandLastHead, LayerwiseHeads


class StudentOutput(NamedTuple):
    features: Tensor  # (batch, frames, embed_dim): projected CNN features = transformer input, padding zeroed
    layer_outputs: List[Tensor]  # raw output of each transformer layer (at 40 ms after a 2x time reduction)
    last_hidden: Tensor  # encoder output: last layer (+ final LayerNorm when pre-LN)
    predictions: Optional[Tensor]  # (batch, num_targets, frames, out_dim) from the prediction head, if any
    lengths: Optional[Tensor]  # valid CNN frames per utterance; None when the batch had no padding
    padding_mask: Optional[Tensor]  # (batch, frames), True on padded CNN frames; None without padding


class StudentModel(nn.Module):
    """Conv feature extractor -> (LayerNorm) -> projection -> transformer encoder -> (prediction heads)."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        fe = config.feature_extractor
        self.feature_extractor = ConvFeatureExtractor(fe.conv_layers, fe.norm, fe.bias, fe.dropout)
        channels = self.feature_extractor.out_channels
        embed_dim = config.encoder.embed_dim
        self.feature_norm = nn.LayerNorm(channels) if config.feature_layer_norm else None
        # As in fairseq, no projection when the CNN already has the encoder's width.
        self.feature_projection = nn.Linear(channels, embed_dim) if channels != embed_dim else None
        self.feature_dropout = nn.Dropout(config.feature_dropout)
        self.encoder = TransformerEncoder(config.encoder)
        head = config.prediction_head
        if head is None:
            self.prediction_head = None
        elif head.type == "expand_last":
            self.prediction_head = ExpandLastHead(
                embed_dim, head.inner_dim or embed_dim, head.out_dim, len(head.target_layers)
            )
        else:
            factors = [config.encoder.layer_rate_factor(i) for i in range(config.encoder.num_layers)]
            self.prediction_head = LayerwiseHeads(embed_dim, head.out_dim, factors)

    @property
    def downsample_rate(self) -> int:
        """Waveform samples per output frame."""
        return self.feature_extractor.downsample_rate

    @property
    def receptive_field(self) -> int:
        """Samples the CNN needs to produce one frame: the shortest input the model accepts."""
        return self.feature_extractor.receptive_field

    def frame_lengths(self, sample_lengths: Tensor) -> Tensor:
        return self.feature_extractor.output_lengths(sample_lengths)

    def num_parameters(self, include_heads: bool = False) -> int:
        """Parameter count of the backbone, optionally with the prediction heads."""
        heads = self.prediction_head
        return sum(
            p.numel()
            for name, p in self.named_parameters()
            if include_heads or heads is None or not name.startswith("prediction_head.")
        )

    def extract_features(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """CNN with the configured gradient scaling -> (features (B, T, C), frame lengths)."""
        grad_mult = self.config.feature_extractor.grad_mult
        if grad_mult == 0.0:
            with torch.no_grad():  # frozen CNN: skip building its graph altogether
                return self.feature_extractor(waveforms, lengths)
        features, lengths = self.feature_extractor(waveforms, lengths)
        if grad_mult != 1.0 and features.requires_grad:
            features.register_hook(lambda grad: grad * grad_mult)
        return features, lengths

    def forward(self, waveforms: Tensor, lengths: Optional[Tensor] = None, predict: bool = True) -> StudentOutput:
        """``waveforms``: (batch, samples) at 16 kHz; ``lengths``: valid samples per row (None = no padding)."""
        features, frame_lengths = self.extract_features(waveforms, lengths)
        if self.feature_norm is not None:
            features = self.feature_norm(features)
        if self.feature_projection is not None:
            features = self.feature_projection(features)
        features = self.feature_dropout(features)
        padding_mask = lengths_to_padding_mask(frame_lengths, features.shape[1])
        if padding_mask is not None:
            features = features.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        encoded = self.encoder(features, frame_lengths)
        predictions = None
        if predict and self.prediction_head is not None:
            if isinstance(self.prediction_head, LayerwiseHeads):
                predictions = self.prediction_head(encoded.layer_outputs)
            else:
                predictions = self.prediction_head(encoded.last_hidden)
        return StudentOutput(
            features, encoded.layer_outputs, encoded.last_hidden, predictions, frame_lengths, padding_mask
        )
