"""The project's own error class for bad user input (config keys, data rows, files, CLI arguments)."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input that the message names (what, where, how to fix); the CLI prints it as one line and exits 2.

    A subclass of ValueError, so callers that catch ValueError keep working; any other exception (a bug, or an
    internal error of torch or vLLM) is not an input error and fails with its traceback.
    """
