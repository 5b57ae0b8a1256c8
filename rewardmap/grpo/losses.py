"""GRPO math as pure tensor functions: group advantages, clipped policy loss, KL estimators, loss aggregation.

Shapes: B = sequences in the (micro-)batch (prompts x rollouts), T = completion tokens; `mask` is 1 on real tokens.
Formulas follow the GRPO paper (https://arxiv.org/abs/2402.03300) and verl's `core_algos.py` (the released stack).
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """(B,) rewards, consecutive groups of `group_size` rollouts of one prompt -> (B,) (r - mean) / (std + eps).

    std is the unbiased sample std, as released; a group whose rewards are all equal gets zero advantage.
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    groups = rewards.float().view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    return ((groups - mean) / (std + eps)).view(-1)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "low_var_kl") -> torch.Tensor:
    """(B, T) per-token KL(policy || reference) estimate from sampled tokens' log-probs.

    k1 = log p - log q; mse (k2) = (log p - log q)^2 / 2; low_var_kl (k3) = q/p - log(q/p) - 1, clamped to [-10, 10]
    as released (http://joschu.net/blog/kl-approx.html). Its log-ratio is clamped to [-20, 20] before `exp`, as verl
    does, so one far-off token cannot overflow to inf and turn the gradients into NaN.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "mse":
        return 0.5 * log_ratio.square()
    if estimator == "low_var_kl":
        ref_over_policy = torch.clamp(-log_ratio, min=-20.0, max=20.0)
        return torch.clamp(ref_over_policy.exp() - ref_over_policy - 1, min=-10.0, max=10.0)
    raise ValueError(f"unknown KL estimator {estimator!r}: use low_var_kl, k1 or mse")


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_ratio_low: float,
    clip_ratio_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token: (B, T) log-probs, (B,) advantages -> ((B, T) loss, (B, T) clipped flags)."""
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.unsqueeze(-1)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, normalizer: float) -> torch.Tensor:
    """Reduce (B, T) per-token values of one micro-batch to a scalar share of the step's loss.

    token-mean: sum over tokens / `normalizer` = the step's total token count, so the sum over micro-batches is the
    mean over every token of the step, whatever the split. seq-mean-token-mean: each sequence's token mean, summed,
    / `normalizer` = the step's sequence count.
    """
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        return (values * mask).sum() / normalizer
    if mode == "seq-mean-token-mean":
        per_sequence = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_sequence.sum() / normalizer
    raise ValueError(f"unknown loss aggregation {mode!r}: use token-mean or seq-mean-token-mean")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, T) values over the positions where mask is 1 (0 for an empty mask)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)
