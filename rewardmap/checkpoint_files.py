"""The files of a training checkpoint directory: their names, the COMPLETE marker, and checking them."""

from __future__ import annotations

import json
from pathlib import Path

from rewardmap.errors import InputError

MARKER = "COMPLETE"
"""Written last: the list of the checkpoint's files with their sizes."""
SHARDS = "sharded"
"""Weights and optimizer state: torch distributed checkpoint files (FSDP2) or DeepSpeed's own (ZeRO)."""
MODEL_FILES = "model"
"""Config, generation config, LoRA adapter config and processor files: what a merge needs beside the shards."""


def verify(path: Path) -> dict:
    """The checkpoint's COMPLETE record, after checking every listed file is there with its size; else InputError."""
    path = Path(path)
    marker = path / MARKER
    if not marker.is_file():
        raise InputError(f"checkpoint {path} is incomplete: no {MARKER} marker (the save was interrupted); delete it")
    try:
        record = json.loads(marker.read_text())
        files = record["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(f"checkpoint {path} has a corrupt {MARKER} marker ({error}); delete the checkpoint") from None
    for name, size in files.items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            found = file.stat().st_size if file.is_file() else "missing"
            raise InputError(f"checkpoint {path} is corrupt: {name} should have {size} bytes, found {found}")
    return record
