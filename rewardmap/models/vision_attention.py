"""Qwen2.5-VL vision attention with windows batched: one sdpa call per window length instead of one per window.

transformers' sdpa and eager paths split the packed patches at `cu_seqlens` and call attention once per segment in a
Python loop: a 12.8M-pixel map has ~1,000 windows of 64 patches, so ~1,000 tiny calls per block on a GPU. Segments of
equal length are independent attentions of the same shape, so here the tokens are reordered to put equal-length
segments together and each length runs as one `F.scaled_dot_product_attention` over a batch of stacked segments:

- exact: the same kernel on the same numbers (on CPU bitwise equal to the loop; the tests hold it to 1e-5);
- no mask, so on CUDA sdpa can pick its flash kernel (a padded batch needs a key-padding mask, which rules it out);
- few calls: windows are 64 patches except at an image's right and bottom edges, so an image has at most 4 lengths
  and any batch at most 9 (4 x 4 merged tokens cut to 1-4 by 1-4); a full-attention block has one per image size.

Measured on the CPU (2 threads, fp32, 16 heads of 80; a 1M-pixel map's window attention alone, 5,016 patches in 90
windows, forward + backward, wall time on a quiet machine): the loop 2.13 s, this 0.81 s, a padded batch with a
key-padding mask 1.13 s (and 8e-7 off), nested jagged tensors 20 s (no jagged CPU kernel: sdpa falls back to math).
With one thread a call costs little and the two are about even (the reordering copies cost what the calls save); on
a GPU each call is a kernel launch. `benchmarks/vision_attention_bench.py` measures whole vision towers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLVisionAttention,
    apply_rotary_pos_emb_vision,
)


class WindowBatchedVisionAttention(Qwen2_5_VLVisionAttention):
    """Qwen2.5-VL vision attention (same parameters) whose equal-length segments run as one sdpa call each."""

    def forward(
        self,
        hidden_states: Tensor,
        cu_seqlens: Tensor,
        position_embeddings: tuple[Tensor, Tensor] | None = None,
        max_seqlen: int | None = None,
        **kwargs,
    ) -> Tensor:
        """hidden_states (N, dim): the packed patches, segments back to back with boundaries cu_seqlens (S + 1,);
        position_embeddings: rotary (cos, sin), each (N, head_dim). Returns (N, dim). The block also passes
        max_seqlen and transformers' keyword arguments, which only the flash-attention path reads."""
        del max_seqlen, kwargs
        tokens = hidden_states.shape[0]
        qkv = self.qkv(hidden_states).reshape(tokens, 3, self.num_heads, -1).permute(1, 0, 2, 3)
        query, key, value = qkv.unbind(0)  # (N, heads, head_dim) each
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
        dropout = self.attention_dropout if self.training else 0.0
        output = segment_attention(query, key, value, cu_seqlens, scale=self.scaling, dropout=dropout)
        return self.proj(output.reshape(tokens, -1))


def segment_attention(
    query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor, *, scale: float, dropout: float = 0.0
) -> Tensor:
    """Attention within each segment: query/key/value (N, heads, head_dim), segments back to back with boundaries
    cu_seqlens (S + 1,). One sdpa call per segment length (more only past the CUDA kernels' size limits).
    Returns (N, heads, head_dim)."""
    tokens, heads, head_dim = query.shape
    order, calls = _segment_plan(cu_seqlens, heads, head_dim)
    if order is not None:  # equal-length segments made adjacent
        order = order.to(query.device)
        query, key, value = (t.index_select(0, order) for t in (query, key, value))
    outputs, start = [], 0
    for length, count in calls:
        part = slice(start, start + count * length)
        q, k, v = (t[part].view(count, length, heads, head_dim).transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scale)  # (count, heads, length, hd)
        outputs.append(out.transpose(1, 2).reshape(count * length, heads, head_dim))
        start += count * length
    output = torch.cat(outputs) if len(outputs) > 1 else outputs[0]  # (N, heads, head_dim)
    if order is not None:  # back to the input's order
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(tokens, device=order.device)
        output = output.index_select(0, inverse)
    return output


def _segment_plan(cu_seqlens: Tensor, heads: int, head_dim: int) -> tuple[Tensor | None, list[tuple[int, int]]]:
    """The token order (N,) that puts segments of equal length together, shortest first (None when they already
    are), and the sdpa calls in that order as (segment length, segments in the call)."""
    cu_seqlens = cu_seqlens.cpu().long()  # one device sync, as in transformers' loop
    lengths = torch.diff(cu_seqlens)  # (S,)
    sizes, counts = torch.unique(lengths, return_counts=True)  # ascending
    calls = []
    for length, count in zip(sizes.tolist(), counts.tolist(), strict=True):
        if length == 0:
            continue
        most = _max_segments_per_call(length, heads, head_dim)
        calls += [(length, min(most, count - done)) for done in range(0, count, most)]
    if bool((lengths[1:] >= lengths[:-1]).all()):
        return None, calls
    by_length = torch.argsort(lengths, stable=True)  # (S,): segments, shortest first
    moved = lengths[by_length]
    shift = cu_seqlens[:-1][by_length] - (torch.cumsum(moved, 0) - moved)  # input start - output start, per segment
    return torch.arange(int(cu_seqlens[-1])) + torch.repeat_interleave(shift, moved), calls


def _max_segments_per_call(length: int, heads: int, head_dim: int) -> int:
    """How many segments one sdpa call may batch. CUDA's flash and memory-efficient kernels take a batch below 2^16
    (pytorch/pytorch#146704), and flash's backward indexes batch x heads x round_up(length, 128) x round_up(head_dim,
    32) elements with 32-bit integers (PriorLabs/TabPFN#1184); a margin of 2 is kept below 2^31."""
    per_segment = heads * -(-length // 128) * 128 * -(-head_dim // 32) * 32
    return max(1, min(2**16 - 1, 2**30 // per_segment))


def batch_vision_windows(model: torch.nn.Module) -> int:
    """Makes every Qwen2.5-VL vision attention module of `model` run its windows in one sdpa call per window length;
    returns how many modules it changed.

    Each module's class is switched to `WindowBatchedVisionAttention`: parameters, state_dict and hooks stay as they
    are, so it can run before or after FSDP2's `fully_shard` of the blocks, under peft and gradient checkpointing.
    Modules already switched are left alone (a second call returns 0).
    """
    changed = 0
    for name, module in model.named_modules():
        if not isinstance(module, Qwen2_5_VLVisionAttention) or isinstance(module, WindowBatchedVisionAttention):
            continue
        attention = module.config._attn_implementation
        if attention != "sdpa":
            raise ValueError(
                f"{name} uses attn_implementation {attention!r}; batch_vision_windows replaces the sdpa path only: "
                "load the vision part with sdpa, or leave its attention as it is (flash_attention_2 is varlen already)"
            )
        if type(module) is not Qwen2_5_VLVisionAttention:
            raise ValueError(
                f"{name} is a {type(module).__name__}, not a plain Qwen2_5_VLVisionAttention: call "
                "batch_vision_windows before wrapping the attention module itself (FSDP2 shards blocks, not these)"
            )
        module.__class__ = WindowBatchedVisionAttention
        changed += 1
    return changed
