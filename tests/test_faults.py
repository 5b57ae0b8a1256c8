"""What clusters do to a run, on the real tiny model in real processes: stop signals delivered twice, steps that are
not finite (no update, then a stop naming the last good checkpoint), a checkpoint that cannot be written (injected
ENOSPC, and a real full tmpfs where the test may mount one), a rank that dies or hangs in a 2-process world (the run
ends naming it). A SIGTERM mid-step: tests/test_grpo_trainer.py (one process), tests/test_distributed.py (torchrun)."""

import errno
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rewardmap.config import load_config
from rewardmap.distributed import local
from rewardmap.errors import EXIT_NONFINITE, EXIT_RANK_LOST, EXIT_WRITE, RunStopped
from rewardmap.eval.answers import RERUN, append_answers, replace_file
from rewardmap.grpo import checkpoint
from rewardmap.grpo.metrics import MetricsLogger, read_metrics
from rewardmap.grpo.trainer import GRPOTrainer

from .test_distributed import ENV, torchrun, train_args
from .test_grpo_trainer import DEMO, REPO, _train_command, small_overrides


def _wait_for(path: Path, process: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not path.is_file() or (path.suffix == ".jsonl" and not path.read_text().strip()):
        assert process.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.2)


def _distcp_bytes(ckpt: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted((ckpt / "sharded").glob("*.distcp"))]


def test_a_repeated_signal_is_one_request_and_a_later_one_aborts():
    """A second delivery within REPEAT_WINDOW_S (the scheduler and torchrun both sending it) is the same request; one
    after that ends the process at once, by the signal's default action."""
    script = textwrap.dedent(
        """
        import os, signal, sys, time
        from rewardmap.grpo.faults import REPEAT_WINDOW_S, StopSignals
        with StopSignals() as signals:
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGTERM)
            print("after two signals:", signals.received.name, flush=True)
            time.sleep(REPEAT_WINDOW_S + 0.5)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        print("not aborted", flush=True)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGTERM, result.stderr
    assert result.stdout.strip() == "after two signals: SIGUSR1"
    assert "SIGUSR1: stopping after this step with a checkpoint" in result.stderr
    assert "SIGTERM again: aborting at once, without a checkpoint" in result.stderr


def _poison(trainer: GRPOTrainer, gradients: set[int], rollouts: set[int]) -> None:
    """A hook on the language model's final norm: in the steps `gradients` its gradient becomes NaN (the loss stays
    finite), in the steps `rollouts` its output does (the rollout engine's scores are NaN)."""

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        step = trainer.step_count + 1
        if step in rollouts:
            return output * math.nan
        if step in gradients and output.requires_grad:
            output.register_hook(lambda grad: grad * math.nan)
        return output

    trainer.parts.model.model.language_model.norm.register_forward_hook(hook)


def test_nonfinite_steps_take_no_update_and_three_in_a_row_stop_the_run(
    tiny_model_dir, synth_dataset_dir, tmp_path, world, caplog
):
    extra = ("trainer.save_freq=1", "trainer.save_limit=5", "trainer.max_steps=6")
    config = load_config(DEMO, small_overrides(tiny_model_dir, synth_dataset_dir, tmp_path, *extra))
    trainer = GRPOTrainer(config, world)
    _poison(trainer, gradients={2, 4}, rollouts={3})
    with caplog.at_level(logging.WARNING), pytest.raises(RunStopped) as stopped:
        trainer.fit()

    last = checkpoint.checkpoint_root(tmp_path) / "step_000003"
    assert stopped.value.exit_code == EXIT_NONFINITE
    assert str(stopped.value).startswith("stopped at step 4 (stage 1): 3 steps in a row were not finite (the last: ")
    assert f"the last good checkpoint is {last}, which trainer.resume=auto resumes from: lower trainer.lr" in str(
        stopped.value
    )
    metrics = {record["step"]: record for record in read_metrics(tmp_path)}
    assert sorted(metrics) == [1, 2, 3, 4]
    assert metrics[1]["optim/nonfinite_skipped"] == 0 and math.isfinite(metrics[1]["optim/grad_norm"])
    assert metrics[2]["optim/nonfinite_skipped"] == 1 and math.isnan(metrics[2]["optim/grad_norm"])
    assert math.isfinite(metrics[2]["loss/total"])
    assert metrics[3]["optim/nonfinite_skipped"] == 1 and metrics[3]["optim/updates"] == 0
    assert metrics[3]["rollout/nonfinite_logprobs"] == 4, "every completion of step 3 was sampled from NaN scores"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "step 2 (stage 1): the gradient norm not finite: no optimizer step (1 in a row" in " ".join(warnings)
    assert "step 3 (stage 1): the rollout engine's log-probs not finite: no optimizer step (2 in a row" in " ".join(
        warnings
    )
    # No update: steps 2 and 3 saved step 1's weights and AdamW state unchanged, all finite; step 4 saved nothing.
    saved = sorted(p.name for p in checkpoint.checkpoint_root(tmp_path).iterdir())
    assert saved == ["step_000001", "step_000002", "step_000003"]
    steps = [checkpoint.checkpoint_root(tmp_path) / name for name in saved]
    assert _distcp_bytes(steps[0]) == _distcp_bytes(steps[1]) == _distcp_bytes(steps[2])
    assert checkpoint.weights_finite(trainer.parts.model)

    # Weights that are not finite are never saved.
    with torch.no_grad():
        local(next(trainer.parts.model.parameters())).view(-1)[0] = math.nan
    with pytest.raises(RunStopped, match=f"not finite, so no checkpoint was written; the last good one is {last}"):
        trainer.save()
    assert sorted(p.name for p in checkpoint.checkpoint_root(tmp_path).iterdir()) == saved


def test_a_checkpoint_that_cannot_be_written_stops_cleanly_and_resumes(
    tiny_model_dir, synth_dataset_dir, tmp_path, world
):
    """OSError(ENOSPC) from the shard writer of step 2 after its files were written, as a disk filling up mid-save."""
    extra = ("trainer.save_freq=1", "trainer.max_steps=2")
    config = load_config(DEMO, small_overrides(tiny_model_dir, synth_dataset_dir, tmp_path, *extra))
    trainer = GRPOTrainer(config, world)
    write = trainer.parts.backend.save

    def fill_the_disk(directory: Path) -> None:
        write(directory)
        if trainer.step_count == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "__0_0.distcp"))

    trainer.parts.backend.save = fill_the_disk
    with pytest.raises(RunStopped) as stopped:
        trainer.fit()
    root = checkpoint.checkpoint_root(tmp_path)
    first = root / "step_000001"
    assert stopped.value.exit_code == EXIT_WRITE
    message = str(stopped.value)
    assert message.startswith(f"could not write {root / 'step_000002'}: No space left on device; a checkpoint needs")
    assert f"{sum(checkpoint.verify(first)['files'].values()) / 1e6:.3g} MB" in message  # the size of the last one
    assert message.endswith(f".step_000002.tmp was removed and trainer.resume=auto will continue from {first}")
    assert [p.name for p in root.iterdir()] == ["step_000001"]  # no temporary directory left, step 1 intact
    assert checkpoint.verify(first)["step"] == 1

    resumed = GRPOTrainer(config, world)  # the space is free again
    assert resumed.fit() == root / "step_000002"
    assert checkpoint.verify(root / "step_000002")["step"] == 2
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 2]  # step 2 logged, its save lost, trained again


def test_output_files_that_cannot_be_written_stop_with_one_sentence(tmp_path):
    """answers.jsonl, results files and metrics.jsonl on a full device (/dev/full: every write fails with ENOSPC)."""
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full here")
    with pytest.raises(RunStopped) as stopped:
        append_answers(full, [{"id": "row-0", "response": "yes"}])
    assert stopped.value.exit_code == EXIT_WRITE
    assert str(stopped.value) == f"could not write {full}: No space left on device; {RERUN}"
    (tmp_path / "metrics.jsonl").symlink_to(full)
    with pytest.raises(RunStopped, match="metrics.jsonl: No space left on device; free space and run the same"):
        MetricsLogger(tmp_path, tensorboard=False).log(1, {"reward/mean": 1.0})
    with pytest.raises(RunStopped, match="results.json: No such file or directory; free space and run the same"):
        replace_file(tmp_path / "gone" / "results.json", "{}")


def _tmpfs(path: Path, size: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True, capture_output=True)


@pytest.mark.slow
def test_a_full_file_system(tiny_model_dir, synth_dataset_dir, tmp_path):
    """On a 420 MB tmpfs a checkpoint of the tiny model (337 MB) fits once: the run warns before its first step, step
    2's save fails and leaves nothing behind; with the file system enlarged, the same command resumes from step 1."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    try:
        _tmpfs(mount, "420M")
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        pytest.skip(f"cannot mount a tmpfs here ({error})")
    try:
        out = mount / "run"
        extra = ("trainer.save_freq=1", "trainer.save_limit=1", f"data.image_cache_dir={tmp_path / 'image_cache'}")
        command = _train_command(
            small_overrides(tiny_model_dir, synth_dataset_dir, out, "trainer.max_steps=3", *extra)
        )
        full = subprocess.run(command, env=ENV, cwd=REPO, capture_output=True, text=True)
        assert full.returncode == EXIT_WRITE, full.stderr[-3000:]
        assert "free and a checkpoint takes about" in full.stderr  # the warning before the first step
        root = checkpoint.checkpoint_root(out)
        assert f"rewardmap train: could not write {root / 'step_000002'}: " in full.stderr
        assert f"trainer.resume=auto will continue from {root / 'step_000001'}" in full.stderr
        assert [p.name for p in root.iterdir()] == ["step_000001"]
        subprocess.run(["mount", "-o", "remount,size=800M", str(mount)], check=True)
        resumed = subprocess.run(command, env=ENV, cwd=REPO, capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert [p.name for p in root.iterdir()] == ["step_000003"] and checkpoint.verify(root / "step_000003")
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The process id of a torchrun worker by its RANK."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    for pid in children:
        if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return int(pid)
    raise AssertionError(f"no worker of rank {rank} among {children}")


@pytest.mark.slow
def test_a_rank_that_dies_or_hangs_ends_the_run_naming_it(tiny_model_dir, synth_dataset_dir, tmp_path):
    """Two 2-process runs at once: rank 1 SIGKILLed in one, stopped in the other (SIGSTOP: a hang), once step 1 is
    logged. Each run ends within trainer.collective_timeout_s + 30 s of the fault, the hang within + 70 s (10 s of
    report window, then torchrun's fixed 30 s grace before it kills the hung rank), with rank 0 naming rank 1."""
    timeout = 20
    runs = {}
    try:
        for fault in (signal.SIGKILL, signal.SIGSTOP):
            out = tmp_path / fault.name
            extra = ("trainer.max_steps=2", f"trainer.collective_timeout_s={timeout}")
            command = torchrun(2, *train_args(*small_overrides(tiny_model_dir, synth_dataset_dir, out, *extra)))
            log = (tmp_path / f"{fault.name}.log").open("w")
            runs[fault] = (out, log, subprocess.Popen(command, env=ENV, cwd=REPO, stderr=log, start_new_session=True))
        faulted = {}
        for fault, (out, _, launcher) in runs.items():
            _wait_for(out / "metrics.jsonl", launcher, "step 1")
            os.kill(_rank_pid(launcher, 1), fault)
            faulted[fault] = time.time()
        for fault, (_, log, launcher) in runs.items():
            launcher.wait(timeout=timeout + 120)
            ended = time.time() - faulted[fault]
            log.close()
            stderr = Path(log.name).read_text()
            assert launcher.returncode != 0
            assert ended < timeout + (30 if fault == signal.SIGKILL else 70), (fault.name, ended)
            assert "rewardmap train: rank 0: a collective operation of step " in stderr, stderr[-3000:]
            assert "rank 1 did not report back within 10 s, so it died, hangs" in stderr
            assert f"(trainer.collective_timeout_s={timeout})" in stderr
        assert re.search(rf"exitcode\s*: {EXIT_RANK_LOST} ", stderr), "rank 0's own exit code, in torchrun's summary"
    finally:
        for _, _, launcher in runs.values():
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
