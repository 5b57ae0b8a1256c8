"""Synthetic map rendering: every station labelled inside the image, labels apart, legend colours, sample assets."""

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rewardmap.synth.network import generate_network, station_lines
from rewardmap.synth.render import PALETTE, pixel_positions, render_map

ASSETS = Path(__file__).resolve().parents[1] / "assets"
NETWORKS = [generate_network(random.Random(100 + i), f"city{i}", ("easy", "middle", "hard")[i % 3]) for i in range(9)]


def _overlap(a, b) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


@pytest.mark.parametrize("net", NETWORKS, ids=lambda n: n.city)
def test_every_station_has_a_label_inside_the_image_and_labels_do_not_collide(net) -> None:
    image, boxes = render_map(net, (1000, 800))
    assert image.size == (1000, 800) and image.mode == "RGB"
    assert set(boxes) == set(net.coords)
    pixels = np.asarray(image)
    for station, (x0, y0, x1, y1) in boxes.items():
        assert 0 <= x0 < x1 <= 1000 and 0 <= y0 < y1 <= 800, station
        # the label was drawn: dark text pixels inside its box
        assert (pixels[y0:y1, x0:x1].max(axis=2) < 100).sum() > 10, station
    for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2):
        smaller = min((box_a[2] - box_a[0]) * (box_a[3] - box_a[1]), (box_b[2] - box_b[0]) * (box_b[3] - box_b[1]))
        assert _overlap(box_a, box_b) <= 0.1 * smaller, (a, b)


def test_label_boxes_fit_the_text_and_lines_use_their_colours() -> None:
    net = NETWORKS[2]
    image, boxes = render_map(net)
    pixels = np.asarray(image).reshape(-1, 3)
    colours = {tuple(int(v) for v in p) for p in np.unique(pixels, axis=0)}
    for i in range(len(net.lines)):
        assert PALETTE[i] in colours
    widths = sorted((box[2] - box[0], station) for station, box in boxes.items())
    assert len(widths[-1][1]) > len(widths[0][1])  # the widest box holds a longer name than the narrowest


def test_small_images_are_rejected() -> None:
    with pytest.raises(ValueError, match="image_size"):
        render_map(NETWORKS[0], (200, 100))


def test_transfer_stations_are_drawn_with_black_rings() -> None:
    net = NETWORKS[2]
    image, _ = render_map(net)
    transfers = [s for s, lines in station_lines(net.lines).items() if len(lines) > 1]
    assert transfers
    pixels = np.asarray(image)
    for station in transfers:
        x, y = (round(v) for v in pixel_positions(net, image.size)[station])
        ring = pixels[y - 8 : y + 9, x - 8 : x + 9].max(axis=2)
        assert (ring < 40).sum() > 20, station


@pytest.mark.parametrize("name", ["synth_map_1.png", "synth_map_2.png"])
def test_sample_assets_are_small_readable_maps(name: str) -> None:
    path = ASSETS / name
    assert path.stat().st_size < 300_000
    with Image.open(path) as image:
        assert image.size == (1000, 800)
