"""Route planning: section parsing, correctness and the detail reward, `released` (quirks kept) and `corrected`."""

import logging
import re
from typing import NamedTuple

from rewardmap.reward.metro import LineKeys
from rewardmap.reward.normalize import clean_released, name_key

logger = logging.getLogger(__name__)

_EXACT_LABELS = ("Route Name:", "Departure Stop:", "Arrival Stop:")
_LOWER_LABELS = ("route name:", "departure stop:", "arrival stop:")
_ROUTE_LABEL = re.compile(r"route[ \t]*name[ \t]*:", re.IGNORECASE)
_DEPARTURE_LABEL = re.compile(r"departure[ \t]*stop[ \t]*:", re.IGNORECASE)
_ARRIVAL_LABEL_REVERSED = re.compile(r":[ \t]*pots[ \t]*lavirra", re.IGNORECASE)  # last label = first in reverse


class Section(NamedTuple):
    """One parsed route section: line name and the keys of its departure and arrival stops."""

    name: str
    dep: str
    arr: str


def _value_to_newline(piece: str, label: str) -> str | None:
    """Released `re.search(label + '(.*?)\\n')`: the text after the first label up to a newline, or None."""
    at = piece.find(label)
    if at < 0:
        return None
    end = piece.find("\n", at + len(label))
    return None if end < 0 else piece[at + len(label) : end]


def _released_section(piece: str) -> tuple[Section, bool]:
    """One labelled piece: (name, C(C(dep)), C(C(arr))) and whether it has the exact labels (list A)."""
    name = _value_to_newline(piece, "Route Name: ")
    dep = _value_to_newline(piece, "Departure Stop: ")
    arrival_at = piece.rfind("Arrival Stop:")
    arr = piece[arrival_at + 13 :] if arrival_at >= 0 else piece
    section = Section(
        "Wrong" if name is None else name.strip(),
        clean_released("Wrong" if dep is None else clean_released(dep)),
        clean_released(clean_released(arr.strip())),
    )
    return section, all(label in piece for label in _EXACT_LABELS)


def released_sections(response: str) -> tuple[list[Section], list[Section]]:
    """Released parsing: list A (exact labels, for correctness) and list D (lowercase labels, for detail)."""
    lowered = response.lower()
    if not all(label in lowered for label in _LOWER_LABELS):
        return [], []
    pieces = response.split("--")
    # Lowercasing never creates or removes a "-", so the lowercase pieces stay aligned with the originals.
    kept = [p for p, low in zip(pieces, lowered.split("--"), strict=False) if all(x in low for x in _LOWER_LABELS)]
    parsed: dict[str, tuple[Section, bool]] = {}  # a looping model repeats sections: parse each text once
    list_a, list_d = [], []
    for piece in kept:  # list A is the part of list D with the exact labels; both parse a piece the same way
        section, exact = parsed.get(piece) or parsed.setdefault(piece, _released_section(piece))
        list_d.append(section)
        if exact:
            list_a.append(section)
    return list_a, list_d


def _line_of(piece: str, start: int) -> str:
    end = piece.find("\n", start)
    return (piece[start:] if end < 0 else piece[start:end]).strip()


def _corrected_section(piece: str) -> Section | None:
    """One piece holding all three labels: (name, N-key of dep, N-key of arr), else None."""
    route = _ROUTE_LABEL.search(piece)
    departure = _DEPARTURE_LABEL.search(piece) if route else None
    arrival = _ARRIVAL_LABEL_REVERSED.search(piece[::-1]) if departure else None
    if arrival is None:
        return None
    dep, arr = _line_of(piece, departure.end()), _line_of(piece, len(piece) - arrival.start())
    return Section(_line_of(piece, route.end()), name_key(dep), name_key(arr))


def corrected_sections(response: str) -> list[Section]:
    """Corrected parsing: pieces holding all three labels (any case, spaces/tabs allowed); stops as N-keys."""
    if not (_ROUTE_LABEL.search(response) and _DEPARTURE_LABEL.search(response)):
        return []
    parsed: dict[str, Section | None] = {}
    for piece in response.split("--"):
        if ":" in piece and piece not in parsed:
            parsed[piece] = _corrected_section(piece)
    return [section for piece in response.split("--") if (section := parsed.get(piece)) is not None]


def _line_name(name: str, aliases: bool) -> str:
    if aliases and "八通" in name:
        return "Line 1"
    if aliases and "大兴" in name:
        return "Line 4"
    return name


def route_is_correct(sections: list[Section], keys: LineKeys, start: str, end: str, aliases: bool) -> bool:
    """Endpoints match, every section's line exists and holds both its stops, consecutive sections connect."""
    if not sections or sections[0].dep != start or sections[-1].arr != end:
        return False
    for k, section in enumerate(sections):
        stations = keys.sets.get(_line_name(section.name, aliases))
        if stations is None or section.dep not in stations or section.arr not in stations:
            return False
        if k + 1 < len(sections) and section.arr != sections[k + 1].dep:
            return False
    return True


def route_detail(
    sections: list[Section], keys: LineKeys, start: str, end: str, transfers: float, *, aliases: bool, corrected: bool
) -> float:
    """Detail (§5): 2 for the endpoints, -5 per excess section, +4/+3 per valid line, +1 per transfer; cap 10."""
    if not sections or sections[0].dep != start or sections[-1].arr != end:
        return 0.0
    holding_both = [line for line, stations in keys.sets.items() if start in stations and end in stations]
    excess_from = transfers + 1 if corrected else transfers
    score = 2.0
    for k, section in enumerate(sections, 1):
        if k > excess_from:
            score -= 5
        line = _line_name(section.name, aliases)
        stations = keys.sets.get(line)
        if stations is None:
            continue
        if transfers != 0:
            score += 3
        elif line in (holding_both[:1] if corrected else holding_both):
            score += 4
        connects = k < len(sections) and section.arr == sections[k].dep
        if section.dep in stations and section.arr in stations and connects and not k > transfers:
            score += 1
    return min(score, 10.0)
