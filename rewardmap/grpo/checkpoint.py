"""Atomic training checkpoints: write to a temporary directory, mark complete, rename; find, verify, load, prune.

Layout of `<run>/checkpoints/step_000100/`: `model/` (Hugging Face `save_pretrained` layout plus processor files, or
a LoRA adapter) when unsharded, `sharded/` (accelerate's FSDP / DeepSpeed state) when distributed,
`optimizer.pt` (unsharded only), `trainer_state.json` (step, curriculum position) and `COMPLETE` (the file list with
sizes, written last). A directory without a valid `COMPLETE` is never loaded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

logger = logging.getLogger(__name__)

MARKER = "COMPLETE"
SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    processor: object,
    state: dict,
    accelerator: Accelerator,
) -> Path:
    """Writes checkpoint `step` atomically; returns its directory."""
    final = checkpoint_root(run_dir) / f"step_{step:06d}"
    tmp = final.with_name(f".{final.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if accelerator.distributed_type in SHARDED:
        accelerator.save_state(str(tmp / "sharded"))
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if accelerator.distributed_type not in SHARDED:
            unwrapped.save_pretrained(tmp / "model")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        else:  # the shards hold the weights; keep what a merge needs beside them
            base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
            base.config.save_pretrained(tmp / "model")
            base.generation_config.save_pretrained(tmp / "model")
            if hasattr(unwrapped, "peft_config"):
                unwrapped.peft_config["default"].save_pretrained(tmp / "model")
        processor.save_pretrained(tmp / "model")
        (tmp / "trainer_state.json").write_text(
            json.dumps({**state, "world_size": accelerator.num_processes}, indent=1)
        )
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / MARKER).write_text(json.dumps({"step": step, "files": files}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def verify(path: Path) -> dict:
    """The checkpoint's COMPLETE record, after checking every listed file is there with its size; else ValueError."""
    path = Path(path)
    marker = path / MARKER
    if not marker.is_file():
        raise ValueError(f"checkpoint {path} is incomplete: no {MARKER} marker (the save was interrupted); delete it")
    try:
        record = json.loads(marker.read_text())
        files = record["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"checkpoint {path} has a corrupt {MARKER} marker ({error}); delete the checkpoint") from None
    for name, size in files.items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            found = file.stat().st_size if file.is_file() else "missing"
            raise ValueError(f"checkpoint {path} is corrupt: {name} should have {size} bytes, found {found}")
    return record


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run; incomplete ones are skipped with a warning."""
    candidates = sorted(checkpoint_root(run_dir).glob("step_*"), reverse=True)
    for candidate in candidates:
        try:
            verify(candidate)
            return candidate
        except ValueError as error:
            logger.warning("skipping %s", error)
    return None


def resolve_resume(resume: str, run_dir: Path) -> Path | None:
    """trainer.resume: 'auto' -> newest complete checkpoint or None, 'none' -> None, else that path (verified)."""
    if resume == "none":
        return None
    if resume == "auto":
        return latest(run_dir)
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"trainer.resume={resume}: no such checkpoint directory")
    verify(path)
    return path


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, accelerator: Accelerator) -> dict:
    """Restores weights and optimizer state in place from a verified checkpoint; returns its trainer state."""
    verify(path)
    if (path / "sharded").is_dir():
        accelerator.load_state(str(path / "sharded"))
    else:
        _load_weights(accelerator.unwrap_model(model), path / "model")
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    return json.loads((path / "trainer_state.json").read_text())


def _load_weights(model: torch.nn.Module, model_dir: Path) -> None:
    """Loads a save_pretrained directory (full model or LoRA adapter) into `model` in place, strictly.

    transformers renames keys between its modules and its files, so the full model is read back with
    `from_pretrained` (which applies the renaming) and copied over.
    """
    from safetensors.torch import load_file

    adapter = model_dir / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(adapter))
        if result.unexpected_keys:
            raise ValueError(f"{adapter} does not match the model: unexpected {result.unexpected_keys[:3]}")
        return
    saved = type(model).from_pretrained(model_dir, dtype=next(model.parameters()).dtype)
    model.load_state_dict(saved.state_dict(), strict=True)


def prune(run_dir: Path, keep: int) -> None:
    """Deletes all but the newest `keep` complete checkpoints."""
    complete = [p for p in sorted(checkpoint_root(run_dir).glob("step_*")) if (p / MARKER).is_file()]
    for old in complete[:-keep]:
        shutil.rmtree(old)
        logger.info("removed old checkpoint %s", old)
