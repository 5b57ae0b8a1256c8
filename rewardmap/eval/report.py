"""Evaluation summaries (pure): scored records aggregated, results.json's content, the figures two runs compare."""

import logging
from collections.abc import Mapping, Sequence

from rewardmap.eval.aggregate import DIFFICULTY_WEIGHTS, aggregate_plus, aggregate_reasonmap

logger = logging.getLogger(__name__)

TYPE_ORDER = ("TorF1", "TorF2", "Counting1", "Counting2", "Counting3", "planning")
DIFFICULTY_ORDER = tuple(DIFFICULTY_WEIGHTS)
# The ReasonMap figures reported side by side: (scope, kind, label) of aggregate_reasonmap's output.
REASONMAP_VIEWS = (
    ("original_cities", "plain", "11 original cities, plain (released)"),
    ("original_cities", "weighted_ours", "11 original cities, weighted (ours)"),
    ("all", "plain", "all cities, plain"),
    ("all", "weighted_ours", "all cities, weighted (ours)"),
)


def ordered(names: object, preferred: Sequence[str]) -> list[str]:
    """Names in the preferred order first, then any others alphabetically."""
    names = list(names)
    return [n for n in preferred if n in names] + sorted(n for n in names if n not in preferred)


def _difficulty(record: Mapping) -> str:
    return str(record.get("difficulty_city")).lower()


def summarize(records: Sequence[Mapping]) -> dict:
    """Aggregate scored records (pure): accuracy overall / per type / per difficulty, Plus groups, route metrics.

    Accuracies are {"weighted", "plain", "count"} with difficulty weights easy 1.0, middle 1.5, hard 2.0 (EVAL_SPEC
    §7); a planning row counts with its ReasonMap route accuracy (or the reward's verdict when it has no routes); a
    ReasonMap benchmark row counts as two planning answers (short, long). `planning.reasonmap` is
    aggregate_reasonmap's short-question figures (plain means and "weighted_ours").
    """
    everything = aggregate_plus(records)
    plus = aggregate_plus([r for r in records if r["type"] != "planning"])
    planning = [r for r in records if r["type"] == "planning"]
    routes = [r for r in planning if r.get("question") == "short"]
    reward = aggregate_plus([{**r, "correct": r["reward_correct"]} for r in planning if "reward_correct" in r])
    difficulties = ordered(everything["difficulties"], DIFFICULTY_ORDER)
    by_difficulty = {d: [r for r in records if _difficulty(r) == d] for d in difficulties}
    return {
        "count": len(records),
        "overall": everything["overall"],
        "types": everything["types"],
        "difficulties": everything["difficulties"],
        "types_by_difficulty": {d: aggregate_plus(rows)["types"] for d, rows in by_difficulty.items()},
        "plus": {"overall": plus["overall"], "groups": plus["groups"]},
        "planning": {
            "reward_accuracy": {"overall": reward["overall"], "difficulties": reward["difficulties"]},
            "reasonmap": {scope: q["short"] for scope, q in aggregate_reasonmap(routes).items()},
            "reasonmap_by_difficulty": {
                d: aggregate_reasonmap([r for r in routes if _difficulty(r) == d])["all"]["short"]
                for d in difficulties
                if any(_difficulty(r) == d for r in routes)
            },
        },
    }


def build_results(records: Sequence[Mapping], settings: Mapping) -> dict:
    """results.json: {"settings", "summary"}, "protocol" (how the answers were asked: the settings' `protocol`) when
    a model answered, plus "reasonmap" (aggregate_reasonmap of the ReasonMap benchmark's answers) and "plus"
    (aggregate_plus of the TorF / Counting answers) when such answers were scored."""
    results = {"settings": {key: value for key, value in settings.items() if key != "protocol"}}
    if "protocol" in settings:
        results["protocol"] = settings["protocol"]
    results["summary"] = summarize(records)
    reasonmap = [r for r in records if r.get("benchmark") == "reasonmap"]
    plus = [r for r in records if r["type"] != "planning"]
    if reasonmap:
        results["reasonmap"] = aggregate_reasonmap(reasonmap)
    if plus:
        results["plus"] = aggregate_plus(plus)
    return results


def paper_scope(reasonmap: Mapping) -> str:
    """The scope of the paper's ReasonMap columns: the 11 cities of the released cal_metrics.py, or all cities
    when the split holds none of them (a synthetic split)."""
    return "original_cities" if reasonmap["original_cities"]["short"]["plain"]["count"] else "all"


def headline_figures(summary: Mapping) -> dict[str, float]:
    """The figures a user compares between two evaluations, accuracies in %, map scores as scored (short: /20)."""
    figures = {"accuracy, all rows (weighted %)": 100 * summary["overall"]["weighted"]}
    figures["accuracy, all rows (plain %)"] = 100 * summary["overall"]["plain"]
    for name in ordered(summary["types"], TYPE_ORDER):
        figures[f"accuracy {name} (weighted %)"] = 100 * summary["types"][name]["weighted"]
    for name in ordered(summary["difficulties"], DIFFICULTY_ORDER):
        figures[f"accuracy {name} (%)"] = 100 * summary["difficulties"][name]["plain"]
    plus = summary["plus"]
    if plus["overall"]["count"]:
        figures["ReasonMap-Plus overall (weighted %)"] = 100 * plus["overall"]["weighted"]
        for group in ("Counting", "TorF"):
            if plus["groups"][group]["count"]:
                figures[f"ReasonMap-Plus {group} (weighted %)"] = 100 * plus["groups"][group]["weighted"]
    planning = summary["planning"]
    if planning["reward_accuracy"]["overall"]["count"]:
        figures["planning: reward accuracy (%)"] = 100 * planning["reward_accuracy"]["overall"]["plain"]
    short = planning["reasonmap"]["all"]
    if short["plain"]["count"]:
        for kind, label in (("plain", "plain"), ("weighted_ours", "weighted, ours")):
            figures[f"ReasonMap short accuracy ({label} %)"] = 100 * short[kind]["correct"]
            figures[f"ReasonMap short map score ({label})"] = short[kind]["map_score"]
    return figures


def reasonmap_figures(reasonmap: Mapping) -> dict[str, float | None]:
    """The paper's ReasonMap columns (accuracy %, map score) for each view of REASONMAP_VIEWS that has answers."""
    figures: dict[str, float | None] = {}
    for scope, kind, label in REASONMAP_VIEWS:
        short, long = (reasonmap[scope][question][kind] for question in ("short", "long"))
        if not short["count"] and not long["count"]:
            continue
        for name, value in (("acc. short", short["correct"]), ("acc. long", long["correct"])):
            figures[f"ReasonMap {name} ({label}, %)"] = None if value is None else 100 * value
        figures[f"ReasonMap map score short ({label})"] = short["map_score"]
        figures[f"ReasonMap map score long ({label})"] = long["map_score"]
    return figures


def comparable_figures(results: Mapping) -> dict[str, float | None]:
    """All figures `rewardmap eval-compare` shows for one results.json: the headline ones, then ReasonMap's."""
    figures: dict[str, float | None] = dict(headline_figures(results["summary"]))
    if "reasonmap" in results:  # the benchmark's own views replace the summary's short-question route figures
        figures = {name: value for name, value in figures.items() if not name.startswith("ReasonMap short ")}
        figures |= reasonmap_figures(results["reasonmap"])
    return figures
