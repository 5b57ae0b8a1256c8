"""Test helper: one GRPO update on a fixed batch of completions, in every process of a `torchrun` world.

`torchrun --nproc_per_node N tests/dp_update_script.py MODEL_DIR DATA_DIR OUT_DIR [override ...]`: each rank takes its
share of 2 prompts x 2 fixed completions (different lengths, fixed advantages and reference log-probs), runs the
trainer's `_update`, then saves a checkpoint with the trainer. Rank 0 writes `OUT_DIR/stats.json` (loss, grad norm,
the prompt indices each rank trained) and `OUT_DIR/weights.safetensors` (the updated full weights).
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from rewardmap.config import load_config
from rewardmap.distributed import all_gather_lists, full_tensor, join_world
from rewardmap.grpo.batching import completion_tensors
from rewardmap.grpo.trainer import GRPOTrainer
from rewardmap.models.logprobs import completion_logprobs
from rewardmap.rollout import Completion

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
# Two completions per prompt, of different lengths (the token-mean normaliser must be the world's).
FIXED = [[9707, 1879, 151645], [2152, 151645], [785, 4226, 374, 220, 151645], [9454, 13, 151645]]
ADVANTAGES = [1.0, -1.0, 0.5, -0.5]


def main() -> None:
    model_dir, data_dir, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    overrides = [
        f"model.path={model_dir}",
        f"data.train_files={data_dir}",
        f"trainer.output_dir={out / 'run'}",
        f"data.image_cache_dir={out / 'image_cache'}",
        "data.prompts_per_step=2",
        "data.max_pixels=50176",
        "rollout.n=2",
        "sft.steps=0",
        "trainer.lr=1e-3",
        "trainer.tensorboard=false",
        "curriculum.preset=none",
        *sys.argv[4:],
    ]
    with join_world() as world:
        trainer = GRPOTrainer(load_config(DEMO, overrides), world)
        parts = trainer.parts
        _, indices = parts.stream.next_batch()
        mine = world.shard(indices, "prompts")
        rows = [parts.rows[i] for i in indices[mine]]
        inputs = parts.prompt_inputs(*parts.prompts_and_images(rows))
        share = slice(2 * mine.start, 2 * mine.stop)
        completions = [Completion(ids, "", [], True) for ids in FIXED[share]]
        ids, mask = (t.to(world.device) for t in completion_tensors(completions, parts.pad_id))
        prompt_of = torch.arange(len(completions)) // 2
        with torch.no_grad():
            current, _ = completion_logprobs(
                parts.model, inputs, ids, mask, micro_batch_size=1, prompt_index=prompt_of
            )
        ref_logprobs = (current - 0.05 * torch.arange(ids.shape[1])) * mask
        stats = trainer._update(inputs, prompt_of, ids, mask, torch.tensor(ADVANTAGES[share]), ref_logprobs)
        trained = all_gather_lists([[int(i) for i in indices[mine]]])
        weights = {name: full_tensor(p.detach()).clone().contiguous() for name, p in parts.model.state_dict().items()}
        trainer.step_count = 1
        checkpoint = trainer.save()
        if world.is_main:
            save_file(weights, out / "weights.safetensors")
            record = {**stats, "trained_prompts": trained, "checkpoint": str(checkpoint), "world_size": world.size}
            (out / "stats.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
