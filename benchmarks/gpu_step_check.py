"""GPU check: the trainer's GRPO step on a Qwen2.5-VL-7B-shaped random-init model, one GPU, FSDP2 world of 1, timed.

Run on one GPU: `python benchmarks/gpu_step_check.py` (under 10 minutes on an H200; it writes ~17 GB of bf16 weights
to --workdir, default a temp dir; pass --workdir to keep and reuse them). At toy size, on CPU or GPU:
`python benchmarks/gpu_step_check.py --tiny` (on 2 CPU cores add `--tokens 32 --image-size 448` for a ~7-minute run:
the vision patch embedding's bf16 Conv3d backward is slow on CPU). Needs torch, transformers, accelerate and peft
beside the project.

The model is built from a `Qwen2_5_VLConfig` with the 7B's dimensions (text: hidden 3584, 28 layers, 28 heads, 4 KV
heads, intermediate 18944, vocab 152064, untied head; vision: depth 32, hidden 1280, 16 heads, intermediate 3420),
initialised on the GPU (the meta device without one, to print the memory plan), saved with `save_pretrained` beside
the tiny model's tokenizer and processor: no download. The run is the recipe (`configs/reward_map.yaml`) with the HF
engine, model.dtype=bf16 (fp32 master weights, bf16 compute), gradient checkpointing, micro-batch 1, sdpa attention
(flash-attn is not assumed), one synthetic map drawn at --image-size^2 pixels with data.max_pixels the same (the
processor resizes to multiples of 28: 1024 -> 1008), --n rollouts of exactly --tokens tokens (EOS and the vision
placeholder tokens suppressed until then with min_new_tokens / suppress_tokens). Each step prints seconds per phase,
peak memory (torch.cuda.max_memory_allocated), rollout and update tokens/s, and the update's MFU:

    MFU = 6 x P x T / t_update / peak,  P = all parameters, T = prompt (image tokens included) + response tokens of
    every sequence, peak = --peak-tflops (989 TFLOPS: H200 dense bf16).

It counts model FLOPs, not hardware FLOPs: gradient checkpointing's recomputation, attention and the vision tower
running on 4x as many patches as it emits tokens are left out, and the lm_head, which runs on response positions
only, is counted on every token; take it as the usual 6PT estimate, not a roofline.

Memory at 7B: fp32 weights + fp32 grads + AdamW's two fp32 moments are 16 bytes x 8.29B parameters = 124 GiB, so one
139-GiB H200 fits them with nothing to spare: the check therefore runs without the KL term (algorithm.kl_coef=0, so
no fp32 reference copy, +31 GiB, and no ref_logprobs phase) and with AdamW's single-tensor step (foreach=False:
PyTorch's default foreach step on CUDA allocates a temporary as large as all the weights, +31 GiB). Both are
changes of this check only, printed with the results. To time the reference pass as well, trade depth for it:
`--layers 18 --kl-coef 0.01` (5.96B parameters, 111 GiB static).
"""

import argparse
import gc
import os
import resource
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


def build_model(out: Path, config: Qwen2_5_VLConfig, device: torch.device) -> None:
    """Random-init bf16 weights made on `device`, saved with the tiny model's tokenizer and processor files."""
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=ENDOFTEXT_ID, eos_token_id=[IM_END_ID, ENDOFTEXT_ID], pad_token_id=ENDOFTEXT_ID
    )
    model.save_pretrained(out)
    build_processor().save_pretrained(out)
    del model
    gc.collect()  # the trainer loads its own copy: give this one's ~17 GB back first
    torch.cuda.empty_cache()


def memory_plan(parameters: int, kl_coef: float) -> str:
    """Static bytes of the run: fp32 weights, grads, AdamW moments (16 B/param), plus an fp32 reference under KL."""
    reference = 4 * parameters if kl_coef > 0 else 0
    return (
        f"{parameters / 1e9:.2f}B parameters: weights+grads+AdamW {16 * parameters / GIB:.1f} GiB"
        f" + reference {reference / GIB:.1f} GiB (fp32), before activations"
    )


def overrides(args: argparse.Namespace, work: Path, model_dir: Path) -> list[str]:
    """The recipe with the check's workload."""
    side = args.image_size
    return [
        f"model.path={model_dir}",
        "model.dtype=bf16",
        "model.gradient_checkpointing=true",
        "model.attn_implementation=sdpa",
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
                "update_tokens": response_tokens + args.n * prompt_tokens,
                "length_mean": metrics["response/length_mean"],
                "loss": metrics["loss/total"],
                "grad_norm": metrics["optim/grad_norm"],
            }
        )
    return results, shape


def report(results: list[dict], shape: dict, parameters: int, args: argparse.Namespace, device: str) -> str:
    """The printed header and markdown table, one row per step, then the median of the steps after the first."""
    peak_flops = args.peak_tflops * 1e12
    lines = [
        f"device: {device}; torch {torch.__version__}; {memory_plan(parameters, args.kl_coef)}",
        f"workload: 1 map, image grid {shape['grid']} -> {shape['image_tokens']} image tokens, prompt "
        f"{shape['prompt_tokens']} tokens, {args.n} rollouts x {args.tokens} tokens, micro-batch 1, bf16 compute, "
        f"fp32 master weights, gradient checkpointing, kl_coef {args.kl_coef}, AdamW foreach=False",
        f"MFU = 6 x P x T / t_update / {args.peak_tflops:g} TFLOPS, P = {parameters:,} parameters, "
        f"T = {int(results[-1]['update_tokens']):,} tokens (prompt + response, every sequence)",
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
    if device == "cpu":
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        lines.append(
            f"(CPU: no CUDA peak memory, process max RSS {rss:.1f} GiB; MFU against a GPU peak is meaningless)"
        )
    return "\n".join(lines)


def run_check(args: argparse.Namespace, work: Path) -> str:
    """Builds the model and the one-map dataset (unless a reused --workdir has them), runs the steps, reports."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = "tiny" if args.tiny else "7b"
    config = model_config(size, args.layers)
    model_dir = work / f"model-{size}-{config.text_config.num_hidden_layers}layers"  # a reused --workdir keeps it
    if not (model_dir / "config.json").exists():
        print(f"building the random-init model on {device} ...", file=sys.stderr, flush=True)
        build_model(model_dir, config, device)
    side = args.image_size
    if not (work / f"data-{side}px").exists():
        generate_dataset(work / f"data-{side}px", cities=1, seed=0, image_size=(side, side))
    with join_world() as world:
        trainer = make_trainer(args, work, model_dir, world)
        parameters = sum(p.numel() for p in trainer.parts.model.parameters())
        try:
            results, shape = run_steps(trainer, args)
        except torch.OutOfMemoryError:
            print(torch.cuda.memory_summary(abbreviated=True), file=sys.stderr)
            sys.exit(f"out of GPU memory; {memory_plan(parameters, args.kl_coef)}: try fewer --layers")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    return report(results, shape, parameters, args, name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The check's options."""
    parser.add_argument("--tiny", action="store_true", help="toy width and depth (runs on CPU in a few minutes)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: the 7B's 28; tiny 2)")
    parser.add_argument("--steps", type=int, default=2, help="trainer steps; the first one warms up")
    parser.add_argument("--n", type=int, default=4, help="rollouts of the map (rollout.n, the recipe's 4)")
    parser.add_argument("--tokens", type=int, default=512, help="response tokens, forced (EOS suppressed until then)")
    parser.add_argument("--image-size", type=int, default=1024, help="side of the square synthetic map, pixels")
    parser.add_argument("--kl-coef", type=float, default=0.0, help="algorithm.kl_coef (> 0 adds an fp32 reference)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak, for the MFU")
    parser.add_argument("--workdir", type=Path, default=None, help="where the model and map go (default: a temp dir)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        with torch.device("meta"):
            parameters = Qwen2_5_VLForConditionalGeneration(model_config("7b", args.layers)).num_parameters()
        print(f"no GPU here: the 7B-shaped check needs one ({memory_plan(parameters, args.kl_coef)}); try --tiny")
        return 2
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        print(run_check(args, args.workdir))
        return 0
    with tempfile.TemporaryDirectory() as work:
        print(run_check(args, Path(work)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
