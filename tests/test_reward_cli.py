"""`rewardmap score` on a small JSONL of real samples, and the Counting1 stop-list parsing behind its detail."""

import argparse
import json

import pytest

from rewardmap.reward.cli import add_arguments, run
from rewardmap.reward.stops import listed_stops


def write_rows(path, stations_root):
    beijing = {"city": "beijing", "country": "china", "json": "china/beijing.json", "difficulty_city": "middle"}
    planning = {**beijing, "type": "planning", "question_transfer_count": 1, "station_1": "南礼士路站"}
    planning["station_2"] = "阜成门站"
    route = "Route Name: Line 1\nDeparture Stop: 南礼士路站\nArrival Stop: 复兴门站\n--\n"
    route += "Route Name: Line 2\nDeparture Stop: 复兴门站\nArrival Stop: 阜成门站\n"
    rows = [
        {"response": route, "sample": planning},
        {"response": "\\boxed{Yes}", "sample": {**beijing, "type": "TorF1", "answer": 1}},
        {"response": "\\boxed{no}", "sample": {**beijing, "type": "TorF2", "answer": 1}},
        {"response": "There are \\boxed{7}.", "sample": {**beijing, "type": "Counting2", "answer": 7}},
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + "\n", encoding="utf-8")


def parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_score_command_writes_breakdowns_and_prints_summary(tmp_path, stations_root, capsys):
    rows, out = tmp_path / "rows.jsonl", tmp_path / "out.jsonl"
    write_rows(rows, stations_root)
    assert run(parse(["--input", str(rows), "--output", str(out), "--metro-root", str(stations_root)])) == 0
    results = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["reward"]["total"] for r in results] == pytest.approx([20.4, 12.0, 0.0, 12.0])
    assert results[0]["reward"] == {"total": pytest.approx(20.4), "correctness": 10.0, "detail": 4.0, "weight": 1.7,
                                    "correct": True}  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["type", "count", "mean", "total", "accuracy"]
    table = {line.split()[0]: line.split()[1:] for line in printed[1:]}
    assert table["TorF2"] == ["1", "0.000", "0.000"] and table["all"] == ["4", "11.100", "0.750"]


def test_score_command_variant_and_mode(tmp_path, stations_root, capsys):
    rows, out = tmp_path / "rows.jsonl", tmp_path / "out.jsonl"
    write_rows(rows, stations_root)
    argv = ["--input", str(rows), "--output", str(out), "--metro-root", str(stations_root)]
    assert run(parse([*argv, "--variant", "corrected", "--mode", "baseline"])) == 0
    totals = [json.loads(line)["reward"]["total"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert totals == pytest.approx([14.5, 10.0, 0.0, 10.0])


def test_score_command_rejects_bad_rows(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"answer": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="rows.jsonl:1"):
        run(parse(["--input", str(rows)]))


def test_listed_stops_cleaning():
    response = "So the stops are: Stops: [ A (x, y), and B;, C..., ..., …, A (x, y), [D, E] ] and Stops: [Z]"
    assert listed_stops(response) == {"A (x, y)": 2, "B": 1, "C": 1, "[D": 1, "E]": 1}
    assert listed_stops("stops : [unclosed") == {}
    assert listed_stops("no list here") == {}
