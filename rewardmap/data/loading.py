"""Dataset loading with HF `datasets`: save_to_disk folders, Hub-layout folders, explicit parquet/JSON/JSONL files."""

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets

from rewardmap.data.schema import BadRow, is_reasonmap_row, normalize_reasonmap_row, normalize_row
from rewardmap.errors import InputError

logger = logging.getLogger(__name__)

_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".arrow": "arrow"}


class MapDataset(Sequence):
    """Validated rows of one split. `ds[i]` is the normalised row dict (the reward's `sample`), figure included.

    A row is either a ReasonMap-Train / Plus row (`question`, `type`, ...) or a ReasonMap benchmark row
    (`question_short`, `question_long`, ...: see `rewardmap.data.schema.is_reasonmap_row`).

    Rows are kept without their figures; each figure is read from the memory-mapped Arrow table on access, so
    datasets with embedded (base64) maps do not sit in RAM. Relative `figure` paths resolve against `root`.
    """

    def __init__(
        self,
        tables: list[datasets.Dataset],
        positions: list[tuple[int, int]],
        rows: list[dict],
        root: Path,
        skipped: Counter,
    ):
        self._tables = tables
        self._positions = positions
        self.rows = rows
        self.root = root
        self.skipped = skipped

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = dict(self.rows[index])
        table, position = self._positions[index]
        row["figure"] = self._tables[table][position]["figure"]
        return row

    def head(self, count: int) -> "MapDataset":
        """The first `count` rows, still reading figures lazily."""
        return MapDataset(self._tables, self._positions[:count], self.rows[:count], self.root, self.skipped)

    @property
    def types(self) -> list[str]:
        """The canonical question type of every row, in order (the curriculum's input)."""
        for index, row in enumerate(self.rows):
            if is_reasonmap_row(row):
                raise InputError(
                    f"{self.root}: row {index} is a ReasonMap benchmark row (question_short / question_long): it has "
                    "no question type to train on; evaluate it with `rewardmap eval` and train on ReasonMap-Train "
                    "or a synthetic train split"
                )
        return [row["type"] for row in self.rows]

    @property
    def difficulties(self) -> list[str]:
        """The city difficulty of every row, in order."""
        return [row["difficulty_city"] for row in self.rows]


def _read_file(path: Path) -> datasets.Dataset:
    """One parquet / JSON / JSONL / Arrow file as a Dataset."""
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise InputError(f"{path}: unsupported data file type; use one of {', '.join(sorted(_BUILDERS))}")
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # datasets wraps Arrow/JSON errors in several types; name the file either way
        raise InputError(f"{path}: could not be read as {builder} ({err}); check the file is complete") from err


def _split_files(folder: Path, split: str) -> list[Path]:
    """The data files of `split` in a Hub-layout folder (data/<split>-*.parquet, <split>.jsonl, ...)."""
    found: list[Path] = []
    for sub in (folder, folder / "data"):
        for path in sorted(sub.glob(f"{split}*")) if sub.is_dir() else []:
            stem = path.name.split(".")[0]
            if path.suffix.lower() in _BUILDERS and (stem == split or stem.startswith(f"{split}-")):
                found.append(path)
    if not found:
        present = sorted(p.name for sub in (folder, folder / "data") if sub.is_dir() for p in sub.iterdir())
        raise FileNotFoundError(
            f"{folder}: no data files for split {split!r} (looked for {split}.jsonl/.json/.parquet and "
            f"data/{split}-*.parquet; found {present[:10]}); pick another --split or pass the files explicitly"
        )
    return found


def _read_source(source: Path | Sequence[Path], split: str) -> list[tuple[str, datasets.Dataset]]:
    """(label, table) pairs for a save_to_disk folder, a Hub-layout folder, a file or a list of files."""
    if not isinstance(source, Path):
        return [(str(path), _read_file(path)) for path in source]
    if source.is_file():
        return [(str(source), _read_file(source))]
    if not source.is_dir():
        raise FileNotFoundError(f"dataset {source} not found; run `rewardmap download` or `rewardmap synth` first")
    if (source / "dataset_dict.json").is_file() or (source / "state.json").is_file():
        loaded = datasets.load_from_disk(str(source))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise InputError(f"{source}: no split {split!r}; available splits: {', '.join(loaded)}")
            loaded = loaded[split]
        return [(f"{source} (split {split})", loaded)]
    return [(str(path), _read_file(path)) for path in _split_files(source, split)]


def _undecoded(table: datasets.Dataset) -> datasets.Dataset:
    """`table` with an image-typed `figure` column left as {bytes, path} (decoded lazily by rewardmap.data.images)."""
    if isinstance(table.features.get("figure"), datasets.Image):
        return table.cast_column("figure", datasets.Image(decode=False))
    return table


def load_rows(
    source: str | Path | Sequence[str | Path],
    *,
    split: str = "train",
    root: str | Path | None = None,
    on_bad_row: str = "error",
    require_answer: bool = True,
    metro_root: str | Path | None = None,
) -> MapDataset:
    """Load and validate one split of a ReasonMap-Train / Plus dataset or of the ReasonMap benchmark.

    `source`: a `save_to_disk` folder (Dataset or DatasetDict; `split` picks), a Hub-layout folder
    (`data/<split>-*.parquet`, `<split>.jsonl`, ...), one data file or a list of them. `root` (default: the
    dataset folder, or the first file's folder) is where relative `figure` paths resolve, and relative `json` paths
    too unless `metro_root` is given; a `json` path becomes absolute (a ReasonMap row may embed its line list
    instead). Each row is read by its fields: ReasonMap benchmark rows (question_short / question_long) or
    Train / Plus rows. Bad rows raise an InputError naming file, row, field and fix (`on_bad_row="error"`) or are
    dropped and reported with counts per reason (`"skip"`). `require_answer=False` lets non-planning rows lack one.
    """
    if on_bad_row not in ("error", "skip"):
        raise InputError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    paths: Path | list[Path] = Path(source) if isinstance(source, str | Path) else [Path(p) for p in source]
    if isinstance(paths, list) and not paths:
        raise InputError("no data files given")
    first = paths if isinstance(paths, Path) else paths[0]
    base = Path(root) if root is not None else (first if first.is_dir() else first.parent)
    base = base.resolve()
    metro = Path(metro_root).resolve() if metro_root is not None else base
    tables, positions, rows, errors = [], [], [], []
    for number, (label, table) in enumerate(_read_source(paths, split)):
        table = _undecoded(table)
        for index, row in enumerate(table):
            try:
                if is_reasonmap_row(row):
                    kept = normalize_reasonmap_row(row, root=base, source=label, index=index, metro_root=metro)
                else:
                    kept = normalize_row(
                        row, root=base, source=label, index=index, require_answer=require_answer, metro_root=metro
                    )
            except BadRow as err:
                errors.append(err)
                continue
            kept.pop("figure")
            positions.append((number, index))
            rows.append(kept)
        tables.append(table)
    _report(errors, len(rows), on_bad_row)
    logger.info("loaded %d rows (split %s) from %s; paths resolve against %s", len(rows), split, source, base)
    return MapDataset(tables, positions, rows, base, Counter(err.reason for err in errors))


def _report(errors: list[BadRow], kept: int, on_bad_row: str) -> None:
    """Raise on bad rows (listing the first five) or, when skipping, warn with the count per reason."""
    if not errors:
        return
    if on_bad_row == "error":
        shown = "\n  ".join(str(err) for err in errors[:5])
        more = f"\n  ... and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise InputError(
            f"{len(errors)} bad row(s):\n  {shown}{more}\n"
            "Fix the rows, or load with on_bad_row='skip' to drop them (they are counted and reported)."
        )
    counts = Counter(err.reason for err in errors)
    summary = "; ".join(f"{reason}: {count}" for reason, count in counts.most_common())
    logger.warning("skipped %d bad rows, kept %d (%s); first: %s", len(errors), kept, summary, errors[0])
