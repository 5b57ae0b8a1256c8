"""Synthetic ReasonMap benchmark rows: short and long route questions, reference routes, FSCCS/ReasonMap's layout."""

import base64
import logging
import random

from rewardmap.synth.network import Network, metro_json, min_transfer_routes, min_transfers, station_lines

logger = logging.getLogger(__name__)

_FORMAT = (
    "Answer with one section per line ridden, in travel order, consecutive sections separated by a line holding only "
    "--, each section in this format:\nRoute Name: <line name>\nDeparture Stop: <stop name>\nArrival Stop: <stop name>"
)
_ASK = (
    "Please solve the multimodal problem. According to the subway map of {city}, how do you travel from {s1} to {s2}? "
)
SHORT = _ASK + _FORMAT
LONG_NUMBER = _ASK + _FORMAT + "\nNumber of Via Stops: <how many stops the section passes between the two>"
LONG_VIA = _ASK + _FORMAT + "\nVia Stops: <the stops the section passes, comma-separated: stop,stop>"
CHINA_TRANSFER = "（换乘站）"


def _chinese(name: str) -> str:
    """A station name in the china convention of the benchmark: `站` instead of ` Station`."""
    return name.removesuffix(" Station") + "站"


def _line_list(net: Network, china: bool) -> dict[str, list[str]]:
    """The city's {line: [stations]} as the real files write it: ` (Transfer Station)` or `（换乘站）` marks."""
    if not china:
        return metro_json(net)
    on_lines = station_lines(net.lines)
    return {
        line: [_chinese(s) + (CHINA_TRANSFER if len(on_lines[s]) > 1 else "") for s in stations]
        for line, stations in net.lines.items()
    }


def _routes(net: Network, s1: str, s2: str, china: bool) -> dict[str, list[dict]]:
    """Reference routes {route_k: [section, ...]}: stops without ` Station` / `站` as the map services give them;
    china route names like `地铁2号线(A--B)` (the scorer reads their number)."""
    routes = {}
    for k, route in enumerate(min_transfer_routes(net, s1, s2), start=1):
        sections = []
        for section in route:
            stations = net.lines[section.line]
            name = section.line
            if china:
                ends = [s.removesuffix(" Station") for s in (stations[0], stations[-1])]
                name = f"地铁{section.line.removeprefix('Line ')}号线({ends[0]}--{ends[1]})"
            sections.append(
                {
                    "route_name": name,
                    "departure_stop": section.departure.removesuffix(" Station"),
                    "arrival_stop": section.arrival.removesuffix(" Station"),
                    "via_stops": [v.removesuffix(" Station") for v in section.via],
                    "num_via_stops": len(section.via),
                }
            )
        routes[f"route_{k}"] = sections
    return routes


def reasonmap_rows(
    net: Network, difficulty: str, rng: random.Random, count: int, figure: str | bytes, china: bool
) -> list[dict]:
    """Up to `count` question pairs between distinct station pairs of one city, in the ReasonMap layout.

    `figure`: the map's path (kept as it is) or its PNG bytes (embedded as base64). `china` switches to the
    benchmark's china convention (country `china`, `站` names, `（换乘站）`, numbered reference names), whose long
    questions alternate the `Number of Via Stops` and `Via Stops` templates; otherwise (country `synthland`, like the
    benchmark's cities outside china) every long question uses the number template.
    """
    stations = sorted(station_lines(net.lines))
    pairs = [(a, b) for a in stations for b in stations if a != b]
    rng.shuffle(pairs)
    lines = _line_list(net, china)
    marks = CHINA_TRANSFER if china else " (Transfer Station)"
    figure = base64.b64encode(figure).decode("ascii") if isinstance(figure, bytes) else figure
    rows = []
    for s1, s2 in pairs[:count]:
        transfers = min_transfers(net.lines, s1, s2) or 0
        names = {"s1": _chinese(s1), "s2": _chinese(s2)} if china else {"s1": s1, "s2": s2}
        long = LONG_VIA if china and len(rows) % 2 else LONG_NUMBER
        rows.append(
            {
                "question_short": SHORT.format(city=net.city, **names),
                "question_long": long.format(city=net.city, **names),
                "routes": _routes(net, s1, s2, china),
                "figure": figure,
                "json": lines,
                "country": "china" if china else "synthland",
                "city": net.city,
                "station_1": names["s1"],
                "station_2": names["s2"],
                "difficulty_city": difficulty,
                "difficulty_question": ("easy", "middle", "hard")[min(transfers, 2)],
                "city_line_count": len(net.lines),
                "city_transfer_count": sum(marks in s for members in lines.values() for s in members),
                "question_transfer_count": transfers,
            }
        )
    return rows
