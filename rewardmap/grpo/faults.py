"""What clusters do to a run, caught at the step boundary: stop signals, steps that are not finite, and a collective
that fails because another rank died or hangs (which rank, from the reports in the process group's store)."""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import torch.distributed as dist

from rewardmap.config import TrainerConfig
from rewardmap.distributed import World, all_reduce_sum
from rewardmap.errors import EXIT_NONFINITE, EXIT_RANK_LOST, EXIT_STOPPED, RunStopped, one_line
from rewardmap.grpo import checkpoint
from rewardmap.grpo.backend import TrainBackend

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
REPEAT_WINDOW_S = 2.0
"""A signal this soon after the first is the same request delivered twice (say by the scheduler and by torchrun)."""
REPORT_WINDOW_S = 10.0
"""How long a rank whose collective failed waits for the other ranks to report the same failure."""
# The figures a non-finite step is named by, as the step's metrics hold them.
NONFINITE_FIGURES = {
    "loss/total": "the loss",
    "optim/grad_norm": "the gradient norm",
    "rollout/nonfinite_logprobs": "the rollout engine's log-probs",
}


class StopSignals:
    """While entered (in the main thread): SIGTERM, SIGINT and SIGUSR1 ask the run to stop at the next step boundary;
    the same signals again, more than REPEAT_WINDOW_S later, end the process at once as their default action does."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.received_at = 0.0
        self.previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python runs handlers in the main thread only
            for number in STOP_SIGNALS:
                self.previous[number] = signal.signal(number, self._handle)
                signal.siginterrupt(number, False)  # restart the system calls a signal interrupts (sockets, files)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self.previous.items():  # None: a handler set outside Python, which cannot be put back
            signal.signal(number, signal.SIG_DFL if handler is None else handler)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        # os.write, not logging: a handler that writes to a stream the interrupted code was writing to raises.
        name = signal.Signals(number).name
        if self.received is None:
            self.received, self.received_at = signal.Signals(number), time.monotonic()
            os.write(2, f"{name}: stopping after this step with a checkpoint (again to abort at once)\n".encode())
        elif time.monotonic() - self.received_at > REPEAT_WINDOW_S:
            os.write(2, f"{name} again: aborting at once, without a checkpoint\n".encode())
            signal.signal(number, signal.SIG_DFL)
            signal.raise_signal(number)

    def agreed(self, world: World) -> str | None:
        """The signal's name if any rank received one, else None (collective: every rank asks at the same step)."""
        if not all_reduce_sum([float(self.received is not None)], world.device)[0]:
            return None
        return self.received.name if self.received is not None else "a stop signal (on another rank)"

    def stop(self, world: World, name: str, step: int, saved: Path) -> RunStopped:
        """The stop after checkpoint `saved` of step `step`, said by the main rank."""
        message = (
            f"stopped by {name} after step {step} with checkpoint {saved}; run the same command to resume from it "
            f"(trainer.resume=auto)"
        )
        return RunStopped(message if world.is_main else "", EXIT_STOPPED)


class NonfiniteGuard:
    """Counts the steps in a row that took no optimizer step because a figure was not finite (the same figures on
    every rank, so every rank decides alike), and stops the run after trainer.max_nonfinite_steps of them."""

    def __init__(self, limit: int, world: World) -> None:
        self.limit = limit
        self.world = world
        self.in_a_row = 0

    def check(self, step: int, stage: int, metrics: dict[str, float]) -> bool:
        """Whether step `step` (of curriculum stage `stage`, 0-based) made the run stop; warns when it was skipped."""
        if not metrics.get("optim/nonfinite_skipped"):
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        if self.world.is_main:
            logger.warning(
                "step %d (stage %d): %s not finite: no optimizer step (%d in a row; the run stops at "
                "trainer.max_nonfinite_steps=%d)",
                step,
                stage + 1,
                self.figures(metrics),
                self.in_a_row,
                self.limit,
            )
        return self.in_a_row >= self.limit

    @staticmethod
    def figures(metrics: dict[str, float]) -> str:
        """Which figures of a skipped step were not finite, in words."""
        named = [
            words
            for key, words in NONFINITE_FIGURES.items()
            if key in metrics
            and (not math.isfinite(metrics[key]) or (key.startswith("rollout/") and metrics[key] > 0))
        ]
        return " and ".join(named) or "an optimizer step's figures"

    def stop(self, step: int, stage: int, metrics: dict[str, float], last: Path | None, lr: float) -> RunStopped:
        """The stop after the last of too many non-finite steps: the last good checkpoint and what to try."""
        message = (
            f"stopped at step {step} (stage {stage + 1}): {self.in_a_row} steps in a row were not finite (the last: "
            f"{self.figures(metrics)}); the last good checkpoint is "
            f"{last or 'none (the run starts from model.path)'}, which trainer.resume=auto resumes from: lower "
            f"trainer.lr (now {lr:g}) or trainer.max_grad_norm, check the rewards and data of this stage, or raise "
            f"trainer.max_nonfinite_steps to ride it out"
        )
        return RunStopped(message if self.world.is_main else "", EXIT_NONFINITE)


def is_collective_failure(error: BaseException) -> bool:
    """Whether `error` came from the process group (NCCL, the store: DistError; gloo: a RuntimeError from its
    transport, e.g. "Connection closed by peer" or "Timed out waiting 600000ms for recv operation")."""
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and "gloo" in str(error))


def lost_ranks(world: World, step: int) -> list[int] | None:
    """After a collective of step `step` failed on this rank: the ranks that did not report the same failure to the
    process group's store within REPORT_WINDOW_S (they died, hang, or failed on an error of their own first); None
    when the store is gone too (it lived in the rank that died)."""
    key = f"rewardmap/collective_failed/step_{step}/rank_"
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set(f"{key}{world.rank}", "1")
        deadline = time.monotonic() + REPORT_WINDOW_S
        while True:
            silent = [rank for rank in range(world.size) if not store.check([f"{key}{rank}"])]
            if not silent or time.monotonic() > deadline:
                return silent
            time.sleep(0.2)
    except (RuntimeError, ValueError):  # DistStoreError is a RuntimeError
        return None


def rank_lost(world: World, step: int, error: BaseException, timeout_s: float, last: Path | None) -> RunStopped | None:
    """The stop of a run whose collective failed in step `step` because a rank left (named when the store knows);
    None when every rank failed alike (not a lost rank: the caller re-raises the error)."""
    silent = lost_ranks(world, step)
    if silent == []:
        return None
    who = f"rank{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))}" if silent else "another rank"
    # gloo's messages open with its source file and close with advice: keep the words between.
    reason = re.sub(r"^\[[^\]]*\]\s*", "", one_line(error)).split(". ")[0]
    return RunStopped(
        f"rank {world.rank}: a collective operation of step {step} failed ({reason}): {who} did not report "
        f"back within {REPORT_WINDOW_S:.0f} s, so it died, hangs (trainer.collective_timeout_s={timeout_s:g}) or "
        f"stopped on an error of its own (see its log); trainer.resume=auto will continue from "
        f"{last or 'the start (no complete checkpoint yet)'}",
        EXIT_RANK_LOST,
    )


class StepBoundary:
    """The checks of a training loop that starts after step `step`: free space (when made); at each step boundary,
    stop signals (agreed by every rank, then a checkpoint and a stop) and too many non-finite steps in a row; while
    entered, a collective that fails because another rank died or hangs (turned into a stop that names the rank)."""

    def __init__(self, config: TrainerConfig, world: World, run_dir: Path, step: int, backend: TrainBackend) -> None:
        self.config = config
        self.world = world
        self.run_dir = run_dir
        self.in_progress = step + 1
        self.signals = StopSignals()
        self.guard = NonfiniteGuard(config.max_nonfinite_steps, world)
        if world.is_main:
            checkpoint.warn_if_short_of_space(run_dir, backend)

    def __enter__(self) -> StepBoundary:
        self.signals.__enter__()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: object) -> None:
        try:  # the handlers stay while the ranks report: torchrun sends SIGTERM when the first of them exits
            if isinstance(error, Exception) and self.world.size > 1 and is_collective_failure(error):
                timeout = self.config.collective_timeout_s
                stop = rank_lost(self.world, self.in_progress, error, timeout, checkpoint.latest(self.run_dir))
                if stop is not None:
                    raise stop from error
        finally:
            self.signals.__exit__()

    def after(
        self, step: int, stage: int, metrics: dict[str, float], due: bool, save: Callable[[], Path]
    ) -> Path | None:
        """At the end of step `step` (collective): stops after too many non-finite steps; calls `save` when a save is
        `due` or any rank received a stop signal, and then stops. Returns the checkpoint saved, if any."""
        if self.guard.check(step, stage, metrics):
            raise self.guard.stop(step, stage, metrics, checkpoint.latest(self.run_dir), self.config.lr)
        received = self.signals.agreed(self.world)
        saved = save() if due or received else None
        if received:
            raise self.signals.stop(self.world, received, step, saved)
        self.in_progress = step + 1
        return saved
