"""The HF engine's token picking: exact sampling from the temperature/top-k/top-p distribution (chi-square), samples
that do not depend on the prompt's batch-mates or place in the batch, and greedy decoding as transformers does it."""

import os

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rewardmap.data.images import load_image  # noqa: E402
from rewardmap.data.loading import load_rows  # noqa: E402
from rewardmap.data.prompts import prompt_tensors, render_prompt  # noqa: E402
from rewardmap.models.loading import load_policy, load_processor  # noqa: E402
from rewardmap.rollout import Sampling  # noqa: E402
from rewardmap.rollout.hf import BLOCK, HFRolloutEngine, TokenPicker, keep_threshold, sample_seed  # noqa: E402

SIGNIFICANCE = 1e-3  # a correct sampler fails one chi-square test with this probability; the seeds are fixed
DRAWS = 20_000
LOGPROB_ATOL = 1e-5  # a prompt alone vs in a batch: fp32 kernels that are not batch-invariant; measured <= 1e-6
IMAGE_BUDGETS = (50176, 100352, 200704)  # three image sizes: prompts of different lengths, so left padding varies


def small_vocabulary_logits() -> torch.Tensor:
    """(V,) logits over 3 blocks and a partial one: 12 likely tokens spread over all blocks, the rest unlikely."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3 * BLOCK + 5, generator=generator) - 4.0
    likely = torch.tensor([3, 40, 127, 128, 200, 255, 256, 300, 383, 384, 386, 388])
    logits[likely] = torch.linspace(2.0, -0.5, len(likely))
    return logits


def expected_probabilities(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """transformers' own warpers (temperature, then top-k, then top-p) and a softmax: the reference distribution."""
    warpers = LogitsProcessorList([TemperatureLogitsWarper(sampling.temperature)])
    if sampling.top_k > 0:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    return warpers(None, logits.unsqueeze(0).clone()).softmax(-1).squeeze(0).double()


def draw(logits: torch.Tensor, sampling: Sampling, rows: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rows x steps tokens picked from the same logits by `rows` sequences, each with its seed; and their log-probs."""
    picker = TokenPicker(sampling, [sample_seed(sampling.seed, row) for row in range(rows)], torch.device("cpu"))
    tokens = []
    for _ in range(steps):
        returned = picker(None, logits.expand(rows, -1).clone())
        if sampling.temperature > 0:
            assert torch.equal((returned == torch.inf).sum(-1), torch.ones(rows, dtype=torch.long)), "one +inf a row"
        tokens.append(returned.argmax(-1))
    return torch.stack(tokens, 1).flatten(), picker.logprobs(steps).flatten()


def chi_square_p_value(counts: torch.Tensor, expected: torch.Tensor) -> float:
    """P(X >= statistic) for X ~ chi-square(len(counts) - 1): the regularized upper incomplete gamma function."""
    statistic = ((counts - expected) ** 2 / expected).sum()
    dof = torch.tensor(len(counts) - 1.0, dtype=torch.float64)
    return float(torch.special.gammaincc(dof / 2, statistic / 2))


@pytest.mark.parametrize(
    "sampling",
    [
        Sampling(max_tokens=1, temperature=1.0, seed=1),
        Sampling(max_tokens=1, temperature=0.7, top_k=6, seed=2),
        Sampling(max_tokens=1, temperature=1.3, top_p=0.8, seed=3),
        Sampling(max_tokens=1, temperature=0.9, top_k=9, top_p=0.7, seed=4),
    ],
    ids=["plain", "top-k", "top-p", "top-k+top-p"],
)
def test_draws_follow_the_filtered_distribution(sampling):
    logits = small_vocabulary_logits()
    wanted = expected_probabilities(logits, sampling)
    tokens, logprobs = draw(logits, sampling, rows=DRAWS // 10, steps=10)
    counts = torch.bincount(tokens, minlength=len(logits)).double()
    assert counts[wanted == 0].sum() == 0, "a token that temperature/top-k/top-p filter out was drawn"
    # Categories with at least 5 expected draws; the rest (if any) pooled into one.
    frequent = wanted * DRAWS >= 5
    observed, expected = counts[frequent], wanted[frequent] * DRAWS
    if (~frequent & (wanted > 0)).any():
        observed = torch.cat([observed, counts[~frequent].sum(0, keepdim=True)])
        expected = torch.cat([expected, (wanted[~frequent] * DRAWS).sum(0, keepdim=True)])
    assert len(observed) >= 3
    assert chi_square_p_value(observed, expected) > SIGNIFICANCE
    # The recorded log-prob is the temperature-scaled one before filtering.
    full = torch.log_softmax(logits / sampling.temperature, -1)
    torch.testing.assert_close(logprobs, full[tokens], atol=1e-6, rtol=0)


def test_keep_threshold_by_hand():
    z = torch.tensor([[2.0, 0.0, 1.0, 1.0, -1.0]])
    assert keep_threshold(z, -1, 1.0) is None and keep_threshold(z, 5, 1.0) is None
    assert keep_threshold(z, 2, 1.0).item() == 1.0  # the 2nd largest; its tie (index 3) is kept too
    probs = z.softmax(-1)[0]  # 0.53, 0.07, 0.20, 0.20, 0.03
    assert keep_threshold(z, -1, float(probs[0]) - 1e-3).item() == 2.0  # the top token alone reaches top_p
    assert keep_threshold(z, -1, float(probs[0]) + 1e-3).item() == 1.0
    assert keep_threshold(z, -1, 0.0).item() == 2.0  # at least one token is kept


def test_greedy_and_seeds_per_sequence():
    logits = small_vocabulary_logits()
    tokens, _ = draw(logits, Sampling(max_tokens=1, temperature=0.0), rows=3, steps=2)
    assert tokens.tolist() == [int(logits.argmax())] * 6
    first, _ = draw(logits, Sampling(max_tokens=1, seed=5), rows=64, steps=4)
    again, _ = draw(logits, Sampling(max_tokens=1, seed=5), rows=64, steps=4)
    assert torch.equal(first, again)
    assert len(set(first.view(64, 4)[:, 0].tolist())) > 4, "each sequence needs its own noise"


@pytest.fixture(scope="module")
def maps(tiny_model_dir, synth_dataset_dir) -> tuple[object, list[str], list]:
    """Nine real prompts with maps of three sizes, so that their token counts (and left padding) differ."""
    processor = load_processor(tiny_model_dir, max_pixels=max(IMAGE_BUDGETS))
    rows = load_rows(synth_dataset_dir, split="train")
    picked = [rows[i] for i in range(9)]
    prompts = [render_prompt(processor, row["question"]) for row in picked]
    images = [
        load_image(row["figure"], root=rows.root, max_pixels=IMAGE_BUDGETS[i % 3]) for i, row in enumerate(picked)
    ]
    return processor, prompts, images


@pytest.fixture(scope="module")
def engine(tiny_model_dir, maps) -> HFRolloutEngine:
    return HFRolloutEngine(load_policy(tiny_model_dir, dtype="float32"), maps[0])


def test_samples_do_not_depend_on_batch_mates_or_position(engine, maps):
    _, prompts, images = maps
    lengths = prompt_tensors(engine.processor, prompts, images)["attention_mask"].sum(-1)
    assert len(set(lengths.tolist())) >= 3, "the prompts must differ in length for padding to matter"
    seeds = [100 + i for i in range(len(prompts))]
    sampling = Sampling(max_tokens=10, temperature=1.0, top_k=50, top_p=0.95)
    alone = [
        engine.generate([p], [image], 3, sampling, [s])[0] for p, image, s in zip(prompts, images, seeds, strict=True)
    ]
    for order in (list(range(8)), [8, 6, 4, 2, 0, 7, 5, 3]):  # two batches of 8: other places, other batch-mates
        batched = engine.generate([prompts[i] for i in order], [images[i] for i in order], 3, sampling,
                                  [seeds[i] for i in order])  # fmt: skip
        for place, i in enumerate(order):
            assert [c.token_ids for c in batched[place]] == [c.token_ids for c in alone[i]], (i, place)
            for got, wanted in zip(batched[place], alone[i], strict=True):
                torch.testing.assert_close(
                    torch.tensor(got.logprobs), torch.tensor(wanted.logprobs), atol=LOGPROB_ATOL, rtol=0
                )
    assert len({tuple(c.token_ids) for group in alone for c in group}) == 3 * len(prompts)


def reference_greedy(engine: HFRolloutEngine, prompts: list[str], images: list, sampling: Sampling) -> list[list[int]]:
    """transformers' own greedy decoding on the same left-padded batch, with the sampling's repetition penalty."""
    inputs = prompt_tensors(engine.processor, prompts, images)
    with torch.no_grad():
        out = engine.model.eval().generate(
            **inputs,
            do_sample=False,
            repetition_penalty=sampling.repetition_penalty,
            max_new_tokens=sampling.max_tokens,
            pad_token_id=engine.pad_id,
        )
    return out[:, inputs["input_ids"].shape[1] :].tolist()


def test_greedy_is_transformers_greedy_with_the_repetition_penalty(engine, maps):
    _, prompts, images = maps
    plain = Sampling(max_tokens=12, temperature=0.0)
    penalized = Sampling(max_tokens=12, temperature=0.0, repetition_penalty=3.0)
    got = {s: [g[0].token_ids for g in engine.generate(prompts[:4], images[:4], 1, s)] for s in (plain, penalized)}
    for sampling, tokens in got.items():
        assert tokens == reference_greedy(engine, prompts[:4], images[:4], sampling)
    assert got[plain] != got[penalized]
