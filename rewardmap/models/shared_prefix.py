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
from torch.nn.attention.bias import causal_lower_right
from transformers import PretrainedConfig

from rewardmap.errors import InputError


class SharedPrefixMask:
    """The attention mask of rows [prompt | group_size completions of `width` tokens]; only sdpa accepts it."""

    def __init__(self, prompt_mask: Tensor, group_size: int, width: int, kv_groups: int = 1) -> None:
        """prompt_mask (b, P): 1 on the prompts' tokens (left padding is 0); kv_groups: query heads per kv head."""
        rows, self.prompt_width = prompt_mask.shape
        self.group_size, self.width, self.kv_groups = group_size, width, kv_groups
        real = prompt_mask.bool()
        self.padded = not real.all()
        if self.padded:  # the padding keys are masked, in the prompt's rows and in the completions'
            causal = torch.ones(self.prompt_width, self.prompt_width, dtype=torch.bool, device=real.device).tril()
            own = torch.ones(width, width, dtype=torch.bool, device=real.device).tril()
            self.prompt = (causal & real[:, None, :])[:, None]  # (b, 1, P, P)
            self.completions = torch.cat([real[:, None, :].expand(rows, width, -1), own.expand(rows, -1, -1)], -1)
            self.completions = self.completions[:, None]  # (b, 1, C, P + C)
        else:  # the prompt runs causally, a completion sees all of it and its own earlier tokens: lower-right causal
            self.prompt = None
            self.completions = causal_lower_right(width, self.prompt_width + width)

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
    """(b, H, P + n*C, d) attention output: prompt rows over the prompt; each completion's rows, as a head of their
    own, over the prompt's keys and the completion's own (no key of another completion is visited)."""
    mask, heads = attn_mask, query.shape[1]
    prompt_width, n = mask.prompt_width, mask.group_size
    if not mask.padded and mask.kv_groups > 1 and key.shape[1] == heads:
        # transformers repeats the key/value heads whenever there is a mask; without a tensor mask the kernels
        # take them grouped, so each completion's copy of the prompt's keys below is kv_groups times smaller
        key, value = key[:, :: mask.kv_groups], value[:, :: mask.kv_groups]
    options = {"dropout_p": dropout_p, "scale": scale, "enable_gqa": key.shape[1] != heads}
    # sdpa keeps its inputs for backward: copies of the prompt's keys and values, not views, so that the (repeated)
    # key/value tensors of the whole sequence are freed after the layer's forward
    prompt = F.scaled_dot_product_attention(
        query[:, :, :prompt_width],
        key[:, :, :prompt_width].contiguous(),
        value[:, :, :prompt_width].contiguous(),
        attn_mask=mask.prompt,
        is_causal=mask.prompt is None,
        **options,
    )
    queries = query[:, :, prompt_width:].unflatten(2, (n, mask.width)).transpose(1, 2).flatten(1, 2)  # (b, n*H, C, d)
    own_key, own_value = _per_completion(key, prompt_width, n), _per_completion(value, prompt_width, n)
    completions = F.scaled_dot_product_attention(queries, own_key, own_value, attn_mask=mask.completions, **options)
    completions = completions.unflatten(1, (n, heads)).transpose(1, 2).flatten(2, 3)  # (b, H, n*C, d)
    return torch.cat([prompt, completions], dim=2)


def _per_completion(states: Tensor, prompt_width: int, n: int) -> Tensor:
    """(b, h, P + n*C, d) keys or values -> (b, n*h, P + C, d): for each completion, the prompt's then its own."""
    rows, heads, _, dim = states.shape
    prompt = states[:, None, :, :prompt_width].expand(rows, n, heads, prompt_width, dim)
    own = states[:, :, prompt_width:].unflatten(2, (n, -1)).transpose(1, 2)
    return torch.cat([prompt, own], dim=3).flatten(1, 2)


def micro_batches(rows: int, micro_batch_size: int, group_size: int = 1) -> list[slice]:
    """Slices over `rows` sequences: micro_batch_size at a time; with groups of group_size > 1 (each run as one
    sequence), the most whole groups that fit in micro_batch_size sequences, and at least one group."""
    size = group_size * max(1, micro_batch_size // group_size)
    return [slice(start, start + size) for start in range(0, rows, size)]


def shared_prefix_group(setting: str, text_config: PretrainedConfig, n: int) -> int:
    """Completions per forward sequence for model.shared_prefix `setting` with rollout.n = n, for a language model
    of `text_config` (its attention implementation set): n when the prompt is shared (on; auto where supported), 1
    otherwise. Raises InputError for `on` where sharing is not supported."""
    if setting == "off" or n == 1:
        return 1
    reason = _unsupported_reason(text_config)
    if reason is None:
        return n
    if setting == "on":
        raise InputError(f"model.shared_prefix=on is not supported: {reason}; set model.shared_prefix=auto or off")
    return 1


def _unsupported_reason(text_config: PretrainedConfig) -> str | None:
    """Why the shared-prefix forward cannot run on a language model of `text_config`, or None when it can."""
    if text_config._attn_implementation != "sdpa":
        return (
            f"the language model's attention is {text_config._attn_implementation!r} and the block mask needs sdpa "
            "(set model.attn_implementation={text: sdpa} or sdpa)"
        )
    if set(text_config.layer_types) != {"full_attention"}:
        return f"the model has {sorted(set(text_config.layer_types))} layers; only full-attention layers are supported"
    return None
