"""Loading the policy, reference and processor from a directory, the errors for wrong paths, and LoRA."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from rewardmap.config import load_config
from rewardmap.errors import InputError
from rewardmap.grpo.setup import resolve_attention_and_group
from rewardmap.models import loading
from rewardmap.models.loading import (
    check_model_dir,
    load_policy,
    load_processor,
    load_reference,
    resolve_attention,
    resolve_dtype,
)
from rewardmap.models.logprobs import build_prompt_inputs, completion_logprobs
from rewardmap.models.lora import apply_lora, reference_policy

REPO = Path(__file__).resolve().parents[1]
IDS = torch.tensor([[151644, 872, 198, 9707, 1879, 151645, 198, 151644, 77091, 198]])


def copy_model(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    dst.mkdir()
    for path in src.iterdir():
        if path.name not in skip:
            shutil.copy(path, dst / path.name)
    return dst


def test_missing_path_names_the_path_and_the_expectation(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=rf"{missing}.*does not exist.*config.json with model_type"):
        load_policy(missing, device="cpu")


def test_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path} has no config.json.*qwen2_5_vl"):
        load_processor(tmp_path)


def test_config_of_another_model_type(tiny_model_dir: Path, tmp_path: Path) -> None:
    other = copy_model(tiny_model_dir, tmp_path / "llama")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match=r"model_type 'llama'; expected a Qwen2.5-VL model directory"):
        load_reference(other, device="cpu")


def test_dir_without_tokenizer_or_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = copy_model(tiny_model_dir, tmp_path / "broken", skip=("tokenizer.json", "model.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"lacks tokenizer.json or vocab.json, \*.safetensors"):
        check_model_dir(broken)


def test_dtype_and_attention_defaults() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype(None, cpu) == torch.float32 and resolve_dtype(None, cuda) == torch.bfloat16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16 and resolve_dtype(torch.float16, cpu) == torch.float16
    with pytest.raises(ValueError, match="dtype 'half8' is not supported"):
        resolve_dtype("half8", cpu)
    assert resolve_attention("auto", cpu, shares_prefix=True) == {"text": "sdpa", "vision": "sdpa"}
    assert resolve_attention("auto", cuda, shares_prefix=False) == {"text": "sdpa", "vision": "sdpa"}  # no flash_attn
    assert resolve_attention("eager", cuda, shares_prefix=True) == {"text": "eager", "vision": "eager"}
    assert resolve_attention({"vision": "eager"}, cpu, shares_prefix=True) == {"text": "sdpa", "vision": "eager"}


def test_recipe_with_flash_attn_keeps_the_shared_prefix(tiny_model_dir: Path, monkeypatch) -> None:
    # As on a GPU with flash-attn installed: only the availability check is patched, nothing GPU-only runs.
    monkeypatch.setattr(loading, "flash_attn_available", lambda device: device.type == "cuda")
    recipe, cuda = REPO / "configs" / "reward_map.yaml", torch.device("cuda")
    config = load_config(recipe, [f"model.path={tiny_model_dir}"])
    assert resolve_attention_and_group(config, cuda) == ({"text": "sdpa", "vision": "flash_attention_2"}, 4)
    config = load_config(recipe, [f"model.path={tiny_model_dir}", "model.shared_prefix=off"])
    assert resolve_attention_and_group(config, cuda) == (
        {"text": "flash_attention_2", "vision": "flash_attention_2"},
        1,
    )
    config = load_config(
        recipe, [f"model.path={tiny_model_dir}", "model.attn_implementation={text: auto, vision: sdpa}"]
    )
    assert resolve_attention_and_group(config, cuda) == ({"text": "sdpa", "vision": "sdpa"}, 4)
    config = load_config(recipe, [f"model.path={tiny_model_dir}", "model.attn_implementation=flash_attention_2"])
    with pytest.raises(InputError, match="shared_prefix=on is not supported|'flash_attention_2'"):
        resolve_attention_and_group(replace(config, model=replace(config.model, shared_prefix="on")), cuda)
    assert resolve_attention_and_group(config, cuda)[1] == 1  # auto: one sequence per completion


def test_attention_per_part_reaches_the_model(tiny_model_dir: Path) -> None:
    model = load_policy(tiny_model_dir, device="cpu", attn_implementation={"text": "sdpa", "vision": "eager"})
    assert model.config.get_text_config()._attn_implementation == "sdpa"
    assert model.config.vision_config._attn_implementation == "eager"
    assert model.model.visual.config._attn_implementation == "eager"


def test_policy_options_and_frozen_reference(tiny_model_dir: Path) -> None:
    policy = load_policy(tiny_model_dir, device="cpu", dtype="bf16", gradient_checkpointing=True)
    assert policy.dtype == torch.bfloat16 and policy.training and policy.is_gradient_checkpointing
    assert policy.config._attn_implementation == "sdpa"
    reference = load_reference(tiny_model_dir, device="cpu")
    assert reference.dtype == torch.float32 and not reference.training
    assert not any(p.requires_grad for p in reference.parameters())


def test_processor_pixel_budget(tiny_model_dir: Path) -> None:
    image = Image.new("RGB", (400, 300), "white")
    small = load_processor(tiny_model_dir, max_pixels=20_000)
    large = load_processor(tiny_model_dir, min_pixels=200_000, max_pixels=400_000)
    small_patches = small.image_processor(images=[image])["image_grid_thw"].prod()
    large_patches = large.image_processor(images=[image])["image_grid_thw"].prod()
    assert small_patches * 14 * 14 <= 20_000 < 120_000 < 200_000 <= large_patches * 14 * 14
    assert small.tokenizer.padding_side == "left"
    with pytest.raises(ValueError, match="min_pixels 9000 exceeds max_pixels 4000"):
        load_processor(tiny_model_dir, min_pixels=9000, max_pixels=4000)


def test_lora_changes_outputs_and_reference_restores_base(tiny_model_dir: Path) -> None:
    model = load_policy(tiny_model_dir, device="cpu")
    with torch.no_grad():
        base = model(input_ids=IDS).logits
    lora = apply_lora(model, rank=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and "language_model" in n for n in names)
    assert any("v_proj" in n for n in names) and any("down_proj" in n for n in names)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
        adapted = lora(input_ids=IDS).logits
    assert (adapted - base).abs().max() > 1e-3
    with reference_policy(lora) as reference:
        assert torch.equal(reference(input_ids=IDS).logits, base)
    with torch.no_grad():
        assert torch.equal(lora(input_ids=IDS).logits, adapted)  # adapters are back on after the block


def test_lora_trains_through_logprobs_with_checkpointing(tiny_model_dir: Path) -> None:
    model = load_policy(tiny_model_dir, device="cpu", gradient_checkpointing=True)
    lora = apply_lora(model, rank=2, alpha=4)
    processor = load_processor(tiny_model_dir, max_pixels=50_000)
    prompts = build_prompt_inputs(processor, ["Count the lines."], [Image.new("RGB", (224, 224), "red")])
    completion = torch.tensor([[18, 151645]])
    logps, _ = completion_logprobs(lora, prompts, completion, torch.ones_like(completion), micro_batch_size=1)
    logps.sum().backward()
    grads = [p.grad for n, p in lora.named_parameters() if "lora_B" in n]  # lora_B starts at 0, so A gets no grad
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="needs a LoRA"):
        with reference_policy(model):  # the wrapped transformers model, not the peft wrapper
            pass
