"""The multi-stage GRPO loop: curriculum batch -> rollouts -> reward -> group advantages -> clipped update.

`GRPOTrainer.step` is one whole GRPO step, top to bottom; the math lives in `losses.py`, checkpoints in
`checkpoint.py`, metrics in `metrics.py`, sharding and the optimizer in `backend.py`. The same code runs in one CPU
process and in every process of a `torchrun` world: each rank trains its share of the step's prompts (whole groups),
and the loss is normalised by the token count of the whole world, so it equals the loss of one process on all of them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from pathlib import Path

import torch
from tqdm import tqdm

from rewardmap.config import RewardMapConfig, TrainerConfig, config_to_yaml
from rewardmap.distributed import World, all_gather_lists, all_reduce_sum
from rewardmap.grpo import checkpoint
from rewardmap.grpo.batching import (
    Group,
    TrainBatch,
    completion_tensors,
    logprob_tensor,
    place_update,
    whole_batch,
)
from rewardmap.grpo.faults import StepBoundary
from rewardmap.grpo.losses import (
    aggregate,
    clipped_policy_loss,
    group_advantages,
    kl_penalty,
    log_ratio,
    masked_mean,
    truncated_is_weights,
)
from rewardmap.grpo.metrics import MetricsLogger, group_metrics, reward_metrics
from rewardmap.grpo.rollouts import build_rollouts, timer, total_steps
from rewardmap.grpo.samples import step_samples
from rewardmap.grpo.setup import Components, build_components
from rewardmap.grpo.validation import validate
from rewardmap.models.logprobs import completion_logprobs

logger = logging.getLogger(__name__)

# Token-weighted figures of each optimizer step; a step logs their mean over its optimizer steps.
LOSS_METRICS = ("loss/policy", "loss/kl", "loss/entropy", "loss/clip_fraction", "loss/ratio_mean", "loss/total")


class GRPOTrainer:
    """Owns the policy, reference, rollout engine, optimizer, curriculum stream and run directory of one run."""

    def __init__(self, config: RewardMapConfig, world: World) -> None:
        self.config = config
        self.world = world
        self.run_dir = Path(config.trainer.output_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsLogger(self.run_dir, config, enabled=self.is_main)  # trackers start before the models
        self.parts: Components = build_components(config, world)
        # Completions per forward sequence: rollout.n when each group's prompt runs once (model.shared_prefix).
        self.group_size = self.parts.group_size
        if world.is_main:
            (self.run_dir / "config.yaml").write_text(config_to_yaml(self.parts.resolved_config()))
        self.step_count = 0
        self.rollouts = build_rollouts(config, world, self.parts)

    @property
    def is_main(self) -> bool:
        return self.world.is_main

    def fit(self) -> Path:
        """Train until the curriculum (or trainer.max_steps) is done or StepBoundary stops it; the last checkpoint."""
        cfg = self.config.trainer
        resumed = checkpoint.resolve_resume(cfg.resume, self.run_dir)
        pending = []
        if resumed is not None:
            state = checkpoint.load(resumed, self.parts.backend, self.world)
            self.step_count = state["step"]
            self.parts.stream.load_state_dict(state["curriculum"])
            pending = state.get("pending_rollouts", [])
            logger.info("resumed from %s at step %d", resumed, self.step_count)
        total = total_steps(self.config, len(self.parts.stream))
        last = resumed
        boundary = StepBoundary(cfg, self.world, self.run_dir, self.step_count, self.parts.backend)
        bar = tqdm(total=total, initial=self.step_count, desc="GRPO", disable=not self.is_main)
        self.rollouts.start(self.step_count, total, pending)
        with contextlib.closing(self.rollouts), boundary, contextlib.closing(self.metrics), bar:
            while self.step_count < total:
                stage, indices = self.parts.stream.next_batch()
                metrics = self.step(stage, indices)
                self.step_count += 1
                if self.parts.val_rows and (self.step_count % cfg.val_freq == 0 or self.step_count == total):
                    metrics.update(self.validate())
                self.metrics.log(self.step_count, metrics)
                bar.update(1)
                bar.set_postfix(stage=stage + 1, reward=f"{metrics['reward/mean']:.2f}")
                due = self.step_count % cfg.save_freq == 0 or self.step_count == total
                last = boundary.after(self.step_count, stage, metrics, due, self.save) or last
        return last if last is not None else self.save()

    def save(self) -> Path:
        """An atomic checkpoint of everything a resume needs; keeps the newest trainer.save_limit of them."""
        state = {
            "step": self.step_count,
            "curriculum": self.parts.stream.state_dict(),
            "pending_rollouts": self.rollouts.pending(self.step_count),  # sampled ahead (rollout.max_staleness)
        }
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
        """Greedy answers on the held-out rows, scored with the evaluation code (`validation.py`); val/ metrics."""
        return validate(self.config, self.parts, self.world, self.metrics, self.step_count)

    def step(self, stage: int, indices: list[int]) -> dict[str, float]:
        """One GRPO step on the rows `indices` (the whole world's batch) of curriculum stage `stage`; its metrics."""
        cfg, parts, world, algo = self.config, self.parts, self.world, self.config.algorithm
        timings: dict[str, float] = {}

        # 1-2. Rollouts and rewards (`rollouts.sample_step`): sampled now by every rank (colocated), or earlier by the
        # rollout ranks with weights at most rollout.max_staleness steps old (separate).
        rollouts = self.rollouts.collect(self.step_count, stage, whole_batch(indices, world.size), timings)
        generated, kept = rollouts.generated, rollouts.kept
        if not kept:
            logger.warning(
                "step %d: every group's rewards are equal after %d rounds; no update",
                self.step_count + 1,
                rollouts.rounds,
            )

        # 3-5. Reference log-probs, old log-probs when needed, and the optimizer steps, on this rank's share; none when
        # the engine's log-probs are not finite (a policy gone NaN), which counts as a non-finite step.
        nonfinite = sum(not all(map(math.isfinite, c.logprobs)) for group in kept for c in group.completions)
        stats = {"optim/updates": 0.0, "optim/nonfinite_skipped": 1.0} if nonfinite else self.train_on(kept, timings)
        transfer = self.rollouts.publish(parts.model, self.step_count + 1, timings)  # separate: to the rollout ranks

        # 6. Metrics of the whole world's batch (every rank has every group; the main rank logs them).
        generated_rows = [parts.rows[g.row] for g in generated]
        completions = [c for group in kept for c in group.completions]
        tokens = float(sum(len(c.token_ids) for c in completions))
        seconds = sum(timings.values())
        options = {**transfer, **self.rollouts.metrics(self.step_count, rollouts)}
        if algo.filter_zero_variance_groups:
            options |= {"filter/rounds": rollouts.rounds, "filter/kept_groups": len(kept)}
        if cfg.reward.overlong_buffer:
            penalties = [r - s.total for g in generated for r, s in zip(g.rewards, g.scores, strict=True)]
            options["reward/overlong_penalty_mean"] = sum(penalties) / len(penalties)
        self.metrics.log_samples("samples", step_samples(cfg, parts, generated, kept, stage, self.step_count + 1))
        return {
            **reward_metrics([s for g in generated for s in g.scores], generated_rows, cfg.rollout.n, stage),
            **group_metrics(generated, generated_rows),
            **options,
            **rollouts.placement,
            **stats,
            "batch/tokens": tokens,
            "batch/sequences": float(len(completions)),
            "batch/sequences_per_rank": float(len(completions) // world.size),
            "response/length_mean": tokens / max(len(completions), 1),
            "response/finished_fraction": sum(c.finished for c in completions) / max(len(completions), 1),
            "rollout/nonfinite_logprobs": float(nonfinite),
            "optim/lr": learning_rate(cfg.trainer, self.step_count),
            **{f"timing/{name}_s": value for name, value in timings.items()},
            "timing/step_s": seconds,
            "timing/tokens_per_s": tokens / max(seconds, 1e-9),
        }

    def train_on(self, groups: list[Group], timings: dict[str, float]) -> dict[str, float]:
        """The update on the step's groups (the whole world's, the same on every rank): this rank's share of each
        mini-batch (`place_update`), reference and old log-probs, then trainer.mini_batches_per_step optimizer steps
        per PPO epoch.

        Returns the optimizer steps' mean loss/clip/grad metrics and their count, optim/updates (0, with no other
        figure, when there is no group to train on), and the placement's balance/ and batch/ metrics.
        """
        cfg, parts, world, algo, n = self.config, self.parts, self.world, self.config.algorithm, self.config.rollout.n
        tokens = parts.prompt_tokens([parts.rows[group.row] for group in groups])
        plan, placement = place_update(groups, tokens, world, cfg.trainer, self.group_size)
        mine = [(groups[number], trains) for number, trains in plan.groups]
        if not mine:
            return {"optim/updates": 0.0}

        # 3. Tensors on the model's device: prompts once (with their images), completions right-padded,
        # sequence i -> prompt i // n; the loss mask drops top-up copies and (mask_truncated) cut-off answers.
        prompts, images = parts.prompts_and_images([parts.rows[group.row] for group, _ in mine])
        completions = [c for group, _ in mine for c in group.completions]
        completion_ids, completion_mask = completion_tensors(completions, parts.pad_id)
        trains = [keep and (c.finished or not algo.mask_truncated) for group, keep in mine for c in group.completions]
        rewards = torch.tensor([r for group, _ in mine for r in group.rewards])
        batch = TrainBatch(
            prompt_inputs=parts.prompt_inputs(prompts, images),
            prompt_of=torch.arange(len(completions), device=world.device) // n,
            completion_ids=completion_ids.to(world.device),
            loss_mask=(completion_mask * torch.tensor(trains).unsqueeze(-1)).to(world.device),
            advantages=group_advantages(rewards, n, algo.adv_eps, algo.advantage_std_norm).to(world.device),
            rollout_logprobs=logprob_tensor(completions, completion_ids.shape[1]).to(world.device),
        )

        # 4. Reference log-probs for the KL loss; old log-probs when the policy moves before a sequence is trained
        # (several mini-batches or epochs). Otherwise the update's own log-probs, detached, are the old ones: the
        # trainer's weights before the update, which also stale samples (rollout.max_staleness) and the rollout
        # correction (algorithm.rollout_is) take the ratio against.
        if algo.kl_coef > 0:
            with timer(timings, "ref_logprobs"), parts.reference() as reference:
                batch.ref_logprobs = self._logprobs_no_grad(reference, batch, plan.passes)
        if algo.ppo_epochs > 1 or cfg.trainer.mini_batches_per_step > 1:
            with timer(timings, "old_logprobs"):
                batch.old_logprobs = self._logprobs_no_grad(parts.model, batch, plan.passes)

        # 5. Updates: each PPO epoch walks the mini-batches, one optimizer step each.
        with timer(timings, "update"):
            updates = [self._update(batch, passes) for _ in range(algo.ppo_epochs) for passes in plan.passes]
        means = {name: sum(u[name] for u in updates) / len(updates) for name in updates[0]}
        return {**means, **placement, "optim/updates": float(len(updates))}

    def _logprobs_no_grad(self, model: torch.nn.Module, batch: TrainBatch, passes: list[list[slice]]) -> torch.Tensor:
        """Sampled-token log-probs (N, C) of the batch under `model`, one forward per pass, without gradient."""
        logprobs = torch.zeros_like(batch.loss_mask, dtype=torch.float32)
        with torch.no_grad():
            for part in itertools.chain.from_iterable(passes):
                logprobs[part] = completion_logprobs(
                    model,
                    batch.prompt_inputs,
                    batch.completion_ids[part],
                    batch.loss_mask[part],
                    micro_batch_size=part.stop - part.start,
                    temperature=self.config.rollout.temperature,
                    prompt_index=batch.prompt_of[part],
                    group_size=self.group_size,
                )[0].float()
        return logprobs

    def _update(self, batch: TrainBatch, passes: list[slice]) -> dict[str, float]:
        """One optimizer step on this rank's share of one mini-batch, the sequences of `passes`: the GRPO loss
        accumulated over the passes (a forward and backward each), clipped gradients; returns loss/clip/grad metrics.

        The normaliser (tokens or sequences) is the whole world's mini-batch, so the gradient summed over ranks is the
        gradient of the single-process loss on the whole mini-batch.
        """
        cfg, parts, world = self.config, self.parts, self.world
        algo = cfg.algorithm
        trained = batch.loss_mask[passes[0].start : passes[-1].stop]
        tokens, all_sequences = all_reduce_sum([trained.sum().item(), trained.any(-1).sum().item()], world.device)
        normalizer = {
            "token-mean": tokens,
            "seq-mean-token-mean": all_sequences,
            "seq-mean-token-sum-norm": all_sequences * cfg.data.max_response_length,
        }[algo.loss_agg] or 1.0  # nothing to train on (every answer masked): a zero loss, not 0 / 0
        parts.backend.set_lr(learning_rate(cfg.trainer, self.step_count))
        correcting = algo.rollout_is == "truncated"
        totals = dict.fromkeys(LOSS_METRICS + (("rollout_is/weight_mean",) if correcting else ()), 0.0)
        weight_max = 0.0
        for part in passes:
            mask = batch.loss_mask[part]
            logprobs, entropy = completion_logprobs(
                parts.model,
                batch.prompt_inputs,
                batch.completion_ids[part],
                mask,
                micro_batch_size=part.stop - part.start,
                temperature=cfg.rollout.temperature,
                with_entropy=algo.entropy_coef > 0,
                prompt_index=batch.prompt_of[part],
                group_size=self.group_size,
            )
            old = logprobs.detach() if batch.old_logprobs is None else batch.old_logprobs[part]
            pg_loss, clipped = clipped_policy_loss(
                logprobs,
                old,
                batch.advantages[part],
                algo.clip_ratio_low,
                algo.clip_ratio_high,
                mask=mask,
                level=algo.importance_level,
            )
            if correcting:
                weights = truncated_is_weights(old, batch.rollout_logprobs[part], algo.rollout_is_cap)
                pg_loss = pg_loss * weights
            kl = (
                kl_penalty(logprobs, batch.ref_logprobs[part], algo.kl_estimator)
                if algo.kl_coef > 0
                else torch.zeros_like(logprobs)  # no reference pass, no KL
            )
            per_token = pg_loss + algo.kl_coef * kl
            if entropy is not None:
                per_token = per_token - algo.entropy_coef * entropy
            loss = aggregate(per_token, mask, algo.loss_agg, normalizer)
            if not math.isfinite(loss.item()):  # a NaN gradient too (else it could be finite), so the step is skipped
                loss = loss * math.nan
            parts.backend.backward(loss * world.size)  # backends average gradients over ranks; we want their sum
            share = mask.sum().item() / max(tokens, 1.0)
            ratio = torch.exp(log_ratio(logprobs.detach(), old, mask, algo.importance_level))
            totals["loss/total"] += loss.item()
            totals["loss/policy"] += masked_mean(pg_loss.detach(), mask).item() * share
            totals["loss/kl"] += masked_mean(kl.detach(), mask).item() * share
            totals["loss/clip_fraction"] += masked_mean(clipped, mask).item() * share
            totals["loss/ratio_mean"] += masked_mean(ratio, mask).item() * share
            if entropy is not None:
                totals["loss/entropy"] += masked_mean(entropy.detach(), mask).item() * share
            if correcting:
                totals["rollout_is/weight_mean"] += masked_mean(weights, mask).item() * share
                weight_max = max(weight_max, (weights * mask).max().item())
        grad_norm = parts.backend.step(cfg.trainer.max_grad_norm)
        summed = all_reduce_sum(list(totals.values()), world.device)
        stats = {**dict(zip(totals, summed, strict=True)), "optim/grad_norm": grad_norm}
        stats["optim/nonfinite_skipped"] = float(not math.isfinite(grad_norm))  # then the backend took no step
        if correcting:
            stats["rollout_is/weight_max"] = max(all_gather_lists([weight_max]))
        return stats


def learning_rate(trainer: TrainerConfig, step: int) -> float:
    """Linear warm-up over trainer.warmup_steps, then constant (the released schedule)."""
    scale = min(1.0, (step + 1) / trainer.warmup_steps) if trainer.warmup_steps else 1.0
    return trainer.lr * scale
