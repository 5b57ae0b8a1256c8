"""`rewardmap eval`: generate and score answers (or score answers produced elsewhere), resumable, with reports; one
process (the trainer's validation is what answers inside a `torchrun` world)."""

import argparse
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from rewardmap.data.images import MAX_PIXELS, MIN_PIXELS, load_image
from rewardmap.data.loading import MapDataset, load_rows
from rewardmap.errors import InputError
from rewardmap.eval.answers import ANSWER_FORMATS, append_answers, read_answers, read_responses, replace_file
from rewardmap.eval.output import write_reports
from rewardmap.eval.protocol import DECODING_FLAGS, PROTOCOLS, protocols_of, render_question, resolve_decoding
from rewardmap.eval.records import make_record, questions_of, record_id
from rewardmap.eval.report import build_results
from rewardmap.rollout import VLLM_DTYPES, RolloutEngine, Sampling, build_engine

logger = logging.getLogger(__name__)

ANSWERS_FILE = "answers.jsonl"
SETTINGS_FILE = "settings.json"
ENGINES = ("hf", "vllm")
# Settings that only change how stored answers are scored: a resumed run may change them (all answers are re-scored).
RESCORED = ("answer_format",)


def _answer_batch(
    engine: RolloutEngine,
    processor: Any,
    rows: Sequence[Mapping],
    batch: list[tuple[int, str | None]],
    sampling: Sampling,
    image_fn: Callable[[Mapping], Image.Image],
    answer_format: str,
    training_prompts: bool,
) -> list[dict]:
    """Generate and score one batch of (row index, question) answers; each map is loaded once per batch."""
    batch_rows = {index: rows[index] for index, _ in batch}
    images = {index: image_fn(row) for index, row in batch_rows.items()}
    prompts = [render_question(processor, batch_rows[i], question, training=training_prompts) for i, question in batch]
    outputs = engine.generate(prompts, [images[index] for index, _ in batch], 1, sampling)
    records = []
    for (index, question), prompt, (completion, *_) in zip(batch, prompts, outputs, strict=True):
        # Counted as both benchmarks count an answer's tokens: its text re-tokenized (no end-of-turn token).
        tokens = len(processor.tokenizer(completion.text)["input_ids"])
        answer = {
            "prompt": prompt,
            "response": completion.text,
            "token_count": tokens,
            "finished": completion.finished,
        }
        records.append(make_record(index, batch_rows[index], question, answer, answer_format))
    return records


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
    answer_format: str = "plain",
    training_prompts: bool = True,
) -> list[dict]:
    """Generate the answers the rows ask for (batched) and score them; returns the records in row order.

    A Train / Plus row asks one question (one record); a ReasonMap benchmark row two, short then long. Answers whose
    id is in `done` (earlier records) are not generated again: their stored response is re-scored.
    `on_batch` receives each batch's new records as soon as they are scored (the CLI appends them to disk).
    `training_prompts`: a one-question row is asked as in training (the trainer's validation), else as its benchmark's
    code asks it (`rewardmap eval`); see `render_question`.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    done = done or {}
    records: dict[tuple[int, str | None], dict] = {}
    order, todo = [], []
    for index in range(len(rows)):
        row = rows[index]
        for question in questions_of(row):
            order.append((index, question))
            previous = done.get(record_id(index, row, question))
            if previous is None:
                todo.append((index, question))
            else:
                records[(index, question)] = make_record(index, row, question, previous, answer_format)
    if records:
        logger.info("resuming: %d of %d answers already there", len(records), len(order))
    with tqdm(total=len(order), initial=len(records), desc="eval", unit="answer", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            new = _answer_batch(engine, processor, rows, batch, sampling, image_fn, answer_format, training_prompts)
            records.update(zip(batch, new, strict=True))
            if on_batch is not None:
                on_batch(new)
            bar.update(len(batch))
    return [records[key] for key in order]


def check_settings(out_dir: Path, settings: Mapping) -> None:
    """Write settings.json, or refuse to resume an output folder made with other settings (mixing two runs).

    RESCORED settings may differ: every stored answer is scored again with the new value.
    """
    path = out_dir / SETTINGS_FILE
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        old, new = (_flat({k: v for k, v in side.items() if k not in RESCORED}) for side in (stored, settings))
        changed = {key: (old.get(key), new.get(key)) for key in {**old, **new} if old.get(key) != new.get(key)}
        if changed:
            described = ", ".join(f"{key}: {was!r} -> {now!r}" for key, (was, now) in changed.items())
            raise InputError(
                f"{out_dir} holds answers made with other settings ({described}); pass another --out or delete it"
            )
    replace_file(path, json.dumps(dict(settings), indent=2) + "\n")


def _flat(settings: Mapping, prefix: str = "") -> dict:
    """Nested settings as one level of dotted keys (`protocol.decoding.top_k`), so a change names its field."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, Mapping) and value:
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
    answer_format: str = "plain",
) -> dict:
    """Evaluate `rows` into `out_dir` (resumable answers.jsonl, results.json/.md, accuracy.png), each asked as its
    benchmark's code asks it (PROTOCOLS); return the summary."""
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
        answer_format=answer_format,
        training_prompts=False,
    )
    results = build_results(records, settings)
    write_reports(out, results)
    return results["summary"]


def score_responses(
    rows: Sequence[Mapping], responses: Path, out_dir: str | Path, *, settings: Mapping, answer_format: str = "plain"
) -> dict:
    """Score answers produced elsewhere (see `read_responses`) into `out_dir`: answers.jsonl (rewritten whole),
    results.json/.md and accuracy.png; no model is loaded. Returns the summary."""
    answers = read_responses(responses, rows)
    if not answers:
        raise InputError(f"--responses {responses}: no answers in the file; write one JSON line per answered row")
    if len(answers) < len(rows):
        logger.warning("%s answers %d of %d rows; only those are scored", responses, len(answers), len(rows))
    records = [
        make_record(index, rows[index], question, {"response": text, "token_count": tokens}, answer_format)
        for index in sorted(answers)
        for question, (text, tokens) in answers[index].items()
    ]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, settings)
    replace_file(out / ANSWERS_FILE, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    results = build_results(records, settings)
    write_reports(out, results)
    return results["summary"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `rewardmap eval` options."""
    parser.add_argument("--model", default=None, help="Qwen2.5-VL model directory (a merged checkpoint) to answer")
    parser.add_argument(
        "--responses",
        type=Path,
        default=None,
        help="score the answers in this JSONL instead (no model loaded): one line per answered row, "
        '{"index": i, "response": ...} or, for ReasonMap rows, {"index": i, "response_short": ..., '
        '"response_long": ...}',
    )
    parser.add_argument(
        "--data", required=True, help="dataset folder or file: ReasonMap, ReasonMap-Plus, ReasonMap-Train, synthetic"
    )
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument(
        "--metro-root",
        default=None,
        help="folder that relative `json` line-list paths resolve against (default: the --data folder)",
    )
    parser.add_argument(
        "--answer-format",
        choices=ANSWER_FORMATS,
        default="plain",
        help="answer text of a response: plain (Qwen, InternVL), kimi (after the last ◁/think▷), skywork (after the "
        "last </think>), qvq (the \\text{} parts of boxed{}); default plain",
    )
    parser.add_argument("--engine", choices=ENGINES, default="hf", help="rollout engine: hf or vllm (default: hf)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N rows (default: all)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: outputs/eval/<model>-<data>-<split>)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="prompts per generate call (default: 8); the benchmarks answer one at a time: 1 removes the left-padding "
        "noise of the HF engine",
    )
    lengths = ", ".join(f"{name} {protocol.max_new_tokens}" for name, protocol in PROTOCOLS.items())
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"answer length cap in tokens (default: the benchmark's own, {lengths})",
    )
    checkpoint = "default: the model's generation_config.json, as the benchmarks' generate uses it"
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help=f"sampling temperature, 0 = greedy ({checkpoint}: greedy unless it sets do_sample); top-k 1 is greedy",
    )
    parser.add_argument("--top-p", type=float, default=None, help=f"nucleus sampling threshold ({checkpoint})")
    parser.add_argument("--top-k", type=int, default=None, help=f"top-k sampling, 0 = off ({checkpoint})")
    parser.add_argument(
        "--repetition-penalty", type=float, default=None, help=f"repetition penalty, 1 = off ({checkpoint})"
    )
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
    """The engine named by --engine on --model (the HF engine loads the model here)."""
    if args.engine == "vllm":
        dtype = VLLM_DTYPES.get(args.dtype or "auto", args.dtype)
        options = {"dtype": dtype, "seed": args.seed, "min_pixels": args.min_pixels, "max_pixels": args.max_pixels}
        return build_engine("vllm", processor, model_path=args.model, vllm_options=options)
    from rewardmap.models.loading import load_policy

    model = load_policy(args.model, dtype=args.dtype)
    return build_engine("hf", processor, model=model, batch_size=args.batch_size)


def _generate(args: argparse.Namespace, dataset: MapDataset, common: Mapping) -> Path:
    """Answer the rows with the model of --model (resumable) and score them; returns the output folder."""
    from rewardmap.models.loading import load_processor

    rows = dataset.head(args.limit) if args.limit else dataset
    protocols = protocols_of(dataset.rows)
    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = max(protocol.max_new_tokens for protocol in protocols.values())
    out = args.out or Path("outputs/eval") / f"{Path(args.model).name}-{Path(args.data).name}-{args.split}"
    overrides = {key: getattr(args, key) for key in DECODING_FLAGS}
    sampling, decoding = resolve_decoding(args.model, overrides, max_tokens=max_new_tokens, seed=args.seed)
    protocol = {
        "benchmarks": {name: protocol.source for name, protocol in protocols.items()},
        "prompt_format": {name: protocol.prompt_format for name, protocol in protocols.items()},
        "engine": args.engine,
        "batch_size": args.batch_size,
        "max_new_tokens": max_new_tokens,
        "decoding": decoding,
        "min_pixels": args.min_pixels,
        "max_pixels": args.max_pixels,
    }
    settings = {"model": str(Path(args.model).resolve()), **common, "protocol": protocol}
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
        answer_format=args.answer_format,
    )
    return out


def run(args: argparse.Namespace) -> int:
    """Evaluate a model (or score a file of answers) on a dataset split and print the results tables."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError(
            f"rewardmap eval runs in one process, and this is one of a torchrun world of {os.environ['WORLD_SIZE']}: "
            "launch it with `rewardmap eval ...` (every process would answer every row and write the same files)"
        )
    if (args.model is None) == (args.responses is None):
        raise InputError(
            "pass --model MODEL_DIR to generate answers, or --responses FILE to score answers produced elsewhere "
            "(one of the two)"
        )
    if args.limit is not None and (args.limit < 1 or args.responses is not None):
        raise InputError(
            f"--limit {args.limit}: it selects the first N >= 1 rows to generate; with --responses the file "
            "decides which rows are scored, so drop --limit"
        )
    dataset = load_rows(args.data, split=args.split, metro_root=args.metro_root)
    common = {"data": str(Path(args.data).resolve()), "split": args.split, "answer_format": args.answer_format}
    if args.responses is None:
        out = _generate(args, dataset, common)
    else:
        out = args.out or Path("outputs/eval") / f"{args.responses.stem}-{Path(args.data).name}-{args.split}"
        settings = {"responses": str(args.responses.resolve()), **common}
        score_responses(dataset.rows, args.responses, out, settings=settings, answer_format=args.answer_format)
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"wrote {out}/results.json, results.md, accuracy.png, answers.jsonl")
    return 0
