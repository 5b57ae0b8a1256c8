"""`rewardmap report RUN_DIR`: writes RUN_DIR/report.html, one self-contained page (no network, maps embedded): the
run's config, its curves, the sample rollouts browsable by step and type, and the validation and evaluation tables."""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

import yaml

from rewardmap.eval.report import TYPE_ORDER, comparable_figures, ordered
from rewardmap.grpo.metrics import read_metrics
from rewardmap.grpo.samples import read_map, read_samples
from rewardmap.report.charts import Steps, colours, line_chart

REPORT_FILE = "report.html"
STATIC = Path(__file__).resolve().parent
SAMPLE_KINDS = {"training": "samples", "validation": "val_samples"}
"""The report's sample views and the run files they read."""
CONFIG_SHOWN = (
    ("model", "path"),
    ("model", "lora_rank"),
    ("data", "train_files"),
    ("data", "prompts_per_step"),
    ("data", "max_response_length"),
    ("data", "max_pixels"),
    ("curriculum", "preset"),
    ("curriculum", "stages"),
    ("rollout", "engine"),
    ("rollout", "n"),
    ("rollout", "temperature"),
    ("reward", "variant"),
    ("reward", "mode"),
    ("algorithm", "kl_coef"),
    ("algorithm", "loss_agg"),
    ("algorithm", "filter_zero_variance_groups"),
    ("trainer", "lr"),
    ("trainer", "backend"),
    ("trainer", "max_steps"),
    ("trainer", "loggers"),
)
"""The config entries the summary shows (the whole config.yaml is one click away)."""


def _series(records: Sequence[Mapping], key: str) -> list[tuple[float, float]]:
    """(step, value) of every record that has a finite `key`."""
    return [(r["step"], float(r[key])) for r in records if key in r and math.isfinite(r[key])]


def _stage_starts(records: Sequence[Mapping]) -> list[tuple[float, int]]:
    """(x, stage) where each curriculum stage after the first one logged starts (half a step before its first step)."""
    return [(b["step"] - 0.5, int(b["stage"])) for a, b in itertools.pairwise(records) if a["stage"] != b["stage"]]


def _per_type(records: Sequence[Mapping], types: Sequence[str], prefix: str, name: str) -> dict:
    """The overall series <prefix>/<name> as "all", then <prefix>/<type>/<name> of each question type."""
    return {"all": _series(records, f"{prefix}/{name}")} | {t: _series(records, f"{prefix}/{t}/{name}") for t in types}


def curves_section(records: Sequence[Mapping]) -> str:
    """Reward and accuracy per question type, groups without signal, KL, entropy, response length, clip fraction,
    seconds per phase and validation accuracy, each chart with the stage boundaries."""
    keys = {key for r in records for key in r}
    types = ordered(
        {key.split("/")[1] for key in keys if key.startswith("reward/") and key.count("/") == 2}, TYPE_ORDER
    )
    val_types = ordered(
        {key.split("/")[1] for key in keys if key.startswith("val/") and key.count("/") == 2}, TYPE_ORDER
    )
    colour_of = colours(["all", *types, *[t for t in val_types if t not in types]])
    if not records:
        return '<section id="curves"><h2>Curves</h2><p class="empty">No step logged yet.</p></section>'
    stages = Steps(records[0]["step"], records[-1]["step"], _stage_starts(records))
    phases = sorted(key for key in keys if key.startswith("timing/") and key.endswith("_s"))
    phases = [key for key in phases if key not in ("timing/step_s", "timing/validation_s", "timing/tokens_per_s")]
    phase_series = {key[len("timing/") : -2]: _series(records, key) for key in phases}
    charts = [
        line_chart("reward (mean per question type)", _per_type(records, types, "reward", "mean"), colour_of, stages),
        line_chart(
            "accuracy per question type",
            _per_type(records, types, "reward", "accuracy"),
            colour_of,
            stages,
            (0.0, 1.0),
        ),
        line_chart(
            "groups with all rewards equal (no signal)",
            _per_type(records, types, "groups", "zero_variance_fraction"),
            colour_of,
            stages,
            (0.0, 1.0),
        ),
        line_chart("KL to the reference (loss/kl)", {"all": _series(records, "loss/kl")}, colour_of, stages),
        line_chart("entropy (loss/entropy)", {"all": _series(records, "loss/entropy")}, colour_of, stages),
        line_chart("response length (tokens)", {"all": _series(records, "response/length_mean")}, colour_of, stages),
        line_chart("clip fraction", {"all": _series(records, "loss/clip_fraction")}, colour_of, stages),
        line_chart("seconds per phase", phase_series, colours(list(phase_series)), stages),
        line_chart(
            "validation accuracy",
            _per_type(records, val_types, "val", "accuracy"),
            colour_of,
            stages,
            (0.0, 1.0),
            math.inf,
        ),
    ]
    return f'<section id="curves"><h2>Curves</h2><div class="charts">{"".join(charts)}</div></section>'


def summary_section(run_dir: Path, config: Mapping, records: Sequence[Mapping]) -> str:
    """The run's headline facts and the config entries of CONFIG_SHOWN, with the whole config.yaml folded away."""
    facts = [("run directory", str(run_dir.resolve())), ("steps logged", str(len(records)))]
    if records:
        last = records[-1]
        facts += [
            ("last step", f"{last['step']} (stage {last['stage']:g})"),
            ("training time", f"{sum(r.get('timing/step_s', 0.0) for r in records) / 60:.1f} min (sum of steps)"),
            ("last reward / accuracy", f"{last['reward/mean']:.3f} / {last['reward/accuracy']:.3f}"),
        ]
    for section, key in CONFIG_SHOWN:
        if key in config.get(section, {}):
            facts.append((f"{section}.{key}", json.dumps(config[section][key])))
    items = "".join(f"<div><dt>{escape(name)}</dt><dd>{escape(value)}</dd></div>" for name, value in facts)
    whole = escape(yaml.safe_dump(config, sort_keys=False)) if config else "(no config.yaml)"
    return (
        f'<section id="run"><h2>Run</h2><dl class="facts">{items}</dl>'
        f"<details><summary>config.yaml</summary><pre>{whole}</pre></details></section>"
    )


def _map_uri(path: str | None) -> str | None:
    """The map of a sample as an embedded JPEG (data URI); None when the file is gone."""
    image = read_map(path)
    if image is None:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def samples_data(run_dir: Path) -> dict:
    """The sample records of each view, each map embedded once (records point at it by number)."""
    maps: dict[str | None, int] = {}
    views: dict[str, list[dict]] = {}
    for view, name in SAMPLE_KINDS.items():
        views[view] = []
        for record in read_samples(run_dir, name):
            maps.setdefault(record["image"], len(maps))
            views[view].append({**record, "image": maps[record["image"]]})
    uris = [_map_uri(path) for path in maps]
    rewards = [a["reward"] for records in views.values() for r in records for a in r["answers"] if a["reward"]]
    return {"views": views, "maps": uris, "max_reward": max([1.0, *rewards])}


def samples_section(data: Mapping) -> str:
    """The sample browser: controls, the list report.js fills, and the records as inline JSON."""
    views = "".join(
        f'<option value="{view}">{view} ({len(records)} records)</option>'
        for view, records in data["views"].items()
        if records
    )
    types = ordered({r["type"] for records in data["views"].values() for r in records}, TYPE_ORDER)
    type_options = '<option value="">all types</option>' + "".join(f"<option>{escape(t)}</option>" for t in types)
    # JSON inside <script>: "<" escaped so that no answer text can close the element.
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    return (
        '<section id="samples"><h2>Sample rollouts</h2>'
        + (
            '<p class="empty">No sample logs in this run (trainer.log_samples=0, or a run older than them).</p>'
            if not views
            else '<div class="controls">'
            f'<select id="view" aria-label="samples">{views}</select>'
            f'<select id="type" aria-label="question type">{type_options}</select>'
            '<button id="prev" type="button" aria-label="previous">&#9664;</button>'
            '<select id="page" aria-label="step"></select>'
            '<button id="next" type="button" aria-label="next">&#9654;</button>'
            '<span class="hint">&larr; &rarr; keys page; click a map to enlarge it</span></div>'
            '<div id="sample-list"></div><noscript>The sample browser needs JavaScript.</noscript>'
        )
        + f'</section><script type="application/json" id="samples-data">{payload}</script>'
    )


def validation_section(records: Sequence[Mapping]) -> str:
    """Validation accuracy at each validated step (plain and difficulty-weighted, and per question type), in %."""
    validated = [r for r in records if "val/accuracy" in r]
    if not validated:
        return ""
    types = ordered(
        {k.split("/")[1] for r in validated for k in r if k.startswith("val/") and k.count("/") == 2}, TYPE_ORDER
    )
    columns = [("accuracy", "val/accuracy"), ("weighted", "val/accuracy_weighted")]
    columns += [(t, f"val/{t}/accuracy") for t in types]
    head = "".join(f"<th>{escape(name)}</th>" for name, _ in columns)
    rows = "".join(
        f"<tr><th>{r['step']}</th>" + "".join(f"<td>{_percent(r.get(key))}</td>" for _, key in columns) + "</tr>"
        for r in validated
    )
    return (
        '<section id="validation"><h2>Validation (accuracy, %)</h2>'
        f"<table><tr><th>step</th>{head}</tr>{rows}</table></section>"
    )


def evaluation_section(eval_dirs: Sequence[Path]) -> str:
    """The headline figures of each evaluation folder (results.json of `rewardmap eval`) side by side."""
    figures = {}
    for path in eval_dirs:
        if not (path / "results.json").is_file():
            raise FileNotFoundError(f"{path / 'results.json'} not found: pass a folder `rewardmap eval --out` wrote")
        figures[path] = comparable_figures(json.loads((path / "results.json").read_text(encoding="utf-8")))
    if not figures:
        return ""
    names = list(dict.fromkeys(name for values in figures.values() for name in values))
    head = "".join(f"<th>{escape(path.name)}</th>" for path in figures)
    rows = "".join(
        f"<tr><th>{escape(name)}</th>"
        + "".join(f"<td>{_number(values.get(name))}</td>" for values in figures.values())
        + "</tr>"
        for name in names
    )
    return f'<section id="evaluation"><h2>Evaluation</h2><table><tr><th></th>{head}</tr>{rows}</table></section>'


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def write_report(run_dir: Path, eval_dirs: Sequence[Path] = ()) -> Path:
    """Writes RUN_DIR/report.html from the run's files (and the evaluation folders given, plus any inside the run
    directory); returns its path."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    found = sorted(path.parent for path in run_dir.glob("*/results.json"))
    evaluations = list(dict.fromkeys([*map(Path, eval_dirs), *found]))
    sections = {
        "run": summary_section(run_dir, config, records),
        "curves": curves_section(records),
        "samples": samples_section(samples_data(run_dir)),
        "validation": validation_section(records),
        "evaluation": evaluation_section(evaluations),
    }
    nav = "".join(f'<a href="#{name}">{name}</a>' for name, html in sections.items() if html)
    style = (STATIC / "report.css").read_text(encoding="utf-8")
    script = (STATIC / "report.js").read_text(encoding="utf-8")
    title = f"RewardMap run {run_dir.resolve().name}"
    html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{style}</style></head><body>'
        f"<header><h1>{escape(title)}</h1><nav>{nav}</nav></header><main>{''.join(sections.values())}</main>"
        f"<script>{script}</script></body></html>\n"
    )
    out = run_dir / REPORT_FILE
    out.write_text(html, encoding="utf-8")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a training run directory (holds metrics.jsonl, samples.jsonl)")
    parser.add_argument(
        "--eval",
        type=Path,
        metavar="EVAL_DIR",
        action="append",
        default=[],
        help="an evaluation folder (`rewardmap eval --out`) to tabulate; repeatable (ones inside RUN_DIR are found)",
    )


def run(args: argparse.Namespace) -> int:
    path = write_report(args.run_dir, args.eval)
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
