"""Rollouts that overlap training (rollout.placement=separate) in real `torchrun` worlds of 3 CPU processes: one
rollout rank (the transformers engine on its own copy of the policy) and two trainers. With max_staleness 0 the run
trains exactly as a colocated 2-process run; with 1, step s samples with the weights after step s-2 and the loss uses
the trainer's recomputed log-probs; a run killed with -9 resumes to the uninterrupted run's metrics; a rollout rank
that dies takes the run down, named, within the stated timeout."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from rewardmap.config import load_config
from rewardmap.distributed import World, join_world
from rewardmap.errors import InputError
from rewardmap.grpo.batching import whole_batch
from rewardmap.grpo.remote import sampling_version
from rewardmap.grpo.rollouts import StepRollouts, sample_step
from rewardmap.grpo.setup import build_rollout_parts
from rewardmap.models.merge import load_checkpoint_model

from .test_distributed import ENV, free_port, torchrun, train_args
from .test_grpo_trainer import DEMO, REPO, small_overrides

SEPARATE = ("rollout.placement=separate", "rollout.ranks=1")
ONE_STEP_OFF = (*SEPARATE, "rollout.max_staleness=1", "algorithm.rollout_is=truncated")  # as the README recommends
COMPARED = (
    "loss/total",
    "loss/policy",
    "loss/kl",
    "loss/ratio_mean",
    "optim/grad_norm",
    "reward/mean",
    "batch/tokens",
)


def overrides(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """3 steps of 2 prompts x 2 answers x 8 tokens, a checkpoint after each."""
    return small_overrides(
        model,
        data,
        out,
        "trainer.max_steps=3",
        "trainer.save_freq=1",
        "trainer.save_limit=5",
        "trainer.lr=1e-3",
        *extra,
    )


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def answers(run: Path) -> list[tuple[int, int, list[str]]]:
    """(step, row, answer texts) of every sample record."""
    records = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    return [(r["step"], r["row"], [a["text"] for a in r["answers"]]) for r in records]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, synth_dataset_dir, module_dir) -> dict[str, Path]:
    """The run directories of: colocated in 2 processes; separate (1 rollout rank + 2 trainers) with max_staleness
    0 and 1."""
    layouts = {
        "colocated": (2, ()),
        "separate k=0": (3, SEPARATE),
        "separate k=1": (3, ONE_STEP_OFF),
    }
    out = {}
    for name, (nproc, extra) in layouts.items():
        run = module_dir / name.replace(" ", "_")
        command = torchrun(nproc, *train_args(*overrides(tiny_model_dir, synth_dataset_dir, run, *extra)))
        subprocess.run(command, env=ENV, check=True, cwd=REPO)
        out[name] = run
    return out


@pytest.mark.slow
def test_separate_without_staleness_trains_as_colocated(runs):
    colocated, separate = metrics(runs["colocated"]), metrics(runs["separate k=0"])
    assert [m["step"] for m in separate] == [1, 2, 3]
    assert answers(runs["separate k=0"]) == answers(runs["colocated"]), "the same samples, whoever draws them"
    for one, two in zip(colocated, separate, strict=True):
        for key in COMPARED:
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-7), (one["step"], key)
        assert two["async/staleness_mean"] == 0.0
        assert "async/staleness_mean" not in one
    assert colocated[1]["loss/kl"] > 0, "step 2 must train on moved weights for the comparison to mean anything"
    sent = [m["async/weight_bytes"] for m in separate if "async/weight_bytes" in m]
    assert len(sent) == 2 and sent[0] > 1e6, "versions 1 and 2 go to the rollout rank (the last step needs none)"
    assert all(m["timing/weight_transfer_s"] > 0 for m in separate[:2])


@pytest.mark.slow
def test_one_step_off_samples_with_the_weights_after_step_s_minus_2(runs, tiny_model_dir, synth_dataset_dir, world):
    """Step 3's rollouts (held as pending by checkpoint 2) are what an engine with checkpoint 1's weights samples;
    checkpoint 2's weights (what max_staleness 0 would use) sample other log-probs."""
    run = runs["separate k=1"]
    stale = metrics(run)
    assert [m["async/staleness_mean"] for m in stale] == [0.0, 1.0, 1.0]
    assert [sampling_version(step, 1) for step in (1, 2, 3)] == [0, 0, 1]
    assert answers(run)[:2] == answers(runs["separate k=0"])[:2], "step 1 samples with the initial weights either way"
    # The ratio is against the trainer's own log-probs before the update (1: one update per step), the rollout
    # correction against the engine's: 1 for fresh samples, not for samples of older weights.
    assert [m["loss/ratio_mean"] for m in stale] == pytest.approx([1.0, 1.0, 1.0])
    assert stale[0]["rollout_is/weight_mean"] == pytest.approx(1.0, abs=1e-4)
    assert all(abs(m["rollout_is/weight_mean"] - 1.0) > 1e-3 for m in stale[1:]), stale
    assert "timing/old_logprobs_s" not in stale[0], "one update per step: its own forward gives the old log-probs"
    state = json.loads((run / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    (pending,) = [StepRollouts.from_json(data) for data in state["pending_rollouts"]]
    assert pending.version == 1
    config = load_config(DEMO, overrides(tiny_model_dir, synth_dataset_dir, run))
    parts = build_rollout_parts(config, world)
    stage, indices = parts.stream.batches[2]
    logprobs = {}
    for version in (1, 2):
        trained, _ = load_checkpoint_model(run / "checkpoints" / f"step_{version:06d}", dtype=torch.float32)
        parts.engine.load_weights(trained.state_dict().items())
        again = sample_step(parts, 2, stage, whole_batch(list(indices), 2), version)
        logprobs[version] = [x for g in again.generated for c in g.completions for x in c.logprobs]
        if version == 1:
            assert [c.token_ids for g in again.generated for c in g.completions] == [
                c.token_ids for g in pending.generated for c in g.completions
            ]
    assert logprobs[1] == pytest.approx(
        [x for g in pending.generated for c in g.completions for x in c.logprobs], abs=1e-5
    )
    assert logprobs[2] != pytest.approx(logprobs[1], abs=1e-5)


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_run(runs, tiny_model_dir, synth_dataset_dir, tmp_path):
    args = train_args(*overrides(tiny_model_dir, synth_dataset_dir, tmp_path, *ONE_STEP_OFF))
    process = subprocess.Popen(torchrun(3, *args), env=ENV, cwd=REPO, start_new_session=True)
    deadline = time.time() + 300
    while not (tmp_path / "checkpoints" / "step_000001" / "COMPLETE").is_file():
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher, both trainers and the rollout rank, at once
    process.wait()
    subprocess.run(torchrun(3, *args), env=ENV, check=True, cwd=REPO)
    straight = {m["step"]: m for m in metrics(runs["separate k=1"])}
    resumed = {m["step"]: m for m in metrics(tmp_path)}  # a step logged twice (killed after logging): the last one
    assert sorted(resumed) == [1, 2, 3]
    for step in (2, 3):
        for key in COMPARED:
            assert resumed[step][key] == pytest.approx(straight[step][key], rel=1e-6, abs=1e-9), (step, key)
    assert answers(tmp_path)[-4:] == answers(runs["separate k=1"])[-4:], "steps 2-3 trained the same rollouts"


@pytest.mark.slow
def test_a_dead_rollout_rank_takes_the_run_down_naming_it(tiny_model_dir, synth_dataset_dir, tmp_path):
    args = train_args(
        *overrides(tiny_model_dir, synth_dataset_dir, tmp_path, *SEPARATE, "trainer.collective_timeout_s=60")
    )
    process = subprocess.Popen(
        torchrun(3, *args), env=ENV, cwd=REPO, start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while not (tmp_path / "metrics.jsonl").is_file() or not (tmp_path / "metrics.jsonl").read_text():
        assert process.poll() is None and time.time() < deadline, "the run ended before its first step"
        time.sleep(0.2)
    os.kill(_local_rank_pid(process.pid, 2), signal.SIGKILL)
    killed = time.time()
    stderr = process.communicate(timeout=240)[1]
    assert process.returncode != 0
    assert time.time() - killed < 120, "no hang past trainer.collective_timeout_s plus torchrun's grace period"
    assert "local_rank: 2" in stderr and "Signal 9 (SIGKILL)" in stderr, stderr[-3000:]


def _local_rank_pid(launcher: int, local_rank: int) -> int:
    """The pid of the worker torchrun (`launcher`) started with LOCAL_RANK=`local_rank`."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    for pid in children:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"LOCAL_RANK={local_rank}".encode() in env:
            return int(pid)
    raise AssertionError(f"no worker with LOCAL_RANK={local_rank} among {children}")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["rollout.max_staleness=1"], "rollout.max_staleness=1 needs rollout.placement=separate"),
        (["rollout.placement=apart"], "rollout.placement='apart' is not one of colocated, separate"),
        (["rollout.placement=separate", "rollout.ranks=0"], "ranks and weight_bucket_mb must be >= 1"),
    ],
)
def test_placement_keys_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(InputError, match=message):
        load_config(DEMO, overrides)


def test_a_world_that_cannot_be_split_is_refused(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(InputError, match="needs a torchrun world: rollout.ranks processes sample"):
        with join_world(rollout_ranks=1):
            pass
    launch = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    for name, value in launch.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match="rollout.ranks=1 leaves no trainer in a world of 1 processes"):
        with join_world(rollout_ranks=1):
            pass


def test_rollout_ranks_that_tensor_parallelism_cannot_tile_are_refused(tiny_model_dir, synth_dataset_dir, tmp_path):
    config = load_config(
        DEMO,
        overrides(tiny_model_dir, synth_dataset_dir, tmp_path, *SEPARATE, "rollout.engine=vllm")
        + ["rollout.tensor_parallel_size=2"],
    )
    one_rollout_rank = World(rank=0, size=1, local_rank=0, device=torch.device("cpu"), role="rollout")
    with pytest.raises(InputError, match="rollout.tensor_parallel_size=2 does not divide rollout.ranks=1: each vLLM"):
        build_rollout_parts(config, one_rollout_rank)
