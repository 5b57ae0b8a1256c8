"""ReasonMap route scoring as released: cleaning K, response parsing, accuracy and map score (EVAL_SPEC §2-§5)."""

import json
import logging
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rewardmap.reward.metro import load_metro, resolve_metro_path, strip_suffixes
from rewardmap.reward.normalize import delete_bracket_groups

logger = logging.getLogger(__name__)

_SPACE_OR_DASH = re.compile(r"[\s\-]+")
_DIGITS = re.compile(r"\d+")
_PAREN_LAZY = re.compile(r"\(.*?\)")
# Non-china line names come from the *response* name; the first pattern that matches wins (EVAL_SPEC §5).
_FOREIGN_LINE_PATTERNS = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (r"Metro\s+([A-Z0-9]{1,2})[-\s]?Line", r"Metro\s+([A-Z0-9]{1,2})", r"Linea\s+([A-Z0-9]{1,2})")
)
_FOREIGN_SHORT_CODE = re.compile(r"([A-Z0-9]{1,2})", re.IGNORECASE)
# More significant digits than this make |m - r| / r overflow a float; such a count earns no points.
_MAX_COUNT_DIGITS = 300
QUESTIONS = ("short", "long")


def clean_k(text: str) -> str:
    """EVAL_SPEC §2 cleaning K: drop Metro/metro/,/*/newline, bracket groups, whitespace and '-'; lowercase."""
    for token in ("Metro", "metro", ",", "*", "\n"):
        text = text.replace(token, "")
    return _SPACE_OR_DASH.sub("", delete_bracket_groups(text)).lower()


@dataclass(frozen=True)
class Section:
    """One parsed response section: raw trimmed line name, K-cleaned stops, and the long question's tail text."""

    name: str
    dep: str
    arr: str
    tail: str


def _line_value(piece: str, label: str) -> str:
    """V(L): the text after the first `label` up to the next newline, or `Wrong` when no newline follows."""
    start = piece.find(label)
    end = piece.find("\n", start + len(label)) if start >= 0 else -1
    return piece[start + len(label) : end] if end >= 0 else "Wrong"


def _after_last(piece: str, label: str) -> str:
    """Trimmed text after the last `label` (the whole piece when absent), like str.split(label)[-1].strip()."""
    return piece.rsplit(label, 1)[-1].strip()


def parse_sections(answer: str, question: str, number_template: bool) -> list[Section]:
    """EVAL_SPEC §3: split on `--`, keep pieces with all three labels; tail = n-text/v-text for long, else ''."""
    sections = []
    for piece in answer.split("--"):
        if not piece.strip() or any(lab not in piece for lab in ("Route Name:", "Departure Stop:", "Arrival Stop:")):
            continue
        dep = _line_value(piece, "Departure Stop: ")
        name = _line_value(piece, "Route Name: ")
        if question == "short":
            arr, tail = clean_k(_after_last(piece, "Arrival Stop:")), ""
        else:
            arrival = _line_value(piece, "Arrival Stop: ")
            arr = arrival if arrival == "Wrong" else clean_k(arrival)
            tail = _after_last(piece, "Number of Via Stops: " if number_template else "Via Stops: ")
        sections.append(Section(name.strip(), dep if dep == "Wrong" else clean_k(dep), arr, tail))
    return sections


def endpoints_match(sections: list[Section], station_1: str, station_2: str) -> bool:
    """Endpoint test E: first departure and last arrival equal the asked stations after K."""
    return clean_k(sections[0].dep) == clean_k(station_1) and clean_k(sections[-1].arr) == clean_k(station_2)


def route_is_correct(sections: list[Section], station_1: str, station_2: str, metro: Mapping[str, list[str]]) -> int:
    """EVAL_SPEC §4 accuracy: E, every line known, both stops on it, consecutive sections joined (order unchecked)."""
    if not sections or not endpoints_match(sections, station_1, station_2):
        return 0
    for k, section in enumerate(sections):
        line = "Line 1" if "八通" in section.name else section.name
        line = "Line 4" if "大兴" in line else line
        if line not in metro:
            return 0
        stations = {clean_k(s) for s in metro[line]}
        dep, arr = clean_k(section.dep), clean_k(section.arr)
        if dep not in stations or arr not in stations:
            return 0
        if k + 1 < len(sections) and arr != clean_k(sections[k + 1].dep):
            return 0
    return 1


def reference_line_name(reference_name: str, response_name: str, china: bool, city: str) -> str:
    """n_i: china reads the reference name (its first digit run wins); elsewhere the response name is read."""
    if china:
        digits = _DIGITS.search(reference_name)
        if digits:
            return f"Line {int(digits.group())}"
        return _PAREN_LAZY.sub("", reference_name).replace("地铁", "")
    for pattern in _FOREIGN_LINE_PATTERNS:
        found = pattern.search(response_name)
        if found:
            return f"Line {found.group(1)}"
    found = _FOREIGN_SHORT_CODE.search(response_name)
    if found:
        code = found.group(1)
        return f"Line {'B' if code == 'B1' and city == 'rome' else code}"
    return response_name


def _first_count(text: str) -> int | None:
    """int(first digit run), 0 if none; None when it has too many significant digits to compare as a float."""
    found = _DIGITS.search(text)
    if not found:
        return 0
    digits = found.group()
    if len(digits) <= _MAX_COUNT_DIGITS:
        return int(digits)
    first_nonzero = next((i for i, ch in enumerate(digits) if unicodedata.decimal(ch)), len(digits))
    significant = digits[first_nonzero:]
    return int(significant or "0") if len(significant) <= _MAX_COUNT_DIGITS else None


def _count_points(text: str, reference_count: int) -> float:
    """NV term of one pair: 4 if exact, else 4 - 4·|m-r|/r floored at 0 (0 when r = 0)."""
    guess = _first_count(text)
    if guess is None:
        return 0
    error = abs(guess - reference_count)
    if error == 0:
        return 4
    if reference_count == 0:
        return 0
    return max(0, 4 - (error / reference_count) * 4)


def _pair_stops(reference: Mapping, section: Section, china: bool, long: bool) -> int:
    """ST term of one pair: reference stops get the station suffix; all but china long read the arrival slip."""
    mark, suffix = ("站", "站") if china else ("Station", " Station")
    dep = reference["departure_stop"]
    ref_dep = dep if dep.endswith(mark) else dep + suffix
    if china and long:
        arr = reference["arrival_stop"]
        ref_arr = arr if arr.endswith(mark) else arr + suffix
    else:
        ref_arr = dep if dep.endswith(mark) else reference["arrival_stop"] + suffix
    return int(clean_k(ref_dep) == clean_k(section.dep)) + int(clean_k(ref_arr) == clean_k(section.arr))


def _score_route(
    sections: list[Section], plan: list, *, long: bool, number_template: bool, china: bool, city: str, where: str
) -> tuple[float, dict]:
    """Uncapped s_R terms for one reference route: (DA + RN + ST [+ VS + NV], per-figure dict); E must hold."""
    rn = st = vm = nv = 0
    union: set[str] = set()
    inter: set[str] = set()
    for section, reference in zip(sections, plan, strict=False):  # pairs i = 1..min(P, |R|)
        line = reference_line_name(reference["route_name"] if china else "", section.name, china, city)
        names_match = clean_k(line) == clean_k(section.name)
        rn += 2 * names_match
        st += _pair_stops(reference, section, china, long)
        if long and number_template:
            nv += _count_points(section.tail, int(reference["num_via_stops"]))
        elif long:
            items = section.tail.split(",") if "站" in section.tail else []
            if not china and (items or names_match):
                raise ValueError(
                    f"{where}: the via-stops template is only defined for china (references outside china carry no "
                    "via-stop names; the released code crashes here); use the number-of-via-stops question"
                )
            ref_via = [v if v.endswith("站") else v + "站" for v in reference["via_stops"]]
            vm += sum(item in ref_via for item in items)
            if names_match:
                union |= set(ref_via) | set(items)
                inter |= set(ref_via) & set(items)
    figures = {"departure_arrival_score": 1, "route_name_score": rn, "stops_score": st}
    if not long:
        return 1 + rn + st, figures
    iou = len(inter) / len(union) if union else 0
    figures["num_via_stop_score"] = min(10, nv)
    figures["via_stops_score"] = (iou * 10 + min(10, vm)) / 2
    return 1 + rn + st + (figures["via_stops_score"] + figures["num_via_stop_score"]), figures


def _describe(sample: Mapping) -> str:
    """Name a sample in error messages: country/city and the asked stations."""
    return (
        f"ReasonMap sample {sample.get('country')}/{sample.get('city')} "
        f"{sample.get('station_1')!r} -> {sample.get('station_2')!r}"
    )


def _field(sample: Mapping, key: str, where: str) -> object:
    """sample[key], or a ValueError naming the sample and the missing field."""
    if key not in sample:
        raise ValueError(f"{where}: missing field {key!r} (a ReasonMap row needs it; see EVAL_SPEC §1)")
    return sample[key]


def _metro(sample: Mapping, metro_root: str | None, where: str) -> Mapping[str, list[str]]:
    """The city's {line: [stations]} with the four suffixes deleted, from a mapping, JSON text or a file path."""
    value = _field(sample, "json", where)
    if isinstance(value, str) and value.lstrip().startswith("{"):
        value = json.loads(value)
    if isinstance(value, Mapping):
        return {line: [strip_suffixes(s) for s in stations] for line, stations in value.items()}
    if not isinstance(value, (str, Path)):
        raise ValueError(f"{where}: field 'json' must be a {{line: [stations]}} mapping or a path, got {value!r}")
    path = resolve_metro_path(value, metro_root)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{where}: metro file {path} not found (pass metro_root, e.g. the stations folder)")
    return load_metro(path)


def _routes(sample: Mapping, where: str) -> Mapping[str, list]:
    """The reference routes {key: [section, ...]}, from a mapping or JSON text; non-empty."""
    routes = _field(sample, "routes", where)
    if isinstance(routes, str):
        routes = json.loads(routes)
    if not isinstance(routes, Mapping) or not routes:
        raise ValueError(f"{where}: 'routes' must be a non-empty {{key: [section, ...]}} mapping, got {routes!r}")
    return routes


def score_reasonmap(response: str, sample: Mapping, *, question: str = "short", metro_root: str | None = None) -> dict:
    """Score one ReasonMap answer text (EVAL_SPEC §3-§5) as the released code does.

    Returns a JSON-ready dict: `correct` (0/1), `map_score` (max over reference routes: short <= 20,
    long <= 40), `departure_arrival_score`, `route_name_score`, `stops_score` and, for question="long",
    `num_via_stop_score` and `via_stops_score`; the sub-figures come from the last route reaching the max.
    """
    if question not in QUESTIONS:
        raise ValueError(f"question must be one of {QUESTIONS}, got {question!r}")
    where = _describe(sample)
    long = question == "long"
    number_template = long and "Number of Via Stops:" in str(_field(sample, "question_long", where))
    metro = _metro(sample, metro_root, where)
    sections = parse_sections(response, question, number_template)
    names = ["departure_arrival_score", "route_name_score", "stops_score"]
    names += ["num_via_stop_score", "via_stops_score"] if long else []
    result = {"correct": 0, "map_score": 0} | dict.fromkeys(names, 0)
    if not sections:
        return result
    station_1, station_2 = str(_field(sample, "station_1", where)), str(_field(sample, "station_2", where))
    result["correct"] = route_is_correct(sections, station_1, station_2, metro)
    china = _field(sample, "country", where) == "china"
    cap = 20 if long else 10
    ends_ok = endpoints_match(sections, station_1, station_2)
    for plan in _routes(sample, where).values():
        raw, figures = (0, dict.fromkeys(names, 0))
        if ends_ok:
            try:
                raw, figures = _score_route(
                    sections,
                    plan,
                    long=long,
                    number_template=number_template,
                    china=china,
                    city=str(sample.get("city")),
                    where=where,
                )
            except (KeyError, TypeError) as err:
                raise ValueError(
                    f"{where}: malformed reference route {plan!r} ({err!r}); each section needs route_name, "
                    "departure_stop, arrival_stop, via_stops and num_via_stops"
                ) from err
        score = min(cap, raw) + cap * result["correct"]
        if score >= result["map_score"]:
            result |= figures
            result["map_score"] = score
    return result
