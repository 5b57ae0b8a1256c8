"""The Hub download knows the ReasonMap benchmark; offline it still fails with one sentence."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rewardmap.data.hub import DATASETS, download
from rewardmap.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_reasonmap_is_a_dataset_of_its_own_and_in_all(tmp_path: Path) -> None:
    assert DATASETS["reasonmap"] == ("FSCCS/ReasonMap", "ReasonMap")
    with pytest.raises(InputError, match="unknown dataset 'reasonmap-test'; choose one of .*reasonmap$"):
        download("reasonmap-test", tmp_path)


@pytest.mark.parametrize("name", ["reasonmap", "all"])
def test_offline_download_fails_with_one_sentence(tmp_path: Path, name: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "utils/download_dataset.py", "--dataset", name, "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    message = [line for line in done.stderr.splitlines() if line.startswith("Could not download")]
    assert len(message) == 1 and "HF_HUB_OFFLINE is set" in message[0]
    if name == "reasonmap":
        assert "FSCCS/ReasonMap:" in message[0] and str(tmp_path / "ReasonMap") + "." in message[0]
