"""Metro line lists: cached loading (suffixes deleted) and cached per-line station keys for both variants."""

import functools
import json
import logging
import os
from collections.abc import Mapping
from typing import NamedTuple

from rewardmap.errors import InputError
from rewardmap.reward.normalize import clean_released, name_key

logger = logging.getLogger(__name__)

STATION_SUFFIXES = (" (Transfer Station)", " (Branch-starting Station)", "（换乘站）", "（支线起始站）")


class LineKeys(NamedTuple):
    """Per line (file order): station keys in order, and as a set; C-forms (released) or N-keys (corrected)."""

    ordered: dict[str, tuple[str, ...]]
    sets: dict[str, frozenset[str]]


def strip_suffixes(name: str) -> str:
    """Delete every occurrence of the four transfer/branch suffixes (`东管头南站 （换乘站）` -> `东管头南站 `)."""
    for suffix in STATION_SUFFIXES:
        name = name.replace(suffix, "")
    return name


def _clean_mapping(raw: object, where: str) -> dict[str, list[str]]:
    if not isinstance(raw, Mapping) or not all(
        isinstance(line, str) and isinstance(stations, list) and all(isinstance(s, str) for s in stations)
        for line, stations in raw.items()
    ):
        raise InputError(f"{where}: metro data must be a JSON object {{line: [station, ...]}} of strings")
    return {line: [strip_suffixes(s) for s in stations] for line, stations in raw.items()}


@functools.lru_cache(maxsize=128)
def load_metro(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a metro file `{line: [station, ...]}` once (cached per path) with the suffixes deleted; do not mutate."""
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    return _clean_mapping(raw, f"metro file {os.fspath(path)}")


def resolve_metro_path(json_path: str | os.PathLike, metro_root: str | os.PathLike | None) -> str:
    """Absolute, normalized path of a sample's `json` field: relative paths resolve against `metro_root` if given."""
    if metro_root is not None and not os.path.isabs(json_path):
        json_path = os.path.join(metro_root, json_path)
    return os.path.abspath(json_path)


def build_line_keys(metro: Mapping[str, list[str]], variant: str) -> LineKeys:
    """Key every station of every line: C once for `released`, the N-key for `corrected`."""
    key = clean_released if variant == "released" else name_key
    ordered = {line: tuple(key(s) for s in stations) for line, stations in metro.items()}
    return LineKeys(ordered, {line: frozenset(keys) for line, keys in ordered.items()})


@functools.lru_cache(maxsize=256)
def path_line_keys(path: str, variant: str) -> LineKeys:
    """`build_line_keys` of a metro file, cached per (absolute path, variant)."""
    return build_line_keys(load_metro(path), variant)


@functools.lru_cache(maxsize=256)
def _frozen_line_keys(frozen: tuple[tuple[str, tuple[str, ...]], ...], variant: str) -> LineKeys:
    return build_line_keys({line: list(stations) for line, stations in frozen}, variant)


def mapping_line_keys(metro: Mapping, variant: str, where: str) -> LineKeys:
    """`build_line_keys` of an in-memory `{line: [stations]}` mapping (suffixes deleted), cached by content."""
    cleaned = _clean_mapping(metro, where)
    return _frozen_line_keys(tuple((line, tuple(stations)) for line, stations in cleaned.items()), variant)
