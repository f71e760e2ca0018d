"""The fbank front end (Wang et al.'s "waveform -> Fbank" input distillation): a cheaper replacement for the
convolutional waveform encoder.

waveform -> 80-dim Kaldi-compatible log-mel fbank (25 ms window, 10 ms shift) -> global mean/variance normalisation
-> Conv1d(kernel 5, stride 2) + GLU (10 ms -> 20 ms, the CNN's frame rate) -> Linear to the encoder width.

The normalisation statistics are buffers: computed once from training data (:func:`fbank_statistics`), saved in
the checkpoint with the weights, and checked to exist before the front end is used.
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lengths import lengths_to_padding_mask

WINDOW_SAMPLES, SHIFT_SAMPLES = 400, 160  # 25 ms / 10 ms at 16 kHz


def fbank_frames(samples: Tensor) -> Tensor:
    """Kaldi fbank frame count (snip_edges): 1 + (samples - window) // shift, 0 below one window."""
    return torch.div(samples - WINDOW_SAMPLES, SHIFT_SAMPLES, rounding_mode="floor").add(1).clamp(min=0)


def log_mel_fbank(waveform: Tensor, num_mel_bins: int) -> Tensor:
    """(samples,) float waveform in [-1, 1] -> (frames, num_mel_bins), as Kaldi computes it on 16-bit samples.

    torchaudio's ``compliance.kaldi`` module is plain PyTorch, so this works without torchaudio's native libraries.
    """
    return _kaldi_fbank(waveform, num_mel_bins, frame_shift_ms=1000.0 * SHIFT_SAMPLES / 16000)


def _kaldi_fbank(waveform: Tensor, num_mel_bins: int, frame_shift_ms: float) -> Tensor:
    import torchaudio.compliance.kaldi as kaldi

    return kaldi.fbank(waveform.float().unsqueeze(0) * 32768.0, num_mel_bins=num_mel_bins, sample_frequency=16000,
                       frame_length=1000.0 * WINDOW_SAMPLES / 16000, frame_shift=frame_shift_ms, dither=0.0,
                       energy_floor=0.0)


def batch_log_mel_fbank(waveforms: Tensor, num_mel_bins: int) -> Tensor:
    """(batch, samples) -> (batch, fbank_frames(samples), num_mel_bins): :func:`log_mel_fbank` of every row at once.

    Every step of Kaldi's fbank (DC offset, pre-emphasis, window, FFT, mel, log) works within one frame, so the frames
    of all rows are laid end to end and read with a shift of one whole window: the same frames, one call, no loop over
    the batch (which is what lets the ONNX export keep the batch dynamic). Frame ``j`` of a row uses samples
    ``[160 j, 160 j + 400)``, so the first ``fbank_frames(length)`` frames of a padded row are its own.
    """
    frames = waveforms.unfold(1, WINDOW_SAMPLES, SHIFT_SAMPLES)  # (batch, frames, window)
    batch, count = frames.shape[0], frames.shape[1]
    features = _kaldi_fbank(frames.reshape(-1), num_mel_bins, frame_shift_ms=1000.0 * WINDOW_SAMPLES / 16000)
    return features.reshape(batch, count, num_mel_bins)


class FbankFrontEnd(nn.Module):
    """(batch, samples) waveforms -> (batch, frames, embed_dim) at 20 ms, with frame lengths."""

    def __init__(self, num_mel_bins: int, embed_dim: int, kernel_size: int) -> None:
        super().__init__()
        self.num_mel_bins = num_mel_bins
        self.kernel_size = kernel_size
        self.register_buffer("mean", torch.zeros(num_mel_bins))
        self.register_buffer("std", torch.ones(num_mel_bins))
        # Frames the statistics were computed from; 0 = not computed yet (a front end must not run unnormalised).
        self.register_buffer("statistics_frames", torch.zeros((), dtype=torch.long))
        self.subsample = nn.Conv1d(num_mel_bins, 2 * embed_dim, kernel_size, stride=2, padding=kernel_size // 2)
        self.projection = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_normal_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)

    # The CNN front end's interface, so the student treats both alike.
    downsample_rate = 2 * SHIFT_SAMPLES
    receptive_field = WINDOW_SAMPLES

    def output_lengths(self, lengths: Tensor) -> Tensor:
        padding = self.kernel_size // 2
        frames = fbank_frames(lengths)
        return torch.div(frames + 2 * padding - self.kernel_size, 2, rounding_mode="floor").add(1).clamp(min=0)

    def set_statistics(self, mean: Tensor, std: Tensor, frames: int) -> None:
        if mean.shape != self.mean.shape or std.shape != self.std.shape or frames <= 0:
            raise ValueError(f"fbank statistics must be ({self.num_mel_bins},) tensors from > 0 frames")
        self.mean.copy_(mean)
        self.std.copy_(std.clamp(min=1e-5))
        self.statistics_frames.fill_(frames)

    @property
    def has_statistics(self) -> bool:
        return int(self.statistics_frames) > 0

    def features(self, waveforms: Tensor, lengths: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """Normalised fbank, (batch, frames, mel) zero-padded, with fbank frame lengths."""
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            padded = batch_log_mel_fbank(waveforms, self.num_mel_bins)
        frames = None if lengths is None else fbank_frames(lengths)
        padded = (padded - self.mean) / self.std
        mask = lengths_to_padding_mask(frames, padded.shape[1])
        if mask is not None:
            padded = padded.masked_fill(mask.unsqueeze(-1), 0.0)
        return padded, frames

    def forward(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        if not torch.compiler.is_compiling() and not self.has_statistics:  # (traced: the upstream checked it)
            raise RuntimeError("the fbank front end has no normalisation statistics: compute them from training "
                               "data first (s3prl_distill.model.fbank.fbank_statistics)")
        features, frames = self.features(waveforms, lengths)
        x = F.glu(self.subsample(features.transpose(1, 2).to(self.subsample.weight.dtype)), dim=1).transpose(1, 2)
        out_lengths = None if lengths is None else self.output_lengths(lengths)
        mask = lengths_to_padding_mask(out_lengths, x.shape[1])
        if mask is not None:  # the padded conv sees zeros past the end; keep padded frames at zero downstream
            x = x.masked_fill(mask.unsqueeze(-1), 0.0)
        return self.projection(x), out_lengths


def fbank_statistics(waveforms: Iterable[Tensor], num_mel_bins: int) -> Tuple[Tensor, Tensor, int]:
    """Global per-bin mean and standard deviation of the fbank of ``waveforms`` (each (samples,)), in float64."""
    total = torch.zeros(num_mel_bins, dtype=torch.float64)
    squares = torch.zeros(num_mel_bins, dtype=torch.float64)
    frames = 0
    for waveform in waveforms:
        features = log_mel_fbank(waveform, num_mel_bins).double()
        total += features.sum(0)
        squares += features.pow(2).sum(0)
        frames += len(features)
    if frames == 0:
        raise ValueError("no audio to compute fbank statistics from (every waveform is shorter than 25 ms)")
    mean = total / frames
    std = (squares / frames - mean.pow(2)).clamp(min=0).sqrt()
    return mean.float(), std.float(), frames
