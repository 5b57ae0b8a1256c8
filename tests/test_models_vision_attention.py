"""batch_vision_windows: the vision tower with one sdpa call per window length equals transformers' per-window loop."""

import copy
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForImageTextToText
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from rewardmap.distributed import full_tensor, shard_model
from rewardmap.models import vision_attention
from rewardmap.models.loading import load_policy, load_processor
from rewardmap.models.logprobs import build_prompt_inputs, completion_logprobs
from rewardmap.models.lora import apply_lora
from rewardmap.models.vision_attention import WindowBatchedVisionAttention, batch_vision_windows

# Three images (t, h, w in patches); windows are 8 x 8 patches, and no side but 8 is a multiple of 8, so the
# windows come in 4 lengths (64, 48, 16, 12 patches) and the full-attention blocks see 3 lengths.
GRID = torch.tensor([[1, 18, 22], [1, 10, 6], [1, 8, 8]])
WINDOWS = 9 + 2 + 1  # per image: ceil(9 / 4) * ceil(11 / 4), ceil(5 / 4) * ceil(3 / 4), 1 (in merged tokens)
LENGTHS = {"window": 4, "full": 3}


def transformers_model(model_dir: Path) -> torch.nn.Module:
    """The tiny model as transformers loads it, its vision attention looping over windows (fp32, sdpa, train mode)."""
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    return model.train()


def random_tower(dtype: torch.dtype = torch.float32) -> Qwen2_5_VisionTransformerPretrainedModel:
    """A random vision tower wider than the tiny one: 4 blocks (full attention in 1 and 3), 4 heads of 24."""
    config = Qwen2_5_VLVisionConfig(
        depth=4, hidden_size=96, intermediate_size=128, num_heads=4, out_hidden_size=64, fullatt_block_indexes=[1, 3]
    )
    torch.manual_seed(0)
    return Qwen2_5_VisionTransformerPretrainedModel._from_config(config, attn_implementation="sdpa", dtype=dtype)


@pytest.fixture(scope="module")
def tiny_tower(tiny_model_dir: Path) -> Qwen2_5_VisionTransformerPretrainedModel:
    tower = transformers_model(tiny_model_dir).model.visual
    assert (tower.config.depth, tower.config.num_heads, tower.fullatt_block_indexes) == (2, 2, [1])
    return tower


def pixels_for(tower: torch.nn.Module, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random pixel_values (patches, channels x temporal x patch^2) for GRID."""
    config = tower.config
    width = config.in_channels * config.temporal_patch_size * config.patch_size**2
    return torch.randn(int(GRID.prod(-1).sum()), width, generator=torch.Generator().manual_seed(1)).to(dtype)


def forward_backward(tower: torch.nn.Module, pixels: torch.Tensor, pixel_grad: bool = True) -> tuple[dict, int, int]:
    """The tower's outputs and the gradients (of a loss on both outputs) of every trained parameter and of the pixels
    (when `pixel_grad`); the sdpa calls in forward and in backward (gradient checkpointing's recomputation)."""
    pixels = pixels.clone().requires_grad_(pixel_grad)
    with mock.patch.object(F, "scaled_dot_product_attention", wraps=F.scaled_dot_product_attention) as sdpa:
        out = tower(pixels, grid_thw=GRID)
        forward_calls = sdpa.call_count
        (out.pooler_output.float().square().sum() + out.last_hidden_state.float().sin().sum()).backward()
    results = {"merged": out.pooler_output, "hidden": out.last_hidden_state}
    results.update({"pixels.grad": pixels.grad} if pixel_grad else {})
    results.update({f"{name}.grad": full_tensor(p.grad) for name, p in tower.named_parameters() if p.requires_grad})
    tower.zero_grad(set_to_none=True)
    return results, forward_calls, sdpa.call_count - forward_calls


def assert_all_close(ours: dict, loop: dict, **tolerance) -> None:
    assert ours.keys() == loop.keys()
    for name in loop:
        torch.testing.assert_close(ours[name], loop[name], msg=lambda m, name=name: f"{name}: {m}", **tolerance)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("which", ["tiny", "random"])
def test_tower_equals_transformers_loop(request, which: str, checkpointing: bool) -> None:
    loop = request.getfixturevalue("tiny_tower") if which == "tiny" else random_tower()
    ours = copy.deepcopy(loop)
    assert batch_vision_windows(ours) == loop.config.depth
    assert batch_vision_windows(ours) == 0  # already switched
    assert ours.state_dict().keys() == loop.state_dict().keys()
    for tower in (loop, ours):
        tower.train()
        if checkpointing:
            tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    pixels = pixels_for(loop)
    expected, loop_calls, _ = forward_backward(loop, pixels)
    got, calls, recomputed = forward_backward(ours, pixels)
    assert_all_close(got, expected, atol=1e-5, rtol=0)
    full = len(loop.fullatt_block_indexes)
    window = loop.config.depth - full
    assert loop_calls == window * WINDOWS + full * len(GRID)
    assert calls == window * LENGTHS["window"] + full * LENGTHS["full"]
    assert recomputed == (calls if checkpointing else 0)  # checkpointing reruns each block's forward in backward


def test_bf16_tower_equals_transformers_loop(tiny_tower) -> None:
    loop = copy.deepcopy(tiny_tower).to(torch.bfloat16)
    loop.patch_embed.requires_grad_(False)  # bf16 Conv3d backward is very slow on CPU, and no attention is in it
    ours = copy.deepcopy(loop)
    batch_vision_windows(ours)
    expected, _, _ = forward_backward(loop, pixels_for(loop, torch.bfloat16), pixel_grad=False)
    got, _, _ = forward_backward(ours, pixels_for(loop, torch.bfloat16), pixel_grad=False)
    assert_all_close(got, expected)  # bf16's default tolerance


def test_calls_past_the_kernel_limit_split_and_stay_exact(monkeypatch) -> None:
    # At the 7B tower's shape (16 heads of 80) one call takes 5,461 windows of 64 patches: a 12.8M-pixel map's ~1,000.
    assert vision_attention._max_segments_per_call(64, 16, 80) == 5461
    assert vision_attention._max_segments_per_call(4, 1, 8) == 2**16 - 1
    loop = random_tower()
    ours = copy.deepcopy(loop)
    batch_vision_windows(ours)
    monkeypatch.setattr(vision_attention, "_max_segments_per_call", lambda length, heads, head_dim: 2)
    expected, _, _ = forward_backward(loop, pixels_for(loop))
    got, calls, _ = forward_backward(ours, pixels_for(loop))
    assert_all_close(got, expected, atol=1e-5, rtol=0)
    # At most 2 windows per call: 64 patches x 5 windows, 48 x 3, 16 x 2, 12 x 2 make 3 + 2 + 1 + 1 calls per window
    # block; the full-attention blocks have one image of each length.
    assert calls == 2 * (3 + 2 + 1 + 1) + 2 * 3


@pytest.mark.parametrize("cu_seqlens", [[0, 3, 7, 12], [0, 12, 15, 27, 30], [0, 5, 5, 9, 14]])
def test_segment_attention_equals_one_call_per_segment(cu_seqlens: list[int]) -> None:
    # Lengths already ascending (nothing reordered); two lengths alternating; an empty segment.
    cu_seqlens = torch.tensor(cu_seqlens, dtype=torch.int32)
    qkv = torch.randn(int(cu_seqlens[-1]), 3, 2, 8, generator=torch.Generator().manual_seed(0)).requires_grad_()
    query, key, value = qkv.unbind(1)  # (N, 2 heads, 8) each, strided as in the model
    got = vision_attention.segment_attention(query, key, value, cu_seqlens, scale=0.3)
    parts = zip(*(t.split(torch.diff(cu_seqlens).tolist()) for t in (query, key, value)), strict=True)
    expected = [F.scaled_dot_product_attention(*(t.transpose(0, 1) for t in part), scale=0.3) for part in parts]
    expected = torch.cat([out.transpose(0, 1) for out in expected])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    (grad,) = torch.autograd.grad(got.sin().sum(), qkv)
    torch.testing.assert_close(grad, torch.autograd.grad(expected.sin().sum(), qkv)[0], atol=1e-6, rtol=0)


def test_refuses_an_attention_module_wrapped_on_its_own(world) -> None:
    tower = random_tower()
    fully_shard(tower.blocks[0].attn)
    with pytest.raises(ValueError, match=r"blocks.0.attn is a FSDPQwen2_5_VLVisionAttention, not a plain"):
        batch_vision_windows(tower)


def test_refuses_a_vision_attention_other_than_sdpa(tiny_model_dir: Path) -> None:
    model = load_policy(tiny_model_dir, device="cpu", attn_implementation="eager")
    with pytest.raises(ValueError, match="uses attn_implementation 'eager'; batch_vision_windows replaces the sdpa"):
        batch_vision_windows(model)


@pytest.fixture(scope="module")
def prompt(tiny_model_dir: Path):
    """Two map prompts with images of different sizes (windows of several lengths) for the tiny model."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(320, 240), (200, 300)]]
    processor = load_processor(tiny_model_dir, max_pixels=60_000)
    questions = ["How many stations are on Line 2?", "Is Cornavin on Line 14? Answer yes or no."]
    return build_prompt_inputs(processor, questions, images)


def logprobs_and_grads(model: torch.nn.Module, prompt) -> dict:
    """completion_logprobs of 2 completions per prompt (a training pass) and the trained parameters' gradients."""
    ids = torch.randint(0, 151_000, (4, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 5 + [0], [1] * 6])
    index = torch.tensor([0, 0, 1, 1])
    logps, _ = completion_logprobs(model, prompt, ids, mask, micro_batch_size=4, prompt_index=index, group_size=2)
    logps.sum().backward()
    grads = {f"{n}.grad": full_tensor(p.grad) for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return {"logps": logps, **grads}


@pytest.fixture(scope="module")
def expected(tiny_model_dir: Path, prompt) -> dict:
    """completion_logprobs and gradients of the tiny model as loaded (transformers' per-window loop)."""
    return logprobs_and_grads(transformers_model(tiny_model_dir), prompt)


def test_completion_logprobs_equal_with_and_without(tiny_model_dir: Path, prompt, expected: dict) -> None:
    ours = load_policy(tiny_model_dir, device="cpu", dtype=torch.float32)  # batches the windows under sdpa
    assert sum(isinstance(m, WindowBatchedVisionAttention) for m in ours.modules()) == 2
    assert batch_vision_windows(ours) == 0
    assert any(".visual." in name for name in expected)  # the vision tower's gradients are compared too
    assert_all_close(logprobs_and_grads(ours, prompt), expected, atol=1e-5, rtol=0)


def test_completion_logprobs_equal_under_lora(tiny_model_dir: Path, prompt) -> None:
    loop = apply_lora(transformers_model(tiny_model_dir), rank=4, alpha=8)
    ours = copy.deepcopy(loop)
    assert batch_vision_windows(ours) == 2
    assert_all_close(logprobs_and_grads(ours, prompt), logprobs_and_grads(loop, prompt), atol=1e-5, rtol=0)


@pytest.mark.parametrize("switch", ["before", "after"])
def test_works_before_and_after_fsdp2_sharding(
    tiny_model_dir: Path, prompt, expected: dict, world, switch: str
) -> None:
    ours = transformers_model(tiny_model_dir)
    if switch == "before":
        assert batch_vision_windows(ours) == 2
    shard_model(ours, compute_dtype=torch.float32)
    if switch == "after":
        assert batch_vision_windows(ours) == 2
    assert_all_close(logprobs_and_grads(ours, prompt), expected, atol=1e-5, rtol=0)
