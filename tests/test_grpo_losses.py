"""GRPO math against hand-computed values, with equal-reward groups, masked padding and split invariance."""

import math

import pytest
import torch

from rewardmap.grpo.losses import aggregate, clipped_policy_loss, group_advantages, kl_penalty, masked_mean


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
