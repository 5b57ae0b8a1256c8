"""Rollouts from a colocated, in-process vLLM engine, with the trainer's weights pushed in before every step.

vLLM is optional: this module is imported only when `rollout.engine=vllm`. The engine runs in the training process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so weights go in through `collective_rpc("reload_weights", ...)` as an
iterator of tensors, never through disk; sleep mode frees the KV cache while the trainer updates (GPU only).

In a `torchrun` world of N processes the engine joins the trainer's process group (vLLM's `external_launcher`):
`tensor_parallel_size` T consecutive ranks share one engine, so there are N / T engines. The ranks of a group gather
their prompts, each generates the group's whole list (the same requests and seeds on every rank, as vLLM's tensor
parallel needs) and keeps its own part. One process: a plain engine, nothing gathered.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from PIL import Image

from rewardmap.distributed import full_tensor
from rewardmap.errors import InputError
from rewardmap.rollout.base import Completion, Sampling, prompt_seed

logger = logging.getLogger(__name__)

# vLLM's start-up memory errors (a fragment of the message) -> the knob of this project that fixes each.
MEMORY_FIXES = {
    "less than desired": "lower rollout.gpu_memory_utilization: the trainer's weight shards, gradients and optimizer "
    "state already hold the rest of the device (or move them out with trainer.cpu_offload=true)",
    "KV cache is needed": "raise rollout.gpu_memory_utilization or lower rollout.max_model_len",
    "No available memory for the cache blocks": "raise rollout.gpu_memory_utilization: vLLM's weights and activations "
    "fill its whole share",
}


def policy_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights one whole tensor at a time under Hugging Face checkpoint names (an FSDP2 shard is gathered
    when its turn comes: a collective every rank runs, never a whole state dict); LoRA merged in, adapters left out."""
    if hasattr(model, "merge_adapter"):  # a peft model: merge, read, unmerge (no second copy of the weights)
        model.merge_adapter()
        try:
            base = model.get_base_model()
            for name, tensor in base.state_dict().items():
                if "lora_" in name:
                    continue
                yield name.replace(".base_layer.", "."), full_tensor(tensor.detach())
        finally:
            model.unmerge_adapter()
        return
    for name, tensor in model.state_dict().items():
        yield name, full_tensor(tensor.detach())


def tensor_parallel_group(size: int) -> dist.ProcessGroup | None:
    """This rank's group of `size` consecutive ranks, the ranks vLLM shards one engine over (collective: every rank
    calls it); None when there is nothing to gather (a world of one, or `size` 1)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    if size == 1 or world == 1:
        return None
    ranks = [list(range(start, start + size)) for start in range(0, world, size)]
    group, _ = dist.new_subgroups_by_enumeration(ranks, backend="gloo")  # gloo: prompts and images are CPU objects
    return group


def _physical_memory() -> int:
    """Bytes of RAM on this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class VLLMRolloutEngine:
    """A `RolloutEngine` over `vllm.LLM`: n samples per prompt with token ids, text and sampled-token log-probs."""

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "auto",
        seed: int = 0,
        min_pixels: int = 3136,
        max_pixels: int = 12845056,
        gpu_memory_utilization: float = 0.6,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        enable_sleep_mode: bool = False,
        enable_chunked_prefill: bool = False,
        max_num_batched_tokens: int = 25600,
        max_model_len: int = 22048,
    ) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        on_gpu = torch.cuda.is_available()
        self.sleep_mode = enable_sleep_mode and on_gpu
        options = {"tensor_parallel_size": tensor_parallel_size}
        in_world = dist.is_initialized()  # the trainer's process group, which vLLM then uses instead of its own
        if in_world and dist.get_world_size() > 1:
            # Join the trainer's world (ranks, devices) instead of starting worker processes of its own.
            options["distributed_executor_backend"] = "external_launcher"
        self.group = tensor_parallel_group(tensor_parallel_size)
        if on_gpu:
            options |= {
                "enable_sleep_mode": self.sleep_mode,
                "enable_chunked_prefill": enable_chunked_prefill,
                "max_num_batched_tokens": max_num_batched_tokens,
            }
        else:  # vLLM-CPU would subtract the whole process's RSS (the trainer's models) from the fraction and fail
            options["kv_cache_memory_bytes"] = int(gpu_memory_utilization * _physical_memory())
        try:
            self.llm = LLM(
                model=model_path,
                dtype=dtype,
                seed=seed,
                max_model_len=max_model_len,
                enforce_eager=enforce_eager or not on_gpu,
                limit_mm_per_prompt={"image": 1},
                mm_processor_kwargs={"min_pixels": min_pixels, "max_pixels": max_pixels},
                trust_remote_code=False,
                gpu_memory_utilization=gpu_memory_utilization,  # on CPU: the fraction of RAM for the KV cache
                logprobs_mode="processed_logprobs",  # log-probs of the temperature-scaled distribution, as trained
                **options,
            )
        except ValueError as error:
            fix = next((fix for fragment, fix in MEMORY_FIXES.items() if fragment in str(error)), None)
            if fix is None:
                raise
            raise InputError(
                f"vLLM cannot fit in rollout.gpu_memory_utilization={gpu_memory_utilization} with "
                f"rollout.max_model_len={max_model_len}: {fix} (vLLM: {str(error).splitlines()[0]})"
            ) from error
        if in_world:
            # vLLM's exit handler would destroy the process group, which the trainer owns and destroys (with vLLM's
            # subgroups) when it leaves the world; run after that, the handler fails on the groups already gone.
            self.llm.llm_engine.engine_core._finalizer.detach()
        self.asleep = False

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Loads the trainer's current weights into the engine and drops caches computed with the old ones."""
        self._wake()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": policy_weights(model)})
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()

    def generate(
        self,
        prompts: Sequence[str],
        images: Sequence[Image.Image],
        n: int,
        sampling: Sampling,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        if len(prompts) != len(images):
            raise InputError(f"{len(prompts)} prompts but {len(images)} images: give one image per prompt")
        self._wake()
        # One seed per prompt (vLLM seeds each request alone): a shared seed would give every prompt the same noise.
        seeds = seeds if seeds is not None else [prompt_seed(sampling.seed, 0, i) for i in range(len(prompts))]
        params = [
            SamplingParams(
                n=n,
                temperature=max(sampling.temperature, 0.0),
                top_p=sampling.top_p,
                top_k=sampling.top_k if sampling.top_k > 0 else -1,
                repetition_penalty=sampling.repetition_penalty,
                max_tokens=sampling.max_tokens,
                seed=seed,
                logprobs=0,
            )
            for seed in seeds
        ]
        pairs = zip(prompts, images, strict=True)
        requests = [{"prompt": p, "multi_modal_data": {"image": image}} for p, image in pairs]
        mine = slice(0, len(requests))
        if self.group is not None:  # the group's requests, in rank order, on every rank of the group
            parts: list[list | None] = [None] * dist.get_world_size(self.group)
            dist.all_gather_object(parts, list(zip(requests, params, strict=True)), group=self.group)
            start = sum(len(part) for part in parts[: dist.get_rank(self.group)])
            mine = slice(start, start + len(requests))
            requests, params = zip(*[pair for part in parts for pair in part], strict=True)
        outputs = self.llm.generate(list(requests), list(params), use_tqdm=False)[mine]
        if self.sleep_mode:  # free the KV cache for the update; weights are re-synced before the next rollout
            self.llm.sleep(level=1)
            self.asleep = True
        return [[self._completion(sample) for sample in request.outputs] for request in outputs]

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    @staticmethod
    def _completion(sample) -> Completion:
        ids = list(sample.token_ids)
        logprobs = [entry[token].logprob for token, entry in zip(ids, sample.logprobs, strict=True)]
        return Completion(token_ids=ids, text=sample.text, logprobs=logprobs, finished=sample.finish_reason == "stop")
