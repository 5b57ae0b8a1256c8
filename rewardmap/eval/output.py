"""The evaluation's files: results.json, results.md (the paper's columns first, then details) and accuracy.png."""

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure

from rewardmap.errors import write_failed
from rewardmap.eval.answers import RERUN, replace_file
from rewardmap.eval.report import DIFFICULTY_ORDER, REASONMAP_VIEWS, TYPE_ORDER, ordered, paper_scope

logger = logging.getLogger(__name__)


def _cell(value: float | None, scale: float = 100.0) -> str:
    return "—" if value is None else f"{scale * value:.2f}"


def _accuracy(means: Mapping, kind: str = "weighted") -> str:
    """An accuracy cell in %, or — when nothing was averaged."""
    return _cell(means[kind]) if means["count"] else "—"


def _paper_table(results: Mapping) -> list[str]:
    """One row in the paper's Table 1 columns: ReasonMap accuracy and map score (short, long) as the released
    cal_metrics.py computes them; ReasonMap-Plus overall / Count / TorF, difficulty-weighted."""
    header: list[str] = []
    cells: list[str] = []
    notes: list[str] = []
    if "reasonmap" in results:
        scope = paper_scope(results["reasonmap"])
        short, long = (results["reasonmap"][scope][question]["plain"] for question in ("short", "long"))
        header += ["acc. short (%)", "acc. long (%)", "map score short", "map score long"]
        cells += [_cell(short["correct"]), _cell(long["correct"])]
        cells += [_cell(short["map_score"], 1), _cell(long["map_score"], 1)]
        where = "the 11 cities of the released `cal_metrics.py`" if scope == "original_cities" else "all cities"
        notes.append(
            f"ReasonMap: plain means over {where} ({short['count']} rows; map score short out of 20, long out of 40)"
        )
    if "plus" in results:
        plus = results["plus"]
        header += ["Plus overall (%)", "Count (%)", "TorF (%)"]
        cells += [_accuracy(plus["overall"]), _accuracy(plus["groups"]["Counting"]), _accuracy(plus["groups"]["TorF"])]
        notes.append(f"ReasonMap-Plus: difficulty-weighted accuracy ({plus['overall']['count']} rows)")
    if not header:
        return []
    return [
        "## The paper's Table 1 columns",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " ---: |" * len(header),
        "| " + " | ".join(cells) + " |",
        "",
        "; ".join(notes) + ".",
        "",
    ]


def _reasonmap_table(reasonmap: Mapping) -> list[str]:
    """ReasonMap per view (11 original cities / all, plain / weighted ours): accuracy, map score, via-stop figures."""
    lines = [
        "| figures | rows | acc. short | acc. long | map score short | map score long | via stops | number of via "
        "stops | tokens short | tokens long |",
        "| --- |" + " ---: |" * 9,
    ]
    for scope, kind, label in REASONMAP_VIEWS:
        short, long = (reasonmap[scope][question][kind] for question in ("short", "long"))
        if short["count"] or long["count"]:
            lines.append(
                f"| {label} | {max(short['count'], long['count'])} | {_cell(short['correct'])} "
                f"| {_cell(long['correct'])} | {_cell(short['map_score'], 1)} | {_cell(long['map_score'], 1)} "
                f"| {_cell(long['via_stops_score'], 1)} | {_cell(long['num_via_stop_score'], 1)} "
                f"| {_cell(short['token_count'], 1)} | {_cell(long['token_count'], 1)} |"
            )
    return lines


def _type_table(summary: Mapping) -> list[str]:
    """Accuracy per type: n, weighted, plain, then the plain accuracy within each difficulty."""
    difficulties = list(summary["types_by_difficulty"])
    lines = [
        "| type | n | weighted | plain | " + " | ".join(difficulties) + " |",
        "| --- | ---: | ---: | ---: |" + " ---: |" * len(difficulties),
    ]
    rows = [(name, summary["types"][name]) for name in ordered(summary["types"], TYPE_ORDER)]
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
        reward = _accuracy(rewards[name], "plain") if name in rewards else "—"
        lines.append(
            f"| {name} | {plain['count']} | {_cell(plain['correct'])} | {_cell(weighted['correct'])} "
            f"| {_cell(plain['map_score'], 1)} | {_cell(weighted['map_score'], 1)} "
            f"| {_cell(plain['token_count'], 1)} | {reward} |"
        )
    return lines


def _protocol_text(protocol: Mapping) -> str:
    """How the answers were asked, in one phrase: benchmarks and prompts, engine, batch, length, decoding, pixels."""
    decoding = protocol["decoding"]
    sampling = f"temperature {decoding['temperature']}, top-p {decoding['top_p']}, top-k {decoding['top_k']}"
    sampling = "greedy" if decoding["greedy"] else sampling
    asked = ", ".join(f"{name} as {source}" for name, source in protocol["benchmarks"].items())
    formats = ", ".join(sorted(set(protocol["prompt_format"].values())))
    return (
        f"asked {asked} ({formats} prompt); engine {protocol['engine']}, batch size {protocol['batch_size']}, "
        f"max_new_tokens {protocol['max_new_tokens']}, {sampling}, repetition penalty "
        f"{decoding['repetition_penalty']}, pixels {protocol['min_pixels']}..{protocol['max_pixels']}"
    )


def _settings_line(results: Mapping) -> str:
    """What was evaluated: the model and how it was asked, or the file of answers produced elsewhere."""
    settings = results["settings"]
    data = f"`{settings.get('data')}` (split {settings.get('split')}), {results['summary']['count']} answers"
    answer_format = f"answer format {settings.get('answer_format', 'plain')}"
    if "responses" in settings:
        return f"Answers of `{settings['responses']}` on {data}; {answer_format}."
    asked = f"; {_protocol_text(results['protocol'])}" if "protocol" in results else ""
    return f"Model `{settings.get('model')}` on {data}{asked}; {answer_format}."


def render_markdown(results: Mapping) -> str:
    """results.md: the settings line, the paper's Table 1 columns, ReasonMap's views, then accuracy per type and
    difficulty, Plus groups and route metrics."""
    summary = results["summary"]
    parts = ["# Evaluation results", "", _settings_line(results), "", *_paper_table(results)]
    if "reasonmap" in results:
        parts += [
            "## ReasonMap (route planning, short and long questions)",
            "",
            *_reasonmap_table(results["reasonmap"]),
            "",
            "Accuracy in %, map score short out of 20, long out of 40; via stops and number of via stops: the long "
            "question's figures (out of 10 each); tokens: answer length as the benchmark counts it. Plain means are "
            'the released `cal_metrics.py` figures; "weighted (ours)" uses difficulty_city weights easy 1.0, middle '
            "1.5, hard 2.0 (the paper's weights are unpublished, EVAL_SPEC §7).",
            "",
        ]
    parts += [
        "## Accuracy by question type and difficulty (%)",
        "",
        *_type_table(summary),
        "",
        "Weighted: difficulty_city weights easy 1.0, middle 1.5, hard 2.0 (ReasonMap-Plus `cal_metrics.py`). "
        "Planning rows count with their ReasonMap route accuracy (the reward's verdict when a row has no routes); "
        "a ReasonMap row counts twice, short and long.",
    ]
    if summary["plus"]["overall"]["count"]:
        parts += ["", "## ReasonMap-Plus (TorF and Counting rows, %)", "", *_plus_table(summary)]
    planning = summary["planning"]
    if planning["reasonmap"]["all"]["plain"]["count"] and planning["reward_accuracy"]["overall"]["count"]:
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
    types = ordered(summary["types"], TYPE_ORDER)
    difficulties = ordered(summary["difficulties"], DIFFICULTY_ORDER)
    by_type = [summary["types"][t]["weighted"] for t in types] + [summary["overall"]["weighted"]]
    by_difficulty = [summary["difficulties"][d]["plain"] for d in difficulties]
    panels = ((left, types + ["all"], by_type), (right, difficulties, by_difficulty))
    for axes, names, values in panels:
        bars = axes.bar(names, [100 * v for v in values], color="#4C72B0")
        axes.bar_label(bars, fmt="%.1f", fontsize=8)
        axes.set_ylim(0, 105)
        axes.set_ylabel("accuracy (%)")
    left.set_title(f"weighted accuracy by type ({summary['count']} answers)")
    right.set_title("accuracy by city difficulty")
    figure.savefig(path, dpi=120)


def write_reports(out_dir: str | Path, results: Mapping) -> None:
    """Write results.json (the `build_results` dict), results.md and accuracy.png into `out_dir`."""
    out = Path(out_dir)
    replace_file(out / "results.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    replace_file(out / "results.md", render_markdown(results))
    try:
        plot_accuracy(results["summary"], out / "accuracy.png")
    except OSError as error:
        raise write_failed(out / "accuracy.png", error, RERUN) from error
    logger.info("wrote %s/results.json, results.md, accuracy.png", out)
