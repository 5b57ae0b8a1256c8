"""Row validation and dataset loading: save_to_disk folders, Hub-layout parquet, JSONL files, bad rows."""

import base64
import json
import logging
from pathlib import Path

import datasets
import pytest

from rewardmap.data.loading import load_rows
from rewardmap.data.schema import QUESTION_TYPES, canonical_type, parse_routes

ROUTES = {
    "route_1": [
        {
            "route_name": "Line 1",
            "departure_stop": "大学城站",
            "arrival_stop": "王府庄站",
            "via_stops": ["赵营站", "玉符河站"],
            "num_via_stops": 2,
        }
    ]
}


def make_row(kind: str = "TorF1", **changes) -> dict:
    """A valid row on the real Jinan map and line list (paths relative to ../shared/reasonmap)."""
    row = {
        "question": "Is 大学城站 on Line 1? Put yes or no in \\boxed{}.",
        "figure": "./maps/china/jinan.png",
        "answer": 1,
        "type": kind,
        "country": "china",
        "city": "jinan",
        "station_1": "大学城站",
        "station_2": "王府庄站",
        "difficulty_city": "easy",
        "city_line_count": 3,
        "city_transfer_count": 2,
        "question_transfer_count": 0,
        "json": "./stations/china/jinan.json",
        "routes": json.dumps(ROUTES, ensure_ascii=False) if kind == "planning" else None,
    }
    row.update(changes)
    return row


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_canonical_type_is_case_insensitive_and_rejects_unknown():
    assert [canonical_type(name.upper()) for name in QUESTION_TYPES] == list(QUESTION_TYPES)
    with pytest.raises(ValueError, match="unknown question type 'Counting4'"):
        canonical_type("Counting4")


def test_jsonl_rows_normalised_and_paths_resolved(tmp_path, reasonmap_root):
    rows = [make_row("torf1", difficulty_city="Hard"), make_row("planning", answer=None, question_transfer_count=1)]
    dataset = load_rows(write_jsonl(tmp_path / "train.jsonl", rows), root=reasonmap_root)
    assert len(dataset) == 2 and dataset.types == ["TorF1", "planning"]
    assert dataset.difficulties == ["hard", "easy"]
    first = dataset[0]
    assert first["figure"] == "./maps/china/jinan.png"
    assert Path(first["json"]).is_absolute() and Path(first["json"]).is_file()
    assert dataset[1]["routes"] == ROUTES  # the JSON string is parsed into the reference-route mapping
    assert "figure" not in dataset.rows[0]  # figures are read from the Arrow table on access, not kept in RAM


def test_hub_layout_parquet_folder(tmp_path, reasonmap_root):
    folder = tmp_path / "ReasonMap-Plus"
    (folder / "data").mkdir(parents=True)
    rows = [make_row(kind) for kind in ("TorF1", "TorF2", "Counting2")]
    datasets.Dataset.from_list(rows[:2]).to_parquet(folder / "data" / "test-00000-of-00002.parquet")
    datasets.Dataset.from_list(rows[2:]).to_parquet(folder / "data" / "test-00001-of-00002.parquet")
    dataset = load_rows(folder, split="test", root=reasonmap_root)
    assert dataset.types == ["TorF1", "TorF2", "Counting2"]
    assert dataset[2]["figure"] == "./maps/china/jinan.png"
    with pytest.raises(FileNotFoundError, match="no data files for split 'train'"):
        load_rows(folder, split="train", root=reasonmap_root)


def test_save_to_disk_dataset_dict_with_embedded_image_feature(tmp_path, maps_root):
    png = (maps_root / "america" / "miami.png").read_bytes()
    rows = [make_row(figure={"bytes": png, "path": None}, json=None), make_row("Counting1", figure=None, json=None)]
    rows[1]["figure"] = {"bytes": png, "path": None}
    features = datasets.Dataset.from_list([make_row()]).features.copy()
    features["figure"] = datasets.Image()
    table = datasets.Dataset.from_list(rows, features=features)
    datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "ReasonMap-Train"))
    dataset = load_rows(tmp_path / "ReasonMap-Train")
    assert dataset.types == ["TorF1", "Counting1"]
    assert dataset[1]["figure"]["bytes"] == png  # left undecoded for the image loader
    with pytest.raises(ValueError, match="no split 'test'; available splits: train"):
        load_rows(tmp_path / "ReasonMap-Train", split="test")


def test_base64_and_data_uri_figures_validate(tmp_path, maps_root, reasonmap_root):
    encoded = base64.b64encode((maps_root / "america" / "miami.png").read_bytes()).decode()
    rows = [make_row(figure=encoded), make_row(figure="data:image/png;base64," + encoded)]
    dataset = load_rows(write_jsonl(tmp_path / "x.jsonl", rows), root=reasonmap_root)
    assert len(dataset) == 2


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"city": None}, "city", "is null"),
        ({"answer": "yes"}, "answer", "expected an integer, got 'yes'"),
        ({"figure": "./maps/china/nowhere.png"}, "figure", "image file not found"),
        ({"type": "Counting9"}, "type", "unknown question type 'Counting9'"),
        ({"difficulty_city": "medium"}, "difficulty_city", "unknown difficulty 'medium'"),
    ],
)
def test_bad_row_message_names_file_row_field_and_fix(tmp_path, reasonmap_root, change, field, problem):
    path = write_jsonl(tmp_path / "train.jsonl", [make_row(), make_row(**change)])
    with pytest.raises(ValueError) as info:
        load_rows(path, root=reasonmap_root)
    message = str(info.value)
    assert f"{path}: row 1: field '{field}': {problem}" in message
    assert "Fix:" in message and "on_bad_row='skip'" in message


def test_missing_column_is_reported(tmp_path, reasonmap_root):
    rows = [{key: value for key, value in make_row().items() if key != "station_2"}]
    with pytest.raises(ValueError, match=r"row 0: field 'station_2': missing\. Fix: add the column\(s\) station_2"):
        load_rows(write_jsonl(tmp_path / "train.jsonl", rows), root=reasonmap_root)


def test_skip_drops_bad_rows_and_reports_counts(tmp_path, reasonmap_root, caplog):
    rows = [
        make_row(),
        make_row(type="Counting9"),
        make_row(figure="./maps/nowhere.png"),
        make_row(figure="./maps/elsewhere.png"),
        make_row("Counting2", answer=7),
    ]
    with caplog.at_level(logging.WARNING, logger="rewardmap.data.loading"):
        dataset = load_rows(write_jsonl(tmp_path / "train.jsonl", rows), root=reasonmap_root, on_bad_row="skip")
    assert dataset.types == ["TorF1", "Counting2"]
    assert dataset[1]["answer"] == 7  # positions still point at the right Arrow rows after skips
    assert sum(dataset.skipped.values()) == 3 and dataset.skipped["figure: image file not found"] == 2
    assert "skipped 3 bad rows, kept 2" in caplog.text and "figure: image file not found: 2" in caplog.text


def test_planning_row_needs_its_line_list_and_transfer_count(tmp_path, reasonmap_root):
    rows = [make_row("planning", json="./stations/china/nowhere.json")]
    with pytest.raises(ValueError, match="field 'json': line list not found"):
        load_rows(write_jsonl(tmp_path / "a.jsonl", rows), root=reasonmap_root)
    rows = [make_row("planning", question_transfer_count=None)]
    with pytest.raises(ValueError, match="field 'question_transfer_count': is null"):
        load_rows(write_jsonl(tmp_path / "b.jsonl", rows), root=reasonmap_root)


def test_routes_validation():
    assert parse_routes({"a": ROUTES["route_1"], "b": None}) == {"a": ROUTES["route_1"]}
    with pytest.raises(ValueError, match="section without arrival_stop"):
        parse_routes({"a": [{"route_name": "Line 1", "departure_stop": "x"}]})


def test_synthetic_dataset_loads_and_feeds_the_curriculum(synth_dataset_dir):
    from rewardmap.data.curriculum import CurriculumStream

    train = load_rows(synth_dataset_dir)
    assert len(train) > 0 and len(load_rows(synth_dataset_dir, split="test")) > 0
    assert all(Path(row["json"]).is_file() for row in train.rows)
    assert all(row["routes"] for row in train.rows if row["type"] == "planning")
    stream = CurriculumStream(train.types, batch_size=4)
    seen = sorted(index for _, indices in stream for index in indices)
    assert seen == list(range(len(train)))


def test_reasonmap_plus_rows_need_no_transfer_count_column(tmp_path, reasonmap_root):
    rows = [
        {k: v for k, v in make_row(kind).items() if k not in ("question_transfer_count", "routes")}
        for kind in ["TorF1", "Counting3"]
    ]
    dataset = load_rows(write_jsonl(tmp_path / "plus.jsonl", rows), root=reasonmap_root)
    assert dataset[1]["question_transfer_count"] is None and dataset[1]["routes"] is None
    rows = [{k: v for k, v in make_row("planning").items() if k != "question_transfer_count"}]
    with pytest.raises(ValueError, match="field 'question_transfer_count': is null"):
        load_rows(write_jsonl(tmp_path / "plan.jsonl", rows), root=reasonmap_root)


def test_skip_reasons_group_rows_regardless_of_value(tmp_path, reasonmap_root):
    rows = [make_row(answer="yes"), make_row(answer="no"), make_row(type="Counting8"), make_row(type="Counting9")]
    dataset = load_rows(write_jsonl(tmp_path / "x.jsonl", rows), root=reasonmap_root, on_bad_row="skip")
    assert len(dataset) == 0
    assert dataset.skipped == {"answer: expected an integer": 2, "type: unknown question type": 2}
