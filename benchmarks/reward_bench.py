"""Reward throughput on a realistic mix of the six question types (real line lists), and worst cases on 1 MB inputs.

Run: `python benchmarks/reward_bench.py --stations ../shared/reasonmap/stations`. Prints scores per second for the
cached scorer and for a baseline that re-reads the metro JSON on every call (as the released reward does), then the
worst time per adversarial 1 MB response over all types and both variants.
"""

import argparse
import random
import time
from pathlib import Path

from rewardmap.reward import compute_score, load_metro

TYPES = ("TorF1", "TorF2", "Counting1", "Counting2", "Counting3", "planning")
ANSWER_FORMS = ("\\boxed{%s}", "The answer is %s.", "So the final answer is %s", "**Answer:** $\\boxed{%s}$")


def _route(metro: dict, rng: random.Random, transfers: int) -> tuple[str, str, list[tuple[str, str, str]]] | None:
    """A real route with `transfers` changes: each leg rides a line to a stop shared with the next line."""
    line = rng.choice(list(metro))
    stop = rng.choice(metro[line])
    start, legs = stop, []
    for _ in range(transfers):
        shared = [
            (s, other) for s in metro[line] for other in metro if other != line and s in metro[other] and s != stop
        ]
        if not shared:
            return None
        change, next_line = rng.choice(shared)
        legs.append((line, stop, change))
        line, stop = next_line, change
    end = rng.choice([s for s in metro[line] if s != stop] or [stop])
    legs.append((line, stop, end))
    return start, end, legs


def _planning_case(path: str, metro: dict, rng: random.Random) -> tuple[str, dict] | None:
    transfers = rng.choice((0, 1, 2))
    found = _route(metro, rng, transfers)
    if found is None:
        return None
    start, end, legs = found
    if rng.random() < 0.4:  # a wrong answer: wrong arrival, or a line name that does not exist
        line, dep, _ = legs[-1]
        legs[-1] = (
            (line, dep, rng.choice(metro[rng.choice(list(metro))])) if rng.random() < 0.5 else ("Line 99", dep, end)
        )
    body = "--\n".join(f"Route Name: {line}\nDeparture Stop: {a}\nArrival Stop: {b}\n" for line, a, b in legs)
    sample = {"type": "planning", "question_transfer_count": transfers, "station_1": start, "station_2": end}
    return "Let me trace the lines on the map.\n" + body, {**sample, "json": path}


def _answer_case(path: str, metro: dict, rng: random.Random, kind: str) -> tuple[str, dict]:
    line = rng.choice(list(metro))
    stations = metro[line]
    answer = (
        rng.randrange(4) if kind == "Counting1" else rng.randrange(2) if kind.startswith("TorF") else len(stations)
    )
    if kind.startswith("TorF"):
        given = ("yes" if answer == 1 else "no") if rng.random() < 0.6 else rng.choice(("yes", "no"))
    elif kind == "Counting1":
        given = "ABCD"[answer] if rng.random() < 0.6 else rng.choice("ABCD")
    else:
        given = str(answer + (0 if rng.random() < 0.6 else rng.choice((-1, 1))))
    reasoning = f"Line {line} runs through {', '.join(stations[:6])}.\n"
    if kind == "Counting1":
        reasoning += f"Stops: [{', '.join(stations[1:4])}]\n"
    sample = {"type": kind, "answer": answer, "station_1": stations[0], "station_2": stations[-1], "json": path}
    return reasoning + rng.choice(ANSWER_FORMS) % given, sample


def build_mix(stations: Path, count: int, seed: int) -> list[tuple[str, dict]]:
    """`count` (response, sample) pairs, the six types in turn, over every city file under `stations`."""
    rng = random.Random(seed)
    files = sorted(stations.glob("*/*.json"))
    if not files:
        raise FileNotFoundError(f"no metro files under {stations}; pass --stations <reasonmap>/stations")
    cases: list[tuple[str, dict]] = []
    while len(cases) < count:
        path = rng.choice(files)
        metro = load_metro(path)
        kind = TYPES[len(cases) % len(TYPES)]
        case = (
            _planning_case(str(path), metro, rng) if kind == "planning" else _answer_case(str(path), metro, rng, kind)
        )
        if case is not None:
            response, sample = case
            cases.append((response, {**sample, "city": path.stem, "difficulty_city": rng.choice(("easy", "hard"))}))
    return cases


def rate(cases: list[tuple[str, dict]], variant: str, reload: bool) -> float:
    """Scores per second; `reload` re-reads the metro file on each call through the uncached loader."""
    start = time.perf_counter()
    for response, sample in cases:
        if reload:
            sample = {**sample, "metro": load_metro.__wrapped__(sample["json"])}
        compute_score(response, sample, variant=variant)
    return len(cases) / (time.perf_counter() - start)


def adversarial(size: int) -> dict[str, str]:
    """Responses of about `size` characters that make naive parsers (or the released regexes) slow."""
    head = "Route Name: Line 1\nDeparture Stop: 南礼士路站\nArrival Stop: "
    return {
        "many ( without )": head + "(" * size,
        "many `Route Name: ` on one line": "Route Name: " * (size // 12) + "Departure Stop: x Arrival Stop: y",
        "many OXED{": "OXED{" * (size // 5),
        "deep braces": "\\boxed{" + "{" * (size // 2) + "}" * (size // 2),
        "brace pairs after \\text{": "\\boxed{\\text{" + "{}" * (size // 2),
        "many \\text{": "\\boxed{" + "\\text{" * (size // 6),
        "many `--`": "--" * (size // 2),
        "25k route sections": (head + "复兴门站\n--") * (size // 40),
        "Stops: [ 1M commas": "Stops: [" + "," * size + "]",
        "NUL and lone surrogates": "\x00\ud800" * (size // 2),
    }


def worst_ms(response: str, samples: list[dict]) -> float:
    worst = 0.0
    for sample in samples:
        for variant in ("released", "corrected"):
            start = time.perf_counter()
            compute_score(response, sample, variant=variant, counting1_detail=True)
            worst = max(worst, time.perf_counter() - start)
    return worst * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "reasonmap" / "stations"
    parser.add_argument("--stations", type=Path, default=default, help="folder of <country>/<city>.json line lists")
    parser.add_argument("--count", type=int, default=30_000, help="responses in the throughput mix")
    parser.add_argument("--baseline-count", type=int, default=1_500, help="responses for the re-reading baseline")
    parser.add_argument("--size", type=int, default=1_000_000, help="characters per adversarial response")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mix")
    args = parser.parse_args()

    cases = build_mix(args.stations, args.count, args.seed)
    print(f"{'scorer':<44} {'scores/s':>10}")
    for variant in ("released", "corrected"):
        rate(cases[:2000], variant, reload=False)  # warm the caches: metro files, station keys
        print(f"{'ours, cached, ' + variant:<44} {rate(cases, variant, reload=False):>10,.0f}")
        baseline = rate(cases[: args.baseline_count], variant, reload=True)
        print(f"{'baseline, json.load per call, ' + variant:<44} {baseline:>10,.0f}")

    beijing = str(args.stations / "china" / "beijing.json")
    common = {"city": "beijing", "difficulty_city": "hard", "json": beijing, "answer": 1}
    samples = [
        {
            **common,
            "type": "planning",
            "question_transfer_count": 1,
            "station_1": "南礼士路站",
            "station_2": "阜成门站",
        },
        {**common, "type": "Counting1", "station_1": "军事博物馆站", "station_2": "复兴门站"},
        {**common, "type": "TorF1"},
        {**common, "type": "Counting2"},
    ]
    print(f"\n{'adversarial response (' + format(args.size, ',') + ' chars)':<44} {'worst ms':>10}")
    for name, response in adversarial(args.size).items():
        print(f"{name:<44} {worst_ms(response, samples):>10.1f}")


if __name__ == "__main__":
    main()
