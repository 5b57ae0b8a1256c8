"""Rollouts with transformers `generate` on the training model itself (CPU, tests, small runs)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutputWithPooling

from rewardmap.data.prompts import prompt_tensors
from rewardmap.errors import InputError
from rewardmap.rollout.base import Completion, Sampling, prompt_seed

BLOCK = 128
"""Vocabulary block of the two-level race in `TokenPicker` (151,936 = 1,187 x 128 for Qwen2.5)."""


def sample_seed(seed: int, index: int) -> int:
    """The noise seed of a prompt's sample `index`, from the prompt's seed alone (32 bits: torch's CPU generator)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint32)[0])


def race(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """(B,) index i of each row of `weights` (B, K) >= 0 with probability w_i / sum(w): argmax of w_i / E_i with E_i
    = -log(u_i) ~ Exp(1) (the exponential race, i.e. the Gumbel-max trick; https://arxiv.org/abs/1411.0030 sec. 2).
    A zero weight never wins; a u of 0 makes E infinite, never a NaN."""
    return (weights / uniforms.log().neg()).argmax(-1)


def keep_threshold(z: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor | None:
    """(B, 1) the lowest value of z (B, V) that top-k, then top-p (smallest set of most likely tokens whose mass
    reaches top_p, computed after top-k as transformers does) keep; None when neither filters. Ties are kept."""
    k = top_k if 0 < top_k < z.shape[-1] else z.shape[-1]
    if top_p >= 1.0:
        return None if k == z.shape[-1] else z.topk(k).values[:, -1:]
    top = z.topk(k).values  # (B, k), descending
    probs = top.softmax(-1)
    before = probs.cumsum(-1) - probs  # the mass of the more likely candidates
    kept = (before < top_p).sum(-1, keepdim=True).clamp(min=1)
    return top.gather(-1, kept - 1)


class TokenPicker(LogitsProcessor):
    """Picks every sequence's next token itself and records its log-prob; `generate` runs greedy and takes it.

    Greedy (temperature 0): the argmax, scores returned untouched. Sampling: temperature, top-k, top-p, then an
    exact draw from the filtered distribution by a two-level exponential race, first over blocks of BLOCK tokens
    (weights: the blocks' masses), then inside the chosen block: 1,315 uniforms a step for Qwen's vocabulary instead
    of one per token (151,936). The drawn token's score comes back +inf.
    Each sequence draws its uniforms from its own generator, seeded by `sample_seed`, one fixed-size draw per step: a
    sequence's tokens depend on its prompt's seed, its index and the step, never on its batch-mates. The race decides
    by comparing two candidates (not by a sum over the vocabulary, as an inverse CDF does), so a last-bit difference
    of the logits (another batch or padding) changes the token only when those two are within that difference.
    The recorded log-prob is log softmax(scores / temperature) at the token, before filtering (greedy: temperature 1).
    """

    def __init__(self, sampling: Sampling, seeds: Sequence[int], device: torch.device) -> None:
        self.greedy = sampling.temperature <= 0
        self.temperature = 1.0 if self.greedy else sampling.temperature
        self.top_k, self.top_p = sampling.top_k, sampling.top_p
        self.generators = [] if self.greedy else [torch.Generator(device).manual_seed(s) for s in seeds]
        self.rows = len(seeds)
        self.picked: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # Scores with a NaN (a policy gone NaN) give NaN log-probs, which the trainer reports as a non-finite step; the
        # token is then picked from finite stand-ins so that generation goes on.
        valid = not bool(scores.isnan().any())
        usable = scores if valid else torch.nan_to_num(scores)
        z = usable if self.temperature == 1.0 else usable / self.temperature
        peak = z.amax(-1, keepdim=True)
        e = torch.sub(z, peak).exp_()  # (B, V) unnormalized probabilities, one exp per logit
        log_total = peak.squeeze(-1) + e.sum(-1).log()
        token = usable.argmax(-1) if self.greedy else self._draw(z, e)
        logprob = z.gather(-1, token.unsqueeze(-1)).squeeze(-1) - log_total
        self.picked.append(logprob if valid else torch.full_like(logprob, torch.nan))
        return usable if self.greedy else usable.scatter_(-1, token.unsqueeze(-1), torch.inf)

    def _draw(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """(B,) tokens drawn with probability e (B, V) restricted to the top-k/top-p set of z; e is overwritten."""
        threshold = keep_threshold(z, self.top_k, self.top_p)
        if threshold is not None:
            e.masked_fill_(z < threshold, 0.0)
        padding = -e.shape[-1] % BLOCK
        blocks = (F.pad(e, (0, padding)) if padding else e).view(e.shape[0], -1, BLOCK)  # (B, blocks, BLOCK)
        uniforms = e.new_empty(e.shape[0], blocks.shape[1] + BLOCK)
        for row, generator in zip(uniforms, self.generators, strict=True):
            row.uniform_(generator=generator)
        block = race(blocks.sum(-1), uniforms[:, : blocks.shape[1]])
        inner = race(blocks[torch.arange(e.shape[0], device=e.device), block], uniforms[:, blocks.shape[1] :])
        return block * BLOCK + inner

    def logprobs(self, steps: int) -> torch.Tensor:
        """(B, steps) log-probs of the tokens of the first `steps` steps."""
        return torch.stack(self.picked[:steps], dim=1) if steps else torch.zeros(self.rows, 0)


class HFRolloutEngine:
    """Samples from the policy being trained; `sync_weights` has nothing to do since it shares the weights."""

    def __init__(self, model: torch.nn.Module, processor, batch_size: int = 8) -> None:
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = processor.tokenizer.pad_token_id

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            raise InputError("the HF rollout engine samples from the model it was built with; pass that model")

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copies whole tensors under Hugging Face names into the model it samples from."""
        state = self.model.state_dict()
        for name, tensor in weights:
            state[name].copy_(tensor)

    def sleep(self) -> None:
        """Nothing to free: the engine holds no memory of its own between rollouts."""

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        images: Sequence[Image.Image],
        n: int,
        sampling: Sampling,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        if len(prompts) != len(images):
            raise InputError(f"{len(prompts)} prompts but {len(images)} images: give one image per prompt")
        seeds = seeds if seeds is not None else [prompt_seed(sampling.seed, 0, i) for i in range(len(prompts))]
        results: list[list[Completion]] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = slice(start, start + self.batch_size)
            results.extend(self._generate_batch(prompts[batch], images[batch], n, sampling, seeds[batch]))
        return results

    def _generate_batch(
        self, prompts: Sequence[str], images: Sequence[Image.Image], n: int, sampling: Sampling, seeds: Sequence[int]
    ) -> list[list[Completion]]:
        inputs = prompt_tensors(self.processor, prompts, images).to(self.model.device)
        width = inputs["input_ids"].shape[1]
        picker = TokenPicker(sampling, [sample_seed(s, i) for s in seeds for i in range(n)], self.model.device)
        was_training = self.model.training
        self.model.eval()
        # Each map is encoded once and its features shared by the prompt's n sequences (generate's own expansion for
        # num_return_sequences does the same, but greedy generate refuses n > 1 and the picker needs greedy).
        features = self.model.get_image_features(
            inputs.pop("pixel_values"), inputs["image_grid_thw"], return_dict=True
        ).pooler_output
        sequences = self.model.generate(
            **{key: value.repeat_interleave(n, 0) for key, value in inputs.items()},
            mm_encoder_outputs={
                "image": BaseModelOutputWithPooling(pooler_output=[f for f in features for _ in range(n)])
            },
            do_sample=False,  # the picker has chosen the token; generate takes the argmax
            temperature=None,
            top_p=None,
            top_k=None,
            repetition_penalty=sampling.repetition_penalty,  # explicit: never the checkpoint's generation config
            max_new_tokens=sampling.max_tokens,
            logits_processor=LogitsProcessorList([picker]),
            pad_token_id=self.pad_id,
            synced_gpus=dist.is_initialized() and dist.get_world_size() > 1,  # sharded weights: ranks step together
        )
        self.model.train(was_training)
        new_tokens = sequences[:, width:]
        token_logprobs = picker.logprobs(new_tokens.shape[1])
        completions = [
            self._completion(ids, lps) for ids, lps in zip(new_tokens.tolist(), token_logprobs.tolist(), strict=True)
        ]
        return [completions[i : i + n] for i in range(0, len(completions), n)]

    def _completion(self, ids: list[int], logprobs: list[float]) -> Completion:
        end = next((i + 1 for i, token in enumerate(ids) if token in self.eos_ids), None)
        kept = ids[:end] if end else ids
        text = self.processor.tokenizer.decode(kept, skip_special_tokens=True)
        return Completion(token_ids=kept, text=text, logprobs=logprobs[: len(kept)], finished=end is not None)
