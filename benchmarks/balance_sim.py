"""Simulation at recipe scale: how much a step's trainer passes gain from balanced rank shares (no GPU, no weights).

Run: `python benchmarks/balance_sim.py [--maps ../shared/reasonmap/maps] [--trials 2000]` (about a minute; the maps
folder defaults to $REWARDMAP_REASONMAP_DIR/maps, as the tests find it). Prompt
sizes come from the real ReasonMap maps at the recipe's data.max_pixels (12,845,056; visual tokens from each map's
header as the trainer counts them) plus TEXT_TOKENS of text; each step draws its prompts uniformly from those maps, and
each of the rollout.n = 4 answers a length from a log-normal (median ANSWER_MEDIAN tokens, sigma ANSWER_SIGMA, cut to
16..2,048). Each group runs as one sequence (the shared prefix: the prompt once, then its 4 answers, padded to the
longest). Placements compared, with the trainer's own functions: today's contiguous shares of the batch, balanced
shares (`balanced_shares` by padded tokens), and balanced shares of passes packed to --budget tokens.

Printed per (ranks, prompts per step): the most loaded rank's tokens over the mean, and the time of the reference
and update passes from a FLOP model of Qwen2.5-VL-7B (language model linear layers and attention, the vision tower's
window and full attention blocks, the output layer on answer tokens only): FSDP2 runs the ranks in lockstep, pass by
pass, so the time is the sum over passes of the slowest rank's pass, shown over the ideal (all FLOPs / ranks). The
rollout is not modelled: decoding is bound by memory traffic, not FLOPs.
"""

import argparse
import os
import random
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rewardmap.data.images import image_tokens  # noqa: E402
from rewardmap.grpo.balance import (  # noqa: E402
    balanced_shares,
    contiguous_shares,
    lockstep_over_mean,
    max_over_mean,
    padded_tokens,
    token_micro_batches,
)

MAX_PIXELS = 12_845_056
TEXT_TOKENS = 200  # system prompt, chat template and a ReasonMap question with its answer-format instruction
ANSWER_MEDIAN, ANSWER_SIGMA, ANSWER_MAX = 400, 0.6, 2048
N = 4
# Qwen2.5-VL-7B: language model and vision tower shapes (config.json of Qwen/Qwen2.5-VL-7B-Instruct).
LAYERS, HIDDEN, FFN, KV_WIDTH, VOCAB = 28, 3584, 18944, 512, 152064
VISION_BLOCKS, VISION_HIDDEN, VISION_FFN, FULL_BLOCKS, WINDOW_PATCHES = 32, 1280, 3420, 4, 64
LAYER_PARAMS = 2 * HIDDEN * HIDDEN + 2 * HIDDEN * KV_WIDTH + 3 * HIDDEN * FFN
VISION_PARAMS = VISION_BLOCKS * (4 * VISION_HIDDEN * VISION_HIDDEN + 3 * VISION_HIDDEN * VISION_FFN)
MERGER_PARAMS = (4 * VISION_HIDDEN) ** 2 + 4 * VISION_HIDDEN * HIDDEN  # per visual token (4 patches merged)
PASSES = 1 + 4  # reference forward; update forward + backward (2x) + the checkpointed layers' recompute


def map_tokens(maps: Path) -> list[int]:
    """Visual tokens of every map under `maps` at the recipe's pixel budget."""
    paths = sorted(maps.rglob("*.png"))
    if not paths:
        raise SystemExit(f"no .png maps under {maps}: pass --maps (the real ReasonMap maps folder)")
    return [image_tokens(str(path.relative_to(maps)), root=maps, max_pixels=MAX_PIXELS) for path in paths]


def vision_flops(visual: int) -> float:
    """FLOPs of one map through the vision tower (4 patches a visual token; window blocks of 64 patches, 4 full
    attention blocks) and the patch merger."""
    patches = 4 * visual
    pairs = (VISION_BLOCKS - FULL_BLOCKS) * patches * WINDOW_PATCHES + FULL_BLOCKS * patches * patches
    return 2 * VISION_PARAMS * patches + 4 * VISION_HIDDEN * pairs + 2 * MERGER_PARAMS * visual


def language_flops(prompt: int, width: int, answer_tokens: int) -> float:
    """FLOPs of one group as one sequence in the language model: the prompt once, N answers padded to `width`, each
    over the prompt and itself (causal pairs); the output layer on the `answer_tokens` real answer tokens."""
    pairs = prompt * prompt / 2 + N * (width * prompt + width * width / 2)
    return (
        2 * LAYERS * LAYER_PARAMS * (prompt + N * width)
        + 4 * LAYERS * HIDDEN * pairs
        + 2 * VOCAB * HIDDEN * (answer_tokens)
    )


def one_step(rng: random.Random, visual_tokens: list[int], ranks: int, prompts: int, budget: int) -> dict:
    """One random step's figures under the three placements."""
    visual = [rng.choice(visual_tokens) for _ in range(prompts)]
    answers = [
        [min(ANSWER_MAX, max(16, round(rng.lognormvariate(0, ANSWER_SIGMA) * ANSWER_MEDIAN))) for _ in range(N)]
        for _ in range(prompts)
    ]
    shapes = [(v + TEXT_TOKENS, N * max(a)) for v, a in zip(visual, answers, strict=True)]
    tokens = [padded_tokens([shape], 1) for shape in shapes]
    flops = [
        vision_flops(v) + language_flops(s[0], max(a), sum(a)) for v, s, a in zip(visual, shapes, answers, strict=True)
    ]
    contiguous = contiguous_shares(prompts, ranks)
    balanced = balanced_shares(tokens, ranks)
    packed = token_micro_batches(shapes, 1, budget, ranks)
    packed += [[min(range(prompts), key=tokens.__getitem__)]] * (-len(packed) % ranks)  # passes with no work
    packed_shares = balanced_shares([padded_tokens([shapes[g] for g in batch], 1) for batch in packed], ranks)
    # groups sharing a pass run padded to its longest prompt and answers (each map through the tower on its own)
    pass_flops = [
        sum(vision_flops(visual[g]) for g in batch)
        + len(batch) * language_flops(max(shapes[g][0] for g in batch), max(max(answers[g]) for g in batch), 0)
        + sum(2 * VOCAB * HIDDEN * sum(answers[g]) for g in batch)
        for batch in packed
    ]
    padding = sum(pass_flops) / sum(flops)  # over the ideal of the unpadded FLOPs, packed passes pay their padding
    return {
        "contiguous": max_over_mean(contiguous, tokens),
        "balanced": max_over_mean(balanced, tokens),
        "time_contiguous": lockstep_over_mean([[flops[g] for g in share] for share in contiguous]),
        "time_balanced": lockstep_over_mean([[flops[g] for g in share] for share in balanced]),
        "time_packed": lockstep_over_mean([[pass_flops[i] for i in share] for share in packed_shares]) * padding,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("REWARDMAP_REASONMAP_DIR", REPO.parent / "shared" / "reasonmap"))
    parser.add_argument("--maps", type=Path, default=shared / "maps", help="the real ReasonMap maps folder")
    parser.add_argument("--trials", type=int, default=2000, help="random steps per configuration")
    parser.add_argument("--budget", type=int, default=25600, help="trainer.micro_batch_tokens of the packed column")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    visual = map_tokens(args.maps)
    print(
        f"{len(visual)} maps, {min(visual):,} to {max(visual):,} visual tokens at max_pixels {MAX_PIXELS:,} "
        f"(+{TEXT_TOKENS} text); answers log-normal, median {ANSWER_MEDIAN}, sigma {ANSWER_SIGMA}, 16..{ANSWER_MAX}; "
        f"n = {N}, shared prefix; mean of {args.trials} random steps\n"
    )
    print(
        "| ranks | prompts / step | slowest rank's tokens / mean, contiguous | balanced | reference + update time / "
        f"ideal, contiguous | balanced | balanced, {args.budget:,}-token passes | predicted gain (balanced) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rng = random.Random(args.seed)
    for ranks in (8, 64):
        for prompts in (16, 128):
            if prompts < ranks:
                print(f"| {ranks} | {prompts} | fewer groups than ranks: not a valid run | | | | | |")
                continue
            steps = [one_step(rng, visual, ranks, prompts, args.budget) for _ in range(args.trials)]
            mean = {key: statistics.fmean(step[key] for step in steps) for key in steps[0]}
            gain = statistics.fmean(step["time_contiguous"] / step["time_balanced"] for step in steps)
            print(
                f"| {ranks} | {prompts} | {mean['contiguous']:.2f} | {mean['balanced']:.2f} | "
                f"{mean['time_contiguous']:.2f} | {mean['time_balanced']:.2f} | {mean['time_packed']:.2f} | "
                f"{gain:.2f}x |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
