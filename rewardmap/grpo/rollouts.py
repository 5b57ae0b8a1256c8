"""A step's rollouts: the groups sampled and scored for it (`sample_step`), where they come from (`ColocatedRollouts`:
every rank samples, then trains; `remote.RemoteRollouts`: the rollout ranks of a separate placement), and their JSON
form, which crosses between the two parts of a split world and goes into checkpoints."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch

from rewardmap.config import RewardMapConfig
from rewardmap.distributed import World, all_gather_lists
from rewardmap.errors import InputError
from rewardmap.grpo.batching import Group, rollout_share
from rewardmap.grpo.losses import overlong_penalty
from rewardmap.grpo.setup import Components, RolloutParts
from rewardmap.reward import RewardBreakdown, score_batch
from rewardmap.rollout import Completion, Sampling, prompt_seed

if TYPE_CHECKING:
    from rewardmap.grpo.remote import RemoteRollouts


@dataclass
class StepRollouts:
    """What a step trains on: every group sampled (`generated`), those kept (`kept`), the dynamic-sampling rounds it
    took, how evenly the first round was shared, and the weights' version (optimizer steps) it was sampled with."""

    generated: list[Group]
    kept: list[Group]
    rounds: int
    placement: dict[str, float]
    version: int
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds of the sampling process: rollout (generation) and reward."""

    def to_json(self) -> dict:
        """A JSON-serialisable dict (`from_json` reads it back); kept groups are named by their place in generated."""
        kept = [next(i for i, g in enumerate(self.generated) if g is group) for group in self.kept]
        return {
            "generated": [asdict(group) for group in self.generated],
            "kept": kept,
            "rounds": self.rounds,
            "placement": self.placement,
            "version": self.version,
            "timings": self.timings,
        }

    @classmethod
    def from_json(cls, data: dict) -> StepRollouts:
        generated = [
            Group(
                row=group["row"],
                completions=[Completion(**c) for c in group["completions"]],
                scores=[RewardBreakdown(**s) for s in group["scores"]],
                rewards=group["rewards"],
            )
            for group in data["generated"]
        ]
        return cls(
            generated=generated,
            kept=[generated[i] for i in data["kept"]],
            rounds=data["rounds"],
            placement=data["placement"],
            version=data["version"],
            timings=data["timings"],
        )


def sample_step(parts: RolloutParts, trained: int, stage: int, batch: list[int], version: int) -> StepRollouts:
    """The rollouts of the step after `trained` optimizer steps on the rows `batch` of stage `stage`, sampled by every
    rank of `parts.world` with the engine's current weights (version `version`), in rounds: the batch's rows; then,
    with dynamic sampling, rows drawn from the same stage (seeded by seed, step and round) until the batch is full of
    groups whose rewards differ."""
    algo, seed = parts.config.algorithm, parts.config.trainer.seed
    timings: dict[str, float] = {}
    placement: dict[str, float] = {}
    generated: list[Group] = []
    kept: list[Group] = []
    for round_number in range(algo.max_filter_rounds if algo.filter_zero_variance_groups else 1):
        rows = batch if round_number == 0 else parts.stream.draw(stage, len(batch), (seed, trained, round_number))
        groups = _sample_groups(parts, trained, rows, round_number * len(batch), timings, placement)
        generated += groups
        kept += [g for g in groups if not (algo.filter_zero_variance_groups and g.zero_variance)]
        if len(kept) >= len(batch):
            break
    return StepRollouts(generated, kept[: len(batch)], round_number + 1, placement, version, timings)


def _sample_groups(
    parts: RolloutParts,
    trained: int,
    rows: list[int],
    first_index: int,
    timings: dict[str, float],
    placement: dict[str, float],
) -> list[Group]:
    """Every group of the batch `rows`, in its order: each rank samples and scores its share (by prompt tokens with
    trainer.balance_batch; the first round's balance goes into `placement`), then all are gathered.

    A prompt's seed comes from (rollout.seed, step, first_index + its place in `rows`): a resumed run samples the
    same, and so does any world size or share.
    """
    cfg, world, n = parts.config, parts.world, parts.config.rollout.n
    mine, balance = rollout_share(parts.prompt_tokens([parts.rows[i] for i in rows]), world, cfg.trainer.balance_batch)
    if first_index == 0:
        placement.update(balance)
    with timer(timings, "rollout"):
        prompts, images = parts.prompts_and_images([parts.rows[rows[i]] for i in mine])
        sampling = Sampling(
            max_tokens=cfg.data.max_response_length,
            temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p,
            top_k=cfg.rollout.top_k,
        )
        seeds = [prompt_seed(cfg.rollout.seed, trained, first_index + i) for i in mine]
        samples = parts.engine.generate(prompts, images, n, sampling, seeds)
    with timer(timings, "reward"):
        completions = [c for group in samples for c in group]
        scores = score_batch(
            [c.text for c in completions],
            [parts.rows[rows[i]] for i in mine for _ in range(n)],
            variant=cfg.reward.variant,
            mode=cfg.reward.mode,
            counting1_detail=cfg.reward.counting1_detail,
            metro_root=cfg.data.metro_root,
        )
        lengths = torch.tensor([len(c.token_ids) for c in completions])
        penalty = overlong_penalty(
            lengths, cfg.data.max_response_length, cfg.reward.overlong_buffer, cfg.reward.overlong_penalty_factor
        )
        rewards = (torch.tensor([s.total for s in scores], dtype=torch.float32) + penalty).tolist()
        groups = [
            (i, Group(rows[i], samples[k], scores[k * n : (k + 1) * n], rewards[k * n : (k + 1) * n]))
            for k, i in enumerate(mine)
        ]
        return [group for _, group in sorted(all_gather_lists(groups), key=lambda pair: pair[0])]


class ColocatedRollouts:
    """Rollouts sampled by every rank of the training world, with the weights it has just trained (the released
    stack): the engine syncs, samples, then sleeps while the step trains."""

    def __init__(self, parts: Components) -> None:
        self.parts = parts

    def start(self, trained: int, total: int, pending: list[dict]) -> None:
        """Nothing runs ahead, so a checkpoint holds no pending rollouts."""

    def collect(self, trained: int, stage: int, batch: list[int], timings: dict[str, float]) -> StepRollouts:
        """The next step's rollouts, sampled now with the current weights."""
        with timer(timings, "weight_sync"):
            self.parts.engine.sync_weights(self.parts.model)
        rollouts = sample_step(self.parts, trained, stage, batch, trained)
        self.parts.engine.sleep()  # its device memory goes to the reference pass and the update until the next sync
        for name, seconds in rollouts.timings.items():
            timings[name] = timings.get(name, 0.0) + seconds
        return rollouts

    def publish(self, model: torch.nn.Module, version: int, timings: dict[str, float]) -> dict[str, float]:
        """Nothing to send: the next `collect` syncs the engine in place."""
        return {}

    def metrics(self, trained: int, rollouts: StepRollouts) -> dict[str, float]:
        """None beyond the step's own: the samples are never stale."""
        return {}

    def pending(self, trained: int) -> list[dict]:
        return []

    def close(self) -> None:
        """Nothing to stop."""


def build_rollouts(config: RewardMapConfig, world: World, parts: Components) -> ColocatedRollouts | RemoteRollouts:
    """The rollout source rollout.placement names, for the training side of a run."""
    if config.rollout.placement == "separate":
        from rewardmap.grpo.remote import RemoteRollouts

        if world.link is None:
            raise InputError(
                "rollout.placement=separate needs a world split into trainers and rollout ranks: run it with "
                "`rewardmap train` (or scripts/reward_map.sh) under torchrun, or set rollout.placement=colocated"
            )

        return RemoteRollouts(config, world, parts)
    return ColocatedRollouts(parts)


def total_steps(config: RewardMapConfig, stream_length: int) -> int:
    """The steps of the run: the curriculum's batches, or trainer.max_steps of them."""
    limit = config.trainer.max_steps
    return stream_length if limit is None else min(limit, stream_length)


@contextlib.contextmanager
def timer(timings: dict[str, float], name: str) -> Iterator[None]:
    """Adds the seconds spent inside the block to timings[name]."""
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
