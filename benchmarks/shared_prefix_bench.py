"""Shared-prefix benchmark on CPU: a group's prompt run once (model.shared_prefix=on) vs once per completion (off).

Run: `python benchmarks/shared_prefix_bench.py [--ns 4 8] [--repeats 1] [--threads 2]`. The model is a random-init
Qwen2.5-VL whose decoder (hidden 512, 12 layers, MLP 4096: 84M parameters) outweighs its 151,936-word output layer
(78M); the prompt is the chat prompt with one synthetic 896 x 896 map (1,024 visual tokens); each of the n completions
has 128 tokens. Off runs micro-batches of one sequence (the recipe's micro_batch_size=1; the map is encoded for each),
on runs the group as one sequence; fp32, sdpa, no gradient checkpointing; after a warm-up, off and on alternate
within each repeat (median reported). Columns: seconds of the reference pass (log-probs, no grad) and of the update
(log-probs and entropy, forward + backward), the activations one micro-batch keeps for backward (every saved tensor
that is not a parameter), and the ideal speed-up from the FLOPs of both paths: prompt tokens (and the small vision
tower) counted once instead of n times, useful (causal) attention pairs only, the output layer the same in both;
backward = 2x forward (the fused head: 3x, it recomputes).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewardmap.models.logprobs import build_prompt_inputs, completion_logprobs  # noqa: E402
from rewardmap.models.shared_prefix import micro_batches  # noqa: E402
from rewardmap.models.tiny import ENDOFTEXT_ID, IM_END_ID, build_processor, tiny_config  # noqa: E402

COMPLETION_TOKENS = 128
MAP_SIDE = 896  # 64 x 64 patches of 14 pixels, merged 2 x 2: 1,024 visual tokens


def bench_model() -> Qwen2_5_VLForConditionalGeneration:
    """The tiny model's config widened to a decoder of hidden 512, 12 layers, MLP 4096 (random weights, fp32, sdpa)."""
    config = tiny_config(tie_word_embeddings=False)
    text = config.text_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = 512, 4096, 12
    text.num_attention_heads, text.num_key_value_heads = 8, 2
    text.layer_types = ["full_attention"] * text.num_hidden_layers
    config.vision_config.out_hidden_size = text.hidden_size
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=IM_END_ID, pad_token_id=ENDOFTEXT_ID)
    return model.train()


def ideal_flops(model, prompt: int, patches: int, n: int, shared: bool) -> tuple[float, float]:
    """FLOPs of (reference pass, update) of one group: prompt tokens (and map) once when `shared`, else n times."""
    text = model.config.text_config
    decoder = sum(p.numel() for p in model.model.language_model.layers.parameters())
    vision = 2 * sum(p.numel() for p in model.model.visual.parameters()) * patches
    c = COMPLETION_TOKENS
    if shared:
        tokens, pairs = prompt + n * c, prompt * (prompt + 1) / 2 + n * (c * prompt + c * (c + 1) / 2)
    else:
        tokens, pairs = n * (prompt + c), n * (prompt + c) * (prompt + c + 1) / 2
    body = 2 * decoder * tokens + 4 * text.hidden_size * text.num_hidden_layers * pairs + vision * (1 if shared else n)
    head = 2 * text.vocab_size * text.hidden_size * n * c
    return body + head, 3 * body + 4 * head


def saved_activation_bytes(model, run) -> int:
    """Bytes of the distinct non-parameter tensors that autograd keeps for backward while `run()` builds the graph."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(kept.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[4, 8], help="completions per prompt")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats (the median is reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, processor = bench_model(), build_processor()
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (MAP_SIDE, MAP_SIDE, 3), dtype=np.uint8))
    question = "How many stations are there between Cornavin and Plainpalais on line 14? Answer with a number."
    prompt = build_prompt_inputs(processor, [question], [image])
    prompt_tokens, patches = prompt["input_ids"].shape[1], int(prompt["image_grid_thw"].prod())
    print(f"prompt: {prompt_tokens} tokens ({patches // 4} visual); completions: {COMPLETION_TOKENS} tokens")
    header = (
        "| n | path | reference s | update s | activations MiB / micro-batch | reference speed-up | update speed-up |"
    )
    print(header, "|---" * 7 + "|", sep="\n", flush=True)
    for n in args.ns:
        ids = torch.randint(0, 150_000, (n, COMPLETION_TOKENS), generator=torch.Generator().manual_seed(n))
        mask, index = torch.ones_like(ids), torch.zeros(n, dtype=torch.long)

        batch = {"prompt_inputs": prompt, "completion_ids": ids, "completion_mask": mask, "prompt_index": index}

        def logprobs(group_size: int, part: slice = slice(None), batch: dict = batch, **options) -> tuple:
            """Off: one sequence per micro-batch (the recipe's micro_batch_size=1); on: the whole group."""
            rows = {key: value[part] if key != "prompt_inputs" else value for key, value in batch.items()}
            return completion_logprobs(model, **rows, micro_batch_size=group_size, group_size=group_size, **options)

        def reference(group_size: int) -> None:
            with torch.no_grad():
                logprobs(group_size)

        def update(group_size: int, n: int = n) -> None:
            model.zero_grad(set_to_none=True)
            for part in micro_batches(n, group_size, group_size):  # a backward per micro-batch, as the trainer
                logps, entropy = logprobs(group_size, part, with_entropy=True)
                (-(logps.sum() + 1e-3 * entropy.sum())).backward()

        # Activations of one micro-batch (a forward with grad, no backward); it doubles as the warm-up of both paths.
        memory = {
            g: saved_activation_bytes(model, lambda g=g: logprobs(g, slice(0, g), with_entropy=True)) for g in (1, n)
        }
        seconds = {(g, phase): [] for g in (1, n) for phase in ("reference", "update")}
        for _ in range(args.repeats):
            for g in (1, n):
                for phase, run in (("reference", reference), ("update", update)):
                    start = time.perf_counter()
                    run(g)
                    seconds[g, phase].append(time.perf_counter() - start)
        median = {key: statistics.median(values) for key, values in seconds.items()}
        for g, path in ((1, "off"), (n, "on")):
            line = f"| {n} | {path} | {median[g, 'reference']:.2f} | {median[g, 'update']:.2f} |"
            line += f" {memory[g] / 2**20:.0f} |"
            if g == 1:
                print(line + " | |", flush=True)
                continue
            off, on = (ideal_flops(model, prompt_tokens, patches, n, shared) for shared in (False, True))
            cells = []
            for i, phase in enumerate(("reference", "update")):
                ideal, real = off[i] / on[i], median[1, phase] / median[n, phase]
                cells.append(f"{real:.2f}x of {ideal:.2f}x ideal ({100 * real / ideal:.0f}%)")
            print(f"{line} {cells[0]} | {cells[1]} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
