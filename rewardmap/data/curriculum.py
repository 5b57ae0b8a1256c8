"""The multi-stage curriculum: question types and a list of stages -> a resumable, ordered stream of row batches."""

import hashlib
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rewardmap.data.schema import DIFFICULTIES, QUESTION_TYPES, canonical_type
from rewardmap.errors import InputError

logger = logging.getLogger(__name__)

PRESETS: dict[str, list[list[str]]] = {
    # RECIPE.md "Curriculum": the released rule, and the two orderings left commented out in the release.
    "released": [["TorF1", "TorF2"], ["Counting2", "Counting3"], ["Counting1"], ["planning"]],
    "coarse": [["TorF1", "TorF2", "Counting1", "Counting2", "Counting3"], ["planning"]],
    "fine-grained": [["TorF1"], ["TorF2"], ["Counting3"], ["Counting2"], ["Counting1"], ["planning"]],
    "none": [list(QUESTION_TYPES)],  # the no-curriculum ablation: the whole set shuffled as one stage
}
ORDERS = ("shuffled", "easy_to_hard")


@dataclass(frozen=True)
class Stage:
    """One curriculum stage: the question types trained together, and optionally an exact number of batches."""

    types: tuple[str, ...]
    steps: int | None = None


def resolve_stages(stages: str | Sequence[Mapping[str, Any] | Stage]) -> list[Stage]:
    """Stages from a preset name (`released`, `coarse`, `fine-grained`, `none`) or a list of {types, steps}."""
    if isinstance(stages, str):
        if stages not in PRESETS:
            raise InputError(f"unknown curriculum preset {stages!r}; choose one of {', '.join(PRESETS)}")
        return [Stage(tuple(types)) for types in PRESETS[stages]]
    resolved = []
    for number, stage in enumerate(stages):
        spec = {"types": stage.types, "steps": stage.steps} if isinstance(stage, Stage) else dict(stage)
        unknown_keys = set(spec) - {"types", "steps"}
        if unknown_keys or not spec.get("types"):
            raise InputError(f"curriculum stage {number}: expected {{types: [...], steps: N}}, got {spec}")
        try:
            types = tuple(canonical_type(name) for name in spec["types"])
        except ValueError as err:
            raise InputError(f"curriculum stage {number}: {err}") from err
        steps = spec.get("steps")
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise InputError(f"curriculum stage {number}: steps must be a positive integer or null, got {steps!r}")
        resolved.append(Stage(types, steps))
    if not resolved:
        raise InputError("the curriculum needs at least one stage")
    return resolved


def _stage_order(members: list[int], difficulties: Sequence[str] | None, order: str, rng: random.Random) -> list[int]:
    """One pass over a stage's rows: seeded shuffle, then (easy_to_hard) a stable sort by difficulty."""
    shuffled = list(members)
    rng.shuffle(shuffled)
    if order == "easy_to_hard":
        shuffled.sort(key=lambda index: DIFFICULTIES.index(difficulties[index]))
    return shuffled


def plan_batches(
    types: Sequence[str],
    stages: str | Sequence[Mapping[str, Any] | Stage] = "released",
    *,
    batch_size: int,
    order: str = "shuffled",
    difficulties: Sequence[str] | None = None,
    seed: int = 42,
) -> list[tuple[int, list[int]]]:
    """Every training step in order as (stage index, row indices); batches never mix stages.

    Without `steps`, a stage is one pass over its rows and its last partial batch is kept. With `steps: N` it is
    exactly N full batches: passes repeat (each reshuffled by the seeded RNG) or the pass is cut short.
    """
    if order not in ORDERS:
        raise InputError(f"unknown curriculum order {order!r}; choose one of {', '.join(ORDERS)}")
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    if order == "easy_to_hard" and (
        difficulties is None or len(difficulties) != len(types) or not set(difficulties) <= set(DIFFICULTIES)
    ):
        raise InputError("order 'easy_to_hard' needs one difficulty per row, each easy, middle or hard")
    resolved = resolve_stages(stages)
    canonical = [canonical_type(name) for name in types]
    stage_of: dict[str, int] = {}
    for number, stage in enumerate(resolved):
        for name in stage.types:
            if stage_of.setdefault(name, number) != number:
                raise InputError(f"type {name} is in curriculum stages {stage_of[name]} and {number}; keep it in one")
    orphans = sorted({name for name in canonical if name not in stage_of})
    if orphans:
        raise InputError(
            f"rows of type {', '.join(orphans)} are in no curriculum stage; add them to a stage "
            "(or drop those rows from the dataset)"
        )
    rng = random.Random(seed)
    plan: list[tuple[int, list[int]]] = []
    for number, stage in enumerate(resolved):
        members = [index for index, name in enumerate(canonical) if stage_of[name] == number]
        if not members:
            if stage.steps:
                raise InputError(f"curriculum stage {number} ({', '.join(stage.types)}) has steps but no rows")
            logger.warning("curriculum stage %d (%s) has no rows; skipped", number, ", ".join(stage.types))
            continue
        sequence = _stage_order(members, difficulties, order, rng)
        if stage.steps is not None:
            while len(sequence) < stage.steps * batch_size:
                sequence += _stage_order(members, difficulties, order, rng)
            sequence = sequence[: stage.steps * batch_size]
        plan += [(number, sequence[start : start + batch_size]) for start in range(0, len(sequence), batch_size)]
    return plan


class CurriculumStream:
    """The planned batches as a resumable iterator: `next_batch() -> (stage_index, row indices)`.

    `state_dict()` is JSON-serialisable; a stream restored with `load_state_dict` continues with the very next
    batch, and refuses a state saved for a different plan (other data, stages, order, batch size or seed).
    """

    def __init__(
        self,
        types: Sequence[str],
        stages: str | Sequence[Mapping[str, Any] | Stage] = "released",
        *,
        batch_size: int,
        order: str = "shuffled",
        difficulties: Sequence[str] | None = None,
        seed: int = 42,
    ) -> None:
        self.batches = plan_batches(
            types, stages, batch_size=batch_size, order=order, difficulties=difficulties, seed=seed
        )
        self.position = 0
        pools: dict[int, dict[int, None]] = {}
        for stage, indices in self.batches:
            pools.setdefault(stage, {}).update(dict.fromkeys(indices))
        self.stage_rows = {stage: list(rows) for stage, rows in pools.items()}
        """Every planned row of each stage, in plan order: the pool `draw` refills from."""
        self._fingerprint = hashlib.sha256(json.dumps(self.batches).encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> "CurriculumStream":
        return self

    def __next__(self) -> tuple[int, list[int]]:
        return self.next_batch()

    def next_batch(self) -> tuple[int, list[int]]:
        """The next (stage index, row indices); StopIteration after the last batch."""
        if self.position >= len(self.batches):
            raise StopIteration
        stage, indices = self.batches[self.position]
        self.position += 1
        return stage, list(indices)

    def draw(self, stage: int, count: int, key: Sequence[int]) -> list[int]:
        """`count` rows of stage `stage`, picked by an RNG seeded with `key` (e.g. seed, step, round): the same rows
        after a resume and on any world size; no row twice unless the stage has fewer than `count`."""
        pool = self.stage_rows[stage]
        rng = random.Random(":".join(str(part) for part in key))
        return rng.sample(pool, count) if count <= len(pool) else [rng.choice(pool) for _ in range(count)]

    def state_dict(self) -> dict[str, Any]:
        """The position in the stream plus a fingerprint of the plan (JSON-serialisable)."""
        return {"position": self.position, "fingerprint": self._fingerprint}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state` (from `state_dict`, possibly via JSON)."""
        if state.get("fingerprint") != self._fingerprint:
            raise InputError(
                "curriculum state was saved for a different plan (dataset, stages, order, batch size or seed "
                "changed); resume with the original settings or start a new run"
            )
        position = int(state["position"])
        if not 0 <= position <= len(self.batches):
            raise InputError(f"curriculum state position {position} is outside 0..{len(self.batches)}")
        self.position = position
