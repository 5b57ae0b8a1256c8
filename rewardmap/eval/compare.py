"""`rewardmap eval-compare A B`: two evaluations' figures (ReasonMap's too) side by side with the difference B - A."""

import argparse
import json
import logging
from collections.abc import Mapping
from pathlib import Path

from rewardmap.errors import InputError
from rewardmap.eval.report import comparable_figures

logger = logging.getLogger(__name__)


def load_results(path: str | Path) -> dict:
    """The results.json dict ({settings, summary[, reasonmap, plus]}), given the file or the folder that holds it."""
    file = Path(path)
    file = file / "results.json" if file.is_dir() else file
    if not file.is_file():
        raise FileNotFoundError(
            f"{file}: no results.json; pass an eval folder or its results.json (run rewardmap eval)"
        )
    results = json.loads(file.read_text(encoding="utf-8"))
    if "summary" not in results:
        raise InputError(f"{file}: no 'summary' key; expected the results.json written by `rewardmap eval`")
    return results


def compare_table(a: Mapping, b: Mapping, label_a: str = "A", label_b: str = "B") -> str:
    """A Markdown table of two results.json dicts' figures (headline, then ReasonMap's views) and B - A; a figure
    one side lacks shows as —."""
    figures_a, figures_b = comparable_figures(a), comparable_figures(b)
    names = list(figures_a) + [name for name in figures_b if name not in figures_a]
    count_a, count_b = a["summary"]["count"], b["summary"]["count"]
    lines = [f"| figure | {label_a} | {label_b} | {label_b} − {label_a} |", "| --- | ---: | ---: | ---: |"]
    lines.append(f"| answers | {count_a} | {count_b} | {count_b - count_a:+d} |")
    for name in names:
        value_a, value_b = figures_a.get(name), figures_b.get(name)
        delta = f"{value_b - value_a:+.2f}" if value_a is not None and value_b is not None else "—"
        shown = ["—" if value is None else f"{value:.2f}" for value in (value_a, value_b)]
        lines.append(f"| {name} | {shown[0]} | {shown[1]} | {delta} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `rewardmap eval-compare` options."""
    parser.add_argument("a", help="the baseline: an eval folder or its results.json")
    parser.add_argument("b", help="the model to compare with it: an eval folder or its results.json")
    parser.add_argument("--label-a", default="A", help="column name of the baseline (default: A)")
    parser.add_argument("--label-b", default="B", help="column name of the other model (default: B)")


def run(args: argparse.Namespace) -> int:
    """Print the comparison table (Markdown)."""
    a, b = load_results(args.a), load_results(args.b)
    settings = [results.get("settings", {}) for results in (a, b)]
    for label, side in zip((args.label_a, args.label_b), settings, strict=True):
        source = f"model {side['model']}" if "model" in side else f"answers {side.get('responses')}"
        print(f"{label}: {source}, data {side.get('data')} (split {side.get('split')})")
    if any(settings[0].get(key) != settings[1].get(key) for key in ("data", "split")):
        logger.warning("the two evaluations used different data or splits: the difference mixes data and model")
    print()
    print(compare_table(a, b, args.label_a, args.label_b))
    return 0
