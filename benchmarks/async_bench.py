"""Rollouts that overlap training: GRPO steps with rollout.placement=separate at max_staleness 0 and 1, side by side.

Run: `python benchmarks/async_bench.py [--repeats 3] [--steps 5] [--tokens 96]` (about 20 minutes on 2 quiet cores). It
builds the tiny Qwen2.5-VL and a synthetic dataset in a temp dir, then runs `rewardmap train` on the demo config
(8 prompts x 4 answers, fp32, KL and entropy terms on) in a torchrun world of 2 processes, one rollout rank (the
transformers engine) and one trainer, each pinned to its own core with one thread, so that sampling and training can
really overlap on 2 cores; max_staleness 0 and 1 in turn, the order flipped each repeat. From each run's metrics, the
median over its steps after the first two (warm-up, the pipeline filling): the trainer's seconds per step, the rollout
rank's generation (+ reward) seconds, the trainer's own work (its step less its waits and the weight transfer) and the
transfer. Printed: those figures (median of the repeats), the ideal speed-up (gen + train) / max(gen, train) of
max_staleness 0's figures, the measured speed-up (k=0's step / k=1's) and its share of the ideal; then the model of
the recipe at 8 and 64 GPUs from those measured shares and the stated GPU assumptions (`--gen-share`).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rewardmap.models.tiny import build_tiny_model  # noqa: E402
from rewardmap.synth import generate_dataset  # noqa: E402

FIGURES = ("step", "gen", "train", "transfer", "trainer_wait")


def pinned_main(argv: list[str]) -> int:
    """A torchrun worker pinned to the core of its local rank, one thread, then `rewardmap` with `argv`."""
    import torch

    from rewardmap.cli import main

    os.sched_setaffinity(0, {int(os.environ["LOCAL_RANK"]) % os.cpu_count()})
    torch.set_num_threads(1)
    return main(argv)


def run(staleness: int, args: argparse.Namespace, model: Path, data: Path, out: Path) -> dict[str, float]:
    """One training run of max_staleness `staleness`; the medians of its figures over the steps after the second."""
    overrides = [
        f"model.path={model}",
        f"data.train_files={data}",
        f"trainer.output_dir={out}",
        f"data.image_cache_dir={out.parent / 'image_cache'}",
        f"data.max_response_length={args.tokens}",
        f"trainer.max_steps={args.steps}",
        "sft.steps=0",
        "trainer.save_freq=1000",
        "trainer.loggers=[jsonl]",
        "trainer.log_samples=0",
        "rollout.placement=separate",
        "rollout.ranks=1",
        f"rollout.max_staleness={staleness}",
    ]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        __file__,
        "--pinned",
        "--log-level",
        "WARNING",
        "train",
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        *overrides,
    ]
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run(
            command, check=True, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][2:]
    per_step = {
        "step": [m["timing/step_s"] for m in steps],
        "gen": [m["rollout/generate_s"] + m["rollout/reward_s"] for m in steps],
        "transfer": [m.get("timing/weight_transfer_s", 0.0) for m in steps],
        "trainer_wait": [m["timing/trainer_wait_s"] for m in steps],
        "train": [
            m["timing/step_s"] - m["timing/trainer_wait_s"] - m.get("timing/weight_transfer_s", 0.0) for m in steps
        ],
    }
    return {name: statistics.median(values) for name, values in per_step.items()}


def recipe_model(args: argparse.Namespace, efficiency: float) -> list[tuple[str, float, float]]:
    """(layout, seconds per step at max_staleness 0, at 1) of the recipe at 8 and 64 GPUs, in units of a colocated
    8-GPU step (1.0), which is args.gen_share generation (of which args.tail does not shrink with more GPUs: the
    longest answers' decoding), args.overhead colocation cost (vLLM wake, sleep and weight sync) and training (the
    rest); both other parts scale with the GPUs that run them. A separate layout pays args.transfer instead of the
    overhead, and overlaps its two parts with the `efficiency` measured on CPU (share of the ideal gain)."""
    rows = []
    for gpus in (8, 64):
        gen, train = generation_s(args, gpus), training_s(args, gpus)
        rows.append((f"colocated, {gpus} GPUs", gen + train + args.overhead, gen + train + args.overhead))
        layouts = {r: separate_step_s(args, efficiency, r, gpus - r) for r in range(1, gpus)}
        best = min(layouts, key=lambda rollout: layouts[rollout][1])
        for rollout in sorted({gpus // 4, gpus // 2, 3 * gpus // 4, best}):
            mark = " (best)" if rollout == best else ""
            rows.append((f"{rollout} rollout + {gpus - rollout} train{mark}", *layouts[rollout]))
    return rows


def generation_s(args: argparse.Namespace, gpus: int) -> float:
    """The model's generation time on `gpus` GPUs: the part that divides over engines, plus the tail."""
    return args.gen_share * (1 - args.tail) * 8 / gpus + args.gen_share * args.tail


def training_s(args: argparse.Namespace, gpus: int) -> float:
    """The model's training time on `gpus` GPUs."""
    return (1 - args.gen_share - args.overhead) * 8 / gpus


def separate_step_s(args: argparse.Namespace, efficiency: float, rollout: int, train: int) -> tuple[float, float]:
    """The model's step of a separate layout at max_staleness 0 (one part after the other) and 1 (overlapped)."""
    gen_s, train_s = generation_s(args, rollout), training_s(args, train)
    ideal = (gen_s + train_s) / max(gen_s, train_s)
    return gen_s + train_s + args.transfer, (gen_s + train_s) / (1 + efficiency * (ideal - 1)) + args.transfer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each max_staleness (median taken)")
    parser.add_argument("--steps", type=int, default=5, help="GRPO steps per run (the first two are not counted)")
    parser.add_argument(
        "--tokens",
        type=int,
        default=96,
        help="data.max_response_length of the rollouts (96: generation about a third of training on 2 CPU cores)",
    )
    model = parser.add_argument_group("the recipe model's GPU assumptions (shares of a colocated 8-GPU step)")
    model.add_argument("--gen-share", type=float, default=0.6, help="generation, incl. its tail (default 0.6)")
    model.add_argument(
        "--tail", type=float, default=0.3, help="of generation, the part more GPUs do not shorten (default 0.3)"
    )
    model.add_argument(
        "--overhead", type=float, default=0.05, help="vLLM wake + sleep + weight sync, colocated only (default 0.05)"
    )
    model.add_argument(
        "--transfer", type=float, default=0.01, help="the weight transfer, separate only (default 0.01: 15 GB bf16)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_tiny_model(work / "model", seed=0)
        data = generate_dataset(work / "data", cities=3, seed=0)
        results: dict[int, list[dict]] = {0: [], 1: []}
        for repeat in range(args.repeats):
            for staleness in (0, 1) if repeat % 2 == 0 else (1, 0):
                print(f"repeat {repeat + 1}: max_staleness={staleness}", flush=True)
                results[staleness].append(run(staleness, args, model, data, work / f"k{staleness}_{repeat}"))
    medians = {k: {name: statistics.median(r[name] for r in runs) for name in FIGURES} for k, runs in results.items()}
    print(f"\n{'seconds (median)':<22}" + "".join(f"{name:>14}" for name in FIGURES))
    for k, figures in medians.items():
        print(f"{f'max_staleness={k}':<22}" + "".join(f"{figures[name]:>14.3f}" for name in FIGURES))
    gen, train = medians[0]["gen"], medians[0]["train"]
    ideal = (gen + train) / max(gen, train)
    measured = medians[0]["step"] / medians[1]["step"]
    print(f"\nideal speed-up (gen + train) / max(gen, train): {ideal:.2f}x")
    print(
        f"measured speed-up k=0 / k=1: {measured:.2f}x = {(measured - 1) / (ideal - 1):.0%} of the ideal gain, "
        f"{measured / ideal:.0%} of the ideal speed-up"
    )
    efficiency = min(1.0, (measured - 1) / (ideal - 1))  # above 1 is the noise of the machine
    print(
        f"\nrecipe model (seconds per step, colocated 8 GPUs = 1.00: generation {args.gen_share:.0%}, {args.tail:.0%} "
        f"of it a tail; colocation overhead {args.overhead:.0%}; transfer {args.transfer:.0%}; overlap "
        f"{efficiency:.0%} of the ideal gain, as measured, at most 100%):"
    )
    print(f"{'layout':<34}{'k=0':>8}{'k=1':>8}")
    for layout, k0, k1 in recipe_model(args, efficiency):
        print(f"{layout:<34}{k0:>8.2f}{k1:>8.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--pinned"]:
        sys.exit(pinned_main(sys.argv[2:]))
    main()
