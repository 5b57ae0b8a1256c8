"""Supervised warm start: cross-entropy on the rows' reference answers, so a fresh policy answers in format."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from rewardmap.config import RewardMapConfig, load_config
from rewardmap.data.loading import load_rows
from rewardmap.data.prompts import prompt_tensors, render_prompt
from rewardmap.data.sft import answer_text
from rewardmap.errors import InputError
from rewardmap.grpo.batching import completion_tensors
from rewardmap.grpo.losses import aggregate
from rewardmap.grpo.setup import row_image
from rewardmap.models.loading import load_policy, load_processor
from rewardmap.models.logprobs import completion_logprobs
from rewardmap.rollout import Completion

logger = logging.getLogger(__name__)


def warm_start(config: RewardMapConfig) -> RewardMapConfig:
    """Trains sft.steps steps from model.path into <output_dir>/sft_model (reused if there); returns the config
    with model.path pointing at it."""
    out = Path(config.trainer.output_dir) / "sft_model"
    updated = dataclasses.replace(config, model=dataclasses.replace(config.model, path=str(out)))
    if (out / "config.json").is_file():
        logger.info("reusing the warm-start model in %s", out)
        return updated
    cfg, data = config.sft, config.data
    torch.manual_seed(config.trainer.seed)
    model = load_policy(config.model.path, dtype=None if config.model.dtype == "auto" else config.model.dtype)
    device = model.device
    processor = load_processor(config.model.path, min_pixels=data.min_pixels, max_pixels=data.max_pixels)
    rows = load_rows(data.train_files, split=data.train_split, on_bad_row=data.on_bad_row)
    rows.types  # noqa: B018 -- a benchmark split has no question types: refused here, naming a row
    examples = [(row, text) for row in rows if (text := answer_text(row)) is not None]
    if not examples:
        raise InputError(f"no row of {data.train_files} has a reference answer to warm-start on")
    random.Random(config.trainer.seed).shuffle(examples)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    end_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for step in tqdm(range(cfg.steps), desc="SFT warm start"):
        batch = [examples[(step * cfg.batch_size + i) % len(examples)] for i in range(cfg.batch_size)]
        prompts = [render_prompt(processor, row["question"]) for row, _ in batch]
        images = [row_image(row, rows.root, data) for row, _ in batch]
        answers = [
            Completion(processor.tokenizer.encode(text, add_special_tokens=False) + [end_id], text, [], True)
            for _, text in batch
        ]
        ids, mask = (t.to(device) for t in completion_tensors(answers, processor.tokenizer.pad_token_id))
        inputs = prompt_tensors(processor, prompts, images, data.max_prompt_length).to(device)
        logprobs, _ = completion_logprobs(model, inputs, ids, mask, micro_batch_size=cfg.batch_size)
        loss = -aggregate(logprobs, mask, "token-mean", float(mask.sum()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == cfg.steps - 1:
            logger.info("SFT step %d/%d: loss %.4f", step + 1, cfg.steps, loss.item())
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    os.replace(tmp, out)
    logger.info("warm-start model written to %s", out)
    return updated


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="configs/demo.yaml", help="YAML config whose sft/data/model sections apply"
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sft.steps=100 sft.lr=1e-4")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    if config.sft.steps <= 0:
        raise SystemExit("sft.steps is 0: set e.g. sft.steps=100 to run a warm start")
    print(f"warm-start model: {warm_start(config).model.path}")
    return 0
