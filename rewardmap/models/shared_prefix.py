"""Shared-prefix forward: a prompt and its n completions as one sequence, the prompt encoded once (Prefix Grouper).

A row is laid out [prompt (P) | completion 1 (C) | ... | completion n (C)]. `SharedPrefixMask` stands in for the
attention mask: handed to `F.scaled_dot_product_attention` (transformers' sdpa attention), it runs the prompt
causally and every completion over the prompt and itself only, so each completion sees exactly what it would see
after the prompt alone (arXiv 2506.05433). Being the layer's argument, it is there again when gradient
checkpointing recomputes the layer in backward; no model state is changed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rewardmap.errors import InputError


class SharedPrefixMask:
    """The attention mask of rows [prompt | group_size completions of `width` tokens]; only sdpa accepts it."""

    def __init__(self, prompt_mask: Tensor, group_size: int, width: int) -> None:
        """prompt_mask (b, P): 1 on the prompts' tokens (left padding is 0)."""
        rows, self.prompt_width = prompt_mask.shape
        real = prompt_mask.bool()
        causal = torch.ones(self.prompt_width, self.prompt_width, dtype=torch.bool, device=real.device).tril()
        # Unpadded prompts take sdpa's is_causal path (no mask); padded ones mask their padding keys.
        self.prompt = None if real.all() else (causal & real[:, None, :])[:, None]  # (b, 1, P, P)
        own = torch.ones(width, width, dtype=torch.bool, device=real.device).tril()
        blocks = torch.block_diag(*[own] * group_size)  # completion i sees its own earlier tokens only
        queries = group_size * width
        self.completions = torch.cat(
            [real[:, None, :].expand(rows, queries, -1), blocks.expand(rows, -1, -1)], dim=-1
        )[:, None]  # (b, 1, n*C, P + n*C)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """Runs F.scaled_dot_product_attention for a mask of this kind; refuses every other use."""
        if func is not F.scaled_dot_product_attention:
            raise TypeError(
                f"a shared-prefix attention mask only works in scaled_dot_product_attention, not in {func.__name__}: "
                "the model must use attn_implementation=sdpa"
            )
        return _shared_prefix_attention(*args, **(kwargs or {}))


def _shared_prefix_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: SharedPrefixMask,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """(b, H, P + n*C, d) attention output: prompt rows over the prompt, completion rows over prompt + own tokens."""
    width = attn_mask.prompt_width
    options = {"dropout_p": dropout_p, "scale": scale, "enable_gqa": enable_gqa}
    prompt = F.scaled_dot_product_attention(
        query[:, :, :width],
        key[:, :, :width],
        value[:, :, :width],
        attn_mask=attn_mask.prompt,
        is_causal=attn_mask.prompt is None,
        **options,
    )
    completions = F.scaled_dot_product_attention(
        query[:, :, width:], key, value, attn_mask=attn_mask.completions, **options
    )
    return torch.cat([prompt, completions], dim=2)


def micro_batches(rows: int, micro_batch_size: int, group_size: int = 1) -> list[slice]:
    """Slices over `rows` sequences: micro_batch_size at a time; with groups of group_size > 1 (each run as one
    sequence), the most whole groups that fit in micro_batch_size sequences, and at least one group."""
    size = group_size * max(1, micro_batch_size // group_size)
    return [slice(start, start + size) for start in range(0, rows, size)]


def shared_prefix_group(setting: str, model: torch.nn.Module, n: int) -> int:
    """Completions per forward sequence for model.shared_prefix `setting` with rollout.n = n: n when the prompt is
    shared (on; auto where supported), 1 otherwise. Raises InputError for `on` where sharing is not supported."""
    if setting == "off" or n == 1:
        return 1
    reason = _unsupported_reason(model)
    if reason is None:
        return n
    if setting == "on":
        raise InputError(f"model.shared_prefix=on is not supported: {reason}; set model.shared_prefix=auto or off")
    return 1


def _unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why the shared-prefix forward cannot run on `model` (a Qwen2.5-VL, possibly wrapped), or None when it can."""
    decoder = next((m for m in model.modules() if hasattr(m, "get_rope_index")), None)
    if decoder is None:
        return f"{type(model).__name__} has no Qwen2.5-VL module with get_rope_index"
    text = decoder.config.get_text_config()
    if text._attn_implementation != "sdpa":
        return (
            f"the model's attention is {text._attn_implementation!r} and the block mask needs sdpa "
            "(set model.attn_implementation=sdpa)"
        )
    if set(text.layer_types) != {"full_attention"}:
        return f"the model has {sorted(set(text.layer_types))} layers; only full-attention layers are supported"
    return None
