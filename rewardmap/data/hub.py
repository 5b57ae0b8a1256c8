"""Download ReasonMap-Train / ReasonMap-Plus / ReasonMap from the Hugging Face Hub into data/ (a snapshot each)."""

import argparse
import logging
import os
import sys
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HfHubHTTPError

from rewardmap.errors import InputError

logger = logging.getLogger(__name__)

DATASETS = {
    "reasonmap-plus": ("FSCCS/ReasonMap-Plus", "ReasonMap-Plus"),
    "reasonmap-train": ("FSCCS/ReasonMap-Train", "ReasonMap-Train"),
    "reasonmap": ("FSCCS/ReasonMap", "ReasonMap"),  # the benchmark: split `validation`, question pairs
}


def download(name: str, out: str | Path) -> Path:
    """Snapshot the dataset `name` (a key of DATASETS) into `out/<folder>` with progress bars; returns the folder."""
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    repo_id, folder = DATASETS[name]
    target = Path(out) / folder
    logger.info("downloading %s into %s", repo_id, target)
    snapshot_download(repo_id=repo_id, repo_type="dataset", local_dir=str(target))
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `rewardmap download` and utils/download_dataset.py."""
    parser.add_argument(
        "--dataset",
        choices=[*DATASETS, "all"],
        default="all",
        help="which dataset: reasonmap-train (RL training), reasonmap-plus (evaluation, SFT), reasonmap (the "
        "ReasonMap benchmark, evaluation) or all (default)",
    )
    parser.add_argument(
        "--out", default="data", help="folder that receives ReasonMap-Train/, ReasonMap-Plus/, ReasonMap/"
    )


def run(args: argparse.Namespace) -> int:
    """Download the chosen datasets; on a Hub failure print one sentence saying what to do and return 1."""
    names = list(DATASETS) if args.dataset == "all" else [args.dataset]
    for name in names:
        try:
            target = download(name, args.out)
        except (OSError, HfHubHTTPError) as err:  # LocalEntryNotFoundError (offline, no DNS) is an OSError
            repo_id, folder = DATASETS[name]
            if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
                reason = "HF_HUB_OFFLINE is set"
            else:
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:160]
            print(
                f"Could not download {repo_id}: the Hugging Face Hub at {constants.ENDPOINT} is unreachable "
                f"({reason}); point HF_ENDPOINT at a reachable mirror and unset HF_HUB_OFFLINE, or copy the dataset "
                f"by hand into {Path(args.out) / folder}.",
                file=sys.stderr,
            )
            return 1
        print(f"{DATASETS[name][0]} -> {target}")
    return 0
