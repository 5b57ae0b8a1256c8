"""Worker of tests/test_startup.py (run under torchrun): build a run's policy and reference one way, then measure.

`python startup_script.py MODE MODEL_DIR OUT`: MODE `whole` is the start-up before rank-0 loading (every rank loads the
policy and an fp32 reference whole, then shards them); `rank0` is `load_models` (rank 0 reads the checkpoint, the
others build on the meta device and receive their shards). Each rank writes OUT/MODE-RANK.json: its peak RSS growth
during set-up, a SHA-256 of every whole weight, whether the reference left every unit resharded after a forward, and
a step on a fixed batch (loss, reference log-probs, the backend's gradient norm and the fp64 per-parameter sum it
replaced, the weights after the step).
"""

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from rewardmap.config import load_config
from rewardmap.distributed import full_tensor, join_world, local, shard_model
from rewardmap.grpo.backend import FSDP2Backend
from rewardmap.grpo.setup import load_models
from rewardmap.models.loading import load_policy, load_reference
from rewardmap.models.logprobs import completion_logprobs

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
PROMPT = {
    "input_ids": torch.tensor([[151644, 872, 198, 9707, 1879, 151645, 198, 151644, 77091, 198]]),
    "attention_mask": torch.ones(1, 10, dtype=torch.long),
}
COMPLETION = torch.tensor([[9707, 1879, 151645]])


def rss_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: now, VmHWM: the peak since the last reset)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def digests(model: torch.nn.Module) -> dict[str, str]:
    """SHA-256 of every whole weight and buffer (collective: gathers each shard)."""
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {
        name: hashlib.sha256(full_tensor(t.detach()).float().numpy().tobytes()).hexdigest()
        for name, t in state.items()
    }


def build(mode: str, config, world) -> tuple[torch.nn.Module, torch.nn.Module]:
    if mode == "rank0":
        return load_models(config, world, {"text": "sdpa", "vision": "sdpa"})
    policy = load_policy(config.model.path, device="cpu", dtype=torch.float32, attn_implementation="sdpa")
    reference = load_reference(config.model.path, device="cpu", dtype=torch.float32, attn_implementation="sdpa")
    shard_model(reference, compute_dtype=torch.bfloat16)
    return shard_model(policy, compute_dtype=torch.bfloat16), reference


def main(mode: str, model_dir: str, out: str) -> None:
    config = load_config(DEMO, [f"model.path={model_dir}", "model.dtype=bf16", "model.gradient_checkpointing=false"])
    with join_world() as world:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS
        before = rss_kib("VmRSS")
        policy, reference = build(mode, config, world)
        dist.barrier()
        growth = rss_kib("VmHWM") - before
        weights = {"policy": digests(policy), "reference": digests(reference)}
        with torch.no_grad():
            ref_logprobs, _ = completion_logprobs(
                reference, PROMPT, COMPLETION, torch.ones_like(COMPLETION), micro_batch_size=1
            )
        resharded = all(isinstance(p, DTensor) for p in reference.parameters())
        backend = FSDP2Backend(policy, config, world)
        logprobs, _ = completion_logprobs(policy, PROMPT, COMPLETION, torch.ones_like(COMPLETION), micro_batch_size=1)
        loss = -logprobs.sum() * (world.rank + 1)  # a different loss per rank: the gradients are summed
        backend.backward(loss)
        grads = [local(p.grad) for p in policy.parameters() if p.grad is not None]
        per_parameter = torch.tensor([sum(float(g.double().square().sum()) for g in grads)], dtype=torch.float64)
        dist.all_reduce(per_parameter)  # the norm as the backend summed it before: a float() per parameter
        grad_norm = backend.step(max_grad_norm=1e9)
        result = {
            "rss_growth_kib": growth,
            "weights": weights,
            "reference_resharded": resharded,
            "loss": loss.item(),
            "ref_logprobs": ref_logprobs.tolist(),
            "grad_norm": grad_norm,
            "grad_norm_per_parameter_sum": per_parameter.item() ** 0.5,
            "weights_after_step": digests(policy),
        }
        Path(out, f"{mode}-{world.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
