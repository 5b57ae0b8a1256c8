"""The fused lm_head log-prob/entropy kernel against plain autograd, and image reuse across a prompt's rollouts."""

import pytest
import torch

from rewardmap.models import fused
from rewardmap.models.fused import linear_logprob, linear_logprob_entropy
from rewardmap.models.loading import load_policy, load_processor
from rewardmap.models.logprobs import build_prompt_inputs, completion_logprobs


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_equal_autograd(temperature, monkeypatch):
    monkeypatch.setattr(fused, "CHUNK_TOKENS", 7)  # several chunks, the last one partial
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(20, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(300, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 300, (20,), generator=generator)
    grad_logp, grad_entropy = torch.randn(20, generator=generator), torch.randn(20, generator=generator)

    logp, entropy = linear_logprob_entropy(hidden, weight, targets, temperature)
    (logp * grad_logp + entropy * grad_entropy).sum().backward()
    fused_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None

    log_softmax = torch.log_softmax(hidden @ weight.t() / temperature, dim=-1)
    expected_logp = log_softmax.gather(-1, targets[:, None]).squeeze(-1)
    expected_entropy = -(log_softmax.exp() * log_softmax).sum(-1)
    (expected_logp * grad_logp + expected_entropy * grad_entropy).sum().backward()

    torch.testing.assert_close(logp, expected_logp)
    torch.testing.assert_close(entropy, expected_entropy)
    torch.testing.assert_close(fused_grads[0], hidden.grad)
    torch.testing.assert_close(fused_grads[1], weight.grad)
    torch.testing.assert_close(linear_logprob(hidden, weight, targets, temperature), expected_logp)


def test_no_tokens_give_empty_outputs_and_zero_gradients():
    hidden = torch.zeros(0, 16, requires_grad=True)
    weight = torch.randn(300, 16, requires_grad=True)
    logp, entropy = linear_logprob_entropy(hidden, weight, torch.zeros(0, dtype=torch.long))
    assert logp.shape == entropy.shape == (0,)
    (logp.sum() + entropy.sum() + (weight * 0).sum()).backward()
    assert torch.count_nonzero(weight.grad) == 0


def test_rollouts_of_one_prompt_share_its_image(tiny_model_dir, maps_root):
    from rewardmap.data.images import load_image

    model = load_policy(tiny_model_dir, device="cpu", dtype=torch.float32)
    processor = load_processor(tiny_model_dir, max_pixels=60_000)
    images = [load_image(name, root=maps_root, max_pixels=60_000) for name in ("norway/oslo.png", "italy/rome.png")]
    prompts = build_prompt_inputs(processor, ["Is A on Line 1?", "How many lines?"], images)
    ids = torch.randint(0, 150_000, (4, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] * 5, [1] * 4 + [0]])
    index = torch.tensor([0, 0, 1, 1])
    shared, shared_entropy = completion_logprobs(
        model, prompts, ids, mask, micro_batch_size=4, prompt_index=index, with_entropy=True
    )
    repeated = build_prompt_inputs(
        processor, ["Is A on Line 1?"] * 2 + ["How many lines?"] * 2, [images[0]] * 2 + [images[1]] * 2
    )
    alone, alone_entropy = completion_logprobs(model, repeated, ids, mask, micro_batch_size=1, with_entropy=True)
    torch.testing.assert_close(shared, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared_entropy, alone_entropy, atol=1e-5, rtol=0)
    assert torch.all(shared[mask == 0] == 0) and torch.all(shared_entropy[mask == 0] == 0)


def test_a_sampled_image_placeholder_is_scored_not_crashed(tiny_model_dir, maps_root):
    from rewardmap.data.images import load_image

    model = load_policy(tiny_model_dir, device="cpu", dtype=torch.float32)
    processor = load_processor(tiny_model_dir, max_pixels=60_000)
    image = load_image("norway/oslo.png", root=maps_root, max_pixels=60_000)
    prompt = build_prompt_inputs(processor, ["Is A on Line 1?"], [image])
    ids = torch.tensor([[9707, 151655, 151656, 151645]])  # text, <|image_pad|>, <|video_pad|>, <|im_end|>
    logps, _ = completion_logprobs(model, prompt, ids, torch.ones_like(ids), micro_batch_size=1)
    assert torch.isfinite(logps).all() and torch.all(logps < 0)
