"""Answer texts and answer files: thinking-model extraction, resumable answers.jsonl, answers produced elsewhere."""

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from rewardmap.data.schema import is_reasonmap_row
from rewardmap.errors import InputError, write_failed

logger = logging.getLogger(__name__)

# How the benchmark's main.py cuts the answer out of a model's output (EVAL_SPEC §1).
ANSWER_FORMATS = ("plain", "kimi", "skywork", "qvq")
_THINK_END = {"kimi": "◁/think▷", "skywork": "</think>"}
_QVQ_BOXED = re.compile(r"boxed{(.+)}")
_QVQ_TEXT = re.compile(r"\\text{(.+?)}")


def answer_text(response: str, answer_format: str = "plain") -> str:
    """The answer text the benchmark scores: the response (`plain`: Qwen, InternVL), the trimmed text after the
    last `◁/think▷` (`kimi`) or `</think>` (`skywork`), or the newline-joined `\\text{...}` parts of `boxed{...}`
    (`qvq`; the whole response when nothing is boxed)."""
    if answer_format == "plain":
        return response
    if answer_format in _THINK_END:
        return response.split(_THINK_END[answer_format])[-1].strip()
    if answer_format == "qvq":
        boxed = _QVQ_BOXED.search(response)
        return "\n".join(_QVQ_TEXT.findall(boxed.group(1))) if boxed else response
    raise InputError(f"unknown answer format {answer_format!r}; choose one of {', '.join(ANSWER_FORMATS)}")


# What a failed write of an evaluation's files tells the user to do.
RERUN = "free space and run the same command: the answers already in answers.jsonl are kept and not generated again"


def replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: a synced temporary file in the same folder, renamed over it; a write that
    fails (no space, quota, permissions) removes the temporary file and stops the run with one sentence."""
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise write_failed(path, error, RERUN) from error
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_failed(path, error, RERUN) from error
        raise


def read_answers(path: Path) -> dict[str, dict]:
    """Finished records of answers.jsonl by id.

    A last line cut short (an interrupted write) is dropped; a complete last record whose newline was not written
    is kept. Either way the file is repaired atomically, so the next append starts on a fresh line.
    """
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    records = {}
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise InputError(f"{path}: line {number} is not JSON ({err}); delete the line or the file") from err
            logger.warning("%s: dropping the torn last line %d (an interrupted write)", path, number)
            replace_file(path, "".join(lines[:-1]))
            return records
        records[record["id"]] = record
    if text and not text.endswith("\n"):
        logger.warning("%s: the last record lacks its newline (an interrupted write); adding it", path)
        replace_file(path, text + "\n")
    return records


def append_answers(path: Path, records: Sequence[Mapping]) -> None:
    """Append records as JSON lines and fsync, so a crash loses at most the batch being generated (a line cut short
    by a failed write is dropped by `read_answers` when the run is resumed)."""
    try:
        with path.open("a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise write_failed(path, error, RERUN) from error


def _token_count(entry: Mapping, key: str, where: str) -> int | None:
    """An optional token count: absent or null, else a non-negative integer."""
    value = entry.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InputError(f"{where}: field {key!r} must be a non-negative integer, got {value!r}")
    return value


def _answers_of(entry: Mapping, row: Mapping, where: str) -> dict[str | None, tuple[str, int | None]]:
    """{question: (response, token count)} of one line: short and long for a ReasonMap row, None for a Plus row."""
    if is_reasonmap_row(row):
        keys = {"short": ("response_short", "token_count_short"), "long": ("response_long", "token_count_long")}
        layout = '{"index": i, "response_short": "...", "response_long": "..."}'
    else:
        keys = {None: ("response", "token_count")}
        layout = '{"index": i, "response": "..."}'
    answers = {}
    for question, (text_key, count_key) in keys.items():
        if not isinstance(entry.get(text_key), str):
            raise InputError(
                f"{where}: field {text_key!r} must be the answer text, got {entry.get(text_key)!r}; this row is a "
                f"{'ReasonMap' if question else 'ReasonMap-Plus / Train'} row: write {layout}"
            )
        answers[question] = (entry[text_key], _token_count(entry, count_key, where))
    return answers


def read_responses(path: Path, rows: Sequence[Mapping]) -> dict[int, dict[str | None, tuple[str, int | None]]]:
    """Answers produced elsewhere: {row index: {question: (response, token count or None)}}, in file order.

    `path` is JSONL, one line per answered row: `{"index": i, "response_short": ..., "response_long": ...}` for a
    ReasonMap row, `{"index": i, "response": ...}` for a Plus / Train row, `index` being the row's 0-based position
    in the loaded split; optional `token_count_short` / `token_count_long` / `token_count`. A line that is not such
    an object, names no row, or answers a row already answered raises an InputError naming the line.
    """
    if not path.is_file():
        raise InputError(f"--responses {path}: no such file; pass the JSONL of answers to score")
    answers: dict[int, dict] = {}
    first_line: dict[int, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{where}: not JSON ({err}); write one JSON object per line") from err
        index = entry.get("index") if isinstance(entry, dict) else None
        if isinstance(index, bool) or not isinstance(index, int):
            raise InputError(f"{where}: field 'index' must be the row's 0-based position in the split, got {index!r}")
        if not 0 <= index < len(rows):
            raise InputError(
                f"{where}: index {index} names no row; the loaded split has {len(rows)} rows (indices 0 to "
                f"{len(rows) - 1}): check --data and --split"
            )
        if index in answers:
            raise InputError(f"{where}: row {index} is answered twice (first on line {first_line[index]}); keep one")
        answers[index] = _answers_of(entry, rows[index], where)
        first_line[index] = number
    return answers
