"""Sample rollouts of a run: which groups of a step are kept, their records (question, map, reference, answers with
reward parts and advantages), and the append-only samples.jsonl / val_samples.jsonl files."""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from rewardmap.config import DataConfig, RewardMapConfig
from rewardmap.data.images import image_file, load_image, read_cached_image
from rewardmap.data.schema import is_reasonmap_row
from rewardmap.data.sft import answer_text
from rewardmap.eval.answers import replace_file
from rewardmap.reward import RewardBreakdown, score_batch

if TYPE_CHECKING:
    from rewardmap.grpo.batching import Group
    from rewardmap.grpo.setup import Components

logger = logging.getLogger(__name__)

SAMPLE_FILES = ("samples", "val_samples")
"""The run directory's sample logs (<name>.jsonl): training groups, validation answers."""
MAP_SIDE = 1024
"""Longest side, in pixels, of the map copies shown in trackers and the report."""


def pick_groups(types: Sequence[str], k: int, seed: int, step: int) -> list[int]:
    """k of a step's groups (`types[i]` is group i's question type), seeded by (seed, step) and spread over the types:
    one group of each type (in a shuffled order) before a second of any; returned in group order."""
    order = random.Random(f"{seed}/{step}").sample(range(len(types)), len(types))
    seen: Counter[str] = Counter()
    ranked = []
    for position, index in enumerate(order):
        ranked.append((seen[types[index]], position, index))
        seen[types[index]] += 1
    return sorted(index for _, _, index in sorted(ranked)[:k])


def step_samples(
    config: RewardMapConfig, parts: Components, groups: Sequence[Group], kept: Sequence[Group], stage: int, step: int
) -> list[dict]:
    """The records of trainer.log_samples of a step's generated groups (`kept`: those trained on); [] off the main
    rank or when sample logging is off."""
    k, algo, rows = config.trainer.log_samples, config.algorithm, parts.rows
    if k == 0 or not parts.world.is_main:
        return []
    import torch  # imported here: the report reads sample logs without torch

    from rewardmap.grpo.losses import group_advantages

    records = []
    for index in pick_groups([rows[g.row]["type"] for g in groups], k, config.trainer.seed, step):
        group, row = groups[index], rows[groups[index].row]
        rewards = torch.tensor(group.rewards)
        advantages = group_advantages(rewards, len(rewards), algo.adv_eps, algo.advantage_std_norm).tolist()
        answers = [
            _answer(completion.text, score, reward, advantage, len(completion.token_ids), completion.finished)
            for completion, score, reward, advantage in zip(
                group.completions, group.scores, group.rewards, advantages, strict=True
            )
        ]
        head = {"step": step, "stage": stage + 1, "row": group.row, "trained": any(group is g for g in kept)}
        records.append(head | _question(row, None, rows.root, config.data) | {"answers": answers})
    return records


def validation_samples(
    config: RewardMapConfig, parts: Components, answered: Mapping[tuple[int, str | None], dict], step: int
) -> list[dict]:
    """One record per validation answer (`answered`: (held-out row, question) -> the evaluation's record), its reward
    parts from the training reward; [] off the main rank or when sample logging is off."""
    if config.trainer.log_samples == 0 or not parts.world.is_main:
        return []
    keys = sorted(answered, key=lambda key: (key[0], key[1] or ""))
    # ReasonMap benchmark rows (short / long questions) have no reward; their answers keep the evaluation's verdict.
    scored = [key for key in keys if not is_reasonmap_row(parts.val_rows[key[0]])]
    scores = score_batch(
        [answered[key]["response"] or "" for key in scored],
        [parts.val_rows[index] for index, _ in scored],
        variant=config.reward.variant,
        mode=config.reward.mode,
        counting1_detail=config.reward.counting1_detail,
        metro_root=config.data.metro_root,
    )
    score_of = dict(zip(scored, scores, strict=True))
    records = []
    for index, question in keys:
        record, score = answered[(index, question)], score_of.get((index, question))
        answer = _answer(
            record["response"] or "",
            score,
            None if score is None else score.total,
            None,
            record["token_count"],
            record["finished"],
        )
        answer["eval_correct"] = bool(record["correct"])
        head = {"step": step, "row": index}
        records.append(
            head | _question(parts.val_rows[index], question, parts.val_root, config.data) | {"answers": [answer]}
        )
    return records


def _question(row: Mapping, question: str | None, root: Path | None, data: DataConfig) -> dict:
    """What a sample record shows of its row: type, difficulty, question, map file, reference answer (as the answer
    format writes it: yes/no, a letter, a count, the first reference route)."""
    reference = answer_text(row)
    path = image_file(
        row["figure"],
        root=root or Path.cwd(),
        min_pixels=data.min_pixels,
        max_pixels=data.max_pixels,
        cache_dir=data.image_cache_dir,
    )
    return {
        "type": row["type"],
        "difficulty": row.get("difficulty_city"),
        "question": row[f"question_{question}"] if is_reasonmap_row(row) else row["question"],
        "image": None if path is None else str(path.resolve()),
        "reference": row.get("answer") if reference is None else reference,
    }


def _answer(
    text: str,
    score: RewardBreakdown | None,
    reward: float | None,
    advantage: float | None,
    tokens: int | None,
    finished: bool | None,
) -> dict:
    """One answer of a sample record: its text, reward and the reward's parts, advantage, token count, finished."""
    parts = {"correct": None, "correctness": None, "detail": None, "weight": None, "overlong_penalty": None}
    if score is not None:
        parts = {
            "correct": bool(score.correct),
            "correctness": score.correctness,
            "detail": score.detail,
            "weight": score.weight,
            "overlong_penalty": reward - score.total,
        }
    return {"text": text, "reward": reward, **parts, "advantage": advantage, "tokens": tokens, "finished": finished}


class SampleFile:
    """Appends records to a run's sample log. The first append of a process drops the records of the steps it writes
    again (a resumed run trains the steps after its checkpoint once more), so no step's samples appear twice."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rewound = False

    def append(self, records: Sequence[dict]) -> None:
        if not records:
            return
        if not self.rewound and self.path.is_file():
            first = min(record["step"] for record in records)
            earlier = [record for record in _parse(self.path) if record["step"] < first]
            replace_file(self.path, "".join(json.dumps(record) + "\n" for record in earlier))
        self.rewound = True
        with self.path.open("a", encoding="utf-8") as file:
            file.writelines(json.dumps(record) + "\n" for record in records)


def read_samples(run_dir: Path, name: str) -> list[dict]:
    """The records of the run's sample log `name` (samples / val_samples), in step order; [] when there is none."""
    path = Path(run_dir) / f"{name}.jsonl"
    return sorted(_parse(path), key=lambda record: record["step"]) if path.is_file() else []


def _parse(path: Path) -> list[dict]:
    """The JSON lines of `path`; a line cut short (a run killed while writing it) is skipped with a warning."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            if line.strip():
                records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s line %d is not complete JSON (a run killed while writing it?); skipped", path, number)
    return records


def read_map(path: str | None) -> Image.Image | None:
    """A sample's map at most MAP_SIDE pixels on its longest side (None: no file, or it is gone)."""
    if path is None or not Path(path).is_file():
        return None
    if path.endswith(".npy"):
        image = read_cached_image(Path(path))
        image.thumbnail((MAP_SIDE, MAP_SIDE))
        return image
    return load_image(Path(path), root=Path(path).parent, max_pixels=MAP_SIDE * MAP_SIDE)
