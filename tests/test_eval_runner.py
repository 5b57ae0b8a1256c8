"""The eval runner: per-row scoring, summaries, resumable answers, `rewardmap eval` / `eval-compare` end to end."""

import argparse
import json
from pathlib import Path

import pytest

from rewardmap.data.images import load_image
from rewardmap.data.loading import load_rows
from rewardmap.eval import compare, runner
from rewardmap.eval.answers import append_answers, read_answers
from rewardmap.eval.records import score_record
from rewardmap.eval.report import headline_figures, summarize
from rewardmap.rollout.base import Sampling

PIXELS = {"min_pixels": 3136, "max_pixels": 50176}


class CountingEngine:
    """Delegates to a real engine and counts the prompts it is asked to answer."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.prompts = 0

    def generate(self, prompts, images, n, sampling):
        self.prompts += len(prompts)
        return self.engine.generate(prompts, images, n, sampling)

    def sync_weights(self, model) -> None:
        self.engine.sync_weights(model)


@pytest.fixture(scope="module")
def test_rows(synth_dataset_dir: Path):
    return load_rows(synth_dataset_dir, split="test")


@pytest.fixture(scope="module")
def hf_parts(tiny_model_dir: Path):
    from rewardmap.models.loading import load_policy, load_processor
    from rewardmap.rollout.hf import HFRolloutEngine

    processor = load_processor(tiny_model_dir, **PIXELS)
    return HFRolloutEngine(load_policy(tiny_model_dir, device="cpu"), processor, batch_size=2), processor


def _first(rows, kind: str) -> dict:
    return next(rows[i] for i in range(len(rows)) if rows[i]["type"] == kind)


def _records() -> list[dict]:
    """Hand-made scored records: weights easy 1, middle 1.5, hard 2."""
    base = {"country": "c", "city": "x"}
    return [
        base | {"type": "TorF1", "difficulty_city": "easy", "correct": 0},
        base | {"type": "TorF1", "difficulty_city": "hard", "correct": 1},
        base | {"type": "Counting2", "difficulty_city": "middle", "correct": 1},
        {"type": "planning", "difficulty_city": "hard", "country": "china", "city": "beijing", "question": "short"}
        | {"correct": 1, "map_score": 20, "reward_correct": 1, "token_count": 10},
        base | {"type": "planning", "difficulty_city": "easy", "correct": 0, "reward_correct": 0},
    ]


def test_summarize_hand_made_records():
    summary = summarize(_records())
    assert summary["count"] == 5
    assert summary["overall"]["weighted"] == pytest.approx((2 + 1.5 + 2) / 7.5)
    assert summary["overall"]["plain"] == pytest.approx(0.6)
    assert summary["types"]["TorF1"]["weighted"] == pytest.approx(2 / 3)
    assert summary["types_by_difficulty"]["hard"]["TorF1"]["plain"] == 1.0
    assert summary["types_by_difficulty"]["easy"]["TorF1"]["plain"] == 0.0
    assert summary["plus"]["overall"]["weighted"] == pytest.approx(3.5 / 4.5)
    assert summary["plus"]["overall"]["count"] == 3
    assert summary["plus"]["groups"]["Counting"]["plain"] == 1.0
    assert summary["plus"]["groups"]["TorF"]["plain"] == 0.5
    planning = summary["planning"]
    assert planning["reward_accuracy"]["overall"]["plain"] == 0.5
    assert planning["reasonmap"]["all"]["plain"] == {
        "count": 1,
        "correct": 1.0,
        "map_score": 20.0,
        "token_count": 10.0,
    }
    assert planning["reasonmap"]["original_cities"]["plain"]["count"] == 1
    assert list(planning["reasonmap_by_difficulty"]) == ["hard"]
    figures = headline_figures(summary)
    assert figures["ReasonMap-Plus overall (weighted %)"] == pytest.approx(350 / 4.5)
    assert figures["ReasonMap short map score (plain)"] == 20.0


def test_score_record_uses_plus_verdict_route_metrics_and_reward(test_rows):
    torf = _first(test_rows, "TorF1")
    right, wrong = ("\\boxed{yes}", "\\boxed{no}") if torf["answer"] == 1 else ("\\boxed{no}", "\\boxed{yes}")
    assert score_record(torf, right)["correct"] == 1
    assert score_record(torf, wrong)["correct"] == 0
    plan = _first(test_rows, "planning")
    sections = next(iter(plan["routes"].values()))
    answer = "\n--\n".join(
        f"Route Name: {s['route_name']}\nDeparture Stop: {s['departure_stop']} Station\n"
        f"Arrival Stop: {s['arrival_stop']} Station"
        for s in sections
    )
    record = score_record(plan, answer)
    assert record["correct"] == 1 and record["reward_correct"] == 1
    # Outside china: DA 1, no line points ("Line 2" reads as "Line Li"), 2 stop points per section; +10 if correct.
    assert record["map_score"] == min(10, 1 + 2 * len(sections)) + 10
    no_routes = {key: value for key, value in plan.items() if key != "routes"}
    assert score_record(no_routes, answer) == {
        key: plan[key] for key in ("type", "difficulty_city", "country", "city")
    } | {"reward_correct": 1, "correct": 1}
    assert score_record(plan, "no idea")["correct"] == 0


def test_read_answers_drops_a_torn_last_line(tmp_path: Path):
    path = tmp_path / "answers.jsonl"
    append_answers(path, [{"id": "a", "response": "x"}, {"id": "b", "response": "y"}])
    with path.open("a") as handle:
        handle.write('{"id": "c", "resp')
    assert list(read_answers(path)) == ["a", "b"]
    assert path.read_text().count("\n") == 2 and path.read_text().endswith("\n")
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_answers(path)


def test_resume_skips_finished_samples_and_matches_an_uninterrupted_run(tmp_path: Path, test_rows, hf_parts):
    engine, processor = hf_parts
    rows = [test_rows[i] for i in range(6)]
    sampling = Sampling(max_tokens=8, temperature=1.0, seed=3)  # sampled text differs per row: a real comparison
    settings = {"model": "tiny", "max_new_tokens": 8}

    def image_fn(row):
        return load_image(row["figure"], root=test_rows.root, **PIXELS)

    def evaluate(out: Path, counting: CountingEngine, fn=image_fn) -> dict:
        return runner.run_evaluation(
            counting, processor, rows, out, settings=settings, sampling=sampling, batch_size=2, image_fn=fn
        )

    whole = CountingEngine(engine)
    expected = evaluate(tmp_path / "whole", whole)
    assert whole.prompts == 6

    def failing_image_fn(row):
        if row["question"] == rows[2]["question"]:
            raise RuntimeError("interrupted")
        return image_fn(row)

    first = CountingEngine(engine)
    with pytest.raises(RuntimeError, match="interrupted"):
        evaluate(tmp_path / "resumed", first, failing_image_fn)
    assert first.prompts == 2
    assert len((tmp_path / "resumed" / "answers.jsonl").read_text().splitlines()) == 2
    second = CountingEngine(engine)
    assert evaluate(tmp_path / "resumed", second) == expected
    assert second.prompts == 4
    answers = [(tmp_path / name / "answers.jsonl").read_text().splitlines() for name in ("whole", "resumed")]
    assert sorted(answers[0]) == sorted(answers[1])
    assert len({json.loads(line)["response"] for line in answers[0]}) > 1
    with pytest.raises(ValueError, match="max_new_tokens: 8 -> 9"):
        runner.check_settings(tmp_path / "whole", settings | {"max_new_tokens": 9})


def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def _eval_argv(model: Path, data: Path, out: Path, limit: int) -> list[str]:
    return [
        *("--model", str(model), "--data", str(data), "--out", str(out), "--limit", str(limit)),
        *("--batch-size", "2", "--max-new-tokens", "16", "--max-pixels", "50176"),
    ]


def test_eval_cli_end_to_end_then_extend_and_compare(tmp_path, tiny_model_dir, synth_dataset_dir, capsys):
    out, fresh = tmp_path / "eval", tmp_path / "fresh"
    assert runner.run(_parse(runner, _eval_argv(tiny_model_dir, synth_dataset_dir, out, 4))) == 0
    printed = capsys.readouterr().out
    assert "# Evaluation results" in printed and "| **all** | 4 |" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["count"] == 4 and results["protocol"]["max_new_tokens"] == 16
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first_answers = (out / "answers.jsonl").read_text().splitlines()
    assert len(first_answers) == 4

    # A larger --limit on the same folder only answers the new rows and matches a fresh run of that size.
    assert runner.run(_parse(runner, _eval_argv(tiny_model_dir, synth_dataset_dir, out, 6))) == 0
    assert runner.run(_parse(runner, _eval_argv(tiny_model_dir, synth_dataset_dir, fresh, 6))) == 0
    lines = (out / "answers.jsonl").read_text().splitlines()
    assert lines[:4] == first_answers and len(lines) == 6
    assert json.loads((out / "results.json").read_text()) == json.loads((fresh / "results.json").read_text())
    capsys.readouterr()

    assert compare.run(_parse(compare, [str(fresh), str(out / "results.json"), "--label-b", "rl"])) == 0
    table = capsys.readouterr().out
    assert "| figure | A | rl | rl − A |" in table
    assert "| answers | 6 | 6 | +0 |" in table
    assert "| ReasonMap-Plus overall (weighted %) |" in table
    with pytest.raises(FileNotFoundError, match="results.json"):
        compare.load_results(tmp_path / "nowhere")


def test_eval_refuses_to_run_in_a_torchrun_world(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="eval runs in one process, and this is one of a torchrun world of 2"):
        runner.run(_parse(runner, _eval_argv(tmp_path / "model", tmp_path / "data", tmp_path / "out", 4)))


def test_compare_table_shows_differences():
    records = _records()
    better = [dict(r, correct=1) for r in records]
    table = compare.compare_table({"summary": summarize(records)}, {"summary": summarize(better)}, "base", "rl")
    assert "| accuracy, all rows (plain %) | 60.00 | 100.00 | +40.00 |" in table
    assert "| accuracy TorF1 (weighted %) | 66.67 | 100.00 | +33.33 |" in table
