"""`rewardmap train`: GRPO training from a YAML config plus `section.key=value` overrides."""

from __future__ import annotations

import argparse

from rewardmap.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        action="append",
        help="YAML config; repeat to layer files (default: configs/reward_map.yaml, the paper recipe)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. trainer.lr=1e-6 data.train_files=data/synth rollout.n=8"
    )


def run(args: argparse.Namespace) -> int:
    from rewardmap.grpo.plot import plot_run
    from rewardmap.grpo.sft import warm_start
    from rewardmap.grpo.trainer import GRPOTrainer

    config = load_config(args.config or ["configs/reward_map.yaml"], args.overrides)
    if config.sft.steps > 0:
        config = warm_start(config)
    trainer = GRPOTrainer(config)
    final = trainer.fit()
    if trainer.is_main:
        print(f"final checkpoint: {final}")
        print(f"reward curves: {plot_run(trainer.run_dir)}")
    return 0
