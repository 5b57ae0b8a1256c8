"""A seeded GRPO run on a small synthetic task raises the policy's mean reward well above where it started."""

import pytest

from rewardmap.config import load_config
from rewardmap.grpo.trainer import GRPOTrainer
from rewardmap.reward import score_batch
from rewardmap.rollout import Sampling

from .test_grpo_trainer import DEMO


def sampled_reward(trainer: GRPOTrainer, rows: list[dict]) -> float:
    """Mean reward of 4 sampled answers per row, with a fixed sampling seed."""
    parts = trainer.parts
    prompts, images = parts.prompts_and_images(rows)
    groups = parts.engine.generate(prompts, images, 4, Sampling(max_tokens=6, temperature=1.0, seed=1234))
    scores = score_batch([c.text for group in groups for c in group], [row for row in rows for _ in range(4)])
    return sum(score.total for score in scores) / len(scores)


@pytest.mark.slow
def test_grpo_raises_the_reward_on_true_false_questions(warm_model_dir, synth_dataset_dir, tmp_path, world):
    overrides = [
        f"model.path={warm_model_dir}",  # a short warm start: answers in format some of the time, not yet reliably
        f"data.train_files={synth_dataset_dir}",
        f"trainer.output_dir={tmp_path}",
        f"data.image_cache_dir={tmp_path / 'image_cache'}",
        "data.max_pixels=50176",
        "data.max_response_length=6",
        "data.prompts_per_step=4",
        "rollout.n=4",
        "sft.steps=0",
        "trainer.lr=6e-4",
        "trainer.loggers=[jsonl]",
        "trainer.val_freq=0",
        "trainer.save_freq=1000",
        "trainer.max_steps=24",
        "curriculum.stages=[{types: [TorF1, TorF2], steps: 24}, {types: [Counting1, Counting2, Counting3, planning]}]",
    ]
    trainer = GRPOTrainer(load_config(DEMO, overrides), world)
    probe = [row for row in (trainer.parts.rows[i] for i in range(len(trainer.parts.rows))) if "TorF" in row["type"]]
    assert len(probe) == 34
    before = sampled_reward(trainer, probe)
    trainer.fit()
    after = sampled_reward(trainer, probe)
    print(f"mean reward on the 34 true/false rows x 4 samples: {before:.2f} -> {after:.2f}")
    # 136 samples of rewards in {0, 10, 12, 15}: the standard error of the mean is about 0.45. Seeded, this run goes
    # from 3.32 to 5.44 on 2 CPU cores; with trainer, rollout and curriculum seeds 1, 2 and 3 the gain was 1.44, 1.89
    # and 2.06 (16 steps at lr 3e-4 gained only 0.87-1.02: too close to the bar, any change of rounding crossed it).
    assert after >= before + 1.0, (before, after)
