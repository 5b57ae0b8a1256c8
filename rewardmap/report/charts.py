"""Line charts as inline SVG (no library): series over training steps, with the curriculum's stage boundaries."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import NamedTuple

WIDTH, HEIGHT = 430, 240
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 22, 30
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
OVERALL_COLOUR = "#222222"
MARKED_POINTS = 80
"""Series with at most this many points get a dot (with a hover tooltip) on each point."""

Series = Sequence[tuple[float, float]]


class Steps(NamedTuple):
    """The x axis all charts of a run share: its first and last step, and (x, stage) where each later stage starts."""

    first: float
    last: float
    stage_starts: Sequence[tuple[float, int]]


def colours(names: Sequence[str]) -> dict[str, str]:
    """A colour per series name: "all" is dark, the others take the palette in order (stable across charts)."""
    others = [name for name in names if name != "all"]
    return {"all": OVERALL_COLOUR} | {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(others)}


def _ticks(low: float, high: float, count: int = 4, least: float = 0.0) -> tuple[list[float], float]:
    """About `count` round tick values covering [low, high], at least `least` apart, and their spacing."""
    raw = max((high - low) / count, least)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [step * i for i in range(math.ceil(low / step), math.floor(high / step) + 1)], step


def _label(value: float, spacing: float) -> str:
    """A tick label with as many decimals as the tick spacing needs."""
    if abs(value) >= 1e5:
        return f"{value:.3g}"
    decimals = next(d for d in range(12) if abs(round(spacing, d) - spacing) < spacing * 1e-6)
    return f"{value:.{decimals}f}"


def _segments(points: Series, gap: float) -> list[Series]:
    """The points split where consecutive steps are more than `gap` apart (a type absent from a stage)."""
    segments: list[list[tuple[float, float]]] = []
    for point in points:
        if not segments or point[0] - segments[-1][-1][0] > gap:
            segments.append([])
        segments[-1].append(point)
    return segments


def line_chart(
    title: str,
    series: Mapping[str, Series],
    colour_of: Mapping[str, str],
    steps: Steps,
    y_range: tuple[float, float] | None = None,
    gap: float = 1.0,
) -> str:
    """An SVG chart of `series` (name -> (step, value) points, in step order) over `steps`, dashed lines where the
    curriculum's stages start, and a legend; lines break where a series skips more than `gap` steps. No points at
    all give an empty string."""
    series = {name: points for name, points in series.items() if points}
    if not series:
        return ""
    ys = [y for points in series.values() for _, y in points]
    x_low, x_high = steps.first, max(steps.last, steps.first + 1)
    y_low, y_high = y_range or (min(ys), max(ys))
    if y_high - y_low < 1e-12:
        y_low, y_high = y_low - 0.5, y_high + 0.5
    if y_range is None:
        pad = 0.06 * (y_high - y_low)
        y_low, y_high = y_low - pad, y_high + pad

    def x_of(x: float) -> float:
        return LEFT + (x - x_low) / (x_high - x_low) * (WIDTH - LEFT - RIGHT)

    def y_of(y: float) -> float:
        return HEIGHT - BOTTOM - (y - y_low) / (y_high - y_low) * (HEIGHT - TOP - BOTTOM)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(title)}"><text class="title" x="{LEFT}" y="14">{escape(title)}</text>'
    ]
    y_ticks, spacing = _ticks(y_low, y_high)
    for y in y_ticks:
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y_of(y):.1f}" y2="{y_of(y):.1f}"/>')
        label = _label(y, spacing)
        parts.append(f'<text class="tick" x="{LEFT - 4}" y="{y_of(y) + 3:.1f}" text-anchor="end">{label}</text>')
    for x in _ticks(x_low, x_high, 5, least=1.0)[0]:  # steps are whole numbers
        parts.append(f'<text class="tick" x="{x_of(x):.1f}" y="{HEIGHT - 14}" text-anchor="middle">{x:g}</text>')
    parts.append(f'<text class="tick" x="{WIDTH - RIGHT}" y="{HEIGHT - 2}" text-anchor="end">step</text>')
    for x, number in steps.stage_starts:
        parts.append(f'<line class="stage" x1="{x_of(x):.1f}" x2="{x_of(x):.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>')
        end = x_of(x) > WIDTH - 60  # a stage that starts near the end: its label to the left of the line
        label_x, anchor = (x_of(x) - 3, "end") if end else (x_of(x) + 3, "start")
        parts.append(
            f'<text class="tick" x="{label_x:.1f}" y="{TOP + 9}" text-anchor="{anchor}">stage {number}</text>'
        )
    for name, points in series.items():
        colour = colour_of[name]
        for segment in _segments(points, gap):
            path = " ".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in segment)
            parts.append(f'<polyline class="line" points="{path}" stroke="{colour}"/>')
        if len(points) <= MARKED_POINTS:
            parts += [
                f'<circle cx="{x_of(x):.1f}" cy="{y_of(y):.1f}" r="2.2" fill="{colour}">'
                f"<title>{escape(name)} step {x:g}: {y:.4g}</title></circle>"
                for x, y in points
            ]
    parts.append("</svg>")
    legend = "".join(f'<span><i style="background:{colour_of[name]}"></i>{escape(name)}</span>' for name in series)
    return f'<figure>{"".join(parts)}<figcaption class="legend">{legend}</figcaption></figure>'
