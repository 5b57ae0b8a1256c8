"""Data plumbing of a GRPO step: groups of rollouts, their split into mini-batches and ranks, padded tensors."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rewardmap.distributed import World
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


def update_shards(groups: int, mini_batches: int, world: World) -> list[list[tuple[int, bool]]]:
    """This rank's groups of each mini-batch, as (group number, trains?).

    The step's groups form `mini_batches` contiguous parts, one optimizer step each; each part is split over the ranks
    in whole groups. A part that does not split evenly (dynamic sampling kept too few groups) is topped up with copies
    of its first groups that train on nothing, so that every rank runs the same passes.
    """
    bounds = [part * groups // mini_batches for part in range(mini_batches + 1)]
    shards = []
    for start, stop in itertools.pairwise(bounds):
        if start == stop:
            continue
        part = [(group, True) for group in range(start, stop)]
        part += [(start + i % (stop - start), False) for i in range(-len(part) % world.size)]
        shards.append(part[world.shard(part, "groups")])
    return shards


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
