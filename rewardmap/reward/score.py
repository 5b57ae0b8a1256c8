"""The reward: sample validation, difficulty weights, modes, and compute_score / score_batch for both variants."""

import logging
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rewardmap.errors import InputError
from rewardmap.reward.answer import VARIANTS, answer_is_correct, extract_answer
from rewardmap.reward.metro import LineKeys, mapping_line_keys, path_line_keys, resolve_metro_path
from rewardmap.reward.normalize import clean_released, name_key
from rewardmap.reward.planning import corrected_sections, released_sections, route_detail, route_is_correct
from rewardmap.reward.stops import counting1_detail

logger = logging.getLogger(__name__)

TYPES = ("TorF1", "TorF2", "Counting1", "Counting2", "Counting3", "planning")
MODES = ("difficulty_aware", "baseline")
CITY_WEIGHTS = {"easy": 1.0, "middle": 1.2, "hard": 1.5}
TRANSFER_BONUS = 0.5  # added to the weight of planning questions whose reference route has transfers
DETAIL_WEIGHT = 0.5


@dataclass(frozen=True, slots=True)
class RewardBreakdown:
    """One scored response: total = weight * (correctness + 0.5 * detail)."""

    total: float
    correctness: float
    detail: float
    weight: float
    correct: bool


def describe_sample(sample: Mapping) -> str:
    """A short identification of a sample for error messages."""
    fields = ("city", "type", "station_1", "station_2", "difficulty_city")
    return "sample(" + ", ".join(f"{f}={sample.get(f)!r}" for f in fields) + ")"


def _kind(sample_type: object, variant: str) -> str:
    """TorF / Counting1-3 / planning / planning-like (released substring test); raises on anything else."""
    if variant == "corrected":
        if sample_type not in TYPES:
            raise InputError(f"unknown type {sample_type!r}; expected one of {TYPES}")
        return "TorF" if sample_type in ("TorF1", "TorF2") else sample_type
    if not isinstance(sample_type, str):
        raise InputError(f"type must be a string, got {sample_type!r}")
    if "TorF" in sample_type:
        return "TorF"
    if "Counting" in sample_type:
        if sample_type not in ("Counting1", "Counting2", "Counting3"):
            raise InputError(f"unknown Counting type {sample_type!r}; expected Counting1, Counting2 or Counting3")
        return sample_type
    if "planning" in sample_type:
        return "planning" if sample_type == "planning" else "planning-like"
    raise InputError(f"unknown type {sample_type!r}; expected one of {TYPES}")


def _weight(sample: Mapping, kind: str, mode: str) -> float:
    if mode == "baseline":
        return 1.0
    weight = CITY_WEIGHTS.get(sample.get("difficulty_city"))
    if weight is None:
        raise InputError(
            f"unknown difficulty_city {sample.get('difficulty_city')!r}; expected one of {list(CITY_WEIGHTS)}"
        )
    if kind.startswith("planning"):
        transfers = sample["question_transfer_count"]
        if transfers < 0:
            raise InputError(f"question_transfer_count must be >= 0 in difficulty_aware mode, got {transfers!r}")
        return weight + TRANSFER_BONUS if transfers > 0 else weight
    return weight


def _line_keys(sample: Mapping, variant: str, metro_root: str | os.PathLike | None) -> LineKeys:
    metro = sample.get("metro")
    if metro is not None:
        return mapping_line_keys(metro, variant, "field 'metro'")
    json_path = sample.get("json")
    if not isinstance(json_path, (str, os.PathLike)):
        raise InputError(f"needs its metro data: a 'json' path or a 'metro' mapping, got json={json_path!r}")
    path = resolve_metro_path(json_path, metro_root)
    try:
        return path_line_keys(path, variant)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{describe_sample(sample)}: metro file {path} not found (json={json_path!r}, metro_root={metro_root!r}); "
            "pass metro_root=<the stations folder> or fix the path"
        ) from None


def _prepare(
    sample: Mapping, variant: str, mode: str, counting1_detail: bool, metro_root: str | os.PathLike | None
) -> tuple[str, float, LineKeys | None]:
    """Validate everything a score depends on, up front: (kind, weight, line keys or None)."""
    if variant not in VARIANTS:
        raise InputError(f"unknown reward variant {variant!r}; expected one of {VARIANTS}")
    if mode not in MODES:
        raise InputError(f"unknown reward mode {mode!r}; expected one of {MODES}")
    kind = _kind(sample.get("type"), variant)
    if kind.startswith("planning"):
        transfers = sample.get("question_transfer_count")
        if not isinstance(transfers, numbers.Real) or isinstance(transfers, bool) or math.isnan(transfers):
            raise InputError(f"question_transfer_count (T) must be a number, got {transfers!r}")
    needs_metro = kind.startswith("planning") or (kind == "Counting1" and counting1_detail and variant == "corrected")
    if needs_metro and not all(isinstance(sample.get(f), str) for f in ("station_1", "station_2")):
        raise InputError("station_1 and station_2 must be strings")
    weight = _weight(sample, kind, mode)
    return kind, weight, _line_keys(sample, variant, metro_root) if needs_metro else None


def _planning(response: str, sample: Mapping, keys: LineKeys, kind: str, variant: str) -> tuple[bool, float]:
    transfers = sample["question_transfer_count"]
    if variant == "released":
        start, end = clean_released(sample["station_1"]), clean_released(sample["station_2"])
        list_a, list_d = released_sections(response)
        correct = route_is_correct(list_a, keys, start, end, aliases=True)
        if kind != "planning":
            return correct, 0.0
        return correct, route_detail(list_d, keys, start, end, transfers, aliases=True, corrected=False)
    start, end = name_key(sample["station_1"]), name_key(sample["station_2"])
    aliases = str(sample.get("city", "")).lower() == "beijing"
    sections = corrected_sections(response)
    correct = route_is_correct(sections, keys, start, end, aliases)
    return correct, route_detail(sections, keys, start, end, transfers, aliases=aliases, corrected=True)


def _prepare_sample(sample: Mapping, options: dict) -> tuple:
    try:
        return _prepare(sample, **options)
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{describe_sample(sample)}: {err}") from None


def _score(response: str, sample: Mapping, prepared: tuple, variant: str) -> RewardBreakdown:
    kind, weight, keys = prepared
    if not isinstance(response, str):
        raise InputError(f"{describe_sample(sample)}: response must be a str, got {type(response).__name__}")
    detail = 0.0
    if kind.startswith("planning"):
        correct, detail = _planning(response, sample, keys, kind, variant)
    else:
        correct = answer_is_correct(extract_answer(response, variant), kind, sample.get("answer"), variant)
        if keys is not None:
            detail = counting1_detail(response, keys, sample["station_1"], sample["station_2"])
    correctness = 10.0 if correct else 0.0
    return RewardBreakdown((correctness + DETAIL_WEIGHT * detail) * weight, correctness, detail, weight, correct)


def compute_score(
    response: str,
    sample: Mapping,
    *,
    variant: str = "released",
    mode: str = "difficulty_aware",
    counting1_detail: bool = False,
    metro_root: str | os.PathLike | None = None,
) -> RewardBreakdown:
    """Score one response to one dataset row (REWARD_SPEC.md); raises only on a bad sample, never on the response."""
    options = {"variant": variant, "mode": mode, "counting1_detail": counting1_detail, "metro_root": metro_root}
    return _score(response, sample, _prepare_sample(sample, options), variant)


def score_batch(
    responses: Sequence[str],
    samples: Sequence[Mapping],
    *,
    variant: str = "released",
    mode: str = "difficulty_aware",
    counting1_detail: bool = False,
    metro_root: str | os.PathLike | None = None,
) -> list[RewardBreakdown]:
    """`compute_score` over aligned responses and samples; every sample is validated before any response is parsed."""
    if len(responses) != len(samples):
        raise InputError(f"score_batch got {len(responses)} responses but {len(samples)} samples; pass one per sample")
    options = {"variant": variant, "mode": mode, "counting1_detail": counting1_detail, "metro_root": metro_root}
    prepared = [_prepare_sample(sample, options) for sample in samples]
    return [_score(r, s, p, variant) for r, s, p in zip(responses, samples, prepared, strict=True)]
