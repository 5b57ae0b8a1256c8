"""`rewardmap eval`: batched generation over dataset rows, per-row scoring, resumable answers.jsonl, result reports."""

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from rewardmap.data.images import MAX_PIXELS, MIN_PIXELS, load_image
from rewardmap.data.loading import load_rows
from rewardmap.data.prompts import render_prompt
from rewardmap.eval.plus import score_plus
from rewardmap.eval.report import summarize, write_reports
from rewardmap.eval.routes import score_reasonmap
from rewardmap.reward import compute_score
from rewardmap.rollout.base import RolloutEngine, Sampling

logger = logging.getLogger(__name__)

ANSWERS_FILE = "answers.jsonl"
SETTINGS_FILE = "settings.json"
ENGINES = ("hf", "vllm")


def sample_id(index: int, question: str) -> str:
    """A stable id for row `index`: its position plus a hash of its question (a changed dataset changes the id)."""
    return f"{index:06d}-{hashlib.sha256(question.encode('utf-8')).hexdigest()[:12]}"


def score_record(row: Mapping, response: str) -> dict:
    """The metrics of one answer to one row.

    TorF/Counting rows: `correct` = the ReasonMap-Plus verdict. Planning rows: `reward_correct` = the reward's
    verdict (released variant) and, when the row has reference `routes`, the ReasonMap short-question figures
    (`correct`, `map_score`, ...); without routes `correct` is the reward's verdict.
    """
    record = {key: row.get(key) for key in ("type", "difficulty_city", "country", "city")}
    if row["type"] != "planning":
        return record | {"correct": int(score_plus(response, row))}
    record["reward_correct"] = int(compute_score(response, row).correct)
    if not row.get("routes"):
        return record | {"correct": record["reward_correct"]}
    return record | {"question": "short"} | score_reasonmap(response, row, question="short")


def _record(index: int, row: Mapping, generation: Mapping) -> dict:
    """The answers.jsonl entry of a row: id, index, the generation (text, token count, finished) and its scores."""
    kept = {key: generation[key] for key in ("response", "token_count", "finished")}
    return {"id": sample_id(index, row["question"]), "index": index} | kept | score_record(row, kept["response"])


def evaluate_rows(
    engine: RolloutEngine,
    processor: Any,
    rows: Sequence[Mapping],
    *,
    sampling: Sampling,
    batch_size: int,
    image_fn: Callable[[Mapping], Image.Image],
    done: Mapping[str, Mapping] | None = None,
    on_batch: Callable[[list[dict]], None] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Generate one answer per row (batched) and score it; returns one record per row, in row order.

    Rows whose id is in `done` (earlier records) are not generated again: their stored response is re-scored.
    `on_batch` receives each batch's new records as soon as they are scored (the CLI appends them to disk).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    done = done or {}
    records: list[dict | None] = [None] * len(rows)
    todo = []
    for index in range(len(rows)):
        row = rows[index]
        previous = done.get(sample_id(index, row["question"]))
        if previous is None:
            todo.append(index)
        else:
            records[index] = _record(index, row, previous)
    if len(todo) < len(rows):
        logger.info("resuming: %d of %d samples already answered", len(rows) - len(todo), len(rows))
    with tqdm(total=len(rows), initial=len(rows) - len(todo), desc="eval", unit="sample", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = [(index, rows[index]) for index in todo[start : start + batch_size]]
            prompts = [render_prompt(processor, row["question"]) for _, row in batch]
            images = [image_fn(row) for _, row in batch]
            outputs = engine.generate(prompts, images, 1, sampling)
            new = [
                _record(index, row, {"response": c.text, "token_count": len(c.token_ids), "finished": c.finished})
                for (index, row), (c, *_) in zip(batch, outputs, strict=True)
            ]
            for record in new:
                records[record["index"]] = record
            if on_batch is not None:
                on_batch(new)
            bar.update(len(batch))
    return records


def read_answers(path: Path) -> dict[str, dict]:
    """Finished records of answers.jsonl by id; a torn last line (a write cut short) is dropped from the file."""
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    records = {}
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise ValueError(f"{path}: line {number} is not JSON ({err}); delete the line or the file") from err
            logger.warning("%s: dropping the torn last line %d (an interrupted write)", path, number)
            path.write_text("".join(lines[:-1]), encoding="utf-8")
            break
        records[record["id"]] = record
    return records


def append_answers(path: Path, records: Sequence[Mapping]) -> None:
    """Append records as JSON lines and fsync, so a crash loses at most the batch being generated."""
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        handle.flush()
        os.fsync(handle.fileno())


def check_settings(out_dir: Path, settings: Mapping) -> None:
    """Write settings.json, or refuse to resume an output folder made with other settings (mixing two runs)."""
    path = out_dir / SETTINGS_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = {key: (old.get(key), value) for key, value in settings.items() if old.get(key) != value}
        if changed:
            described = ", ".join(f"{key}: {was!r} -> {now!r}" for key, (was, now) in changed.items())
            raise ValueError(
                f"{out_dir} holds answers made with other settings ({described}); pass another --out or delete it"
            )
        return
    path.write_text(json.dumps(dict(settings), indent=2) + "\n", encoding="utf-8")


def run_evaluation(
    engine: RolloutEngine,
    processor: Any,
    rows: Sequence[Mapping],
    out_dir: str | Path,
    *,
    settings: Mapping,
    sampling: Sampling,
    batch_size: int,
    image_fn: Callable[[Mapping], Image.Image],
) -> dict:
    """Evaluate `rows` into `out_dir` (resumable answers.jsonl, results.json/.md, accuracy.png); return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, settings)
    answers = out / ANSWERS_FILE
    records = evaluate_rows(
        engine,
        processor,
        rows,
        sampling=sampling,
        batch_size=batch_size,
        image_fn=image_fn,
        done=read_answers(answers),
        on_batch=lambda new: append_answers(answers, new),
    )
    summary = summarize(records)
    write_reports(out, summary, settings)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `rewardmap eval` options."""
    parser.add_argument("--model", required=True, help="Qwen2.5-VL model directory (a merged checkpoint)")
    parser.add_argument("--data", required=True, help="dataset folder or file (ReasonMap-Plus / synthetic schema)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--engine", choices=ENGINES, default="hf", help="rollout engine: hf or vllm (default: hf)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N rows (default: all)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: outputs/eval/<model>-<data>-<split>)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default: 8)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="answer length cap in tokens (default: 512)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default: 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument(
        "--min-pixels", type=int, default=MIN_PIXELS, help=f"image budget floor (default {MIN_PIXELS})"
    )
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help=f"image budget cap (default {MAX_PIXELS})")
    parser.add_argument("--dtype", default=None, help="weights dtype: bf16, fp16, fp32 (default: bf16 GPU, fp32 CPU)")
    parser.add_argument(
        "--image-cache-dir", default=None, help="cache resized maps here (speeds up reruns; default: no cache)"
    )


def _engine(args: argparse.Namespace, processor: Any) -> RolloutEngine:
    """The engine named by --engine (vLLM is imported only when asked for)."""
    if args.engine == "vllm":
        from rewardmap.rollout.vllm import VLLMRolloutEngine

        dtype = {None: "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(args.dtype, args.dtype)
        return VLLMRolloutEngine(
            str(args.model), dtype=dtype, seed=args.seed, min_pixels=args.min_pixels, max_pixels=args.max_pixels
        )
    from rewardmap.models.loading import load_policy
    from rewardmap.rollout.hf import HFRolloutEngine

    model = load_policy(args.model, dtype=args.dtype)
    return HFRolloutEngine(model, processor, batch_size=args.batch_size)


def run(args: argparse.Namespace) -> int:
    """Evaluate a model on a dataset split and print the results table."""
    from rewardmap.models.loading import load_processor

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    dataset = load_rows(args.data, split=args.split)
    rows = [dataset[i] for i in range(min(len(dataset), args.limit))] if args.limit else dataset
    out = args.out or Path("outputs/eval") / f"{Path(args.model).name}-{Path(args.data).name}-{args.split}"
    sampling = Sampling(max_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    settings = {
        "model": str(Path(args.model).resolve()),
        "data": str(Path(args.data).resolve()),
        "split": args.split,
        "engine": args.engine,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "min_pixels": args.min_pixels,
        "max_pixels": args.max_pixels,
    }
    processor = load_processor(args.model, min_pixels=args.min_pixels, max_pixels=args.max_pixels)

    def image_fn(row: Mapping) -> Image.Image:
        return load_image(
            row["figure"],
            root=dataset.root,
            min_pixels=args.min_pixels,
            max_pixels=args.max_pixels,
            cache_dir=args.image_cache_dir,
        )

    run_evaluation(
        _engine(args, processor),
        processor,
        rows,
        out,
        settings=settings,
        sampling=sampling,
        batch_size=args.batch_size,
        image_fn=image_fn,
    )
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"wrote {out}/results.json, results.md, accuracy.png, answers.jsonl")
    return 0
