"""The convolutional waveform encoder: raw audio ``(batch, samples)`` -> frames ``(batch, frames, channels)``, with
explicit ``lengths`` (valid samples in, valid frames out; None means every row is fully valid)."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ConvLayerSpec
from .gates import HardConcreteGate
from .lengths import conv_output_lengths, lengths_to_padding_mask

# Inference runs the CNN over pieces of time (ConvFeatureExtractor.stream) when the whole batch would make a layer
# output larger than glibc's largest mmap threshold (32 MiB: every larger block is a fresh mapping, paged in on each
# forward); smaller batches are as fast or faster whole. Pieces are sized so that their widest layer output is about
# STREAM_CHUNK_BYTES: on a 2-core EPYC (4 x 10 s, 512 channels) 8 MB pieces ran the CNN in 0.83x the whole-batch
# time, 16-32 MB ones in more than 1x, and pieces shorter than the minimum pay more per-call overhead.
STREAM_ABOVE_BYTES = 32 * 2**20
STREAM_CHUNK_BYTES = 8 * 2**20
STREAM_MIN_CHUNK_FRAMES = 512


def _valid_frames(lengths: Tensor, frames: int, dtype: torch.dtype) -> Tensor:
    """(B, frames, 1): 1 on each utterance's valid frames, 0 on padding."""
    return (~lengths_to_padding_mask(lengths, frames)).to(dtype).unsqueeze(-1)


def _masked_instance_norm(x: Tensor, lengths: Optional[Tensor], weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """GroupNorm with one group per channel, whose statistics use only the valid frames of each utterance.

    fairseq's GroupNorm also averages over padding, so a waveform's features would depend on what else is in the
    batch; masking the statistics removes that. Computed in fp32 like fairseq's ``Fp32GroupNorm``, autocast off
    too: autocast runs ``bmm`` in bf16/fp16, and an fp16 sum over tens of thousands of frames overflows.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _masked_instance_norm_fp32(x, lengths, weight, bias, eps)


def _masked_instance_norm_fp32(x: Tensor, lengths: Optional[Tensor], weight: Tensor, bias: Tensor,
                               eps: float) -> Tensor:
    dtype = x.dtype
    compute = torch.promote_types(dtype, torch.float32)  # fp32, or fp64 for a float64 model
    x = x.to(compute)
    if lengths is None:
        y = F.group_norm(x, x.shape[1], weight.to(compute), bias.to(compute), eps)
        return y.to(dtype)
    # Masked sums as batched matrix-vector products rather than masked copies of x; two passes (mean, then the
    # centred second moment) keep the variance exact when the mean is large. This layer sees 512 channels at 3.2 ms
    # frames, so each full-size temporary avoided saves ~60 ms per 4 x 10 s batch on CPU.
    valid = _valid_frames(lengths, x.shape[-1], x.dtype)  # (B, T, 1)
    count = valid.sum(1, keepdim=True).clamp(min=1.0)  # (B, 1, 1)
    mean = torch.bmm(x, valid) / count  # (B, C, 1)
    centred = x - mean
    variance = torch.bmm(centred.square(), valid) / count
    scale = torch.rsqrt(variance + eps) * weight.to(compute)[:, None]
    return torch.addcmul(bias.to(compute)[:, None], centred, scale).to(dtype)


def first_layer_statistics(conv: nn.Conv1d, waveforms: Tensor, lengths: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Mean and variance per (utterance, channel) over the valid output frames of the CNN's first convolution
    (one input channel), found without computing its output: the conv is affine in its input windows, so
    ``mean = w . mu + b`` and ``variance = w^T Sigma w``, with ``mu`` and ``Sigma`` the mean and covariance of the
    ``kernel``-sample windows it reads. Float64 (a few kernel x kernel matrices), so the quadratic form loses nothing
    to cancellation. ``lengths``: valid frames of that layer's output, None when all are valid."""
    with torch.autocast(device_type=waveforms.device.type, enabled=False):
        kernel, stride = conv.kernel_size[0], conv.stride[0]
        windows = waveforms.double().unfold(-1, kernel, stride)  # (B, T, kernel), a view
        frames = windows.shape[1]
        if lengths is None:
            valid = torch.ones(windows.shape[0], frames, 1, dtype=windows.dtype, device=windows.device)
        else:
            valid = _valid_frames(lengths, frames, windows.dtype)
        count = valid.sum(1).clamp(min=1.0)  # (B, 1)
        window_mean = (windows * valid).sum(1) / count  # (B, kernel)
        centred = windows - window_mean[:, None]
        covariance = torch.bmm(centred.transpose(1, 2), centred * valid) / count[..., None]  # (B, kernel, kernel)
        weight = conv.weight.double().flatten(1)  # (C, kernel)
        mean = window_mean @ weight.t()
        if conv.bias is not None:
            mean = mean + conv.bias.double()
        variance = (torch.matmul(weight, covariance) * weight).sum(-1)  # (B, C): w_c^T Sigma w_c per channel
        return mean, variance


class ConvLayerBlock(nn.Module):
    """Conv1d -> dropout -> optional norm (group or layer) -> GELU -> optional channel gate (pruning)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        bias: bool,
        norm: Optional[str],
        dropout: float,
        gate_initial_drop: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        self.dropout = nn.Dropout(dropout)
        self.norm_type = norm
        if norm == "group_norm":
            self.norm = nn.GroupNorm(out_channels, out_channels, affine=True)
        elif norm == "layer_norm":
            self.norm = nn.LayerNorm(out_channels, elementwise_affine=True)
        elif norm is None:
            self.norm = None
        else:
            raise ValueError(f"unknown conv norm {norm!r}")
        self.gate = HardConcreteGate(out_channels, gate_initial_drop) if gate_initial_drop is not None else None

    def output_frames(self, frames: int) -> int:
        """Frames this layer makes of ``frames`` input frames (``conv_output_lengths`` for one plain int)."""
        return max(0, (frames - self.kernel_size) // self.stride + 1)

    def _convolve(self, x: Tensor) -> Tensor:
        """``self.conv(x)``, computed as one batched GEMM where that is ~2x faster on CPU (measured): 1x1 kernels,
        and the first layer, whose single input channel unfolds into a small (B, kernel, frames) window matrix."""
        if self.conv.in_channels == 1:
            windows = x[:, 0].unfold(-1, self.kernel_size, self.stride).transpose(1, 2).contiguous()
        elif self.kernel_size == 1 and self.stride == 1:
            windows = x
        else:
            return self.conv(x)
        weight = self.conv.weight.flatten(1)  # (C_out, C_in * kernel), in the windows' row order
        y = torch.bmm(weight.expand(x.shape[0], *weight.shape), windows)  # (B, C_out, frames), contiguous
        return y if self.conv.bias is None else y + self.conv.bias[:, None]

    def forward(self, x: Tensor, lengths: Optional[Tensor],
                statistics: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """``x``: (batch, channels, time) -> same layout; ``lengths`` in time steps. ``statistics``: the group norm's
        (mean, variance) per (batch, channel), given when ``x`` is only a piece of the utterance they describe."""
        x = self.dropout(self._convolve(x))
        if lengths is not None:
            lengths = conv_output_lengths(lengths, self.kernel_size, self.stride)
        if self.norm_type == "group_norm" and statistics is not None:
            mean, variance = statistics
            with torch.autocast(device_type=x.device.type, enabled=False):  # fp32 at least, as in the branch below
                scale = torch.rsqrt(variance + self.norm.eps) * self.norm.weight.double()
                shift = self.norm.bias.double() - mean * scale
                compute = torch.promote_types(x.dtype, torch.float32)
                x = torch.addcmul(shift.to(compute)[..., None], x.to(compute), scale.to(compute)[..., None]).to(x.dtype)
        elif self.norm_type == "group_norm":
            x = _masked_instance_norm(x, lengths, self.norm.weight, self.norm.bias, self.norm.eps)
        elif self.norm_type == "layer_norm":
            # fp32 like fairseq's Fp32LayerNorm; per frame, so padding cannot leak in.
            x = F.layer_norm(
                x.transpose(1, 2).float(), self.norm.normalized_shape, self.norm.weight.float(),
                self.norm.bias.float(), self.norm.eps,
            ).transpose(1, 2).to(x.dtype)
        if x.requires_grad:
            x = F.gelu(x)
        else:  # nothing keeps x for a backward: overwrite it rather than allocate (and page in) another 100+ MB
            x = torch.ops.aten.gelu_(x)
        if self.gate is not None:
            x = x * self.gate()[:, None].to(x.dtype)
        return x, lengths


class ConvFeatureExtractor(nn.Module):
    """Stack of :class:`ConvLayerBlock` turning raw audio into frames."""

    def __init__(
        self, layers: List[ConvLayerSpec], norm: str, bias: bool, dropout: float, output_scale: bool = False,
        gate_initial_drop: Optional[float] = None,
    ) -> None:
        """``output_scale``: a fixed per-channel scale on the output (a buffer); ``gate_initial_drop``: a
        hard-concrete gate on every layer's output channels, for pruning."""
        super().__init__()
        blocks = []
        in_channels = 1
        for index, (channels, kernel, stride) in enumerate(layers):
            if norm == "group_norm":
                block_norm = "group_norm" if index == 0 else None
            else:
                block_norm = "layer_norm"
            blocks.append(ConvLayerBlock(in_channels, channels, kernel, stride, bias, block_norm, dropout,
                                         gate_initial_drop))
            in_channels = channels
        self.conv_layers = nn.ModuleList(blocks)
        self.out_channels = in_channels
        if output_scale:
            self.register_buffer("output_scale", torch.ones(in_channels))
        else:
            self.output_scale = None
        self.downsample_rate = math.prod(stride for _, _, stride in layers)
        self.receptive_field = self._receptive_field(layers)

    @staticmethod
    def _receptive_field(layers: List[ConvLayerSpec]) -> int:
        field, jump = 1, 1
        for _, kernel, stride in layers:
            field += (kernel - 1) * jump
            jump *= stride
        return field

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for block in self.conv_layers:
            lengths = conv_output_lengths(lengths, block.kernel_size, block.stride)
        return lengths

    def forward(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """``waveforms``: (batch, samples) -> features (batch, frames, channels), frame lengths.

        On CPU in eval mode without autograd (inference, SUPERB with a frozen upstream), when the whole batch would
        make a layer output of more than ``STREAM_ABOVE_BYTES``, the stack runs over pieces of time (:meth:`stream`);
        otherwise over the whole batch at once, layer by layer (:meth:`whole`). Not on CUDA: its caching allocator
        never maps memory afresh, and pieces would multiply the kernel launches."""
        if not self.training and not torch.is_grad_enabled() and waveforms.device.type == "cpu":
            sizes = self._output_bytes(waveforms)
            if max(sizes) > STREAM_ABOVE_BYTES:
                return self.stream(waveforms, lengths, self._chunk_frames(waveforms), self._whole_from(sizes))
        return self.whole(waveforms, lengths)

    def _frame_counts(self, samples: int) -> List[int]:
        """Each layer's output frames for ``samples`` input samples."""
        counts = []
        for block in self.conv_layers:
            samples = block.output_frames(samples)
            counts.append(samples)
        return counts

    def _output_bytes(self, waveforms: Tensor) -> List[int]:
        """Bytes of each layer's output over the whole batch."""
        return [waveforms.shape[0] * frames * block.conv.out_channels * waveforms.element_size()
                for frames, block in zip(self._frame_counts(waveforms.shape[-1]), self.conv_layers)]

    @staticmethod
    def _whole_from(sizes: List[int]) -> int:
        """The first layer :meth:`stream` runs over the whole batch, given each layer's whole-batch output bytes
        (:meth:`_output_bytes`): the one after which no layer output exceeds ``STREAM_ABOVE_BYTES`` (none: every
        layer in pieces). Pieces of the last layers are a few frames long, and such short convolutions ran at a third
        to two thirds of the GEMM rate: on a 2-core EPYC at 4 x 10 s the CNN took 0.90x (FitHuBERT) and 0.96x
        (DistilHuBERT) the time with its small layers whole."""
        whole_from = len(sizes)
        while whole_from > 1 and sizes[whole_from - 2] <= STREAM_ABOVE_BYTES:
            whole_from -= 1
        return whole_from

    def whole(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """The forward over the whole batch, one layer at a time (training, and any use of autograd)."""
        x = waveforms.unsqueeze(1)
        for block in self.conv_layers:
            x, lengths = block(x, lengths)
        return self._scaled(x.transpose(1, 2)), lengths

    def _scaled(self, frames: Tensor) -> Tensor:
        """(batch, frames, channels) times the fixed per-channel ``output_scale``, if the stack has one."""
        return frames if self.output_scale is None else frames * self.output_scale.to(frames.dtype)

    def _chunk_frames(self, waveforms: Tensor) -> int:
        """First-layer frames per piece: the widest layer's piece of the batch within ``STREAM_CHUNK_BYTES``."""
        widest = max(block.conv.out_channels for block in self.conv_layers)
        per_frame = waveforms.shape[0] * widest * waveforms.element_size()
        return max(STREAM_MIN_CHUNK_FRAMES, STREAM_CHUNK_BYTES // per_frame)

    def stream(self, waveforms: Tensor, lengths: Optional[Tensor], chunk_frames: int,
               whole_from: Optional[int] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """The forward computed ``chunk_frames`` first-layer frames at a time, every layer keeping the input frames
        its next output frame still needs (``kernel - stride`` of them, or fewer): the same outputs (to float
        rounding) and the same multiply-accumulates as :meth:`whole`, none repeated, plus the group norm's
        statistics (``kernel``-squared per first-layer frame, against ``kernel`` x channels for the layer itself).

        Why: the whole-batch forward writes each layer's output for the whole utterance before the next layer reads
        it; at the first layers those are 100+ MB tensors, which the allocator maps fresh (and the kernel zero-fills
        page by page) on every forward and which the next layer reads back from memory. Pieces of a few MB stay in
        the allocator's pool and in cache. The first layer's group norm needs statistics over whole utterances,
        which :func:`first_layer_statistics` gets from the waveform. Only for inference: pieces would break
        dropout's and the pruning gates' per-forward sampling, and save nothing when autograd keeps every output.

        ``whole_from``: layers from this index on run over the whole batch, on the joined pieces of the layer before
        (default: none, every layer in pieces; the forward picks it with :meth:`_whole_from`)."""
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be positive, got {chunk_frames}")
        whole_from = len(self.conv_layers) if whole_from is None else whole_from
        if not 1 <= whole_from <= len(self.conv_layers):
            raise ValueError(f"whole_from must be a layer index from 1 to {len(self.conv_layers)}, got {whole_from}")
        if self.training:
            raise RuntimeError("ConvFeatureExtractor.stream is for inference: call eval() first (in training, "
                               "dropout and the pruning gates sample once per forward, not once per piece)")
        blocks = list(self.conv_layers)[:whole_from]
        first = blocks[0]
        samples = waveforms.shape[-1]
        counts = self._frame_counts(samples)
        first_frames = counts[0]
        if counts[-1] == 0:
            raise ValueError(f"waveforms of {samples} samples are shorter than the CNN's receptive field "
                             f"({self.receptive_field} samples)")
        statistics = None
        if first.norm_type == "group_norm":
            first_lengths = None if lengths is None else conv_output_lengths(lengths, first.kernel_size, first.stride)
            statistics = first_layer_statistics(first.conv, waveforms, first_lengths)
        pieces: List[Tensor] = []  # the last streamed layer's output, (B, C, frames) each, in order
        pending: List[Optional[Tensor]] = [None] * len(blocks)  # per layer: its input frames not consumed yet
        for start in range(0, first_frames, chunk_frames):
            end = samples if start + chunk_frames >= first_frames else (start + chunk_frames) * first.stride
            x: Optional[Tensor] = waveforms[:, None, start * first.stride: end]
            for index, block in enumerate(blocks):
                if pending[index] is not None:
                    x = torch.cat([pending[index], x], dim=-1)
                if x.shape[-1] < block.kernel_size:  # not one output frame yet: wait for the next piece
                    pending[index], x = x, None
                    break
                # The whole of x goes in (a valid conv ignores the frames past its last window; a slice of them
                # would be a strided view, which the conv copies first); what it did not consume waits.
                consumed = block.output_frames(x.shape[-1]) * block.stride
                pending[index] = x[..., consumed:] if consumed < x.shape[-1] else None
                x = block(x, None, statistics if index == 0 else None)[0]
            if x is not None:
                pieces.append(x)
        if whole_from == len(self.conv_layers):
            out = torch.cat([piece.transpose(1, 2) for piece in pieces], dim=1)  # (B, frames, C), contiguous
        else:  # the last layers, whose outputs are small, over the whole batch: pieces of them cost more calls
            x = torch.cat(pieces, dim=-1)
            for block in self.conv_layers[whole_from:]:
                x = block(x, None)[0]
            out = x.transpose(1, 2)
        assert out.shape[1] == counts[-1], (out.shape, counts[-1])
        return self._scaled(out), (None if lengths is None else self.output_lengths(lengths))
