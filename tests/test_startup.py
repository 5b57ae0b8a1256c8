"""Start-up of a sharded run in a real 2-process torchrun world, on a model whose weights dominate a process (the tiny
Qwen2.5-VL widened to 342M parameters): rank 0 alone reads the checkpoint and the other ranks receive only their
shards, the weights and a step equal those of loading the model whole on every rank, the reference is resharded after
each forward (root included), and the one-reduction gradient norm equals the per-parameter sum it replaced."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from rewardmap.config import load_config
from rewardmap.distributed import local, shard_model
from rewardmap.grpo.backend import FSDP2Backend
from rewardmap.models.loading import load_policy
from rewardmap.models.tiny import tiny_config

from .test_distributed import ENV, torchrun
from .test_grpo_trainer import DEMO

SCRIPT = Path(__file__).with_name("startup_script.py")
WIDE = {"hidden_size": 512, "intermediate_size": 8192, "num_hidden_layers": 20, "num_attention_heads": 8}


@pytest.fixture(scope="module")
def wide_model_dir(tiny_model_dir: Path, module_dir: Path) -> Path:
    """The tiny model widened and deepened (342M parameters, 1.37 GB in fp32; the embedding a fifth of it, as a 7B's
    decoder outweighs its embedding), bf16 on disk."""
    config = tiny_config()
    for key, value in WIDE.items():
        setattr(config.text_config, key, value)
    config.text_config.layer_types = ["full_attention"] * WIDE["num_hidden_layers"]
    config.vision_config.out_hidden_size = WIDE["hidden_size"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    out = module_dir / "wide"
    model.save_pretrained(out)
    for path in tiny_model_dir.iterdir():
        if not path.name.startswith(("model", "config")):
            shutil.copy(path, out / path.name)
    return out


@pytest.fixture(scope="module")
def startups(wide_model_dir: Path, module_dir: Path) -> dict[str, list[dict]]:
    """Both start-ups in 2 processes: {mode: [rank 0's record, rank 1's]}."""
    for mode in ("whole", "rank0"):
        subprocess.run(torchrun(2, str(SCRIPT), mode, str(wide_model_dir), str(module_dir)), env=ENV, check=True)
    return {
        mode: [json.loads((module_dir / f"{mode}-{rank}.json").read_text()) for rank in (0, 1)]
        for mode in ("whole", "rank0")
    }


def count_parameters(model_dir: Path) -> int:
    config = Qwen2_5_VLForConditionalGeneration.config_class.from_pretrained(model_dir)
    with torch.device("meta"):
        return Qwen2_5_VLForConditionalGeneration(config).num_parameters()


@pytest.mark.slow
def test_other_ranks_never_hold_a_whole_model(startups, wide_model_dir):
    fp32_copy_kib = 4 * count_parameters(wide_model_dir) / 1024
    growth = {mode: [record["rss_growth_kib"] // 1024 for record in records] for mode, records in startups.items()}
    print(f"peak RSS growth during set-up, MiB (rank 0, rank 1); one fp32 copy {fp32_copy_kib // 1024:.0f}: {growth}")
    assert growth["whole"][1] * 1024 > 1.5 * fp32_copy_kib, "before: every rank held the policy and reference whole"
    assert growth["rank0"][1] * 1024 < fp32_copy_kib, growth
    assert growth["rank0"][0] < growth["whole"][0], growth


@pytest.mark.slow
def test_rank0_start_up_gives_the_same_weights_and_step(startups):
    for whole, rank0 in zip(startups["whole"], startups["rank0"], strict=True):
        assert rank0["weights"] == whole["weights"], "the shards differ from loading the model whole"
        assert rank0["ref_logprobs"] == whole["ref_logprobs"]  # the bf16 reference computes as the fp32 one in bf16
        assert rank0["loss"] == whole["loss"] and rank0["grad_norm"] == whole["grad_norm"]
        assert rank0["weights_after_step"] == whole["weights_after_step"]
        assert rank0["weights_after_step"] != rank0["weights"]["policy"]


@pytest.mark.slow
def test_frozen_reference_is_resharded_after_forward(startups):
    assert [record["reference_resharded"] for record in startups["rank0"]] == [True, True]
    assert [record["reference_resharded"] for record in startups["whole"]] == [False, False], "FSDP2's root default"


@pytest.mark.slow
def test_gradient_norm_in_one_reduction_equals_the_per_parameter_sum(startups, tiny_model_dir, world):
    for record in startups["rank0"]:  # 2 processes
        assert record["grad_norm"] == pytest.approx(record["grad_norm_per_parameter_sum"], rel=1e-12, abs=0)
    config = load_config(DEMO, [f"model.path={tiny_model_dir}"])  # 1 process
    model = load_policy(tiny_model_dir, device="cpu", dtype=torch.float32)
    backend = FSDP2Backend(shard_model(model, compute_dtype=torch.float32), config, world)
    model(input_ids=torch.tensor([[9707, 1879, 151645]]), labels=torch.tensor([[9707, 1879, 151645]])).loss.backward()
    expected = sum(float(local(p.grad).double().square().sum()) for p in model.parameters() if p.grad is not None)
    expected **= 0.5
    assert backend.step(max_grad_norm=1e9) == pytest.approx(expected, rel=1e-12, abs=0) and expected > 0
