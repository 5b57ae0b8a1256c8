"""Where a step's work runs: equal-count rank shares balanced by cost, and micro-batches packed to a token budget.

Pure functions of costs and token counts. FSDP2 and ZeRO-3 run the ranks in lockstep pass by pass (every forward and
backward gathers weights from all of them), so a step lasts about the sum over passes of the slowest rank's pass:
shares are dealt in rounds of alike costs, each rank's k-th item from round k.
"""

from __future__ import annotations

from collections.abc import Sequence


def contiguous_shares(count: int, ranks: int) -> list[list[int]]:
    """Items 0..count-1 in `ranks` consecutive runs of count / ranks (the placement by position)."""
    _check_divides(count, ranks)
    per = count // ranks
    return [list(range(rank * per, (rank + 1) * per)) for rank in range(ranks)]


def balanced_shares(costs: Sequence[float], ranks: int) -> list[list[int]]:
    """Items 0..len(costs)-1 over `ranks` ranks, len / ranks each, by cost; each rank's items in round order.

    Dealt in rounds of the `ranks` costliest items left, the costliest to the least loaded rank (ties: lower rank);
    then two ranks swap their items of one round while that lowers the larger of their loads below the most loaded
    rank's. Round by round is the least time in lockstep (the sum over k of the costliest k-th item cannot be lower);
    the swaps keep it and even out the totals. The dealing keeps the most loaded rank within the largest cost spread
    of a round of the least loaded one, so its load is at most the mean plus (largest cost - smallest cost); the swaps
    only lower it (within 4/3 of the best equal-count split on every case brute-forced in tests/test_grpo_balance.py).
    """
    _check_divides(len(costs), ranks)
    order = sorted(range(len(costs)), key=lambda item: (-costs[item], item))
    shares: list[list[int]] = [[] for _ in range(ranks)]
    loads = [0.0] * ranks
    for start in range(0, len(order), ranks):
        by_load = sorted(range(ranks), key=lambda rank: (loads[rank], rank))
        for rank, item in zip(by_load, order[start : start + ranks], strict=True):
            shares[rank].append(item)
            loads[rank] += costs[item]
    for _ in range(len(costs) * ranks):  # swaps lower the sorted loads, so they end; the cap bounds the work
        if not _best_swap(shares, loads, costs):
            break
    return shares


def _best_swap(shares: list[list[int]], loads: list[float], costs: Sequence[float]) -> bool:
    """Swaps, in place, the round-k items of the most loaded rank and another rank that lower the larger of the pair's
    two loads the most, if any swap lowers it below the top load; returns whether one was made."""
    top = max(range(len(loads)), key=lambda rank: (loads[rank], -rank))
    best, move = loads[top], None
    for other in range(len(loads)):
        for k, (mine, theirs) in enumerate(zip(shares[top], shares[other], strict=True)):
            delta = costs[mine] - costs[theirs]
            worse = max(loads[top] - delta, loads[other] + delta)
            if delta > 0 and worse < best:
                best, move = worse, (other, k, delta)
    if move is None:
        return False
    other, k, delta = move
    shares[top][k], shares[other][k] = shares[other][k], shares[top][k]
    loads[top] -= delta
    loads[other] += delta
    return True


def max_over_mean(shares: Sequence[Sequence[int]], costs: Sequence[float]) -> float:
    """The most loaded rank's summed cost over the mean rank's (1.0: perfectly even; 1.0 when nothing costs)."""
    loads = [sum(costs[item] for item in share) for share in shares]
    mean = sum(loads) / len(loads)
    return max(loads) / mean if mean > 0 else 1.0


def lockstep_over_mean(passes: Sequence[Sequence[float]]) -> float:
    """For ranks run in lockstep, each rank's passes[rank] costs in order (the same count on every rank): the sum over
    k of the costliest k-th pass, over the mean rank's total (1.0: no rank ever waits; 1.0 when nothing costs)."""
    mean = sum(sum(costs) for costs in passes) / len(passes)
    slowest = sum(max(column) for column in zip(*passes, strict=True))
    return slowest / mean if mean > 0 else 1.0


def padded_tokens(shapes: Sequence[tuple[int, int]], rows: int) -> int:
    """Tokens one forward of these groups computes: `rows` sequences per group, each padded to the longest prompt plus
    the widest completion span; `shapes` holds (prompt tokens, completion span of one sequence) per group."""
    return rows * len(shapes) * (max(prompt for prompt, _ in shapes) + max(span for _, span in shapes))


def token_micro_batches(shapes: Sequence[tuple[int, int]], rows: int, budget: int, ranks: int) -> list[list[int]]:
    """Groups packed into micro-batches of at most `budget` padded tokens (`padded_tokens`), as lists of positions in
    `shapes`: sorted longest first, each takes as many next groups as fit and at least one (a group over the budget
    runs alone). While their count is not a multiple of `ranks`, the micro-batch of several groups with the most
    padded tokens is halved, so that fewer passes carry no work."""
    order = sorted(range(len(shapes)), key=lambda group: (-shapes[group][0], -shapes[group][1], group))
    batches: list[list[int]] = []
    for group in order:
        if batches and padded_tokens([shapes[g] for g in batches[-1] + [group]], rows) <= budget:
            batches[-1].append(group)
        else:
            batches.append([group])
    while len(batches) % ranks:
        splittable = [batch for batch in batches if len(batch) > 1]
        if not splittable:
            break
        largest = max(splittable, key=lambda batch: padded_tokens([shapes[g] for g in batch], rows))
        at = batches.index(largest)
        half = len(largest) // 2
        batches[at : at + 1] = [largest[:half], largest[half:]]
    return batches


def _check_divides(count: int, ranks: int) -> None:
    if ranks < 1 or count % ranks:
        raise ValueError(f"{count} items do not split evenly over {ranks} ranks")
