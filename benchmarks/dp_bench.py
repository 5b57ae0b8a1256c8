"""Data-parallel benchmark: the same GRPO step (8 prompts x 4 rollouts) with world size 1 and 2 on CPU, side by side.

Run: `python benchmarks/dp_bench.py [--tokens 16] [--steps 2]` (about 5 minutes on 2 quiet cores). It builds the tiny
Qwen2.5-VL and a synthetic dataset in a temp dir, then runs `dp_bench_worker.py` under `torchrun --standalone
--nproc_per_node N` (gloo) for N = 1 and N = 2, one after the other, each process with OMP_NUM_THREADS = cores / N, so
both worlds use the same cores. Both start from the same weights and take the same curriculum batch; each rank trains
prompts / N prompts x n rollouts (fp32, KL and entropy terms on, EOS suppressed so every response has exactly --tokens
tokens). Printed: sequences generated and trained per rank, seconds per phase (the slowest rank's, median over the
steps after the first, which warms up), and how far world size 2's first update lands from world size 1's: whether
both sampled the same tokens (per-prompt seeds should make them), the loss, the gradients (gathered whole just before
the optimizer step), the grad norm (the trainer's fp32 one, and fp64 from those gradients) and the updated weights,
each beside its scale. On a shared machine the seconds are noisy.

`python benchmarks/dp_bench.py --mixed [--repeats 3] [--batches 3]` (about 15 minutes on 2 quiet cores) instead
compares placements in one 2-process world per dataset: maps of three sizes (--max-pixels, 1/4 and 1/16 of it: 16x in
visual tokens between the smallest and the largest, 1,024 to 64, so that the map, not the ~70 text tokens, sets a
prompt's size, as in ReasonMap, whose maps are 576 to 16,482 visual tokens beside ~200 of text), then maps of one size.
In each world the steps of the stream's first --batches batches (equal sizes: the first) run under today's placement
(contiguous shares, --micro-batch-size sequences a pass) and balanced shares with passes of at most --budget tokens
(default: the largest group, what a fixed micro-batch is sized for), in turn (the order flips each repeat, one warm-up
repeat first); on mixed sizes also batch 1 sorted largest first. Printed: the slowest rank's seconds of the reference
pass, the update, the rollout and the whole step, median of --repeats, their ratios (also of the stream batches'
medians summed), and the placement metrics of each step.
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

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rewardmap.models.tiny import build_tiny_model  # noqa: E402
from rewardmap.synth import generate_dataset  # noqa: E402

WORKER = Path(__file__).resolve().parent / "dp_bench_worker.py"
PHASES = ("rollout", "reward", "ref_logprobs", "update", "step", "wall")
WORLD_SIZES = (1, 2)
COMPARED = ("ref_logprobs", "update", "rollout", "wall")
PLACEMENT_KEYS = (
    "balance/max_over_mean",
    "balance/lockstep_over_mean",
    "balance/rollout_max_over_mean",
    "batch/micro_batches_per_rank",
    "batch/padding_fraction",
)


def run_worker(name: str, world_size: int, extra: list[str], args: argparse.Namespace, work: Path) -> dict:
    """Runs the worker with `extra` options in a torchrun world of `world_size` processes, its output in work/`name`
    (and its log in work/`name`.log); returns its result.json."""
    out = work / name
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={world_size}",
        str(WORKER),
        *extra,
        f"--model-dir={work / 'model'}",
        f"--out-dir={out}",
        f"--prompts={args.prompts}",
        f"--rollouts={args.n}",
        f"--tokens={args.tokens}",
        f"--max-pixels={args.max_pixels}",
        f"--micro-batch-size={args.micro_batch_size}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.cores // world_size)), "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    (work / f"{name}.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        sys.stderr.write((done.stdout + done.stderr)[-6000:])
        raise RuntimeError(f"{name} failed (exit {done.returncode}); its log's tail is above")
    return json.loads((out / "result.json").read_text())


def launch(world_size: int, args: argparse.Namespace, work: Path) -> dict:
    """Runs the worker in a torchrun world of `world_size` processes; returns its result.json."""
    print(f"world size {world_size}: running {args.steps} step(s) ...", file=sys.stderr, flush=True)
    extra = [f"--data-dir={work / 'data'}", f"--steps={args.steps}"]
    return run_worker(f"world{world_size}", world_size, extra, args, work)


def phase_seconds(result: dict) -> dict[str, float]:
    """Per phase, the slowest rank's seconds; median over the steps after the first (or the only step)."""
    steps = result["steps"][1:] or result["steps"]
    return {p: statistics.median(max(rank[f"{p}_s"] for rank in step) for step in steps) for p in PHASES}


def tensor_differences(work: Path) -> dict:
    """Max abs differences between the worlds' weights before the first step, its gradients and the weights after;
    the scale of each (largest gradient element, largest weight change); each world's gradient norm in fp64."""
    one, two = (torch.load(work / f"world{size}" / "weights.pt") for size in WORLD_SIZES)

    def max_diff(a: dict, b: dict) -> float:
        return max((a[name] - b[name]).abs().max().item() for name in a)

    def norm64(grads: dict) -> float:
        return torch.stack([g.double().norm() for g in grads.values()]).norm().item()

    return {
        "before": max_diff(one["before"], two["before"]),
        "grad": max_diff(one["grads"], two["grads"]),
        "grad_scale": max(g.abs().max().item() for g in one["grads"].values()),
        "norm64": (norm64(one["grads"]), norm64(two["grads"])),
        "after": max_diff(one["after"], two["after"]),
        "change": max_diff(one["after"], one["before"]),
    }


def report(results: dict[int, dict], tensors: dict, args: argparse.Namespace) -> str:
    """The two printed markdown tables: work and seconds per world size; the first update's agreement."""
    seconds = {size: phase_seconds(result) for size, result in results.items()}
    timed = {1: "step 1 (warm-up included)", 2: "step 2 (step 1 warms up)"}.get(args.steps)
    timed = timed or f"median of steps 2..{args.steps} (step 1 warms up)"

    def per_rank(size: int, key: str, per: int = 1) -> str:
        """The first step's figure of each rank, in rank order."""
        return " / ".join(str(int(rank[key]) // per) for rank in results[size]["steps"][0])

    def row(name: str, cells: list[str]) -> str:
        return f"| {name} | " + " | ".join(cells) + " |"

    sizes = list(results)
    lines = [
        f"GRPO step: {args.prompts} prompts x {args.n} rollouts x {args.tokens} tokens, fp32, CPU, gloo, micro-batch "
        f"{args.micro_batch_size}; seconds of the slowest rank, {timed}",
        "",
        row("", [f"world size {size}" for size in sizes]),
        row("---", ["---:"] * len(sizes)),
        row("processes x threads", [f"{size} x {results[size]['threads_per_rank']}" for size in sizes]),
        row("prompts per rank", [per_rank(size, "trained", per=args.n) for size in sizes]),
        row("sequences generated per rank", [per_rank(size, "generated") for size in sizes]),
        row("sequences trained per rank", [per_rank(size, "trained") for size in sizes]),
        row("tokens generated per rank", [per_rank(size, "tokens") for size in sizes]),
    ]
    for phase in PHASES:
        label = {"step": "step s (sum of phases)", "wall": "step s (wall clock of trainer.step)"}.get(phase)
        lines.append(row(label or f"{phase} s", [f"{seconds[size][phase]:.2f}" for size in sizes]))
    base = seconds[sizes[0]]["wall"]
    lines.append(row("speed-up (wall)", [f"{base / seconds[size]['wall']:.2f}x" for size in sizes]))

    first = {size: result["first"] for size, result in results.items()}
    one, two = first[1], first[2]
    lines += [
        "",
        "First update, same initial weights and batch (world size 2 vs 1):",
        "",
        "| | world size 1 | world size 2 | abs diff |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, name in (("loss", "loss/total"), ("grad_norm", "optim/grad_norm"), ("reward_mean", "reward/mean")):
        lines.append(row(name, [f"{one[key]:.6e}", f"{two[key]:.6e}", f"{abs(one[key] - two[key]):.2e}"]))
    same = one["token_ids"] == two["token_ids"] and one["indices"] == two["indices"]
    norm1, norm2 = tensors["norm64"]
    lines += [
        row("same prompts and sampled tokens", ["", "", "yes" if same else "NO"]),
        row("initial weights, max abs diff", ["", "", f"{tensors['before']:.2e}"]),
        row("gradients before clipping, max abs diff", ["", "", f"{tensors['grad']:.2e}"]),
        row("largest gradient element (scale)", [f"{tensors['grad_scale']:.2e}", "", ""]),
        row(
            "grad norm in fp64 from the gathered gradients",
            [f"{norm1:.6e}", f"{norm2:.6e}", f"{abs(norm1 - norm2):.2e}"],
        ),
        row("updated weights, max abs diff", ["", "", f"{tensors['after']:.2e}"]),
        row("largest weight change of the step (scale)", [f"{tensors['change']:.2e}", "", ""]),
    ]
    return "\n".join(lines)


def launch_compare(name: str, args: argparse.Namespace, work: Path) -> dict:
    """Runs the worker's placement comparison in a 2-process world on the dataset work/`name` (mixed sizes: the first
    --batches batches and batch 1 sorted largest first; equal sizes: batch 1); its result.json."""
    print(f"{name} map sizes: {args.repeats + 1} repeats of both placements ...", file=sys.stderr, flush=True)
    mixed = name == "mixed"
    extra = ["--compare", *(["--largest-first"] if mixed else []), f"--data-dir={work / name}"]
    extra += [f"--budget={args.budget}", f"--repeats={args.repeats}", f"--batches={args.batches if mixed else 1}"]
    return run_worker(f"compare_{name}", 2, extra, args, work)


def compare_report(results: dict[str, dict], args: argparse.Namespace) -> str:
    """Two tables, a row per dataset and batch: today's and the balanced token-budget step's seconds side by side (and
    the mixed stream batches' medians summed), then each step's placement metrics under both."""

    def median(runs: list, key: str) -> float:  # the slowest rank's figure, median over the repeats
        return statistics.median(max(rank[key] for rank in ranks) for ranks in runs)

    rows = {f"{name} sizes, {batch}": runs for name, r in results.items() for batch, runs in r["runs"].items()}
    seconds = {
        row: {side: {phase: median(runs[side], f"{phase}_s") for phase in COMPARED} for side in ("today", "balanced")}
        for row, runs in rows.items()
    }
    summed = [f"mixed sizes, batch {k + 1}" for k in range(args.batches)]  # the worker's names of stream batches
    if "mixed" in results and len(summed) > 1:
        seconds[f"mixed sizes, batches 1-{len(summed)} summed"] = {
            side: {phase: sum(seconds[row][side][phase] for row in summed) for phase in COMPARED}
            for side in ("today", "balanced")
        }
    budgets = ", ".join(f"{name} {r['budget']:,}" for name, r in results.items())
    labels = {"ref_logprobs": "reference pass", "update": "update", "rollout": "rollout", "wall": "step"}
    lines = [
        f"Placement, 2 processes x {max(1, args.cores // 2)} thread (gloo, CPU), {args.prompts} prompts x {args.n} "
        f"rollouts x {args.tokens} tokens, fp32. today: contiguous shares, micro-batch {args.micro_batch_size}; "
        f"balanced: balanced shares, passes of at most the largest group ({budgets} tokens). Seconds of the slowest "
        f"rank, median of {args.repeats}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
        "",
        "| step | " + " | ".join(f"{labels[p]} s: today | balanced | speed-up" for p in COMPARED) + " |",
        "| --- |" + " ---: | ---: | ---: |" * len(COMPARED),
    ]
    for row, sides in seconds.items():
        cells = []
        for phase in COMPARED:
            today, balanced = sides["today"][phase], sides["balanced"][phase]
            cells += [f"{today:.2f}", f"{balanced:.2f}", f"{today / balanced:.2f}x"]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Placement metrics of each step, today -> balanced:",
        "",
        "| step | " + " | ".join(PLACEMENT_KEYS) + " |",
        "| --- |" + " ---: |" * len(PLACEMENT_KEYS),
    ]
    for row, runs in rows.items():
        pair = [runs[side][0][0] for side in ("today", "balanced")]  # the first timed repeat's metrics of rank 0
        cells = [" -> ".join(f"{metrics[key]:.2f}" for metrics in pair) for key in PLACEMENT_KEYS]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    parser.add_argument(
        "--steps", type=int, default=2, help="GRPO steps per world; the first warms up and is the one compared"
    )
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step (whole world)")
    parser.add_argument("--n", type=int, default=4, help="rollouts per prompt")
    parser.add_argument("--tokens", type=int, default=16, help="response tokens (EOS is suppressed until then)")
    parser.add_argument(
        "--max-pixels", type=int, default=None, help="map pixel budget per prompt (50,176; --mixed: 802,816)"
    )
    parser.add_argument("--micro-batch-size", type=int, default=4, help="sequences per forward/backward")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="threads of the one-process world")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build model/data (default: a temp dir)")
    parser.add_argument("--mixed", action="store_true", help="compare placements on mixed and equal map sizes")
    parser.add_argument(
        "--budget", type=int, default=0, help="micro_batch_tokens of the balanced side (0: the largest group)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per placement (--mixed)")
    parser.add_argument("--batches", type=int, default=3, help="stream batches compared on mixed sizes (--mixed)")


def run_bench(args: argparse.Namespace, work: Path) -> str:
    """Builds the tiny model and data (unless a reused --workdir has them), runs both worlds, returns the report."""
    if not (work / "model").exists():
        build_tiny_model(work / "model", seed=0)
        generate_dataset(work / "data", cities=3, seed=0)
    if args.mixed:
        sizes = {"mixed": (args.max_pixels, args.max_pixels // 4, args.max_pixels // 16), "equal": None}
        for name, pixels in sizes.items():
            if not (work / name).exists():  # 4 cities: 3 train (one map size each), 1 held out
                generate_dataset(work / name, cities=4, seed=0, map_pixels=pixels or (args.max_pixels,))
        return compare_report({name: launch_compare(name, args, work) for name in sizes}, args)
    results = {size: launch(size, args, work) for size in WORLD_SIZES}
    return report(results, tensor_differences(work), args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.max_pixels = args.max_pixels or (802816 if args.mixed else 50176)
    if args.prompts % max(WORLD_SIZES):
        parser.error(f"--prompts must be a multiple of {max(WORLD_SIZES)} (each rank trains whole groups)")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        print(run_bench(args, args.workdir))
        return 0
    with tempfile.TemporaryDirectory() as work:
        print(run_bench(args, Path(work)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
