"""GPU check: the trainer's GRPO step on a Qwen2.5-VL-7B-shaped random-init model, one GPU, FSDP2 world of 1, timed.

Run on one GPU: `python benchmarks/gpu_step_check.py [--workdir DIR]` (about 8 minutes on an H200 by estimate; it
writes the random model's bf16 weights, ~11 GB, to --workdir, default a temp dir; a rerun with the same --workdir
reuses them). At toy size, on CPU or GPU: `python benchmarks/gpu_step_check.py --tiny --tokens 8 --image-size 448`
(add `--dtype fp32` on CPU, where bf16 convolutions are slow: a minute on 2 cores). Needs only a
`pip install -r requirements.txt` and the project.

The model is built from a `Qwen2_5_VLConfig` with the 7B's dimensions (text: hidden 3584, 28 heads, 4 KV heads,
intermediate 18944, vocab 152064, untied head; vision: depth 32, hidden 1280, 16 heads, intermediate 3420) and as
many decoder layers as fit the GPU beside the rest of the run (the 7B's 28 do not fit one GPU with fp32 AdamW state),
initialised on the GPU and saved beside the tiny model's tokenizer and processor: no download. The run is the recipe
(`configs/reward_map.yaml`) with the HF engine: bf16 compute, fp32 master weights, the KL term against a bf16
reference, gradient checkpointing, micro-batch 1, attention as the recipe resolves it (the shared prefix on), one
synthetic map at the recipe's pixel budget (3584 x 3584 px: 16,384 visual tokens), --n rollouts of exactly --tokens
tokens (the recipe's 2,048; EOS and the vision placeholder tokens suppressed until then). Before anything is
allocated it prints its memory plan and refuses a shape that cannot fit. Each step prints seconds per phase, peak
memory, tokens/s and the update's MFU:

    MFU = 6 x P x T / t_update / peak,  P = all parameters, T = the tokens the update computes: with the shared
    prefix each group's prompt once plus its n answers (not the prompt n times), peak = --peak-tflops (989: H200
    dense bf16).

It counts model FLOPs, not hardware FLOPs: gradient checkpointing's recomputation, attention and the vision tower
running on 4x as many patches as it emits tokens are left out, and the lm_head, which runs on answer positions only,
is counted on every token; take it as the usual 6PT estimate, not a roofline. AdamW takes its single-tensor step
(foreach=False: PyTorch's default foreach step allocates a temporary as large as all the weights).
"""

import argparse
import gc
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # fewer fragments at ~90% full

import torch  # noqa: E402
from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rewardmap.config import load_config  # noqa: E402
from rewardmap.distributed import World, join_world  # noqa: E402
from rewardmap.grpo.trainer import GRPOTrainer  # noqa: E402
from rewardmap.models.tiny import ENDOFTEXT_ID, IM_END_ID, build_processor  # noqa: E402
from rewardmap.synth import generate_dataset  # noqa: E402

PHASES = ("rollout", "reward", "ref_logprobs", "update")
GIB = 2**30
PROMPT_TEXT_TOKENS = 60  # the chat template and a question around the image's tokens
# Qwen2.5-VL-7B-Instruct's config.json; --tiny keeps its shape at toy width and depth.
SIZES = {
    "7b": {
        "text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                 "num_key_value_heads": 4, "mrope_section": [16, 24, 24]},
        "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                   "fullatt_block_indexes": [7, 15, 23, 31]},
    },
    "tiny": {
        "text": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "mrope_section": [8, 12, 12]},
        "vision": {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 1,
                   "fullatt_block_indexes": [1]},
    },
}  # fmt: skip


def model_config(size: str, layers: int | None) -> Qwen2_5_VLConfig:
    """The Qwen2.5-VL config of `size` ("7b" or "tiny"), with `layers` decoder layers when given."""
    text, vision = dict(SIZES[size]["text"]), dict(SIZES[size]["vision"])
    if layers is not None:
        text["num_hidden_layers"] = layers
    mrope = text.pop("mrope_section")
    text |= {
        "vocab_size": 152064,
        "head_dim": text["hidden_size"] // text["num_attention_heads"],
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": IM_END_ID,
        "pad_token_id": ENDOFTEXT_ID,
        "tie_word_embeddings": False,
    }
    vision |= {
        "out_hidden_size": text["hidden_size"],
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "tokens_per_second": 2,
    }
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, dtype="bfloat16")


def parameter_counts(config: Qwen2_5_VLConfig) -> dict[str, int]:
    """Parameters of the whole model, the vision tower, one decoder layer and the root (embeddings, head, norm)."""
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.visual.parameters())
    layer = sum(p.numel() for p in model.model.language_model.layers[0].parameters())
    return {
        "total": total,
        "vision": vision,
        "layer": layer,
        "root": total - vision - layer * len(config.text_config.layer_types),
    }


def memory_plan(config: Qwen2_5_VLConfig, args: argparse.Namespace) -> dict[str, float]:
    """Bytes one GPU needs for the check's run, part by part (bf16 activations, estimated from the shapes)."""
    counts, text, vision = parameter_counts(config), config.text_config, config.vision_config
    layers, image = text.num_hidden_layers, (args.image_size // 28) ** 2
    prompt, answers = image + PROMPT_TEXT_TOKENS, args.n * args.tokens
    kv_per_token = layers * 2 * text.num_key_value_heads * text.head_dim * 2
    updated = prompt + answers  # the shared prefix: each group's prompt once, then its answers
    per_token = 2 * (8 * text.hidden_size + 4 * text.intermediate_size)  # one layer recomputed in backward
    patches = 4 * image
    return {
        "policy: fp32 weights, gradients, AdamW moments (16 B/param)": 16 * counts["total"],
        f"reference: {args.dtype} weights": (2 if args.dtype == "bf16" else 4) * counts["total"] * (args.kl_coef > 0),
        "bf16 root (embeddings, head) gathered for forward and backward": 2 * counts["root"],
        "rollout KV cache (HF generate, n x (prompt + answer))": args.n * (prompt + args.tokens) * kv_per_token,
        "update: checkpointed layer inputs + one layer recomputed": updated
        * (layers * text.hidden_size * 2 + per_token),
        "vision tower: checkpointed block inputs + one block recomputed": patches
        * (vision.depth * vision.hidden_size * 2 + 2 * (8 * vision.hidden_size + 4 * vision.intermediate_size)),
        "CUDA context and allocator slack (5%)": 0.05 * 16 * counts["total"] + GIB,
    }


def plan_text(plan: dict[str, float], available: float | None) -> str:
    """The memory plan as a markdown table, with what the device has."""
    lines = ["| memory plan, one GPU | GiB |", "| --- | ---: |"]
    lines += [f"| {part} | {size / GIB:.1f} |" for part, size in plan.items()]
    lines.append(f"| **total** | **{sum(plan.values()) / GIB:.1f}** |")
    if available is not None:
        lines.append(f"| free on this GPU | {available / GIB:.1f} |")
    return "\n".join(lines)


def layers_that_fit(size: str, args: argparse.Namespace, available: float) -> int:
    """The most decoder layers (at most the 7B's 28) whose plan fits in `available` bytes (at least 1)."""
    full = SIZES[size]["text"]["num_hidden_layers"]
    return next(
        (n for n in range(full, 0, -1) if sum(memory_plan(model_config(size, n), args).values()) <= available), 1
    )


def build_model(out: Path, config: Qwen2_5_VLConfig, device: torch.device) -> None:
    """Random-init bf16 weights made on `device`, saved with the tiny model's tokenizer and processor into `out`,
    through a temporary directory: a run stopped half way leaves no directory a rerun would take for complete."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    build_processor().save_pretrained(partial)  # first: a missing tokenizer package fails before gigabytes are written
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=ENDOFTEXT_ID, eos_token_id=[IM_END_ID, ENDOFTEXT_ID], pad_token_id=ENDOFTEXT_ID
    )
    model.save_pretrained(partial)
    del model
    gc.collect()  # the trainer loads its own copy: give this one's memory back first
    if device.type == "cuda":
        torch.cuda.empty_cache()
    partial.rename(out)


def build_data(out: Path, side: int) -> None:
    """One synthetic city with `side` x `side` maps, through a temporary directory as `build_model`."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    generate_dataset(partial, cities=1, seed=0, image_size=(side, side))
    partial.rename(out)


def overrides(args: argparse.Namespace, work: Path, model_dir: Path) -> list[str]:
    """The recipe with the check's workload."""
    side = args.image_size
    return [
        f"model.path={model_dir}",
        f"model.dtype={args.dtype}",
        f"data.train_files={work / f'data-{side}px'}",
        f"data.image_cache_dir={work / f'image_cache-{side}px'}",
        "data.prompts_per_step=1",
        f"data.max_pixels={side * side}",
        f"data.max_response_length={args.tokens}",
        "rollout.engine=hf",
        f"rollout.n={args.n}",
        f"algorithm.kl_coef={args.kl_coef}",
        "trainer.micro_batch_size=1",
        f"trainer.output_dir={work / 'run'}",
        "trainer.loggers=[jsonl]",
        "sft.steps=0",
    ]


def make_trainer(args: argparse.Namespace, work: Path, model_dir: Path, world: World) -> GRPOTrainer:
    """The trainer of the recipe run, with fixed-length responses and the single-tensor AdamW step."""
    config = load_config(REPO / "configs" / "reward_map.yaml", overrides(args, work, model_dir))
    trainer = GRPOTrainer(config, world)
    parts = trainer.parts
    tokenizer = parts.processor.tokenizer
    placeholders = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
    parts.model.generation_config.min_new_tokens = args.tokens
    parts.model.generation_config.suppress_tokens = tokenizer.convert_tokens_to_ids(placeholders)
    for group in parts.backend.optimizer.param_groups:
        group["foreach"] = False
    return trainer


def run_steps(trainer: GRPOTrainer, args: argparse.Namespace) -> tuple[list[dict], dict]:
    """`args.steps` trainer steps; per step the phase seconds, peak memory and token counts; and the prompt's shape."""
    parts, cuda = trainer.parts, trainer.world.device.type == "cuda"
    results, shape = [], {}
    for _ in range(args.steps):
        stage, indices = parts.stream.next_batch()
        rows = [parts.rows[i] for i in indices]
        inputs = parts.prompt_inputs(*parts.prompts_and_images(rows))
        prompt_tokens = int(inputs["attention_mask"].sum())
        grid = inputs["image_grid_thw"][0].tolist()
        shape = {"prompt_tokens": prompt_tokens, "grid": grid, "image_tokens": grid[0] * grid[1] * grid[2] // 4}
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        metrics = trainer.step(stage, indices)
        wall = time.perf_counter() - start
        trainer.step_count += 1
        response_tokens = metrics["response/length_mean"] * metrics["batch/sequences"]
        results.append(
            {
                **{phase: metrics.get(f"timing/{phase}_s", 0.0) for phase in PHASES},
                "wall": wall,
                "peak_gib": torch.cuda.max_memory_allocated() / GIB if cuda else float("nan"),
                "response_tokens": response_tokens,
                # what the update computes: each prompt once per forward sequence (n / group_size times per group)
                "update_tokens": response_tokens + args.n // trainer.group_size * prompt_tokens,
                "unshared_tokens": response_tokens + args.n * prompt_tokens,
                "length_mean": metrics["response/length_mean"],
                "loss": metrics["loss/total"],
                "grad_norm": metrics["optim/grad_norm"],
            }
        )
    return results, shape


def report(results: list[dict], shape: dict, parameters: int, args: argparse.Namespace, trainer: GRPOTrainer) -> str:
    """The printed header and markdown table, one row per step, then the median of the steps after the first."""
    peak_flops, last = args.peak_tflops * 1e12, results[-1]
    attention = trainer.parts.attention
    lines = [
        f"workload: 1 map, image grid {shape['grid']} -> {shape['image_tokens']} image tokens, prompt "
        f"{shape['prompt_tokens']} tokens, {args.n} rollouts x {args.tokens} tokens, micro-batch 1, "
        f"{args.dtype} compute, fp32 master weights, gradient checkpointing, kl_coef {args.kl_coef} "
        f"({args.dtype} reference), attention text {attention['text']} / vision {attention['vision']}, shared "
        f"prefix {trainer.group_size} completions per sequence",
        f"model FLOPs per update: 6 x {parameters:,} parameters x {int(last['update_tokens']):,} tokens = "
        f"{6 * parameters * last['update_tokens']:.3g}; the shared prefix saved "
        f"{6 * parameters * (last['unshared_tokens'] - last['update_tokens']):.3g} "
        f"({int(last['unshared_tokens']):,} tokens without it)",
        f"MFU = model FLOPs / t_update / {args.peak_tflops:g} TFLOPS",
        "",
        "| step | rollout s | reward s | ref_logprobs s | update s | step s | peak GiB | rollout tok/s | update tok/s"
        " | MFU | response length | loss | grad norm |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = [(str(i + 1), r) for i, r in enumerate(results)]
    if len(results) > 1:
        timed = results[1:]
        rows.append((f"median 2..{len(results)}", {k: statistics.median(r[k] for r in timed) for k in timed[0]}))
    for name, r in rows:
        mfu = 6 * parameters * r["update_tokens"] / r["update"] / peak_flops
        cells = [r[p] for p in PHASES] + [r["wall"], r["peak_gib"]]
        lines.append(
            f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {r['response_tokens'] / r['rollout']:.0f}"
            f" | {r['update_tokens'] / r['update']:.0f} | {mfu:.1%} | {r['length_mean']:.0f} | {r['loss']:.4g}"
            f" | {r['grad_norm']:.4g} |"
        )
    if trainer.world.device.type == "cpu":
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        lines.append(
            f"(CPU: no CUDA peak memory, process max RSS {rss:.1f} GiB; MFU against a GPU peak is meaningless)"
        )
    return "\n".join(lines)


def run_check(args: argparse.Namespace, work: Path, config: Qwen2_5_VLConfig) -> str:
    """Builds the model and the one-map dataset (unless a reused --workdir has them), runs the steps, reports."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = "tiny" if args.tiny else "7b"
    model_dir = work / f"model-{size}-{config.text_config.num_hidden_layers}layers"
    if not (model_dir / "config.json").exists():
        print(f"building the random-init model on {device} ...", file=sys.stderr, flush=True)
        build_model(model_dir, config, device)
    if not (work / f"data-{args.image_size}px").exists():
        build_data(work / f"data-{args.image_size}px", args.image_size)
    with join_world() as world:
        trainer = make_trainer(args, work, model_dir, world)
        parameters = sum(p.numel() for p in trainer.parts.model.parameters())
        try:
            results, shape = run_steps(trainer, args)
        except torch.OutOfMemoryError:
            print(torch.cuda.memory_summary(abbreviated=True), file=sys.stderr)
            sys.exit("out of GPU memory although the plan fitted: rerun with --layers set lower than this run's")
        return report(results, shape, parameters, args, trainer)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The check's options."""
    parser.add_argument("--tiny", action="store_true", help="toy width and depth (runs on CPU)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: as many as fit; tiny 2)")
    parser.add_argument("--steps", type=int, default=2, help="trainer steps; the first one warms up")
    parser.add_argument("--n", type=int, default=4, help="rollouts of the map (rollout.n, the recipe's 4)")
    parser.add_argument("--tokens", type=int, default=2048, help="response tokens, forced (the recipe's longest)")
    parser.add_argument(
        "--image-size", type=int, default=3584, help="side of the square map in pixels (3584: 16k tokens)"
    )
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"), help="compute dtype (fp32: fast on CPU)")
    parser.add_argument("--kl-coef", type=float, default=0.01, help="algorithm.kl_coef (0: no reference)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak, for the MFU")
    parser.add_argument("--workdir", type=Path, default=None, help="where the model and map go (default: a temp dir)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    size = "tiny" if args.tiny else "7b"
    available = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None
    if size == "7b" and available is None:
        print(plan_text(memory_plan(model_config(size, args.layers), args), None))
        print("no GPU here: the 7B-shaped check needs one; the plan above is what it would allocate (try --tiny)")
        return 2
    layers = args.layers
    if layers is None and size == "7b":
        layers = layers_that_fit(size, args, available)
    config = model_config(size, layers)
    plan = memory_plan(config, args)
    print(plan_text(plan, available), flush=True)
    if available is not None and sum(plan.values()) > available:
        print(
            f"this shape needs {sum(plan.values()) / GIB:.1f} GiB and the GPU has {available / GIB:.1f} GiB free: "
            f"use --layers {layers_that_fit(size, args, available)} or fewer, fewer --tokens or a smaller --image-size"
        )
        return 2
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        print(run_check(args, args.workdir, config))
        return 0
    with tempfile.TemporaryDirectory() as work:
        print(run_check(args, Path(work), config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
