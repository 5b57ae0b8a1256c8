"""Test helper: GRPO with vLLM rollouts in every process of a `torchrun` world, and what the engine samples.

`torchrun --nproc_per_node N tests/vllm_world_script.py MODEL_DIR DATA_DIR OUT_DIR TP` trains 2 steps (2 prompts x 2
rollouts, validation at step 2, a checkpoint) with `rollout.engine=vllm rollout.tensor_parallel_size=TP`, as
`rewardmap train` does; before training and after a final sync it samples 4 fixed prompts (each rank its share, seeds
by global index). Rank 0 writes `OUT_DIR/result.json`: greedy and sampled token ids before training, greedy ids after
it and those of transformers `generate` on the trained full weights, the largest difference between the engine's
sampled-token log-probs after training and the trainer's, the seconds of the final sync, and the checkpoint.
"""

import json
import sys
import time
from pathlib import Path

import torch

from rewardmap.config import load_config
from rewardmap.distributed import all_gather_lists, full_tensor, join_world
from rewardmap.grpo.batching import completion_tensors
from rewardmap.grpo.trainer import GRPOTrainer
from rewardmap.models.loading import load_policy
from rewardmap.models.logprobs import completion_logprobs
from rewardmap.rollout import Sampling, prompt_seed
from rewardmap.rollout.hf import HFRolloutEngine

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
PROMPTS = 4
GREEDY = Sampling(max_tokens=8, temperature=0.0)


def main() -> None:
    model_dir, data_dir, out, tp = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    overrides = [
        f"model.path={model_dir}",
        f"data.train_files={data_dir}",
        f"data.val_files={data_dir}",
        "data.val_limit=3",
        f"trainer.output_dir={out / 'run'}",
        f"data.image_cache_dir={out / 'image_cache'}",
        "data.prompts_per_step=2",
        "data.max_pixels=50176",
        "data.max_response_length=8",
        "rollout.n=2",
        "rollout.engine=vllm",
        f"rollout.tensor_parallel_size={tp}",
        "rollout.gpu_memory_utilization=0.02",
        "rollout.max_model_len=4096",
        "sft.steps=0",
        "curriculum.preset=none",
        "trainer.lr=1e-3",
        "trainer.max_steps=2",
        "trainer.val_freq=2",
        "trainer.loggers=[jsonl]",
    ]
    with join_world() as world:
        trainer = GRPOTrainer(load_config(DEMO, overrides), world)
        parts = trainer.parts
        rows = [parts.rows[i] for i in range(PROMPTS)]
        mine = world.shard(rows, "prompts")
        prompts, images = parts.prompts_and_images(rows[mine])
        seeds = [prompt_seed(5, 0, i) for i in range(mine.start, mine.stop)]  # by global index, as the trainer's
        before = all_gather_lists(parts.engine.generate(prompts, images, 1, GREEDY))
        sampled_before = all_gather_lists(parts.engine.generate(prompts, images, 2, Sampling(max_tokens=8), seeds))
        final = trainer.fit()

        start = time.perf_counter()
        parts.engine.sync_weights(parts.model)
        sync_s = time.perf_counter() - start
        after = all_gather_lists(parts.engine.generate(prompts, images, 1, GREEDY))
        sampled = all_gather_lists(parts.engine.generate(prompts, images, 2, Sampling(max_tokens=8), seeds))
        # The trained weights, whole, in a plain model (the sync streams them one at a time); every rank runs generate,
        # as transformers steps the ranks of a world together.
        model = load_policy(model_dir, dtype=torch.float32)
        model.load_state_dict(
            {name: full_tensor(tensor.detach()) for name, tensor in parts.model.state_dict().items()}
        )
        all_prompts, all_images = parts.prompts_and_images(rows)
        reference = HFRolloutEngine(model, parts.processor).generate(all_prompts, all_images, 1, GREEDY)
        if world.is_main:
            completions = [c for group in sampled for c in group]
            ids, mask = completion_tensors(completions, parts.pad_id)
            with torch.no_grad():
                logprobs, _ = completion_logprobs(
                    model,
                    parts.prompt_inputs(all_prompts, all_images),
                    ids,
                    mask,
                    micro_batch_size=4,
                    prompt_index=torch.arange(len(completions)) // 2,
                )
            engine_logprobs = torch.zeros_like(logprobs)
            for row, completion in enumerate(completions):
                engine_logprobs[row, : len(completion.logprobs)] = torch.tensor(completion.logprobs)
            record = {
                "greedy_before": [group[0].token_ids for group in before],
                "greedy_after": [group[0].token_ids for group in after],
                "greedy_trainer": [group[0].token_ids for group in reference],
                "sampled_before": [[c.token_ids for c in group] for group in sampled_before],
                "logprob_max_diff": float(((engine_logprobs - logprobs) * mask).abs().max()),
                "sync_s": sync_s,
                "checkpoint": str(final),
                "world_size": world.size,
            }
            (out / "result.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
