"""benchmarks/gpu_step_check.py from a fresh --workdir and again on the same one (CPU, --tiny), and its refusal of a
shape whose memory plan does not fit the GPU (the free-memory query faked: there is no GPU here)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CHECK = [sys.executable, str(REPO / "benchmarks" / "gpu_step_check.py")]
TINY = ["--tiny", "--tokens", "4", "--n", "2", "--image-size", "448", "--steps", "1", "--dtype", "fp32"]


@pytest.mark.slow
def test_tiny_check_runs_fresh_and_again_on_the_same_workdir(tmp_path):
    (tmp_path / "model-tiny-2layers.partial").mkdir()  # what a run stopped while writing the model leaves
    runs = [subprocess.run([*CHECK, *TINY, "--workdir", str(tmp_path)], capture_output=True, text=True) for _ in "ab"]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
        assert "| memory plan, one GPU | GiB |" in run.stdout and "| 1 | " in run.stdout
        assert "shared prefix 2 completions per sequence" in run.stdout and "the shared prefix saved" in run.stdout
    assert "building the random-init model" in runs[0].stderr
    assert "building the random-init model" not in runs[1].stderr, "the rerun must reuse the model it built"
    assert not list(tmp_path.glob("*.partial"))


def test_a_shape_that_cannot_fit_is_refused_before_allocating(monkeypatch, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_step_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (80 * 2**30, 80 * 2**30))  # an 80 GiB GPU, empty
    assert gpu_step_check.main(["--layers", "28"]) == 2
    out = capsys.readouterr().out
    assert "GiB and the GPU has 80.0 GiB free: use --layers 7 or fewer" in out and "| **total** |" in out
