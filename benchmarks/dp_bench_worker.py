"""One world of `dp_bench.py`: GRPO steps of the trainer in every process of a `torchrun` world, results to JSON.

Run by `dp_bench.py` as `torchrun --standalone --nproc_per_node N benchmarks/dp_bench_worker.py --model-dir ...`.
The main rank writes `result.json` (per-rank phase seconds and sequence counts of each step, the first step's loss,
grad norm and sampled token ids) and `weights.pt` (the full weights before and after the first step, and the step's
gradients before clipping). With --compare it instead times batches' steps under two placements in turn, today's
(contiguous shares, --micro-batch-size) and balanced shares with --budget-token passes, and writes `result.json`
(per batch, placement and repeat, each rank's phase seconds and the step's balance and batch metrics).
"""

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rewardmap.config import load_config  # noqa: E402
from rewardmap.distributed import World, all_gather_lists, full_tensor, join_world  # noqa: E402
from rewardmap.grpo.trainer import GRPOTrainer  # noqa: E402

PHASES = ("rollout", "reward", "ref_logprobs", "update", "step")
PLACEMENT = (
    "balance/max_over_mean",
    "balance/lockstep_over_mean",
    "balance/rollout_max_over_mean",
    "batch/micro_batches_per_rank",
    "batch/padding_fraction",
)


def overrides(args: argparse.Namespace) -> list[str]:
    """The demo config with the benchmark's workload: fixed batch, fixed response length, fp32."""
    return [
        f"model.path={args.model_dir}",
        f"data.train_files={args.data_dir}",
        f"trainer.output_dir={args.out_dir / 'run'}",
        f"data.image_cache_dir={args.out_dir / 'image_cache'}",
        f"data.prompts_per_step={args.prompts}",
        f"rollout.n={args.rollouts}",
        f"data.max_response_length={args.tokens}",
        f"data.max_pixels={args.max_pixels}",
        f"trainer.micro_batch_size={args.micro_batch_size}",
        "model.dtype=fp32",
        "sft.steps=0",
        "trainer.loggers=[jsonl]",
    ]


def full_weights(model: torch.nn.Module, grad: bool = False) -> dict[str, torch.Tensor]:
    """Every parameter (or its gradient) whole, on the CPU (collective: each rank gathers every shard)."""
    tensors = {name: p.grad if grad else p.detach() for name, p in model.named_parameters()}
    return {name: full_tensor(t).cpu().clone() for name, t in tensors.items() if t is not None}


def run(args: argparse.Namespace, world: World) -> None:
    """Builds the trainer, runs args.steps steps recording what each rank sampled and the first step's gradients."""
    trainer = GRPOTrainer(load_config(REPO / "configs" / "demo.yaml", overrides(args)), world)
    parts = trainer.parts
    # Every completion is exactly --tokens long, so both worlds do the same work whatever they sample.
    parts.model.generation_config.min_new_tokens = args.tokens
    sampled: list[list[int]] = []
    generate = parts.engine.generate

    def recording_generate(*a, **kw):
        groups = generate(*a, **kw)
        sampled.extend(c.token_ids for group in groups for c in group)
        return groups

    parts.engine.generate = recording_generate
    grads: dict[str, torch.Tensor] = {}
    optimizer_step = parts.backend.step

    def recording_step(max_grad_norm: float) -> float:
        if not grads:  # the first step's gradients, whole, before clipping
            grads.update(full_weights(parts.model, grad=True))
        return optimizer_step(max_grad_norm)

    parts.backend.step = recording_step
    before = full_weights(parts.model)
    steps, first = [], {}
    for step in range(args.steps):
        stage, indices = parts.stream.next_batch()
        sampled.clear()
        start = time.perf_counter()
        metrics = trainer.step(stage, indices)
        wall = time.perf_counter() - start
        trainer.step_count += 1
        mine = {f"{p}_s": metrics.get(f"timing/{p}_s", 0.0) for p in PHASES}
        mine |= {"wall_s": wall, "generated": len(sampled), "tokens": sum(map(len, sampled))}
        mine["trained"] = metrics["batch/sequences_per_rank"]
        steps.append(all_gather_lists([mine]))
        if step == 0:
            first = {
                "loss": metrics["loss/total"],
                "grad_norm": metrics["optim/grad_norm"],
                "reward_mean": metrics["reward/mean"],
                "indices": indices,
                "token_ids": all_gather_lists(list(sampled)),
            }
            after = full_weights(parts.model)
    if world.is_main:
        threads = torch.get_num_threads()
        result = {"world_size": world.size, "threads_per_rank": threads, "steps": steps, "first": first}
        (args.out_dir / "result.json").write_text(json.dumps(result))
        torch.save({"before": before, "grads": grads, "after": after}, args.out_dir / "weights.pt")


def compare(args: argparse.Namespace, world: World) -> None:
    """The step of each of the stream's first --batches batches under today's placement and the balanced token-budget
    one, in turn (the order flips each repeat; one warm-up repeat first), every completion --tokens long; with
    --largest-first also batch 1 sorted by prompt length (today's contiguous shares at their most uneven)."""
    trainer = GRPOTrainer(load_config(REPO / "configs" / "demo.yaml", overrides(args)), world)
    parts = trainer.parts
    parts.model.generation_config.min_new_tokens = args.tokens
    batches = {f"batch {k + 1}": parts.stream.next_batch() for k in range(args.batches)}
    tokens = {name: parts.prompt_tokens([parts.rows[i] for i in indices]) for name, (_, indices) in batches.items()}
    if args.largest_first:
        stage, indices = batches["batch 1"]
        order = sorted(zip(tokens["batch 1"], indices, strict=True), key=lambda pair: -pair[0])
        batches["batch 1, largest maps first"] = (stage, [i for _, i in order])
    # the budget a fixed micro-batch is sized by: the largest group (a forward row: the prompt, then its group_size
    # completions)
    rows = args.rollouts // trainer.group_size
    largest = max(max(sizes) for sizes in tokens.values())
    budget = args.budget or rows * (largest + trainer.group_size * args.tokens)
    base = trainer.config
    sides = {
        "today": replace(base.trainer, balance_batch=False, micro_batch_tokens=None),
        "balanced": replace(base.trainer, balance_batch=True, micro_batch_tokens=budget),
    }
    runs: dict[str, dict] = {batch: {name: [] for name in sides} for batch in batches}
    for batch, (stage, rows_of_batch) in batches.items():
        for repeat in range(args.repeats + 1):
            for name in list(sides)[:: 1 if repeat % 2 else -1]:
                trainer.config = replace(base, trainer=sides[name])
                start = time.perf_counter()
                metrics = trainer.step(stage, rows_of_batch)
                mine = {f"{p}_s": metrics.get(f"timing/{p}_s", 0.0) for p in PHASES}
                mine |= {"wall_s": time.perf_counter() - start} | {key: metrics[key] for key in PLACEMENT}
                ranks = all_gather_lists([mine])
                if repeat:  # the first repeat warms up
                    runs[batch][name].append(ranks)
    if world.is_main:
        result = {"world_size": world.size, "budget": budget, "prompt_tokens": tokens, "runs": runs}
        (args.out_dir / "result.json").write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="the tiny model's directory")
    parser.add_argument("--data-dir", type=Path, required=True, help="the synthetic dataset's directory")
    parser.add_argument("--out-dir", type=Path, required=True, help="where result.json and weights.pt go")
    parser.add_argument("--steps", type=int, default=2, help="GRPO steps (the first from the initial weights)")
    parser.add_argument("--prompts", type=int, default=8, help="data.prompts_per_step (whole world)")
    parser.add_argument("--rollouts", type=int, default=4, help="rollout.n")
    parser.add_argument("--tokens", type=int, default=24, help="response tokens (EOS suppressed until then)")
    parser.add_argument("--max-pixels", type=int, default=50176, help="data.max_pixels")
    parser.add_argument("--micro-batch-size", type=int, default=4, help="trainer.micro_batch_size")
    parser.add_argument("--compare", action="store_true", help="compare placements instead (see the docstring)")
    parser.add_argument("--budget", type=int, default=0, help="micro_batch_tokens (0: the batches' largest group)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per placement (--compare)")
    parser.add_argument("--batches", type=int, default=1, help="the stream's first batches compared (--compare)")
    parser.add_argument("--largest-first", action="store_true", help="also batch 1 sorted by size (--compare)")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with join_world() as world:
        (compare if args.compare else run)(args, world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
