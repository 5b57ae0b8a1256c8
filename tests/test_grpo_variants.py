"""GRPO variants on the real tiny model: several updates per rollout batch, dynamic sampling, Dr.GRPO / GSPO /
rollout-IS / overlong options, the sparse-reward diagnostics, and the plumbing they share (draws)."""

import pytest
import torch

from rewardmap.config import load_config
from rewardmap.data.curriculum import CurriculumStream
from rewardmap.grpo import rollouts
from rewardmap.grpo.batching import Group
from rewardmap.grpo.metrics import group_metrics
from rewardmap.grpo.trainer import GRPOTrainer
from rewardmap.rollout import Completion
from tests.test_grpo_trainer import DEMO, small_overrides


def test_zero_variance_groups_and_diagnostics():
    rows = [{"type": "TorF1"}, {"type": "TorF1"}, {"type": "Counting1"}]
    groups = [Group(0, [], [], [1.0, 1.0]), Group(1, [], [], [0.0, 0.0]), Group(2, [], [], [0.0, 1.0])]
    assert [g.zero_variance for g in groups] == [True, True, False]
    metrics = group_metrics(groups, rows)
    assert metrics["groups/zero_variance_fraction"] == pytest.approx(2 / 3)
    assert metrics["groups/all_zero_fraction"] == pytest.approx(1 / 3)
    assert metrics["groups/reward_std"] == pytest.approx(0.5 / 3)
    assert metrics["groups/TorF1/zero_variance_fraction"] == 1.0
    assert metrics["groups/Counting1/zero_variance_fraction"] == 0.0


def test_refill_draws_stay_in_the_stage_and_repeat_for_the_same_key():
    types = ["TorF1"] * 6 + ["Counting1"] * 6
    stream = CurriculumStream(types, [{"types": ["TorF1"]}, {"types": ["Counting1"]}], batch_size=2, seed=3)
    first = stream.draw(1, 4, (42, 7, 1))
    assert set(first) <= set(range(6, 12)) and len(set(first)) == 4, "rows of stage 1 only, none twice"
    assert stream.draw(1, 4, (42, 7, 1)) == first, "the same key draws the same rows (exact resume)"
    assert stream.draw(1, 4, (42, 7, 2)) != first
    assert len(stream.draw(0, 9, (0, 0, 1))) == 9, "a stage smaller than the draw repeats rows"


def _trainer(tiny_model_dir, synth_dataset_dir, tmp_path, world, *extra: str) -> GRPOTrainer:
    return GRPOTrainer(load_config(DEMO, small_overrides(tiny_model_dir, synth_dataset_dir, tmp_path, *extra)), world)


def _constructed_groups(trainer: GRPOTrainer) -> list[Group]:
    """The first batch's prompts, each with two fixed answers of different rewards (advantages +-0.71)."""
    answers = [Completion([9707, 1879, 151645], "", [], True), Completion([2152, 13, 151645], "", [], True)]
    return [Group(row, answers, [], [1.0, 0.0]) for row in trainer.parts.stream.next_batch()[1]]


def test_defaults_are_on_policy_and_several_epochs_clip(tiny_model_dir, synth_dataset_dir, tmp_path, world):
    released = _trainer(tiny_model_dir, synth_dataset_dir, tmp_path / "released", world, "trainer.lr=1e-2")
    timings: dict[str, float] = {}
    stats = released.train_on(_constructed_groups(released), timings)
    assert stats["loss/ratio_mean"] == 1.0 and stats["loss/clip_fraction"] == 0.0, "one update: ratio exactly 1"
    assert stats["optim/updates"] == 1
    assert "old_logprobs" not in timings, "the defaults compute no old log-probs"
    # two epochs with a large learning rate: the second epoch's ratio moves off 1 and a tight clip engages
    options = (
        "trainer.lr=1e-2",
        "algorithm.ppo_epochs=2",
        "algorithm.clip_ratio_low=0.01",
        "algorithm.clip_ratio_high=0.01",
    )
    epochs = _trainer(tiny_model_dir, synth_dataset_dir, tmp_path / "epochs", world, *options)
    stats = epochs.train_on(_constructed_groups(epochs), timings)
    assert stats["loss/ratio_mean"] != 1.0 and stats["loss/clip_fraction"] > 0.0
    assert stats["optim/updates"] == 2
    assert timings["old_logprobs"] > 0


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(
            ("algorithm.importance_level=sequence", "algorithm.clip_ratio_low=3e-4", "algorithm.clip_ratio_high=4e-4"),
            id="gspo",
        ),
        pytest.param(
            (
                "algorithm.advantage_std_norm=false",
                "algorithm.loss_agg=seq-mean-token-sum-norm",
                "reward.overlong_buffer=4",
            ),
            id="dr-grpo-overlong",
        ),
        pytest.param(("algorithm.rollout_is=truncated",), id="rollout-is"),
        pytest.param(("algorithm.mask_truncated=true",), id="mask-truncated"),
    ],
)
def test_each_option_trains_a_step(tiny_model_dir, synth_dataset_dir, tmp_path, world, options):
    trainer = _trainer(tiny_model_dir, synth_dataset_dir, tmp_path, world, "trainer.lr=1e-3", *options)
    metrics = trainer.step(*trainer.parts.stream.next_batch())
    assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values()), metrics
    assert metrics["response/finished_fraction"] == 0.0, "the untrained tiny model's 8-token answers are all cut"
    if "algorithm.rollout_is=truncated" in options:
        # the HF engine samples with the trainer's own model: the weights are 1 up to float noise
        assert metrics["rollout_is/weight_mean"] == pytest.approx(1.0, abs=1e-4)
        assert 1.0 <= metrics["rollout_is/weight_max"] <= 2.0
    if "algorithm.mask_truncated=true" in options:
        assert metrics["loss/total"] == 0.0 and metrics["optim/grad_norm"] == 0.0, "cut answers carry no loss"
    else:
        assert metrics["optim/grad_norm"] > 0.0
    if "reward.overlong_buffer=4" in options:
        # 8 tokens at a limit of 8 with a buffer of 4: the full penalty, -1 each, on top of the released reward
        assert metrics["reward/overlong_penalty_mean"] == pytest.approx(-1.0)


def test_dynamic_sampling_refills_from_the_same_stage(warm_model_dir, synth_dataset_dir, tmp_path, world, monkeypatch):
    trainer = _trainer(
        warm_model_dir,
        synth_dataset_dir,
        tmp_path,
        world,
        "algorithm.filter_zero_variance_groups=true",
        "algorithm.max_filter_rounds=3",
    )
    stage, indices = trainer.parts.stream.next_batch()
    seen: list[list[int]] = []
    sample_groups = rollouts._sample_groups

    def recording(parts, trained, rows, *rest):
        seen.append(list(rows))
        return sample_groups(parts, trained, rows, *rest)

    monkeypatch.setattr(rollouts, "_sample_groups", recording)
    metrics = trainer.step(stage, indices)
    assert seen[0] == indices and 1 <= len(seen) <= 3 and metrics["filter/rounds"] == len(seen)
    stage_rows = set(trainer.parts.stream.stage_rows[stage])
    assert all(set(rows) <= stage_rows for rows in seen), "refills never mix stages"
    assert 1 <= metrics["filter/kept_groups"] <= len(indices), "the warm model's groups are not all equal"
    generated = len(seen) * len(indices)
    zero = round(metrics["groups/zero_variance_fraction"] * generated)
    assert metrics["filter/kept_groups"] == min(len(indices), generated - zero)
