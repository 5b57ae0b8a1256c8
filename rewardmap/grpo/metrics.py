"""Training metrics: per-step reward figures and sparse-reward diagnostics by question type and stage, written to
JSONL, TensorBoard and the experiment trackers."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from rewardmap.config import RewardMapConfig
from rewardmap.errors import write_failed
from rewardmap.grpo.samples import SampleFile
from rewardmap.grpo.trackers import Tracker, open_trackers
from rewardmap.reward import RewardBreakdown

METRICS_FILE = "metrics.jsonl"
RESUME = "free space and run the same command: trainer.resume=auto continues from the newest checkpoint"


def reward_metrics(scores: Sequence[RewardBreakdown], rows: Sequence[dict], n: int, stage: int) -> dict[str, float]:
    """reward/mean, reward/accuracy, and the same per question type; `scores` holds n per row, in row order."""
    by_type: dict[str, list[RewardBreakdown]] = defaultdict(list)
    for index, score in enumerate(scores):
        by_type[rows[index // n]["type"]].append(score)
    metrics = {
        "stage": float(stage + 1),
        "reward/mean": sum(s.total for s in scores) / len(scores),
        "reward/accuracy": sum(s.correct for s in scores) / len(scores),
        "reward/detail_mean": sum(s.detail for s in scores) / len(scores),
    }
    for qtype, group in sorted(by_type.items()):
        metrics[f"reward/{qtype}/mean"] = sum(s.total for s in group) / len(group)
        metrics[f"reward/{qtype}/accuracy"] = sum(s.correct for s in group) / len(group)
    return metrics


def group_metrics(groups: Sequence, rows: Sequence[dict]) -> dict[str, float]:
    """Sparse-reward diagnostics of a step's groups (`rows[i]` is group i's row), overall and per question type:
    the fraction of groups whose rewards are all equal (zero advantage, no signal), of groups whose rewards are all
    zero, and the mean reward std within a group."""
    by_type: dict[str, list] = defaultdict(list)
    for group, row in zip(groups, rows, strict=True):
        by_type[row["type"]].append(group)
    metrics = {}
    for prefix, part in [("groups", groups)] + [(f"groups/{t}", by_type[t]) for t in sorted(by_type)]:
        metrics[f"{prefix}/zero_variance_fraction"] = sum(g.zero_variance for g in part) / len(part)
        metrics[f"{prefix}/all_zero_fraction"] = sum(not any(g.rewards) for g in part) / len(part)
        metrics[f"{prefix}/reward_std"] = sum(statistics.pstdev(g.rewards) for g in part) / len(part)
    return metrics


class MetricsLogger:
    """Appends one JSON line per step to <run>/metrics.jsonl and mirrors the scalars to TensorBoard and the trackers
    of trainer.loggers; sample rollouts (samples.py) go to <run>/<name>.jsonl and the trackers' tables."""

    def __init__(self, run_dir: Path, config: RewardMapConfig, enabled: bool = True) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.writer = None
        self.trackers: list[Tracker] = []
        self.sample_files: dict[str, SampleFile] = {}
        if enabled and "tensorboard" in config.trainer.loggers:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        if enabled:
            self.trackers = open_trackers(config, self.run_dir)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        try:
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps({"step": step, **metrics}) + "\n")
        except OSError as error:
            raise write_failed(self.path, error, RESUME) from error
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)
        for tracker in self.trackers:
            tracker.log(step, metrics)

    def log_samples(self, name: str, records: list[dict]) -> None:
        """One step's sample records (samples.py) appended to <run>/<name>.jsonl and logged as the trackers' table."""
        if not self.enabled or not records:
            return
        samples = self.sample_files.setdefault(name, SampleFile(self.run_dir / f"{name}.jsonl"))
        try:
            samples.append(records)
        except OSError as error:
            raise write_failed(samples.path, error, RESUME) from error
        for tracker in self.trackers:
            tracker.log_samples(name, records)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        for tracker in self.trackers:
            tracker.close()


def read_metrics(run_dir: Path) -> list[dict]:
    """The run's metric records, one per step; a resumed run's repeated steps keep their newest record."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run directory?")
    records: dict[int, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            records[record["step"]] = record
    return [records[step] for step in sorted(records)]
