"""The project's own errors: bad user input, and a run that stops on purpose (with its exit code)."""

from __future__ import annotations

from pathlib import Path

# Exit codes of `rewardmap` (README, "When things go wrong"); 0 is success and 1 an unexpected error (a traceback).
EXIT_INPUT = 2
"""Bad input: a config key, a data row, a path."""
EXIT_NONFINITE = 3
"""trainer.max_nonfinite_steps steps in a row were not finite, or the weights were not finite at a save."""
EXIT_WRITE = 4
"""A checkpoint or an output file could not be written (no space, quota, permissions, a vanished mount)."""
EXIT_RANK_LOST = 5
"""Another process of the torchrun world died or hung (a collective failed or timed out)."""
EXIT_STOPPED = 75
"""Stopped by SIGTERM, SIGINT or SIGUSR1 after writing a checkpoint; run the same command to resume (EX_TEMPFAIL)."""


class InputError(ValueError):
    """Bad input that the message names (what, where, how to fix); the CLI prints it as one line and exits 2.

    A subclass of ValueError, so callers that catch ValueError keep working; any other exception (a bug, or an
    internal error of torch or vLLM) is not an input error and fails with its traceback.
    """


class RunStopped(Exception):
    """A run that stops on purpose: the CLI prints the one-sentence message (if any: in a torchrun world the main
    rank says it, the others stop with an empty one) and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def one_line(error: BaseException) -> str:
    """An error as one line: an OSError's own words (`No space left on device`), the first failure a torch
    distributed checkpoint gathered from its ranks, else the first line of its message."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    failures = getattr(error, "failures", None)  # torch.distributed.checkpoint's CheckpointException
    if isinstance(failures, dict) and failures:
        return one_line(next(iter(failures.values()))[0])
    return (str(error).splitlines() or [type(error).__name__])[0]


def write_failed(path: Path, reason: str | BaseException, then: str) -> RunStopped:
    """The stop of a run whose file or directory `path` could not be written: names it, why, and what to do `then`."""
    because = one_line(reason) if isinstance(reason, BaseException) else reason
    return RunStopped(f"could not write {path}: {because}; {then}", EXIT_WRITE)
