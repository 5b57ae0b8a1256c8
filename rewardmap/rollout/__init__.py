"""Rollout engines: prompts and images in, n sampled completions per prompt out (transformers or vLLM)."""

from rewardmap.rollout.base import Completion, RolloutEngine, Sampling, prompt_seed

__all__ = ["Completion", "RolloutEngine", "Sampling", "prompt_seed"]
