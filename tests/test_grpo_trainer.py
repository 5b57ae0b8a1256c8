"""The GRPO trainer on the real tiny model and synthetic maps: a step trains, checkpoints are atomic and verified,
a SIGKILLed run and a run stopped by SIGTERM (exit 75, a checkpoint of the step being trained) resume exactly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rewardmap.config import load_config
from rewardmap.grpo import checkpoint
from rewardmap.grpo.batching import Group
from rewardmap.grpo.trainer import GRPOTrainer
from rewardmap.rollout import Completion

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


def small_overrides(model_dir: Path, data_dir: Path, out: Path, *extra: str) -> list[str]:
    """A seconds-per-step workload: 2 prompts x 2 rollouts x 8 tokens, TorF only."""
    return [
        f"model.path={model_dir}",
        f"data.train_files={data_dir}",
        f"trainer.output_dir={out}",
        f"data.image_cache_dir={out / 'image_cache'}",
        "data.prompts_per_step=2",
        "data.max_pixels=50176",
        "data.max_response_length=8",
        "rollout.n=2",
        "sft.steps=0",
        "curriculum.stages=[{types: [TorF1, TorF2], steps: 4},"
        " {types: [Counting1, Counting2, Counting3, planning], steps: 1}]",
        "trainer.max_steps=4",
        "trainer.loggers=[jsonl]",
        *extra,
    ]


def parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_one_step_changes_the_weights(tiny_model_dir, synth_dataset_dir, tmp_path, world):
    config = load_config(DEMO, small_overrides(tiny_model_dir, synth_dataset_dir, tmp_path, "trainer.lr=1e-3"))
    trainer = GRPOTrainer(config, world)
    before = parameters(trainer.parts.model)
    stage, indices = trainer.parts.stream.next_batch()
    metrics = trainer.step(stage, indices)
    after = parameters(trainer.parts.model)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed, "a GRPO step with KL and entropy terms must move the weights"
    for key in ("reward/mean", "loss/kl", "loss/entropy", "optim/grad_norm", "timing/rollout_s", "timing/update_s"):
        assert key in metrics


def test_validation_scores_held_out_rows_with_the_eval_code(tiny_model_dir, synth_dataset_dir, tmp_path, world):
    extra = (f"data.val_files={synth_dataset_dir}", "data.val_limit=4", "trainer.val_freq=1")
    config = load_config(DEMO, small_overrides(tiny_model_dir, synth_dataset_dir, tmp_path, *extra))
    trainer = GRPOTrainer(config, world)
    assert len(trainer.parts.val_rows) == 4 and trainer.parts.val_root == synth_dataset_dir.resolve()
    metrics = trainer.validate()
    assert 0.0 <= metrics["val/accuracy"] <= 1.0 and metrics["timing/validation_s"] > 0
    assert any(key.startswith("val/") and key.endswith("/accuracy") and key.count("/") == 2 for key in metrics)


def test_zero_advantage_and_zero_kl_give_zero_loss(tiny_model_dir, synth_dataset_dir, tmp_path, world):
    config = load_config(
        DEMO, small_overrides(tiny_model_dir, synth_dataset_dir, tmp_path, "algorithm.entropy_coef=0")
    )
    trainer = GRPOTrainer(config, world)
    answers = [[9707, 1879, 151645], [9707, 151645]]
    groups = [
        Group(row, [Completion(ids, "", [], True) for ids in answers], [], [0.5, 0.5])  # equal rewards: advantage 0
        for row in trainer.parts.stream.next_batch()[1]
    ]
    stats = trainer.train_on(groups, {})  # the reference is the untrained policy: KL 0
    assert stats["loss/total"] == pytest.approx(0.0, abs=1e-7)
    assert stats["optim/grad_norm"] == pytest.approx(0.0, abs=1e-6)


def test_attention_per_part_trains_as_all_sdpa(tiny_model_dir, synth_dataset_dir, tmp_path, world):
    """The vision tower on transformers' eager attention beside an sdpa language model: the update's loss and gradient
    norm equal all-sdpa's, and the run's config.yaml records what each part resolved to."""
    answers = [[9707, 1879, 151645], [9707, 151645]]
    stats = {}
    for name, attention in (("sdpa", "sdpa"), ("parts", "{text: sdpa, vision: eager}")):
        extra = (f"model.attn_implementation={attention}", "trainer.lr=1e-3")
        config = load_config(DEMO, small_overrides(tiny_model_dir, synth_dataset_dir, tmp_path / name, *extra))
        trainer = GRPOTrainer(config, world)
        rows = trainer.parts.stream.next_batch()[1]
        groups = [Group(row, [Completion(ids, "", [], True) for ids in answers], [], [1.0, 0.0]) for row in rows]
        stats[name] = trainer.train_on(groups, {})
    for key in ("loss/total", "loss/entropy", "optim/grad_norm"):
        assert stats["parts"][key] == pytest.approx(stats["sdpa"][key], rel=1e-5), key
    assert stats["sdpa"]["optim/grad_norm"] > 0
    resolved = load_config(tmp_path / "parts" / "config.yaml").model
    assert resolved.attn_implementation == {"text": "sdpa", "vision": "eager"} and resolved.shared_prefix == "on"


def test_checkpoint_is_atomic_and_corruption_is_named(tiny_model_dir, synth_dataset_dir, tmp_path, world):
    config = load_config(DEMO, small_overrides(tiny_model_dir, synth_dataset_dir, tmp_path))
    trainer = GRPOTrainer(config, world)
    saved = trainer.save()
    assert checkpoint.verify(saved)["step"] == 0
    assert checkpoint.latest(tmp_path) == saved
    # a half-written save (no COMPLETE marker) is never picked up
    half = saved.with_name("step_000009")
    half.mkdir()
    (half / "trainer_state.json").write_text("{}")
    assert checkpoint.latest(tmp_path) == saved
    with pytest.raises(ValueError, match="step_000009 is incomplete"):
        checkpoint.resolve_resume(str(half), tmp_path)
    # a truncated weight file is named
    weights = next((saved / "sharded").glob("*.distcp"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{weights.name} should have"):
        checkpoint.verify(saved)
    assert checkpoint.latest(tmp_path) is None


def _train_command(overrides: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rewardmap.cli",
        "--log-level",
        "WARNING",
        "train",
        "--config",
        str(DEMO),
        *overrides,
    ]


def _steps(run_dir: Path) -> dict[int, dict]:
    from rewardmap.grpo.metrics import read_metrics

    return {record["step"]: record for record in read_metrics(run_dir)}


# With dynamic sampling and two mini-batches on (the 2-process resume tests cover the released step), from the
# warm-started model so that some groups' rewards differ.
VARIANT = ("algorithm.filter_zero_variance_groups=true", "trainer.mini_batches_per_step=2")


@pytest.fixture(scope="module")
def straight_run(warm_model_dir, synth_dataset_dir, module_dir) -> Path:
    """4 steps of the variant in one process, never interrupted: what the killed and the signalled runs reproduce."""
    out = module_dir / "straight"
    overrides = small_overrides(warm_model_dir, synth_dataset_dir, out, *VARIANT, "trainer.save_freq=1")
    subprocess.run(_train_command(overrides), check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=REPO)
    return out


def _assert_resumed_exactly(straight: Path, resumed: Path) -> None:
    """Steps 3 and 4 and the final weights and AdamW state of the resumed run are the straight run's, bit for bit."""
    first, second = _steps(straight), _steps(resumed)
    assert sorted(second) == [1, 2, 3, 4]
    assert all("filter/rounds" in record for record in second.values())
    assert sum(record["filter/kept_groups"] for record in first.values()) > 0, "some updates must have groups"
    for step in (3, 4):
        for key in ("loss/total", "loss/kl", "reward/mean", "response/length_mean", "groups/zero_variance_fraction"):
            assert second[step][key] == first[step][key], (step, key)
    final_a = sorted((checkpoint.latest(straight) / "sharded").glob("*.distcp"))
    final_b = sorted((checkpoint.latest(resumed) / "sharded").glob("*.distcp"))
    assert [path.read_bytes() for path in final_a] == [path.read_bytes() for path in final_b], "resumed state differs"
    state = json.loads((checkpoint.latest(resumed) / "trainer_state.json").read_text())
    assert state["step"] == 4


@pytest.mark.slow
def test_sigkill_then_resume_matches_the_uninterrupted_run(straight_run, warm_model_dir, synth_dataset_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    overrides = small_overrides(warm_model_dir, synth_dataset_dir, tmp_path, *VARIANT, "trainer.save_freq=1")
    overrides.append("trainer.save_limit=5")
    process = subprocess.Popen(_train_command(overrides), env=env, cwd=REPO)
    deadline = time.time() + 300
    while not (tmp_path / "checkpoints" / "step_000002" / "COMPLETE").is_file():
        assert process.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    subprocess.run(_train_command(overrides), check=True, env=env, cwd=REPO)
    _assert_resumed_exactly(straight_run, tmp_path)


@pytest.mark.slow
def test_sigterm_mid_step_saves_that_step_and_the_resume_is_exact(
    straight_run, warm_model_dir, synth_dataset_dir, tmp_path
):
    """SIGTERM during step 2 with save_freq=100: the only checkpoint before the end is the one the signal asked for,
    of the step being trained; exit 75; the same command then ends as the uninterrupted run, bit for bit."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    overrides = small_overrides(warm_model_dir, synth_dataset_dir, tmp_path, *VARIANT, "trainer.save_freq=100")
    process = subprocess.Popen(_train_command(overrides), env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (tmp_path / "metrics.jsonl").is_file() or not (tmp_path / "metrics.jsonl").read_text():
        assert process.poll() is None and time.time() < deadline, "the run ended before its first step"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=300)[1]
    assert process.returncode == 75, stderr[-3000:]
    saved = tmp_path / "checkpoints" / "step_000002"
    assert f"rewardmap train: stopped by SIGTERM after step 2 with checkpoint {saved}; run the same command" in stderr
    assert [p.name for p in checkpoint.checkpoint_root(tmp_path).iterdir()] == ["step_000002"]
    assert checkpoint.verify(saved)["step"] == 2 and sorted(_steps(tmp_path)) == [1, 2]
    subprocess.run(_train_command(overrides), check=True, env=env, cwd=REPO)
    _assert_resumed_exactly(straight_run, tmp_path)
