"""Rollouts from a colocated, in-process vLLM engine, with the trainer's weights pushed in before every step.

vLLM is optional: this module is imported only when `rollout.engine=vllm`. The engine runs in the training process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so weights go in through `collective_rpc("reload_weights", ...)` as an
iterator of tensors, never through disk; sleep mode (GPU only) frees the engine's weights and KV cache while the
trainer runs (`sleep`), and the next sync wakes it.

In a `torchrun` world of N processes the engine joins the trainer's process group (vLLM's `external_launcher`):
`tensor_parallel_size` T consecutive ranks share one engine, so there are N / T engines. The ranks of a group gather
their prompts, each generates the group's whole list (the same requests and seeds on every rank, as vLLM's tensor
parallel needs) and keeps its own part. One process: a plain engine, nothing gathered.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from PIL import Image

from rewardmap.distributed import full_tensor
from rewardmap.errors import InputError
from rewardmap.rollout.base import Completion, Sampling, prompt_seed

logger = logging.getLogger(__name__)

VLLM_REQUIREMENT = "vllm>=0.32,<0.33"
"""The vLLM versions this engine is tested with (requirements.txt says the same)."""

# vLLM's start-up memory errors (a fragment of the message) -> the knob of this project that fixes each.
MEMORY_FIXES = {
    "less than desired": "lower rollout.gpu_memory_utilization: the trainer's weight shards, gradients and optimizer "
    "state already hold the rest of the device (or move them out with trainer.cpu_offload=true)",
    "KV cache is needed": "raise rollout.gpu_memory_utilization or lower rollout.max_model_len",
    "No available memory for the cache blocks": "raise rollout.gpu_memory_utilization: vLLM's weights and activations "
    "fill its whole share",
}


def policy_weights(model: torch.nn.Module, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights one whole tensor at a time under Hugging Face checkpoint names, in the engine's `dtype`
    (an FSDP2 shard is cast, then gathered when its turn comes: a collective every rank runs, never a whole state
    dict, half the bytes of fp32 for a bf16 engine); LoRA merged in, adapters left out."""
    if hasattr(model, "merge_adapter"):  # a peft model: merge, read, unmerge (no second copy of the weights)
        model.merge_adapter()
        try:
            base = model.get_base_model()
            for name, tensor in base.state_dict().items():
                if "lora_" in name:
                    continue
                yield name.replace(".base_layer.", "."), full_tensor(tensor.detach().to(dtype))
        finally:
            model.unmerge_adapter()
        return
    for name, tensor in model.state_dict().items():
        yield name, full_tensor(tensor.detach().to(dtype))


def _tallied(weights: Iterator[tuple[str, torch.Tensor]], tally: dict[str, int]) -> Iterator[tuple[str, torch.Tensor]]:
    """`weights` as they are, counting tensors and bytes into `tally` as they pass."""
    for name, tensor in weights:
        tally["tensors"] += 1
        tally["bytes"] += tensor.numel() * tensor.element_size()
        yield name, tensor


def check_vllm_version() -> None:
    """Refuses, before an engine is built, a vLLM whose model runner cannot take weights from memory
    (`reload_weights(weights_iterator=...)`, what every weight sync calls)."""
    import vllm
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner  # the CPU runner derives from it

    reload = getattr(GPUModelRunner, "reload_weights", None)
    if reload is None or "weights_iterator" not in inspect.signature(reload).parameters:
        raise InputError(
            f"vLLM {vllm.__version__} cannot take the trainer's weights in memory (its model runner has no "
            f"reload_weights(weights_iterator=...)); install the tested version: pip install '{VLLM_REQUIREMENT}'"
        )


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
        enable_chunked_prefill: bool | None = None,
        max_num_batched_tokens: int = 25600,
        max_model_len: int = 22048,
    ) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        check_vllm_version()
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
            options |= {"enable_sleep_mode": self.sleep_mode, "max_num_batched_tokens": max_num_batched_tokens}
            if enable_chunked_prefill is not None:  # else vLLM's own default (on), which it supports for this model
                options["enable_chunked_prefill"] = enable_chunked_prefill
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
        self.dtype = self.llm.llm_engine.model_config.dtype
        self.asleep = False
        self.syncs = 0

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Loads the trainer's current weights into the engine (`load_weights`)."""
        self.load_weights(policy_weights(model, self.dtype))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Loads whole tensors under Hugging Face names, in the engine's dtype, and drops caches computed with the old
        ones; wakes a sleeping engine (its weights memory first, then its KV cache once the new weights are in)."""
        start = time.perf_counter()
        if self.asleep:
            gc.collect()  # what the trainer's pass freed goes back to the device before vLLM reallocates
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])
        tally = {"tensors": 0, "bytes": 0}
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": _tallied(iter(weights), tally)})
        if self.asleep:
            self.llm.wake_up()  # the KV cache and the scheduler
            self.asleep = False
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.syncs += 1
        log = logger.info if self.syncs == 1 else logger.debug  # once at INFO, then at DEBUG
        seconds = time.perf_counter() - start
        log(
            "weight sync: %d tensors, %.1f MB of %s in %.2f s",
            tally["tensors"],
            tally["bytes"] / 1e6,
            self.dtype,
            seconds,
        )

    def sleep(self) -> None:
        """Frees the engine's device memory (sleep mode, on a GPU) until the next `sync_weights`: level 2 drops the
        weights as well as the KV cache, since the sync overwrites every weight anyway (level 1 would copy them to
        host memory and back for nothing)."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True

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
        assert not self.asleep, "a sleeping engine has no weights: sync_weights comes before generate"
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
        return [[self._completion(sample) for sample in request.outputs] for request in outputs]

    @staticmethod
    def _completion(sample) -> Completion:
        ids = list(sample.token_ids)
        logprobs = [entry[token].logprob for token, entry in zip(ids, sample.logprobs, strict=True)]
        return Completion(token_ids=ids, text=sample.text, logprobs=logprobs, finished=sample.finish_reason == "stop")
