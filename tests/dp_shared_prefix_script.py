"""Test helper: under FSDP2, shared-prefix log-probs, entropy and gradients equal those of one sequence per completion.

`torchrun --nproc_per_node N tests/dp_shared_prefix_script.py MODEL_DIR OUT_DIR`: every rank shards the tiny policy
(fp32, gradient checkpointing), takes its own two prompts with an image each and three completions of different
lengths per prompt, and runs `completion_logprobs` with a backward both ways; rank 0 writes OUT_DIR/diffs.json (the
largest difference of log-probs, entropy and every whole gradient, and the number of gradients compared).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rewardmap.distributed import full_tensor, join_world, shard_model
from rewardmap.models.loading import load_policy, load_processor
from rewardmap.models.logprobs import build_prompt_inputs, completion_logprobs

N = 3
LENGTHS = [5, 2, 6, 1, 6, 3]


def logprobs_and_grads(model, batch, ids, mask, *, micro: int, group_size: int) -> tuple:
    """Log-probs, entropy and the whole gradient of every trainable parameter (gathered from FSDP2 shards) for a fixed
    weighted sum of both; completions are grouped evenly over the batch's prompts."""
    model.zero_grad(set_to_none=True)
    per_prompt = ids.shape[0] // batch["input_ids"].shape[0]
    logps, entropy = completion_logprobs(
        model,
        batch,
        ids,
        mask,
        micro_batch_size=micro,
        prompt_index=torch.arange(ids.shape[0]) // per_prompt,
        with_entropy=True,
        group_size=group_size,
    )
    weights = torch.linspace(-1.0, 1.0, logps.numel()).view_as(logps)
    ((logps * weights).sum() + 0.1 * entropy.sum()).backward()
    grads = {name: full_tensor(p.grad).clone() for name, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), entropy.detach(), grads


def main() -> None:
    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    with join_world() as world:
        model = load_policy(model_dir, device="cpu", dtype=torch.float32, gradient_checkpointing=True)
        shard_model(model, compute_dtype=torch.float32)
        processor = load_processor(model_dir, max_pixels=20_000)
        rng = np.random.default_rng(world.rank)
        images = [
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(280, 200), (140, 252)]
        ]
        questions = [f"How many stations does line {world.rank + 1} have?", "Route from A to B?"]
        batch = build_prompt_inputs(processor, questions, images)
        ids = torch.randint(0, 151_000, (2 * N, 6), generator=torch.Generator().manual_seed(world.rank))
        mask = torch.tensor([[1] * n + [0] * (6 - n) for n in LENGTHS])
        results = [logprobs_and_grads(model, batch, ids, mask, micro=2 * N, group_size=size) for size in (1, N)]
        (plain_logps, plain_entropy, plain_grads), (logps, entropy, grads) = results
        diffs = {
            "logps": (logps - plain_logps).abs().max().item(),
            "entropy": (entropy - plain_entropy).abs().max().item(),
            "grads": max((grads[name] - grad).abs().max().item() for name, grad in plain_grads.items()),
            "compared": len(plain_grads) if grads.keys() == plain_grads.keys() else -1,
        }
        worst = torch.tensor([diffs["logps"], diffs["entropy"]])  # each rank has its own log-probs
        torch.distributed.all_reduce(worst, op=torch.distributed.ReduceOp.MAX)
        diffs["logps"], diffs["entropy"] = worst.tolist()
        if world.is_main:
            (out / "diffs.json").write_text(json.dumps({**diffs, "world_size": world.size}))


if __name__ == "__main__":
    main()
