"""Rollouts with transformers `generate` on the training model itself (CPU, tests, small runs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from rewardmap.data.prompts import prompt_tensors
from rewardmap.errors import InputError
from rewardmap.rollout.base import Completion, Sampling, prompt_seed


class SampledLogprobs(LogitsProcessor):
    """Records the log-prob of each token `generate` picks, one step later, from the temperature-scaled scores.

    Only the last step's (B, V) distribution is kept, never every step's logits (at 2,048 tokens those are tens of GB).
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.previous: torch.Tensor | None = None
        self.picked: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:  # the token picked from the previous step's scores is now input_ids[:, -1]
            self.picked.append(self.previous.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        # Scores that are not finite (a policy gone NaN) are recorded as NaN log-probs, which the trainer reports as
        # a non-finite step; sampling goes on from finite stand-ins instead of failing in torch.multinomial.
        return scores if bool(torch.isfinite(scores).all()) else torch.nan_to_num(scores)

    def logprobs(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) log-probs of the generated tokens (B, L); the last one comes from the final step's scores."""
        if self.previous is not None and len(self.picked) < new_tokens.shape[1]:
            self.picked.append(self.previous.gather(-1, new_tokens[:, -1:]).squeeze(-1))
        return (
            torch.stack(self.picked, dim=1)
            if self.picked
            else new_tokens.new_zeros(new_tokens.shape, dtype=torch.float)
        )


class HFRolloutEngine:
    """Samples from the policy being trained; `sync_weights` has nothing to do since it shares the weights."""

    def __init__(self, model: torch.nn.Module, processor, batch_size: int = 8) -> None:
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = processor.tokenizer.pad_token_id

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            raise InputError("the HF rollout engine samples from the model it was built with; pass that model")

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
        # Sampling: one call per prompt under its own seed, so a prompt's samples do not depend on its batch-mates
        # (nor on the rank that drew it). Greedy answers depend on nothing: batch them.
        size = self.batch_size if sampling.temperature <= 0 else 1
        results: list[list[Completion]] = []
        with torch.random.fork_rng(devices=[self.model.device] if self.model.device.type == "cuda" else []):
            for start in range(0, len(prompts), size):
                torch.manual_seed(seeds[start])
                end = start + size
                results.extend(self._generate_batch(prompts[start:end], images[start:end], n, sampling))
        return results

    def _generate_batch(
        self, prompts: Sequence[str], images: Sequence[Image.Image], n: int, sampling: Sampling
    ) -> list[list[Completion]]:
        inputs = prompt_tensors(self.processor, prompts, images).to(self.model.device)
        greedy = sampling.temperature <= 0
        recorder = SampledLogprobs(1.0 if greedy else sampling.temperature)
        was_training = self.model.training
        self.model.eval()
        sequences = self.model.generate(
            **inputs,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else max(sampling.top_k, 0),  # 0 turns top-k off in transformers
            repetition_penalty=sampling.repetition_penalty,  # explicit: never the checkpoint's generation config
            max_new_tokens=sampling.max_tokens,
            num_return_sequences=n,
            logits_processor=LogitsProcessorList([recorder]),
            pad_token_id=self.pad_id,
            synced_gpus=dist.is_initialized() and dist.get_world_size() > 1,  # sharded weights: ranks step together
        )
        self.model.train(was_training)
        new_tokens = sequences[:, inputs["input_ids"].shape[1] :]
        token_logprobs = recorder.logprobs(new_tokens)
        completions = [
            self._completion(ids, lps) for ids, lps in zip(new_tokens.tolist(), token_logprobs.tolist(), strict=True)
        ]
        return [completions[i : i + n] for i in range(0, len(completions), n)]

    def _completion(self, ids: list[int], logprobs: list[float]) -> Completion:
        end = next((i + 1 for i, token in enumerate(ids) if token in self.eos_ids), None)
        kept = ids[:end] if end else ids
        text = self.processor.tokenizer.decode(kept, skip_special_tokens=True)
        return Completion(token_ids=kept, text=text, logprobs=logprobs[: len(kept)], finished=end is not None)
