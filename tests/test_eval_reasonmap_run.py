"""A ReasonMap eval with the tiny model on the synthetic split (HF engine): both questions, the benchmark prompt,
resume after an interruption, and answers.jsonl repaired safely after a cut write."""

import argparse
import json
from pathlib import Path

import pytest

from rewardmap.data.images import load_image
from rewardmap.data.loading import load_rows
from rewardmap.eval import runner
from rewardmap.eval.answers import append_answers, read_answers
from rewardmap.eval.protocol import render_question
from rewardmap.rollout.base import Sampling

PIXELS = {"min_pixels": 3136, "max_pixels": 50176}


class CountingEngine:
    """Delegates to a real engine and records the prompts it is asked to answer."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.prompts: list[str] = []

    def generate(self, prompts, images, n, sampling):
        self.prompts += prompts
        return self.engine.generate(prompts, images, n, sampling)

    def sync_weights(self, model) -> None:
        self.engine.sync_weights(model)


@pytest.fixture(scope="module")
def benchmark(synth_dataset_dir: Path):
    return load_rows(synth_dataset_dir, split="reasonmap")


@pytest.fixture(scope="module")
def hf_parts(tiny_model_dir: Path):
    from rewardmap.models.loading import load_policy, load_processor
    from rewardmap.rollout.hf import HFRolloutEngine

    processor = load_processor(tiny_model_dir, **PIXELS)
    return HFRolloutEngine(load_policy(tiny_model_dir, device="cpu"), processor, batch_size=2), processor


def test_resumed_reasonmap_eval_matches_an_uninterrupted_one(tmp_path: Path, benchmark, hf_parts):
    engine, processor = hf_parts
    # One row of each of the 3 cities (10 each): path and base64 figures, the china convention's via template.
    rows = [benchmark[i] for i in (0, 11, 20)]
    assert len({row["figure"][:10] for row in rows}) == 2 and len({row["city"] for row in rows}) == 3
    assert [("Number of Via Stops:" in row["question_long"]) for row in rows] == [True, False, True]
    sampling = Sampling(max_tokens=8, temperature=1.0, seed=3)  # sampled text differs per answer: a real comparison
    settings = {"model": "tiny", "max_new_tokens": 8}

    def image_fn(row):
        return load_image(row["figure"], root=benchmark.root, **PIXELS)

    def evaluate(out: Path, counting: CountingEngine, fn=image_fn) -> dict:
        return runner.run_evaluation(
            counting, processor, rows, out, settings=settings, sampling=sampling, batch_size=2, image_fn=fn
        )

    whole = CountingEngine(engine)
    expected = evaluate(tmp_path / "whole", whole)
    questions = [row[f"question_{q}"] for row in rows for q in ("short", "long")]
    assert whole.prompts == [render_question(processor, row, q) for row in rows for q in ("short", "long")]
    for prompt, question in zip(whole.prompts, questions, strict=True):  # the benchmark's: the map, then the text
        assert prompt.endswith(f"<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n")
    results = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert results["reasonmap"]["all"]["short"]["plain"]["count"] == 3
    assert results["reasonmap"]["all"]["long"]["plain"]["count"] == 3

    def failing_image_fn(row):
        if row["question_short"] == rows[1]["question_short"]:
            raise RuntimeError("interrupted")
        return image_fn(row)

    first = CountingEngine(engine)
    with pytest.raises(RuntimeError, match="interrupted"):
        evaluate(tmp_path / "resumed", first, failing_image_fn)
    assert len(first.prompts) == 2  # row 0, short and long
    answers = tmp_path / "resumed" / "answers.jsonl"
    # The write was cut right after the last record's closing brace: valid JSON, no newline.
    answers.write_text(answers.read_text().rstrip("\n"))
    second = CountingEngine(engine)
    assert evaluate(tmp_path / "resumed", second) == expected
    assert len(second.prompts) == 4
    lines = [(tmp_path / name / "answers.jsonl").read_text().splitlines() for name in ("whole", "resumed")]
    assert sorted(lines[0]) == sorted(lines[1]) and len(lines[1]) == 6
    records = [json.loads(line) for line in lines[0]]
    assert len({r["response"] for r in records}) > 1
    for record in records:
        tokens = processor.tokenizer(record["response"])["input_ids"]
        assert record["token_count"] == len(tokens)  # counted as the benchmark does: the text re-tokenized
    # Another answer format only re-scores the stored answers: the folder may be resumed with it.
    runner.check_settings(tmp_path / "whole", settings | {"answer_format": "kimi"})
    assert json.loads((tmp_path / "whole" / "settings.json").read_text())["answer_format"] == "kimi"


def test_read_answers_repairs_cut_writes_atomically(tmp_path: Path):
    path = tmp_path / "answers.jsonl"
    append_answers(path, [{"id": "a", "response": "x"}])
    path.write_text(path.read_text() + '{"id": "b", "response": "y"}')  # complete, newline lost
    assert list(read_answers(path)) == ["a", "b"]
    assert path.read_text().endswith('"y"}\n')
    append_answers(path, [{"id": "c", "response": "z"}])
    assert list(read_answers(path)) == ["a", "b", "c"]
    path.write_text(path.read_text() + '{"id": "d", "resp')  # torn
    assert list(read_answers(path)) == ["a", "b", "c"]
    assert path.read_text().count("\n") == 3 and path.read_text().endswith("\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl"]  # no temporary file left behind


def test_eval_cli_on_the_synthetic_reasonmap_split(tmp_path: Path, tiny_model_dir: Path, synth_dataset_dir: Path):
    argv = ["--model", str(tiny_model_dir), "--data", str(synth_dataset_dir), "--split", "reasonmap"]
    argv += ["--out", str(tmp_path / "eval"), "--limit", "2", "--max-new-tokens", "4", "--max-pixels", "50176"]
    parser = argparse.ArgumentParser()
    runner.add_arguments(parser)
    assert runner.run(parser.parse_args(argv)) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results) == {"settings", "protocol", "summary", "reasonmap"} and results["summary"]["count"] == 4
    assert results["settings"]["split"] == "reasonmap" and results["settings"]["answer_format"] == "plain"
    markdown = (tmp_path / "eval" / "results.md").read_text()
    assert "| acc. short (%) | acc. long (%) | map score short | map score long |" in markdown
    assert "plain means over all cities (2 rows" in markdown
