"""Self-attention of the encoder layers: ``scaled_dot_product_attention`` with prunable heads, WavLM's gated
relative position bias, and ARMHuBERT's attention-map reuse."""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import RelativePositionConfig
from .gates import HardConcreteGate

# Explicit attention (ARMHuBERT's map-providing and map-reusing layers; the fused kernel keeps no map) writes
# (batch, heads, frames, frames) scores, probabilities and reused weights, then reads each back: 48 MB each at 4 x 10 s
# and 12 heads. Above 32 MiB glibc maps every such tensor afresh and the kernel zero-fills it page by page (2-core
# EPYC: a 48 MB softmax took 21 ms into a fresh tensor, 3.8 ms into memory already mapped); below it, each pass still
# goes through memory rather than cache. Inference on CPU therefore computes it over blocks of (utterance, heads,
# query rows) whose scores stay within ATTENTION_BLOCK_BYTES (2-8 MB ran level there, 12-16 MB and 0.25-0.5 MB slower)
# once the whole batch's scores would exceed ATTENTION_BLOCKS_ABOVE_BYTES. There, with ARMHuBERT(-S), the blocked
# forward took 0.81-0.89x the whole-batch one at 48 MB of scores (4 x 10 s, fp32) and 0.93-0.96x at 24 MB (2 x 10 s);
# at 24 MB in bf16 (4 x 10 s) 0.91-1.02x, within noise; at 12 MB and below 0.96-1.09x, short utterances and bf16 up
# to 9 % slower (two runs of benchmarks/attention_blocks.py's sweep). The map itself is written in place into one
# buffer per forward.
ATTENTION_BLOCKS_ABOVE_BYTES = 16 * 2**20
ATTENTION_BLOCK_BYTES = 4 * 2**20


def whole_batch_scores_bytes(batch: int, heads: int, frames: int, dtype: torch.dtype) -> int:
    """Bytes of the (batch, heads, frames, frames) scores the whole-batch explicit attention would write: what
    :meth:`SelfAttention._attends_in_blocks` compares with ``ATTENTION_BLOCKS_ABOVE_BYTES``."""
    return batch * heads * frames * frames * dtype.itemsize


class AttentionBlock(NamedTuple):
    """One block of explicit attention: an utterance, a range of heads and a range of query rows (all keys)."""

    utterance: int
    heads: slice
    rows: slice


def _balanced_ranges(total: int, most: int) -> List[slice]:
    """``total`` split into the fewest ranges of at most ``most``, of (nearly) equal length."""
    count = -(-total // max(1, most))
    bounds = [index * total // count for index in range(count + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


def attention_blocks(batch: int, heads: int, frames: int, element_size: int,
                     block_bytes: int = ATTENTION_BLOCK_BYTES) -> List[AttentionBlock]:
    """Blocks covering every (utterance, head, query row) once, each with (heads, rows, frames) scores of at most
    ``block_bytes`` where one row allows it: whole heads while one head's map fits, else ranges of query rows."""
    if batch < 1 or heads < 1 or frames < 1:
        return []
    per_head = frames * frames * element_size
    if per_head <= block_bytes:
        head_ranges, row_ranges = _balanced_ranges(heads, block_bytes // per_head), [slice(0, frames)]
    else:
        head_ranges = _balanced_ranges(heads, 1)
        row_ranges = _balanced_ranges(frames, block_bytes // (frames * element_size))
    return [AttentionBlock(utterance, head_range, row_range)
            for utterance in range(batch) for head_range in head_ranges for row_range in row_ranges]


def relative_position_buckets(query_length: int, key_length: int, num_buckets: int, max_distance: int,
                               device: Optional[torch.device] = None) -> Tensor:
    """(query_length, key_length) bucket of each key offset, bidirectional (WavLM, after T5): half the buckets per
    direction; offsets below a quarter of ``num_buckets`` get their own bucket, larger ones share log-spaced buckets
    up to ``max_distance``, beyond which they share the last."""
    offsets = torch.arange(key_length, device=device)[None, :] - torch.arange(query_length, device=device)[:, None]
    per_side = num_buckets // 2
    buckets = (offsets > 0).long() * per_side
    distance = offsets.abs()
    exact = per_side // 2
    # clamp(min=1) only keeps log() finite where the exact branch is taken anyway.
    logarithmic = exact + (
        torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact) * (per_side - exact)
    ).long()
    logarithmic = logarithmic.clamp(max=per_side - 1)
    return buckets + torch.where(distance < exact, distance, logarithmic)


class RelativePositionBias(nn.Module):
    """WavLM's bucketed relative position bias, one learned value per bucket and head; computed once per forward
    and shared by every layer (each layer gates it with its own input)."""

    def __init__(self, config: RelativePositionConfig) -> None:
        super().__init__()
        self.num_buckets = config.num_buckets
        self.max_distance = config.max_distance
        self.embedding = nn.Embedding(config.num_buckets, config.num_heads)

    def forward(self, frames: int) -> Tensor:
        """(num_heads, frames, frames)."""
        buckets = relative_position_buckets(frames, frames, self.num_buckets, self.max_distance,
                                            self.embedding.weight.device)
        return self.embedding(buckets).permute(2, 0, 1)


class AttentionMaps:
    """Carries, within one encoder forward, the attention probabilities ``(batch, heads, frames, frames)`` of the
    last layer that computed a map to the layers after it that reuse it (``EncoderConfig.attention_reuse``).

    One object per forward: in blocked inference (:meth:`SelfAttention.attend_in_blocks`) each providing layer writes
    its map into the memory of the previous one this object allocated, so an earlier map does not outlive the next
    providing layer."""

    def __init__(self) -> None:
        self.probabilities: Optional[Tensor] = None
        self._buffer: Optional[Tensor] = None

    def inference_buffer(self, like: Tensor, heads: int) -> Tensor:
        """Where a layer computing its map in blocks (inference only) writes it: this object's buffer when it has the
        same shape, dtype and device and was made in the same inference mode (the layers reusing the map in it have
        run by then); one allocation per forward, not one per providing layer."""
        batch, frames, _ = like.shape
        shape = (batch, heads, frames, frames)
        buffer = self._buffer
        if buffer is None or buffer.shape != shape or buffer.dtype != like.dtype or buffer.device != like.device \
                or buffer.is_inference() != torch.is_inference_mode_enabled():
            buffer = self._buffer = like.new_empty(shape)
        return buffer

    def whole(self, shape: Tuple[int, int, int, int]) -> Tensor:
        """The stored map, checked against the (batch, heads, frames, frames) the reusing layer attends over."""
        if self.probabilities is None:
            raise ValueError("this layer reuses an earlier layer's attention map, but none was passed")
        if tuple(self.probabilities.shape) != tuple(shape):
            raise ValueError(f"the attention map to reuse is {tuple(self.probabilities.shape)} (batch, heads, frames, "
                             f"frames), but this layer attends over {tuple(shape)}")
        return self.probabilities


def softmax_rows_(scores: Tensor) -> Tensor:
    """Softmax over the last dimension, written over ``scores`` (a providing layer's block of its map)."""
    return torch.ops.aten._softmax.out(scores, -1, False, out=scores)


def reused_attention_weights(probabilities: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
    """The weights a reusing layer attends with: the earlier layer's probabilities, used as logits of a second
    softmax over the valid keys (ARMHuBERT's official layer does this; its released weights were trained so).
    ``padding_mask``: (batch, frames) for a whole map, or one utterance's (frames,) for a block of it."""
    logits = probabilities
    if padding_mask is not None:
        key_mask = padding_mask[:, None, None, :] if padding_mask.dim() == 2 else padding_mask
        logits = logits.masked_fill(key_mask, float("-inf"))
    return torch.softmax(logits, dim=-1)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``. The head count and width may be pruned
    (at least one head: a layer without heads has no attention module at all, see ``encoder.EncoderLayer``); optional
    WavLM gated relative position bias, and hard-concrete gates on the heads and on the whole block for pruning.

    Attention-map reuse: ``reuses_map`` makes a layer without query/key projections that attends with the map an
    earlier layer left in :class:`AttentionMaps`; ``provides_map`` makes a layer compute its attention explicitly
    (not through the fused kernel) and leave its probabilities there. In CPU inference both compute it block by block
    (:meth:`attend_in_blocks`) once the whole batch's map would be large."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        dropout: float,
        relative_position: Optional[RelativePositionConfig] = None,
        kept_heads: Optional[List[int]] = None,
        head_gate_initial_drop: Optional[float] = None,
        layer_gate_initial_drop: Optional[float] = None,
        reuses_map: bool = False,
        provides_map: bool = False,
    ) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError("an attention block needs at least one head (a removed block is None)")
        if reuses_map and relative_position is not None:
            raise ValueError("a layer reusing an attention map cannot have a relative position bias")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.reuses_map = reuses_map
        self.provides_map = provides_map
        inner_dim = num_heads * head_dim
        # A reusing layer has no query/key projections at all (absent from its state dict, as in ARMHuBERT's).
        self.q_proj = None if reuses_map else nn.Linear(embed_dim, inner_dim)
        self.k_proj = None if reuses_map else nn.Linear(embed_dim, inner_dim)
        self.v_proj = nn.Linear(embed_dim, inner_dim)
        self.out_proj = nn.Linear(inner_dim, embed_dim)
        self.dropout = dropout
        self.position_heads = 0
        self.gate_linear, self.gate_const = None, None
        if relative_position is not None:
            # The gates see the layer input split into the unpruned head count's slices (not the q projection), so
            # they do not change when heads are pruned; the layer then keeps its heads' share of the bias.
            self.position_heads = relative_position.num_heads
            if relative_position.gated:
                self.gate_linear = nn.Linear(embed_dim // self.position_heads, 8)
                self.gate_const = nn.Parameter(torch.ones(1, self.position_heads, 1, 1))
            # Also kept as a list: the buffer is not saved, and a model built on the meta device (transformers'
            # from_pretrained) refills it with reset_kept_heads.
            self.kept_head_indices = list(kept_heads) if kept_heads is not None else list(range(num_heads))
            self.register_buffer("kept_heads", torch.tensor(self.kept_head_indices, dtype=torch.long),
                                 persistent=False)
        self.head_gate = (HardConcreteGate(num_heads, head_gate_initial_drop)
                          if head_gate_initial_drop is not None else None)
        self.layer_gate = (HardConcreteGate(1, layer_gate_initial_drop)
                           if layer_gate_initial_drop is not None else None)

    def reset_kept_heads(self) -> None:
        """Refill the (unsaved) ``kept_heads`` buffer from :attr:`kept_head_indices`, on its current device."""
        if self.position_heads:
            self.kept_heads = torch.tensor(self.kept_head_indices, dtype=torch.long, device=self.q_proj.weight.device)

    def _position_mask(self, x: Tensor, position_bias: Tensor) -> Tensor:
        """(B, heads kept, T, T): the shared bias scaled per head and query frame by this layer's gate."""
        batch, frames, embed_dim = x.shape
        bias = position_bias.unsqueeze(0)  # (1, H, T, T)
        if self.gate_linear is not None:
            slices = x.view(batch, frames, self.position_heads, embed_dim // self.position_heads).transpose(1, 2)
            gates = torch.sigmoid(self.gate_linear(slices).view(batch, self.position_heads, frames, 2, 4).sum(-1))
            gate_a, gate_b = gates[..., :1], gates[..., 1:]
            bias = (gate_a * (gate_b * self.gate_const - 1.0) + 2.0) * bias
        return bias.index_select(1, self.kept_heads)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor],
                maps: Optional[AttentionMaps]) -> Tensor:
        """softmax(q·kᵀ/√d + mask)·v; explicitly (keeping the probabilities in ``maps``) when a later layer reuses
        them, else through the fused kernel."""
        dropout = self.dropout if self.training else 0.0
        if not self.provides_map:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        # Scaling q, not the (frames x frames) scores, saves a pass over the largest tensor (fairseq scales q too);
        # the scores are a fresh tensor, so the mask goes in in place.
        scores = torch.matmul(q * (self.head_dim ** -0.5), k.transpose(-1, -2))
        if attn_mask is not None:
            scores = scores.masked_fill_(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else scores.add_(attn_mask)
        probabilities = torch.softmax(scores, dim=-1)
        maps.probabilities = probabilities
        return torch.matmul(F.dropout(probabilities, dropout, self.training), v)

    def _attends_in_blocks(self, x: Tensor, position_bias: Optional[Tensor]) -> bool:
        """Whether this forward computes its explicit attention block by block (see ATTENTION_BLOCK_BYTES): CPU
        inference (eval mode, no autograd) of a layer that provides or reuses a map, when the whole batch's scores
        would exceed ATTENTION_BLOCKS_ABOVE_BYTES. Not on CUDA, where the whole-batch kernels are the fast ones."""
        if not (self.provides_map or self.reuses_map) or self.training or torch.is_grad_enabled() \
                or x.device.type != "cpu" or (position_bias is not None and self.position_heads):
            return False
        batch, frames, _ = x.shape
        # autocast runs the projections and products in its dtype, except for a float64 model
        autocast = torch.is_autocast_enabled("cpu") and x.dtype != torch.float64
        dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype
        return whole_batch_scores_bytes(batch, self.num_heads, frames, dtype) > ATTENTION_BLOCKS_ABOVE_BYTES

    def attend_in_blocks(self, x: Tensor, padding_mask: Optional[Tensor], maps: AttentionMaps,
                         block_bytes: int = ATTENTION_BLOCK_BYTES) -> Tensor:
        """The explicit attention (a map provided or reused) computed over :func:`attention_blocks`, each block's
        heads read from and written to the projections' own (batch, frames, heads x head_dim) layout: the same
        outputs as the whole-batch path (to float rounding), without any (batch, heads, frames, frames) tensor
        besides the providing layer's map itself.
        Returns (batch, frames, heads, head_dim)."""
        batch, frames, _ = x.shape
        shape = (frames, self.num_heads, self.head_dim)
        v = self.v_proj(x)
        out = v.new_empty(batch, *shape)

        def heads_first(t: Tensor, block: AttentionBlock, rows: slice = slice(None)) -> Tensor:
            return t[block.utterance].view(shape)[rows, block.heads].transpose(0, 1)  # (heads, rows, head_dim)

        def attend(block: AttentionBlock, weights: Tensor) -> None:
            # as (head_dim x keys) . (keys x rows), then into place: the head width as the product's rows rather
            # than its narrow (36-40) columns ran faster on CPU, with the same sums (identical outputs)
            product = torch.bmm(heads_first(v, block).transpose(1, 2), weights.to(v.dtype).transpose(1, 2))
            heads_first(out, block, block.rows).copy_(product.transpose(1, 2))

        def key_mask(block: AttentionBlock) -> Optional[Tensor]:
            return None if padding_mask is None else padding_mask[block.utterance]

        if self.reuses_map:
            probabilities = maps.whole((batch, self.num_heads, frames, frames))
            for block in attention_blocks(batch, self.num_heads, frames, probabilities.element_size(), block_bytes):
                attend(block, reused_attention_weights(probabilities[block.utterance, block.heads, block.rows],
                                                       key_mask(block)))
            return out
        q = self.q_proj(x) * (self.head_dim ** -0.5)
        k = self.k_proj(x)
        probabilities = maps.inference_buffer(q, self.num_heads)
        for block in attention_blocks(batch, self.num_heads, frames, q.element_size(), block_bytes):
            # scores, mask and softmax in place in the map's own block: a (heads, rows, frames) slice, contiguous
            scores = probabilities[block.utterance, block.heads, block.rows]
            torch.bmm(heads_first(q, block, block.rows), heads_first(k, block).transpose(1, 2), out=scores)
            mask = key_mask(block)
            if mask is not None:
                scores.masked_fill_(mask, float("-inf"))
            attend(block, softmax_rows_(scores))
        maps.probabilities = probabilities
        return out

    def forward(self, x: Tensor, padding_mask: Optional[Tensor], position_bias: Optional[Tensor] = None,
                maps: Optional[AttentionMaps] = None) -> Tensor:
        batch, frames, _ = x.shape
        if (self.provides_map or self.reuses_map) and maps is None:
            raise ValueError("this layer reuses an earlier layer's attention map, but none was passed"
                             if self.reuses_map else
                             "this layer's attention map is reused by a later layer: pass an AttentionMaps")
        if self._attends_in_blocks(x, position_bias):
            out = self.attend_in_blocks(x, padding_mask, maps, ATTENTION_BLOCK_BYTES)  # (B, T, heads, head_dim)
        else:
            out = self._attend_whole(x, padding_mask, position_bias, maps).transpose(1, 2)
        if self.head_gate is not None:
            out = out * self.head_gate()[None, None, :, None].to(out.dtype)
        out = self.out_proj(out.reshape(batch, frames, self.num_heads * self.head_dim))
        if self.layer_gate is not None:
            out = out * self.layer_gate().to(out.dtype)
        return out

    def _attend_whole(self, x: Tensor, padding_mask: Optional[Tensor], position_bias: Optional[Tensor],
                      maps: Optional[AttentionMaps]) -> Tensor:
        """The attention over the whole batch at once: (batch, heads, frames, head_dim)."""
        batch, frames, _ = x.shape

        def split_heads(t: Tensor) -> Tensor:
            return t.view(batch, frames, self.num_heads, self.head_dim).transpose(1, 2)

        v = split_heads(self.v_proj(x))
        if self.reuses_map:
            weights = reused_attention_weights(maps.whole((batch, self.num_heads, frames, frames)), padding_mask)
            return torch.matmul(weights.to(v.dtype), v)
        q, k = split_heads(self.q_proj(x)), split_heads(self.k_proj(x))
        attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
        if position_bias is not None and self.position_heads:
            bias = self._position_mask(x, position_bias).to(q.dtype)
            attn_mask = bias if attn_mask is None else bias.masked_fill(~attn_mask, float("-inf"))
        return self._attend(q, k, v, attn_mask, maps)
