"""Vision tower benchmark on CPU: transformers' sdpa loop over attention windows vs `batch_vision_windows` (one call
per window length), side by side in one run.

Run: `python benchmarks/vision_attention_bench.py [--megapixels 1 2] [--depth 4] [--repeats 3] [--threads 2]`. The
tower is Qwen2.5-VL-7B's vision tower (hidden 1280, 16 heads of 80, MLP 3420, 112-pixel windows) cut to `--depth`
blocks, the last one with full attention (the 7B has 32, every eighth full), random weights, fp32, sdpa. The image is
a real map (default: New York, 4600 x 5600) resized to each pixel budget by the training pipeline's `fit_image` and
turned into patches by the real Qwen2-VL image processor. Per size: seconds of a forward (no grad) and of a forward +
backward (gradients of every parameter), each the median of `--repeats` (loop and batched alternate within a repeat),
and the attention calls each block makes each way. On a GPU the loop's cost is launch overhead per tiny call, which
a CPU does not show: here the calls are counted, and the seconds are what a CPU gains."""

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import Qwen2VLImageProcessor
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewardmap.data.images import MAX_PIXELS, MAX_SOURCE_PIXELS, MIN_PIXELS, fit_image  # noqa: E402
from rewardmap.models.vision_attention import batch_vision_windows  # noqa: E402


def seven_b_tower(depth: int) -> Qwen2_5_VisionTransformerPretrainedModel:
    """Qwen2.5-VL-7B's vision tower with `depth` blocks, the last with full attention (random weights, fp32, sdpa)."""
    config = Qwen2_5_VLVisionConfig(
        depth=depth,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        fullatt_block_indexes=[depth - 1],
        window_size=112,
    )
    torch.manual_seed(0)
    return Qwen2_5_VisionTransformerPretrainedModel._from_config(config, attn_implementation="sdpa").float().train()


def calls_per_block(tower: torch.nn.Module, pixels: torch.Tensor, grid: torch.Tensor) -> list[int]:
    """The sdpa calls each block makes in one forward."""
    counts, hooks = [], []
    with (
        torch.no_grad(),
        mock.patch.object(F, "scaled_dot_product_attention", wraps=F.scaled_dot_product_attention) as sdpa,
    ):
        for block in tower.blocks:
            hooks.append(block.register_forward_pre_hook(lambda *_: counts.append(-sdpa.call_count)))
            hooks.append(block.register_forward_hook(lambda *_: counts.append(counts.pop() + sdpa.call_count)))
        tower(pixels, grid_thw=grid)
    for hook in hooks:
        hook.remove()
    return counts


def seconds(tower: torch.nn.Module, pixels: torch.Tensor, grid: torch.Tensor, backward: bool) -> float:
    """Wall-clock seconds of one forward (no grad), or of one forward + backward."""
    start = time.perf_counter()
    with torch.set_grad_enabled(backward):
        merged = tower(pixels, grid_thw=grid).pooler_output
    if backward:
        merged.square().mean().backward()
        tower.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_map = (
        Path(__file__).resolve().parents[1].parent / "shared" / "reasonmap" / "maps" / "america" / "new_york.png"
    )
    parser.add_argument("--map", type=Path, default=default_map, help="a map PNG (default: ReasonMap's New York)")
    parser.add_argument("--megapixels", type=float, nargs="+", default=[1, 2], help="pixel budgets (recipe max 12.8)")
    parser.add_argument("--depth", type=int, default=4, help="vision blocks (the last has full attention; 7B: 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    if not args.map.is_file():
        print(f"no map at {args.map}; pass --map PATH to a PNG", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    Image.MAX_IMAGE_PIXELS = MAX_SOURCE_PIXELS
    loop = seven_b_tower(args.depth)
    batched = copy.deepcopy(loop)
    batch_vision_windows(batched)
    processor = Qwen2VLImageProcessor(
        patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS
    )
    print(f"map: {args.map.name}; depth {args.depth} (full attention in the last); fp32; {args.threads} threads")
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    print(
        "| image | patches | calls per window block | calls per full block "
        "| forward s (loop / batched) | speed-up | forward+backward s (loop / batched) | speed-up |"
    )
    print("|---" * 8 + "|", flush=True)
    for megapixels in args.megapixels:
        image = fit_image(Image.open(args.map), max_pixels=int(megapixels * 1e6))
        inputs = processor(images=[image], return_tensors="pt")  # already fit: not resized again
        pixels, grid = inputs["pixel_values"], inputs["image_grid_thw"]
        loop_calls, batched_calls = calls_per_block(loop, pixels, grid), calls_per_block(batched, pixels, grid)
        times = {(side, backward): [] for side in ("loop", "batched") for backward in (False, True)}
        for _ in range(args.repeats):
            for backward in (False, True):
                for side, tower in (("loop", loop), ("batched", batched)):
                    times[side, backward].append(seconds(tower, pixels, grid, backward))
        median = {key: statistics.median(values) for key, values in times.items()}
        row = [
            f"{image.width} x {image.height}",
            f"{pixels.shape[0]:,}",
            f"{loop_calls[0]} -> {batched_calls[0]}",
            f"{loop_calls[-1]} -> {batched_calls[-1]}",
        ]
        for backward in (False, True):
            slow, fast = median["loop", backward], median["batched", backward]
            row += [f"{slow:.2f} / {fast:.2f}", f"{slow / fast:.2f}x"]
        print("| " + " | ".join(row) + " |", flush=True)
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
