"""Synthetic networks: names, metro JSON suffixes, connectivity and minimum-transfer routing against brute force."""

import itertools
import random
from collections import deque

import pytest

from rewardmap.synth.network import (
    BRANCH_SUFFIX,
    TRANSFER_SUFFIX,
    difficulty_of,
    generate_names,
    generate_network,
    metro_json,
    min_transfer_routes,
    min_transfers,
    ride,
    station_lines,
)

NETWORKS = [generate_network(random.Random(i), f"city{i}", ("easy", "middle", "hard")[i % 3]) for i in range(12)]


def state_bfs(lines: dict[str, list[str]], loops: frozenset[str], s1: str, s2: str) -> int:
    """Brute force: 0-1 BFS over (station, line) states; riding to a neighbour costs 0, changing line costs 1."""
    best: dict[tuple[str, str], int] = {}
    queue = deque((0, (s1, line)) for line, st in lines.items() if s1 in st)
    while queue:
        cost, (station, line) = queue.popleft()
        if best.get((station, line), 1 << 30) <= cost:
            continue
        best[(station, line)] = cost
        stations = lines[line]
        for i, s in enumerate(stations):
            if s == station:
                for j in (i - 1, i + 1):
                    if 0 <= j < len(stations):
                        queue.appendleft((cost, (stations[j], line)))
        for other, st in lines.items():
            if other != line and station in st:
                queue.append((cost + 1, (station, other)))
    return min(c for (s, _), c in best.items() if s == s2)


def test_names_are_distinct_and_avoid_normalised_substrings() -> None:
    names = generate_names(random.Random(0), 300)
    keys = [n.lower().replace(" ", "") for n in names]
    assert len(set(keys)) == 300
    for key in keys:
        assert not any(bad in key for bad in ("road", "metro", "station", "tech", "univ", "(", "-"))


@pytest.mark.parametrize("net", NETWORKS, ids=lambda n: n.city)
def test_network_shape(net) -> None:
    on_lines = station_lines(net.lines)
    assert set(net.lines) == {f"Line {i}" for i in range(1, len(net.lines) + 1)}
    assert set(on_lines) == set(net.coords)
    assert len(set(net.coords.values())) == len(net.coords), "one station per grid point"
    assert all(s.endswith(" Station") for s in on_lines)
    for line, stations in net.lines.items():
        ring = stations[:-1] if line in net.loops else stations
        assert (stations[0] == stations[-1]) == (line in net.loops)
        assert len(set(ring)) == len(ring) >= 3
        for a, b in itertools.pairwise(stations):  # consecutive stations are grid neighbours
            (ax, ay), (bx, by) = net.coords[a], net.coords[b]
            assert max(abs(ax - bx), abs(ay - by)) == 1
    assert difficulty_of(len(net.lines), len(on_lines)) in ("easy", "middle", "hard")


@pytest.mark.parametrize("net", NETWORKS, ids=lambda n: n.city)
def test_metro_json_suffixes(net) -> None:
    on_lines = station_lines(net.lines)
    metro = metro_json(net)
    assert list(metro) == list(net.lines)
    for line, entries in metro.items():
        for raw, entry in zip(net.lines[line], entries, strict=True):
            assert entry.endswith(TRANSFER_SUFFIX) or entry.endswith(BRANCH_SUFFIX) or entry == raw
            assert (TRANSFER_SUFFIX in entry) == (len(on_lines[raw]) > 1)
            assert (BRANCH_SUFFIX in entry) == (raw in net.branch_starts)
            assert entry.replace(TRANSFER_SUFFIX, "").replace(BRANCH_SUFFIX, "") == raw


def test_branches_and_loops_occur() -> None:
    assert any(net.loops for net in NETWORKS)
    assert any(net.branch_starts for net in NETWORKS)
    for net in NETWORKS:
        for start in net.branch_starts:
            assert len(station_lines(net.lines)[start]) >= 2


def test_ride_on_loop_takes_shorter_way() -> None:
    loop = ["A", "B", "C", "D", "E", "F", "A"]
    assert ride(loop, True, "B", "F") == ["B", "A", "F"]
    assert ride(loop, True, "F", "B") == ["F", "A", "B"]
    assert ride(loop, True, "A", "C") == ["A", "B", "C"]
    assert ride(["A", "B", "C"], False, "C", "A") == ["C", "B", "A"]


@pytest.mark.parametrize("net", NETWORKS[:6], ids=lambda n: n.city)
def test_min_transfers_matches_state_bfs_and_routes_are_valid(net) -> None:
    stations = sorted(station_lines(net.lines))
    for s1, s2 in itertools.permutations(stations[::2], 2):
        hops = min_transfers(net.lines, s1, s2)
        assert hops == state_bfs(net.lines, net.loops, s1, s2), (s1, s2)
        routes = min_transfer_routes(net, s1, s2)
        assert routes
        for route in routes:
            assert len(route) == hops + 1
            assert route[0].departure == s1 and route[-1].arrival == s2
            for sec, nxt in itertools.pairwise(route):
                assert sec.arrival == nxt.departure
            for sec in route:
                path = ride(net.lines[sec.line], sec.line in net.loops, sec.departure, sec.arrival)
                assert sec.departure != sec.arrival and list(sec.via) == path[1:-1]


def test_route_errors_name_the_stations() -> None:
    net = NETWORKS[0]
    station = sorted(net.coords)[0]
    with pytest.raises(ValueError, match="no route"):
        min_transfer_routes(net, station, station)
    with pytest.raises(ValueError, match="difficulty"):
        generate_network(random.Random(0), "x", "extreme")
