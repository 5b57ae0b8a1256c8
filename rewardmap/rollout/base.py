"""The RolloutEngine protocol both engines implement, and the values it passes around."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Sampling:
    """How to sample one call's completions."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    """Divides a positive logit (multiplies a negative one) of every token already in the prompt or the completion, as
    transformers and vLLM do; 1.0 is off."""
    seed: int = 0


VLLM_DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
"""The project's dtype names (model.dtype, --dtype) as vLLM spells them."""


def prompt_seed(seed: int, step: int, index: int) -> int:
    """The sampling seed of the prompt at `index` of a step's global batch: the same whichever rank draws it."""
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1, dtype=np.uint32)[0])


@dataclass
class Completion:
    """One sampled completion: its token ids (up to and including EOS), text and per-token log-probs."""

    token_ids: list[int]
    text: str
    logprobs: list[float]
    finished: bool
    """True when it ended with an end-of-sequence token, False when it hit max_tokens."""


class RolloutEngine(Protocol):
    """Samples completions for rendered prompts (chat template applied) with one image each."""

    dtype: torch.dtype
    """The dtype it computes in (and loads weights in)."""

    def generate(
        self,
        prompts: Sequence[str],
        images: Sequence[Image.Image],
        n: int,
        sampling: Sampling,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """n completions for each prompt, in prompt order. Prompt i samples with `seeds[i]` (default:
        `prompt_seed(sampling.seed, 0, i)`), so its samples do not depend on the other prompts of the call."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from `model`'s current weights (and wake it, if it sleeps)."""
        ...

    def sleep(self) -> None:
        """Free what the engine holds on the device until the next `sync_weights` (the trainer's passes need it)."""
        ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Make the engine sample from these whole tensors (Hugging Face names, the engine's `dtype`), as they come:
        what a rollout rank of a separate placement receives from the trainers."""
        ...
