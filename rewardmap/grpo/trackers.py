"""Experiment trackers beside metrics.jsonl: Weights & Biases and Trackio (optional installs, imported only when
trainer.loggers names them). Each gets every step's scalars, the sample rollouts as a table with the map as an image,
and the run config; <run>/trackers.json keeps their run ids, so a resumed run continues the same tracker run."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from rewardmap.config import RewardMapConfig, config_to_yaml
from rewardmap.eval.answers import replace_file
from rewardmap.grpo.samples import read_map

logger = logging.getLogger(__name__)

TRACKERS_FILE = "trackers.json"
TABLE_COLUMNS = (
    "step",
    "stage",
    "row",
    "type",
    "difficulty",
    "map",
    "question",
    "reference",
    "answer",
    "text",
    "reward",
    "correct",
    "detail",
    "weight",
    "overlong_penalty",
    "advantage",
    "tokens",
    "finished",
)
"""The samples table's columns: one row per answer (`answer`: its number in the group, from 1)."""


def table_rows(records: Sequence[dict], image: Callable[[str | None], Any]) -> list[list]:
    """The sample records (samples.py) as table rows in TABLE_COLUMNS order; `image(path)` makes the map cell."""
    rows = []
    for record in records:
        cell = image(record["image"])  # one object per group: each tracker stores a map once
        for number, answer in enumerate(record["answers"]):
            values = {**record, **answer, "map": cell, "answer": number + 1}
            rows.append([values.get(column) for column in TABLE_COLUMNS])
    return rows


class Tracker:
    """One tracker run. `library` is the wandb or the trackio module: their Table, Image and Run.log calls match."""

    def __init__(self, library: Any, run: Any) -> None:
        self.library = library
        self.run = run
        self.images: dict[str | None, Any] = {}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def log_samples(self, name: str, records: Sequence[dict]) -> None:
        """One step's sample records as the table `name` (a map is stored once, then referenced)."""
        table = self.library.Table(columns=list(TABLE_COLUMNS), data=table_rows(records, self._image))
        self.run.log({name: table}, step=records[0]["step"])

    def _image(self, path: str | None) -> Any:
        if path not in self.images:
            image = read_map(path)
            self.images[path] = None if image is None else self.library.Image(image, caption=Path(path).name)
        return self.images[path]

    def close(self) -> None:
        self.run.finish()


def start_wandb(project: str, run_dir: Path, settings: dict, state: dict) -> Tracker:
    """A Weights & Biases run in <run>/wandb (offline with WANDB_MODE=offline; `wandb sync` uploads it later)."""
    import wandb

    state.setdefault("wandb", {"id": uuid.uuid4().hex[:12]})
    run = wandb.init(
        project=project,
        name=run_dir.name,
        id=state["wandb"]["id"],
        resume="allow",
        dir=run_dir,
        config=settings,
        settings=wandb.Settings(disable_git=True, save_code=False),
    )
    return Tracker(wandb, run)


def start_trackio(project: str, run_dir: Path, settings: dict, state: dict) -> Tracker:
    """A Trackio run in Trackio's local database (TRACKIO_DIR, default ~/.cache/huggingface/trackio; `trackio show`),
    found again by its name (the run directory's)."""
    import trackio

    run = trackio.init(
        project=project,
        name=run_dir.name,
        config=settings,
        resume="allow",
        embed=False,
        auto_log_cpu=False,
        auto_log_gpu=False,
    )
    state["trackio"] = {"project": project, "name": run.name, "id": run.id}
    return Tracker(trackio, run)


STARTS = {"wandb": start_wandb, "trackio": start_trackio}


def open_trackers(config: RewardMapConfig, run_dir: Path) -> list[Tracker]:
    """The trackers trainer.loggers asks for, each continuing its run of <run>/trackers.json when there is one."""
    names = [name for name in config.trainer.loggers if name in STARTS]
    if not names:
        return []
    path = run_dir / TRACKERS_FILE
    state = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    settings = yaml.safe_load(config_to_yaml(config))
    trackers = [STARTS[name](config.trainer.project, run_dir, settings, state) for name in names]
    replace_file(path, json.dumps(state, indent=2) + "\n")
    logger.info("reporting to %s (run ids in %s)", ", ".join(names), path)
    return trackers
