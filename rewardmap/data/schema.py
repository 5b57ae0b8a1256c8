"""The dataset row (ReasonMap-Train / ReasonMap-Plus schema): fields, question types, validation, normalising."""

import base64
import binascii
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

QUESTION_TYPES = ("TorF1", "TorF2", "Counting1", "Counting2", "Counting3", "planning")
DIFFICULTIES = ("easy", "middle", "hard")
FIELDS = (
    "question",
    "figure",
    "answer",
    "type",
    "country",
    "city",
    "station_1",
    "station_2",
    "difficulty_city",
    "city_line_count",
    "city_transfer_count",
    "question_transfer_count",
    "json",
)
SECTION_KEYS = ("route_name", "departure_stop", "arrival_stop", "via_stops", "num_via_stops")
_TYPE_BY_LOWER = {name.lower(): name for name in QUESTION_TYPES}
_REASON_END = re.compile(r"[:;]|, got| '")
_BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n\r")
# Fields that may be null in every row; `answer`, `json` and `question_transfer_count` are nullable outside planning.
_NULLABLE = frozenset({"station_1", "station_2", "answer", "json", "question_transfer_count"})


class BadRow(ValueError):
    """One invalid row: `reason` groups rows for the skip report, the message names file, row, field and the fix."""

    def __init__(self, source: str, index: int, field: str, problem: str, fix: str) -> None:
        super().__init__(f"{source}: row {index}: field '{field}': {problem}. Fix: {fix}")
        self.reason = f"{field}: {_REASON_END.split(problem)[0]}"  # the problem without its value, for counting


def canonical_type(value: str) -> str:
    """The canonical question type for `value` (case-insensitive); ValueError naming the accepted types."""
    name = _TYPE_BY_LOWER.get(str(value).strip().lower())
    if name is None:
        raise ValueError(f"unknown question type {value!r}; accepted (any case): {', '.join(QUESTION_TYPES)}")
    return name


def parse_routes(value: Any) -> dict[str, list[dict[str, Any]]]:
    """Reference routes {key: [section, ...]} from a dict or JSON string; null keys (Arrow fill) are dropped."""
    routes = json.loads(value) if isinstance(value, str) else value
    if not isinstance(routes, Mapping):
        raise ValueError(f"routes must be a mapping {{key: [section, ...]}}, got {type(routes).__name__}")
    parsed = {}
    for key, sections in routes.items():
        if sections is None:
            continue
        if not isinstance(sections, list) or not sections:
            raise ValueError(f"routes[{key!r}] must be a non-empty list of sections")
        for section in sections:
            missing = [k for k in SECTION_KEYS[:3] if not isinstance(section, Mapping) or k not in section]
            if missing:
                raise ValueError(f"routes[{key!r}] has a section without {', '.join(missing)}")
        parsed[str(key)] = [dict(section) for section in sections]
    return parsed


def embedded_bytes(figure: str) -> bytes | None:
    """The image bytes of a data URI or raw base64 string, or None when `figure` reads as a path."""
    if figure.startswith("data:"):
        payload = figure.split(",", 1)[1] if "," in figure else ""
    elif len(figure) >= 64 and _BASE64_CHARS.issuperset(figure):
        payload = figure
    else:
        return None
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"figure looks embedded but is not valid base64: {err}") from err


def resolve_path(value: str, root: Path) -> Path:
    """`value` as an absolute path: absolute paths as they are, relative ones (`./maps/x.png`) against `root`."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def _integer(value: Any) -> int | None:
    """An int from an int, an integral float or a digit string; None if `value` is not an integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _check_figure(figure: Any, root: Path, bad: Any) -> None:
    """Raise through `bad` unless `figure` is embedded image data or names an existing file."""
    if isinstance(figure, Mapping):  # a datasets.Image feature read with decode=False
        if figure.get("bytes"):
            return
        figure = figure.get("path") or ""
    elif hasattr(figure, "size") and hasattr(figure, "mode"):  # a decoded PIL image
        return
    if not isinstance(figure, str) or not figure.strip():
        raise bad("figure", f"expected a path, data URI, base64 string or image, got {figure!r}", "set the image")
    try:
        if embedded_bytes(figure) is not None:
            return
    except ValueError as err:
        raise bad("figure", str(err), "re-encode the image as base64") from err
    path = resolve_path(figure, root)
    if not path.is_file():
        raise bad(
            "figure",
            f"image file not found: {path}",
            f"put the maps under {root} or pass the folder that holds them as the image root",
        )


def normalize_row(row: Mapping[str, Any], *, root: Path, source: str, index: int, require_answer: bool = True) -> dict:
    """A validated copy of `row`: canonical type and difficulty, int counts, absolute `json`, parsed `routes`.

    Raises BadRow naming `source`, the row `index`, the field and how to fix it.
    """

    def bad(field: str, problem: str, fix: str) -> BadRow:
        return BadRow(source, index, field, problem, fix)

    # ReasonMap-Plus has no question_transfer_count column; only planning rows need one.
    missing = [name for name in FIELDS if name not in row and name != "question_transfer_count"]
    if missing:
        raise bad(missing[0], "missing", f"add the column(s) {', '.join(missing)} (schema: {', '.join(FIELDS)})")
    row = {"question_transfer_count": None, "routes": None, **row}
    out = dict(row)
    for name in FIELDS:
        if row[name] is None and name not in _NULLABLE:
            raise bad(name, "is null", "fill it in or drop the row")
    for name in ("question", "country", "city"):
        if not isinstance(row[name], str) or not row[name].strip():
            raise bad(name, f"expected a non-empty string, got {row[name]!r}", "write the text")
    for name in ("station_1", "station_2"):
        if row[name] is not None and not isinstance(row[name], str):
            raise bad(name, f"expected a string, got {type(row[name]).__name__}", "write the station name")
    try:
        out["type"] = canonical_type(row["type"])
    except ValueError as err:
        raise bad("type", str(err), "use one of the six ReasonMap question types") from err
    difficulty = str(row["difficulty_city"]).strip().lower()
    if difficulty not in DIFFICULTIES:
        raise bad("difficulty_city", f"unknown difficulty {row['difficulty_city']!r}", "use easy, middle or hard")
    out["difficulty_city"] = difficulty
    planning = out["type"] == "planning"
    integers = ["city_line_count", "city_transfer_count", "question_transfer_count"]
    # A planning row's answer is unused (the reward scores the route), so it is kept as it is.
    for name in integers if planning else [*integers, "answer"]:
        if row[name] is None:
            if (name == "answer" and require_answer) or (name == "question_transfer_count" and planning):
                raise bad(name, "is null", f"a {out['type']} row needs an integer {name}")
            continue
        value = _integer(row[name])
        if value is None:
            raise bad(name, f"expected an integer, got {row[name]!r} ({type(row[name]).__name__})", "write a number")
        out[name] = value
    _check_figure(row["figure"], root, bad)
    if row["json"] is not None:
        if not isinstance(row["json"], str) or not row["json"].strip():
            raise bad("json", f"expected the path of the city's line list, got {row['json']!r}", "write the path")
        out["json"] = str(resolve_path(row["json"], root))
    if planning and (out["json"] is None or not Path(out["json"]).is_file()):
        raise bad("json", f"line list not found: {out['json']}", f"put stations/ under {root} or fix the path")
    if row["routes"] is not None:
        try:
            out["routes"] = parse_routes(row["routes"])
        except (ValueError, TypeError) as err:
            raise bad("routes", str(err), "write {key: [{route_name, departure_stop, arrival_stop, ...}]}") from err
    return out
