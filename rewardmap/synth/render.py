"""Rendering a synthetic network as a readable PNG transit map: coloured lines, stations, labels, legend."""

import logging

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rewardmap.synth.network import Network, station_lines

logger = logging.getLogger(__name__)

PALETTE = (
    (220, 36, 48), (0, 114, 198), (0, 150, 70), (245, 130, 32), (128, 60, 160),
    (0, 160, 170), (230, 80, 160), (140, 100, 40), (110, 110, 110), (160, 190, 20),
)  # fmt: skip
LINE_WIDTH = 7
TITLE_H, LEGEND_H, MARGIN_X, MARGIN_Y = 40, 50, 80, 30
STROKE = 2  # white halo around label text, so labels stay legible over lines
RADIUS, TRANSFER_RADIUS = 5, 8  # station markers: plain stations, transfer stations
Box = tuple[int, int, int, int]


def pixel_positions(net: Network, size: tuple[int, int]) -> dict[str, tuple[float, float]]:
    """Grid points to pixels: one uniform scale (at most 120 px a step) that centres the network in the map area."""
    width, height = size
    xs, ys = [x for x, _ in net.coords.values()], [y for _, y in net.coords.values()]
    span_x, span_y = max(max(xs) - min(xs), 1), max(max(ys) - min(ys), 1)
    area_w, area_h = width - 2 * MARGIN_X, height - TITLE_H - LEGEND_H - 2 * MARGIN_Y
    step = min(area_w / span_x, area_h / span_y, 120.0)
    x0 = MARGIN_X + (area_w - step * span_x) / 2 - step * min(xs)
    y0 = TITLE_H + MARGIN_Y + (area_h - step * span_y) / 2 - step * min(ys)
    return {s: (x0 + x * step, y0 + y * step) for s, (x, y) in net.coords.items()}


def _integral(mask: Image.Image) -> np.ndarray:
    """Summed-area table of occupied pixels, padded with a zero row and column: (H + 1, W + 1)."""
    occupied = (np.asarray(mask) > 0).astype(np.int32)
    table = np.zeros((occupied.shape[0] + 1, occupied.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = occupied.cumsum(0).cumsum(1)
    return table


def _occupied(table: np.ndarray, box: Box) -> int:
    x0, y0, x1, y1 = box
    return int(table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0])


def _overlap(a: Box, b: Box) -> int:
    """Intersection area of two boxes (x0, y0, x1, y1)."""
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def _distance(box: Box, x: float, y: float) -> float:
    """Distance from a point to a box (0 inside)."""
    return float(np.hypot(max(box[0] - x, 0, x - box[2]), max(box[1] - y, 0, y - box[3])))


def _candidates(x: float, y: float, w: int, h: int, radius: int) -> list[Box]:
    """Label boxes around a station, preferred first: right, left, above, below, diagonals; near, then far."""
    boxes = []
    for gap in (radius + 3, radius + 12):
        d = gap * 0.7
        corners = [
            (x + gap, y - h / 2), (x - gap - w, y - h / 2), (x - w / 2, y - gap - h), (x - w / 2, y + gap),
            (x + d, y - d - h), (x + d, y + d), (x - d - w, y - d - h), (x - d - w, y + d),
        ]  # fmt: skip
        boxes += [(round(cx), round(cy), round(cx) + w, round(cy) + h) for cx, cy in corners]
    return boxes


def place_labels(
    anchors: dict[str, tuple[float, float, int]], sizes: dict[str, tuple[int, int]], table: np.ndarray
) -> dict[str, Box]:
    """Greedy label placement: per station (x, y, radius) the candidate box that stays inside the image, avoids
    other labels, and covers the fewest occupied pixels of `table` (lines, stations, title, legend)."""
    height, width = table.shape[0] - 1, table.shape[1] - 1
    placed: dict[str, Box] = {}
    for name in sorted(anchors, key=lambda s: (anchors[s][1], anchors[s][0])):
        x, y, radius = anchors[name]
        w, h = sizes[name]
        best, best_cost = None, float("inf")
        for rank, box in enumerate(_candidates(x, y, w, h, radius)):
            if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
                continue
            clash = sum(_overlap(box, other) for other in placed.values())
            # A label nearer to another station than to its own reads as that station's label.
            own = _distance(box, x, y)
            misleading = any(_distance(box, ox, oy) < own for s, (ox, oy, _) in anchors.items() if s != name)
            cost = 1000 * clash + _occupied(table, box) + 2 * rank + 400 * misleading
            if cost < best_cost:
                best, best_cost = box, cost
        if best is None:
            raise ValueError(f"station {name!r} at ({x:.0f}, {y:.0f}) has no label position inside the image")
        placed[name] = best
    return placed


def _draw_network(draw: ImageDraw.ImageDraw, net: Network, pos: dict, colours: dict, mask_only: bool) -> None:
    """Lines as thick polylines (loops closed), then station markers; transfer stations larger with black rings."""
    for line, stations in net.lines.items():
        draw.line(
            [pos[s] for s in stations], fill=255 if mask_only else colours[line], width=LINE_WIDTH, joint="curve"
        )
    on_lines = station_lines(net.lines)
    for station, lines in on_lines.items():
        x, y = pos[station]
        radius = TRANSFER_RADIUS if len(lines) > 1 else RADIUS
        outline = (0, 0, 0) if len(lines) > 1 else colours[lines[0]]
        box = (x - radius, y - radius, x + radius, y + radius)
        draw.ellipse(box, fill=255 if mask_only else (255, 255, 255), outline=255 if mask_only else outline, width=3)
        if station in net.branch_starts and not mask_only:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(0, 0, 0))


def _draw_legend(
    draw: ImageDraw.ImageDraw, net: Network, colours: dict, size: tuple[int, int], font: ImageFont.FreeTypeFont
) -> None:
    """One row under the map: a swatch and name per line, then the transfer-station symbol."""
    x, y = MARGIN_X, size[1] - LEGEND_H + 14
    for line in net.lines:
        draw.line([(x, y + 8), (x + 28, y + 8)], fill=colours[line], width=LINE_WIDTH)
        draw.text((x + 34, y), line, font=font, fill=(0, 0, 0))
        x += 34 + round(draw.textlength(line, font=font)) + 22
    draw.ellipse((x, y + 1, x + 14, y + 15), fill=(255, 255, 255), outline=(0, 0, 0), width=3)
    draw.text((x + 20, y), "transfer", font=font, fill=(0, 0, 0))


def render_map(
    net: Network, size: tuple[int, int] = (1000, 800), title: str = ""
) -> tuple[Image.Image, dict[str, Box]]:
    """The map image (RGB, `size` = (width, height)) and each station's label box (x0, y0, x1, y1) in pixels.

    Labels are the station names without " Station" and without the transfer/branch suffixes."""
    if size[0] < 400 or size[1] < 300:
        raise ValueError(f"image_size {size} is too small for a legible map: use at least (400, 300)")
    colours = {line: PALETTE[i % len(PALETTE)] for i, line in enumerate(net.lines)}
    pos = pixel_positions(net, size)
    label_font = ImageFont.load_default(size=14)
    title_font = ImageFont.load_default(size=20)

    mask = Image.new("L", size, 0)
    mask_draw = ImageDraw.Draw(mask)
    _draw_network(mask_draw, net, pos, colours, mask_only=True)
    mask_draw.rectangle((0, 0, size[0], TITLE_H), fill=255)
    mask_draw.rectangle((0, size[1] - LEGEND_H, size[0], size[1]), fill=255)

    texts = {s: s.removesuffix(" Station") for s in net.coords}
    sizes = {}
    for s, text in texts.items():
        left, top, right, bottom = label_font.getbbox(text, stroke_width=STROKE)
        sizes[s] = (right - left, bottom - top)
    multi = station_lines(net.lines)
    anchors = {s: (x, y, TRANSFER_RADIUS if len(multi[s]) > 1 else RADIUS) for s, (x, y) in pos.items()}
    boxes = place_labels(anchors, sizes, _integral(mask))

    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    _draw_network(draw, net, pos, colours, mask_only=False)
    for s, box in boxes.items():
        left, top, _, _ = label_font.getbbox(texts[s], stroke_width=STROKE)
        draw.text((box[0] - left, box[1] - top), texts[s], font=label_font, fill=(0, 0, 0), stroke_width=STROKE,
                  stroke_fill=(255, 255, 255))  # fmt: skip
    draw.text((MARGIN_X, 10), title or net.city, font=title_font, fill=(0, 0, 0))
    _draw_legend(draw, net, colours, size, label_font)
    return image, boxes
