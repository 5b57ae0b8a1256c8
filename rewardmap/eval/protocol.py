"""How each benchmark's own code asks its questions (fscdc/ReasonMap main.py, main_plus.py): the prompt, the answer
length and the decoding from the checkpoint's generation_config.json, as `rewardmap eval` reproduces them."""

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewardmap.data.prompts import render_prompt
from rewardmap.data.schema import is_reasonmap_row
from rewardmap.errors import InputError
from rewardmap.rollout.base import Sampling

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Protocol:
    """How one benchmark's own code asks a row."""

    source: str
    """The original script."""
    prompt_format: str
    """`benchmark`: one user turn, the map then the stored question untouched (after the chat template's default system
    turn); `training`: RewardMap's released training prompt (`render_prompt`: a newline after the map, stripped)."""
    max_new_tokens: int
    """The answer length cap it passes to `generate`."""


# The one place that says how `rewardmap eval` asks each benchmark. Both scripts call transformers' `generate` with
# max_new_tokens only, so they decode with the checkpoint's generation_config.json, one answer at a time (no padding).
PROTOCOLS = {
    "reasonmap": Protocol(source="fscdc/ReasonMap main.py", prompt_format="benchmark", max_new_tokens=2048),
    "reasonmap-plus": Protocol(source="fscdc/ReasonMap main_plus.py", prompt_format="benchmark", max_new_tokens=2048),
}

GENERATION_CONFIG = "generation_config.json"
# What transformers' `generate` uses for a decoding field generation_config.json leaves out (its global defaults).
GENERATE_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0}
DECODING_FLAGS = ("temperature", "top_p", "top_k", "repetition_penalty")


def benchmark_of(row: Mapping) -> str:
    """The benchmark whose protocol asks `row`: `reasonmap` for the ReasonMap layout (short and long questions),
    `reasonmap-plus` for one-question rows (ReasonMap-Plus, ReasonMap-Train, synthetic)."""
    return "reasonmap" if is_reasonmap_row(row) else "reasonmap-plus"


def protocols_of(rows: Iterable[Mapping]) -> dict[str, Protocol]:
    """The protocols of the benchmarks `rows` belong to, by name."""
    return {name: PROTOCOLS[name] for name in sorted({benchmark_of(row) for row in rows})}


def render_question(processor: Any, row: Mapping, question: str | None, *, training: bool = False) -> str:
    """The prompt of one answer (one `<|image_pad|>` placeholder): `question` None asks a one-question row's
    `question`, "short" / "long" a ReasonMap row's `question_short` / `question_long`.

    Asked as its benchmark's protocol says (`benchmark`: a user turn holding the map, then the text untouched), or with
    `training` a one-question row as in training (`render_prompt`; ReasonMap rows have no other prompt than theirs).
    """
    text = row["question"] if question is None else row[f"question_{question}"]
    prompt_format = "training" if training and question is None else PROTOCOLS[benchmark_of(row)].prompt_format
    if prompt_format == "training":
        return render_prompt(processor, text)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _valid(key: str, value: Any) -> bool:
    """Whether a generation_config.json decoding field has a usable type."""
    if key == "do_sample":
        return isinstance(value, bool)
    return not isinstance(value, bool) and isinstance(value, int if key == "top_k" else int | float)


def checkpoint_decoding(model_dir: str | Path) -> dict[str, Any]:
    """The decoding fields the checkpoint's generation_config.json sets (do_sample, temperature, top_p, top_k,
    repetition_penalty; {} when there is no such file)."""
    path = Path(model_dir) / GENERATION_CONFIG
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON ({err}); fix it or delete it (generate's defaults apply)") from err
    found = {key: config[key] for key in GENERATE_DEFAULTS if isinstance(config, dict) and config.get(key) is not None}
    for key, value in found.items():
        if not _valid(key, value):
            raise InputError(
                f"{path}: {key} is {value!r}, not a {type(GENERATE_DEFAULTS[key]).__name__}; fix the file"
            )
    return found


def resolve_decoding(
    model_dir: str | Path, overrides: Mapping[str, float | int | None], *, max_tokens: int, seed: int
) -> tuple[Sampling, dict]:
    """The eval's Sampling and its record for the protocol block.

    Each of temperature, top_p, top_k, repetition_penalty is the user's (a non-None `overrides` value) or else what
    `generate` takes from the checkpoint's generation_config.json: the file's value, transformers' default when it
    has none, temperature 0 (greedy) unless the file sets do_sample. Temperature 0 or top_k 1 (one candidate: the
    same tokens at any temperature) decode greedily. Both engines apply the result exactly.
    """
    checkpoint = checkpoint_decoding(model_dir)
    generate = GENERATE_DEFAULTS | checkpoint
    values = {key: generate[key] for key in DECODING_FLAGS}
    if not generate["do_sample"]:
        values["temperature"] = 0.0
    given = {key: value for key, value in overrides.items() if value is not None}
    values |= given
    problems = {
        "temperature": values["temperature"] < 0,
        "top_p": not 0 < values["top_p"] <= 1,
        "repetition_penalty": values["repetition_penalty"] <= 0,
    }
    for key in (key for key, bad in problems.items() if bad):
        source = f"--{key.replace('_', '-')}" if key in given else f"{Path(model_dir) / GENERATION_CONFIG}"
        raise InputError(
            f"{key} {values[key]!r} (from {source}) is out of range: temperature >= 0, 0 < top_p <= 1, "
            "repetition_penalty > 0; pass a valid value with the flag"
        )
    greedy = values["temperature"] <= 0 or values["top_k"] == 1
    sampling = Sampling(
        max_tokens=max_tokens,
        temperature=0.0 if greedy else float(values["temperature"]),
        top_p=float(values["top_p"]),
        top_k=int(values["top_k"]),
        repetition_penalty=float(values["repetition_penalty"]),
        seed=seed,
    )
    record = {"greedy": greedy, **{key: getattr(sampling, key) for key in DECODING_FLAGS}, "seed": seed}
    return sampling, record | {"from_flags": sorted(given), "generation_config": checkpoint}
