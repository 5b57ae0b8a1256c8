"""Procedural transit networks on a grid (lines, branches, loops, transfers) and minimum-transfer routing."""

import itertools
import logging
import random
from collections import deque
from dataclasses import dataclass

logger = logging.getLogger(__name__)

TRANSFER_SUFFIX = " (Transfer Station)"
BRANCH_SUFFIX = " (Branch-starting Station)"
GRID = (12, 9)
# The eight grid directions, counter-clockwise from east; turning by k steps = k * 45 degrees.
DIRECTIONS = ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1))
# Name parts are chosen so that the reward's name normalisation leaves every name unchanged (REWARD_SPEC §3):
# no "road", "metro", "station", "tech", "univ" substrings, no brackets, no hyphens.
_HEADS = (
    "Ash", "Bel", "Bram", "Carl", "Dun", "Elm", "Fair", "Glen", "Hal", "Kin", "Lin", "Mar", "Nor", "Oak",
    "Pem", "Quen", "Ros", "Sel", "Tam", "Wen", "Alder", "Bright", "Cole", "Dray", "Fern", "Gras", "Holt",
    "Ivy", "Lark", "Mill", "New", "Pen", "Red", "Stan", "Thorn", "Ver", "Wil", "York", "Bax", "Corn",
)  # fmt: skip
_TAILS = (
    "ford", "wick", "ton", "by", "mere", "dale", "ley", "bury", "field", "stead", "more", "worth", "holm",
    "wood", "brook", "haven", "combe", "gate", "well", "bridge", "moor", "hurst", "den", "ham", "port",
)  # fmt: skip
_SECONDS = ("Park", "Hill", "Square", "Green", "Market", "Cross", "Quay", "North", "East", "West", "South")
_FORBIDDEN = ("road", "metro", "station", "tech", "univ", "asian games village")
_LINE_SHAPES = {  # difficulty -> (line count range, stations per line range, loop probability, branch probability)
    "easy": ((2, 3), (5, 8), 0.0, 0.3),
    "middle": ((4, 5), (6, 9), 0.4, 0.5),
    "hard": ((6, 7), (7, 10), 0.6, 0.7),
}

Point = tuple[int, int]


@dataclass(frozen=True)
class Network:
    """A city's lines in file order: station names (with " Station"), loops repeat their first station last."""

    city: str
    lines: dict[str, list[str]]
    coords: dict[str, Point]
    loops: frozenset[str]
    branch_starts: frozenset[str]


@dataclass(frozen=True)
class Section:
    """One ride of a route: a line, its departure and arrival stations and the stations strictly between."""

    line: str
    departure: str
    arrival: str
    via: tuple[str, ...]


def name_key(name: str) -> str:
    """The comparison key of a generated name: lowercase without spaces (names differ on this key)."""
    return name.lower().replace(" ", "")


def generate_names(rng: random.Random, count: int, second_word_p: float = 0.25) -> list[str]:
    """Pronounceable, distinct place names (no " Station"), e.g. "Brambrook" or "Fernwick Quay"."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        name = rng.choice(_HEADS) + rng.choice(_TAILS)
        if rng.random() < second_word_p:
            name += " " + rng.choice(_SECONDS)
        key = name_key(name)
        if key not in seen and not any(bad in key for bad in _FORBIDDEN):
            seen.add(key)
            names.append(name)
    return names


def _edge(p: Point, q: Point) -> frozenset[Point]:
    return frozenset((p, q))


def _edge_allowed(p: Point, q: Point, points: set[Point], edges: set[frozenset[Point]]) -> bool:
    """A step p->q stays in the grid, does not revisit the line, reuse an edge or cross a diagonal in an X."""
    if not (0 <= q[0] < GRID[0] and 0 <= q[1] < GRID[1]) or q in points or _edge(p, q) in edges:
        return False
    dx, dy = q[0] - p[0], q[1] - p[1]
    return not (dx and dy and _edge((p[0] + dx, p[1]), (p[0], p[1] + dy)) in edges)


def _walk(rng: random.Random, start: Point, heading: int, steps: int, points: set[Point], edges: set) -> list[Point]:
    """A mostly straight walk of up to `steps` new points; it stops early when boxed in."""
    path, here = [], start
    for _ in range(steps):
        turns = [(0, 8.0), (1, 1.5), (-1, 1.5), (2, 0.4), (-2, 0.4)]
        options = []
        for turn, weight in turns:
            d = (heading + turn) % 8
            nxt = (here[0] + DIRECTIONS[d][0], here[1] + DIRECTIONS[d][1])
            if _edge_allowed(here, nxt, points, edges):
                options.append((d, nxt, weight))
        if not options:
            break
        heading, nxt, _ = rng.choices(options, weights=[o[2] for o in options])[0]
        edges.add(_edge(here, nxt))
        points.add(nxt)
        path.append(nxt)
        here = nxt
    return path


def _loop_points(rng: random.Random) -> list[Point]:
    """A rectangle around the grid centre, clockwise, first point repeated last."""
    w, h = rng.randint(3, 5), rng.randint(2, 4)
    x0, y0 = (GRID[0] - w) // 2 + rng.randint(-1, 1), (GRID[1] - h) // 2 + rng.randint(-1, 1)
    top = [(x0 + i, y0) for i in range(w)]
    right = [(x0 + w, y0 + i) for i in range(h)]
    bottom = [(x0 + w - i, y0 + h) for i in range(w)]
    left = [(x0, y0 + h - i) for i in range(h)]
    ring = top + right + bottom + left
    return ring + [ring[0]]


def _new_line(rng: random.Random, anchor: Point, length: int, edges: set) -> list[Point]:
    """A line through `anchor`: two walks in opposite directions, joined; edges are committed on success."""
    trial_edges = set(edges)
    points = {anchor}
    heading = rng.randrange(8)
    ahead = rng.randint(length // 3, length - 1)
    forward = _walk(rng, anchor, heading, ahead, points, trial_edges)
    backward = _walk(rng, anchor, (heading + 4) % 8, length - 1 - len(forward), points, trial_edges)
    path = backward[::-1] + [anchor] + forward
    if len(path) < 4:
        return []
    edges |= trial_edges
    return path


def _branch(rng: random.Random, parent: list[Point], length: int, edges: set, shared: set) -> list[Point]:
    """A spur that starts at a mid-line point of `parent` that no other line uses."""
    candidates = [p for p in parent[2:-2] if p not in shared]
    if not candidates:
        return []
    start = rng.choice(candidates)
    trial_edges = set(edges)
    path = [start] + _walk(rng, start, rng.randrange(8), length - 1, {start}, trial_edges)
    if len(path) < 3:
        return []
    edges |= trial_edges
    return path


def _layout(rng: random.Random, difficulty: str) -> tuple[list[list[Point]], set[int], set[Point]]:
    """Grid paths for every line, the indices of loop lines, and the branch-starting points."""
    (lo, hi), (min_len, max_len), loop_p, branch_p = _LINE_SHAPES[difficulty]
    line_count = rng.randint(lo, hi)
    paths: list[list[Point]] = []
    edges: set[frozenset[Point]] = set()
    loops, branch_points = set(), set()
    if rng.random() < loop_p:
        paths.append(_loop_points(rng))
        edges |= {_edge(a, b) for a, b in itertools.pairwise(paths[0])}
        loops.add(0)
    branch_tries = 10 if rng.random() < branch_p else 0
    for _attempt in range(200):
        if len(paths) >= line_count:
            break
        busy = {p for path in paths for p in path}
        shared = {p for p in busy if sum(p in path for path in paths) > 1}
        parents = [path for i, path in enumerate(paths) if i not in loops and len(path) >= 5]
        if branch_tries and parents and not branch_points:
            branch_tries -= 1
            path = _branch(rng, rng.choice(parents), rng.randint(3, 5), edges, shared)
            if path:
                branch_points.add(path[0])
        else:
            # New lines cross the network mid-line, so that two lines never just meet end to end.
            interior = sorted({p for path in paths for p in path[1:-1]})
            anchor = rng.choice(interior) if interior else (rng.randrange(2, GRID[0] - 2), rng.randrange(2, 6))
            path = _new_line(rng, anchor, rng.randint(min_len, max_len), edges)
        if path:
            paths.append(path)
    return paths, loops, branch_points


def difficulty_of(line_count: int, station_count: int) -> str:
    """City difficulty from network size: easy <= 3 lines and <= 30 stations; hard >= 6 lines or >= 50 stations."""
    if line_count >= 6 or station_count >= 50:
        return "hard"
    if line_count <= 3 and station_count <= 30:
        return "easy"
    return "middle"


def generate_network(rng: random.Random, city: str, difficulty: str) -> Network:
    """A connected network whose size aims at `difficulty` (easy, middle, hard); names are unique per city."""
    if difficulty not in _LINE_SHAPES:
        raise ValueError(f"difficulty {difficulty!r} for city {city!r} is not one of {sorted(_LINE_SHAPES)}")
    paths, loops, branch_points = _layout(rng, difficulty)
    points = sorted({p for path in paths for p in path})
    names = dict(zip(points, (n + " Station" for n in generate_names(rng, len(points))), strict=True))
    lines = {f"Line {i + 1}": [names[p] for p in path] for i, path in enumerate(paths)}
    return Network(
        city=city,
        lines=lines,
        coords={names[p]: p for p in points},
        loops=frozenset(f"Line {i + 1}" for i in loops),
        branch_starts=frozenset(names[p] for p in branch_points),
    )


def station_lines(lines: dict[str, list[str]]) -> dict[str, list[str]]:
    """Station -> the lines through it, in file order."""
    result: dict[str, list[str]] = {}
    for line, stations in lines.items():
        for station in dict.fromkeys(stations):
            result.setdefault(station, []).append(line)
    return result


def metro_json(network: Network) -> dict[str, list[str]]:
    """The real files' format: stations on 2+ lines carry TRANSFER_SUFFIX, branch starts also BRANCH_SUFFIX."""
    on_lines = station_lines(network.lines)
    out = {}
    for line, stations in network.lines.items():
        out[line] = [
            s
            + (TRANSFER_SUFFIX if len(on_lines[s]) > 1 else "")
            + (BRANCH_SUFFIX if s in network.branch_starts else "")
            for s in stations
        ]
    return out


def ride(stations: list[str], is_loop: bool, a: str, b: str) -> list[str]:
    """Stations from a to b along one line, both included; on a loop the shorter way (ties: file direction)."""
    ring = stations[:-1] if is_loop else stations
    i, j = ring.index(a), ring.index(b)
    if not is_loop:
        return ring[i : j + 1] if i <= j else ring[j : i + 1][::-1]
    n = len(ring)
    forward = [ring[(i + k) % n] for k in range((j - i) % n + 1)]
    backward = [ring[(i - k) % n] for k in range((i - j) % n + 1)]
    return forward if len(forward) <= len(backward) else backward


def min_transfers(lines: dict[str, list[str]], s1: str, s2: str) -> int | None:
    """Fewest transfers from s1 to s2 (BFS over lines; a transfer moves to a line sharing a station); None if cut."""
    on_lines = station_lines(lines)
    dist = {line: 0 for line in on_lines.get(s1, [])}
    queue = deque(dist)
    while queue:
        line = queue.popleft()
        for station in lines[line]:
            for other in on_lines[station]:
                if other not in dist:
                    dist[other] = dist[line] + 1
                    queue.append(other)
    reachable = [dist[line] for line in on_lines.get(s2, []) if line in dist]
    return min(reachable) if reachable else None


def _line_sequences(lines: dict[str, list[str]], s1: str, s2: str, hops: int) -> list[list[str]]:
    """Every sequence of hops + 1 distinct lines from s1 to s2 in which consecutive lines share a station."""
    sets = {line: set(stations) for line, stations in lines.items()}
    found: list[list[str]] = []

    def extend(seq: list[str]) -> None:
        if len(seq) == hops + 1:
            if s2 in sets[seq[-1]]:
                found.append(seq)
            return
        for line in lines:
            if line not in seq and sets[line] & sets[seq[-1]]:
                extend(seq + [line])

    for line in lines:
        if s1 in sets[line]:
            extend([line])
    return found


def min_transfer_routes(network: Network, s1: str, s2: str, limit: int = 3) -> list[list[Section]]:
    """Up to `limit` minimum-transfer routes from s1 to s2, fewest stops first (ties: line order)."""
    hops = min_transfers(network.lines, s1, s2)
    if hops is None or s1 == s2:
        raise ValueError(f"no route from {s1!r} to {s2!r} in city {network.city!r}: pick two connected stations")
    routes = []
    for seq in _line_sequences(network.lines, s1, s2, hops):
        shared = [sorted(set(network.lines[a]) & set(network.lines[b])) for a, b in itertools.pairwise(seq)]
        for transfers in itertools.product(*shared):
            stops = [s1, *transfers, s2]
            sections = []
            for line, a, b in zip(seq, stops, stops[1:], strict=False):
                path = ride(network.lines[line], line in network.loops, a, b)
                sections.append(Section(line, a, b, tuple(path[1:-1])))
            routes.append(sections)
    routes.sort(key=lambda r: (sum(len(s.via) + 1 for s in r), [s.line for s in r]))
    return routes[:limit]
