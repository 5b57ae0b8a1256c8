"""Loading the ReasonMap benchmark layout (EVAL_SPEC §1): line lists in every form, Arrow-filled nulls, bad rows."""

import base64
import json
from pathlib import Path

import datasets
import pytest

from rewardmap.data.loading import load_rows
from rewardmap.data.schema import REASONMAP_FIELDS, is_reasonmap_row
from rewardmap.errors import InputError

MIAMI_ROUTES = {
    "route_1": [
        {
            "route_name": "Metrorail Green Line",
            "departure_stop": "Douglas Road",
            "arrival_stop": "University",
            "via_stops": [],
            "num_via_stops": 0,
        }
    ]
}
BUDAPEST_ROUTES = {
    "route_1": [
        {
            "route_name": "M4",
            "departure_stop": "Keleti pályaudvar",
            "arrival_stop": "Kálvin tér",
            "via_stops": ["Rákóczi tér"],
            "num_via_stops": 1,
        }
    ],
    "route_2": [
        {
            "route_name": "M2",
            "departure_stop": "Keleti pályaudvar",
            "arrival_stop": "Astoria",
            "via_stops": ["Blaha Lujza tér"],
            "num_via_stops": 1,
        }
    ],
}


def miami_row(**changes) -> dict:
    """A ReasonMap-layout row of the real Miami map and line list (paths relative to ../shared/reasonmap)."""
    row = {
        "question_short": "How do you travel from Douglas Road Station to University Station? ...",
        "question_long": "... Route Name: ...\nNumber of Via Stops: [number]\n",
        "routes": MIAMI_ROUTES,
        "figure": "./maps/america/miami.png",
        "json": "./stations/america/miami.json",
        "country": "america",
        "city": "miami",
        "station_1": "Douglas Road Station",
        "station_2": "University Station",
        "difficulty_city": "Easy",
        "difficulty_question": "easy",
        "city_line_count": 2,
        "city_transfer_count": 2,
        "question_transfer_count": 0,
    }
    return row | changes


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_line_list_as_mapping_json_text_or_path(tmp_path, reasonmap_root, stations_root):
    lines = json.loads((stations_root / "america" / "miami.json").read_text(encoding="utf-8"))
    rows = [miami_row(json=lines), miami_row(json=json.dumps(lines)), miami_row(json="america/miami.json")]
    dataset = load_rows(
        write_jsonl(tmp_path / "validation.jsonl", rows), root=reasonmap_root, metro_root=stations_root
    )
    assert len(dataset) == 3 and all(is_reasonmap_row(row) for row in dataset.rows)
    assert dataset[0]["json"] == lines and dataset[1]["json"] == lines
    assert dataset[2]["json"] == str(stations_root / "america" / "miami.json")
    assert dataset[0]["difficulty_city"] == "easy" and dataset[0]["routes"] == MIAMI_ROUTES
    assert dataset[0]["figure"] == "./maps/america/miami.png"  # read lazily from the table
    assert set(REASONMAP_FIELDS) <= set(dataset[0])
    with pytest.raises(InputError, match="ReasonMap benchmark row"):
        _ = dataset.types  # nothing to train on


def test_hub_parquet_with_arrow_filled_nulls_and_base64_figures(tmp_path, reasonmap_root, stations_root, maps_root):
    """FSCCS/ReasonMap's layout: data/validation-*.parquet, `json` and `routes` structs whose keys are the union
    over all rows (absent ones null), figures embedded as base64 strings and data URIs."""
    miami = json.loads((stations_root / "america" / "miami.json").read_text(encoding="utf-8"))
    budapest = json.loads((stations_root / "hungary" / "budapest.json").read_text(encoding="utf-8"))
    encoded = base64.b64encode((maps_root / "america" / "miami.png").read_bytes()).decode()
    rows = [
        miami_row(json=miami, figure=encoded),
        miami_row(
            json=budapest,
            routes=BUDAPEST_ROUTES,
            figure="data:image/png;base64," + encoded,
            country="hungary",
            city="budapest",
            station_1="Keleti pályaudvar Station",
            station_2="Kálvin tér Station",
        ),
    ]
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_list(rows).to_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet")
    dataset = load_rows(tmp_path, split="validation", root=reasonmap_root)
    assert dataset[0]["json"] == miami and dataset[1]["json"] == budapest  # the other city's null keys dropped
    assert dataset[0]["routes"] == MIAMI_ROUTES  # route_2, null in this row, dropped
    assert dataset[1]["routes"] == BUDAPEST_ROUTES
    assert dataset[0]["figure"] == encoded and dataset[1]["figure"].startswith("data:image/png;base64,")


def test_reasonmap_and_plus_rows_are_told_apart_by_their_fields():
    assert is_reasonmap_row(miami_row())
    assert is_reasonmap_row({"question": None, "question_long": "..."})  # a mixed table's null column
    assert not is_reasonmap_row({"question": "Is it?", "question_short": None})
    assert not is_reasonmap_row({"question": "Is it?", "type": "TorF1"})


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"station_1": None}, "station_1", "is null"),
        ({"question_long": " "}, "question_long", "expected a non-empty string, got ' '"),
        ({"difficulty_question": "medium"}, "difficulty_question", "unknown difficulty 'medium'"),
        ({"question_transfer_count": "one"}, "question_transfer_count", "expected an integer, got 'one'"),
        ({"figure": "./maps/america/nowhere.png"}, "figure", "image file not found"),
        ({"json": "./stations/america/nowhere.json"}, "json", "line list file not found"),
        ({"json": {"Line 1": "a b c"}}, "json", "line 'Line 1' must list station names"),
        ({"json": "{not json"}, "json", "Expecting property name"),
        ({"json": {"Line 1": None}}, "json", "the line list is empty"),
        ({"routes": {"route_1": None}}, "routes", "no reference route"),
        (
            {"routes": {"route_1": [{**MIAMI_ROUTES["route_1"][0], "num_via_stops": None}]}},
            "routes",
            "a reference section has no num_via",
        ),
        (
            {"routes": {"route_1": [{**MIAMI_ROUTES["route_1"][0], "num_via_stops": "two"}]}},
            "routes",
            "num_via_stops must be an integer",
        ),
        (
            {"routes": {"route_1": [{**MIAMI_ROUTES["route_1"][0], "via_stops": "x"}]}},
            "routes",
            "via_stops must be a list",
        ),
    ],
)
def test_bad_reasonmap_row_names_file_row_field_and_fix(tmp_path, reasonmap_root, change, field, problem):
    path = write_jsonl(tmp_path / "validation.jsonl", [miami_row(), miami_row(**change)])
    with pytest.raises(InputError) as info:
        load_rows(path, root=reasonmap_root)
    message = str(info.value)
    assert f"{path}: row 1: field '{field}': {problem}" in message
    assert "Fix:" in message and "on_bad_row='skip'" in message


def test_missing_reasonmap_column_is_named(tmp_path, reasonmap_root):
    rows = [{key: value for key, value in miami_row().items() if key != "difficulty_question"}]
    with pytest.raises(InputError, match=r"row 0: field 'difficulty_question': missing\. Fix: add the column"):
        load_rows(write_jsonl(tmp_path / "validation.jsonl", rows), root=reasonmap_root)
    # A row with neither layout's question is reported as a Train / Plus row, pointing at the other layout.
    rows = [{key: value for key, value in miami_row().items() if not key.startswith("question_")}]
    with pytest.raises(InputError, match=r"field 'question': missing.*question_short and question_long"):
        load_rows(write_jsonl(tmp_path / "other.jsonl", rows), root=reasonmap_root)


def test_skip_counts_bad_reasonmap_rows(tmp_path, reasonmap_root):
    rows = [miami_row(), miami_row(difficulty_question="x"), miami_row(difficulty_question="y"), miami_row()]
    dataset = load_rows(write_jsonl(tmp_path / "v.jsonl", rows), root=reasonmap_root, on_bad_row="skip")
    assert len(dataset) == 2 and dataset.skipped == {"difficulty_question: unknown difficulty": 2}
    assert len(dataset.head(1)) == 1 and dataset.head(1)[0]["city"] == "miami"
