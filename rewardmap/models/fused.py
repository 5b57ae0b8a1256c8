"""Fused lm_head + log-softmax + entropy over vocabulary chunks, with a hand-written backward.

GRPO needs, per completion token, log p(token) and the entropy H of the next-token distribution, both
differentiable. Autograd over `log_softmax` and `softmax * logits` keeps several (N, V) tensors (V = 151,936 for
Qwen) and walks them again in backward. Here the logits of a chunk of tokens are computed, reduced to two numbers per
token and dropped; backward recomputes them once. With z = h W^T / T, p = softmax(z), lse = logsumexp(z):
    d log p_t / dz = onehot(t) - p        dH / dz = -p * (z - lse + H)       (H = lse - sum_v p_v z_v)
The idea is that of "fused linear cross-entropy" kernels (e.g. Liger-Kernel), written here for (log p, H).
"""

from __future__ import annotations

import torch

CHUNK_TOKENS = 256


def _at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits are reduced in fp32; fp32 and fp64 stay as they are."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _chunk_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float):
    """For a chunk: z (n, V) in fp32, e = exp(z - max z) (n, V) and its sums (n, 1), so that p = e / sums; logsumexp,
    log p(target) and entropy (n,). One exp per logit, and no (n, V) tensor beyond z and e."""
    z = _at_least_fp32(hidden @ weight.t())
    if temperature != 1.0:
        z.div_(temperature)
    peak = z.amax(-1, keepdim=True)
    e = torch.sub(z, peak).exp_()
    sums = e.sum(-1, keepdim=True)
    lse = (peak + sums.log()).squeeze(-1)
    logp = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    entropy = lse - torch.linalg.vecdot(e, z) / sums.squeeze(-1)
    return z, e, sums, lse, logp, entropy


class _LinearLogprobEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature):
        logps, entropies = [], []
        for start in range(0, hidden.shape[0], CHUNK_TOKENS):
            part = slice(start, start + CHUNK_TOKENS)
            *_, logp, entropy = _chunk_stats(hidden[part], weight, targets[part], temperature)
            logps.append(logp)
            entropies.append(entropy)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature = temperature
        if not logps:  # no token to score (every answer of a micro-batch masked out)
            return _at_least_fp32(hidden.new_zeros(0)), _at_least_fp32(hidden.new_zeros(0))
        return torch.cat(logps), torch.cat(entropies)

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = _at_least_fp32(torch.zeros_like(weight)) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], CHUNK_TOKENS):
            part = slice(start, start + CHUNK_TOKENS)
            z, e, sums, lse, _, entropy = _chunk_stats(hidden[part], weight, targets[part], ctx.temperature)
            # grad_z = p * (-g_H * (z - lse + H) - g_logp) + g_logp * onehot(target) with p = e / sums: per row an
            # affine function of z times e, built in place in z.
            g_logp, g_entropy = grad_logp[part].unsqueeze(-1), grad_entropy[part].unsqueeze(-1)
            shift = g_entropy * (lse - entropy).unsqueeze(-1) - g_logp
            z.mul_(-g_entropy / sums).add_(shift / sums).mul_(e)
            z.scatter_add_(-1, targets[part].unsqueeze(-1), g_logp)
            if ctx.temperature != 1.0:
                z.div_(ctx.temperature)
            grad_z = z.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[part] = grad_z @ weight
            if grad_weight is not None:
                grad_weight.addmm_(grad_z.t().to(grad_weight.dtype), hidden[part].to(grad_weight.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def linear_logprob_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, d) hidden states, (V, d) lm_head weight, (N,) target ids -> (N,) log p(target), (N,) entropy.

    Both outputs are differentiable w.r.t. hidden and weight; the (N, V) logits are never kept.
    """
    return _LinearLogprobEntropy.apply(hidden, weight, targets, temperature)


@torch.no_grad()
def linear_logprob(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log p(target) only, without gradient (the reference pass), chunked the same way."""
    parts = []
    for start in range(0, hidden.shape[0], CHUNK_TOKENS):
        z = _at_least_fp32(hidden[start : start + CHUNK_TOKENS] @ weight.t())
        if temperature != 1.0:
            z.div_(temperature)
        target = targets[start : start + CHUNK_TOKENS]
        parts.append(z.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1))
    return torch.cat(parts) if parts else _at_least_fp32(hidden.new_zeros(0))
