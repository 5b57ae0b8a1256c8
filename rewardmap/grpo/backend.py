"""How the policy trains in the world: FSDP2 shards plus AdamW (default), or DeepSpeed ZeRO-2/3; backward, one
optimizer step per GRPO step, and sharded checkpoints of weights and optimizer state.

Both backends offer the same five calls (`backward`, `step`, `set_lr`, `save`, `load`), so the GRPO step never asks
which one it runs on. Gradients are averaged over ranks by both: the caller scales each loss by the world size to
get the gradient of the global sum.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from rewardmap.config import RewardMapConfig
from rewardmap.distributed import World, local


class TrainBackend(Protocol):
    """The training side of a run: the model to call forward on, gradient and optimizer steps, checkpoints."""

    model: torch.nn.Module

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self, max_grad_norm: float) -> float:
        """Clips the gradient norm, takes one optimizer step, clears gradients; returns the norm before clipping.
        A norm that is not finite (the same on every rank) takes no step: the gradients are only cleared."""
        ...

    def set_lr(self, lr: float) -> None: ...

    def save(self, directory: Path) -> None:
        """Every rank writes its shard of weights and optimizer state into `directory` (collective)."""
        ...

    def load(self, directory: Path) -> None:
        """Restores what `save` wrote, resharding when the world size changed (collective)."""
        ...


class FSDP2Backend:
    """AdamW over the FSDP2 shards of a policy sharded by `shard_model` (fp32 master weights, compute in model.dtype);
    checkpoints through DCP."""

    def __init__(self, model: torch.nn.Module, config: RewardMapConfig, world: World) -> None:
        self.device = world.device
        self.model = model
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=config.trainer.lr,
            betas=(0.9, 0.999),
            weight_decay=config.trainer.weight_decay,
        )
        # LoRA: only the adapters are saved; the frozen base is model.path, which a resume and a merge read again.
        self.options = StateDictOptions(ignore_frozen_params=True)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, max_grad_norm: float) -> float:
        # The squares are summed in fp64 over each rank's shard: torch's fp32 norm on CPU accumulates in one float, so
        # its result would depend on how the gradients are sharded (pytorch/pytorch#169237). The per-tensor sums stay
        # on the device and meet in one all-reduce: one host synchronisation per step, not one per parameter.
        grads = [p.grad for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        squares = torch.stack([local(g).double().square().sum() for g in grads]).sum().to(self.device)
        dist.all_reduce(squares)
        grad_norm = squares.item() ** 0.5
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return grad_norm
        if grad_norm > max_grad_norm:
            for grad in grads:
                grad.mul_(max_grad_norm / (grad_norm + 1e-6))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def save(self, directory: Path) -> None:
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer, options=self.options)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(directory))

    def load(self, directory: Path) -> None:
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer, options=self.options)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=str(directory))
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=self.options,
        )


def build_backend(model: torch.nn.Module, config: RewardMapConfig, world: World) -> TrainBackend:
    """The backend named by trainer.backend around `model` (fp32 weights: FSDP2-sharded for fsdp2, whole on the
    world's device for deepspeed)."""
    if config.trainer.backend == "deepspeed":
        from rewardmap.grpo.zero import DeepSpeedBackend

        return DeepSpeedBackend(model, config, world)
    return FSDP2Backend(model, config, world)
