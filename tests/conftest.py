"""Shared fixtures: the real ReasonMap files from ../shared, the tiny offline model, a small synthetic dataset, one
vLLM engine."""

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_PIXELS = 200704
"""The shared vLLM engine's image budget: the largest map of tests/test_rollout_engines.py."""
PENALTY = 1.3
"""A repetition penalty strong enough to change the tiny model's greedy answers (its favourite token, "\n", is in every
prompt)."""


@pytest.fixture(scope="session")
def reasonmap_root() -> Path:
    """The real ReasonMap files (30 cities' line lists, 17 maps), kept outside the repo in ../shared/reasonmap."""
    root = Path(os.environ.get("REWARDMAP_REASONMAP_DIR", REPO_ROOT.parent / "shared" / "reasonmap"))
    if not (root / "stations").is_dir():
        pytest.skip(f"real ReasonMap files not found at {root} (set REWARDMAP_REASONMAP_DIR)")
    return root


@pytest.fixture(scope="session")
def stations_root(reasonmap_root: Path) -> Path:
    return reasonmap_root / "stations"


@pytest.fixture(scope="session")
def maps_root(reasonmap_root: Path) -> Path:
    return reasonmap_root / "maps"


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Scratch space for runs a module's tests share, deleted when the module is done: the runs' checkpoints take GBs
    and CI's disk is shared, so they do not wait for the session's end."""
    path = tmp_path_factory.mktemp("module")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline tiny Qwen2.5-VL (real tokenizer and processor), built once per test session."""
    from rewardmap.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def penalized_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model whose generation_config.json also sets repetition_penalty=PENALTY."""
    out = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("penalized") / "model")
    path = out / "generation_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"repetition_penalty": PENALTY}))
    return out


@pytest.fixture(scope="session")
def vllm_engine(penalized_model_dir: Path):
    """One in-process vLLM engine (fp32, a KV cache of 2% of RAM) shared by the tests, as a start takes ~50 s; loaded
    from penalized_model_dir, so each test also checks it decodes as told, not as the checkpoint's generation config
    says. A test that changes its weights syncs the originals back."""
    os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO_ROOT / ".cache" / "vllm"))  # vllm reads it as the engine starts
    from rewardmap.rollout.vllm import VLLMRolloutEngine

    return VLLMRolloutEngine(
        str(penalized_model_dir), dtype="float32", max_pixels=MAX_PIXELS, gpu_memory_utilization=0.02,
        max_model_len=4096,
    )  # fmt: skip


@pytest.fixture(scope="session")
def synth_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic transit-map dataset in the ReasonMap-Train schema."""
    from rewardmap.synth import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("synth") / "data", cities=3, seed=0)


@pytest.fixture(scope="session")
def mixed_maps_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset whose training cities' maps have three sizes: 238, 56 and 12 visual tokens (at most
    200,704, 50,176 and 12,544 pixels; train with data.max_pixels=200704), so a batch mixes map sizes."""
    from rewardmap.synth import generate_dataset

    out = tmp_path_factory.mktemp("mixed") / "data"
    return generate_dataset(out, cities=4, seed=0, map_pixels=(200704, 50176, 12544))


@pytest.fixture(scope="session")
def warm_model_dir(tiny_model_dir: Path, synth_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model after a short SFT warm start on the synthetic rows: answers in format some of the time, so
    a group's rewards can differ (the untrained model scores 0 everywhere)."""
    from rewardmap.config import load_config
    from rewardmap.grpo.sft import warm_start

    out = tmp_path_factory.mktemp("warm")
    overrides = [
        f"model.path={tiny_model_dir}",
        f"data.train_files={synth_dataset_dir}",
        f"trainer.output_dir={out}",
        f"data.image_cache_dir={out / 'image_cache'}",
        "data.max_pixels=50176",
        "sft.steps=60",
        "sft.lr=3e-3",
    ]
    return Path(warm_start(load_config(REPO_ROOT / "configs" / "demo.yaml", overrides)).model.path)


@pytest.fixture
def world():
    """A one-process training world (gloo), left again after the test."""
    from rewardmap.distributed import join_world

    with join_world() as joined:
        yield joined
