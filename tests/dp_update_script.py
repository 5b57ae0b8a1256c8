"""Test helper: the GRPO update of one step on fixed groups of completions, in every process of a `torchrun` world.

`torchrun --nproc_per_node N tests/dp_update_script.py MODEL_DIR DATA_DIR OUT_DIR [--sample] [override ...]`: the
trainer's `train_on` gets the first batch's prompts (data.prompts_per_step, 2 by default), each with 2 fixed
completions of different lengths and fixed rewards (with --sample: a whole `step`, which samples them); each rank
trains its share, then the trainer saves a checkpoint. Rank 0 writes `OUT_DIR/stats.json` (the step's metrics, the
prompt indices each rank trained, the completions' token ids) and `OUT_DIR/weights.safetensors` (the updated full
weights).
"""

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from rewardmap.config import load_config
from rewardmap.distributed import all_gather_lists, full_tensor, join_world
from rewardmap.grpo.batching import Group, place_update
from rewardmap.grpo.trainer import GRPOTrainer
from rewardmap.rollout import Completion

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
# Two completions per prompt, of different lengths (the token-mean normaliser must be the world's), cycled over
# the prompts; rewards differ within each group.
FIXED = [[9707, 1879, 151645], [2152, 151645], [785, 4226, 374, 220, 151645], [9454, 13, 151645]]
REWARDS = [1.0, 0.0, 0.25, 1.0]


def main() -> None:
    model_dir, data_dir, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    sample = "--sample" in sys.argv[4:]
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
        *[arg for arg in sys.argv[4:] if arg != "--sample"],
    ]
    with join_world() as world:
        trainer = GRPOTrainer(load_config(DEMO, overrides), world)
        parts = trainer.parts
        stage, indices = parts.stream.next_batch()
        groups = []
        for k, row in enumerate(indices):
            picks = [(2 * k + j) % len(FIXED) for j in (0, 1)]
            completions = [Completion(FIXED[i], "", [], True) for i in picks]
            groups.append(Group(row, completions, [], [REWARDS[i] for i in picks]))
        if sample:  # the groups the step sampled, as its update receives them (in batch order on every rank)
            seen, train_on = [], trainer.train_on

            def recording(kept: list[Group], timings: dict) -> dict:
                seen.append(kept)
                return train_on(kept, timings)

            trainer.train_on = recording
            stats = trainer.step(stage, indices)
            groups = seen[0]
        else:
            stats = trainer.train_on(groups, {})
        tokens = parts.prompt_tokens([parts.rows[group.row] for group in groups])
        plan, _ = place_update(groups, tokens, world, trainer.config.trainer, trainer.group_size)
        trained = all_gather_lists([[groups[number].row for number, trains in plan.groups if trains]])
        weights = {name: full_tensor(p.detach()).clone().contiguous() for name, p in parts.model.state_dict().items()}
        trainer.step_count = 1
        checkpoint = trainer.save()
        if world.is_main:
            save_file(weights, out / "weights.safetensors")
            sampled = [[c.token_ids for c in group.completions] for group in groups]
            record = {**stats, "trained_prompts": trained, "sampled": sampled, "checkpoint": str(checkpoint)}
            record["world_size"] = world.size
            (out / "stats.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
