"""REWARD_SPEC.md §7 worked examples, both variants, on the real Miami / Beijing / Shanghai line lists."""

import pytest

from rewardmap.reward import RewardBreakdown, compute_score, score_batch

GREEN, ORANGE = "Metrorail Green Line", "Metrorail Orange Line"


def route(*sections: tuple[str, str, str]) -> str:
    """R(l, a, b; ...) of §7: one `Route Name/Departure Stop/Arrival Stop` block per section, joined by `--`."""
    return "--\n".join(f"Route Name: {line}\nDeparture Stop: {a}\nArrival Stop: {b}\n" for line, a, b in sections)


@pytest.fixture(scope="module")
def samples(stations_root):
    def planning(city, country, difficulty, transfers, s1, s2):
        return {
            "type": "planning",
            "city": city,
            "difficulty_city": difficulty,
            "question_transfer_count": transfers,
            "station_1": s1,
            "station_2": s2,
            "json": str(stations_root / country / f"{city}.json"),
        }

    return {
        "M": planning("miami", "america", "easy", 0, "Douglas Road Station", "University Station"),
        "SH": planning("shanghai", "china", "easy", 0, "莘庄站", "外环路站"),
        "BJ16": planning("beijing", "china", "easy", 0, "红莲南路站", "东管头南站"),
        "BJ1": planning("beijing", "china", "middle", 1, "南礼士路站", "阜成门站"),
        "C1": {
            "type": "Counting1",
            "answer": 1,
            "city": "beijing",
            "difficulty_city": "easy",
            "station_1": "军事博物馆站",
            "station_2": "复兴门站",
            "json": str(stations_root / "china" / "beijing.json"),
        },
    }


def answer_sample(kind: str, answer: int, difficulty: str) -> dict:
    return {"type": kind, "answer": answer, "difficulty_city": difficulty}


M_GREEN = route((GREEN, "Douglas Road", "University"))
M_LOWER = M_GREEN.replace("Route Name", "route name").replace(" Stop", " stop").replace("Departure", "departure")
BJ_TRANSFER = route(("Line 1", "南礼士路站", "复兴门站"), ("Line 2", "复兴门站", "阜成门站"))
CASES = [
    (answer_sample("TorF1", 1, "easy"), "\\boxed{Yes}", 10, 10),
    (answer_sample("TorF1", 1, "easy"), "\\boxed{\\text{yes}}", 0, 10),
    (answer_sample("TorF1", 1, "hard"), "the answer is no\nThe answer is yes", 0, 15),
    (answer_sample("Counting2", 4, "easy"), "the final answer is 3. the answer is 4", 0, 10),
    (answer_sample("Counting2", 10, "easy"), "\\boxed{1_0}", 10, 0),
    (answer_sample("Counting2", 0, "easy"), "\\boxed{.}", 10, 0),
    (answer_sample("Counting3", 3, "middle"), "\\boxed{x = 3 km}", 12, 12),
    ("C1", "Stops: [木樨地站, 南礼士路站, 西单站]\n\\boxed{B}", 10, 10.25),
    ("M", M_GREEN, 10.5, 13),
    ("M", route((ORANGE, "Douglas Road", "University")), 10.5, 11),
    ("M", route((GREEN, "Douglas Road", "Univ")), 0, 13),
    (
        "M",
        M_GREEN.replace("Route Name", "route name").replace(" Stop", " stop").replace("Departure", "departure"),
        0,
        13,
    ),
    ("M", M_GREEN + "This is the fastest route.", 0, 13),
    ("M", M_GREEN.replace("Route Name: ", "Route Name:"), -1.5, 13),
    ("SH", route(("八通线", "莘庄站", "外环路站")), 10.5, 1),
    ("BJ16", route(("Line 16", "红莲南路站", "东管头南站")), -1.5, 13),
    ("BJ1", BJ_TRANSFER, 20.4, 24.65),
]


@pytest.mark.parametrize(("sample", "response", "released", "corrected"), CASES)
def test_worked_example(samples, sample, response, released, corrected):
    sample = samples[sample] if isinstance(sample, str) else sample
    assert compute_score(response, sample).total == pytest.approx(released, abs=1e-9)
    fixed = compute_score(response, sample, variant="corrected", counting1_detail=True)
    assert fixed.total == pytest.approx(corrected, abs=1e-9)


def test_breakdown_fields(samples):
    score = compute_score(
        route(("Line 1", "南礼士路站", "复兴门站"), ("Line 2", "复兴门站", "阜成门站")), samples["BJ1"]
    )
    assert score == RewardBreakdown(total=pytest.approx(20.4), correctness=10.0, detail=4.0, weight=1.7, correct=True)
    fixed = compute_score("Stops: [木樨地站, 南礼士路站, 西单站]\n\\boxed{B}", samples["C1"], variant="corrected")
    assert fixed.detail == 0.0 and fixed.total == 10.0  # Counting1 detail is opt-in


def test_direct_route_and_one_transfer_details(samples):
    """§5: a correct direct route earns detail 1, a correct one-transfer route 4 (released)."""
    assert compute_score(M_GREEN, samples["M"]).detail == 1.0
    assert compute_score(BJ_TRANSFER, samples["BJ1"]).detail == 4.0


def test_torf3_and_baseline_mode():
    sample = answer_sample("TorF3", 1, "hard")
    assert compute_score("\\boxed{yes}", sample).total == 15.0
    with pytest.raises(ValueError, match="TorF3"):
        compute_score("\\boxed{yes}", sample, variant="corrected")
    unknown_difficulty = answer_sample("TorF1", 1, "impossible")
    assert compute_score("\\boxed{yes}", unknown_difficulty, mode="baseline").total == 10.0


def test_metro_mapping_equals_file(samples, stations_root):
    from rewardmap.reward import load_metro

    by_path = samples["BJ1"]
    by_mapping = {**by_path, "json": None, "metro": load_metro(by_path["json"])}
    response = route(("Line 1", "南礼士路站", "复兴门站"), ("Line 2", "复兴门站", "阜成门站"))
    for variant in ("released", "corrected"):
        assert compute_score(response, by_mapping, variant=variant) == compute_score(
            response, by_path, variant=variant
        )
    relative = {**by_path, "json": "china/beijing.json"}
    assert compute_score(response, relative, metro_root=stations_root).total == pytest.approx(20.4)


def test_score_batch_matches_compute_score(samples):
    responses = [M_GREEN, "\\boxed{B}", route(("八通线", "莘庄站", "外环路站"))]
    rows = [samples["M"], samples["C1"], samples["SH"]]
    for variant in ("released", "corrected"):
        expected = [compute_score(r, s, variant=variant) for r, s in zip(responses, rows, strict=True)]
        assert score_batch(responses, rows, variant=variant) == expected
