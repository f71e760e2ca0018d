"""Self-attention of the encoder layers: ``scaled_dot_product_attention`` with prunable heads, WavLM's gated
relative position bias, and ARMHuBERT's attention-map reuse."""

from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import RelativePositionConfig
from .gates import HardConcreteGate


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
    last layer that computed a map to the layers after it that reuse it (``EncoderConfig.attention_reuse``)."""

    def __init__(self) -> None:
        self.probabilities: Optional[Tensor] = None


def reused_attention_weights(probabilities: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
    """The weights a reusing layer attends with: the earlier layer's probabilities, used as logits of a second
    softmax over the valid keys (ARMHuBERT's official layer does this; its released weights were trained so)."""
    logits = probabilities
    if padding_mask is not None:
        logits = logits.masked_fill(padding_mask[:, None, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``. The head count and width may be pruned
    (at least one head: a layer without heads has no attention module at all, see ``encoder.EncoderLayer``); optional
    WavLM gated relative position bias, and hard-concrete gates on the heads and on the whole block for pruning.

    Attention-map reuse: ``reuses_map`` makes a layer without query/key projections that attends with the map an
    earlier layer left in :class:`AttentionMaps`; ``provides_map`` makes a layer compute its attention explicitly
    (not through the fused kernel) and leave its probabilities there."""

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
        if maps is None:
            raise ValueError("this layer's attention map is reused by a later layer: pass an AttentionMaps")
        # Scaling q, not the (frames x frames) scores, saves a pass over the largest tensor (fairseq scales q too);
        # the scores are a fresh tensor, so the mask goes in in place.
        scores = torch.matmul(q * (self.head_dim ** -0.5), k.transpose(-1, -2))
        if attn_mask is not None:
            scores = scores.masked_fill_(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else scores.add_(attn_mask)
        probabilities = torch.softmax(scores, dim=-1)
        maps.probabilities = probabilities
        return torch.matmul(F.dropout(probabilities, dropout, self.training), v)

    def forward(self, x: Tensor, padding_mask: Optional[Tensor], position_bias: Optional[Tensor] = None,
                maps: Optional[AttentionMaps] = None) -> Tensor:
        batch, frames, _ = x.shape

        def split_heads(t: Tensor) -> Tensor:
            return t.view(batch, frames, self.num_heads, self.head_dim).transpose(1, 2)

        v = split_heads(self.v_proj(x))
        if self.reuses_map:
            if maps is None or maps.probabilities is None:
                raise ValueError("this layer reuses an earlier layer's attention map, but none was passed")
            out = torch.matmul(reused_attention_weights(maps.probabilities, padding_mask).to(v.dtype), v)
        else:
            q, k = split_heads(self.q_proj(x)), split_heads(self.k_proj(x))
            attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
            if position_bias is not None and self.position_heads:
                bias = self._position_mask(x, position_bias).to(q.dtype)
                attn_mask = bias if attn_mask is None else bias.masked_fill(~attn_mask, float("-inf"))
            out = self._attend(q, k, v, attn_mask, maps)
        if self.head_gate is not None:
            out = out * self.head_gate()[None, :, None, None].to(out.dtype)
        out = out.transpose(1, 2).reshape(batch, frames, self.num_heads * self.head_dim)
        out = self.out_proj(out)
        if self.layer_gate is not None:
            out = out * self.layer_gate().to(out.dtype)
        return out
