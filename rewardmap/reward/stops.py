"""Counting1 detail (corrected, opt-in): partial credit for the listed intermediate stops `Stops: [a, b, ...]`."""

import logging
import re
from collections import Counter

from rewardmap.reward.answer import match_close
from rewardmap.reward.metro import LineKeys
from rewardmap.reward.normalize import name_key

logger = logging.getLogger(__name__)

_STOPS_LIST = re.compile(r"stops\s*:\s*\[", re.IGNORECASE)
_PARENS = re.compile(r"[()]")
_EMPTY_ITEM_RUN = re.compile(r",[\s,]*,")  # empty items are skipped anyway; collapsing them first is cheaper
_SKIPPED_ITEMS = ("", "...", "…")


def _split_outside_parens(inner: str) -> list[str]:
    """Split on commas outside `( )`; a stray `)` never takes the depth below zero."""
    parts = inner.split(",")
    first_open = inner.find("(")
    if first_open < 0:
        return parts
    if ")" not in inner:  # nothing ever closes: everything from the first `(` on is one item
        head = inner[:first_open].split(",")
        return head[:-1] + [head[-1] + inner[first_open:]]
    items, current, depth = [], [], 0
    for part in parts:
        current.append(part)
        for paren in _PARENS.findall(part):
            depth = depth + 1 if paren == "(" else max(depth - 1, 0)
        if depth == 0:
            items.append(",".join(current))
            current = []
    if current:
        items.append(",".join(current))
    return items


def _clean_item(item: str) -> str:
    item = item.strip().strip(".").strip(";")
    if item[:3].lower() == "and" and item[3:4].isspace():
        item = item[3:]
    return item.strip()


def listed_stops(response: str) -> Counter:
    """How often each cleaned item occurs in the first `Stops: [...]` list (matching `]`); none/unmatched -> empty."""
    found = _STOPS_LIST.search(response)
    end = -1 if found is None else match_close(response, found.end(), "[]")
    if end < 0:
        return Counter()
    stops: Counter = Counter()
    # Counting the raw items first (in C) keeps a list of a million repeated items cheap.
    inner = _EMPTY_ITEM_RUN.sub(",", response[found.end() : end])
    for raw, count in Counter(_split_outside_parens(inner)).items():
        item = _clean_item(raw)
        if item not in _SKIPPED_ITEMS:
            stops[item] += count
    return stops


def counting1_detail(response: str, keys: LineKeys, station_1: str, station_2: str) -> float:
    """+0.5 per gold stop (strictly between the stations on the first line holding both) seen first, else -0.5."""
    start, end = name_key(station_1), name_key(station_2)
    for line, ordered in keys.ordered.items():
        if start in keys.sets[line] and end in keys.sets[line]:
            lo, hi = sorted((ordered.index(start), ordered.index(end)))
            gold = frozenset(ordered[lo + 1 : hi])
            break
    else:
        return 0.0
    # Order does not matter: each gold key earns +0.5 once, every other occurrence costs 0.5.
    per_key: Counter = Counter()
    for item, count in listed_stops(response).items():
        per_key[name_key(item)] += count
    return sum(0.5 - 0.5 * (count - 1) if key in gold else -0.5 * count for key, count in per_key.items())
