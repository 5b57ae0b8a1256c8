"""SFT export: a ReasonMap-schema split as LLaMA-Factory sharegpt JSON, plus its dataset_info.json entry."""

import argparse
import hashlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from rewardmap.data.images import figure_source
from rewardmap.data.loading import load_rows
from rewardmap.errors import InputError

logger = logging.getLogger(__name__)

LETTERS = "ABCD"


def render_route(sections: list[Mapping[str, Any]], stop_suffix: str = "") -> str:
    """One reference route in the answer format: `Route Name/Departure Stop/Arrival Stop` sections joined by `--`.

    `stop_suffix` (e.g. " Station", "站") is appended to every stop: reference routes name stops without it while the
    questions' stations carry it, and ReasonMap's route metric compares the stops with the stations as written.
    """
    return "\n--\n".join(
        f"Route Name: {s['route_name']}\nDeparture Stop: {s['departure_stop']}{stop_suffix}\n"
        f"Arrival Stop: {s['arrival_stop']}{stop_suffix}"
        for s in sections
    )


def answer_text(row: Mapping[str, Any]) -> str | None:
    """The bare target answer of a normalised row, or None when it has none usable.

    Counting1 0..3 -> A..D; TorF 1/0 -> yes/no; Counting2/3 -> the count; planning -> the first reference route
    (`routes`) rendered with `render_route`.
    """
    kind, answer = row["type"], row.get("answer")
    if kind == "planning":
        routes = row.get("routes") or {}
        if not routes:
            return None
        sections = next(iter(routes.values()))
        departure, station = sections[0]["departure_stop"], row.get("station_1") or ""
        suffix = station[len(departure) :] if station.startswith(departure) else ""
        return render_route(sections, suffix)
    if not isinstance(answer, int) or isinstance(answer, bool):
        return None
    if kind == "Counting1":
        return LETTERS[answer] if 0 <= answer < len(LETTERS) else None
    if kind in ("TorF1", "TorF2"):
        return {1: "yes", 0: "no"}.get(answer)
    return str(answer)


@dataclass
class SftExport:
    """What an export wrote: the JSON file, the records kept and the rows skipped per reason."""

    path: Path
    kept: int
    skipped: Counter


def _image_path(figure: Any, root: Path, out_dir: Path, images_dir: Path) -> str:
    """The row's image as a path relative to `out_dir`; embedded images are written once to `images_dir`."""
    source = figure_source(figure, root)
    if isinstance(source, Path):
        return os.path.relpath(source, out_dir)
    if isinstance(source, Image.Image):
        buffer = io.BytesIO()
        source.save(buffer, format="PNG")
        source = buffer.getvalue()
    with Image.open(io.BytesIO(source)) as image:
        suffix = (image.format or "png").lower()
    target = images_dir / f"{hashlib.sha256(source).hexdigest()[:20]}.{suffix}"
    if not target.is_file():
        images_dir.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source)
    return os.path.relpath(target, out_dir)


def _merge_dataset_info(info_path: Path, name: str, file_name: str) -> None:
    """Add or replace the `name` entry of LLaMA-Factory's dataset_info.json, keeping every other entry."""
    info = {}
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise InputError(f"{info_path}: not valid JSON ({err}); fix or delete it") from err
    info[name] = {
        "file_name": file_name,
        "formatting": "sharegpt",
        "ranking": False,
        "columns": {"messages": "conversations", "images": "images"},
    }
    info_path.write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def export_sft(
    dataset_dir: str | Path,
    out: str | Path,
    *,
    split: str = "train",
    image_root: str | Path | None = None,
    skip_answer_value: int = -1,
    include_planning: bool = False,
    dataset_name: str = "reasonmap_plus",
    on_bad_row: str = "error",
) -> SftExport:
    """Write `split` of `dataset_dir` as sharegpt records (`<image> {question}` -> bare answer) to `out`.

    Planning rows are skipped unless `include_planning` (and they have reference routes); rows without an answer
    or with answer == `skip_answer_value` are skipped; every skip is counted. Image paths are relative to the
    output folder, where `dataset_info.json` gets (or keeps, updated) the `dataset_name` entry.
    """
    dataset = load_rows(dataset_dir, split=split, root=image_root, on_bad_row=on_bad_row, require_answer=False)
    out = Path(out).resolve()
    images_dir = out.parent / f"{out.stem}_images"
    records, skipped = [], Counter(dataset.skipped)
    for index in tqdm(range(len(dataset)), desc="sft export", unit="row"):
        row = dataset.rows[index]
        if row["type"] == "planning" and not include_planning:
            skipped["planning (pass --include_planning)"] += 1
            continue
        if row["type"] != "planning" and row.get("answer") in (None, skip_answer_value):
            skipped["no answer"] += 1
            continue
        answer = answer_text(row)
        if answer is None:
            skipped["planning without routes" if row["type"] == "planning" else "answer out of range"] += 1
            continue
        image = _image_path(dataset[index]["figure"], dataset.root, out.parent, images_dir)
        records.append(
            {
                "conversations": [
                    {"from": "human", "value": f"<image> {row['question']}"},
                    {"from": "gpt", "value": answer},
                ],
                "images": [image],
            }
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    _merge_dataset_info(out.parent / "dataset_info.json", dataset_name, out.name)
    logger.info("wrote %d records to %s; skipped %s", len(records), out, dict(skipped) or "none")
    return SftExport(out, len(records), skipped)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `rewardmap sft-data` and utils/prepare_data_for_sft.py (the released names)."""
    parser.add_argument("--dataset_dir", required=True, help="dataset folder (save_to_disk or Hub layout) or file")
    parser.add_argument("--split", default="train", help="split to export (default train)")
    parser.add_argument("--out", default="reason_map_plus.json", help="output JSON (default reason_map_plus.json)")
    parser.add_argument("--image_root", default=None, help="folder relative figure paths resolve against")
    parser.add_argument("--skip_answer_value", type=int, default=-1, help="answer value meaning 'none' (default -1)")
    parser.add_argument(
        "--include_planning", action="store_true", help="keep planning rows with routes (answer: first route)"
    )
    parser.add_argument("--dataset_name", default="reasonmap_plus", help="entry name written to dataset_info.json")
    parser.add_argument(
        "--on_bad_row", choices=("error", "skip"), default="error", help="invalid rows: stop (default) or skip"
    )


def run(args: argparse.Namespace) -> int:
    """Export and print a one-line summary."""
    result = export_sft(
        args.dataset_dir,
        args.out,
        split=args.split,
        image_root=args.image_root,
        skip_answer_value=args.skip_answer_value,
        include_planning=args.include_planning,
        dataset_name=args.dataset_name,
        on_bad_row=args.on_bad_row,
    )
    skipped = ", ".join(f"{reason}: {count}" for reason, count in result.skipped.most_common()) or "none"
    print(f"wrote {result.kept} records to {result.path} (skipped: {skipped}); dataset_info.json updated")
    return 0
