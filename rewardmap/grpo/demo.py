"""`rewardmap demo`: the embedded default end to end on CPU: synthetic maps, tiny model, SFT warm start, GRPO."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rewardmap.config import load_config

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="demo directory (default runs/demo)")
    parser.add_argument("--cities", type=int, default=6, help="synthetic cities to generate (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and tiny model (default 0)")
    parser.add_argument("--eval-limit", type=int, default=60, help="held-out rows evaluated at the end (default 60)")
    parser.add_argument(
        "--reasonmap-limit", type=int, default=20, help="synthetic ReasonMap rows evaluated at the end (default 20)"
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="demo config (default configs/demo.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides on top of the demo config, e.g. sft.steps=20")


def run(args: argparse.Namespace) -> int:
    from rewardmap.distributed import join_world
    from rewardmap.eval import runner
    from rewardmap.grpo.plot import plot_run
    from rewardmap.grpo.sft import warm_start
    from rewardmap.grpo.trainer import GRPOTrainer
    from rewardmap.models.merge import merge_checkpoint
    from rewardmap.models.tiny import build_tiny_model
    from rewardmap.report.page import write_report
    from rewardmap.synth import generate_dataset

    start = time.perf_counter()
    out = args.out
    data_dir = out / "data"
    if not (data_dir / "reasonmap.jsonl").is_file():  # older demo folders lack the ReasonMap split
        generate_dataset(data_dir, cities=args.cities, seed=args.seed)
    model_dir = out / "tiny_model"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, seed=args.seed)
    print(f"[demo] data {data_dir}, tiny model {model_dir} ({time.perf_counter() - start:.0f} s)")
    filled = [
        f"model.path={model_dir}",
        f"data.train_files={data_dir}",
        f"data.val_files={data_dir}",
        f"trainer.output_dir={out / 'run'}",
    ]
    config = warm_start(load_config(args.config, filled + list(args.overrides)))
    print(f"[demo] SFT warm start done ({time.perf_counter() - start:.0f} s)")
    with join_world(config.trainer.collective_timeout_s) as world:
        trainer = GRPOTrainer(config, world)
        final = trainer.fit()
    merged = merge_checkpoint(final, out / "trained_model", dtype="fp32", overwrite=True)  # the checkpoint's shards
    print(f"[demo] GRPO done: checkpoint {final}, curves {plot_run(trainer.run_dir)}")
    evaluate = argparse.ArgumentParser(prog="rewardmap eval")
    runner.add_arguments(evaluate)
    eval_args = [
        f"--model={merged}",
        f"--data={data_dir}",
        "--split=test",
        f"--limit={args.eval_limit}",
        f"--out={out / 'eval'}",
        f"--max-new-tokens={config.data.max_response_length}",
        f"--max-pixels={config.data.max_pixels}",
        f"--image-cache-dir={config.data.image_cache_dir}",
    ]
    runner.run(evaluate.parse_args(eval_args))
    # The synthetic ReasonMap split: both questions of each row, scored and aggregated as the benchmark does.
    benchmark_args = [arg for arg in eval_args if not arg.startswith(("--split=", "--limit=", "--out="))]
    benchmark_args += ["--split=reasonmap", f"--limit={args.reasonmap_limit}", f"--out={out / 'eval_reasonmap'}"]
    runner.run(evaluate.parse_args(benchmark_args))
    report = write_report(trainer.run_dir, [out / "eval", out / "eval_reasonmap"])
    print(f"[demo] run report {report} ({report.stat().st_size / 1e6:.1f} MB): open it in a browser")
    print(f"[demo] total {time.perf_counter() - start:.0f} s")
    return 0
