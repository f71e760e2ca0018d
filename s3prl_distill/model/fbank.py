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
FFT_SIZE = 512  # the window zero-padded to a power of two, as Kaldi does
PREEMPHASIS = 0.97
LOG_FLOOR = torch.finfo(torch.float32).eps  # Kaldi floors the mel energies there before the log


def fbank_frames(samples: Tensor) -> Tensor:
    """Kaldi fbank frame count (snip_edges): 1 + (samples - window) // shift, 0 below one window."""
    return torch.div(samples - WINDOW_SAMPLES, SHIFT_SAMPLES, rounding_mode="floor").add(1).clamp(min=0)


def log_mel_fbank(waveform: Tensor, num_mel_bins: int) -> Tensor:
    """(samples,) float waveform in [-1, 1] -> (frames, num_mel_bins), as Kaldi computes it on 16-bit samples."""
    return batch_log_mel_fbank(waveform[None], num_mel_bins)[0]


def fbank_constants(num_mel_bins: int) -> Tuple[Tensor, Tensor]:
    """Kaldi's povey window (``WINDOW_SAMPLES``,) and its mel filterbank (num_mel_bins, ``FFT_SIZE`` // 2 + 1) for
    16 kHz audio, 20 Hz up to Nyquist: float32, on the CPU. The filterbank is torchaudio's Kaldi-compatible one."""
    import torchaudio.compliance.kaldi as kaldi

    window = torch.hann_window(WINDOW_SAMPLES, periodic=False).pow(0.85)
    banks, _ = kaldi.get_mel_banks(num_mel_bins, FFT_SIZE, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)
    return window, F.pad(banks.float(), (0, 1))  # Kaldi gives the Nyquist bin no weight


def batch_log_mel_fbank(waveforms: Tensor, num_mel_bins: int,
                        constants: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
    """(batch, samples) -> (batch, fbank_frames(samples), num_mel_bins): Kaldi's fbank (torchaudio's
    ``compliance.kaldi.fbank`` with dither 0, equal to it bit for bit; tested) of every row at once.

    Frame ``j`` of a row uses samples ``[160 j, 160 j + 400)``, so the first ``fbank_frames(length)`` frames of a
    padded row are its own. Each frame: DC offset removed, pre-emphasis 0.97, povey window, zero-padded to 512, power
    spectrum, mel filterbank, log (floored at float32's epsilon). ``constants``: :func:`fbank_constants` already on
    the waveforms' device (a module keeps them as buffers), so that nothing is copied to a GPU per call, which would
    make it wait.
    """
    window, banks = fbank_constants(num_mel_bins) if constants is None else constants
    # float32 always (a module cast to half keeps computing the fbank as Kaldi does); no copy when already there
    window, banks = (t.to(device=waveforms.device, dtype=torch.float32) for t in (window, banks))
    batch = waveforms.shape[0]
    if waveforms.shape[1] < WINDOW_SAMPLES:  # not one whole window: no frame (Kaldi's snip_edges)
        return waveforms.new_zeros(batch, 0, banks.shape[0], dtype=torch.float32)
    frames = (waveforms.float() * 32768.0).unfold(1, WINDOW_SAMPLES, SHIFT_SAMPLES).reshape(-1, WINDOW_SAMPLES)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # each frame's first sample is its own previous
    frames = (frames - PREEMPHASIS * previous) * window
    power = torch.fft.rfft(F.pad(frames, (0, FFT_SIZE - WINDOW_SAMPLES))).abs().pow(2.0)
    features = torch.mm(power, banks.t()).clamp_min(LOG_FLOOR).log()
    return features.reshape(batch, -1, banks.shape[0])


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
        # The window and filterbank, fixed: not saved, moved with the module (see reset_constants).
        window, banks = fbank_constants(num_mel_bins)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_banks", banks, persistent=False)
        # A check that found statistics is remembered on the host: reading the buffer on a GPU every forward would
        # make each training step wait for the device. Loading a state dict forgets it (the buffer may change).
        self._statistics_checked = False
        self.register_load_state_dict_post_hook(FbankFrontEnd._forget_statistics_check)
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
        self._statistics_checked = True

    def reset_constants(self) -> None:
        """Refill the unsaved window and filterbank buffers, on their current device (for a module built on the meta
        device, as transformers' from_pretrained does)."""
        device = self.subsample.weight.device
        window, banks = fbank_constants(self.num_mel_bins)
        self.window, self.mel_banks = window.to(device), banks.to(device)

    @staticmethod
    def _forget_statistics_check(module: "FbankFrontEnd", incompatible_keys) -> None:
        module._statistics_checked = False

    @property
    def has_statistics(self) -> bool:
        if not self._statistics_checked:
            self._statistics_checked = int(self.statistics_frames) > 0
        return self._statistics_checked

    def features(self, waveforms: Tensor, lengths: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """Normalised fbank, (batch, frames, mel) zero-padded, with fbank frame lengths."""
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            padded = batch_log_mel_fbank(waveforms, self.num_mel_bins, (self.window, self.mel_banks))
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
