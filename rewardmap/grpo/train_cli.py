"""`rewardmap train`: GRPO training from a YAML config plus `section.key=value` overrides, in one process or in each
process of a `torchrun` world (`torchrun --nproc_per_node N -m rewardmap.cli train ...`)."""

from __future__ import annotations

import argparse

from rewardmap.config import load_config
from rewardmap.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "SIGTERM, SIGINT or SIGUSR1 finish the step, write a checkpoint and exit 75 (a second signal aborts at once). "
        "Exit codes: 0 done, 1 unexpected error, 2 bad input, 3 too many non-finite steps "
        "(trainer.max_nonfinite_steps), 4 a checkpoint or file could not be written, 5 another rank died or hung "
        "(trainer.collective_timeout_s), 75 stopped by a signal; run the same command to resume (trainer.resume=auto)."
    )
    parser.add_argument(
        "--config",
        action="append",
        help="YAML config; repeat to layer files (default: configs/reward_map.yaml, the paper recipe)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. trainer.lr=1e-6 data.train_files=data/synth rollout.n=8"
    )


def run(args: argparse.Namespace) -> int:
    from rewardmap.distributed import join_world
    from rewardmap.grpo.plot import plot_run
    from rewardmap.grpo.remote import serve_rollouts
    from rewardmap.grpo.sft import warm_start
    from rewardmap.grpo.trainer import GRPOTrainer

    config = load_config(args.config or ["configs/reward_map.yaml"], args.overrides)
    rollout_ranks = config.rollout.ranks if config.rollout.placement == "separate" else 0
    with join_world(config.trainer.collective_timeout_s, rollout_ranks) as world:
        if world.role == "rollout":  # rollout.placement=separate: this process only samples
            serve_rollouts(config, world)
            return 0
        if config.sft.steps > 0:
            if world.size > 1:
                raise InputError(
                    f"the SFT warm start (sft.steps={config.sft.steps}) runs in one process only: run `rewardmap sft` "
                    "first, then train from its model with model.path=<output_dir>/sft_model sft.steps=0"
                )
            config = warm_start(config)
        trainer = GRPOTrainer(config, world)
        final = trainer.fit()
        if trainer.is_main:
            print(f"final checkpoint: {final}")
            print(f"reward curves: {plot_run(trainer.run_dir)}")
    return 0
