"""Typed run configuration: one dataclass per component, loaded from YAML plus dotted overrides (OmegaConf)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rewardmap.errors import InputError

CURRICULUM_PRESETS = ("released", "coarse", "fine-grained", "none")
ATTENTION_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")


def _check_choice(section: str, name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"{section}.{name}={value!r} is not one of {', '.join(allowed)}")


@dataclass
class ModelConfig:
    """The policy: a local Hugging Face Qwen2.5-VL directory and how to load it."""

    path: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    """Local model directory (download it first; nothing is fetched at run time)."""
    dtype: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32."""
    attn_implementation: Any = "auto"
    """One of auto, sdpa, eager, flash_attention_2 for the whole model, or per part: {text: sdpa, vision: auto}.
    auto: the vision tower takes flash_attention_2 where it is installed (on CUDA), else sdpa; the language model
    takes sdpa when the shared prefix runs (it needs sdpa), else flash_attention_2 where installed, else sdpa."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass (less memory, ~30% more time)."""
    shared_prefix: str = "auto"
    """on: each group's prompt runs once for its rollout.n completions (reference pass and update; needs sdpa
    attention); off: one sequence per completion; auto: on where supported (sdpa, rollout.n > 1)."""
    lora_rank: int = 0
    """0 trains all weights; > 0 trains LoRA adapters of this rank (the reference is the base, adapters off)."""
    lora_alpha: int = 16
    """LoRA scaling numerator."""
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Linear layers of the language model that get adapters (default: all of them, as the SFT recipe)."""

    def __post_init__(self) -> None:
        _check_choice("model", "dtype", self.dtype, ("auto", "bf16", "fp16", "fp32"))
        parts = self.attn_implementation
        if isinstance(parts, str):
            parts = {"text": parts, "vision": parts}
        if not isinstance(parts, dict) or not set(parts) <= {"text", "vision"}:
            raise InputError(
                f"model.attn_implementation={self.attn_implementation!r} is neither one attention implementation nor "
                "a mapping of the parts text and vision to one, e.g. {text: sdpa, vision: flash_attention_2}"
            )
        for part, value in parts.items():
            _check_choice("model", f"attn_implementation.{part}", value, ATTENTION_IMPLEMENTATIONS)
        # YAML 1.1 reads a bare on/off as a boolean, which reaches this str field as "True"/"False".
        self.shared_prefix = {"True": "on", "False": "off"}.get(self.shared_prefix, self.shared_prefix)
        _check_choice("model", "shared_prefix", self.shared_prefix, ("auto", "on", "off"))


@dataclass
class DataConfig:
    """Where training/validation rows come from and how their images are prepared."""

    train_files: str = "data/ReasonMap-Train"
    """A save_to_disk directory, a Hub-layout folder of parquet/JSON/JSONL files, or one file."""
    train_split: str = "train"
    """Split to read from train_files."""
    val_files: str | None = None
    """Held-out rows for validation every trainer.val_freq steps (None: no validation, as released)."""
    val_split: str = "test"
    """Split to read from val_files."""
    val_limit: int | None = None
    """Validate on at most this many held-out rows."""
    on_bad_row: str = "error"
    """error: stop at the first invalid row; skip: drop invalid rows and report how many and why."""
    metro_root: str | None = None
    """Directory that relative metro `json` paths resolve against (default: the dataset directory)."""
    prompts_per_step: int = 16
    """Prompts per GRPO step (the release's rollout batch size)."""
    min_pixels: int = 3136
    """Smallest image budget in pixels (Qwen2.5-VL smart_resize)."""
    max_pixels: int = 12845056
    """Largest image budget in pixels; bigger maps are downscaled before the processor sees them."""
    max_decode_pixels: int = 300_000_000
    """PIL decompression-bomb cap: a source image above this many pixels is refused."""
    image_cache_dir: str = ".cache/images"
    """Content-addressed cache of resized images (the second epoch never decodes a full map)."""
    max_prompt_length: int = 20000
    """Prompts longer than this many tokens are refused with the row named."""
    max_response_length: int = 2048
    """Tokens generated per rollout at most."""

    def __post_init__(self) -> None:
        _check_choice("data", "on_bad_row", self.on_bad_row, ("error", "skip"))
        if self.prompts_per_step < 1:
            raise InputError(f"data.prompts_per_step={self.prompts_per_step} must be >= 1")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise InputError(f"data.min_pixels={self.min_pixels} must be in (0, data.max_pixels={self.max_pixels}]")


@dataclass
class StageConfig:
    """One curriculum stage: the question types it trains on, and optionally a fixed number of steps."""

    types: list[str] = field(default_factory=list)
    """Question types (TorF1, TorF2, Counting1, Counting2, Counting3, planning)."""
    steps: int | None = None
    """Exactly this many steps (cycling or truncating the stage's rows); None: one pass over them."""


@dataclass
class CurriculumConfig:
    """The order of training samples: stages of question types, the order inside each stage."""

    preset: str = "released"
    """released (TorF -> Counting2/3 -> Counting1 -> planning), coarse, fine-grained, or none (one shuffled stage)."""
    stages: list[StageConfig] | None = None
    """Explicit stages; when set they replace the preset."""
    order: str = "shuffled"
    """Order inside a stage: shuffled (seeded, as released) or easy_to_hard (by difficulty_city)."""
    seed: int = 42
    """Seed of the in-stage shuffle."""

    def __post_init__(self) -> None:
        _check_choice("curriculum", "preset", self.preset, CURRICULUM_PRESETS)
        _check_choice("curriculum", "order", self.order, ("shuffled", "easy_to_hard"))


@dataclass
class RewardConfig:
    """The difficulty-aware detail reward (REWARD_SPEC.md)."""

    variant: str = "released"
    """released: the published scores, quirks included; corrected: the slips fixed."""
    mode: str = "difficulty_aware"
    """difficulty_aware (weights by city difficulty and transfers) or baseline (weight 1)."""
    counting1_detail: bool = False
    """Partial credit for listed intermediate stops on Counting1 (corrected variant only)."""
    overlong_buffer: int = 0
    """DAPO's soft overlong penalty: answers longer than data.max_response_length - overlong_buffer tokens lose up
    to reward.overlong_penalty_factor, linearly, added to the released reward; 0 turns it off (as released)."""
    overlong_penalty_factor: float = 1.0
    """The overlong penalty at data.max_response_length tokens."""

    def __post_init__(self) -> None:
        _check_choice("reward", "variant", self.variant, ("released", "corrected"))
        _check_choice("reward", "mode", self.mode, ("difficulty_aware", "baseline"))
        if self.overlong_buffer < 0 or self.overlong_penalty_factor < 0:
            raise InputError(
                f"reward.overlong_buffer={self.overlong_buffer} and reward.overlong_penalty_factor="
                f"{self.overlong_penalty_factor} must be >= 0 (overlong_buffer=0 turns the penalty off)"
            )


@dataclass
class RolloutConfig:
    """How completions are sampled: the engine, sampling parameters and vLLM's colocation settings."""

    engine: str = "hf"
    """hf (transformers generate) or vllm (colocated vLLM engine with weight sync each step)."""
    n: int = 4
    """Completions per prompt (the GRPO group size)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (> 0: a group needs different answers)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = -1
    """Top-k sampling; -1 turns it off."""
    seed: int = 0
    """Sampling seed: a prompt's samples depend only on (seed, step, the prompt's index in the step's batch)."""
    gpu_memory_utilization: float = 0.6
    """vLLM: fraction of GPU memory for weights and KV cache."""
    tensor_parallel_size: int = 1
    """vLLM: consecutive ranks (GPUs) per engine; must divide the world size (the recipe uses 4 on an 8-GPU node)."""
    enforce_eager: bool = False
    """vLLM: skip CUDA graph capture."""
    enable_sleep_mode: bool = True
    """vLLM: free the KV cache while the trainer updates, wake before rollouts."""
    enable_chunked_prefill: bool | None = None
    """vLLM: chunked prefill; None leaves it to vLLM (on in vLLM 0.32, which warns that turning it off may crash or
    give wrong outputs for Qwen2.5-VL)."""
    max_num_batched_tokens: int = 25600
    """vLLM: tokens per engine step."""
    max_model_len: int = 22048
    """vLLM: longest prompt + response."""
    placement: str = "colocated"
    """colocated: every process samples, then trains (the released stack); separate: the last rollout.ranks processes
    of the torchrun world only sample and the others only train, so that sampling and training overlap."""
    ranks: int = 1
    """separate: how many processes of the world run rollout engines (a multiple of tensor_parallel_size)."""
    max_staleness: int = 0
    """separate: the most optimizer steps the sampling weights may lag behind the trained ones. 0: every step samples
    with the current weights (no overlap); 1: step s samples with the weights after step s-2 while step s-1 trains."""
    weight_bucket_mb: int = 512
    """separate: the weight transfer to the rollout ranks sends tensors in buckets of about this many MB."""

    def __post_init__(self) -> None:
        _check_choice("rollout", "engine", self.engine, ("hf", "vllm"))
        _check_choice("rollout", "placement", self.placement, ("colocated", "separate"))
        if self.ranks < 1 or self.max_staleness < 0 or self.weight_bucket_mb < 1:
            raise InputError(
                f"rollout.ranks={self.ranks}, rollout.max_staleness={self.max_staleness}, rollout.weight_bucket_mb="
                f"{self.weight_bucket_mb}: ranks and weight_bucket_mb must be >= 1, max_staleness >= 0"
            )
        if self.placement == "colocated" and self.max_staleness:
            raise InputError(
                f"rollout.max_staleness={self.max_staleness} needs rollout.placement=separate: colocated rollouts "
                "always sample with the current weights"
            )
        if self.temperature <= 0:
            raise InputError(
                f"rollout.temperature={self.temperature}: GRPO samples a group of different answers per prompt, "
                "which needs a temperature > 0 (the recipe uses 1.0)"
            )
        if self.n < 2:
            raise InputError(f"rollout.n={self.n}: GRPO needs at least 2 completions per prompt to form a group")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise InputError(
                f"rollout.gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]: the fraction of "
                "each GPU's memory (on CPU: of the RAM, for the KV cache) that vLLM may take"
            )


@dataclass
class AlgorithmConfig:
    """The GRPO objective: advantages, clipped policy loss, KL to the reference, entropy bonus."""

    adv_eps: float = 1e-6
    """Added to the group's reward std before dividing."""
    clip_ratio_low: float = 0.2
    """PPO clip: ratio floor is 1 - clip_ratio_low."""
    clip_ratio_high: float = 0.2
    """PPO clip: ratio ceiling is 1 + clip_ratio_high."""
    kl_coef: float = 1e-2
    """Weight of the KL loss to the reference policy; 0 skips the reference pass."""
    kl_estimator: str = "low_var_kl"
    """low_var_kl (k3, as released), k1 or mse (k2)."""
    entropy_coef: float = 1e-3
    """Entropy bonus: loss = pg_loss - entropy_coef * entropy."""
    loss_agg: str = "token-mean"
    """token-mean (as released), seq-mean-token-mean, or seq-mean-token-sum-norm (Dr.GRPO's constant normaliser)."""
    advantage_std_norm: bool = True
    """Divide advantages by the group's reward std (as released); false: r - mean (Dr.GRPO)."""
    importance_level: str = "token"
    """token (as released) or sequence (GSPO: one length-normalised ratio per answer; use a small clip range)."""
    ppo_epochs: int = 1
    """Passes over each rollout batch; > 1 (or trainer.mini_batches_per_step > 1) computes old log-probs first."""
    filter_zero_variance_groups: bool = False
    """DAPO's dynamic sampling: drop groups whose rewards are all equal, refill from the same curriculum stage."""
    max_filter_rounds: int = 3
    """Dynamic sampling: at most this many rollout rounds per step (the first included)."""
    rollout_is: str = "none"
    """none (as released) or truncated: weight each token's loss by min(p_trainer / p_rollout-engine, cap)."""
    rollout_is_cap: float = 2.0
    """The truncation cap of algorithm.rollout_is=truncated."""
    mask_truncated: bool = False
    """No loss on answers cut at data.max_response_length (they count for nothing in the update)."""

    def __post_init__(self) -> None:
        _check_choice("algorithm", "kl_estimator", self.kl_estimator, ("low_var_kl", "k1", "mse"))
        _check_choice(
            "algorithm", "loss_agg", self.loss_agg, ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
        )
        _check_choice("algorithm", "importance_level", self.importance_level, ("token", "sequence"))
        _check_choice("algorithm", "rollout_is", self.rollout_is, ("none", "truncated"))
        if self.ppo_epochs < 1 or self.max_filter_rounds < 1:
            raise InputError(
                f"algorithm.ppo_epochs={self.ppo_epochs} and algorithm.max_filter_rounds={self.max_filter_rounds} "
                "must both be >= 1"
            )
        if self.rollout_is_cap < 1:
            raise InputError(f"algorithm.rollout_is_cap={self.rollout_is_cap} must be >= 1 (weights are capped there)")


@dataclass
class SFTConfig:
    """A short supervised warm start on the rows' answers (the demo uses it so the tiny policy answers in format)."""

    steps: int = 0
    """Optimizer steps of cross-entropy on answers before GRPO; 0 skips the warm start."""
    lr: float = 1e-4
    """Learning rate of the warm start."""
    batch_size: int = 8
    """Rows per warm-start step."""


@dataclass
class TrainerConfig:
    """The training loop: optimizer, batching, checkpoints, logging."""

    output_dir: str = "runs/reward_map"
    """Run directory: config, metrics.jsonl, TensorBoard events, checkpoints, plots."""
    lr: float = 1e-6
    """AdamW learning rate (constant schedule, as released)."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warm-up steps before the constant learning rate."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    micro_batch_size: int = 1
    """Sequences per forward/backward in the update and log-prob passes (gradients accumulate to one step)."""
    micro_batch_tokens: int | None = None
    """Instead of micro_batch_size: each pass holds as many whole groups as fit this many tokens, padding included,
    groups of alike length together (at least one group; one over the budget runs alone). None: off."""
    balance_batch: bool = True
    """Rank shares of equal cost (rollout: prompt tokens; update: + completions), not contiguous slices (placement)."""
    mini_batches_per_step: int = 1
    """Optimizer steps per rollout batch (verl's ppo_mini_batch_size = batch / this); > 1 computes old log-probs."""
    max_steps: int | None = None
    """Stop after this many GRPO steps (None: one pass over the curriculum)."""
    save_freq: int = 100
    """Save a checkpoint every this many steps (and always at the end)."""
    save_limit: int = 2
    """Keep only the newest this many checkpoints."""
    val_freq: int = 0
    """Validate every this many steps when data.val_files is set; 0 turns validation off."""
    resume: str = "auto"
    """auto (newest complete checkpoint in output_dir, if any), none, or a checkpoint path."""
    seed: int = 42
    """Seed for weights' dropout, sampling order and everything else random in the trainer."""
    loggers: list[str] = field(default_factory=lambda: ["jsonl", "tensorboard"])
    """Where each step's scalars go: jsonl (metrics.jsonl, always), tensorboard, wandb, trackio (the last two are
    optional installs; they also get the sample rollouts as a table and the config)."""
    project: str = "rewardmap"
    """The W&B / Trackio project a run joins (the run is named after output_dir's folder)."""
    log_samples: int = 4
    """Groups of each step kept in <output_dir>/samples.jsonl (seeded, spread over question types); 0 turns it off."""
    backend: str = "fsdp2"
    """fsdp2 (PyTorch FSDP2 shards, DCP checkpoints) or deepspeed (ZeRO, stage trainer.zero_stage)."""
    zero_stage: int = 3
    """DeepSpeed ZeRO stage, 2 (optimizer state and gradients sharded) or 3 (weights too)."""
    cpu_offload: bool = False
    """Keep sharded weights, gradients and optimizer state in CPU memory (the recipe's offload; slower)."""
    max_nonfinite_steps: int = 3
    """Stop after this many steps in a row whose loss, gradient norm or rollout log-probs were not finite (each such
    step takes no optimizer step)."""
    collective_timeout_s: float = 600.0
    """Seconds a collective (all-reduce, barrier, ...) waits for every process before the run stops naming the rank
    that died or hung (torch's NCCL default, 10 minutes; raise it if loading or validation makes ranks wait longer)."""

    def __post_init__(self) -> None:
        _check_choice("trainer", "backend", self.backend, ("fsdp2", "deepspeed"))
        for logger_name in self.loggers:
            _check_choice("trainer", "loggers", logger_name, ("jsonl", "tensorboard", "wandb", "trackio"))
        if "jsonl" not in self.loggers:
            raise InputError(
                f"trainer.loggers={list(self.loggers)} lacks jsonl: metrics.jsonl feeds `rewardmap plot` and "
                "`rewardmap report`; add it, e.g. trainer.loggers=[jsonl,wandb]"
            )
        for tracker in ("wandb", "trackio"):
            if tracker in self.loggers and importlib.util.find_spec(tracker) is None:
                raise InputError(f"trainer.loggers asks for {tracker}, which is not installed: pip install {tracker}")
        if self.log_samples < 0:
            raise InputError(f"trainer.log_samples={self.log_samples} must be >= 0 (0 turns sample logging off)")
        if self.zero_stage not in (2, 3):
            raise InputError(f"trainer.zero_stage={self.zero_stage} is not one of 2, 3")
        if self.collective_timeout_s <= 0:
            raise InputError(f"trainer.collective_timeout_s={self.collective_timeout_s} must be > 0 (seconds)")
        if min(self.save_freq, self.save_limit, self.micro_batch_size, self.mini_batches_per_step) < 1:
            raise InputError(
                f"trainer.save_freq={self.save_freq}, trainer.save_limit={self.save_limit}, "
                f"trainer.micro_batch_size={self.micro_batch_size} and "
                f"trainer.mini_batches_per_step={self.mini_batches_per_step} must all be >= 1"
            )
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < 1:
            raise InputError(f"trainer.micro_batch_tokens={self.micro_batch_tokens} must be >= 1, or null (off)")
        if self.max_nonfinite_steps < 1:
            raise InputError(f"trainer.max_nonfinite_steps={self.max_nonfinite_steps} must be >= 1")


@dataclass
class RewardMapConfig:
    """A whole run: every component's section."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def load_config(
    paths: str | Path | list[str | Path] | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> RewardMapConfig:
    """Defaults, then each YAML file in order, then `section.key=value` overrides; bad keys and types name the key."""
    files = [] if paths is None else [paths] if isinstance(paths, str | Path) else list(paths)
    merged = OmegaConf.structured(RewardMapConfig)
    source = "config"
    try:
        for path in files:
            source = f"config {path}"
            if not Path(path).is_file():
                raise FileNotFoundError(f"config file {path} does not exist")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        source = "config overrides"
        bad = [item for item in overrides if "=" not in item]
        if bad:
            raise InputError(f"override {bad[0]!r} is not of the form section.key=value (e.g. trainer.lr=1e-6)")
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        first_line = str(error.msg).splitlines()[0]
        raise InputError(f"{source}: {first_line} (key: {error.full_key})") from None


def config_to_yaml(config: RewardMapConfig) -> str:
    """The resolved config as YAML, as saved in every run directory."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))
