"""Tensor plumbing of a GRPO step: sampled completions to right-padded id and mask tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

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
