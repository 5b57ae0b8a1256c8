"""Rollout engines: prompts and images in, n sampled completions per prompt out (transformers or vLLM)."""

from __future__ import annotations

import torch

from rewardmap.rollout.base import VLLM_DTYPES, Completion, RolloutEngine, Sampling, prompt_seed

__all__ = ["VLLM_DTYPES", "Completion", "RolloutEngine", "Sampling", "build_engine", "prompt_seed"]


def build_engine(
    kind: str,
    processor: object,
    *,
    model: torch.nn.Module | None = None,
    model_path: str | None = None,
    batch_size: int = 8,
    vllm_options: dict | None = None,
) -> RolloutEngine:
    """The one engine factory: `hf` samples from `model` itself, `vllm` runs an engine on `model_path` built with
    `vllm_options` (VLLMRolloutEngine's keywords). vLLM is imported only when asked for."""
    if kind == "vllm":
        from rewardmap.rollout.vllm import VLLMRolloutEngine

        return VLLMRolloutEngine(str(model_path), **(vllm_options or {}))
    from rewardmap.rollout.hf import HFRolloutEngine

    return HFRolloutEngine(model, processor, batch_size=batch_size)
