"""Per-GPU memory of a colocated GRPO run, computed from Qwen2.5-VL-7B's shapes (no GPU, no weights: a meta model).

Run: `python benchmarks/memory_budget.py [--gpus 8] [--tp 4] [--utilization 0.6] [--gpu-gib 80]`. Prints the GiB each
part takes on one GPU: the FSDP2 shards of the fp32 master weights, their gradients and AdamW's two moments, the bf16
reference shards (the reference never trains: it is kept in the compute dtype), the bf16 weights FSDP2 gathers for
the largest unit it runs (the root: embeddings, lm_head, final norm), vLLM's bf16 weights over `--tp` GPUs, and the
KV cache that `--utilization` leaves, with the tokens it holds. Then the start-up: the peak on each GPU and in each
node's host memory while the policy and the reference are loaded and sharded, before (every rank loaded both whole,
in fp32, and sharded them) and now (rank 0 reads the checkpoint once, in its bf16, into host memory; every rank
builds on the meta device and receives its shards, one whole tensor at a time).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_step_check import model_config, parameter_counts  # noqa: E402

GIB = 2**30


def start_up(counts: dict[str, int], gpus: int) -> dict[str, tuple[float, float]]:
    """Bytes at the start-up peak, before and now: {what: (per GPU, host memory per node)}."""
    total, largest = counts["total"], counts["root"] // 2  # the largest tensor: the embedding (or the lm_head)
    shards = total * 4 / gpus + total * 2 / gpus  # the fp32 policy shard and the bf16 reference shard
    return {
        # each rank: the fp32 policy whole on its GPU, then the fp32 reference whole beside it, then both sharded;
        # each rank's from_pretrained reads the checkpoint into host memory first
        "before": (2 * total * 4, gpus * total * 4),
        # rank 0's host copy of the checkpoint (bf16), each GPU its shards plus the tensor being broadcast
        "now": (shards + largest * 2, total * 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8, help="GPUs (ranks) the trainer shards over")
    parser.add_argument("--tp", type=int, default=4, help="rollout.tensor_parallel_size")
    parser.add_argument("--utilization", type=float, default=0.6, help="rollout.gpu_memory_utilization")
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU in GiB")
    args = parser.parse_args()
    config = model_config("7b", None)
    counts = parameter_counts(config)
    total, text = counts["total"], config.text_config
    kv_heads = max(text.num_key_value_heads // args.tp, 1)
    kv_per_token = 2 * text.num_hidden_layers * kv_heads * text.head_dim * 2  # K and V, bf16
    vllm_share = args.utilization * args.gpu_gib
    rows = {
        "actor fp32 master weights (FSDP2 shard)": total * 4 / args.gpus,
        "actor fp32 gradients (shard)": total * 4 / args.gpus,
        "AdamW moments, 2 x fp32 (shard)": total * 8 / args.gpus,
        "reference bf16 weights (shard)": total * 2 / args.gpus,
        "bf16 weights gathered for the root unit (transient)": counts["root"] * 2,
        "bf16 weights gathered for one decoder layer (transient)": counts["layer"] * 2,
        f"vLLM bf16 weights (TP {args.tp})": total * 2 / args.tp,
    }
    print(
        f"Qwen2.5-VL-7B: {total / 1e9:.2f} B parameters ({counts['vision'] / 1e9:.2f} B vision, "
        f"{counts['layer'] / 1e6:.0f} M per layer)"
    )
    print(f"| part (one GPU of {args.gpus}) | GiB |\n| --- | ---: |")
    for name, size in rows.items():
        print(f"| {name} | {size / GIB:.2f} |")
    kv = vllm_share - rows[f"vLLM bf16 weights (TP {args.tp})"] / GIB
    share = f"{args.utilization} x {args.gpu_gib:g} GiB"
    print(f"| vLLM's share, {share} (its weights, KV cache, activations) | {vllm_share:.1f} |")
    print(f"| KV cache, at most (the share less vLLM's weights and its profiled activations) | {kv:.1f} |")
    tokens = kv * GIB / kv_per_token
    print(f"KV cache: {kv_per_token / 1024:.0f} KiB a token per GPU, at most {tokens / 1e6:.2f} M tokens an engine")
    resident = sum(rows[name] for name in list(rows)[:4]) / GIB
    print(f"trainer resident: {resident:.1f} GiB; free for vLLM at start-up: {args.gpu_gib - resident:.1f} GiB")
    print(f"\n| start-up peak, {args.gpus} GPUs a node | per GPU, GiB | host memory per node, GiB |")
    print("| --- | ---: | ---: |")
    for name, (gpu, host) in start_up(counts, args.gpus).items():
        print(f"| {name} | {gpu / GIB:.1f} | {host / GIB:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
