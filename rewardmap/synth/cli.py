"""`rewardmap synth`: write a synthetic transit-map dataset (maps, metro JSON, train/test/reasonmap JSONL splits)."""

import argparse
import logging
from collections import Counter
from pathlib import Path

from rewardmap.synth.dataset import generate_dataset

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `rewardmap synth` options."""
    parser.add_argument("--out", type=Path, default=Path("data/synth"), help="output directory (default: data/synth)")
    parser.add_argument("--cities", type=int, default=20, help="number of cities to generate (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical files (default: 0)")
    parser.add_argument(
        "--questions-per-type", type=int, default=10, help="questions of each of the six types per city (default: 10)"
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of held-out cities and of the other cities' questions that go to test.jsonl (default: 0.2)",
    )
    parser.add_argument(
        "--image-size", type=int, nargs=2, default=(1000, 800), metavar=("W", "H"), help="map size in pixels"
    )


def run(args: argparse.Namespace) -> int:
    """Generate the dataset and print a per-split, per-type row count."""
    out = generate_dataset(
        args.out,
        cities=args.cities,
        seed=args.seed,
        questions_per_type=args.questions_per_type,
        image_size=tuple(args.image_size),
        test_fraction=args.test_fraction,
    )
    for split in ("train", "test"):
        lines = (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        counts = Counter(line.split('"type": "', 1)[1].split('"', 1)[0] for line in lines)
        print(f"{split}: {len(lines)} rows  " + "  ".join(f"{t}={n}" for t, n in sorted(counts.items())))
    benchmark = (out / "reasonmap.jsonl").read_text(encoding="utf-8").splitlines()
    print(f"reasonmap: {len(benchmark)} rows (ReasonMap layout: a short and a long question each)")
    print(f"wrote {out}")
    return 0
