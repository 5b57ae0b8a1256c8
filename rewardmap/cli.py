"""The `rewardmap` command: one subcommand per capability, each owned by the module that implements it."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rewardmap.errors import EXIT_INPUT, InputError, RunStopped

# name -> (module with add_arguments/run, one-line help). Modules are imported only when their command runs.
COMMANDS = {
    "train": ("rewardmap.grpo.train_cli", "multi-stage GRPO training from a YAML config plus key=value overrides"),
    "sft": ("rewardmap.grpo.sft", "supervised warm start on the rows' answers (cross-entropy)"),
    "demo": ("rewardmap.grpo.demo", "the embedded default end to end on CPU: synthetic maps, tiny model, SFT, GRPO"),
    "plot": ("rewardmap.grpo.plot", "draw reward curves (per stage and per type) of a run directory as PNG"),
    "report": (
        "rewardmap.report.page",
        "write RUN_DIR/report.html: config, curves, sample rollouts with their maps, validation and evaluation tables",
    ),
    "eval": (
        "rewardmap.eval.runner",
        "evaluate a model on a dataset split (resumable): results.json/.md, accuracy.png",
    ),
    "eval-compare": ("rewardmap.eval.compare", "two evaluations' figures side by side with the difference"),
    "merge": ("rewardmap.models.merge", "merge a checkpoint or LoRA adapter into a plain Hugging Face model"),
    "score": ("rewardmap.reward.cli", "score a JSONL of {response, sample} rows with the reward"),
    "synth": ("rewardmap.synth.cli", "generate a synthetic transit-map dataset in the ReasonMap-Train schema"),
    "tiny-model": ("rewardmap.models.tiny", "build the tiny offline Qwen2.5-VL used on CPU (real tokenizer)"),
    "download": ("rewardmap.data.hub", "download ReasonMap-Train / ReasonMap-Plus from the Hugging Face Hub"),
    "sft-data": ("rewardmap.data.sft", "export a dataset as LLaMA-Factory sharegpt JSON for the SFT baseline"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The top-level parser; only the subcommand named in argv gets its full arguments (lazy imports)."""
    parser = argparse.ArgumentParser(
        prog="rewardmap",
        description="RewardMap: multi-stage GRPO for Qwen2.5-VL on transit maps. `rewardmap COMMAND --help` for more.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level: DEBUG, INFO, WARNING (default INFO)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((arg for arg in argv if arg in COMMANDS), None)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `rewardmap` console script."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        return int(args.run(args) or 0)
    except (InputError, FileNotFoundError) as error:
        # Bad input (config key, data row, path): the message names it; the traceback only helps when debugging.
        # Anything else (a bug, an internal error of torch or vLLM) fails with its traceback.
        if args.log_level.upper() == "DEBUG":
            raise
        print(f"rewardmap {args.command}: {error}", file=sys.stderr)
        return EXIT_INPUT
    except RunStopped as stop:
        # A run that stopped on purpose (a signal, non-finite steps, a failed write, a lost rank): its one sentence.
        if str(stop):
            print(f"rewardmap {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code


if __name__ == "__main__":
    sys.exit(main())
