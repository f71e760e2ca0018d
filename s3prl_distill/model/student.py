"""The one student backbone every method builds from a :class:`StudentConfig`."""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from .config import StudentConfig
from .encoder import TransformerEncoder, scale_gradient
from .fbank import FbankFrontEnd
from .feature_extractor import ConvFeatureExtractor
from .hidden_states import hidden_state_zero
from .lengths import lengths_to_padding_mask

# Parameters that only serve training (prediction targets, the mask embedding of masking distillation), not the
# features an upstream gives.
HEAD_PREFIXES = ("prediction_head.", "front_end_head.", "codeword_head.", "mask_embedding")
# Hard-concrete gate parameters: trained with their own learning rate, removed by pruning, never backbone weights.
GATE_SUFFIX = ".log_alpha"


class StudentOutput(NamedTuple):
    features: Tensor  # (batch, frames, embed_dim): projected CNN features = transformer input, padding zeroed
    layer_outputs: List[Tensor]  # raw output of each transformer layer (at 40 ms after a 2x time reduction)
    last_hidden: Tensor  # encoder output: last layer (+ final LayerNorm when pre-LN)
    predictions: Optional[Tensor]  # (batch, num_targets, frames, out_dim) from the prediction head, if any
    lengths: Optional[Tensor]  # valid CNN frames per utterance; None when the batch had no padding
    padding_mask: Optional[Tensor]  # (batch, frames), True on padded CNN frames; None without padding
    front_end_prediction: Optional[Tensor] = None  # (batch, frames, out_dim): the front-end head, if any
    codeword_output: Optional[Tensor] = None  # (batch, frames, out_dim): the codeword head on the last layer
    encoder_input: Optional[Tensor] = None  # what the first layer sees (after the positional conv and LayerNorm)

    def hidden_states(self, layer_zero: str = "transformer_input") -> List[Tensor]:
        """s3prl's indexing of a HuBERT-like model: [encoder input, output of layer 1, ..., layer L]; with
        ``layer_zero="feature_projection"``, DPHuBERT's index 0 (see :func:`hidden_state_zero`)."""
        return [hidden_state_zero(layer_zero, self.features, self.encoder_input), *self.layer_outputs]


class StudentModel(nn.Module):
    """Front end (conv feature extractor -> (LayerNorm) -> projection, or fbank) -> transformer encoder ->
    (prediction heads)."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        embed_dim = config.encoder.embed_dim
        self.feature_extractor, self.feature_norm, self.feature_projection, self.fbank = None, None, None, None
        if config.fbank_front_end is not None:
            fbank = config.fbank_front_end
            self.fbank = FbankFrontEnd(fbank.num_mel_bins, embed_dim, fbank.kernel_size)
        else:
            fe = config.feature_extractor
            pruning = config.pruning
            self.feature_extractor = ConvFeatureExtractor(
                fe.conv_layers, fe.norm, fe.bias, fe.dropout, fe.output_scale,
                pruning.conv_initial_drop if pruning is not None and pruning.conv_channels else None,
            )
            channels = self.feature_extractor.out_channels
            self.feature_norm = nn.LayerNorm(channels) if config.feature_layer_norm else None
            # As in fairseq, no projection when the CNN already has the encoder's width.
            self.feature_projection = nn.Linear(channels, embed_dim) if channels != embed_dim else None
            if config.feature_layer_norm_pruned:
                # What the pruned channels' LayerNorm outputs (bias - mean * rstd * weight) gave the projection:
                # the bias part is folded into the projection's bias, the rest is this direction times -mean * rstd.
                self.register_buffer("pruned_channel_direction", torch.zeros(embed_dim))
        self.feature_dropout = nn.Dropout(config.feature_dropout)
        self.encoder = TransformerEncoder(config.encoder, config.pruning)
        head = config.prediction_head
        self.prediction_head = head.build(config.encoder) if head is not None else None
        self.front_end_head = nn.Linear(embed_dim, head.out_dim) if head is not None and head.front_end else None
        codewords = config.codeword_head
        self.codeword_head = nn.Linear(embed_dim, codewords.out_dim) if codewords is not None else None
        # Uniform in [0, 1), as ARMHuBERT / MaskHuBERT initialise their mask_emb.
        self.mask_embedding = nn.Parameter(torch.rand(embed_dim)) if config.mask_embedding else None

    def _normalise_and_project(self, features: Tensor) -> Tensor:
        """CNN output -> (LayerNorm) -> (projection)."""
        pruned = self.config.feature_layer_norm_pruned
        if self.feature_norm is not None and pruned:
            # The LayerNorm of the gated model saw ``pruned`` more channels, all zero: same statistics here.
            width = features.shape[-1] + pruned
            mean = features.sum(-1, keepdim=True) / width
            variance = ((features - mean).pow(2).sum(-1, keepdim=True) + pruned * mean.pow(2)) / width
            rstd = torch.rsqrt(variance + self.feature_norm.eps)
            normed = (features - mean) * rstd * self.feature_norm.weight + self.feature_norm.bias
            return self.feature_projection(normed) - (mean * rstd) * self.pruned_channel_direction
        if self.feature_norm is not None:
            features = self.feature_norm(features)
        return features if self.feature_projection is None else self.feature_projection(features)

    def _apply_frame_mask(self, features: Tensor, frame_mask: Tensor) -> Tensor:
        if self.mask_embedding is None:
            raise ValueError("frame_mask needs a student with mask_embedding: true in its config")
        if frame_mask.shape != features.shape[:2] or frame_mask.dtype != torch.bool:
            raise ValueError(f"frame_mask must be a bool tensor of shape {tuple(features.shape[:2])} (batch, frames), "
                             f"got {frame_mask.dtype} {tuple(frame_mask.shape)}")
        return torch.where(frame_mask.unsqueeze(-1), self.mask_embedding.to(features.dtype), features)

    @property
    def front_end(self) -> nn.Module:
        """The module turning waveforms into frames: the CNN or the fbank front end."""
        return self.fbank if self.fbank is not None else self.feature_extractor

    @property
    def downsample_rate(self) -> int:
        """Waveform samples per output frame."""
        return self.front_end.downsample_rate

    @property
    def receptive_field(self) -> int:
        """Samples the CNN needs to produce one frame: the shortest input the model accepts."""
        return self.front_end.receptive_field

    def frame_lengths(self, sample_lengths: Tensor) -> Tensor:
        return self.front_end.output_lengths(sample_lengths)

    def num_parameters(self, include_heads: bool = False) -> int:
        """Parameter count of the backbone, optionally with the heads used in training."""
        return sum(p.numel() for name, p in self.named_parameters()
                   if (include_heads or not name.startswith(HEAD_PREFIXES)) and not name.endswith(GATE_SUFFIX))

    def extract_features(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """CNN with the configured gradient scaling (or the fbank front end) -> (features (B, T, C), frame lengths)."""
        if self.fbank is not None:
            return self.fbank(waveforms, lengths)
        grad_mult = self.config.feature_extractor.grad_mult
        if grad_mult == 0.0:
            with torch.no_grad():  # frozen CNN: skip building its graph altogether
                return self.feature_extractor(waveforms, lengths)
        features, lengths = self.feature_extractor(waveforms, lengths)
        return scale_gradient(features, grad_mult), lengths

    def forward(
        self, waveforms: Tensor, lengths: Optional[Tensor] = None, predict: bool = True, front_end_only: bool = False,
        frame_mask: Optional[Tensor] = None,
    ) -> StudentOutput:
        """``waveforms``: (batch, samples) at 16 kHz; ``lengths``: valid samples per row (None = no padding).
        ``predict``: run the training heads; ``front_end_only``: stop after the front end (and its head), for
        training the front end alone; ``frame_mask``: (batch, frames) bool, True where the transformer input is
        replaced by the mask embedding (masking distillation; needs ``mask_embedding`` in the config)."""
        features, frame_lengths = self.extract_features(waveforms, lengths)
        features = self._normalise_and_project(features)
        features = self.feature_dropout(features)
        padding_mask = lengths_to_padding_mask(frame_lengths, features.shape[1])
        if padding_mask is not None:
            features = features.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        front_end_prediction = self.front_end_head(features) if predict and self.front_end_head is not None else None
        if frame_mask is not None:
            features = self._apply_frame_mask(features, frame_mask)
        if front_end_only:
            return StudentOutput(features, [], features, None, frame_lengths, padding_mask, front_end_prediction)
        encoded = self.encoder(features, frame_lengths)
        predictions = codeword_output = None
        if predict and self.prediction_head is not None:
            predictions = self.prediction_head(encoded)
        if predict and self.codeword_head is not None:
            codeword_output = self.codeword_head(encoded.last_hidden)
        return StudentOutput(features, encoded.layer_outputs, encoded.last_hidden, predictions, frame_lengths,
                             padding_mask, front_end_prediction, codeword_output, encoded.encoder_input)
