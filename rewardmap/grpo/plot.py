"""`rewardmap plot RUN_DIR`: reward curves of a run, per curriculum stage and per question type, and the share of
groups that teach nothing (all rewards equal), as PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from rewardmap.grpo.metrics import read_metrics


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Draws reward per step (coloured by stage), accuracy per question type and the zero-variance-group fraction
    per stage; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    out = out or Path(run_dir) / "reward_curves.png"
    types = sorted(
        {key.split("/")[1] for r in records for key in r if key.count("/") == 2 and key.startswith("reward/")}
    )
    fig, (ax_stage, ax_type, ax_sparse) = plt.subplots(1, 3, figsize=(18, 4.5))
    for stage in sorted({int(r["stage"]) for r in records}):
        part = [r for r in records if int(r["stage"]) == stage]
        steps = [r["step"] for r in part]
        ax_stage.plot(steps, [r["reward/mean"] for r in part], "o-", ms=3, label=f"stage {stage}")
        sparse = [
            (r["step"], r["groups/zero_variance_fraction"]) for r in part if "groups/zero_variance_fraction" in r
        ]
        if sparse:  # runs from before the diagnostics have none
            ax_sparse.plot(*zip(*sparse, strict=True), "o-", ms=3, label=f"stage {stage}")
    ax_stage.set(title="mean reward per step, by curriculum stage", xlabel="step", ylabel="reward")
    ax_sparse.set(
        title="groups with all rewards equal (no signal)",
        xlabel="step",
        ylabel="fraction of groups",
        ylim=(-0.05, 1.05),
    )
    for qtype in types:
        part = [r for r in records if f"reward/{qtype}/accuracy" in r]
        ax_type.plot([r["step"] for r in part], [r[f"reward/{qtype}/accuracy"] for r in part], "o-", ms=3, label=qtype)
    ax_type.set(title="accuracy per step, by question type", xlabel="step", ylabel="accuracy", ylim=(-0.05, 1.05))
    for ax in (ax_stage, ax_type, ax_sparse):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a training run directory (holds metrics.jsonl)")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default RUN_DIR/reward_curves.png)")


def run(args: argparse.Namespace) -> int:
    print(plot_run(args.run_dir, args.out))
    return 0
