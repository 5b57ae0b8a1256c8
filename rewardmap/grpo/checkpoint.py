"""Atomic training checkpoints in N processes: every rank writes its shards into a temporary directory, then the
main rank marks it complete, renames it and prunes old ones; find, verify, load; what a checkpoint takes on disk.

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
from collections.abc import Callable
from pathlib import Path

import torch
from torch.distributed.checkpoint.api import CheckpointException

from rewardmap.checkpoint_files import MARKER, MODEL_FILES, SHARDS, verify
from rewardmap.distributed import World, all_gather_lists, all_reduce_sum, local
from rewardmap.errors import EXIT_NONFINITE, InputError, RunStopped, one_line, write_failed
from rewardmap.grpo.backend import TrainBackend

logger = logging.getLogger(__name__)

FULL_BELOW = 16_000_000
"""Free bytes under which a file system that failed a write is called full."""


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save(
    run_dir: Path, step: int, backend: TrainBackend, processor: object, state: dict, world: World, *, keep: int
) -> Path:
    """Writes checkpoint `step` atomically from every rank (collective); keeps the newest `keep`; returns its path.

    Weights that are not finite are never saved, and a write that fails on any rank (no space, quota, permissions)
    removes the temporary directory: either stops the run on every rank (RunStopped) naming what resume would use.
    """
    final = checkpoint_root(run_dir) / f"step_{step:06d}"
    tmp = final.with_name(f".{final.name}.tmp")
    if all_reduce_sum([float(not weights_finite(backend.model))], world.device)[0]:
        raise RunStopped(
            f"the weights after step {step} are not finite, so no checkpoint was written; the last good one is "
            f"{latest(run_dir) or 'none (the run starts from model.path)'}: resume from it with a lower trainer.lr",
            EXIT_NONFINITE,
        )
    size = expected_bytes(run_dir, backend)

    def prepare() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)

    def write_shards() -> None:
        backend.save(tmp / SHARDS)
        torch.save(_rng_state(), tmp / "rng" / f"rank_{world.rank:05d}.pt")

    def complete() -> None:
        _save_model_files(backend.model, processor, tmp / MODEL_FILES)
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "world_size": world.size}, indent=1))
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / MARKER).write_text(json.dumps({"step": step, "files": files}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        logger.info("saved checkpoint %s", final)
        prune(run_dir, keep)

    # Each part ends with a gather that is also the barrier the next part needs.
    _write_together(world, final, size, prepare if world.is_main else None)
    _write_together(world, final, size, write_shards)
    _write_together(world, final, size, complete if world.is_main else None)
    return final


def _write_together(world: World, final: Path, size: int, write: Callable[[], None] | None) -> None:
    """Runs this rank's part of saving `final` (collective). If it failed on any rank, the main rank removes the
    temporary directory and every rank stops the run with one sentence: the error, the room a checkpoint needs and
    the checkpoint trainer.resume=auto will use."""
    failure = None
    try:
        if write is not None:
            write()
    except (OSError, RuntimeError, CheckpointException) as error:  # torch.save reports a full disk as RuntimeError
        logger.debug("writing %s failed on rank %d", final, world.rank, exc_info=True)
        failure = f"rank {world.rank}: {one_line(error)}" if world.size > 1 else one_line(error)
    failures = all_gather_lists([failure] if failure else [])
    if not failures:
        return
    tmp = final.with_name(f".{final.name}.tmp")
    # torch.save names a full disk only as "unexpected pos ...": say it when the file system is (nearly) full.
    full = " (the file system is full)" if _free_bytes(final) < FULL_BELOW else ""
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    resume = latest(final.parent.parent)
    raise write_failed(
        final,
        failures[0] + full,
        f"a checkpoint needs about {human_bytes(size)} and {human_bytes(_free_bytes(final))} are free there; "
        f"{tmp.name} was removed and trainer.resume=auto will continue from "
        f"{resume or 'the start (no complete checkpoint yet)'}",
    )


def _free_bytes(path: Path) -> int:
    """Free bytes on the file system of `path`, or of its nearest existing parent."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def weights_finite(model: torch.nn.Module) -> bool:
    """Whether every weight this rank holds is finite: its shard under FSDP2, its partition under ZeRO-3 (which keeps
    it in `ds_tensor`, the parameter itself being empty), the whole weight otherwise."""
    return all(bool(torch.isfinite(getattr(p, "ds_tensor", local(p))).all()) for p in model.parameters())


def expected_bytes(run_dir: Path, backend: TrainBackend) -> int:
    """What a checkpoint of this run takes: the newest complete one's files, or before the first, 12 bytes per
    trainable weight (fp32 weights and AdamW's two moments; ZeRO-3 counts its partitioned weights in `ds_numel`)."""
    newest = latest(run_dir)
    if newest is not None:
        return sum(verify(newest)["files"].values())
    trainable = [p for p in backend.model.parameters() if p.requires_grad]
    return sum(12 * getattr(p, "ds_numel", p.numel()) for p in trainable)


def warn_if_short_of_space(run_dir: Path, backend: TrainBackend) -> None:
    """Warns when the run directory's file system has less free space than two checkpoints take."""
    need, free = expected_bytes(run_dir, backend), _free_bytes(run_dir)
    if free < 2 * need:
        logger.warning(
            "%s has %s free and a checkpoint takes about %s: a save needs room for two (the new one is written before "
            "the oldest is pruned), so free space or set trainer.output_dir on a larger file system",
            run_dir,
            human_bytes(free),
            human_bytes(need),
        )


def human_bytes(size: float) -> str:
    """A size in bytes for people: 3 significant digits, decimal units."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 999.5:
            return f"{size:.3g} {unit}"
        size /= 1000
    return f"{size:.3g} TB"


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
