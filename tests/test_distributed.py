"""Data-parallel GRPO in real `torchrun` worlds of 2 CPU processes (gloo): the update is invariant to the world
size, ranks train disjoint whole groups, a SIGKILLed 2-process run resumes exactly, so does one stopped by SIGTERM to
torchrun, two "nodes" train together, LoRA trains and merges, and `rewardmap merge` reads exactly what the trainer
wrote."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from rewardmap.distributed import World
from rewardmap.grpo import checkpoint
from rewardmap.grpo.metrics import read_metrics
from rewardmap.grpo.trainer import whole_batch
from rewardmap.models.merge import load_checkpoint_model, merge_checkpoint

from .test_grpo_trainer import DEMO, REPO, small_overrides

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
MIXED_MAPS = (
    "--sample",
    "data.max_pixels=200704",
    "data.prompts_per_step=4",
    "data.max_response_length=8",
    "trainer.micro_batch_tokens=600",
)
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nproc: int, *args: str, nnodes: int = 1, node_rank: int = 0, port: int | None = None) -> list[str]:
    """A torchrun command line on 127.0.0.1 (static rendezvous)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--nnodes={nnodes}",
        f"--node_rank={node_rank}",
        "--master_addr=127.0.0.1",
        f"--master_port={port or free_port()}",
        *args,
    ]


def train_args(*overrides: str) -> list[str]:
    return ["-m", "rewardmap.cli", "--log-level", "WARNING", "train", "--config", str(DEMO), *overrides]


def test_ranks_take_disjoint_whole_groups():
    indices = [7, 3, 9, 1, 4, 8]
    shares = [indices[World(rank, 2, rank, torch.device("cpu")).shard(indices, "prompts")] for rank in (0, 1)]
    assert shares == [[7, 3, 9], [1, 4, 8]]
    assert whole_batch([5, 6, 7], 2) == [5, 6, 7, 5]  # a stage's last, odd batch: padded with its own rows
    assert whole_batch([5, 6], 2) == [5, 6]
    with pytest.raises(ValueError, match="5 prompts do not split evenly over 2 processes"):
        World(0, 2, 0, torch.device("cpu")).shard([1, 2, 3, 4, 5], "prompts")


@pytest.mark.parametrize(
    "options",
    [
        # 4 prompts in 2 mini-batches, 2 epochs: 4 optimizer steps; KL > 0 once the policy has moved.
        pytest.param(
            ("data.prompts_per_step=4", "trainer.mini_batches_per_step=2", "algorithm.ppo_epochs=2"), id="mini-batches"
        ),
        # the released step (one mini-batch, one epoch) on maps of three sizes (mixed_maps_dataset_dir): sampled,
        # then trained in balanced shares of 600-token passes, and merged
        pytest.param(MIXED_MAPS, id="released, balanced mixed maps"),
    ],
)
def test_update_and_merge_are_invariant_to_world_size(tiny_model_dir, synth_dataset_dir, tmp_path, options, request):
    script = str(REPO / "tests" / "dp_update_script.py")
    data = request.getfixturevalue("mixed_maps_dataset_dir") if options == MIXED_MAPS else synth_dataset_dir
    # Both worlds at once: the one-process world keeps only one core busy (OMP_NUM_THREADS=1).
    launched = [
        subprocess.Popen(
            torchrun(size, script, str(tiny_model_dir), str(data), str(tmp_path / f"world{size}"), *options), env=ENV
        )
        for size in (1, 2)
    ]
    assert [process.wait() for process in launched] == [0, 0]
    one, two = (json.loads((tmp_path / f"world{n}" / "stats.json").read_text()) for n in (1, 2))
    assert sorted(two["trained_prompts"][0] + two["trained_prompts"][1]) == sorted(one["trained_prompts"][0])
    assert two["sampled"] == one["sampled"], "seeds by global index: the same samples whatever rank draws a prompt"
    for key in ("loss/total", "loss/policy", "loss/kl", "loss/entropy", "loss/ratio_mean", "loss/clip_fraction"):
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
    assert two["optim/grad_norm"] == pytest.approx(one["optim/grad_norm"], rel=1e-6)  # summed in fp64 per shard
    assert one["optim/grad_norm"] > 0
    if options == MIXED_MAPS:  # balancing moved prompts and groups off their contiguous ranks, passes were packed
        assert two["balance/rollout_max_over_mean"] < two["balance/rollout_max_over_mean_before"]
        assert two["balance/max_over_mean"] < two["balance/max_over_mean_before"]
        assert two["batch/micro_batches_per_rank"] < one["batch/micro_batches_per_rank"]
    elif options:
        assert one["loss/kl"] > 0 and one["loss/ratio_mean"] != 1.0, "later optimizer steps must be off-policy"
    weights_one, weights_two = (load_file(tmp_path / f"world{n}" / "weights.safetensors") for n in (1, 2))
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    moved = max((weights_one[k] - base[k]).abs().max().item() for k in weights_one)
    assert moved > 1e-4, "the update must move the weights for the comparison to mean anything"
    difference = max((weights_one[k] - weights_two[k]).abs().max().item() for k in weights_one)
    # Each AdamW step can turn an fp32 summation-order difference of the gradients into up to ~1e-5 of weight
    # (1-process: one sum; 2 processes: two shards' sums added), and the mini-batch case takes 4 steps.
    assert difference <= (4e-5 if options else 1e-5), difference
    if options:
        return
    # The merge of the 2-process checkpoint gives the trained model's logits.
    merged = merge_checkpoint(two["checkpoint"], tmp_path / "merged", dtype="fp32")
    trained, _ = load_checkpoint_model(two["checkpoint"], dtype=torch.float32)
    model = AutoModelForImageTextToText.from_pretrained(merged, dtype=torch.float32).eval()
    assert max((model.state_dict()[k] - weights_two[k]).abs().max().item() for k in weights_two) == 0.0
    ids = torch.tensor([[9707, 1879, 374, 220, 16, 13]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, trained(input_ids=ids).logits)


def test_shared_prefix_equals_one_sequence_per_completion_under_fsdp2(tiny_model_dir, tmp_path):
    script = str(REPO / "tests" / "dp_shared_prefix_script.py")
    subprocess.run(torchrun(2, script, str(tiny_model_dir), str(tmp_path)), env=ENV, check=True)
    diffs = json.loads((tmp_path / "diffs.json").read_text())
    assert diffs["world_size"] == 2 and diffs["compared"] > 0, diffs
    assert max(diffs["logps"], diffs["entropy"], diffs["grads"]) <= 1e-5, diffs


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    model, _ = load_checkpoint_model(ckpt, dtype=torch.float32)
    return model.state_dict()


# Maps of three sizes in balanced shares and token-budget passes (the placement depends on nothing random).
BALANCED = ("data.max_pixels=200704", "trainer.micro_batch_tokens=600", "trainer.balance_batch=true")


def _two_process_overrides(tiny_model_dir: Path, mixed_maps_dataset_dir: Path, out: Path, *extra: str) -> list[str]:
    return small_overrides(tiny_model_dir, mixed_maps_dataset_dir, out, "trainer.save_limit=5", *BALANCED, *extra)


@pytest.fixture(scope="module")
def straight_two_process_run(tiny_model_dir, mixed_maps_dataset_dir, module_dir) -> Path:
    """A 2-process run of 4 steps, never interrupted: what the killed and the signalled runs must reproduce."""
    out = module_dir / "straight"
    overrides = _two_process_overrides(tiny_model_dir, mixed_maps_dataset_dir, out, "trainer.save_freq=1")
    subprocess.run(torchrun(2, *train_args(*overrides)), env=ENV, check=True, cwd=REPO)
    return out


def _assert_resumed_exactly(straight: Path, resumed: Path) -> None:
    """Steps 3 and 4 and the final weights of the resumed run are the straight run's, bit for bit."""
    first = {record["step"]: record for record in read_metrics(straight)}
    second = {record["step"]: record for record in read_metrics(resumed)}
    assert sorted(second) == [1, 2, 3, 4]
    assert first[1]["batch/sequences"] == 4 and first[1]["batch/sequences_per_rank"] == 2
    for step in (3, 4):
        for key in ("loss/total", "loss/kl", "reward/mean", "response/length_mean", "optim/grad_norm"):
            assert second[step][key] == first[step][key], (step, key)
        assert second[step]["balance/rollout_max_over_mean"] == first[step]["balance/rollout_max_over_mean"]
    final_a, final_b = _weights(checkpoint.latest(straight)), _weights(checkpoint.latest(resumed))
    assert all(torch.equal(final_a[name], final_b[name]) for name in final_a), "resumed weights differ"
    assert json.loads((checkpoint.latest(resumed) / "trainer_state.json").read_text())["world_size"] == 2


def test_two_process_run_resumes_exactly_after_sigkill(
    straight_two_process_run, tiny_model_dir, mixed_maps_dataset_dir, tmp_path
):
    overrides = _two_process_overrides(tiny_model_dir, mixed_maps_dataset_dir, tmp_path, "trainer.save_freq=1")
    process = subprocess.Popen(torchrun(2, *train_args(*overrides)), env=ENV, cwd=REPO, start_new_session=True)
    deadline = time.time() + 300
    while not (tmp_path / "checkpoints" / "step_000002" / "COMPLETE").is_file():
        assert process.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both ranks, at once
    process.wait()
    subprocess.run(torchrun(2, *train_args(*overrides)), env=ENV, check=True, cwd=REPO)
    _assert_resumed_exactly(straight_two_process_run, tmp_path)


def test_sigterm_to_torchrun_stops_every_rank_at_the_same_step_with_a_checkpoint(
    straight_two_process_run, tiny_model_dir, mixed_maps_dataset_dir, tmp_path
):
    """torchrun passes the SIGTERM on to both ranks; they agree at the end of step 2 (the step being trained), save
    it (save_freq=100: no other save before the end), exit 75 each; torchrun itself exits 1 (its SignalException).
    Started again, the run ends as the uninterrupted one, bit for bit."""
    overrides = _two_process_overrides(tiny_model_dir, mixed_maps_dataset_dir, tmp_path, "trainer.save_freq=100")
    process = subprocess.Popen(
        torchrun(2, *train_args(*overrides)), env=ENV, cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while not (tmp_path / "metrics.jsonl").is_file() or not (tmp_path / "metrics.jsonl").read_text():
        assert process.poll() is None and time.time() < deadline, "the run ended before its first step"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # to the launcher only, during step 2
    stderr = process.communicate(timeout=300)[1]
    assert process.returncode == 1, stderr[-3000:]
    assert "SignalException" in stderr and stderr.count("SIGTERM: stopping after this step with a checkpoint") == 2
    saved = tmp_path / "checkpoints" / "step_000002"
    assert f"rewardmap train: stopped by SIGTERM after step 2 with checkpoint {saved}; run the same command" in stderr
    assert [p.name for p in checkpoint.checkpoint_root(tmp_path).iterdir()] == ["step_000002"]
    assert json.loads((saved / "trainer_state.json").read_text())["step"] == 2
    subprocess.run(torchrun(2, *train_args(*overrides)), env=ENV, check=True, cwd=REPO)
    _assert_resumed_exactly(straight_two_process_run, tmp_path)


def test_two_nodes_on_one_machine_train_together(tiny_model_dir, synth_dataset_dir, tmp_path):
    """scripts/reward_map.sh on two "nodes" (one process each, rendezvous on 127.0.0.1), as the README's commands."""
    out = tmp_path / "run"
    validation = (f"data.val_files={synth_dataset_dir}", "data.val_limit=3", "trainer.val_freq=2")
    overrides = small_overrides(tiny_model_dir, synth_dataset_dir, out, "trainer.max_steps=2", *validation)
    script = ["bash", str(REPO / "scripts" / "reward_map.sh"), "--config", str(DEMO), *overrides]
    port = str(free_port())
    nodes = [
        subprocess.Popen(script, env={**ENV, "NPROC": "1", "NNODES": "2", "NODE_RANK": rank, "MASTER_PORT": port})
        for rank in ("0", "1")
    ]
    assert [node.wait(timeout=600) for node in nodes] == [0, 0]
    saved = checkpoint.latest(out)
    assert saved.name == "step_000002"
    assert json.loads((saved / "trainer_state.json").read_text())["world_size"] == 2
    assert sorted(path.name for path in (saved / "rng").iterdir()) == ["rank_00000.pt", "rank_00001.pt"]
    records = read_metrics(out)
    assert [record["batch/sequences_per_rank"] for record in records] == [2, 2]
    assert 0.0 <= records[1]["val/accuracy"] <= 1.0  # 3 held-out rows answered by 2 ranks, each counted once


def test_lora_in_two_processes_trains_checkpoints_and_merges(tiny_model_dir, synth_dataset_dir, tmp_path):
    out = tmp_path / "run"
    lora = ("model.lora_rank=4", "model.lora_alpha=8", "trainer.lr=1e-2", "trainer.max_steps=2")
    subprocess.run(
        torchrun(2, *train_args(*small_overrides(tiny_model_dir, synth_dataset_dir, out, *lora))),
        env=ENV,
        check=True,
        cwd=REPO,
    )
    saved = checkpoint.latest(out)
    assert (saved / "model" / "adapter_config.json").is_file()
    merged = load_file(next(merge_checkpoint(saved, tmp_path / "merged", dtype="fp32").glob("*.safetensors")))
    base = load_file(next(tiny_model_dir.glob("*.safetensors")))
    query = "model.layers.0.self_attn.q_proj.weight"  # the names of the files save_pretrained writes
    assert (merged[query] - base[query]).abs().max() > 1e-6, "the trained adapters must reach the merged weights"
    embed = "model.embed_tokens.weight"
    assert torch.equal(merged[embed], base[embed]), "LoRA must leave the frozen weights alone"


def test_resume_in_another_world_size_reshards(tiny_model_dir, tmp_path, synth_dataset_dir):
    """A 2-process checkpoint resumed by one process: DCP reshards, and training continues from its step."""
    out = tmp_path / "run"
    args = small_overrides(tiny_model_dir, synth_dataset_dir, out, "trainer.max_steps=1")
    subprocess.run(torchrun(2, *train_args(*args)), env=ENV, check=True, cwd=REPO)
    more = small_overrides(tiny_model_dir, synth_dataset_dir, out, "trainer.max_steps=2")
    subprocess.run([sys.executable, *train_args(*more)], env=ENV, check=True, cwd=REPO)
    assert [record["batch/sequences_per_rank"] for record in read_metrics(out)] == [2, 4]
    assert json.loads((checkpoint.latest(out) / "trainer_state.json").read_text())["world_size"] == 1


def test_prompts_that_do_not_split_over_the_world_are_refused(tiny_model_dir, synth_dataset_dir, tmp_path):
    args = small_overrides(tiny_model_dir, synth_dataset_dir, tmp_path / "run", "data.prompts_per_step=3")
    result = subprocess.run(torchrun(2, *train_args(*args)), env=ENV, cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0
    assert "data.prompts_per_step=3 does not split into trainer.mini_batches_per_step=1 mini-batches over the " in (
        result.stderr
    )
