"""Benchmark aggregation: ReasonMap plain and weighted means, ReasonMap-Plus weighted accuracy (EVAL_SPEC §7)."""

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping

logger = logging.getLogger(__name__)

DIFFICULTY_WEIGHTS = {"easy": 1.0, "middle": 1.5, "hard": 2.0}
# cal_metrics.analyze_results reads result files of these cities only (seemingly the 312-question test set).
ORIGINAL_CITIES = (
    "los_angeles",
    "miami",
    "toronto",
    "singapore",
    "auckland",
    "rome",
    "lisboa",
    "beijing",
    "hangzhou",
    "budapest",
    "geneva",
)
PLUS_GROUPS = ("Counting", "TorF", "TorF1", "TorF2")
REASONMAP_METRICS = {
    "short": ("correct", "map_score", "token_count"),
    "long": ("correct", "map_score", "via_stops_score", "num_via_stop_score", "token_count"),
}


def difficulty_weight(difficulty: object) -> float:
    """w from `difficulty_city`: easy 1.0, middle 1.5, hard 2.0 (any case); anything else 1.0."""
    return DIFFICULTY_WEIGHTS.get(str(difficulty).lower(), 1.0)


def plus_groups(question_type: str) -> list[str]:
    """The Plus groups a type counts in: Counting (`count…`), TorF (`torf…`), and TorF1 / TorF2 themselves."""
    lowered = question_type.lower()
    groups = ["Counting"] if lowered.startswith("count") else []
    groups += ["TorF"] if lowered.startswith("torf") else []
    return groups + [question_type] if question_type in ("TorF1", "TorF2") else groups


def _means(pairs: list[tuple[float, float]]) -> dict:
    """{'weighted': Σw·x/Σw, 'plain': mean x, 'count': n}; both 0 when there is nothing to average."""
    total_weight = sum(w for w, _ in pairs)
    return {
        "weighted": sum(w * x for w, x in pairs) / total_weight if total_weight else 0.0,
        "plain": sum(x for _, x in pairs) / len(pairs) if pairs else 0.0,
        "count": len(pairs),
    }


def aggregate_plus(records: Iterable[Mapping]) -> dict:
    """ReasonMap-Plus accuracy (`analyze_results_v2_weighted`) from records {type, difficulty_city, correct}.

    Returns {"overall": M, "groups": {Counting|TorF|TorF1|TorF2: M}, "types": {type: M},
    "difficulties": {lowercased difficulty_city: M}} where M = {"weighted", "plain", "count"}.
    """
    buckets: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for index, record in enumerate(records):
        if "type" not in record or "correct" not in record:
            raise ValueError(
                f"Plus record #{index} {dict(record)!r}: needs 'type' and 'correct' (and difficulty_city)"
            )
        pair = (difficulty_weight(record.get("difficulty_city")), float(record["correct"]))
        keys = [
            ("overall", ""),
            ("types", str(record["type"])),
            ("difficulties", str(record.get("difficulty_city")).lower()),
        ]
        for key in keys + [("groups", group) for group in plus_groups(str(record["type"]))]:
            buckets[key].append(pair)
    result: dict = {"overall": _means(buckets[("overall", "")]), "groups": {}, "types": {}, "difficulties": {}}
    result["groups"] = {group: _means(buckets[("groups", group)]) for group in PLUS_GROUPS}
    for (section, name), pairs in sorted(buckets.items()):
        if section in ("types", "difficulties"):
            result[section][name] = _means(pairs)
    return result


def _reasonmap_means(records: list[Mapping], question: str) -> dict:
    """Plain and weighted (ours) means of each metric over the records of one question that carry it."""
    plain: dict = {"count": len(records)}
    weighted: dict = {"count": len(records)}
    for metric in REASONMAP_METRICS[question]:
        pairs = [
            (difficulty_weight(r.get("difficulty_city")), float(r[metric]))
            for r in records
            if r.get(metric) is not None
        ]
        means = _means(pairs)
        plain[metric] = means["plain"] if pairs else None
        weighted[metric] = means["weighted"] if pairs else None
    return {"plain": plain, "weighted_ours": weighted}


def aggregate_reasonmap(records: Iterable[Mapping]) -> dict:
    """ReasonMap means from records {city, difficulty_city, question: short|long, correct, map_score, ...}.

    Records also carry via_stops_score / num_via_stop_score (long) and optionally token_count. Returns
    {"original_cities": S, "all": S} with S = {"short": Q, "long": Q}, Q = {"plain": F, "weighted_ours": F} and
    F = {"count": n, metric: mean or None}. "plain" is `cal_metrics.analyze_results` (unweighted; over its 11
    cities in "original_cities"); "weighted_ours" is Σw·x/Σw with w from difficulty_city (1.0/1.5/2.0), our
    reading of the paper's "weighted" figures, which the released code never computes.
    """
    by_question: dict[str, list[Mapping]] = {"short": [], "long": []}
    for index, record in enumerate(records):
        question = record.get("question")
        if question not in by_question:
            raise ValueError(
                f"ReasonMap record #{index} (city {record.get('city')!r}): question must be 'short' or 'long', "
                f"got {question!r}"
            )
        by_question[question].append(record)
    result = {}
    for scope in ("original_cities", "all"):
        result[scope] = {
            question: _reasonmap_means(
                [r for r in rows if scope == "all" or r.get("city") in ORIGINAL_CITIES], question
            )
            for question, rows in by_question.items()
        }
    return result
