"""Data plumbing of a GRPO step: groups of rollouts, their split into mini-batches and ranks, padded tensors."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from rewardmap.config import TrainerConfig
from rewardmap.distributed import World
from rewardmap.grpo.balance import (
    balanced_shares,
    contiguous_shares,
    lockstep_over_mean,
    max_over_mean,
    padded_tokens,
    token_micro_batches,
)
from rewardmap.models.shared_prefix import micro_batches
from rewardmap.reward import RewardBreakdown
from rewardmap.rollout import Completion


def completion_tensors(completions: Sequence[Completion], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded completion ids (N, C) and their mask (N, C); C is the longest completion (at least 1)."""
    width = max([len(c.token_ids) for c in completions] + [1])
    ids = torch.full((len(completions), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(completions), width), dtype=torch.long)
    for row, completion in enumerate(completions):
        ids[row, : len(completion.token_ids)] = torch.tensor(completion.token_ids, dtype=torch.long)
        mask[row, : len(completion.token_ids)] = 1
    return ids, mask


@dataclass
class Group:
    """One prompt's rollouts in a step: the dataset row, its n completions, their reward breakdowns and rewards."""

    row: int
    completions: list[Completion]
    scores: list[RewardBreakdown]
    rewards: list[float]
    """The released reward of each completion, plus the overlong penalty when reward.overlong_buffer > 0."""

    @property
    def zero_variance(self) -> bool:
        """All rewards equal: every advantage is zero, the group teaches nothing (DAPO filters it)."""
        return max(self.rewards) == min(self.rewards)


@dataclass
class TrainBatch:
    """This rank's share of an update, sequence i following prompt prompt_of[i]; (N, C) tensors right-padded."""

    prompt_inputs: dict
    prompt_of: torch.Tensor
    completion_ids: torch.Tensor
    loss_mask: torch.Tensor
    """1 on the completion tokens that carry loss (0 on padding, on top-up copies, on truncated answers if masked)."""
    advantages: torch.Tensor
    rollout_logprobs: torch.Tensor
    """The rollout engine's log-probs of the sampled tokens."""
    ref_logprobs: torch.Tensor | None = None
    old_logprobs: torch.Tensor | None = None
    """The policy's log-probs before the first update (None: on-policy, the current ones stand in)."""


@dataclass
class RankPlan:
    """One rank's part of a step's update: its groups in the order they run, as (group number, trains?), and each
    mini-batch's forward passes as slices over their sequences (rows of the rank's TrainBatch, n per group)."""

    groups: list[tuple[int, bool]] = field(default_factory=list)
    passes: list[list[slice]] = field(default_factory=list)


def rollout_share(prompt_tokens: Sequence[int], world: World, balance: bool) -> tuple[list[int], dict[str, float]]:
    """This rank's prompts of a rollout batch (positions in it, whole prompts, the same count on every rank): by cost
    when `balance`, else a contiguous share; and how even the prompt tokens are over the ranks, contiguous and as
    placed."""
    today = contiguous_shares(len(prompt_tokens), world.size)
    shares = balanced_shares(prompt_tokens, world.size) if balance else today
    metrics = {
        "balance/rollout_max_over_mean": max_over_mean(shares, prompt_tokens),
        "balance/rollout_max_over_mean_before": max_over_mean(today, prompt_tokens),
    }
    return shares[world.rank], metrics


def place_update(
    groups: Sequence[Group], prompt_tokens: Sequence[int], world: World, trainer: TrainerConfig, group_size: int
) -> tuple[RankPlan, dict[str, float]]:
    """This rank's plan of the update on the step's `groups` (prompt_tokens[i]: group i's prompt, text and image),
    and the step's placement metrics (the same on every rank).

    The groups form trainer.mini_batches_per_step contiguous mini-batches, one optimizer step each. Each mini-batch's
    units (a group each, or with trainer.micro_batch_tokens the micro-batches packed to that budget) are topped up to
    a multiple of the world size with copies of its cheapest group that train on nothing, then split over the ranks:
    by padded tokens (`balanced_shares`) with trainer.balance_batch, else contiguously. Every rank runs the same
    number of passes; only where a group is computed changes, never the loss.
    """
    n = len(groups[0].completions) if groups else 1
    shapes = [
        (tokens, group_size * max([len(c.token_ids) for c in group.completions] + [1]))
        for tokens, group in zip(prompt_tokens, groups, strict=True)
    ]
    plans = _plans(shapes, n, world.size, trainer, group_size)
    today = _plans(shapes, n, world.size, replace(trainer, balance_batch=False, micro_batch_tokens=None), group_size)
    real = sum(
        n // group_size * shapes[number][0] + sum(len(c.token_ids) for c in groups[number].completions)
        for plan in plans
        for number, trains in plan.groups
        if trains
    )
    passes = _pass_tokens(plans, shapes, n, group_size)
    metrics = {"batch/padding_fraction": 1.0 - real / max(sum(map(sum, passes)), 1)}
    for suffix, placed in (("", passes), ("_before", _pass_tokens(today, shapes, n, group_size))):
        totals = [sum(tokens) for tokens in placed]
        metrics[f"balance/max_over_mean{suffix}"] = max_over_mean([[rank] for rank in range(len(totals))], totals)
        metrics[f"balance/lockstep_over_mean{suffix}"] = lockstep_over_mean(placed)
    metrics["batch/micro_batches_per_rank"] = float(len(passes[0]))
    if trainer.micro_batch_tokens is not None:
        rows = n // group_size
        over = sum(padded_tokens([shape], rows) > trainer.micro_batch_tokens for shape in shapes)
        metrics["batch/over_budget_groups"] = float(over)
    return plans[world.rank], metrics


def _plans(
    shapes: list[tuple[int, int]], n: int, ranks: int, trainer: TrainerConfig, group_size: int
) -> list[RankPlan]:
    """Every rank's plan (see `place_update`); shapes[i] = (group i's prompt tokens, its completion span a row)."""
    rows, budget = n // group_size, trainer.micro_batch_tokens
    plans, loads = [RankPlan() for _ in range(ranks)], [0] * ranks
    bounds = [part * len(shapes) // trainer.mini_batches_per_step for part in range(trainer.mini_batches_per_step + 1)]
    for start, stop in itertools.pairwise(bounds):
        if start == stop:
            continue
        part = list(range(start, stop))
        packed = [[i] for i in range(len(part))]
        if budget is not None:
            packed = token_micro_batches([shapes[g] for g in part], rows, budget, ranks)
        units = [[(part[i], True) for i in batch] for batch in packed]
        cheapest = min(part, key=lambda group: (padded_tokens([shapes[group]], rows), group))
        units += [[(cheapest, False)] for _ in range(-len(units) % ranks)]
        costs = [padded_tokens([shapes[group] for group, _ in unit], rows) for unit in units]
        shares = contiguous_shares(len(units), ranks)
        if trainer.balance_batch:  # and the costliest share to the rank with the least work so far
            by_cost = sorted(balanced_shares(costs, ranks), key=lambda share: -sum(costs[i] for i in share))
            by_load = sorted(range(ranks), key=lambda rank: (loads[rank], rank))
            shares = [by_cost[by_load.index(rank)] for rank in range(ranks)]
        for rank, (plan, share) in enumerate(zip(plans, shares, strict=True)):
            loads[rank] += sum(costs[i] for i in share)
            first, mine = len(plan.groups) * n, [units[i] for i in share]
            plan.groups += [entry for unit in mine for entry in unit]
            sizes = [len(unit) * n for unit in mine]
            if budget is None:  # micro_batch_size sequences a pass (whole groups with the shared prefix)
                total = sum(sizes)
                sizes = [len(range(total)[s]) for s in micro_batches(total, trainer.micro_batch_size, group_size)]
            ends = list(itertools.accumulate(sizes, initial=first))
            plan.passes.append([slice(a, b) for a, b in itertools.pairwise(ends)])
    return plans


def _pass_tokens(plans: list[RankPlan], shapes: list[tuple[int, int]], n: int, group_size: int) -> list[list[int]]:
    """Each rank's padded tokens of each of its passes, in order (one epoch)."""
    tokens = []
    for plan in plans:
        mine = []
        for part in itertools.chain.from_iterable(plan.passes):
            held = [shapes[number] for number, _ in plan.groups[part.start // n : -(-part.stop // n)]]
            width = max(prompt for prompt, _ in held) + max(span for _, span in held)
            mine.append(width * (part.stop - part.start) // group_size)
        tokens.append(mine)
    return tokens


def logprob_tensor(completions: Sequence[Completion], width: int) -> torch.Tensor:
    """The engine's sampled-token log-probs (N, width), right-padded with 0."""
    logprobs = torch.zeros((len(completions), width), dtype=torch.float32)
    for row, completion in enumerate(completions):
        logprobs[row, : len(completion.logprobs)] = torch.tensor(completion.logprobs, dtype=torch.float32)
    return logprobs


def whole_batch(indices: list[int], world_size: int) -> list[int]:
    """`indices` padded with its own first rows to a multiple of the world size (a stage's last, partial batch)."""
    missing = -len(indices) % world_size
    return indices + [indices[i % len(indices)] for i in range(missing)]
