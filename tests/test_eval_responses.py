"""`rewardmap eval --responses`: answers produced elsewhere scored through the CLI (EVAL_SPEC §8), hand-computed
aggregates, answer formats (§1), bad answer files, eval-compare's ReasonMap columns."""

import argparse
import json
import re
from pathlib import Path

import pytest

from rewardmap.cli import main
from rewardmap.errors import InputError
from rewardmap.eval import compare, runner
from rewardmap.eval.aggregate import aggregate_plus, aggregate_reasonmap
from rewardmap.eval.answers import answer_text

NUMBER_Q = "... Route Name: ...\nNumber of Via Stops: [number]\n"
VIA_Q = "... Route Name: ...\nVia Stops: [stop 1, stop 2]\n"
G = "Metrorail Green Line"
MI = (G, "Douglas Road Station", "University Station")
SENTENCE = "This is the fastest route."


def R(*sections: tuple[str, ...]) -> str:
    """EVAL_SPEC §8's R(l, d, a[, x]): one block per section, joined by `--⏎`."""
    blocks = []
    for line, dep, arr, *extra in sections:
        blocks.append(
            f"Route Name: {line}\nDeparture Stop: {dep}\nArrival Stop: {arr}\n" + "".join(f"{x}\n" for x in extra)
        )
    return "--\n".join(blocks)


def ref(name: str, dep: str, arr: str, via: tuple[str, ...] = (), num: int | None = None) -> dict:
    return {
        "route_name": name,
        "departure_stop": dep,
        "arrival_stop": arr,
        "via_stops": list(via),
        "num_via_stops": len(via) if num is None else num,
    }


def row(place: str, s1: str, s2: str, plan: list[dict], difficulty: str, question_long: str = NUMBER_Q) -> dict:
    """A ReasonMap-layout row; `json` is the real line list's path under the stations folder (--metro-root)."""
    country, city = place.split("/")
    return {
        "question_short": f"From {s1} to {s2}? Answer Route Name / Departure Stop / Arrival Stop per section.",
        "question_long": question_long,
        "routes": {"route_1": plan},
        "figure": "./maps/america/miami.png" if city == "miami" else "./maps/china/jinan.png",  # unscored
        "json": f"{place}.json",
        "country": country,
        "city": city,
        "station_1": s1,
        "station_2": s2,
        "difficulty_city": difficulty,
        "difficulty_question": "easy",
        "city_line_count": 2,
        "city_transfer_count": 1,
        "question_transfer_count": len(plan) - 1,
    }


MIAMI = [ref(G, "Douglas Road", "University", num=0)]
BEIJING_3 = [
    ref("地铁15号线(俸伯--清华东路西口)", "望京东", "望京"),
    ref("地铁14号线(善各庄--张郭庄)", "望京", "高家园"),
    ref("地铁12号线(四季青桥--东坝北)", "高家园", "驼房营"),
]
BEIJING_VIA = [ref("地铁1号线(古城--环球度假区)", "军事博物馆", "复兴门", via=("木樨地", "南礼士路"))]
BUDAPEST = [ref("M4", "Keleti pályaudvar", "Kálvin tér", num=2), ref("M3", "Kálvin tér", "Corvin-negyed", num=0)]
KELETI, KALVIN, CORVIN = "Keleti pályaudvar Station", "Kálvin tér Station", "Corvin-negyed Station"


def budapest(m: str) -> str:
    return R(
        ("Line 4", KELETI, KALVIN, f"Number of Via Stops: {m}"), ("Line 3", KALVIN, CORVIN, "Number of Via Stops: 0")
    )


# EVAL_SPEC §8, one row each: (row, short answer, long answer, short figures, long figures); figures are
# (correct, map, DA, RN, ST[, NV, VS]). Difficulty weights: miami easy 1, beijing hard 2, the others middle 1.5.
CASES = [
    (
        row("america/miami", *MI[1:], MIAMI, "easy"),
        R(MI),
        R((*MI, "Number of Via Stops: 0")) + SENTENCE,
        (1, 13, 1, 0, 2),
        (1, 27, 1, 0, 2, 4, 0),
    ),
    (row("america/miami", *MI[1:], [ref("x", *MI[1:])], "easy"), R(MI), "", (1, 12, 1, 0, 1), None),
    (row("america/miami", *MI[1:], MIAMI, "easy"), R(("Line Li", *MI[1:])), "", (0, 5, 1, 2, 2), None),
    (row("america/miami", *MI[1:], MIAMI, "easy"), R(MI) + SENTENCE, "", (0, 0, 0, 0, 0), None),
    (
        row("america/miami", *MI[1:], MIAMI, "easy"),
        R((G, MI[1], "Coconut Grove Station")) + "--\n" + R(("Metrorail Orange Line", "Coconut Grove Station", MI[2])),
        "",
        (1, 12, 1, 0, 1),
        None,
    ),
    (
        row("china/beijing", "望京东站", "驼房营站", BEIJING_3, "hard"),
        R(("Line 15", "望京东站", "望京站"), ("Line 14", "望京站", "高家园站"), ("Line 12", "高家园站", "驼房营站")),
        "",
        (1, 20, 1, 6, 6),
        None,
    ),
    (
        row(
            "china/beijing",
            "东直门站",
            "3号航站楼站",
            [ref("首都机场线(北新桥--2号航站楼)", "东直门", "3号航站楼")],
            "hard",
        ),
        R(("首都机场线", "东直门站", "3号航站楼站")),
        "",
        (1, 13, 1, 0, 2),
        None,
    ),
    (
        row("china/shanghai", "莘庄站", "外环路站", [ref("地铁1号线(莘庄--富锦路)", "莘庄", "外环路")], "middle"),
        R(("八通线", "莘庄站", "外环路站")),
        "",
        (1, 13, 1, 0, 2),
        None,
    ),
    (
        row("china/beijing", "军事博物馆站", "复兴门站", BEIJING_VIA, "hard", VIA_Q),
        "",
        R(("Line 1", "军事博物馆站", "复兴门站", "Via Stops: 木樨地站,南礼士路站")),
        None,
        (1, 31, 1, 2, 2, 0, 6),
    ),
    (
        row("china/beijing", "军事博物馆站", "复兴门站", BEIJING_VIA, "hard", VIA_Q),
        "",
        R(("Line 1", "军事博物馆站", "复兴门站", "Via Stops: 木樨地站, 南礼士路站")),
        None,
        (1, 27.1667, 1, 2, 2, 0, 2.1667),
    ),
    (row("hungary/budapest", KELETI, CORVIN, BUDAPEST, "middle"), "", budapest("3"), None, (1, 31, 1, 0, 4, 6, 0)),
    (row("hungary/budapest", KELETI, CORVIN, BUDAPEST, "middle"), "", budapest("two"), None, (1, 29, 1, 0, 4, 4, 0)),
]
FIGURES = ["correct", "map_score", "departure_arrival_score", "route_name_score", "stops_score"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    runner.add_arguments(parser)
    return parser.parse_args(argv)


def score_file(data: Path, responses: list[dict], out: Path, *extra: str, metro_root: Path | None = None) -> dict:
    """Run `rewardmap eval --responses` and return results.json."""
    answers = write_jsonl(out.parent / f"{out.name}-responses.jsonl", responses)
    argv = ["--data", str(data), "--split", "validation", "--responses", str(answers), "--out", str(out), *extra]
    argv += ["--metro-root", str(metro_root)] if metro_root else []
    assert runner.run(parse(argv)) == 0
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


@pytest.fixture
def reasonmap_split(tmp_path: Path, reasonmap_root: Path) -> Path:
    """The §8 rows as a ReasonMap split; figures are the real maps, resolved from ../shared/reasonmap."""
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "validation.jsonl", [case[0] for case in CASES])
    (data / "maps").symlink_to(reasonmap_root / "maps")
    return data


def test_worked_examples_and_hand_computed_aggregates_through_the_cli(tmp_path, reasonmap_split, stations_root):
    responses = [{"index": i, "response_short": c[1], "response_long": c[2]} for i, c in enumerate(CASES)]
    responses[0] |= {"token_count_short": 40, "token_count_long": 100}
    responses[5] |= {"token_count_short": 10}
    results = score_file(reasonmap_split, responses, tmp_path / "out", metro_root=stations_root)
    records = [json.loads(line) for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert [(r["index"], r["question"]) for r in records] == [(i, q) for i in range(12) for q in ("short", "long")]
    for index, (_, _, _, short, long) in enumerate(CASES):
        for question, expected in (("short", short), ("long", long)):
            record = records[2 * index + (question == "long")]
            names = FIGURES + (["num_via_stop_score", "via_stops_score"] if question == "long" else [])
            expected = expected or (0,) * len(names)
            assert tuple(round(record[n], 4) for n in names) == expected, (index, question)
    assert results["reasonmap"] == aggregate_reasonmap(records) and "plus" not in results

    # By hand: the 11 original cities leave out shanghai (case 7); weights easy 1, middle 1.5, hard 2.
    reasonmap = results["reasonmap"]
    assert reasonmap["original_cities"]["short"]["plain"] == pytest.approx(
        {"count": 11, "correct": 5 / 11, "map_score": 75 / 11, "token_count": 25.0}
    )
    assert reasonmap["all"]["short"]["plain"] == pytest.approx(
        {"count": 12, "correct": 6 / 12, "map_score": 88 / 12, "token_count": 25.0}
    )
    # miami 13+12+5+0+12 (w 1), beijing 20+13+0+0 (w 2), shanghai 13 (w 1.5), budapest 0+0 (w 1.5); Σw = 17.5.
    assert reasonmap["all"]["short"]["weighted_ours"]["map_score"] == pytest.approx((42 + 66 + 19.5) / 17.5)
    assert reasonmap["all"]["short"]["weighted_ours"]["token_count"] == pytest.approx((40 + 20) / 3)
    long = reasonmap["original_cities"]["long"]["plain"]
    assert long == pytest.approx(
        {
            "count": 11,
            "correct": 5 / 11,
            "map_score": (27 + 31 + (25 + 13 / 6) + 31 + 29) / 11,
            "via_stops_score": (6 + 13 / 6) / 11,
            "num_via_stop_score": (4 + 6 + 4) / 11,
            "token_count": 100.0,
        }
    )
    # beijing cases 8, 9 (w 2) and budapest 10, 11 (w 1.5) are right; miami case 0 (w 1) too.
    assert reasonmap["all"]["long"]["weighted_ours"]["correct"] == pytest.approx((1 + 2 * 2 + 2 * 1.5) / 17.5)
    markdown = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    assert markdown.index("## The paper's Table 1 columns") < markdown.index("## ReasonMap (route planning")
    assert f"| {100 * 5 / 11:.2f} | {100 * 5 / 11:.2f} | {75 / 11:.2f} |" in markdown
    assert "plain means over the 11 cities of the released `cal_metrics.py` (11 rows" in markdown


PLUS = [  # EVAL_SPEC §8's Plus cases: (type, answer, difficulty, response, correct)
    ("TorF1", 1, "easy", "\\boxed{Yes}", 1),
    ("TorF2", 1, "hard", "\\boxed{\\text{yes}}", 0),
    ("Counting2", 10, "middle", "\\boxed{1_0}", 1),
    ("Counting3", 0, "easy", "\\boxed{.}", 1),
    ("Counting2", 3, "hard", "\\boxed{3.0}", 0),
    ("Counting2", 3, "middle", "\\boxed{x = 3 km}", 1),
    ("Counting1", 1, "easy", "\\boxed{(B)}", 0),
    ("Counting1", 1, "hard", "The answer is B", 1),
]


def plus_row(kind: str, answer: int, difficulty: str) -> dict:
    """A ReasonMap-Plus row on the real Jinan map and line list."""
    return {
        "question": f"A {kind} question about Jinan.",
        "figure": "./maps/china/jinan.png",
        "answer": answer,
        "type": kind,
        "country": "china",
        "city": "jinan",
        "station_1": "大学城站",
        "station_2": None,
        "difficulty_city": difficulty,
        "city_line_count": 3,
        "city_transfer_count": 2,
        "json": "./stations/china/jinan.json",
    }


def test_plus_split_scored_through_the_cli(tmp_path, reasonmap_root):
    data = tmp_path / "plus"
    data.mkdir()
    write_jsonl(
        data / "validation.jsonl", [plus_row(kind, answer, difficulty) for kind, answer, difficulty, *_ in PLUS]
    )
    for name in ("maps", "stations"):
        (data / name).symlink_to(reasonmap_root / name)
    responses = [{"index": i, "response": case[3]} for i, case in enumerate(PLUS)]
    results = score_file(data, responses[::-1], tmp_path / "out")  # any line order
    records = [json.loads(line) for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in records] == [case[4] for case in PLUS]
    assert results["plus"] == aggregate_plus(records) and "reasonmap" not in results
    plus = results["plus"]
    # Right: easy 1 + middle 1.5 + easy 1 + middle 1.5 + hard 2 = 7 of Σw = 12.
    assert plus["overall"] == pytest.approx({"weighted": 7 / 12, "plain": 5 / 8, "count": 8})
    assert plus["groups"]["Counting"] == pytest.approx({"weighted": 6 / 9, "plain": 4 / 6, "count": 6})
    assert plus["groups"]["TorF"] == pytest.approx({"weighted": 1 / 3, "plain": 1 / 2, "count": 2})
    assert plus["groups"]["TorF2"]["plain"] == 0.0
    markdown = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    assert f"| {700 / 12:.2f} | {600 / 9:.2f} | {100 / 3:.2f} |" in markdown  # Plus overall / Count / TorF


THINKING = "Route Name: Line Li\nDeparture Stop: Coconut Grove Station\nArrival Stop: University Station\n"
WRAPPED = {  # R(MI) as each kind of model writes it; a draft route in the thinking part misleads a plain reading
    "plain": R(MI),
    "kimi": f"◁think▷{THINKING}◁/think▷\n" + R(MI),
    "skywork": f"<think>{THINKING}</think>\n" + R(MI),
    "qvq": "So the route is\n\\boxed{" + "".join(f"\\text{{{line}}}" for line in R(MI).splitlines()) + "}",
}


def test_answer_text_follows_the_benchmark():
    assert answer_text("a◁/think▷b◁/think▷ c \n", "kimi") == "c"
    assert answer_text("<think>x</think> y", "skywork") == "y"
    assert answer_text("no tags", "kimi") == "no tags"
    assert answer_text("\\boxed{\\text{A}, \\text{B}}", "qvq") == "A\nB"
    assert answer_text("boxed{no text parts}", "qvq") == ""
    assert answer_text("nothing boxed", "qvq") == "nothing boxed"
    with pytest.raises(InputError, match="unknown answer format 'r1'"):
        answer_text("x", "r1")


@pytest.mark.parametrize("answer_format", list(WRAPPED))
def test_each_answer_format_through_the_cli(tmp_path, reasonmap_split, stations_root, reasonmap_root, answer_format):
    responses = [{"index": 0, "response_short": WRAPPED[answer_format], "response_long": ""}]
    chosen = score_file(
        reasonmap_split, responses, tmp_path / "chosen", "--answer-format", answer_format, metro_root=stations_root
    )
    assert chosen["reasonmap"]["all"]["short"]["plain"] == {
        "count": 1,
        "correct": 1.0,
        "map_score": 13.0,
        "token_count": None,
    }
    assert chosen["settings"]["answer_format"] == answer_format
    plain = score_file(reasonmap_split, responses, tmp_path / "plain", metro_root=stations_root)
    assert plain["reasonmap"]["all"]["short"]["plain"]["map_score"] == (13.0 if answer_format == "plain" else 0.0)
    # Plus: \boxed{\text{yes}} is wrong as written (§8) but QVQ's reading keeps the \text{} content.
    data = tmp_path / "plus"
    data.mkdir()
    write_jsonl(data / "validation.jsonl", [plus_row("TorF2", 1, "easy")])
    (data / "maps").symlink_to(reasonmap_root / "maps")
    yes = [{"index": 0, "response": "\\boxed{\\text{yes}}"}]
    plus = score_file(data, yes, tmp_path / "p", "--answer-format", answer_format)
    assert plus["plus"]["overall"]["plain"] == (1.0 if answer_format == "qvq" else 0.0)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"index": 99, "response_short": "", "response_long": ""}'], "line 1: index 99 names no row"),
        (
            [
                '{"index": 0, "response_short": "", "response_long": ""}',
                "",
                '{"index": 0, "response_short": "x", "response_long": ""}',
            ],
            "line 3: row 0 is answered twice (first on line 1)",
        ),
        (["{not json"], "line 1: not JSON"),
        (['{"index": "0", "response_short": ""}'], "line 1: field 'index' must be the row's 0-based position"),
        (['{"index": 1, "response": "x"}'], "line 1: field 'response_short' must be the answer text"),
        (['{"index": 1, "response_short": "x", "response_long": "", "token_count_long": -1}'], "token_count_long"),
        ([], "no answers in the file"),
    ],
)
def test_bad_answer_files_name_the_line(tmp_path, reasonmap_split, stations_root, lines, message):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    argv = ["--data", str(reasonmap_split), "--split", "validation", "--responses", str(answers)]
    with pytest.raises(InputError, match=re.escape(message)):
        runner.run(parse(argv + ["--out", str(tmp_path / "out"), "--metro-root", str(stations_root)]))


def test_cli_input_errors_print_one_line(tmp_path, reasonmap_split, capsys):
    assert main(["eval", "--data", str(reasonmap_split), "--split", "validation"]) == 2
    assert "pass --model MODEL_DIR to generate answers, or --responses FILE" in capsys.readouterr().err
    argv = ["eval", "--data", str(reasonmap_split), "--split", "validation", "--responses", "x.jsonl", "--limit", "2"]
    assert main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_compare_shows_reasonmap_columns(tmp_path, reasonmap_split, stations_root, capsys):
    right = [{"index": i, "response_short": c[1], "response_long": c[2]} for i, c in enumerate(CASES)]
    blank = [{"index": i, "response_short": "", "response_long": ""} for i in range(len(CASES))]
    score_file(reasonmap_split, right, tmp_path / "right", metro_root=stations_root)
    score_file(reasonmap_split, blank, tmp_path / "blank", metro_root=stations_root)
    capsys.readouterr()
    argv = [str(tmp_path / "blank"), str(tmp_path / "right"), "--label-a", "base", "--label-b", "rl"]
    compare_parser = argparse.ArgumentParser()
    compare.add_arguments(compare_parser)
    assert compare.run(compare_parser.parse_args(argv)) == 0
    table = capsys.readouterr().out
    assert f"| ReasonMap acc. short (11 original cities, plain (released), %) | 0.00 | {500 / 11:.2f} |" in table
    assert f"| ReasonMap map score short (all cities, plain) | 0.00 | {88 / 12:.2f} | +{88 / 12:.2f} |" in table
    assert "| ReasonMap acc. long (all cities, weighted (ours), %) |" in table
    assert "base: answers " in table and "rl: answers " in table
