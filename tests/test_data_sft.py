"""SFT export (LLaMA-Factory sharegpt JSON, dataset_info merge) and the offline failure of the Hub download."""

import argparse
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rewardmap.data import sft

REPO_ROOT = Path(__file__).resolve().parents[1]
ROUTE = [
    {
        "route_name": "Line 1",
        "departure_stop": "大学城站",
        "arrival_stop": "王府庄站",
        "via_stops": [],
        "num_via_stops": 2,
    },
    {
        "route_name": "Line 2",
        "departure_stop": "王府庄站",
        "arrival_stop": "腊山站",
        "via_stops": [],
        "num_via_stops": 1,
    },
]


def make_row(kind: str, answer, **changes) -> dict:
    row = {
        "question": f"A {kind} question about the map.",
        "figure": "./maps/china/jinan.png",
        "answer": answer,
        "type": kind,
        "country": "china",
        "city": "jinan",
        "station_1": "大学城站",
        "station_2": "腊山站",
        "difficulty_city": "middle",
        "city_line_count": 3,
        "city_transfer_count": 2,
        "question_transfer_count": 1,
        "json": "./stations/china/jinan.json",
        "routes": json.dumps({"r1": ROUTE, "r2": ROUTE[:1]}, ensure_ascii=False) if kind == "planning" else None,
    }
    row.update(changes)
    return row


@pytest.fixture()
def dataset_dir(tmp_path, reasonmap_root):
    """A Hub-layout folder whose figures point at the real maps (absolute paths) or are embedded (base64)."""
    embedded = base64.b64encode((reasonmap_root / "maps" / "america" / "miami.png").read_bytes()).decode()
    rows = [
        make_row("Counting1", 2),
        make_row("TorF1", 1),
        make_row("TorF2", 0, figure=embedded),
        make_row("Counting2", 12),
        make_row("Counting3", -1),  # the skip value
        make_row("Counting2", None),  # no answer
        make_row("planning", -1),
        make_row("planning", -1, routes=None),
    ]
    for row in rows:
        if row["figure"].startswith("./"):
            row["figure"] = str(reasonmap_root / row["figure"])
        row["json"] = str(reasonmap_root / row["json"])
    folder = tmp_path / "plus"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return folder


def test_answer_text_maps_each_type():
    assert sft.answer_text({"type": "Counting1", "answer": 3}) == "D"
    assert sft.answer_text({"type": "Counting1", "answer": 4}) is None
    assert sft.answer_text({"type": "TorF1", "answer": 1}) == "yes"
    assert sft.answer_text({"type": "TorF2", "answer": 0}) == "no"
    assert sft.answer_text({"type": "Counting3", "answer": 7}) == "7"
    assert sft.answer_text({"type": "planning", "answer": None, "routes": {"r1": ROUTE}}) == (
        "Route Name: Line 1\nDeparture Stop: 大学城站\nArrival Stop: 王府庄站\n--\n"
        "Route Name: Line 2\nDeparture Stop: 王府庄站\nArrival Stop: 腊山站"
    )
    assert sft.answer_text({"type": "planning", "answer": None}) is None


def test_export_writes_sharegpt_records_with_resolvable_images(dataset_dir, tmp_path):
    out = tmp_path / "llamafactory" / "data" / "reason_map_plus.json"
    result = sft.export_sft(dataset_dir, out)
    records = json.loads(out.read_text(encoding="utf-8"))
    assert result.kept == len(records) == 4
    assert [r["conversations"][1]["value"] for r in records] == ["C", "yes", "no", "12"]
    assert result.skipped == {"no answer": 2, "planning (pass --include_planning)": 2}
    for record in records:
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert (
            human["value"].startswith("<image> A ") and human["value"].count("<image>") == len(record["images"]) == 1
        )
        assert all((out.parent / image).is_file() for image in record["images"])  # resolvable from the output folder
    assert records[2]["images"][0].startswith("reason_map_plus_images/")  # the embedded map written next to it
    info = json.loads((out.parent / "dataset_info.json").read_text())
    assert info["reasonmap_plus"] == {
        "file_name": "reason_map_plus.json",
        "formatting": "sharegpt",
        "ranking": False,
        "columns": {"messages": "conversations", "images": "images"},
    }


def test_include_planning_and_dataset_info_merge(dataset_dir, tmp_path):
    info_path = tmp_path / "dataset_info.json"
    info_path.write_text(json.dumps({"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}}))
    parser = argparse.ArgumentParser()
    sft.add_arguments(parser)
    args = parser.parse_args(["--dataset_dir", str(dataset_dir), "--out", str(tmp_path / "plan.json")])
    args.include_planning, args.dataset_name = True, "reasonmap_plan"
    assert sft.run(args) == 0
    records = json.loads((tmp_path / "plan.json").read_text(encoding="utf-8"))
    planning = [r for r in records if r["conversations"][1]["value"].startswith("Route Name:")]
    assert len(records) == 5 and len(planning) == 1
    assert planning[0]["conversations"][1]["value"].count("\n--\n") == 1  # the first reference route, two sections
    info = json.loads(info_path.read_text())
    assert set(info) == {"alpaca_en_demo", "reasonmap_plan"} and info["reasonmap_plan"]["file_name"] == "plan.json"


def test_sft_script_runs(dataset_dir, tmp_path):
    out = tmp_path / "script.json"
    done = subprocess.run(
        [sys.executable, "utils/prepare_data_for_sft.py", "--dataset_dir", str(dataset_dir), "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote 4 records" in done.stdout and len(json.loads(out.read_text())) == 4


def _download(tmp_path, env_changes: dict) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    env.update(env_changes)
    return subprocess.run(
        [sys.executable, "utils/download_dataset.py", "--dataset", "reasonmap-plus", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_one_clear_sentence(done: subprocess.CompletedProcess, tmp_path: Path) -> None:
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    message = [line for line in done.stderr.splitlines() if line.startswith("Could not download")]
    assert len(message) == 1
    assert "FSCCS/ReasonMap-Plus" in message[0] and "is unreachable" in message[0]
    assert "HF_ENDPOINT" in message[0] and str(tmp_path / "ReasonMap-Plus") in message[0]


def test_download_offline_fails_with_one_sentence(tmp_path):
    done = _download(tmp_path, {"HF_HUB_OFFLINE": "1"})
    _assert_one_clear_sentence(done, tmp_path)
    assert "HF_HUB_OFFLINE is set" in done.stderr


def test_download_unreachable_endpoint_fails_with_one_sentence(tmp_path):
    # A closed local port stands in for an unreachable Hub (or mirror), with or without a network here.
    done = _download(tmp_path, {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "3"})
    _assert_one_clear_sentence(done, tmp_path)
