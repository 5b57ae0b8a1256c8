"""ReasonMap scoring (EVAL_SPEC §2-§5, §8): worked examples on the real line lists, quirks, errors, huge answers."""

import json
from pathlib import Path

import pytest

from rewardmap.eval.routes import clean_k, parse_sections, reference_line_name, score_reasonmap

NUMBER_Q = "... Route Name: ...\nNumber of Via Stops: [number]\n"
VIA_Q = "... Route Name: ...\nVia Stops: [stop 1, stop 2]\n"
MIAMI_LINE = "Metrorail Green Line"
SENTENCE = "This is the fastest route."


def R(*sections: tuple[str, ...]) -> str:
    """EVAL_SPEC §8's R(l, d, a[, x]): one block per section, joined by `--⏎`."""
    blocks = []
    for line, dep, arr, *extra in sections:
        tail = "".join(f"{x}\n" for x in extra)
        blocks.append(f"Route Name: {line}\nDeparture Stop: {dep}\nArrival Stop: {arr}\n{tail}")
    return "--\n".join(blocks)


def ref(name: str, dep: str, arr: str, via: list[str] | None = None, num: int | None = None) -> dict:
    """One reference section as in a ReasonMap `routes` plan."""
    via = via or []
    return {
        "route_name": name,
        "departure_stop": dep,
        "arrival_stop": arr,
        "via_stops": via,
        "num_via_stops": len(via) if num is None else num,
    }


def row(country: str, city: str, s1: str, s2: str, *plans: list[dict], question_long: str = NUMBER_Q) -> dict:
    """A ReasonMap row whose `json` is the relative path of the real line list."""
    return {
        "country": country,
        "city": city,
        "json": f"{country}/{city}.json",
        "station_1": s1,
        "station_2": s2,
        "question_short": "...",
        "question_long": question_long,
        "routes": {f"route_{i}": plan for i, plan in enumerate(plans)},
        "difficulty_city": "easy",
    }


def figures(result: dict) -> tuple:
    """(correct, map, DA, RN, ST[, NV, VS]) with the map score rounded like the spec's table."""
    keys = ["departure_arrival_score", "route_name_score", "stops_score", "num_via_stop_score", "via_stops_score"]
    return (result["correct"], round(result["map_score"], 4), *(round(result[k], 4) for k in keys if k in result))


def miami(*plans: list[dict], question_long: str = NUMBER_Q) -> dict:
    plans = plans or ([ref("Metrorail Green Line", "Douglas Road", "University", num=0)],)
    return row("america", "miami", "Douglas Road Station", "University Station", *plans, question_long=question_long)


MI = (MIAMI_LINE, "Douglas Road Station", "University Station")


@pytest.mark.parametrize(
    ("response", "plans", "expected"),
    [
        (R(MI), None, (1, 13, 1, 0, 2)),
        (R(MI), [ref("x", "Douglas Road Station", "University Station")], (1, 12, 1, 0, 1)),
        (R(("Line Li", *MI[1:])), None, (0, 5, 1, 2, 2)),
        (R(MI) + SENTENCE, None, (0, 0, 0, 0, 0)),
        (
            R((MIAMI_LINE, "Douglas Road Station", "Coconut Grove Station"))
            + "--\n"
            + R(("Metrorail Orange Line", "Coconut Grove Station", "University Station")),
            None,
            (1, 12, 1, 0, 1),
        ),
    ],
    ids=["plain", "reference-with-Station", "line-Li", "trailing-sentence", "detour"],
)
def test_miami_short_worked_examples(stations_root: Path, response: str, plans: list | None, expected: tuple) -> None:
    sample = miami(*([plans] if plans else []))
    assert figures(score_reasonmap(response, sample, metro_root=str(stations_root))) == expected


def test_miami_long_number_template_with_sentence(stations_root: Path) -> None:
    response = R((*MI, "Number of Via Stops: 0")) + SENTENCE
    result = score_reasonmap(response, miami(), question="long", metro_root=str(stations_root))
    assert figures(result) == (1, 27, 1, 0, 2, 4, 0)


def test_beijing_three_lines_right_caps_at_ten_plus_ten(stations_root: Path) -> None:
    plan = [
        ref("地铁15号线(俸伯--清华东路西口)", "望京东", "望京"),
        ref("地铁14号线(善各庄--张郭庄)", "望京", "高家园"),
        ref("地铁12号线(四季青桥--东坝北)", "高家园", "驼房营"),
    ]
    sample = row("china", "beijing", "望京东站", "驼房营站", plan)
    response = R(
        ("Line 15", "望京东站", "望京站"), ("Line 14", "望京站", "高家园站"), ("Line 12", "高家园站", "驼房营站")
    )
    assert figures(score_reasonmap(response, sample, metro_root=str(stations_root))) == (1, 20, 1, 6, 6)


@pytest.mark.parametrize(
    ("city", "line", "dep", "arr", "reference_name"),
    [
        ("beijing", "首都机场线", "东直门站", "3号航站楼站", "首都机场线(北新桥--2号航站楼)"),
        ("shanghai", "八通线", "莘庄站", "外环路站", "地铁1号线(莘庄--富锦路)"),
    ],
)
def test_china_aliases_and_digit_names(
    stations_root: Path, city: str, line: str, dep: str, arr: str, reference_name: str
) -> None:
    sample = row("china", city, dep, arr, [ref(reference_name, dep[:-1], arr[:-1])])
    assert figures(score_reasonmap(R((line, dep, arr)), sample, metro_root=str(stations_root))) == (1, 13, 1, 0, 2)


def beijing_via() -> dict:
    plan = [ref("地铁1号线(古城--环球度假区)", "军事博物馆", "复兴门", via=["木樨地", "南礼士路"])]
    return row("china", "beijing", "军事博物馆站", "复兴门站", plan, question_long=VIA_Q)


@pytest.mark.parametrize(
    ("separator", "expected"), [(",", (1, 31, 1, 2, 2, 0, 6)), (", ", (1, 27.1667, 1, 2, 2, 0, 2.1667))]
)
def test_beijing_long_via_template(stations_root: Path, separator: str, expected: tuple) -> None:
    response = R(("Line 1", "军事博物馆站", "复兴门站", f"Via Stops: 木樨地站{separator}南礼士路站"))
    result = score_reasonmap(response, beijing_via(), question="long", metro_root=str(stations_root))
    assert figures(result) == expected


def budapest(m: str, n: str) -> str:
    return R(
        ("Line 4", "Keleti pályaudvar Station", "Kálvin tér Station", m),
        ("Line 3", "Kálvin tér Station", "Corvin-negyed Station", n),
    )


@pytest.mark.parametrize(("first", "expected"), [("3", (1, 31, 1, 0, 4, 6, 0)), ("two", (1, 29, 1, 0, 4, 4, 0))])
def test_budapest_long_number_template(stations_root: Path, first: str, expected: tuple) -> None:
    plan = [
        ref("M4", "Keleti pályaudvar", "Kálvin tér", num=2),
        ref("M3", "Kálvin tér", "Corvin-negyed", num=0),
    ]
    sample = row("hungary", "budapest", "Keleti pályaudvar Station", "Corvin-negyed Station", plan)
    response = budapest(f"Number of Via Stops: {first}", "Number of Via Stops: 0")
    assert figures(score_reasonmap(response, sample, question="long", metro_root=str(stations_root))) == expected


def test_clean_k_rules() -> None:
    assert clean_k("Douglas Road Station (Transfer Station)") == "douglasroadstation"
    assert clean_k("Metro *Kálvin-tér*,\n（换乘站）") == "kálvintér"
    assert clean_k("METRO Line") == "metroline"  # upper case survives the first pass ...
    assert clean_k(clean_k("METRO Line")) == "line"  # ... and vanishes when response stops are cleaned again
    assert clean_k("a(b(c)d)e") == "ad)e"  # bracket groups do not nest
    assert clean_k("a(b") == "a(b" and clean_k("a)b(") == "a)b("  # an opener needs a closer after it


def test_reference_line_names() -> None:
    assert reference_line_name("地铁5号线(后关--虎滩新区)", "", True, "dalian") == "Line 5"
    assert reference_line_name("首都机场线(北新桥--2号航站楼)", "", True, "beijing") == "Line 2"
    assert reference_line_name("地铁昌平线(昌平西山口--蓟门桥)", "", True, "beijing") == "昌平线"
    assert reference_line_name("ignored", "Metro B-Line", False, "los_angeles") == "Line B"
    assert reference_line_name("ignored", "Linea C", False, "rome") == "Line C"
    assert reference_line_name("ignored", "B1", False, "rome") == "Line B"
    assert reference_line_name("ignored", "B1", False, "geneva") == "Line B1"
    assert reference_line_name("ignored", "——", False, "lisboa") == "——"


def test_parse_labels_are_exact_and_values_need_newlines() -> None:
    bold = "**Route Name:** Line 1\nDeparture Stop: a\nArrival Stop: b\n"
    assert parse_sections(bold, "short", False)[0].name == "Wrong"  # label present, `Route Name: ` absent
    assert parse_sections("Route Name：Line 1\nDeparture Stop: a\nArrival Stop: b", "short", False) == []
    last_line = parse_sections("Route Name: L\nDeparture Stop: a\nArrival Stop: b", "long", True)[0]
    assert (last_line.arr, last_line.tail) == ("Wrong", "Route Name: L\nDeparture Stop: a\nArrival Stop: b")
    short = parse_sections("Route Name:  L \nDeparture Stop: A b\nArrival Stop: B  c \n more", "short", False)[0]
    assert (short.name, short.dep, short.arr) == ("L", "ab", "bcmore")


@pytest.mark.parametrize("question", ["short", "long"])
@pytest.mark.parametrize("response", ["", "   ", "I cannot read this map.", "-- -- --", "Route Name: x\n"])
def test_unparseable_answers_score_zero(stations_root: Path, question: str, response: str) -> None:
    result = score_reasonmap(response, miami(), question=question, metro_root=str(stations_root))
    assert result["correct"] == 0 and result["map_score"] == 0
    assert set(result) >= {"departure_arrival_score", "route_name_score", "stops_score"}
    assert ("via_stops_score" in result) == (question == "long")
    assert all(v == 0 for v in result.values())


def test_ties_go_to_the_later_reference_route(stations_root: Path) -> None:
    right_name = ref("地铁1号线(古城--环球度假区)", "西单", "东单")  # RN 2, ST 0
    right_stops = ref("地铁2号线(西直门--积水潭)", "军事博物馆", "复兴门")  # RN 0, ST 2
    response = R(("Line 1", "军事博物馆站", "复兴门站"))
    for plans, stops in (([right_name], [right_stops]), ([right_stops], [right_name])):
        sample = row("china", "beijing", "军事博物馆站", "复兴门站", plans, stops)
        result = score_reasonmap(response, sample, metro_root=str(stations_root))
        assert result["map_score"] == 13
        assert (result["route_name_score"], result["stops_score"]) == ((0, 2) if stops == [right_stops] else (2, 0))
    both_right = ref("地铁1号线(古城--环球度假区)", "军事博物馆", "复兴门")  # RN 2, ST 2
    best_first = row("china", "beijing", "军事博物馆站", "复兴门站", [both_right], [right_name])
    result = score_reasonmap(response, best_first, metro_root=str(stations_root))
    assert (result["map_score"], result["route_name_score"], result["stops_score"]) == (15, 2, 2)


def test_json_mapping_and_json_text_routes(stations_root: Path) -> None:
    sample = miami()
    lines = json.loads((stations_root / "america" / "miami.json").read_text(encoding="utf-8"))
    inline = sample | {"json": lines, "routes": json.dumps(sample["routes"])}
    assert figures(score_reasonmap(R(MI), inline)) == (1, 13, 1, 0, 2)
    as_text = inline | {"json": json.dumps(lines)}
    assert figures(score_reasonmap(R(MI), as_text)) == (1, 13, 1, 0, 2)


def test_wrong_transfer_and_unknown_line_are_incorrect(stations_root: Path) -> None:
    gap = R((MIAMI_LINE, "Douglas Road Station", "Coconut Grove Station")) + "--\n"
    gap += R(("Metrorail Orange Line", "Vizcaya Station", "University Station"))
    assert score_reasonmap(gap, miami(), metro_root=str(stations_root))["correct"] == 0
    unknown = R(("Metrorail Blue Line", *MI[1:]))
    assert score_reasonmap(unknown, miami(), metro_root=str(stations_root))["correct"] == 0


def test_long_number_guesses_far_off_and_huge(stations_root: Path) -> None:
    plan = [ref("M4", "Keleti pályaudvar", "Kálvin tér", num=2), ref("M3", "Kálvin tér", "Corvin-negyed", num=0)]
    sample = row("hungary", "budapest", "Keleti pályaudvar Station", "Corvin-negyed Station", plan)
    for first, nv in (("1", 2 + 4), ("9", 0 + 4), ("0" * 5000 + "2", 8), ("9" * 5000, 4)):
        response = budapest(f"Number of Via Stops: {first}", "Number of Via Stops: 0")
        result = score_reasonmap(response, sample, question="long", metro_root=str(stations_root))
        assert result["num_via_stop_score"] == nv


def test_one_megabyte_answers(stations_root: Path) -> None:
    junk = {"open": "(" * 1_000_000, "digits": "7" * 1_000_000, "metro": "Metro " * 170_000, "dash": "-" * 1_000_000}
    for name, text in junk.items():
        short = score_reasonmap(R(MI) + text, miami(), metro_root=str(stations_root))
        # K deletes `-`, `Metro` and spaces, so those tails vanish; the others join the arrival stop
        assert short["correct"] == (1 if name in ("dash", "metro") else 0), name
        named = R((text, *MI[1:]))
        named += "Number of Via Stops: " + text
        long = score_reasonmap(named, miami(), question="long", metro_root=str(stations_root))
        # a name of dashes splits the section on `--`, leaving nothing to parse
        assert (long["correct"], long["departure_arrival_score"]) == (0, 0 if name == "dash" else 1), name


def test_errors_name_the_sample(stations_root: Path) -> None:
    with pytest.raises(ValueError, match=r"america/miami 'Douglas Road Station' -> 'University Station'.*routes"):
        score_reasonmap(R(MI), miami() | {"routes": {}}, metro_root=str(stations_root))
    with pytest.raises(ValueError, match=r"america/miami .*via-stops template"):
        response = R((*MI, "Via Stops: 某站"))
        score_reasonmap(response, miami(question_long=VIA_Q), question="long", metro_root=str(stations_root))
    with pytest.raises(FileNotFoundError, match=r"america/miami .*metro_root"):
        score_reasonmap(R(MI), miami(), metro_root=str(stations_root / "nowhere"))
    with pytest.raises(ValueError, match="question"):
        score_reasonmap(R(MI), miami(), question="medium", metro_root=str(stations_root))


def test_non_china_via_template_without_via_text_still_scores(stations_root: Path) -> None:
    response = R((*MI, "Via Stops: none"))
    result = score_reasonmap(response, miami(question_long=VIA_Q), question="long", metro_root=str(stations_root))
    assert figures(result) == (1, 23, 1, 0, 2, 0, 0)


def test_malformed_reference_names_the_sample(stations_root: Path) -> None:
    broken = miami([{"route_name": "x", "departure_stop": "Douglas Road"}])
    with pytest.raises(ValueError, match=r"america/miami .*arrival_stop"):
        score_reasonmap(R(MI), broken, metro_root=str(stations_root))
