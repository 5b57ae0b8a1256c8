"""The multi-stage GRPO loop: curriculum batch -> rollouts -> reward -> group advantages -> clipped update.

`GRPOTrainer.step` is one whole GRPO step, top to bottom; the math lives in `losses.py`, checkpoints in
`checkpoint.py`, metrics in `metrics.py`. The same code runs on one CPU process and under `accelerate launch`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm import tqdm

from rewardmap.config import RewardMapConfig, config_to_yaml
from rewardmap.eval.report import summarize
from rewardmap.eval.runner import evaluate_rows
from rewardmap.grpo import checkpoint
from rewardmap.grpo.batching import completion_tensors
from rewardmap.grpo.losses import aggregate, clipped_policy_loss, group_advantages, kl_penalty, masked_mean
from rewardmap.grpo.metrics import MetricsLogger, reward_metrics
from rewardmap.grpo.setup import Components, build_components, row_image
from rewardmap.models.logprobs import completion_logprobs
from rewardmap.reward import score_batch
from rewardmap.rollout import Sampling

logger = logging.getLogger(__name__)


class GRPOTrainer:
    """Owns the policy, reference, rollout engine, optimizer, curriculum stream and run directory of one run."""

    def __init__(self, config: RewardMapConfig, accelerator: Accelerator | None = None) -> None:
        self.config = config
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.run_dir = Path(config.trainer.output_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(config_to_yaml(config))
        self.parts: Components = build_components(config, self.accelerator)
        self.step_count = 0
        self.metrics = MetricsLogger(self.run_dir, tensorboard=config.trainer.tensorboard, enabled=self.is_main)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def fit(self) -> Path:
        """Train until the curriculum (or trainer.max_steps) is done; returns the final checkpoint directory."""
        cfg = self.config.trainer
        resumed = checkpoint.resolve_resume(cfg.resume, self.run_dir)
        if resumed is not None:
            state = checkpoint.load(resumed, self.parts.model, self.parts.optimizer, self.accelerator)
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
        path = checkpoint.save(
            self.run_dir,
            self.step_count,
            self.parts.model,
            self.parts.optimizer,
            self.parts.processor,
            state,
            self.accelerator,
        )
        checkpoint.prune(self.run_dir, keep=self.config.trainer.save_limit)
        return path

    def validate(self) -> dict[str, float]:
        """Greedy answers on the held-out rows, scored with the evaluation code: val/ accuracies."""
        parts, start = self.parts, time.perf_counter()
        parts.engine.sync_weights(parts.model)
        records = evaluate_rows(
            parts.engine,
            parts.processor,
            parts.val_rows,
            sampling=Sampling(max_tokens=self.config.data.max_response_length, temperature=0.0),
            batch_size=self.config.data.prompts_per_step,
            image_fn=lambda row: row_image(row, parts.val_root, self.config.data),
            progress=False,
        )
        summary = summarize(records)
        metrics = {
            "val/accuracy": summary["overall"]["plain"],
            "val/accuracy_weighted": summary["overall"]["weighted"],
        }
        metrics.update({f"val/{name}/accuracy": block["plain"] for name, block in summary["types"].items()})
        return {**metrics, "timing/validation_s": time.perf_counter() - start}

    def step(self, stage: int, indices: list[int]) -> dict[str, float]:
        """One GRPO step on the rows `indices` of curriculum stage `stage`; returns its metrics."""
        cfg, parts, n = self.config, self.parts, self.config.rollout.n
        rows = [parts.rows[i] for i in indices]
        timings: dict[str, float] = {}

        # 1. Rollouts: n completions per prompt, sampled with a per-step seed (so a resumed run samples the same).
        with _timer(timings, "rollout"):
            prompts, images = parts.prompts_and_images(rows)
            parts.engine.sync_weights(parts.model)
            sampling = Sampling(
                max_tokens=cfg.data.max_response_length,
                temperature=cfg.rollout.temperature,
                top_p=cfg.rollout.top_p,
                top_k=cfg.rollout.top_k,
                seed=cfg.rollout.seed + self.step_count,
            )
            groups = parts.engine.generate(prompts, images, n, sampling)
        completions = [completion for group in groups for completion in group]

        # 2. Reward: the difficulty-aware detail reward on every completion.
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
            advantages = group_advantages(rewards, n, cfg.algorithm.adv_eps)

        # 3. Tensors: prompts once (with their images), completions right-padded, sequence i -> prompt i // n.
        prompt_inputs = parts.prompt_inputs(prompts, images)
        completion_ids, completion_mask = completion_tensors(completions, parts.pad_id)
        prompt_of = torch.arange(len(completions)) // n
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
                        temperature=max(cfg.rollout.temperature, 1e-6),
                        prompt_index=prompt_of[part],
                    )[0].float()

        # 5. Update: one optimizer step over micro-batches; on-policy, so the old log-probs are the current ones.
        with _timer(timings, "update"):
            stats = self._update(prompt_inputs, prompt_of, completion_ids, completion_mask, advantages, ref_logprobs)

        seconds = sum(timings.values())
        return {
            **reward_metrics(scores, rows, n, stage),
            **stats,
            "response/length_mean": completion_mask.sum(-1).float().mean().item(),
            "response/finished_fraction": sum(c.finished for c in completions) / len(completions),
            "optim/lr": parts.optimizer.param_groups[0]["lr"],
            **{f"timing/{name}_s": value for name, value in timings.items()},
            "timing/step_s": seconds,
            "timing/tokens_per_s": completion_mask.sum().item() / max(seconds, 1e-9),
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
        """Accumulate the GRPO loss over micro-batches, clip, step; returns loss/KL/entropy/clip/grad metrics."""
        cfg, parts = self.config, self.parts
        algo, micro = cfg.algorithm, cfg.trainer.micro_batch_size
        sequences = completion_ids.shape[0]
        normalizer = float(completion_mask.sum()) if algo.loss_agg == "token-mean" else float(sequences)
        parts.set_lr(self.step_count)
        totals = {
            "loss/policy": 0.0,
            "loss/kl": 0.0,
            "loss/entropy": 0.0,
            "loss/clip_fraction": 0.0,
            "loss/total": 0.0,
        }
        for start in range(0, sequences, micro):
            part = slice(start, start + micro)
            mask = completion_mask[part]
            logprobs, entropy = completion_logprobs(
                parts.model,
                prompt_inputs,
                completion_ids[part],
                mask,
                micro_batch_size=micro,
                temperature=max(cfg.rollout.temperature, 1e-6),
                with_entropy=algo.entropy_coef > 0,
                prompt_index=prompt_of[part],
            )
            pg_loss, clipped = clipped_policy_loss(
                logprobs, logprobs.detach(), advantages[part], algo.clip_ratio_low, algo.clip_ratio_high
            )
            kl = kl_penalty(logprobs, ref_logprobs[part], algo.kl_estimator)
            per_token = pg_loss + algo.kl_coef * kl
            if entropy is not None:
                per_token = per_token - algo.entropy_coef * entropy
            loss = aggregate(per_token, mask, algo.loss_agg, normalizer)
            self.accelerator.backward(loss)
            share = mask.sum().item() / max(float(completion_mask.sum()), 1.0)
            totals["loss/total"] += loss.item()
            totals["loss/policy"] += masked_mean(pg_loss.detach(), mask).item() * share
            totals["loss/kl"] += masked_mean(kl.detach(), mask).item() * share
            totals["loss/clip_fraction"] += masked_mean(clipped, mask).item() * share
            if entropy is not None:
                totals["loss/entropy"] += masked_mean(entropy.detach(), mask).item() * share
        grad_norm = self.accelerator.clip_grad_norm_(parts.trainable_parameters(), cfg.trainer.max_grad_norm)
        parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)
        return {**totals, "optim/grad_norm": float(grad_norm)}


@contextlib.contextmanager
def _timer(timings: dict[str, float], name: str) -> Iterator[None]:
    """Adds the seconds spent inside the block to timings[name]."""
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
