"""Validation during training: greedy answers on the held-out rows, each rank answering its share, scored with the
evaluation code (the same as `rewardmap eval`), logged as val/ metrics and val_samples.jsonl."""

from __future__ import annotations

import time

from rewardmap.config import RewardMapConfig
from rewardmap.distributed import World, all_gather_lists
from rewardmap.eval.report import summarize
from rewardmap.eval.runner import evaluate_rows
from rewardmap.grpo.batching import whole_batch
from rewardmap.grpo.metrics import MetricsLogger
from rewardmap.grpo.samples import validation_samples
from rewardmap.grpo.setup import Components, row_image
from rewardmap.rollout import Sampling


def validate(
    config: RewardMapConfig, parts: Components, world: World, metrics: MetricsLogger, step: int
) -> dict[str, float]:
    """The val/ metrics of the policy after `step` (every rank calls it; its answers are gathered)."""
    start = time.perf_counter()
    parts.engine.sync_weights(parts.model)
    indices = whole_batch(list(range(len(parts.val_rows))), world.size)
    mine = indices[world.shard(indices, "validation rows")]
    answered = evaluate_rows(
        parts.engine,
        parts.processor,
        [parts.val_rows[i] for i in mine],
        sampling=Sampling(max_tokens=config.data.max_response_length, temperature=0.0),
        batch_size=config.data.prompts_per_step,
        image_fn=lambda row: row_image(row, parts.val_root, config.data),
        progress=False,
    )
    parts.engine.sleep()
    # Every rank's records, each held-out answer once (the padding repeats a few rows).
    tagged = all_gather_lists([((mine[r["index"]], r.get("question")), r) for r in answered])
    summary = summarize(list(dict(tagged).values()))
    figures = {
        "val/accuracy": summary["overall"]["plain"],
        "val/accuracy_weighted": summary["overall"]["weighted"],
    }
    figures.update({f"val/{name}/accuracy": block["plain"] for name, block in summary["types"].items()})
    metrics.log_samples("val_samples", validation_samples(config, parts, dict(tagged), step))
    return {**figures, "timing/validation_s": time.perf_counter() - start}
