"""Test helper: the GRPO update of one step on fixed groups of completions, in every process of a `torchrun` world.

`torchrun --nproc_per_node N tests/dp_update_script.py MODEL_DIR DATA_DIR OUT_DIR [override ...]`: the trainer's
`train_on` gets the first batch's prompts (data.prompts_per_step, 2 by default), each with 2 fixed completions of
different lengths and fixed rewards; each rank trains its share, then the trainer saves a checkpoint. Rank 0 writes
`OUT_DIR/stats.json` (loss, grad norm, the prompt indices each rank trained) and `OUT_DIR/weights.safetensors` (the
updated full weights).
"""

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from rewardmap.config import load_config
from rewardmap.distributed import all_gather_lists, full_tensor, join_world
from rewardmap.grpo.batching import Group, update_shards
from rewardmap.grpo.trainer import GRPOTrainer
from rewardmap.rollout import Completion

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
# Two completions per prompt, of different lengths (the token-mean normaliser must be the world's), cycled over
# the prompts; rewards differ within each group.
FIXED = [[9707, 1879, 151645], [2152, 151645], [785, 4226, 374, 220, 151645], [9454, 13, 151645]]
REWARDS = [1.0, 0.0, 0.25, 1.0]


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
        "trainer.loggers=[jsonl]",
        "curriculum.preset=none",
        *sys.argv[4:],
    ]
    with join_world() as world:
        trainer = GRPOTrainer(load_config(DEMO, overrides), world)
        parts = trainer.parts
        _, indices = parts.stream.next_batch()
        groups = []
        for k, row in enumerate(indices):
            picks = [(2 * k + j) % len(FIXED) for j in (0, 1)]
            completions = [Completion(FIXED[i], "", [], True) for i in picks]
            groups.append(Group(row, completions, [], [REWARDS[i] for i in picks]))
        stats = trainer.train_on(groups, {})
        shards = update_shards(len(groups), trainer.config.trainer.mini_batches_per_step, world)
        trained = all_gather_lists([[indices[number] for shard in shards for number, _ in shard]])
        weights = {name: full_tensor(p.detach()).clone().contiguous() for name, p in parts.model.state_dict().items()}
        trainer.step_count = 1
        checkpoint = trainer.save()
        if world.is_main:
            save_file(weights, out / "weights.safetensors")
            record = {**stats, "trained_prompts": trained, "checkpoint": str(checkpoint), "world_size": world.size}
            (out / "stats.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
