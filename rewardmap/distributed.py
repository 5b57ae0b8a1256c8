"""One process of a training world: process group, device, FSDP2 sharding, collectives, full tensors for export.

`torchrun` starts N processes per node on M nodes and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
a process started without it joins a world of one (so the same code path runs in a test, on one CPU, on 64 GPUs).
The backend is gloo on CPU and nccl on GPU (gloo beside it for CPU objects); nothing else here asks which one.

A world can be split (rollout.placement=separate): its last R processes form a world of their own that only samples,
the others the training world, and every collective (FSDP2, DeepSpeed, checkpoints) stays inside its own part; the two
parts talk through a `RolloutLink`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor

from rewardmap.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_STORE_TIMEOUT = datetime.timedelta(minutes=30)
"""How long the launch's store waits for a key when trainer.collective_timeout_s sets no timeout (torch's default)."""

# Sharding units: each decoder layer and vision block, then the vision tower (the trainer calls it on its own to
# encode a map once per group), then the root.
BLOCK_CLASSES = ("Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock")
VISION_CLASSES = ("Qwen2_5_VisionTransformerPretrainedModel",)


@dataclass(frozen=True)
class RolloutLink:
    """How the two parts of a split world talk: messages through the launch's key-value store, weights through a
    process group of the main trainer (its rank 0) and every rollout rank."""

    store: dist.Store
    bridge: dist.ProcessGroup | None
    """None on the trainers other than the main one."""
    trainers: int
    rollout_ranks: int
    launch_rank: int
    """This process's rank in the torchrun world, as torchrun's reports name it."""


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among `size` processes, its rank on its node, its device; in a split world
    `role` says which part it belongs to (size and rank are within that part)."""

    rank: int
    size: int
    local_rank: int
    device: torch.device
    role: str = "train"
    """train, or rollout (a rollout rank of a separate placement)."""
    link: RolloutLink | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence, name: str = "items") -> slice:
        """This rank's contiguous share of `items` (whole items; their count must divide by the world size)."""
        if len(items) % self.size:
            raise ValueError(f"{len(items)} {name} do not split evenly over {self.size} processes")
        share = len(items) // self.size
        return slice(self.rank * share, (self.rank + 1) * share)


@contextlib.contextmanager
def join_world(collective_timeout_s: float | None = None, rollout_ranks: int = 0) -> Iterator[World]:
    """Joins the torchrun world from the environment, or makes a world of one; leaves it (destroying a group it
    made) on exit. A group someone else made (a test, a caller) is used as it is and left alone. With `rollout_ranks`
    the world is split: the last that many processes get the role rollout, each part its own process group.

    A collective that waits longer than `collective_timeout_s` for another rank raises (None: torch's default).
    """
    made = not dist.is_initialized()
    timeout = None if collective_timeout_s is None else datetime.timedelta(seconds=collective_timeout_s)
    on_gpu = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if on_gpu:
        torch.cuda.set_device(local_rank)
    role, link = "train", None
    if made:
        backend = "cpu:gloo,cuda:nccl" if on_gpu else "gloo"
        if rollout_ranks:
            role, link = _split_world(backend, timeout, rollout_ranks)
        elif "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend, timeout=timeout)
        else:  # launched without torchrun: a world of one, no network port needed
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    world = World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        local_rank=local_rank,
        device=torch.device("cuda", local_rank) if on_gpu else torch.device("cpu"),
        role=role,
        link=link,
    )
    if world.is_main:
        logger.info("%s world of %d process(es), backend %s", role, world.size, dist.get_backend())
    try:
        yield world
    finally:
        if made:
            dist.destroy_process_group()


def _split_world(backend: str, timeout: datetime.timedelta | None, rollout_ranks: int) -> tuple[str, RolloutLink]:
    """Initialises this process's part of a split torchrun world as the default process group; its role and link."""
    if "WORLD_SIZE" not in os.environ:
        raise InputError(
            "rollout.placement=separate needs a torchrun world: rollout.ranks processes sample and the others train, "
            "so start at least rollout.ranks + 1 processes (torchrun --nproc_per_node N), or use placement=colocated"
        )
    store, launch_rank, launch_size = next(dist.rendezvous("env://", timeout=timeout or DEFAULT_STORE_TIMEOUT))
    trainers = launch_size - rollout_ranks
    if trainers < 1:
        raise InputError(
            f"rollout.ranks={rollout_ranks} leaves no trainer in a world of {launch_size} processes: start more "
            f"processes or lower rollout.ranks (below {launch_size})"
        )
    role = "train" if launch_rank < trainers else "rollout"
    rank, size = (launch_rank, trainers) if role == "train" else (launch_rank - trainers, rollout_ranks)
    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(size)  # DeepSpeed and vLLM read them
    dist.init_process_group(backend, store=dist.PrefixStore(role, store), rank=rank, world_size=size, timeout=timeout)
    members = [0, *range(trainers, launch_size)]
    bridge = None
    if launch_rank in members:  # weights travel on the device: NCCL on GPU (untested), gloo on CPU
        group_class = dist.ProcessGroupNCCL if torch.cuda.is_available() else dist.ProcessGroupGloo
        bridge_store = dist.PrefixStore("bridge", store)
        bridge = group_class(bridge_store, members.index(launch_rank), len(members), timeout or DEFAULT_STORE_TIMEOUT)
    link = RolloutLink(dist.PrefixStore("messages", store), bridge, trainers, rollout_ranks, launch_rank)
    return role, link


def shard_model(
    model: torch.nn.Module, *, compute_dtype: torch.dtype, cpu_offload: bool = False, frozen: bool = False
) -> torch.nn.Module:
    """FSDP2: `fully_shard` on each decoder layer and vision block, the vision tower, then the root, in place.

    Parameters stay in their dtype (the policy's fp32: the master weights and the optimizer state) and are cast to
    `compute_dtype` for forward and backward; gradients are reduced in fp32. A `frozen` model (the reference) only
    runs forward: its root is resharded after each forward too (FSDP2 keeps a root's weights gathered for the
    backward that follows, which never comes), so no unit stays gathered between passes.
    """
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    options = {"mp_policy": policy, "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy()}
    for classes in (BLOCK_CLASSES, VISION_CLASSES):
        for module in [m for m in model.modules() if type(m).__name__ in classes]:
            fully_shard(module, **options)
    fully_shard(_fsdp_root(model), **options, **({"reshard_after_forward": True} if frozen else {}))
    if not any(parameter.is_meta for parameter in model.parameters()):  # else once filled (`fill_from_rank0`)
        _settle_root(model)
    return model


def _fsdp_root(model: torch.nn.Module) -> torch.nn.Module:
    """The module sharded as FSDP2's root: the Hugging Face model itself, also under LoRA (peft's generate calls it,
    not the wrapper)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _settle_root(model: torch.nn.Module) -> None:
    """FSDP2 picks its root at the first forward; the trainer calls the vision tower alone before the root's forward,
    so the root is settled beforehand (it needs materialised weights)."""
    _fsdp_root(model)._get_fsdp_state()._lazy_init()


def fill_from_rank0(
    model: torch.nn.Module, source: torch.nn.Module | None, device: torch.device, *, cpu_offload: bool = False
) -> torch.nn.Module:
    """Gives the sharded `model`, built on the meta device on every rank, the weights of rank 0's `source` (a
    loaded copy of the same structure, on the CPU; None on the other ranks), in place.

    Each tensor is broadcast from rank 0 and every rank keeps its shard, so no rank but 0 ever holds a whole model;
    values are cast to `model`'s dtypes (a bf16 checkpoint fills fp32 master weights exactly). Buffers outside the
    state dict (the rotary frequencies) are broadcast too. With `cpu_offload` the shards live in host memory and the
    buffers on `device`, as `shard_model` placed them.
    """
    model.to_empty(device="cpu" if cpu_offload else device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True, cpu_offload=cpu_offload)
    set_model_state_dict(model, source.state_dict() if source is not None else {}, options=options)
    saved = set(model.state_dict())
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for name, buffer in module.named_buffers(recurse=False):
                buffer = module._buffers[name] = buffer.to(device)
                full_name = f"{module_name}.{name}" if module_name else name
                if full_name not in saved:
                    if source is not None:
                        buffer.copy_(source.get_buffer(full_name))
                    dist.broadcast(buffer, src=0)
    _settle_root(model)
    return model


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a shard (collective: every rank calls it), or the tensor itself when unsharded."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor, or the tensor itself when unsharded."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """The sums over all ranks of `values` (fp64, so token counts stay exact)."""
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_gather_lists(items: list) -> list:
    """Every rank's `items` (picklable, produced by this program), concatenated in rank order."""
    gathered: list[list | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def barrier() -> None:
    """Waits until every rank arrives."""
    dist.barrier()
