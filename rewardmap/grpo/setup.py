"""Builds what a run trains with from its config: policy, reference, processor, rollout engine, optimizer, data."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoConfig

from rewardmap.config import DataConfig, RewardMapConfig
from rewardmap.data.curriculum import CurriculumStream
from rewardmap.data.images import image_tokens, load_image
from rewardmap.data.loading import MapDataset, load_rows
from rewardmap.data.prompts import prompt_tensors, render_prompt
from rewardmap.distributed import World, fill_from_rank0, shard_model
from rewardmap.errors import InputError
from rewardmap.grpo.backend import TrainBackend, build_backend
from rewardmap.models.loading import (
    check_model_dir,
    compute_dtype,
    empty_policy,
    freeze,
    load_policy,
    load_processor,
    resolve_attention,
)
from rewardmap.models.lora import apply_lora, reference_policy
from rewardmap.models.shared_prefix import shared_prefix_group
from rewardmap.rollout import VLLM_DTYPES, RolloutEngine, build_engine

logger = logging.getLogger(__name__)


def row_image(row: dict, root: Path, data: DataConfig) -> Image.Image:
    """The row's map resized to the data section's pixel budget (cached on disk after the first decode)."""
    return load_image(
        row["figure"],
        root=root,
        min_pixels=data.min_pixels,
        max_pixels=data.max_pixels,
        cache_dir=data.image_cache_dir,
        max_source_pixels=data.max_decode_pixels,
    )


@dataclass
class RolloutParts:
    """What sampling a step's groups touches: the config, the world, the processor, the engine and the data."""

    config: RewardMapConfig
    world: World
    processor: object
    engine: RolloutEngine
    rows: MapDataset
    stream: CurriculumStream

    def prompts_and_images(self, rows: Sequence[dict]) -> tuple[list[str], list[Image.Image]]:
        """Rendered chat prompts (the one prompt builder) and the rows' images."""
        prompts = [render_prompt(self.processor, row["question"]) for row in rows]
        return prompts, [row_image(row, self.rows.root, self.config.data) for row in rows]

    def prompt_tokens(self, rows: Sequence[dict]) -> list[int]:
        """Each row's prompt length in tokens before any pixel is decoded: its rendered prompt's tokens, the one image
        placeholder counted as the map's visual tokens (what `prompt_inputs` will hold)."""
        if not rows:  # the tokenizer refuses an empty list
            return []
        data = self.config.data
        texts = self.processor.tokenizer([render_prompt(self.processor, row["question"]) for row in rows])["input_ids"]
        pixels = {
            "min_pixels": data.min_pixels,
            "max_pixels": data.max_pixels,
            "max_source_pixels": data.max_decode_pixels,
        }
        return [
            len(ids) - 1 + image_tokens(row["figure"], root=self.rows.root, **pixels)
            for ids, row in zip(texts, rows, strict=True)
        ]


@dataclass
class Components(RolloutParts):
    """Everything a GRPO step touches besides the config: the rollout side plus the models and validation data."""

    backend: TrainBackend
    frozen_reference: torch.nn.Module | None
    val_rows: list[dict]
    """Held-out rows validated every trainer.val_freq steps (empty: no validation)."""
    val_root: Path | None
    """Where the held-out rows' relative figure paths resolve."""
    attention: dict[str, str]
    """Each model part's attention implementation, {"text": ..., "vision": ...}, as resolved for this run."""
    group_size: int
    """Completions per forward sequence: rollout.n when each group's prompt runs once (model.shared_prefix), else 1."""

    @property
    def model(self) -> torch.nn.Module:
        return self.backend.model

    @property
    def pad_id(self) -> int:
        return self.processor.tokenizer.pad_token_id

    def resolved_config(self) -> RewardMapConfig:
        """The run's config with each part's attention and the shared prefix as resolved (logged once, here)."""
        logger.info(
            "attention: language model %s, vision tower %s; shared prefix: %d completion(s) per forward sequence",
            self.attention["text"],
            self.attention["vision"],
            self.group_size,
        )
        shared = "on" if self.group_size > 1 else "off"
        model = replace(self.config.model, attn_implementation=self.attention, shared_prefix=shared)
        return replace(self.config, model=model)

    def prompt_inputs(self, prompts: Sequence[str], images: Sequence[Image.Image]) -> dict:
        """Left-padded prompt tensors on the world's device; refuses prompts over data.max_prompt_length tokens."""
        inputs = prompt_tensors(self.processor, prompts, images, self.config.data.max_prompt_length)
        return {key: value.to(self.world.device) for key, value in inputs.items()}

    @contextlib.contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        """The frozen reference policy: the LoRA base with adapters off, or a separate frozen copy."""
        if self.frozen_reference is not None:
            yield self.frozen_reference
        else:
            with reference_policy(self.model) as base:
                yield base


def vllm_options(config: RewardMapConfig) -> dict:
    """VLLMRolloutEngine's keywords from a run's model, rollout and data sections."""
    rollout, data = config.rollout, config.data
    return {
        "dtype": VLLM_DTYPES[config.model.dtype],
        "seed": rollout.seed,
        "min_pixels": data.min_pixels,
        "max_pixels": data.max_pixels,
        "gpu_memory_utilization": rollout.gpu_memory_utilization,
        "tensor_parallel_size": rollout.tensor_parallel_size,
        "enforce_eager": rollout.enforce_eager,
        "enable_sleep_mode": rollout.enable_sleep_mode,
        "enable_chunked_prefill": rollout.enable_chunked_prefill,
        "max_num_batched_tokens": rollout.max_num_batched_tokens,
        "max_model_len": rollout.max_model_len,
    }


def check_vllm_world(config: RewardMapConfig, world: World) -> None:
    """Refuses vLLM rollouts the world cannot host: tensor-parallel groups that do not tile the processes that sample
    (the world, or the rollout ranks of a separate placement), or ZeRO-3 weights to sync from."""
    tp = config.rollout.tensor_parallel_size
    if tp < 1 or world.size % tp:
        where = f"the world of {world.size} processes (NPROC x NNODES)"
        if world.role == "rollout":
            where = f"rollout.ranks={world.size}"
        raise InputError(
            f"rollout.tensor_parallel_size={tp} does not divide {where}: each vLLM engine spans tensor_parallel_size "
            f"consecutive ranks, so pick a divisor of {world.size}"
        )
    if world.role == "rollout":
        return
    if config.trainer.backend == "deepspeed" and config.trainer.zero_stage == 3:
        raise InputError(
            "rollout.engine=vllm with trainer.backend=deepspeed trainer.zero_stage=3 is not supported: the weight "
            "sync reads whole weights, which ZeRO-3 partitions; use trainer.backend=fsdp2 (it shards the weights "
            "too and syncs them one at a time) or trainer.zero_stage=2"
        )


def load_training_data(config: RewardMapConfig) -> tuple[MapDataset, CurriculumStream]:
    """The training rows and the curriculum stream over them (the same plan in every process)."""
    cfg_data, curriculum = config.data, config.curriculum
    rows = load_rows(cfg_data.train_files, split=cfg_data.train_split, on_bad_row=cfg_data.on_bad_row)
    stages = curriculum.preset if curriculum.stages is None else [vars(stage) for stage in curriculum.stages]
    stream = CurriculumStream(
        rows.types,
        stages,
        batch_size=cfg_data.prompts_per_step,
        order=curriculum.order,
        difficulties=rows.difficulties,
        seed=curriculum.seed,
    )
    return rows, stream


def build_components(config: RewardMapConfig, world: World) -> Components:
    """Loads the model(s) and data of a run; the policy (fp32 master weights) and the reference are sharded.

    With rollout.placement=separate the trainers sample only to validate, with the transformers engine on the policy.
    """
    cfg_model, cfg_data = config.model, config.data
    split = world.size * config.trainer.mini_batches_per_step
    if cfg_data.prompts_per_step % split:
        raise InputError(
            f"data.prompts_per_step={cfg_data.prompts_per_step} does not split into trainer.mini_batches_per_step="
            f"{config.trainer.mini_batches_per_step} mini-batches over the world of {world.size} processes "
            "(NPROC x NNODES): each process trains whole groups, so make prompts_per_step a multiple of "
            f"{split}"
        )
    engine_kind = config.rollout.engine if config.rollout.placement == "colocated" else "hf"
    if engine_kind == "vllm":
        check_vllm_world(config, world)
    attention, group_size = resolve_attention_and_group(config, world.device)
    model, frozen_reference = load_models(config, world, attention)
    processor = load_processor(cfg_model.path, min_pixels=cfg_data.min_pixels, max_pixels=cfg_data.max_pixels)
    backend = build_backend(model, config, world)
    rows, stream = load_training_data(config)
    logger.info("%d training rows from %s: %d steps", len(rows), cfg_data.train_files, len(stream))
    val_rows, val_root = [], None
    if cfg_data.val_files and config.trainer.val_freq > 0:
        held_out = load_rows(cfg_data.val_files, split=cfg_data.val_split, on_bad_row=cfg_data.on_bad_row)
        val_rows = [held_out[i] for i in range(min(len(held_out), cfg_data.val_limit or len(held_out)))]
        val_root = held_out.root
    engine = build_engine(
        engine_kind,
        processor,
        model=backend.model,
        model_path=cfg_model.path,
        vllm_options=vllm_options(config),
    )
    return Components(
        config=config,
        world=world,
        processor=processor,
        engine=engine,
        rows=rows,
        stream=stream,
        backend=backend,
        frozen_reference=frozen_reference,
        val_rows=val_rows,
        val_root=val_root,
        attention=attention,
        group_size=group_size,
    )


def build_rollout_parts(config: RewardMapConfig, world: World) -> RolloutParts:
    """What a rollout rank of a separate placement samples with: the data and its own engine (vLLM on model.path, or
    transformers on a copy of the policy in the compute dtype), whose weights the trainers then replace."""
    cfg_model, cfg_data = config.model, config.data
    processor = load_processor(cfg_model.path, min_pixels=cfg_data.min_pixels, max_pixels=cfg_data.max_pixels)
    model = None
    if config.rollout.engine == "vllm":
        check_vllm_world(config, world)
    else:
        attention, _ = resolve_attention_and_group(config, world.device)
        dtype = compute_dtype(cfg_model.dtype, world.device)
        model = load_policy(cfg_model.path, device=world.device, dtype=dtype, attn_implementation=attention).eval()
    engine = build_engine(
        config.rollout.engine, processor, model=model, model_path=cfg_model.path, vllm_options=vllm_options(config)
    )
    rows, stream = load_training_data(config)
    return RolloutParts(config=config, world=world, processor=processor, engine=engine, rows=rows, stream=stream)


def resolve_attention_and_group(config: RewardMapConfig, device: torch.device) -> tuple[dict[str, str], int]:
    """Each model part's attention and the completions per forward sequence (rollout.n with the shared prefix, else
    1) that model.attn_implementation and model.shared_prefix resolve to on `device` (from the model's config.json)."""
    cfg = config.model
    shares_prefix = config.rollout.n > 1 and cfg.shared_prefix != "off"
    attention = resolve_attention(cfg.attn_implementation, device, shares_prefix)
    text = AutoConfig.from_pretrained(check_model_dir(cfg.path)).get_text_config()
    text._attn_implementation = attention["text"]
    return attention, shared_prefix_group(cfg.shared_prefix, text, config.rollout.n)


def load_models(
    config: RewardMapConfig, world: World, attention: dict[str, str]
) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The policy (fp32 master weights; FSDP2-sharded unless DeepSpeed takes it) and the frozen reference (compute
    dtype, sharded; None under LoRA, whose reference is the policy with adapters off, or without a KL term).

    FSDP2: rank 0 alone reads the checkpoint, into host memory in its own dtype; every rank builds the models on the
    meta device, shards them and receives its shards from rank 0, so no rank holds a whole model on its device and
    only rank 0 one in host memory (instead of two full fp32 copies per rank). DeepSpeed's engine takes the policy
    whole on every rank (ZeRO-3 partitions it then), as before.
    """
    cfg, lora = config.model, config.model.lora_rank > 0
    dtype, offload = compute_dtype(cfg.dtype, world.device), config.trainer.cpu_offload
    whole = config.trainer.backend == "deepspeed"
    torch.manual_seed(config.trainer.seed)  # LoRA's initial adapters
    source = None
    if whole or world.is_main:
        source = load_policy(
            cfg.path,
            device=world.device if whole else "cpu",
            dtype=torch.float32 if whole or lora else "auto",  # adapters are made in the weights' dtype
            attn_implementation=attention,
            gradient_checkpointing=whole and cfg.gradient_checkpointing,
        )
        if lora:
            source = apply_lora(
                source, rank=cfg.lora_rank, alpha=cfg.lora_alpha, target_modules=cfg.lora_target_modules
            )
    policy = source
    if not whole:
        policy = empty_policy(
            cfg.path,
            dtype=torch.float32,
            attn_implementation=attention,
            gradient_checkpointing=cfg.gradient_checkpointing,
        )
        if lora:
            policy = apply_lora(
                policy, rank=cfg.lora_rank, alpha=cfg.lora_alpha, target_modules=cfg.lora_target_modules
            )
        shard_model(policy, compute_dtype=dtype, cpu_offload=offload)
        fill_from_rank0(policy, source, world.device, cpu_offload=offload)
    reference = None
    if config.algorithm.kl_coef > 0 and not lora:
        reference = freeze(empty_policy(cfg.path, dtype=dtype, attn_implementation=attention))
        shard_model(reference, compute_dtype=dtype, cpu_offload=offload, frozen=True)
        fill_from_rank0(reference, source if world.is_main else None, world.device, cpu_offload=offload)
    return policy, reference
