"""completion_logprobs against hand computations: 3-D rope positions, padding side, micro-batching, entropy, grads."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewardmap.models.loading import load_policy, load_processor
from rewardmap.models.logprobs import build_prompt_inputs, completion_logprobs

QUESTIONS = ["How many stations are on Line 2?", "Is Cornavin on Line 14? Answer yes or no.", "Route?"]


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path):
    return load_policy(tiny_model_dir, device="cpu", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    return load_processor(tiny_model_dir, max_pixels=60_000)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(320, 240), (200, 300), (280, 280)]  # different sizes -> different image token counts
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.fixture(scope="module")
def completions() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 151_000, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    return ids, mask


def hand_logprobs(model, prompt: dict, completion: torch.Tensor, temperature: float = 1.0, mrope: bool = True):
    """One unpadded sequence through the plain HF forward (HF builds the 3-D positions itself); full log_softmax."""
    ids = torch.cat([prompt["input_ids"], completion[None]], dim=1)
    extra = {}
    if mrope:
        extra["mm_token_type_ids"] = (ids == 151655).long()
    with torch.no_grad():
        logits = model(
            input_ids=ids, pixel_values=prompt["pixel_values"], image_grid_thw=prompt["image_grid_thw"], **extra
        ).logits[0]
    start = prompt["input_ids"].shape[1] - 1
    logp = torch.log_softmax(logits[start : start + len(completion)] / temperature, dim=-1)
    return logp.gather(-1, completion[:, None]).squeeze(-1), logp


def to_right_padding(inputs: dict) -> dict:
    """The same prompts with the padding moved to the right."""
    ids, mask = inputs["input_ids"].clone(), inputs["attention_mask"].clone()
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        ids[row] = torch.cat([ids[row, -n:], ids[row, :-n]]) if n < ids.shape[1] else ids[row]
        mask[row] = torch.cat([mask[row, -n:], mask[row, :-n]]) if n < ids.shape[1] else mask[row]
    return {**inputs, "input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_equals_plain_forward_by_hand(model, processor, images, completions, temperature: float) -> None:
    ids, mask = completions
    prompt = build_prompt_inputs(processor, QUESTIONS[:1], images[:1])
    logps, entropy = completion_logprobs(
        model, prompt, ids[:1], mask[:1], micro_batch_size=1, temperature=temperature, with_entropy=True
    )
    expected, full = hand_logprobs(model, prompt, ids[0], temperature)
    torch.testing.assert_close(logps[0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy[0], -(full.exp() * full).sum(-1), atol=1e-4, rtol=0)
    # The 3-D (mrope) positions matter: plain 1-D positions give other log-probs.
    flat, _ = hand_logprobs(model, prompt, ids[0], temperature, mrope=False)
    assert (flat - expected).abs().max() > 1e-4


def test_alone_equals_inside_left_or_right_padded_batch(model, processor, images, completions) -> None:
    ids, mask = completions
    batch = build_prompt_inputs(processor, QUESTIONS, images)
    assert not batch["attention_mask"].all()  # the prompts do differ in length
    left, _ = completion_logprobs(model, batch, ids, mask, micro_batch_size=3)
    right, _ = completion_logprobs(model, to_right_padding(batch), ids, mask, micro_batch_size=3)
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
    for row in range(3):
        alone = build_prompt_inputs(processor, QUESTIONS[row : row + 1], images[row : row + 1])
        single, _ = completion_logprobs(model, alone, ids[row : row + 1], mask[row : row + 1], micro_batch_size=1)
        torch.testing.assert_close(left[row], single[0], atol=1e-5, rtol=0)
    assert torch.all(left[mask == 0] == 0) and torch.all(left[mask == 1] < 0)


def test_micro_batch_size_does_not_change_results(model, processor, images, completions) -> None:
    ids, mask = completions
    batch = build_prompt_inputs(processor, QUESTIONS, images)
    whole, ent_whole = completion_logprobs(model, batch, ids, mask, micro_batch_size=3, with_entropy=True)
    for size in (1, 2):
        part, ent_part = completion_logprobs(model, batch, ids, mask, micro_batch_size=size, with_entropy=True)
        torch.testing.assert_close(part, whole, atol=1e-5, rtol=0)
        torch.testing.assert_close(ent_part, ent_whole, atol=1e-5, rtol=0)


def test_text_only_prompts_are_padding_safe(model, processor, completions) -> None:
    ids, mask = completions
    batch = build_prompt_inputs(processor, QUESTIONS, None)
    assert "pixel_values" not in batch
    batched, entropy = completion_logprobs(model, batch, ids, mask, micro_batch_size=3)
    assert entropy is None
    alone = build_prompt_inputs(processor, QUESTIONS[2:], None)
    single, _ = completion_logprobs(model, alone, ids[2:], mask[2:], micro_batch_size=1)
    torch.testing.assert_close(batched[2], single[0], atol=1e-5, rtol=0)


def test_gradients_flow_and_skip_masked_tokens(tiny_model_dir: Path, processor, images, completions) -> None:
    ids, mask = completions
    model = load_policy(tiny_model_dir, device="cpu")
    batch = build_prompt_inputs(processor, QUESTIONS, images)
    logps, _ = completion_logprobs(model, batch, ids, mask, micro_batch_size=2)
    weight = model.get_output_embeddings().weight
    (masked_grad,) = torch.autograd.grad(logps[mask == 0].sum(), weight, retain_graph=True)
    assert torch.all(masked_grad == 0)  # padding tokens of the completion contribute nothing
    logps.sum().backward()
    grad = model.model.visual.blocks[0].mlp.up_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0 and torch.isfinite(grad).all()


def test_shape_errors_name_the_problem(model, processor, images, completions) -> None:
    ids, mask = completions
    batch = build_prompt_inputs(processor, QUESTIONS, images)
    with pytest.raises(ValueError, match="completion_ids"):
        completion_logprobs(model, batch, ids[:2], mask[:2], micro_batch_size=1)
    with pytest.raises(ValueError, match="one image per prompt"):
        completion_logprobs(
            model, {**batch, "image_grid_thw": batch["image_grid_thw"][:2]}, ids, mask, micro_batch_size=1
        )
    with pytest.raises(ValueError, match="3 prompts but 2 images; pass one image per prompt"):
        build_prompt_inputs(processor, QUESTIONS, images[:2])
