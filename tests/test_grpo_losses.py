"""GRPO math against hand-computed values, with equal-reward groups, masked padding and split invariance."""

import math

import pytest
import torch

from rewardmap.grpo.losses import (
    aggregate,
    clipped_policy_loss,
    group_advantages,
    kl_penalty,
    log_ratio,
    masked_mean,
    overlong_penalty,
    truncated_is_weights,
)


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 10.0, 10.0, 10.0, 10.0])
    adv = group_advantages(rewards, group_size=4, eps=0.0 + 1e-6)
    std = math.sqrt(((0.5**2) * 4) / 3)  # unbiased std of [1, 0, 0, 1]
    expected_first = torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-6)
    torch.testing.assert_close(adv[:4], expected_first)
    assert torch.equal(adv[4:], torch.zeros(4)), "a group of equal rewards has zero advantage"
    assert not torch.isnan(adv).any()


def test_group_advantages_reject_ragged_groups():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), group_size=4)


def test_kl_estimators_by_hand():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -2.0]])
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([[0.5, 0.0]]))
    torch.testing.assert_close(kl_penalty(logp, ref, "mse"), torch.tensor([[0.125, 0.0]]))
    k3 = math.exp(-0.5) + 0.5 - 1  # q/p - log(q/p) - 1 with log(q/p) = -0.5
    torch.testing.assert_close(kl_penalty(logp, ref, "low_var_kl"), torch.tensor([[k3, 0.0]]))
    assert kl_penalty(torch.tensor([[0.0]]), torch.tensor([[50.0]]), "low_var_kl").item() == 10.0, "clamped"
    with pytest.raises(ValueError, match="unknown KL estimator 'k9'"):
        kl_penalty(logp, ref, "k9")


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.0, 1.5, 0.5]]))  # ratios 1.0, 1.5, 0.5
    loss, clipped = clipped_policy_loss(logp, old, torch.tensor([2.0]), 0.2, 0.2)
    # positive advantage: ratio 1.5 is clipped to 1.2, ratio 0.5 keeps the (worse) unclipped value
    torch.testing.assert_close(loss, torch.tensor([[-2.0, -2.4, -1.0]]))
    assert clipped.tolist() == [[0.0, 1.0, 0.0]]
    loss_neg, clipped_neg = clipped_policy_loss(logp, old, torch.tensor([-1.0]), 0.2, 0.3)
    torch.testing.assert_close(loss_neg, torch.tensor([[1.0, 1.5, 0.8]]))
    assert clipped_neg.tolist() == [[0.0, 0.0, 1.0]]


def test_zero_advantage_zero_kl_gives_zero_loss():
    logp = torch.randn(4, 5)
    loss, _ = clipped_policy_loss(logp, logp.detach(), torch.zeros(4), 0.2, 0.2)
    kl = kl_penalty(logp, logp.detach())
    assert torch.count_nonzero(loss) == 0 and torch.count_nonzero(kl) == 0


def test_masked_padding_is_ignored():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert aggregate(values, mask, "token-mean", normalizer=3).item() == pytest.approx(2.0)
    assert aggregate(values, mask, "seq-mean-token-mean", normalizer=2).item() == pytest.approx((1.5 + 3.0) / 2)
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_aggregation_is_invariant_to_the_micro_batch_split(mode):
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(6, 7, generator=generator)
    mask = (torch.rand(6, 7, generator=generator) > 0.3).long()
    mask[:, 0] = 1
    normalizer = mask.sum().item() if mode == "token-mean" else 6
    whole = aggregate(values, mask, mode, normalizer)
    for size in (1, 2, 3):
        parts = sum(aggregate(values[i : i + size], mask[i : i + size], mode, normalizer) for i in range(0, 6, size))
        torch.testing.assert_close(parts, whole)


def test_dr_grpo_advantages_skip_the_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(group_advantages(rewards, 4, std_norm=False), torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert group_advantages(rewards, 4)[0] > 1.0, "the std-normalised advantage is larger for a rare success"


def test_dr_grpo_normaliser_is_a_constant():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # sum over tokens / (2 sequences x a response limit of 4 tokens), whatever the answers' lengths
    assert aggregate(values, mask, "seq-mean-token-sum-norm", normalizer=2 * 4).item() == pytest.approx(6.0 / 8)
    with pytest.raises(ValueError, match="seq-mean-token-sum-norm"):
        aggregate(values, mask, "token-sum", normalizer=1)


def test_sequence_level_ratio_by_hand():
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.3, -0.1, 5.0], [0.2, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    ratio = torch.exp(log_ratio(logp, old, mask, "sequence"))
    # every token carries its sequence's exp(mean log-ratio) over real tokens: exp(0.1) and exp(0.2 / 3)
    expected = torch.tensor([[math.exp(0.1)] * 3, [math.exp(0.2 / 3)] * 3])
    torch.testing.assert_close(ratio.detach(), expected)
    # ... while each token's gradient is that of its own log-prob, scaled by the sequence ratio (GSPO-token)
    (ratio * mask).sum().backward()
    torch.testing.assert_close(logp.grad, expected * mask)
    loss, clipped = clipped_policy_loss(logp, old, torch.tensor([1.0, 1.0]), 3e-4, 4e-4, mask=mask, level="sequence")
    assert clipped[0].tolist() == [1.0, 1.0, 1.0], "GSPO clips whole sequences"
    torch.testing.assert_close(loss[0].detach(), torch.full((3,), -(1 + 4e-4)))
    with pytest.raises(ValueError, match="unknown importance level 'word'"):
        log_ratio(logp, old, mask, "word")


def test_token_ratio_with_clip_higher_by_hand():
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.25, 1.35]]))
    loss, clipped = clipped_policy_loss(logp, old, torch.tensor([1.0]), 0.2, 0.28)  # DAPO's clip-higher
    torch.testing.assert_close(loss, torch.tensor([[-1.25, -1.28]]))
    assert clipped.tolist() == [[0.0, 1.0]], "1.25 is inside [0.8, 1.28]: clip-higher lets it through"


def test_truncated_importance_weights_by_hand():
    old = torch.log(torch.tensor([[0.5, 0.9, 0.1]]))
    rollout = torch.log(torch.tensor([[0.25, 0.9, 0.01]]))
    weights = truncated_is_weights(old.requires_grad_(), rollout, cap=2.0)
    torch.testing.assert_close(weights, torch.tensor([[2.0, 1.0, 2.0]]))  # 2.0, 1.0 and 10 capped at 2
    assert not weights.requires_grad
    torch.testing.assert_close(truncated_is_weights(old, rollout, cap=20.0), torch.tensor([[2.0, 1.0, 10.0]]))


def test_overlong_penalty_by_hand():
    lengths = torch.tensor([10, 12, 14, 16, 20])
    # max 16 tokens, buffer 4: free up to 12, then -0.5 per token to -2.0 at 16 (and no further)
    torch.testing.assert_close(overlong_penalty(lengths, 16, 4, 2.0), torch.tensor([0.0, 0.0, -1.0, -2.0, -2.0]))
    assert torch.count_nonzero(overlong_penalty(lengths, 16, 0, 2.0)) == 0, "buffer 0 is off"


@pytest.mark.parametrize("std_norm", [True, False])
def test_equal_weighted_rewards_give_exactly_zero_advantage(std_norm):
    # Every reward the difficulty-aware reward can give a group whose answers all score the same: (10 correct +
    # 0.5 detail) x each weight, the planning transfer bonus included. In fp32 a group of equal 1.2 x 10.5 rewards
    # got a mean off in the last bit, and the std division turned that into advantages up to 0.95.
    weights = [1.0, 1.2, 1.5, 1.7, 2.0]
    values = {w * (10 * c + 0.5 * d) for w in weights for c in (0, 1) for d in range(0, 9)}
    for n in range(2, 17):
        rewards = torch.tensor([v for v in sorted(values) for _ in range(n)], dtype=torch.float32)
        adv = group_advantages(rewards, group_size=n, std_norm=std_norm)
        assert torch.equal(adv, torch.zeros_like(adv)), f"n={n}: {adv.abs().max().item()}"


def test_advantages_of_unequal_groups_keep_their_values():
    rewards = torch.tensor([12.6, 12.6, 0.0, 12.6, 15.75, 0.0, 0.0, 0.0])
    adv = group_advantages(rewards, group_size=4)
    groups = rewards.double().view(2, 4)
    expected = (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-6)
    torch.testing.assert_close(adv, expected.float().view(-1), rtol=0, atol=1e-7)
    assert adv.dtype == torch.float32 and adv.abs().sum() > 1


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_far_off_token_ratio_gives_finite_loss_and_gradients(level):
    # log p - log p_old = 100: exp overflows fp32 unless the log-ratio is clamped as the KL's is.
    logprobs = torch.tensor([[-0.1, -1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-100.1, -1.0, -2.0]])
    mask = torch.ones(1, 3)
    for advantage in (1.0, -1.0):
        loss, _ = clipped_policy_loss(logprobs, old, torch.tensor([advantage]), 0.2, 0.2, mask=mask, level=level)
        (grad,) = torch.autograd.grad(aggregate(loss, mask, "token-mean", 3.0), logprobs)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all(), (advantage, loss, grad)
