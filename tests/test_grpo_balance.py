"""Placement of a step's work: balanced equal-count shares (against brute force), token-budget micro-batches, the
update plan every rank follows (whole groups, the same passes everywhere, each group trained once), prompt lengths
known before decoding, and token-budget passes that train exactly as one group at a time (tiny model, mixed maps)."""

import itertools
import random
from dataclasses import replace

import pytest
import torch

from rewardmap.config import TrainerConfig, load_config
from rewardmap.distributed import World
from rewardmap.grpo.balance import (
    balanced_shares,
    contiguous_shares,
    lockstep_over_mean,
    max_over_mean,
    padded_tokens,
    token_micro_batches,
)
from rewardmap.grpo.batching import Group, place_update, rollout_share
from rewardmap.grpo.trainer import GRPOTrainer
from rewardmap.rollout import Completion
from tests.test_grpo_trainer import DEMO, small_overrides

CPU = torch.device("cpu")


def worlds(size: int) -> list[World]:
    return [World(rank, size, rank, CPU) for rank in range(size)]


def best_equal_split(costs: list[int], ranks: int) -> int:
    """The least possible load of the most loaded rank, over every split into `ranks` shares of equal count."""
    per, best = len(costs) // ranks, float("inf")

    def search(left: list[int], top: int) -> None:
        nonlocal best
        if top >= best:
            return
        if not left:
            best = top
            return
        for rest in itertools.combinations(left[1:], per - 1):
            share = (left[0], *rest)
            search([i for i in left if i not in share], max(top, sum(costs[i] for i in share)))

    search(list(range(len(costs))), 0)
    return best


def test_contiguous_shares_are_runs_of_equal_count():
    assert contiguous_shares(6, 2) == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="5 items do not split evenly over 2 ranks"):
        contiguous_shares(5, 2)


def test_balanced_shares_pair_big_with_small_in_rounds():
    costs = [16, 16, 1, 1, 16, 4, 4, 1]  # contiguous: 32, 2, 20, 5 (mean 14.75)
    shares = balanced_shares(costs, 4)
    assert sorted(item for share in shares for item in share) == list(range(8))
    assert all(len(share) == 2 for share in shares)
    assert max_over_mean(shares, costs) == pytest.approx(17 / 14.75)  # 16 + 1 is the least a 16 can carry
    assert max_over_mean(contiguous_shares(8, 4), costs) == pytest.approx(32 / 14.75)
    assert max_over_mean([[0], [1]], [0, 0]) == 1.0
    # in lockstep a rank waits at every pass: equal totals, 1.5x the time
    assert lockstep_over_mean([[3, 1], [1, 3]]) == 1.5 and lockstep_over_mean([[3, 1], [3, 1]]) == 1.0


def test_balanced_shares_against_brute_force():
    """Seeded random small cases: equal counts, round order (the least lockstep time: the k-th items of the ranks are
    the k-th costliest round), the most loaded rank within mean + (max - min) and within 4/3 of the optimum."""
    rng = random.Random(0)
    worst = 0.0
    for _ in range(600):
        ranks = rng.choice([2, 3, 4])
        per = rng.choice({2: [1, 2, 3, 4], 3: [1, 2, 3], 4: [1, 2]}[ranks])
        scale = rng.choice([100, 1000, 2000])
        costs = [rng.randint(1, scale) for _ in range(ranks * per)]
        shares = balanced_shares(costs, ranks)
        assert sorted(i for share in shares for i in share) == list(range(len(costs)))
        assert {len(share) for share in shares} == {per}
        ordered = sorted(costs, reverse=True)
        lockstep = sum(max(costs[share[k]] for share in shares) for k in range(per))
        assert lockstep == sum(ordered[k * ranks] for k in range(per))
        top = max(sum(costs[i] for i in share) for share in shares)
        assert top <= sum(costs) / ranks + max(costs) - min(costs)
        worst = max(worst, top / best_equal_split(costs, ranks))
    assert worst <= 4 / 3, worst


def test_padded_tokens_and_token_micro_batches():
    # (prompt tokens, completion span of a sequence); one sequence a group: the shared prefix
    shapes = [(100, 40), (300, 20), (90, 10), (310, 40), (1000, 50)]
    assert padded_tokens([shapes[0], shapes[1]], rows=1) == 2 * (300 + 40)
    assert padded_tokens([shapes[0]], rows=4) == 4 * 140
    # longest first; 1050 runs alone over the budget of 700; 350 + 340 padded to 2 x 350 fits; then the short ones
    assert token_micro_batches(shapes, rows=1, budget=700, ranks=1) == [[4], [3, 1], [0, 2]]
    # 3 micro-batches on 2 ranks: the fullest with several groups is halved
    assert token_micro_batches(shapes, rows=1, budget=700, ranks=2) == [[4], [3], [1], [0, 2]]
    assert token_micro_batches(shapes[:1], rows=1, budget=10, ranks=2) == [[0]]  # cannot split: the plan pads


def groups_of(prompts: list[int], lengths: list[list[int]]) -> tuple[list[Group], list[int]]:
    """Groups whose completions have the given token counts, and their prompt tokens."""
    groups = [
        Group(row, [Completion([7] * length, "", [], True) for length in group], [], [1.0, 0.0] * (len(group) // 2))
        for row, group in enumerate(lengths)
    ]
    return groups, prompts


def test_contiguous_plan_is_the_placement_by_position():
    config = TrainerConfig(balance_batch=False, mini_batches_per_step=2)
    groups, tokens = groups_of([50] * 8, [[3, 4]] * 8)
    plans = [place_update(groups, tokens, world, config, 1)[0] for world in worlds(2)]
    assert [plan.groups for plan in plans] == [
        [(0, True), (1, True), (4, True), (5, True)],
        [(2, True), (3, True), (6, True), (7, True)],
    ]
    assert plans[1].passes == [[slice(i, i + 1) for i in range(4)], [slice(i, i + 1) for i in range(4, 8)]]
    # 3 groups kept by dynamic sampling on 2 ranks: topped up with a copy of the cheapest that trains on nothing
    groups, tokens = groups_of([50, 20, 60], [[3, 4]] * 3)
    plans = [place_update(groups, tokens, world, TrainerConfig(balance_batch=False), 1)[0] for world in worlds(2)]
    assert [plan.groups for plan in plans] == [[(0, True), (1, True)], [(2, True), (1, False)]]
    assert place_update([], [], worlds(2)[0], config, 1)[0].groups == []


@pytest.mark.parametrize("budget", [None, 300], ids=["micro_batch_size", "micro_batch_tokens"])
@pytest.mark.parametrize("group_size", [1, 2], ids=["one sequence per completion", "shared prefix"])
def test_balanced_plan_trains_each_group_once_in_equal_passes(budget, group_size):
    rng = random.Random(1)
    prompts = [rng.choice([60, 120, 250]) for _ in range(10)]
    groups, tokens = groups_of(prompts, [[rng.randint(1, 30), rng.randint(1, 30)] for _ in prompts])
    config = TrainerConfig(micro_batch_tokens=budget, mini_batches_per_step=2)
    placed = [place_update(groups, tokens, world, config, group_size) for world in worlds(3)]
    plans, metrics = [plan for plan, _ in placed], placed[0][1]
    assert all(other == metrics for _, other in placed), "every rank computes the same metrics"
    trained = sorted(number for plan in plans for number, trains in plan.groups if trains)
    assert trained == list(range(10)), "each group trained once, by one rank"
    for plan in plans:
        assert [len(passes) for passes in plan.passes] == [len(passes) for passes in plans[0].passes]
        rows = [part for passes in plan.passes for part in passes]
        assert rows[0].start == 0 and rows[-1].stop == 2 * len(plan.groups)
        assert all(a.stop == b.start for a, b in itertools.pairwise(rows)), "passes tile the rank's sequences"
        if budget is not None or group_size == 2:
            assert all(part.start % 2 == 0 and part.stop % 2 == 0 for part in rows), "whole groups a pass"
        for mini_batch, passes in zip((range(0, 5), range(5, 10)), plan.passes, strict=True):
            numbers = {plan.groups[i][0] for i in range(passes[0].start // 2, passes[-1].stop // 2)}
            assert numbers <= set(mini_batch), "a mini-batch's groups stay in it"
    assert metrics["batch/micro_batches_per_rank"] == sum(len(passes) for passes in plans[0].passes)
    assert 0.0 <= metrics["batch/padding_fraction"] < 1.0
    assert 1.0 <= metrics["balance/max_over_mean"] <= metrics["balance/max_over_mean_before"]
    if budget is None:  # one group (or sequence) a pass, dealt in rounds: the least lockstep time there is
        assert 1.0 <= metrics["balance/lockstep_over_mean"] <= metrics["balance/lockstep_over_mean_before"]
    if budget is not None:
        alone = [
            2 // group_size * (p + group_size * max(len(c.token_ids) for c in g.completions))
            for p, g in zip(prompts, groups, strict=True)
        ]
        assert metrics["batch/over_budget_groups"] == sum(tokens > budget for tokens in alone) > 0


def test_rollout_share_balances_prompt_tokens():
    tokens = [16000, 15000, 600, 700]
    shares = [rollout_share(tokens, world, balance=True) for world in worlds(2)]
    assert [mine for mine, _ in shares] == [[0, 2], [1, 3]]
    metrics = shares[0][1]
    assert metrics["balance/rollout_max_over_mean_before"] == pytest.approx(31000 / 16150)
    assert metrics["balance/rollout_max_over_mean"] == pytest.approx(16600 / 16150)
    assert rollout_share(tokens, worlds(2)[1], balance=False)[0] == [2, 3]


def mixed_trainer(model_dir, data_dir, out, world, *extra: str) -> GRPOTrainer:
    """The seconds-per-step workload on maps of three sizes, 4 prompts x 2 rollouts."""
    overrides = small_overrides(model_dir, data_dir, out, "data.max_pixels=200704", "data.prompts_per_step=4", *extra)
    return GRPOTrainer(load_config(DEMO, overrides), world)


def one_row_per_map(trainer: GRPOTrainer, count: int) -> list[int]:
    """Rows whose figures differ, in turn (3 map sizes), `count` of them."""
    first: dict[str, int] = {}
    for index in range(len(trainer.parts.rows)):
        first.setdefault(trainer.parts.rows[index]["figure"], index)
    rows = sorted(first.values())
    return [rows[i % len(rows)] for i in range(count)]


@pytest.mark.slow
@pytest.mark.parametrize("shared_prefix", ["on", "off"])
def test_token_budget_gives_the_loss_and_gradients_of_one_group_at_a_time(
    tiny_model_dir, mixed_maps_dataset_dir, tmp_path, world, shared_prefix
):
    """lr 0 keeps the weights, so the same trainer runs the update twice: micro_batch_size=1, then passes packed to
    600 tokens (the 238-token map's group alone, the small maps' groups together). The prompts' lengths, known before
    any map is decoded, are those of the processor's tensors."""
    trainer = mixed_trainer(
        tiny_model_dir, mixed_maps_dataset_dir, tmp_path, world, "trainer.lr=0", f"model.shared_prefix={shared_prefix}"
    )
    parts = trainer.parts
    rows = [parts.rows[i] for i in one_row_per_map(trainer, 3)]
    prompts, images = parts.prompts_and_images(rows)
    tokens = parts.prompt_tokens(rows)
    assert tokens == parts.prompt_inputs(prompts, images)["attention_mask"].sum(-1).tolist()
    text = [len(ids) - 1 for ids in parts.processor.tokenizer(prompts)["input_ids"]]
    assert sorted(t - length for t, length in zip(tokens, text, strict=True)) == [12, 56, 238]
    answers = [[9707, 1879, 151645], [2152, 13, 374, 220, 16, 151645], [785, 151645], [9454, 13, 1879, 151645]]
    groups = [
        Group(
            row,
            [Completion(answers[k % 4], "", [], True), Completion(answers[(k + 1) % 4], "", [], True)],
            [],
            [1.0, 0.0],
        )
        for k, row in enumerate(one_row_per_map(trainer, 4))
    ]
    grads, step = [], trainer.parts.backend.step

    def recording_step(max_grad_norm: float) -> float:
        grads.append({n: p.grad.clone() for n, p in trainer.parts.model.named_parameters() if p.grad is not None})
        return step(max_grad_norm)

    trainer.parts.backend.step = recording_step
    one = trainer.train_on(groups, {})
    config = trainer.config
    trainer.config = replace(config, trainer=replace(config.trainer, micro_batch_tokens=600))
    packed = trainer.train_on(groups, {})
    assert packed["batch/micro_batches_per_rank"] < one["batch/micro_batches_per_rank"] == 4 * 2 // trainer.group_size
    for key in ("loss/total", "loss/policy", "loss/entropy", "optim/grad_norm"):
        assert packed[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key
    assert one["optim/grad_norm"] > 0
    assert max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0]) <= 1e-5
