"""The multi-stage GRPO loop: curriculum batch -> rollouts -> reward -> group advantages -> clipped update.

`GRPOTrainer.step` is one whole GRPO step, top to bottom; the math lives in `losses.py`, checkpoints in
`checkpoint.py`, metrics in `metrics.py`, sharding and the optimizer in `backend.py`. The same code runs in one CPU
process and in every process of a `torchrun` world: each rank trains its share of the step's prompts (whole groups),
and the loss is normalised by the token count of the whole world, so it equals the loss of one process on all of them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from rewardmap.config import RewardMapConfig, TrainerConfig, config_to_yaml
from rewardmap.distributed import World, all_gather_lists, all_reduce_sum
from rewardmap.eval.report import summarize
from rewardmap.eval.runner import evaluate_rows
from rewardmap.grpo import checkpoint
from rewardmap.grpo.batching import completion_tensors
from rewardmap.grpo.losses import aggregate, clipped_policy_loss, group_advantages, kl_penalty, masked_mean
from rewardmap.grpo.metrics import MetricsLogger, reward_metrics
from rewardmap.grpo.setup import Components, build_components, row_image
from rewardmap.models.logprobs import completion_logprobs
from rewardmap.reward import score_batch
from rewardmap.rollout import Sampling, prompt_seed

logger = logging.getLogger(__name__)


class GRPOTrainer:
    """Owns the policy, reference, rollout engine, optimizer, curriculum stream and run directory of one run."""

    def __init__(self, config: RewardMapConfig, world: World) -> None:
        self.config = config
        self.world = world
        self.run_dir = Path(config.trainer.output_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if world.is_main:
            (self.run_dir / "config.yaml").write_text(config_to_yaml(config))
        self.parts: Components = build_components(config, world)
        self.step_count = 0
        self.metrics = MetricsLogger(self.run_dir, tensorboard=config.trainer.tensorboard, enabled=self.is_main)

    @property
    def is_main(self) -> bool:
        return self.world.is_main

    def fit(self) -> Path:
        """Train until the curriculum (or trainer.max_steps) is done; returns the final checkpoint directory."""
        cfg = self.config.trainer
        resumed = checkpoint.resolve_resume(cfg.resume, self.run_dir)
        if resumed is not None:
            state = checkpoint.load(resumed, self.parts.backend, self.world)
            self.step_count = state["step"]
            self.parts.stream.load_state_dict(state["curriculum"])
            logger.info("resumed from %s at step %d", resumed, self.step_count)
        total = len(self.parts.stream) if cfg.max_steps is None else min(cfg.max_steps, len(self.parts.stream))
        last = resumed
        with tqdm(total=total, initial=self.step_count, desc="GRPO", disable=not self.is_main) as bar:
            while self.step_count < total:
                stage, indices = self.parts.stream.next_batch()
                metrics = self.step(stage, indices)
                self.step_count += 1
                if self.parts.val_rows and (self.step_count % cfg.val_freq == 0 or self.step_count == total):
                    metrics.update(self.validate())
                self.metrics.log(self.step_count, metrics)
                bar.update(1)
                bar.set_postfix(stage=stage + 1, reward=f"{metrics['reward/mean']:.2f}")
                if self.step_count % cfg.save_freq == 0 or self.step_count == total:
                    last = self.save()
        self.metrics.close()
        return last if last is not None else self.save()

    def save(self) -> Path:
        """An atomic checkpoint of everything a resume needs; keeps the newest trainer.save_limit of them."""
        state = {"step": self.step_count, "curriculum": self.parts.stream.state_dict()}
        return checkpoint.save(
            self.run_dir,
            self.step_count,
            self.parts.backend,
            self.parts.processor,
            state,
            self.world,
            keep=self.config.trainer.save_limit,
        )

    def validate(self) -> dict[str, float]:
        """Greedy answers on the held-out rows, each rank answering its share, scored with the evaluation code."""
        parts, world, start = self.parts, self.world, time.perf_counter()
        parts.engine.sync_weights(parts.model)
        indices = whole_batch(list(range(len(parts.val_rows))), world.size)
        mine = indices[world.shard(indices, "validation rows")]
        answered = evaluate_rows(
            parts.engine,
            parts.processor,
            [parts.val_rows[i] for i in mine],
            sampling=Sampling(max_tokens=self.config.data.max_response_length, temperature=0.0),
            batch_size=self.config.data.prompts_per_step,
            image_fn=lambda row: row_image(row, parts.val_root, self.config.data),
            progress=False,
        )
        # Every rank's records, each held-out answer once (the padding repeats a few rows).
        tagged = all_gather_lists([((mine[r["index"]], r.get("question")), r) for r in answered])
        records = list(dict(tagged).values())
        summary = summarize(records)
        metrics = {
            "val/accuracy": summary["overall"]["plain"],
            "val/accuracy_weighted": summary["overall"]["weighted"],
        }
        metrics.update({f"val/{name}/accuracy": block["plain"] for name, block in summary["types"].items()})
        return {**metrics, "timing/validation_s": time.perf_counter() - start}

    def step(self, stage: int, indices: list[int]) -> dict[str, float]:
        """One GRPO step on the rows `indices` (the whole world's batch) of curriculum stage `stage`; its metrics."""
        cfg, parts, world, n = self.config, self.parts, self.world, self.config.rollout.n
        indices = whole_batch(indices, world.size)
        mine = world.shard(indices, "prompts")
        rows = [parts.rows[i] for i in indices[mine]]
        timings: dict[str, float] = {}

        # 1. Rollouts: n completions per prompt; a prompt's seed comes from (rollout.seed, step, its global index),
        # so a resumed run samples the same, and so does any world size.
        with _timer(timings, "weight_sync"):
            parts.engine.sync_weights(parts.model)
        with _timer(timings, "rollout"):
            prompts, images = parts.prompts_and_images(rows)
            sampling = Sampling(
                max_tokens=cfg.data.max_response_length,
                temperature=cfg.rollout.temperature,
                top_p=cfg.rollout.top_p,
                top_k=cfg.rollout.top_k,
            )
            seeds = [prompt_seed(cfg.rollout.seed, self.step_count, i) for i in range(mine.start, mine.stop)]
            groups = parts.engine.generate(prompts, images, n, sampling, seeds)
        completions = [completion for group in groups for completion in group]

        # 2. Reward: the difficulty-aware detail reward on every completion; advantages within each (local) group.
        with _timer(timings, "reward"):
            samples = [row for row in rows for _ in range(n)]
            scores = score_batch(
                [c.text for c in completions],
                samples,
                variant=cfg.reward.variant,
                mode=cfg.reward.mode,
                counting1_detail=cfg.reward.counting1_detail,
                metro_root=cfg.data.metro_root,
            )
            rewards = torch.tensor([s.total for s in scores], dtype=torch.float32)
            advantages = group_advantages(rewards, n, cfg.algorithm.adv_eps).to(world.device)

        # 3. Tensors on the model's device: prompts once (with their images), completions right-padded,
        # sequence i -> prompt i // n.
        prompt_inputs = parts.prompt_inputs(prompts, images)
        completion_ids, completion_mask = (t.to(world.device) for t in completion_tensors(completions, parts.pad_id))
        prompt_of = torch.arange(len(completions), device=world.device) // n
        micro = cfg.trainer.micro_batch_size
        slices = [slice(i, i + micro) for i in range(0, len(completions), micro)]

        # 4. Reference log-probs for the KL loss (no gradient).
        ref_logprobs = torch.zeros_like(completion_mask, dtype=torch.float32)
        if cfg.algorithm.kl_coef > 0:
            with _timer(timings, "ref_logprobs"), torch.no_grad(), parts.reference() as reference:
                for part in slices:
                    ref_logprobs[part] = completion_logprobs(
                        reference,
                        prompt_inputs,
                        completion_ids[part],
                        completion_mask[part],
                        micro_batch_size=micro,
                        temperature=cfg.rollout.temperature,
                        prompt_index=prompt_of[part],
                    )[0].float()

        # 5. Update: one optimizer step over micro-batches; on-policy, so the old log-probs are the current ones.
        with _timer(timings, "update"):
            stats = self._update(prompt_inputs, prompt_of, completion_ids, completion_mask, advantages, ref_logprobs)

        # 6. Metrics of the whole world's batch (every rank computes them; the main rank logs them).
        all_scores = all_gather_lists(scores)
        tokens = stats["batch/tokens"]
        (finished,) = all_reduce_sum([sum(c.finished for c in completions)], world.device)
        seconds = sum(timings.values())
        return {
            **reward_metrics(all_scores, [parts.rows[i] for i in indices], n, stage),
            **stats,
            "batch/sequences": float(len(all_scores)),
            "batch/sequences_per_rank": float(len(completions)),
            "response/length_mean": tokens / len(all_scores),
            "response/finished_fraction": finished / len(all_scores),
            "optim/lr": learning_rate(cfg.trainer, self.step_count),
            **{f"timing/{name}_s": value for name, value in timings.items()},
            "timing/step_s": seconds,
            "timing/tokens_per_s": tokens / max(seconds, 1e-9),
        }

    def _update(
        self,
        prompt_inputs: dict,
        prompt_of: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        advantages: torch.Tensor,
        ref_logprobs: torch.Tensor,
    ) -> dict[str, float]:
        """Accumulate the GRPO loss over micro-batches, clip, step; returns loss/KL/entropy/clip/grad metrics and the
        world's completion token count (batch/tokens).

        The tensors are this rank's share of the batch; the normaliser (tokens or sequences) is the whole world's, so
        the gradient summed over ranks is the gradient of the single-process loss on the whole batch.
        """
        cfg, parts, world = self.config, self.parts, self.world
        algo, micro = cfg.algorithm, cfg.trainer.micro_batch_size
        sequences = completion_ids.shape[0]
        tokens, all_sequences = all_reduce_sum([completion_mask.sum().item(), sequences], world.device)
        normalizer = tokens if algo.loss_agg == "token-mean" else all_sequences
        parts.backend.set_lr(learning_rate(cfg.trainer, self.step_count))
        names = ("loss/policy", "loss/kl", "loss/entropy", "loss/clip_fraction", "loss/total")
        totals = dict.fromkeys(names, 0.0)
        for start in range(0, sequences, micro):
            part = slice(start, start + micro)
            mask = completion_mask[part]
            logprobs, entropy = completion_logprobs(
                parts.model,
                prompt_inputs,
                completion_ids[part],
                mask,
                micro_batch_size=micro,
                temperature=cfg.rollout.temperature,
                with_entropy=algo.entropy_coef > 0,
                prompt_index=prompt_of[part],
            )
            pg_loss, clipped = clipped_policy_loss(
                logprobs, logprobs.detach(), advantages[part], algo.clip_ratio_low, algo.clip_ratio_high
            )
            kl = (
                kl_penalty(logprobs, ref_logprobs[part], algo.kl_estimator)
                if algo.kl_coef > 0
                else torch.zeros_like(logprobs)  # no reference pass, no KL
            )
            per_token = pg_loss + algo.kl_coef * kl
            if entropy is not None:
                per_token = per_token - algo.entropy_coef * entropy
            loss = aggregate(per_token, mask, algo.loss_agg, normalizer)
            parts.backend.backward(loss * world.size)  # backends average gradients over ranks; we want their sum
            share = mask.sum().item() / max(tokens, 1.0)
            totals["loss/total"] += loss.item()
            totals["loss/policy"] += masked_mean(pg_loss.detach(), mask).item() * share
            totals["loss/kl"] += masked_mean(kl.detach(), mask).item() * share
            totals["loss/clip_fraction"] += masked_mean(clipped, mask).item() * share
            if entropy is not None:
                totals["loss/entropy"] += masked_mean(entropy.detach(), mask).item() * share
        grad_norm = parts.backend.step(cfg.trainer.max_grad_norm)
        summed = all_reduce_sum([totals[name] for name in names], world.device)
        return {**dict(zip(names, summed, strict=True)), "optim/grad_norm": grad_norm, "batch/tokens": tokens}


def learning_rate(trainer: TrainerConfig, step: int) -> float:
    """Linear warm-up over trainer.warmup_steps, then constant (the released schedule)."""
    scale = min(1.0, (step + 1) / trainer.warmup_steps) if trainer.warmup_steps else 1.0
    return trainer.lr * scale


def whole_batch(indices: list[int], world_size: int) -> list[int]:
    """`indices` padded with its own first rows to a multiple of the world size (a stage's last, partial batch)."""
    missing = -len(indices) % world_size
    return indices + [indices[i % len(indices)] for i in range(missing)]


@contextlib.contextmanager
def _timer(timings: dict[str, float], name: str) -> Iterator[None]:
    """Adds the seconds spent inside the block to timings[name]."""
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
