"""Atomic training checkpoints in N processes: every rank writes its shards into a temporary directory, then the
main rank marks it complete, renames it and prunes old ones; find, verify, load.

Layout of `<run>/checkpoints/step_000100/`: `sharded/` (the weights and optimizer state: torch distributed
checkpoint files for FSDP2, DeepSpeed's own files for ZeRO), `rng/rank_NNNNN.pt` (each rank's torch RNG state),
`model/` (config, generation config, LoRA adapter config and processor files: what a merge needs beside the shards),
`trainer_state.json` (step, curriculum position, world size) and `COMPLETE` (the file list with sizes, written last).
A directory without a valid `COMPLETE` is never loaded. Multi-node runs need the run directory on a shared file system.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from rewardmap.checkpoint_files import MARKER, MODEL_FILES, SHARDS, verify
from rewardmap.distributed import World, barrier
from rewardmap.errors import InputError
from rewardmap.grpo.backend import TrainBackend

logger = logging.getLogger(__name__)


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save(
    run_dir: Path, step: int, backend: TrainBackend, processor: object, state: dict, world: World, *, keep: int
) -> Path:
    """Writes checkpoint `step` atomically from every rank (collective); keeps the newest `keep`; returns its path."""
    final = checkpoint_root(run_dir) / f"step_{step:06d}"
    tmp = final.with_name(f".{final.name}.tmp")
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    barrier()
    backend.save(tmp / SHARDS)
    torch.save(_rng_state(), tmp / "rng" / f"rank_{world.rank:05d}.pt")
    barrier()
    if world.is_main:
        _save_model_files(backend.model, processor, tmp / MODEL_FILES)
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "world_size": world.size}, indent=1))
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / MARKER).write_text(json.dumps({"step": step, "files": files}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        logger.info("saved checkpoint %s", final)
        prune(run_dir, keep)
    barrier()
    return final


def _save_model_files(model: torch.nn.Module, processor: object, directory: Path) -> None:
    """What a merge needs beside the shards: the model's config and generation config, a LoRA adapter's config,
    the processor files."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.config.save_pretrained(directory)
    base.generation_config.save_pretrained(directory)
    if hasattr(model, "peft_config"):
        model.peft_config["default"].save_pretrained(directory)
    processor.save_pretrained(directory)


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


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
        raise InputError(f"trainer.resume={resume}: no such checkpoint directory")
    verify(path)
    return path


def load(path: Path, backend: TrainBackend, world: World) -> dict:
    """Restores weights, optimizer state and RNG in place from a verified checkpoint (collective); returns its
    trainer state. A checkpoint of another world size is resharded; its RNG states are then not restored."""
    verify(path)
    state = json.loads((path / "trainer_state.json").read_text())
    backend.load(path / SHARDS)
    if state["world_size"] == world.size:
        rng = torch.load(path / "rng" / f"rank_{world.rank:05d}.pt", weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    elif world.is_main:
        logger.warning("%s was written by %d processes, resharded onto %d", path, state["world_size"], world.size)
    return state


def prune(run_dir: Path, keep: int) -> None:
    """Deletes all but the newest `keep` complete checkpoints."""
    complete = [p for p in sorted(checkpoint_root(run_dir).glob("step_*")) if (p / MARKER).is_file()]
    for old in complete[:-keep]:
        shutil.rmtree(old)
        logger.info("removed old checkpoint %s", old)
