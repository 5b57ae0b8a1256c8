"""Watching a run: sample rollouts in samples.jsonl (rewards as the step's metrics, no step twice after a resume), real
W&B (offline) and Trackio (local) runs holding the scalars and the samples table, the HTML report in headless Chromium,
and a tracker that is not installed refused before any model loads."""

import json
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from rewardmap.cli import main
from rewardmap.config import load_config
from rewardmap.data.loading import load_rows
from rewardmap.data.sft import answer_text
from rewardmap.grpo.metrics import read_metrics
from rewardmap.grpo.samples import SampleFile, pick_groups, read_samples
from rewardmap.grpo.trackers import TABLE_COLUMNS
from rewardmap.reward import compute_score

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
N = 3  # answers per group: not 2, so that "2 groups" and "n answers" cannot be confused


def _train(overrides: list[str]) -> None:
    from rewardmap.distributed import join_world
    from rewardmap.grpo.trainer import GRPOTrainer

    with join_world() as world:
        GRPOTrainer(load_config(DEMO, overrides), world).fit()


@pytest.fixture(scope="module")
def run(module_dir, warm_model_dir, synth_dataset_dir) -> dict:
    """A 2-step demo-config run with trainer.log_samples=2, validation at step 2, W&B (offline) and Trackio (local);
    then the same run resumed from its step-1 checkpoint (a run killed after step 1 had written step 2's samples)."""
    out = module_dir / "run"
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DATA_DIR": str(module_dir / "wandb_data"),
        "WANDB_CACHE_DIR": str(module_dir / "wandb_cache"),
        "WANDB_CONFIG_DIR": str(module_dir / "wandb_config"),
        "TRACKIO_DIR": str(module_dir / "trackio"),
    }
    overrides = [
        f"model.path={warm_model_dir}",
        f"data.train_files={synth_dataset_dir}",
        f"data.val_files={synth_dataset_dir}",
        f"trainer.output_dir={out}",
        f"data.image_cache_dir={module_dir / 'image_cache'}",
        "data.prompts_per_step=2",
        "data.max_pixels=50176",
        "data.max_response_length=8",
        "data.val_limit=2",
        f"rollout.n={N}",
        "sft.steps=0",
        "trainer.max_steps=2",
        "trainer.save_freq=1",
        "trainer.val_freq=2",
        "trainer.log_samples=2",
        "trainer.loggers=[jsonl,tensorboard,wandb,trackio]",
    ]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        _train(overrides)
        first = {
            "samples": read_samples(out, "samples"),
            "trackers": json.loads((out / "trackers.json").read_text()),
        }
        _train([*overrides, f"trainer.resume={out / 'checkpoints' / 'step_000001'}"])
    return {"dir": out, "first": first, "trackio": module_dir / "trackio", "rows": load_rows(synth_dataset_dir)}


def test_pick_groups_is_seeded_and_spread_over_types():
    types = ["TorF1", "TorF1", "TorF1", "TorF1", "TorF2", "planning"]
    picked = pick_groups(types, 3, seed=42, step=7)
    assert sorted(types[i] for i in picked) == ["TorF1", "TorF2", "planning"]  # one of each type first
    assert picked == pick_groups(types, 3, seed=42, step=7) == sorted(picked)
    assert len({tuple(pick_groups(types, 2, seed=42, step=step)) for step in range(20)}) > 1
    assert pick_groups(types, 10, seed=0, step=1) == list(range(6))


def test_sample_file_drops_the_steps_a_resumed_run_writes_again(tmp_path):
    path = tmp_path / "samples.jsonl"
    first = SampleFile(path)
    for step in (1, 2, 3):
        first.append([{"step": step, "answers": []}])
    with path.open("a") as file:
        file.write('{"step": 4, "answ')  # killed while writing
    SampleFile(path).append([{"step": 2, "answers": [], "again": True}])
    assert [(r["step"], "again" in r) for r in read_samples(tmp_path, "samples")] == [(1, False), (2, True)]


@pytest.mark.slow
def test_samples_hold_two_groups_per_step_with_the_step_rewards(run):
    records = read_samples(run["dir"], "samples")
    assert [r["step"] for r in records] == [1, 1, 2, 2]
    metrics = {r["step"]: r for r in read_metrics(run["dir"])}
    for step in (1, 2):
        groups = [r for r in records if r["step"] == step]
        rewards = [a["reward"] for r in groups for a in r["answers"]]
        assert all(len(r["answers"]) == N for r in groups)
        # prompts_per_step=2: the two groups are the whole step, so their rewards make the step's figures exactly.
        assert sum(rewards) / len(rewards) == pytest.approx(metrics[step]["reward/mean"], abs=1e-6)
        correct = [a["correct"] for r in groups for a in r["answers"]]
        assert sum(correct) / len(correct) == pytest.approx(metrics[step]["reward/accuracy"])
    for record in records:
        row = run["rows"][record["row"]]
        assert (record["type"], record["question"], record["stage"]) == (row["type"], row["question"], 1)
        assert record["reference"] == answer_text(row)  # yes / no on these true/false rows
        assert record["image"].endswith(".npy") and Path(record["image"]).is_file()  # the cached resized map
        for answer in record["answers"]:
            score = compute_score(answer["text"], row)
            assert answer["reward"] == pytest.approx(score.total) and answer["correct"] == score.correct
            assert answer["tokens"] <= 8 and isinstance(answer["finished"], bool)
        assert sum(a["advantage"] for a in record["answers"]) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.slow
def test_a_resumed_run_writes_no_step_twice_and_continues_its_tracker_runs(run):
    lines = (run["dir"] / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 1, 2, 2]
    assert read_samples(run["dir"], "samples")[:2] == run["first"]["samples"][:2]  # step 1 kept as it was
    validation = read_samples(run["dir"], "val_samples")
    assert [r["step"] for r in validation] == [2, 2] and all(len(r["answers"]) == 1 for r in validation)
    assert json.loads((run["dir"] / "trackers.json").read_text()) == run["first"]["trackers"]
    wandb_id = run["first"]["trackers"]["wandb"]["id"]
    assert len(list((run["dir"] / "wandb").glob(f"offline-run-*-{wandb_id}/run-{wandb_id}.wandb"))) == 2
    with sqlite3.connect(run["trackio"] / "rewardmap.db") as db:
        assert {row[0] for row in db.execute("select run_id from metrics")} == {
            run["first"]["trackers"]["trackio"]["id"]
        }


def _wandb_records(path: Path):
    """The records of a W&B transaction log (.wandb: LevelDB log blocks of wandb's protobuf Records)."""
    from wandb.proto import wandb_internal_pb2

    data, position, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:
            position += 32768 - position % 32768
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last part of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.slow
def test_wandb_offline_run_holds_both_steps_scalars_and_the_samples_table(run):
    metrics = {r["step"]: r for r in read_metrics(run["dir"])}
    first_run = sorted((run["dir"] / "wandb").glob("offline-run-*"))[0]
    history, artifacts = {}, []
    for record in _wandb_records(next(first_run.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {
                item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item
            }
            history[items["_step"]] = items
        elif kind == "artifact":
            artifacts.append(record.artifact)
        elif kind == "run":
            assert record.run.display_name == run["dir"].name and record.run.project == "rewardmap"
            assert any(update.key == "rollout" for update in record.run.config.update)  # the run config
    for step in (1, 2):
        assert history[step]["reward/mean"] == pytest.approx(metrics[step]["reward/mean"])
        assert history[step]["loss/kl"] == pytest.approx(metrics[step]["loss/kl"])
        assert history[step]["samples/_type"] == "table-file" and history[step]["samples/nrows"] == 2 * N
        table = json.loads((first_run / "files" / history[step]["samples/path"]).read_text())
        assert table["columns"] == list(TABLE_COLUMNS) and len(table["data"]) == 2 * N
        texts = [answer["text"] for r in run["first"]["samples"] if r["step"] == step for answer in r["answers"]]
        assert [row[TABLE_COLUMNS.index("text")] for row in table["data"]] == texts
    assert history[2]["val_samples/nrows"] == 2
    files = [entry.path for artifact in artifacts for entry in artifact.manifest.contents]
    assert any(path.startswith("media/images/") and path.endswith(".png") for path in files)  # the map images


@pytest.mark.slow
def test_trackio_local_run_holds_both_steps_scalars_and_the_samples_table(run):
    metrics = {r["step"]: r for r in read_metrics(run["dir"])}
    with sqlite3.connect(run["trackio"] / "rewardmap.db") as db:
        logged = [(step, json.loads(values)) for step, values in db.execute("select step, metrics from metrics")]
        config = json.loads(db.execute("select config from configs").fetchone()[0])
    scalars = {step: values for step, values in logged if "reward/mean" in values}
    assert {1, 2} <= set(scalars) and config["rollout"]["n"] == N
    for step in (1, 2):
        assert scalars[step]["reward/mean"] == pytest.approx(metrics[step]["reward/mean"])
    tables = [(step, values["samples"]) for step, values in logged if "samples" in values]
    assert {step for step, _ in tables} == {1, 2}
    for _, table in tables:
        assert table["_type"] == "trackio.table" and len(table["_value"]) == 2 * N
        cell = table["_value"][0]["map"]
        assert cell["_type"] == "trackio.image" and (run["trackio"] / "media" / cell["file_path"]).is_file()


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)")
    return path


def _open_in_chromium(chromium: str, page: Path, *action: str) -> subprocess.CompletedProcess:
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([*command, *action, page.as_uri()], capture_output=True, text=True, timeout=120, check=True)


def _console(result: subprocess.CompletedProcess) -> list[str]:
    """The page's console messages (errors, uncaught exceptions) as Chromium logs them."""
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def test_the_console_check_sees_a_page_error(chromium, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<p>x</p><script>undefinedFunction();</script>")
    assert any("Uncaught" in line for line in _console(_open_in_chromium(chromium, page, "--dump-dom")))


@pytest.mark.slow
def test_report_in_headless_chromium_shows_curves_and_maps_with_answers(run, chromium, capsys):
    assert main(["report", str(run["dir"])]) == 0
    page = run["dir"] / "report.html"
    assert str(page) in capsys.readouterr().out
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)|url\(["']?(https?:|//)|@import""", html)  # no CDN/font/link
    shot = run["dir"] / "report.png"
    _open_in_chromium(chromium, page, f"--screenshot={shot}", "--window-size=1400,2400")
    assert shot.stat().st_size > 10_000
    result = _open_in_chromium(chromium, page, "--dump-dom")
    assert _console(result) == []
    dom = result.stdout
    assert dom.count('<svg class="chart"') >= 9 and "stage" in dom
    assert dom.count('<img class="map" src="data:image/jpeg;base64,') == 2  # the last step's two groups
    assert dom.count('<div class="answer"') == 2 * N
    last = [r for r in read_samples(run["dir"], "samples") if r["step"] == 2]
    assert all(answer["text"].strip()[:8] in dom for r in last for answer in r["answers"] if answer["text"].strip())
    assert 'id="validation"' in dom and "validation (2 records)" in dom


def test_a_tracker_that_is_not_installed_stops_before_any_model_loads(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` sees where it is not installed
    overrides = [
        f"model.path={tmp_path / 'no-model'}",
        f"trainer.output_dir={tmp_path}",
        "trainer.loggers=[jsonl,wandb]",
    ]
    assert main(["train", "--config", str(DEMO), *overrides]) == 2  # sft.steps=60: the warm start would load first
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "wandb" in error and "pip install wandb" in error
    assert not os.listdir(tmp_path)
