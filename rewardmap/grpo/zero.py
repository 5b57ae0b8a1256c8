"""The DeepSpeed ZeRO-2/3 training backend: one engine, one optimizer step per GRPO step, DeepSpeed checkpoints.

Built from the run config (no JSON file): ZeRO stage trainer.zero_stage, fp32 master weights, compute in model.dtype,
gradients accumulated in fp32, AdamW (torch's) with gradient clipping at trainer.max_grad_norm, optional CPU offload.
The engine joins the process group `rewardmap.distributed.join_world` made (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from rewardmap.config import RewardMapConfig
from rewardmap.distributed import World
from rewardmap.errors import InputError
from rewardmap.models.loading import compute_dtype

logger = logging.getLogger(__name__)

TAG = "zero"
"""The tag (subdirectory) of the one DeepSpeed checkpoint in each `<step>/sharded/` directory."""


def deepspeed_config(config: RewardMapConfig, dtype: torch.dtype) -> dict:
    """The DeepSpeed config of a run: a micro-batch is whatever the trainer passes to one `backward`, and the
    accumulation boundary is `step()` (unmanaged accumulation), however many micro-batches a GRPO step has."""
    trainer = config.trainer
    zero: dict = {"stage": trainer.zero_stage}
    if trainer.cpu_offload:
        zero["offload_optimizer"] = {"device": "cpu"}
        if trainer.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu"}
    adamw = {"lr": trainer.lr, "betas": [0.9, 0.999], "weight_decay": trainer.weight_decay, "torch_adam": True}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": trainer.max_grad_norm,
        "optimizer": {"type": "AdamW", "params": adamw},
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "data_types": {"grad_accum_dtype": "fp32"},
        "zero_optimization": zero,
        # torch's AdamW instead of DeepSpeed's compiled CPU Adam: no op to build, on any machine.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": None,
    }


class DeepSpeedBackend:
    """A DeepSpeed engine around the policy; `model` is the engine's module (ZeRO-3 gathers weights in its hooks)."""

    def __init__(self, model: torch.nn.Module, config: RewardMapConfig, world: World) -> None:
        # DeepSpeed reads these from the environment: its accelerator when first imported, the local rank when the
        # process was started without torchrun (a world of one).
        if world.device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        os.environ.setdefault("LOCAL_RANK", str(world.local_rank))
        import deepspeed
        import deepspeed.ops

        if world.device.type == "cpu":
            # On CPU DeepSpeed compiles a shared-memory all-reduce at start-up (minutes; needs a C++ compiler) that
            # only its inference path uses: ZeRO reduces through the process group.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

        self.max_grad_norm = config.trainer.max_grad_norm
        self.world = world
        dtype = compute_dtype(config.model.dtype, world.device)
        self.engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=deepspeed_config(config, dtype),
            dist_init_required=False,  # the group join_world made
        )
        self.model = self.engine.module
        if world.is_main:
            logger.info(
                "DeepSpeed ZeRO-%d over %d process(es), compute in %s, CPU offload %s",
                config.trainer.zero_stage,
                world.size,
                dtype,
                config.trainer.cpu_offload,
            )

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed does this per-micro-batch bookkeeping in engine(...) and in a hook on the engine's outputs; the
        # trainer calls the module itself (its log-prob kernel reads hidden states, not outputs), so it is done here,
        # as DeepSpeed 0.19.8's engine.forward does it.
        self.engine.optimizer.clear_backward_seen_flag()
        self.engine._backward_prologue()
        self.engine.backward(loss)

    def step(self, max_grad_norm: float) -> float:
        assert max_grad_norm == self.max_grad_norm, "DeepSpeed clips at the norm its engine was built with"
        # ZeRO-2/3 skip a step whose global gradient norm is inf or NaN themselves (clearing the gradients; bf16's
        # check_grad_overflow is on by default) and then report the norm as inf.
        self.engine.step()
        return float(self.engine.get_global_grad_norm())

    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def save(self, directory: Path) -> None:
        # Trainable weights only, as the FSDP2 backend: a LoRA run's frozen base is model.path, read again on resume
        # and merge. DeepSpeed writes synchronously and waits for every rank before it returns.
        self.engine.save_checkpoint(str(directory), tag=TAG, exclude_frozen_parameters=True)

    def load(self, directory: Path) -> None:
        saved = len(list((directory / TAG).glob("*_optim_states.pt")))
        if saved != self.world.size:
            raise InputError(
                f"DeepSpeed checkpoint {directory} was written by {saved} processes and this run has "
                f"{self.world.size}: ZeRO cannot reshard it; resume with {saved} processes (NPROC x NNODES)"
            )
        # Not strict: a LoRA checkpoint lacks the frozen base weights, which the model already holds from model.path;
        # every trainable weight is restored from the optimizer's fp32 master copy.
        path, _ = self.engine.load_checkpoint(
            str(directory), tag=TAG, load_module_strict=False, load_lr_scheduler_states=False
        )
        if path is None:
            raise InputError(f"DeepSpeed checkpoint {directory / TAG} could not be read; delete the checkpoint")
