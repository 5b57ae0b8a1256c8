"""The synthetic ReasonMap split: the benchmark's layout, both conventions and templates, answerable references."""

import base64
import json
from pathlib import Path

import pytest

from rewardmap.data.loading import load_rows
from rewardmap.data.schema import REASONMAP_FIELDS
from rewardmap.eval.routes import score_reasonmap
from rewardmap.synth import generate_dataset


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth") / "data", cities=4, seed=1, questions_per_type=6)


@pytest.fixture(scope="module")
def rows(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "reasonmap.jsonl").read_text(encoding="utf-8").splitlines()]


def reference_answer(row: dict, question: str) -> str:
    """The first reference route written as a model should: line names as on the map, stops with the suffix."""
    china = row["country"] == "china"
    suffix = "站" if china else " Station"
    number = "Number of Via Stops:" in row["question_long"]
    blocks = []
    for section in next(iter(row["routes"].values())):
        line = section["route_name"]
        if china:  # 地铁2号线(A--B) -> Line 2
            line = "Line " + line.removeprefix("地铁").split("号线")[0]
        block = f"Route Name: {line}\nDeparture Stop: {section['departure_stop']}{suffix}\n"
        block += f"Arrival Stop: {section['arrival_stop']}{suffix}\n"
        if question == "long" and number:
            block += f"Number of Via Stops: {section['num_via_stops']}\n"
        elif question == "long":
            block += "Via Stops: " + ",".join(stop + suffix for stop in section["via_stops"]) + "\n"
        blocks.append(block)
    return "--\n".join(blocks)


def test_layout_conventions_templates_and_figures(out_dir: Path, rows: list[dict]) -> None:
    assert len(rows) == 4 * 6
    assert all(list(row) == list(REASONMAP_FIELDS) for row in rows)
    by_city = {row["city"]: row for row in rows}
    assert [row["country"] for row in by_city.values()] == ["synthland", "china", "synthland", "china"]
    for row in rows:
        number = "Number of Via Stops:" in row["question_long"]
        assert row["country"] == "china" or number  # outside china the via template crashes the released code
        assert row["question_short"] in row["question_long"] and "Via Stops:" not in row["question_short"]
        for name in ("station_1", "station_2"):
            assert row[name].endswith("站" if row["country"] == "china" else " Station")
        assert row["difficulty_question"] == ("easy", "middle", "hard")[min(row["question_transfer_count"], 2)]
        assert row["city_line_count"] == len(row["json"]) and row["routes"]
    assert {("Number of Via Stops:" in row["question_long"]) for row in rows if row["country"] == "china"} == {
        True,
        False,
    }
    assert any(section["via_stops"] for row in rows for plan in row["routes"].values() for section in plan)
    embedded = [row for row in rows if not row["figure"].startswith("./maps/")]
    assert {row["city"] for row in embedded} == {list(by_city)[2]}  # every third city
    image = base64.b64decode(embedded[0]["figure"])
    assert image == (out_dir / "maps" / "synthland" / f"{embedded[0]['city']}.png").read_bytes()
    assert all((out_dir / row["figure"]).is_file() for row in rows if row not in embedded)
    china = next(row for row in rows if row["country"] == "china")
    assert any(station.endswith("站（换乘站）") for stations in china["json"].values() for station in stations)


def test_references_score_full_correctness(out_dir: Path, rows: list[dict]) -> None:
    dataset = load_rows(out_dir, split="reasonmap")  # embedded line lists, Arrow-filled line keys dropped
    assert len(dataset) == len(rows) and dataset.rows[0]["json"] == rows[0]["json"]
    for row in dataset.rows:
        short = score_reasonmap(reference_answer(row, "short"), row, question="short")
        long = score_reasonmap(reference_answer(row, "long"), row, question="long")
        assert short["correct"] == long["correct"] == 1 and short["map_score"] > 10 and long["map_score"] > 20
        assert short["departure_arrival_score"] == 1 and short["stops_score"] >= 1
        if row["country"] == "china":
            assert short["route_name_score"] == 2 * len(next(iter(row["routes"].values())))
        if "Number of Via Stops:" in row["question_long"]:
            assert long["num_via_stop_score"] > 0
        elif any(s["via_stops"] for s in next(iter(row["routes"].values()))):
            assert long["via_stops_score"] > 0
        assert score_reasonmap("no idea", row, question="long")["map_score"] == 0
