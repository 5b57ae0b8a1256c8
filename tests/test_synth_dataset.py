"""Synthetic dataset: schema, answers checked by brute force on the written metro files, splits, determinism, CLI."""

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rewardmap.synth import generate_dataset
from rewardmap.synth.cli import add_arguments, run
from rewardmap.synth.network import min_transfers

FIELDS = [
    "question", "figure", "answer", "type", "country", "city", "station_1", "station_2", "difficulty_city",
    "city_line_count", "city_transfer_count", "question_transfer_count", "json",
]  # fmt: skip
TYPES = {"TorF1", "TorF2", "Counting1", "Counting2", "Counting3", "planning"}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth") / "data", cities=6, seed=0, questions_per_type=8)


def read_rows(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def metro_of(out: Path, row: dict) -> dict[str, list[str]]:
    """The row's metro file with the suffixes deleted as REWARD_SPEC §1 says."""
    raw = json.loads((out / row["json"]).read_text(encoding="utf-8"))
    strip = ("(Transfer Station)", "(Branch-starting Station)")
    return {line: [s.replace(" " + strip[0], "").replace(" " + strip[1], "") for s in st] for line, st in raw.items()}


@pytest.fixture(scope="module")
def rows(out_dir: Path) -> list[dict]:
    return read_rows(out_dir, "train") + read_rows(out_dir, "test")


def test_schema(out_dir: Path, rows: list[dict]) -> None:
    assert {r["type"] for r in rows} == TYPES
    assert {r["difficulty_city"] for r in rows} == {"easy", "middle", "hard"}
    for r in rows:
        assert list(r)[: len(FIELDS)] == FIELDS and set(r) - set(FIELDS) == (
            {"routes"} if r["type"] == "planning" else set()
        )
        assert r["country"] == "synthland" and r["figure"] == f"./maps/synthland/{r['city']}.png"
        assert r["json"] == f"./stations/synthland/{r['city']}.json"
        assert (out_dir / r["figure"]).is_file() and (out_dir / r["json"]).is_file()
        for key in ("answer", "city_line_count", "city_transfer_count", "question_transfer_count"):
            assert type(r[key]) is int, key
        metro = json.loads((out_dir / r["json"]).read_text(encoding="utf-8"))
        assert r["city_line_count"] == len(metro)
        assert r["city_transfer_count"] == sum("(Transfer Station)" in s for st in metro.values() for s in st)
        assert '"\\boxed{}"' in r["question"] or r["type"] == "planning"


def test_torf_and_counting_answers_match_brute_force(out_dir: Path, rows: list[dict]) -> None:
    for r in rows:
        metro, s1, s2, q = metro_of(out_dir, r), r["station_1"], r["station_2"], r["question"]
        holding_both = [line for line, st in metro.items() if s1 in st and s2 in st]
        if r["type"] == "TorF1":
            assert r["answer"] == int(bool(holding_both)) and "only answer yes or no" in q
        elif r["type"] == "TorF2":
            line = re.search(r"is on (Line \d+)\?$", q).group(1)
            assert r["answer"] == int(s1 in metro[line])
        elif r["type"] == "Counting1":
            assert len(holding_both) == 1
            stations = metro[holding_both[0]]
            gold = abs(stations.index(s1) - stations.index(s2)) - 1
            options = [int(n) for n in re.findall(r"\n[ABCD]\) (\d+) ", q)]
            assert len(options) == len(set(options)) == 4 and options[r["answer"]] == gold
            assert q.startswith("Please solve the multiple choice problem and put your answer (one of ABCD)")
        elif r["type"] == "Counting2":
            assert r["answer"] == sum(s1 in st for st in metro.values())
        elif r["type"] == "Counting3":
            line = re.search(r"does (Line \d+) have", q)
            assert r["answer"] == (len(set(metro[line.group(1)])) if line else len(metro))


def test_planning_routes_are_minimal_and_valid(out_dir: Path, rows: list[dict]) -> None:
    planning = [r for r in rows if r["type"] == "planning"]
    assert planning and any(r["question_transfer_count"] > 0 for r in planning)
    for r in planning:
        metro = metro_of(out_dir, r)
        assert r["question_transfer_count"] == min_transfers(metro, r["station_1"], r["station_2"])
        routes = json.loads(r["routes"])
        assert list(routes) == [f"route_{k}" for k in range(1, len(routes) + 1)]
        for sections in routes.values():
            assert len(sections) == r["question_transfer_count"] + 1
            assert sections[0]["departure_stop"] + " Station" == r["station_1"]
            assert sections[-1]["arrival_stop"] + " Station" == r["station_2"]
            for sec, nxt in itertools.pairwise(sections):
                assert sec["arrival_stop"] == nxt["departure_stop"]
            for sec in sections:
                on_line = metro[sec["route_name"]]
                stops = [sec["departure_stop"], *sec["via_stops"], sec["arrival_stop"]]
                assert all(s + " Station" in on_line for s in stops) and sec["num_via_stops"] == len(sec["via_stops"])


def route_text(sections: list[dict]) -> str:
    """A reference route in the answer format of REWARD_SPEC §5."""
    return "--\n".join(
        f"Route Name: {s['route_name']}\nDeparture Stop: {s['departure_stop']}\nArrival Stop: {s['arrival_stop']}\n"
        for s in sections
    )


@pytest.mark.parametrize("variant", ["released", "corrected"])
def test_reference_routes_score_full_correctness(out_dir: Path, rows: list[dict], variant: str) -> None:
    from rewardmap.reward import compute_score

    for r in (r for r in rows if r["type"] == "planning"):
        for sections in json.loads(r["routes"]).values():
            result = compute_score(route_text(sections), r, variant=variant, metro_root=out_dir)
            assert result.correct and result.correctness == 10, (r["station_1"], r["station_2"], sections)


@pytest.mark.parametrize("variant", ["released", "corrected"])
def test_boxed_gold_answers_score_full_correctness(rows: list[dict], variant: str) -> None:
    from rewardmap.reward import compute_score

    for r in (r for r in rows if r["type"] != "planning"):
        if r["type"].startswith("TorF"):
            gold = "yes" if r["answer"] == 1 else "no"
        else:
            gold = "ABCD"[r["answer"]] if r["type"] == "Counting1" else str(r["answer"])
        result = compute_score(f"\\boxed{{{gold}}}", r, variant=variant)
        assert result.correct and result.correctness == 10, (r["type"], gold)


def test_metro_files_load_with_the_reward_loader(out_dir: Path, rows: list[dict]) -> None:
    from rewardmap.reward.metro import load_metro

    for r in rows:
        assert load_metro(out_dir / r["json"]) == metro_of(out_dir, r)


def test_splits_hold_out_a_city_and_share_no_question(out_dir: Path) -> None:
    train, test = read_rows(out_dir, "train"), read_rows(out_dir, "test")
    assert train and test
    assert {r["city"] for r in test} - {r["city"] for r in train}, "at least one city only in test"
    assert not {(r["city"], r["question"]) for r in train} & {(r["city"], r["question"]) for r in test}
    assert len(list((out_dir / "maps" / "synthland").glob("*.png"))) == 6


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    a = generate_dataset(tmp_path / "a", cities=3, seed=7, questions_per_type=3)
    # b comes from another process with another hash seed: no output may depend on set or hash order.
    code = f"from rewardmap.synth import generate_dataset; generate_dataset({str(tmp_path / 'b')!r}, 3, 7, 3)"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    b = tmp_path / "b"
    c = generate_dataset(tmp_path / "c", cities=3, seed=8, questions_per_type=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert len(files) == 3 + 3 + 3  # train, test, reasonmap; 3 maps; 3 line lists
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cities"):
        generate_dataset(tmp_path, cities=0)
    with pytest.raises(ValueError, match="test_fraction"):
        generate_dataset(tmp_path, cities=2, test_fraction=1.0)
    with pytest.raises(ValueError, match="questions_per_type"):
        generate_dataset(tmp_path, cities=1, questions_per_type=0)


def test_cli_writes_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "d"), "--cities", "2", "--questions-per-type", "2"])
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert "train:" in printed and "test:" in printed and "planning=" in printed
    assert "reasonmap: 4 rows (ReasonMap layout: a short and a long question each)" in printed
    assert (tmp_path / "d" / "train.jsonl").is_file() and (tmp_path / "d" / "test.jsonl").is_file()
