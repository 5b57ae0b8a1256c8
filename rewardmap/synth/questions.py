"""Questions of the six ReasonMap types on a synthetic network, with answers computed from its graph."""

import json
import logging
import random
from collections.abc import Callable

from rewardmap.synth.network import Network, min_transfer_routes, min_transfers, ride, station_lines

logger = logging.getLogger(__name__)

QUESTION_TYPES = ("TorF1", "TorF2", "Counting1", "Counting2", "Counting3", "planning")
_BOXED = '"\\boxed{}"'
_YES_NO = f"Please solve the problem and put your answer (only answer yes or no) in one {_BOXED}. "
_COUNT = f"Please solve the problem and put your answer in one {_BOXED}. "
_CHOICE = f"Please solve the multiple choice problem and put your answer (one of ABCD) in one {_BOXED}. "
_PLAN = (
    "Please solve the route planning problem. According to the subway map, how do you travel from {s1} to {s2} "
    "with the fewest transfers? Answer with one section per line ridden, in travel order, in exactly this format:\n"
    "Route Name: <line name>\nDeparture Stop: <stop name>\nArrival Stop: <stop name>\n"
    "Separate consecutive sections with a line holding only --. Use the line and stop names shown on the map, "
    "and write nothing after the last Arrival Stop."
)

Question = dict[str, object]


def _row(question: str, qtype: str, answer: int, s1: str = "", s2: str = "", transfers: int = 0) -> Question:
    return {
        "question": question,
        "type": qtype,
        "answer": answer,
        "station_1": s1,
        "station_2": s2,
        "question_transfer_count": transfers,
    }


def _torf1(net: Network, rng: random.Random) -> Question:
    """TorF1: do two stations share a line? Half yes, half no when the city has both kinds of pair."""
    on_lines = station_lines(net.lines)
    stations = sorted(on_lines)
    want_yes = rng.random() < 0.5
    for _ in range(50):
        s1, s2 = rng.sample(stations, 2)
        same = bool(set(on_lines[s1]) & set(on_lines[s2]))
        if same == want_yes:
            break
    text = f"{_YES_NO}According to the subway map, is it true that {s1} is on the same line as {s2}?"
    return _row(text, "TorF1", int(same), s1, s2)


def _torf2(net: Network, rng: random.Random) -> Question:
    """TorF2: is a station on a given line? Half yes, half no."""
    on_lines = station_lines(net.lines)
    station = rng.choice(sorted(on_lines))
    others = [line for line in net.lines if line not in on_lines[station]]
    line = rng.choice(others) if others and rng.random() < 0.5 else rng.choice(on_lines[station])
    text = f"{_YES_NO}According to the subway map, is it true that {station} is on {line}?"
    return _row(text, "TorF2", int(line in on_lines[station]), station)


def _counting1(net: Network, rng: random.Random) -> Question | None:
    """Counting1: intermediate stops between two stations of one non-loop line that is the only line holding both."""
    on_lines = station_lines(net.lines)
    lines = sorted(line for line in net.lines if line not in net.loops)
    for _ in range(100 if lines else 0):
        line = rng.choice(lines)
        s1, s2 = rng.sample(net.lines[line], 2)
        if len(set(on_lines[s1]) & set(on_lines[s2])) == 1:
            break
    else:
        return None
    count = len(ride(net.lines[line], False, s1, s2)) - 2
    distractors = rng.sample([n for n in range(max(count + 8, 12)) if n != count], 3)
    options = sorted([count, *distractors], key=lambda _: rng.random())
    listing = "".join(f"\n{letter}) {n} " for letter, n in zip("ABCD", options, strict=True))
    text = (
        f"{_CHOICE}According to the subway map, how many intermediate stops are there between {s1} and {s2} "
        f"(except for this two stops)? {listing}\n"
    )
    return _row(text, "Counting1", options.index(count), s1, s2)


def _counting2(net: Network, rng: random.Random) -> Question:
    """Counting2: how many lines pass through a station (transfer stations drawn twice as often)."""
    on_lines = station_lines(net.lines)
    stations = sorted(on_lines)
    transfers = [s for s in stations if len(on_lines[s]) > 1]
    station = rng.choice(transfers if transfers and rng.random() < 0.5 else stations)
    text = f"{_COUNT}According to the subway map, how many lines pass through {station}?"
    return _row(text, "Counting2", len(on_lines[station]), station)


def _counting3(net: Network, rng: random.Random) -> Question:
    """Counting3 (global counting): the city's line count, or the stations on one line (a loop's counted once)."""
    if rng.random() < 0.3:
        text = f"{_COUNT}According to the subway map, how many subway lines are there in total?"
        return _row(text, "Counting3", len(net.lines))
    line = rng.choice(sorted(net.lines))
    count = len(set(net.lines[line]))
    text = f"{_COUNT}According to the subway map, how many stations does {line} have in total (including both ends)?"
    return _row(text, "Counting3", count)


def _planning(net: Network, rng: random.Random) -> Question:
    """Planning: a minimum-transfer route between two stations; `routes` holds the best (fewest stops) ones."""
    stations = sorted(station_lines(net.lines))
    s1, s2 = rng.sample(stations, 2)
    routes = {}
    for k, route in enumerate(min_transfer_routes(net, s1, s2), start=1):
        routes[f"route_{k}"] = [
            {
                "route_name": sec.line,
                "departure_stop": sec.departure.removesuffix(" Station"),
                "arrival_stop": sec.arrival.removesuffix(" Station"),
                "via_stops": [v.removesuffix(" Station") for v in sec.via],
                "num_via_stops": len(sec.via),
            }
            for sec in route
        ]
    row = _row(_PLAN.format(s1=s1, s2=s2), "planning", 0, s1, s2, min_transfers(net.lines, s1, s2) or 0)
    row["routes"] = json.dumps(routes, ensure_ascii=False)
    return row


_MAKERS: dict[str, Callable[[Network, random.Random], Question | None]] = {
    "TorF1": _torf1,
    "TorF2": _torf2,
    "Counting1": _counting1,
    "Counting2": _counting2,
    "Counting3": _counting3,
    "planning": _planning,
}


def make_questions(net: Network, rng: random.Random, per_type: int) -> list[Question]:
    """Up to `per_type` distinct questions of each type, in QUESTION_TYPES order (fewer when a city runs out)."""
    if per_type < 1:
        raise ValueError(f"questions_per_type must be >= 1, got {per_type}")
    out: list[Question] = []
    for qtype in QUESTION_TYPES:
        seen: set[str] = set()
        for _ in range(per_type * 5):
            if len(seen) == per_type:
                break
            question = _MAKERS[qtype](net, rng)
            # Counting1 texts differ in their options only: compare the part before the first "?".
            key = str(question["question"]).split("?")[0] if question else ""
            if question and key not in seen:
                seen.add(key)
                out.append(question)
    return out
