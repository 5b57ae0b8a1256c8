"""Shared-prefix log-probs (a group's prompt run once) against one sequence per completion on the tiny model in fp32:
log-probs, entropy and parameter gradients with images, padding on either side, completions of different lengths,
gradient checkpointing and LoRA; micro-batches of whole groups; model.shared_prefix resolution; a whole GRPO step."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.integrations.sdpa_attention import repeat_kv

from rewardmap.config import load_config
from rewardmap.errors import InputError
from rewardmap.grpo.trainer import GRPOTrainer
from rewardmap.models.loading import load_policy, load_processor
from rewardmap.models.logprobs import build_prompt_inputs, completion_logprobs
from rewardmap.models.lora import apply_lora
from rewardmap.models.shared_prefix import SharedPrefixMask, micro_batches, shared_prefix_group

from .dp_shared_prefix_script import logprobs_and_grads
from .test_grpo_trainer import DEMO, parameters, small_overrides
from .test_models_logprobs import to_right_padding

N = 3  # completions per prompt
QUESTIONS = ["How many stations are on Line 2 between Cornavin and Plainpalais?", "Route?"]
LENGTHS = [7, 4, 1, 5, 7, 2]  # ragged completions, some longer in the second group than in the first


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    return load_processor(tiny_model_dir, max_pixels=20_000)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(320, 240), (200, 300)]]


@pytest.fixture(scope="module")
def completions() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 151_000, (2 * N, 7), generator=torch.Generator().manual_seed(3))
    ids[1, 2] = 151655  # a sampled image placeholder: fed as padding, scored as itself
    mask = torch.tensor([[1] * n + [0] * (7 - n) for n in LENGTHS])
    return ids, mask


@pytest.mark.parametrize("case", ["left-padded", "right-padded", "text-only", "checkpointing", "lora"])
def test_shared_prefix_equals_one_sequence_per_completion(tiny_model_dir, processor, images, completions, case):
    ids, mask = completions
    model = load_policy(
        tiny_model_dir, device="cpu", dtype=torch.float32, gradient_checkpointing=case == "checkpointing"
    )
    if case == "lora":
        model = apply_lora(model, rank=4, alpha=8)
        for name, p in model.named_parameters():  # random adapters, so that they change the outputs
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(len(name)))
    batch = build_prompt_inputs(processor, QUESTIONS, None if case == "text-only" else images)
    assert not batch["attention_mask"].all()  # the two prompts differ in length
    if case == "right-padded":
        batch = to_right_padding(batch)
    plain = logprobs_and_grads(model, batch, ids, mask, micro=2 * N, group_size=1)
    # Two groups in one forward (the shorter prompt padded), and one group per forward.
    for micro in (2 * N, 1):
        shared = logprobs_and_grads(model, batch, ids, mask, micro=micro, group_size=N)
        torch.testing.assert_close(shared[0], plain[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(shared[1], plain[1], atol=1e-5, rtol=0)
        assert shared[2].keys() == plain[2].keys() and len(plain[2]) > 0
        for name, grad in plain[2].items():
            torch.testing.assert_close(shared[2][name], grad, atol=1e-5, rtol=1e-5, msg=name)
    assert torch.all(plain[0][mask == 0] == 0) and torch.all(plain[0][mask == 1] < 0)
    if case == "lora":
        assert all("lora" in name for name in plain[2])
    elif case != "text-only":
        assert any(name.startswith("model.visual.") for name in plain[2])  # each image encoded once, grads match


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("repeated", [True, False])
def test_attention_visits_the_prompt_and_its_own_completion_only(padded, repeated):
    """The mask in F.scaled_dot_product_attention equals, for each completion, causal attention over [prompt |
    that completion] alone; with the key/value heads grouped (4 query heads, 2 kv heads) as they come from
    transformers (repeated in its layout) or not."""
    rows, heads, kv_heads, dim, prompt, width, n = 2, 4, 2, 8, 6, 3, 3
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(rows, heads, prompt + n * width, dim, generator=generator)
    key, value = (torch.randn(rows, kv_heads, prompt + n * width, dim, generator=generator) for _ in range(2))
    prompt_mask = torch.ones(rows, prompt, dtype=torch.long)
    if padded:
        prompt_mask[1, :2] = 0  # left padding
    mask = SharedPrefixMask(prompt_mask, n, width, kv_groups=heads // kv_heads)
    full_key, full_value = repeat_kv(key, heads // kv_heads), repeat_kv(value, heads // kv_heads)
    if repeated:
        out = F.scaled_dot_product_attention(query, full_key, full_value, attn_mask=mask)
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True)
    real = prompt_mask.bool()
    causal = torch.ones(prompt + width, prompt + width, dtype=torch.bool).tril()
    allowed = causal & F.pad(real, (0, width), value=True)[:, None, None, :]
    for i in range(n):
        own = list(range(prompt)) + list(range(prompt + i * width, prompt + (i + 1) * width))
        alone = F.scaled_dot_product_attention(
            query[:, :, own], full_key[:, :, own], full_value[:, :, own], attn_mask=allowed
        )
        torch.testing.assert_close(out[:, :, own[prompt:]], alone[:, :, prompt:], atol=1e-6, rtol=0)
        for row in range(rows):  # prompt rows: the real ones (a padding query has no key to attend to)
            torch.testing.assert_close(out[row, :, :prompt][:, real[row]], alone[row, :, :prompt][:, real[row]])


def test_micro_batches_hold_whole_groups():
    assert micro_batches(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 6)]
    assert micro_batches(12, 1, 4) == [slice(0, 4), slice(4, 8), slice(8, 12)]  # at least one group
    assert micro_batches(12, 9, 4) == [slice(0, 8), slice(8, 16)]  # the whole groups that fit


def test_shared_prefix_setting_resolves_or_names_the_fix(tiny_model_dir, processor, completions):
    sdpa = load_policy(tiny_model_dir, device="cpu", dtype=torch.float32).config.get_text_config()
    eager = load_policy(tiny_model_dir, device="cpu", attn_implementation="eager").config.get_text_config()
    assert shared_prefix_group("auto", sdpa, 4) == 4 and shared_prefix_group("on", sdpa, 4) == 4
    assert shared_prefix_group("off", sdpa, 4) == 1 and shared_prefix_group("on", sdpa, 1) == 1
    assert shared_prefix_group("auto", eager, 4) == 1
    with pytest.raises(
        InputError, match=r"model.shared_prefix=on is not supported: .*'eager'.*attn_implementation=\{text: sdpa\}"
    ):
        shared_prefix_group("on", eager, 4)
    with pytest.raises(InputError, match=r"model.shared_prefix='sometimes' is not one of auto, on, off"):
        load_config(DEMO, ["model.shared_prefix=sometimes"])
    assert [load_config(DEMO, [f"model.shared_prefix={v}"]).model.shared_prefix for v in ("on", "off")] == [
        "on",
        "off",
    ]
    ids, mask = completions
    batch = build_prompt_inputs(processor, QUESTIONS, None)
    with pytest.raises(ValueError, match="group_size=3 needs the rows in runs of 3 sharing one prompt_index"):
        completion_logprobs(
            sdpa, batch, ids, mask, micro_batch_size=1, prompt_index=torch.arange(2 * N) % 2, group_size=N
        )


def test_grpo_step_with_shared_prefix_equals_one_without(tiny_model_dir, synth_dataset_dir, tmp_path, world):
    results = {}
    for setting in ("off", "on"):
        overrides = small_overrides(
            tiny_model_dir, synth_dataset_dir, tmp_path / setting, "trainer.lr=1e-3", f"model.shared_prefix={setting}"
        )
        trainer = GRPOTrainer(load_config(DEMO, overrides), world)
        assert trainer.group_size == (2 if setting == "on" else 1)
        metrics = trainer.step(*trainer.parts.stream.next_batch())
        results[setting] = metrics, parameters(trainer.parts.model)
    (off, weights_off), (on, weights_on) = results["off"], results["on"]
    assert on["batch/tokens"] == off["batch/tokens"] > 0  # the same rollouts
    for key in ("loss/total", "loss/policy", "loss/kl", "loss/entropy", "optim/grad_norm"):
        assert on[key] == pytest.approx(off[key], rel=1e-5, abs=1e-6), key
    assert off["optim/grad_norm"] > 0
    difference = max((weights_on[name] - weights_off[name]).abs().max().item() for name in weights_off)
    assert difference <= 1e-5, difference
