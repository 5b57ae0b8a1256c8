"""GRPO math as pure tensor functions: group advantages, clipped policy loss, KL estimators, loss aggregation,
and the options of the GRPO variants (Dr.GRPO, GSPO, DAPO's overlong penalty, truncated rollout importance weights).

Shapes: B = sequences in the (micro-)batch (prompts x rollouts), T = completion tokens; `mask` is 1 on real tokens.
Formulas follow the GRPO paper (https://arxiv.org/abs/2402.03300) and verl's `core_algos.py` (the released stack);
each variant names its paper.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6, std_norm: bool = True) -> torch.Tensor:
    """(B,) rewards, consecutive groups of `group_size` rollouts of one prompt -> (B,) fp32 (r - mean) / (std + eps).

    std is the unbiased sample std, as released. The statistics are taken in fp64, and a group whose rewards are all
    equal gets exactly zero advantage: in fp32 the mean of equal weighted rewards (x 1.2, x 1.5) can be off in its last
    bit, which dividing by a std of ~1e-7 + eps would blow up to advantages near 1. With `std_norm=False` the advantage
    is r - mean (Dr.GRPO, https://arxiv.org/abs/2503.20783: the std division up-weights groups that are almost all
    right or all wrong).
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    groups = rewards.double().view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if std_norm and group_size > 1:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    equal = groups.amax(dim=1, keepdim=True) == groups.amin(dim=1, keepdim=True)
    return centred.masked_fill(equal, 0.0).float().view(-1)


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


def log_ratio(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor, level: str = "token"
) -> torch.Tensor:
    """(B, T) log importance ratio of the current policy to the old one, per token or per sequence.

    token: log p - log p_old. sequence (GSPO, https://arxiv.org/abs/2507.18071): every token of a sequence carries
    the sequence's length-normalised log-ratio mean_t(log p - log p_old) as its value, while its gradient is that of
    its own log p (GSPO-token's sg[s_i] * p / sg[p]); the mean is clamped at 10 before `exp`, as verl does.
    """
    token = logprobs - old_logprobs
    if level == "token":
        return token
    if level == "sequence":
        mean = (masked_sum_per_row(token, mask) / mask.sum(-1).clamp(min=1)).clamp(max=10.0)
        return mean.detach().unsqueeze(-1) + logprobs - logprobs.detach()
    raise ValueError(f"unknown importance level {level!r}: use token or sequence")


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_ratio_low: float,
    clip_ratio_high: float,
    *,
    mask: torch.Tensor | None = None,
    level: str = "token",
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token: (B, T) log-probs, (B,) advantages -> ((B, T) loss, (B, T) clipped flags).

    The ratio is per token, or per sequence (`level="sequence"`, GSPO; needs `mask`); clip_ratio_high above
    clip_ratio_low is DAPO's clip-higher (https://arxiv.org/abs/2503.14476). Its log is clamped to [-20, 20] before
    `exp`, as the KL's is: one far-off token would otherwise overflow to inf (exp(89) in fp32) and turn the loss and
    the gradients into NaN even where the clip holds the ratio (e^20 is already far outside any clip range).
    """
    log_ratios = log_ratio(logprobs, old_logprobs, mask if mask is not None else torch.ones_like(logprobs), level)
    ratio = torch.exp(log_ratios.clamp(min=-20.0, max=20.0))
    adv = advantages.unsqueeze(-1)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def truncated_is_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """(B, T) truncated importance weights min(p_old / p_rollout, cap), no gradient.

    They correct for the rollout engine sampling from a slightly different distribution than the trainer's model
    (another kernel, bf16 on GPU): "truncated importance sampling", https://fengyao.notion.site/off-policy-rl.
    """
    return torch.exp(old_logprobs.detach() - rollout_logprobs).clamp(max=cap)


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float) -> torch.Tensor:
    """(B,) DAPO's soft overlong penalty: 0 up to max_length - buffer tokens, then falling linearly to -factor at
    max_length (https://arxiv.org/abs/2503.14476); buffer 0 turns it off."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    over = (lengths.float() - (max_length - buffer)).clamp(min=0.0, max=float(buffer))
    return -factor * over / buffer


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, normalizer: float) -> torch.Tensor:
    """Reduce (B, T) per-token values of one micro-batch to a scalar share of the step's loss.

    token-mean: sum over tokens / `normalizer` = the update's total token count, so the sum over micro-batches is the
    mean over every token of the update, whatever the split. seq-mean-token-mean: each sequence's token mean, summed,
    / `normalizer` = the update's sequence count. seq-mean-token-sum-norm (Dr.GRPO): sum over tokens / `normalizer` =
    sequences x the response length limit, a constant that favours neither short nor long answers.
    """
    mask = mask.to(values.dtype)
    if mode in ("token-mean", "seq-mean-token-sum-norm"):
        return (values * mask).sum() / normalizer
    if mode == "seq-mean-token-mean":
        per_sequence = masked_sum_per_row(values, mask) / mask.sum(-1).clamp(min=1.0)
        return per_sequence.sum() / normalizer
    raise ValueError(
        f"unknown loss aggregation {mode!r}: use token-mean, seq-mean-token-mean or seq-mean-token-sum-norm"
    )


def masked_sum_per_row(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) sum of each row's (B, T) values where mask is 1."""
    return (values * mask.to(values.dtype)).sum(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, T) values over the positions where mask is 1 (0 for an empty mask)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)
