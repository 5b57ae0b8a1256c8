"""Vision tower benchmark on CPU: transformers' per-window sdpa loop vs batch_vision_windows (a call per length).

Both sides run in one process, side by side.

Run: `python benchmarks/vision_attention_bench.py [--megapixels 0.5 1] [--depth 4] [--repeats 3] [--threads 1 2]`. The
tower is Qwen2.5-VL-7B's vision tower (hidden 1280, 16 heads of 80, MLP 3420, 112-pixel windows) cut to `--depth`
blocks, the last one with full attention (the 7B has 32, every eighth full), random weights, fp32, sdpa. The image is
a real map (default: New York, 4600 x 5600) resized to each pixel budget by the training pipeline's `fit_image` and
turned into patches by the real Qwen2-VL image processor. Per size and thread count: the attention calls each
block makes each way, and CPU seconds (this process's CPU time, which other processes on shared cores change far
less than wall time) of the tower's forward (no grad), its forward + backward (gradients of every parameter) and one
window block's attention alone (forward + backward), each the median of `--repeats`, loop and batched alternating.
A call's fixed cost is what batching saves: on a GPU a kernel launch per window, on a CPU with several threads waking
them per call (one thread shows the arithmetic alone, where the batched path's reordering copies cost about what it
saves). The matrix products dominate a CPU tower; a GPU check is not run here."""

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import Qwen2VLImageProcessor
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.vision_utils import get_vision_window_index

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


def attention_inputs(tower: torch.nn.Module, grid: torch.Tensor) -> dict:
    """Random inputs of one window block's attention for an image of `grid`: hidden states (patches, 1280) that
    require grad, the image's window boundaries, rotary (cos, sin)."""
    config = tower.config
    _, cu_windows = get_vision_window_index(grid, config.spatial_merge_size, config.window_size, config.patch_size)
    angles = torch.rand(int(cu_windows[-1]), config.hidden_size // config.num_heads)
    hidden = torch.randn(int(cu_windows[-1]), config.hidden_size, requires_grad=True)
    return {"hidden_states": hidden, "cu_seqlens": cu_windows, "position_embeddings": (angles.cos(), angles.sin())}


def timed_runs(tower: torch.nn.Module, pixels: torch.Tensor, grid: torch.Tensor, attention: dict) -> dict:
    """The runs timed per side: the tower's forward (no grad) and forward + backward (gradients of every parameter),
    and the first block's (window) attention alone, forward + backward."""

    def forward() -> None:
        with torch.no_grad():
            tower(pixels, grid_thw=grid)

    def train() -> None:
        tower(pixels, grid_thw=grid).pooler_output.square().mean().backward()

    def window_attention() -> None:
        tower.blocks[0].attn(**attention).square().mean().backward()

    return {"forward": forward, "forward+backward": train, "window attention": window_attention}


def cpu_seconds(run: Callable[[], None], tower: torch.nn.Module, attention: dict) -> float:
    """CPU seconds of `run()` in this process; the gradients it made are dropped after."""
    start = time.process_time()
    run()
    seconds = time.process_time() - start
    tower.zero_grad(set_to_none=True)
    attention["hidden_states"].grad = None
    return seconds


def timing_columns(towers: dict, pixels: torch.Tensor, grid: torch.Tensor, repeats: int) -> list[str]:
    """'loop s / batched s' and the speed-up of each timed run, medians of `repeats` with the sides alternating."""
    attention = attention_inputs(towers["loop"], grid)
    runs = {side: timed_runs(tower, pixels, grid, attention) for side, tower in towers.items()}
    times = {(side, name): [] for side in runs for name in runs[side]}
    for _ in range(repeats):
        for name in runs["loop"]:
            for side, tower in towers.items():
                times[side, name].append(cpu_seconds(runs[side][name], tower, attention))
    columns = []
    for name in runs["loop"]:
        slow, fast = (statistics.median(times[side, name]) for side in towers)
        columns += [f"{slow:.2f} / {fast:.2f}", f"{slow / fast:.2f}x"]
    return columns


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_map = (
        Path(__file__).resolve().parents[1].parent / "shared" / "reasonmap" / "maps" / "america" / "new_york.png"
    )
    parser.add_argument("--map", type=Path, default=default_map, help="a map PNG (default: ReasonMap's New York)")
    parser.add_argument("--megapixels", type=float, nargs="+", default=[0.5, 1], help="pixel budgets (recipe: 12.8)")
    parser.add_argument("--depth", type=int, default=4, help="vision blocks (the last has full attention; 7B: 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is reported)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU thread counts to run with")
    args = parser.parse_args()
    if not args.map.is_file():
        print(f"no map at {args.map}; pass --map PATH to a PNG", file=sys.stderr)
        return 1
    Image.MAX_IMAGE_PIXELS = MAX_SOURCE_PIXELS
    towers = {"loop": seven_b_tower(args.depth)}
    towers["batched"] = copy.deepcopy(towers["loop"])
    batch_vision_windows(towers["batched"])
    processor = Qwen2VLImageProcessor(
        patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS
    )
    print(f"map: {args.map.name}; depth {args.depth} (full attention in the last); fp32; CPU seconds")
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    print(
        "| image | patches | threads | attention calls per window block | per full block | tower forward s "
        "(loop / batched) | speed-up | tower forward+backward s | speed-up | window attention forward+backward s "
        "| speed-up |"
    )
    print("|---" * 11 + "|", flush=True)
    for megapixels in args.megapixels:
        image = fit_image(Image.open(args.map), max_pixels=int(megapixels * 1e6))
        inputs = processor(images=[image], return_tensors="pt")  # already fit: not resized again
        pixels, grid = inputs["pixel_values"], inputs["image_grid_thw"]
        loop_calls, batched_calls = (calls_per_block(tower, pixels, grid) for tower in towers.values())
        for threads in args.threads:
            torch.set_num_threads(threads)
            row = [f"{image.width} x {image.height}", f"{pixels.shape[0]:,}", str(threads)]
            row += [f"{loop_calls[0]} -> {batched_calls[0]}", f"{loop_calls[-1]} -> {batched_calls[-1]}"]
            row += timing_columns(towers, pixels, grid, args.repeats)
            print("| " + " | ".join(row) + " |", flush=True)
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
