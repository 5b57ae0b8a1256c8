"""Writing a synthetic dataset: maps, metro JSON, train/test rows (ReasonMap-Train schema), a ReasonMap split."""

import json
import logging
import random
import re
from pathlib import Path

from tqdm import tqdm

from rewardmap.data.images import MIN_PIXELS, fit_image
from rewardmap.errors import InputError
from rewardmap.synth.network import Network, difficulty_of, generate_names, generate_network, metro_json, station_lines
from rewardmap.synth.questions import make_questions
from rewardmap.synth.reasonmap import reasonmap_rows
from rewardmap.synth.render import render_map

logger = logging.getLogger(__name__)

COUNTRY = "synthland"
DIFFICULTIES = ("easy", "middle", "hard")


def _city_rows(net: Network, difficulty: str, questions: list[dict]) -> list[dict]:
    """Dataset rows: the city fields (same for every question) merged into each question, schema field order."""
    metro = metro_json(net)
    city = {
        "figure": f"./maps/{COUNTRY}/{net.city}.png",
        "country": COUNTRY,
        "city": net.city,
        "difficulty_city": difficulty,
        "city_line_count": len(net.lines),
        # The real files' convention: station entries carrying the transfer suffix, summed over lines.
        "city_transfer_count": sum(" (Transfer Station)" in s for stations in metro.values() for s in stations),
        "json": f"./stations/{COUNTRY}/{net.city}.json",
    }
    fields = ("question", "figure", "answer", "type", "country", "city", "station_1", "station_2")
    tail = ("difficulty_city", "city_line_count", "city_transfer_count", "question_transfer_count", "json")
    rows = []
    for q in questions:
        merged = {**city, **q}
        row = {k: merged[k] for k in fields + tail}
        if "routes" in q:
            row["routes"] = q["routes"]
        rows.append(row)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def generate_dataset(
    out_dir: str | Path,
    cities: int = 20,
    seed: int = 0,
    questions_per_type: int = 10,
    image_size: tuple[int, int] = (1000, 800),
    test_fraction: float = 0.2,
    map_pixels: tuple[int, ...] | None = None,
) -> Path:
    """Generate `cities` synthetic cities under `out_dir`; returns `out_dir`.

    Writes maps/synthland/<city>.png, stations/synthland/<city>.json, train.jsonl and test.jsonl. The test split
    holds every question of the last round(cities * test_fraction) cities (at least one when cities >= 2) plus
    test_fraction of the other cities' questions; train holds the rest. reasonmap.jsonl (split `reasonmap`) holds
    `questions_per_type` ReasonMap benchmark rows per city (short and long questions, embedded line lists): odd
    cities in the benchmark's china convention, every third city's map embedded as base64 (see
    `rewardmap.synth.reasonmap`). With `map_pixels`, city i's map is saved resized to at most
    map_pixels[i % len(map_pixels)] pixels (Qwen2.5-VL's smart_resize): maps of mixed sizes. Same arguments ->
    byte-identical files."""
    if not 1 <= cities <= 500:
        raise InputError(f"cities must be in 1..500 (distinct generated city names), got {cities}")
    if not 0.0 <= test_fraction < 1.0:
        raise InputError(f"test_fraction must be in [0, 1), got {test_fraction}")
    out = Path(out_dir)
    (out / "maps" / COUNTRY).mkdir(parents=True, exist_ok=True)
    (out / "stations" / COUNTRY).mkdir(parents=True, exist_ok=True)
    names = generate_names(random.Random(f"cities-{seed}"), cities, second_word_p=0.0)
    held_out = 0 if cities < 2 else max(1, round(cities * test_fraction))
    train, test, benchmark = [], [], []
    for index, name in enumerate(tqdm(names, desc="synth cities", unit="city")):
        rng = random.Random(f"{seed}-{index}")
        city_id = re.sub(r"[^a-z0-9]+", "_", name.lower())
        net = generate_network(rng, city_id, DIFFICULTIES[index % 3])
        difficulty = difficulty_of(len(net.lines), len(station_lines(net.lines)))
        image, _ = render_map(net, image_size, title=name)
        if map_pixels:
            image = fit_image(image, min_pixels=MIN_PIXELS, max_pixels=map_pixels[index % len(map_pixels)])
        figure = out / "maps" / COUNTRY / f"{city_id}.png"
        image.save(figure, optimize=True)
        metro = json.dumps(metro_json(net), ensure_ascii=False, indent=2)
        (out / "stations" / COUNTRY / f"{city_id}.json").write_text(metro + "\n", encoding="utf-8")
        rows = _city_rows(net, difficulty, make_questions(net, rng, questions_per_type))
        embedded = figure.read_bytes() if index % 3 == 2 else f"./maps/{COUNTRY}/{city_id}.png"
        pair_rng = random.Random(f"reasonmap-{seed}-{index}")  # its own stream: train/test stay as they were
        benchmark += reasonmap_rows(net, difficulty, pair_rng, questions_per_type, embedded, china=index % 2 == 1)
        if index >= cities - held_out:
            test += rows
            continue
        rng.shuffle(rows)
        cut = round(len(rows) * test_fraction)
        test += rows[:cut]
        train += rows[cut:]
    _write_jsonl(out / "train.jsonl", train)
    _write_jsonl(out / "test.jsonl", test)
    _write_jsonl(out / "reasonmap.jsonl", benchmark)
    counts = (len(train), len(test), len(benchmark))
    logger.info("synth: %d cities, %d train, %d test and %d ReasonMap rows in %s", cities, *counts, out)
    return out
