"""Rollout engines: prompts and images in, n sampled completions per prompt out (transformers or vLLM)."""

from rewardmap.rollout.base import Completion, RolloutEngine, Sampling

__all__ = ["Completion", "RolloutEngine", "Sampling"]
