"""The offline tiny Qwen2.5-VL: real Qwen2.5 token ids, chat template, a real map through processor and model."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from qwen_vl_utils import smart_resize
from safetensors.torch import load_file

from rewardmap.models import tiny
from rewardmap.models.loading import load_policy, load_processor
from rewardmap.models.logprobs import build_prompt_inputs

QWEN_SPECIALS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "<tool_call>": 151657,
    "<|file_sep|>": 151664,
}


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    return load_processor(tiny_model_dir, max_pixels=200_000)


@pytest.fixture(scope="module")
def map_image(maps_root: Path, monkeypatch_module: pytest.MonkeyPatch) -> Image.Image:
    """The smallest real map, opened despite its size and downscaled to ~200k pixels."""
    monkeypatch_module.setattr(Image, "MAX_IMAGE_PIXELS", None)  # real maps are up to 278M pixels, on purpose
    with Image.open(maps_root / "switzerland" / "geneva.png") as img:
        rgb = img.convert("RGB")
    height, width = smart_resize(rgb.height, rgb.width, factor=28, max_pixels=200_000)
    return rgb.resize((width, height), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_tokenizer_matches_qwen_ids(processor) -> None:
    tok = processor.tokenizer
    assert tok("Hello world")["input_ids"] == [9707, 1879]
    assert {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS} == QWEN_SPECIALS
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 151645
    assert tok.pad_token_id == 151643
    assert tok("<|im_start|>user<|im_end|>")["input_ids"] == [151644, 872, 151645]


def test_round_trip_of_real_station_names(processor, stations_root: Path) -> None:
    names = []
    for path in sorted(stations_root.glob("*/*.json")):
        names += [s for line in json.loads(path.read_text()).values() for s in line[:5]]
    assert any("站" in n for n in names) and any("ő" in n or "é" in n or "ā" in n for n in names)
    tok = processor.tokenizer
    for name in names:
        assert tok.decode(tok(name)["input_ids"]) == name, name


def test_chat_template_system_user_image_assistant(processor) -> None:
    messages = [
        {"role": "system", "content": "You read maps."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many lines?"}]},
        {"role": "assistant", "content": "3"},
    ]
    assert processor.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nYou read maps.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many lines?<|im_end|>\n"
        "<|im_start|>assistant\n3<|im_end|>\n"
    )
    default = processor.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert default.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert default.endswith("<|im_start|>assistant\n")


def test_real_map_through_processor_and_generate(tiny_model_dir: Path, processor, map_image: Image.Image) -> None:
    assert map_image.width * map_image.height <= 200_000
    inputs = build_prompt_inputs(processor, ["Which line serves Cornavin?", "Count the lines."], [map_image] * 2)
    pads = (inputs["input_ids"] == 151655).sum(1)
    assert pads.tolist() == (inputs["image_grid_thw"].prod(-1) // 4).tolist()
    assert inputs["attention_mask"][:, -1].all()  # left padding: every prompt ends at the last column
    model = load_policy(tiny_model_dir, device="cpu").eval()
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 2 and 0 < out.shape[1] - inputs["input_ids"].shape[1] <= 5


def test_config_matches_spec(tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    assert (config["model_type"], config["tie_word_embeddings"], text["vocab_size"]) == ("qwen2_5_vl", True, 151936)
    assert (text["hidden_size"], text["num_hidden_layers"], text["head_dim"]) == (128, 2, 64)
    assert text["rope_parameters"]["mrope_section"] == [8, 12, 12]
    assert (vision["depth"], vision["hidden_size"], vision["out_hidden_size"]) == (2, 64, 128)
    assert (text["num_attention_heads"], vision["num_heads"]) == (2, 2)  # vLLM tensor parallel 2 splits both
    generation = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"]) == ([151645, 151643], 151643)


def test_save_load_round_trip_gives_identical_logits(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = load_policy(tiny_model_dir, device="cpu").eval()
    model.save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    reloaded = load_policy(tmp_path, device="cpu").eval()
    ids = torch.tensor([[151644, 872, 198, 9707, 1879, 151645]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)


def test_same_seed_same_weights_other_seed_differs(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = tiny.build_tiny_model(tmp_path / "again", seed=0)
    other = tiny.build_tiny_model(tmp_path / "other", seed=1)
    assert (again / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    first, second = load_file(again / "model.safetensors"), load_file(other / "model.safetensors")
    assert first.keys() == second.keys()
    name = "model.layers.0.mlp.up_proj.weight"  # saved in the Hub checkpoint layout
    assert not torch.equal(first[name], second[name])


def test_cli_builds_untied_model_and_refuses_non_empty_dir(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    tiny.add_arguments(parser)
    out = tmp_path / "untied"
    assert tiny.run(parser.parse_args(["--out", str(out), "--seed", "3", "--no-tie-word-embeddings"])) == 0
    weights = load_file(out / "model.safetensors")
    assert "lm_head.weight" in weights and sum(t.numel() for t in weights.values()) > 39_000_000
    with pytest.raises(ValueError, match="not empty"):
        tiny.build_tiny_model(out)
