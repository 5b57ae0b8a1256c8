"""Evaluation reports: summarize scored records, headline figures, results.json / results.md and the accuracy chart."""

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from rewardmap.eval.aggregate import DIFFICULTY_WEIGHTS, aggregate_plus, aggregate_reasonmap

logger = logging.getLogger(__name__)

TYPE_ORDER = ("TorF1", "TorF2", "Counting1", "Counting2", "Counting3", "planning")
DIFFICULTY_ORDER = tuple(DIFFICULTY_WEIGHTS)
ROUTE_METRICS = ("correct", "map_score", "token_count")


def _order(names: object, preferred: Sequence[str]) -> list[str]:
    """Names in the preferred order first, then any others alphabetically."""
    names = list(names)
    return [n for n in preferred if n in names] + sorted(n for n in names if n not in preferred)


def _difficulty(record: Mapping) -> str:
    return str(record.get("difficulty_city")).lower()


def summarize(records: Sequence[Mapping]) -> dict:
    """Aggregate scored records (pure): accuracy overall / per type / per difficulty, Plus groups, route metrics.

    Accuracies are {"weighted", "plain", "count"} with difficulty weights easy 1.0, middle 1.5, hard 2.0 (EVAL_SPEC
    §7); a planning row counts with its ReasonMap route accuracy (or the reward's verdict when it has no routes).
    `planning.reasonmap` is aggregate_reasonmap's short-question figures (plain means and "weighted_ours").
    """
    everything = aggregate_plus(records)
    plus = aggregate_plus([r for r in records if r["type"] != "planning"])
    planning = [r for r in records if r["type"] == "planning"]
    routes = [r for r in planning if r.get("question") == "short"]
    reward = aggregate_plus([{**r, "correct": r["reward_correct"]} for r in planning])
    difficulties = _order(everything["difficulties"], DIFFICULTY_ORDER)
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


def headline_figures(summary: Mapping) -> dict[str, float]:
    """The figures a user compares between two evaluations, accuracies in %, map scores as scored (short: /20)."""
    figures = {"accuracy, all rows (weighted %)": 100 * summary["overall"]["weighted"]}
    figures["accuracy, all rows (plain %)"] = 100 * summary["overall"]["plain"]
    for name in _order(summary["types"], TYPE_ORDER):
        figures[f"accuracy {name} (weighted %)"] = 100 * summary["types"][name]["weighted"]
    for name in _order(summary["difficulties"], DIFFICULTY_ORDER):
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


def _cell(value: float | None, scale: float = 100.0) -> str:
    return "—" if value is None else f"{scale * value:.2f}"


def _type_table(summary: Mapping) -> list[str]:
    """Accuracy per type: n, weighted, plain, then the plain accuracy within each difficulty."""
    difficulties = list(summary["types_by_difficulty"])
    lines = [
        "| type | n | weighted | plain | " + " | ".join(difficulties) + " |",
        "| --- | ---: | ---: | ---: |" + " ---: |" * len(difficulties),
    ]
    rows = [(name, summary["types"][name]) for name in _order(summary["types"], TYPE_ORDER)]
    for name, means in rows + [("**all**", summary["overall"])]:
        cells = []
        for difficulty in difficulties:
            source = summary["types_by_difficulty"][difficulty] if name != "**all**" else summary["difficulties"]
            key = name if name != "**all**" else difficulty
            cells.append(_cell(source[key]["plain"]) if key in source else "—")
        row = f"| {name} | {means['count']} | {_cell(means['weighted'])} | {_cell(means['plain'])} | "
        lines.append(row + " | ".join(cells) + " |")
    return lines


def _plus_table(summary: Mapping) -> list[str]:
    """ReasonMap-Plus accuracy overall and per group (Counting, TorF, TorF1, TorF2)."""
    lines = ["| group | n | weighted | plain |", "| --- | ---: | ---: | ---: |"]
    groups = {"overall": summary["plus"]["overall"], **summary["plus"]["groups"]}
    for name, means in groups.items():
        if means["count"]:
            lines.append(f"| {name} | {means['count']} | {_cell(means['weighted'])} | {_cell(means['plain'])} |")
    return lines


def _route_table(summary: Mapping) -> list[str]:
    """Route planning per difficulty: ReasonMap accuracy and map score (plain, weighted ours), reward accuracy."""
    planning = summary["planning"]
    lines = [
        "| difficulty | n | accuracy | accuracy (weighted, ours) | map score | map score (weighted, ours) | tokens "
        "| reward accuracy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = list(planning["reasonmap_by_difficulty"].items()) + [("**all**", planning["reasonmap"]["all"])]
    rewards = planning["reward_accuracy"]["difficulties"] | {"**all**": planning["reward_accuracy"]["overall"]}
    for name, figures in rows:
        plain, weighted = figures["plain"], figures["weighted_ours"]
        lines.append(
            f"| {name} | {plain['count']} | {_cell(plain['correct'])} | {_cell(weighted['correct'])} "
            f"| {_cell(plain['map_score'], 1)} | {_cell(weighted['map_score'], 1)} "
            f"| {_cell(plain['token_count'], 1)} | {_cell(rewards[name]['plain'])} |"
        )
    return lines


def render_markdown(summary: Mapping, settings: Mapping) -> str:
    """results.md: the settings line, then accuracy per type and difficulty, Plus groups and route metrics."""
    sampling = "greedy" if settings.get("temperature", 0) <= 0 else f"temperature {settings.get('temperature')}"
    parts = [
        "# Evaluation results",
        "",
        f"Model `{settings.get('model')}` on `{settings.get('data')}` (split {settings.get('split')}), "
        f"{summary['count']} samples; engine {settings.get('engine')}, {sampling}, "
        f"max_new_tokens {settings.get('max_new_tokens')}, "
        f"pixels {settings.get('min_pixels')}..{settings.get('max_pixels')}.",
        "",
        "## Accuracy by question type and difficulty (%)",
        "",
        *_type_table(summary),
        "",
        "Weighted: difficulty_city weights easy 1.0, middle 1.5, hard 2.0 (ReasonMap-Plus `cal_metrics.py`). "
        "Planning rows count with their ReasonMap route accuracy (the reward's verdict when a row has no routes).",
    ]
    if summary["plus"]["overall"]["count"]:
        parts += ["", "## ReasonMap-Plus (TorF and Counting rows, %)", "", *_plus_table(summary)]
    if summary["planning"]["reasonmap"]["all"]["plain"]["count"]:
        parts += [
            "",
            "## Route planning (ReasonMap short-question metrics; accuracy %, map score out of 20)",
            "",
            *_route_table(summary),
            "",
            'Plain means are the released `cal_metrics.py` figures; "weighted, ours" uses the difficulty weights '
            "above (the paper's weights are unpublished, EVAL_SPEC §7). "
            "Reward accuracy: `compute_score(...).correct`.",
        ]
    return "\n".join(parts) + "\n"


def plot_accuracy(summary: Mapping, path: str | Path) -> None:
    """A PNG bar chart: weighted accuracy per type (and all rows), plain accuracy per difficulty."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    left, right = figure.subplots(1, 2, width_ratios=(3, 1.4))
    types = _order(summary["types"], TYPE_ORDER)
    difficulties = _order(summary["difficulties"], DIFFICULTY_ORDER)
    by_type = [summary["types"][t]["weighted"] for t in types] + [summary["overall"]["weighted"]]
    by_difficulty = [summary["difficulties"][d]["plain"] for d in difficulties]
    panels = ((left, types + ["all"], by_type), (right, difficulties, by_difficulty))
    for axes, names, values in panels:
        bars = axes.bar(names, [100 * v for v in values], color="#4C72B0")
        axes.bar_label(bars, fmt="%.1f", fontsize=8)
        axes.set_ylim(0, 105)
        axes.set_ylabel("accuracy (%)")
    left.set_title(f"weighted accuracy by type ({summary['count']} samples)")
    right.set_title("accuracy by city difficulty")
    figure.savefig(path, dpi=120)


def write_reports(out_dir: str | Path, summary: Mapping, settings: Mapping) -> None:
    """Write results.json ({settings, summary}), results.md and accuracy.png into `out_dir`."""
    out = Path(out_dir)
    results = {"settings": dict(settings), "summary": summary}
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "results.md").write_text(render_markdown(summary, settings), encoding="utf-8")
    plot_accuracy(summary, out / "accuracy.png")
    logger.info("wrote %s/results.json, results.md, accuracy.png", out)
