"""Dataset rows (ReasonMap-Train / Plus schema, ReasonMap benchmark layout): fields, types, validation, normalising."""

import base64
import binascii
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rewardmap.errors import InputError

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
# The ReasonMap benchmark layout (FSCCS/ReasonMap, EVAL_SPEC §1): one row per question pair.
REASONMAP_FIELDS = (
    "question_short",
    "question_long",
    "routes",
    "figure",
    "json",
    "country",
    "city",
    "station_1",
    "station_2",
    "difficulty_city",
    "difficulty_question",
    "city_line_count",
    "city_transfer_count",
    "question_transfer_count",
)
SECTION_KEYS = ("route_name", "departure_stop", "arrival_stop", "via_stops", "num_via_stops")
_TYPE_BY_LOWER = {name.lower(): name for name in QUESTION_TYPES}
_REASON_END = re.compile(r"[:;]|, got| '")
_BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n\r")
# Fields that may be null in every row; `answer`, `json` and `question_transfer_count` are nullable outside planning.
_NULLABLE = frozenset({"station_1", "station_2", "answer", "json", "question_transfer_count"})


class BadRow(InputError):
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


def _strings(row: Mapping[str, Any], names: tuple[str, ...], bad: Any, nullable: bool = False) -> None:
    """Raise through `bad` unless each named field is a non-empty string (or, if `nullable`, None)."""
    for name in names:
        value = row[name]
        if not (nullable and value is None) and (not isinstance(value, str) or not value.strip()):
            raise bad(name, f"expected a non-empty string, got {value!r}", "write the text")


def _difficulty(row: Mapping[str, Any], name: str, bad: Any) -> str:
    """The lower-case difficulty of field `name` (easy, middle or hard)."""
    difficulty = str(row[name]).strip().lower()
    if difficulty not in DIFFICULTIES:
        raise bad(name, f"unknown difficulty {row[name]!r}", "use easy, middle or hard")
    return difficulty


def _count(row: Mapping[str, Any], name: str, bad: Any) -> int:
    """Field `name` as an int (int, integral float or digit string)."""
    value = _integer(row[name])
    if value is None:
        raise bad(name, f"expected an integer, got {row[name]!r} ({type(row[name]).__name__})", "write a number")
    return value


def normalize_row(
    row: Mapping[str, Any],
    *,
    root: Path,
    source: str,
    index: int,
    require_answer: bool = True,
    metro_root: Path | None = None,
) -> dict:
    """A validated copy of a ReasonMap-Train / Plus `row`: canonical type and difficulty, int counts, absolute
    `json` (relative paths resolve against `metro_root`, default `root`), parsed `routes`.

    Raises BadRow naming `source`, the row `index`, the field and how to fix it.
    """

    def bad(field: str, problem: str, fix: str) -> BadRow:
        return BadRow(source, index, field, problem, fix)

    # ReasonMap-Plus has no question_transfer_count column; only planning rows need one.
    missing = [name for name in FIELDS if name not in row and name != "question_transfer_count"]
    if missing:
        schema = f"schema: {', '.join(FIELDS)}; a ReasonMap benchmark row has question_short and question_long"
        raise bad(missing[0], "missing", f"add the column(s) {', '.join(missing)} ({schema})")
    row = {"question_transfer_count": None, "routes": None, **row}
    out = dict(row)
    for name in FIELDS:
        if row[name] is None and name not in _NULLABLE:
            raise bad(name, "is null", "fill it in or drop the row")
    _strings(row, ("question", "country", "city"), bad)
    for name in ("station_1", "station_2"):
        if row[name] is not None and not isinstance(row[name], str):
            raise bad(name, f"expected a string, got {type(row[name]).__name__}", "write the station name")
    try:
        out["type"] = canonical_type(row["type"])
    except ValueError as err:
        raise bad("type", str(err), "use one of the six ReasonMap question types") from err
    out["difficulty_city"] = _difficulty(row, "difficulty_city", bad)
    planning = out["type"] == "planning"
    integers = ["city_line_count", "city_transfer_count", "question_transfer_count"]
    # A planning row's answer is unused (the reward scores the route), so it is kept as it is.
    for name in integers if planning else [*integers, "answer"]:
        if row[name] is None:
            if (name == "answer" and require_answer) or (name == "question_transfer_count" and planning):
                raise bad(name, "is null", f"a {out['type']} row needs an integer {name}")
            continue
        out[name] = _count(row, name, bad)
    _check_figure(row["figure"], root, bad)
    if row["json"] is not None:
        if not isinstance(row["json"], str) or not row["json"].strip():
            raise bad("json", f"expected the path of the city's line list, got {row['json']!r}", "write the path")
        out["json"] = str(resolve_path(row["json"], metro_root or root))
    if planning and (out["json"] is None or not Path(out["json"]).is_file()):
        raise bad("json", f"line list not found: {out['json']}", f"put stations/ under {root} or fix the path")
    if row["routes"] is not None:
        try:
            out["routes"] = parse_routes(row["routes"])
        except (ValueError, TypeError) as err:
            raise bad("routes", str(err), "write {key: [{route_name, departure_stop, arrival_stop, ...}]}") from err
    return out


def is_reasonmap_row(row: Mapping[str, Any]) -> bool:
    """Whether `row` is in the ReasonMap benchmark layout (question_short / question_long, no `question`)."""
    return row.get("question") is None and ("question_short" in row or "question_long" in row)


def parse_line_list(value: Any, metro_root: Path) -> dict[str, list[str]] | str:
    """A ReasonMap row's `json`: the {line: [stations]} mapping (keys Arrow filled with null dropped), from a
    mapping or JSON text, or the absolute path of an existing line-list file (relative to `metro_root`)."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        value = json.loads(value)
    if isinstance(value, str) and value.strip():
        path = resolve_path(value, metro_root)
        if not path.is_file():
            raise ValueError(f"line list file not found: {path}")
        return str(path)
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a {{line: [stations]}} mapping, JSON text or a path, got {value!r}")
    lines = {str(line): stations for line, stations in value.items() if stations is not None}
    for line, stations in lines.items():
        if not isinstance(stations, list | tuple) or not all(isinstance(s, str) for s in stations):
            raise ValueError(f"line {line!r} must list station names (strings), got {stations!r}")
    if not lines:
        raise ValueError("the line list is empty")
    return {line: list(stations) for line, stations in lines.items()}


def _complete_sections(routes: dict[str, list[dict[str, Any]]]) -> None:
    """Every reference section carries all of SECTION_KEYS: via_stops a list of names, num_via_stops an integer."""
    if not routes:
        raise ValueError("no reference route (all keys are null)")
    for key, sections in routes.items():
        for number, section in enumerate(sections):
            where = f"routes[{key!r}][{number}]"
            missing = [k for k in SECTION_KEYS if section.get(k) is None]
            if missing:
                raise ValueError(f"a reference section has no {', '.join(missing)}: {where}")
            if not isinstance(section["via_stops"], list | tuple):
                raise ValueError(f"via_stops must be a list of stop names: {where} has {section['via_stops']!r}")
            if _integer(section["num_via_stops"]) is None:
                raise ValueError(f"num_via_stops must be an integer: {where} has {section['num_via_stops']!r}")
            section["via_stops"] = list(section["via_stops"])
            section["num_via_stops"] = _integer(section["num_via_stops"])


def normalize_reasonmap_row(
    row: Mapping[str, Any], *, root: Path, source: str, index: int, metro_root: Path | None = None
) -> dict:
    """A validated copy of a ReasonMap benchmark `row` (EVAL_SPEC §1): lower-case difficulties, int counts,
    `json` as a mapping or an absolute path (relative paths resolve against `metro_root`, default `root`),
    complete reference `routes`. Raises BadRow naming `source`, the row `index`, the field and the fix."""

    def bad(field: str, problem: str, fix: str) -> BadRow:
        return BadRow(source, index, field, problem, fix)

    missing = [name for name in REASONMAP_FIELDS if name not in row]
    if missing:
        raise bad(missing[0], "missing", f"add the column(s) {', '.join(missing)} (ReasonMap layout: EVAL_SPEC §1)")
    for name in REASONMAP_FIELDS:
        if row[name] is None:
            raise bad(name, "is null", "fill it in or drop the row")
    out = dict(row)
    _strings(row, ("question_short", "question_long", "country", "city", "station_1", "station_2"), bad)
    for name in ("difficulty_city", "difficulty_question"):
        out[name] = _difficulty(row, name, bad)
    for name in ("city_line_count", "city_transfer_count", "question_transfer_count"):
        out[name] = _count(row, name, bad)
    _check_figure(row["figure"], root, bad)
    try:
        out["json"] = parse_line_list(row["json"], metro_root or root)
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        fix = f"embed the city's {{line: [stations]}} or give its path under the metro root ({metro_root or root})"
        raise bad("json", str(err), fix) from err
    try:
        out["routes"] = parse_routes(row["routes"])
        _complete_sections(out["routes"])
    except (ValueError, TypeError) as err:
        fix = "write {key: [{route_name, departure_stop, arrival_stop, via_stops, num_via_stops}, ...]}"
        raise bad("routes", str(err), fix) from err
    return out
