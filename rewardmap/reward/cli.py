"""`rewardmap score`: score a JSONL of {"response", "sample"} rows with the reward and print a summary per type."""

import argparse
import dataclasses
import json
import logging
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from rewardmap.errors import InputError
from rewardmap.reward.score import MODES, compute_score

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `rewardmap score`."""
    parser.add_argument("--input", required=True, type=Path, help='JSONL of {"response": str, "sample": {...}} rows')
    parser.add_argument("--output", type=Path, help="JSONL written with each row's reward breakdown (optional)")
    parser.add_argument(
        "--variant", default="released", choices=("released", "corrected"), help="released quirks or corrected"
    )
    parser.add_argument("--mode", default="difficulty_aware", choices=MODES, help="difficulty weights or weight 1")
    parser.add_argument(
        "--counting1-detail", action="store_true", help="corrected only: partial credit for listed Counting1 stops"
    )
    parser.add_argument("--metro-root", type=Path, help="folder that relative `json` metro paths resolve against")


def _read_rows(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("response"), str) or "sample" not in row:
                expected = '{"response": str, "sample": {...}}'
                raise InputError(f"{path}:{number}: expected {expected}, got {line[:60]!r}")
            rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    """Score every row, optionally write the breakdowns, print count / mean total / accuracy per type."""
    rows = _read_rows(args.input)
    options = {
        "variant": args.variant,
        "mode": args.mode,
        "counting1_detail": args.counting1_detail,
        "metro_root": args.metro_root,
    }
    per_type = defaultdict(list)
    results = []
    for row in tqdm(rows, desc="score", unit="row", disable=len(rows) < 1000):
        score = compute_score(row["response"], row["sample"], **options)
        per_type[str(row["sample"].get("type"))].append(score)
        results.append({**row, "reward": dataclasses.asdict(score)})
    if args.output is not None:
        with open(args.output, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
    print(f"{'type':<12} {'count':>6} {'mean total':>11} {'accuracy':>9}")
    for kind, scores in sorted(per_type.items()) + [("all", [s for v in per_type.values() for s in v])]:
        mean = sum(s.total for s in scores) / max(len(scores), 1)
        accuracy = sum(s.correct for s in scores) / max(len(scores), 1)
        print(f"{kind:<12} {len(scores):>6} {mean:>11.3f} {accuracy:>9.3f}")
    return 0
