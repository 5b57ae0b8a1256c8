"""Benchmark aggregation (EVAL_SPEC §7) on hand-made records with hand-computed plain and weighted figures."""

import json

import pytest

from rewardmap.eval.aggregate import aggregate_plus, aggregate_reasonmap, difficulty_weight, plus_groups

PLUS_RECORDS = [
    {"type": "TorF1", "difficulty_city": "easy", "correct": 1},  # w 1.0
    {"type": "TorF1", "difficulty_city": "hard", "correct": 0},  # w 2.0
    {"type": "TorF2", "difficulty_city": "middle", "correct": True},  # w 1.5
    {"type": "Counting1", "difficulty_city": "hard", "correct": 1},  # w 2.0
    {"type": "Counting3", "difficulty_city": "Easy", "correct": 0},  # w 1.0 (any case)
    {"type": "count_other", "difficulty_city": "unknown", "correct": 1},  # w 1.0 (unknown difficulty)
    {"type": "TorF3", "difficulty_city": "middle", "correct": False},  # w 1.5
]


def test_weights_and_groups() -> None:
    assert [difficulty_weight(d) for d in ("easy", "MIDDLE", "hard", None, "")] == [1.0, 1.5, 2.0, 1.0, 1.0]
    assert plus_groups("TorF1") == ["TorF", "TorF1"]
    assert plus_groups("torf_x") == ["TorF"]
    assert plus_groups("Counting2") == ["Counting"]
    assert plus_groups("Other") == []


def test_aggregate_plus_hand_computed() -> None:
    result = aggregate_plus(PLUS_RECORDS)
    assert result["overall"] == pytest.approx({"weighted": 5.5 / 10, "plain": 4 / 7, "count": 7})
    groups = result["groups"]
    assert groups["Counting"] == pytest.approx({"weighted": 3 / 4, "plain": 2 / 3, "count": 3})
    assert groups["TorF"] == pytest.approx({"weighted": 2.5 / 6, "plain": 2 / 4, "count": 4})
    assert groups["TorF1"] == pytest.approx({"weighted": 1 / 3, "plain": 1 / 2, "count": 2})
    assert groups["TorF2"] == pytest.approx({"weighted": 1.0, "plain": 1.0, "count": 1})
    assert sorted(result["types"]) == ["Counting1", "Counting3", "TorF1", "TorF2", "TorF3", "count_other"]
    assert result["difficulties"]["hard"] == pytest.approx({"weighted": 0.5, "plain": 0.5, "count": 2})
    assert result["difficulties"]["easy"]["count"] == 2
    assert json.loads(json.dumps(result)) == result


def test_aggregate_plus_empty_and_errors() -> None:
    result = aggregate_plus([])
    assert result["overall"] == {"weighted": 0.0, "plain": 0.0, "count": 0}
    assert result["groups"]["TorF2"]["count"] == 0
    with pytest.raises(ValueError, match=r"#1 .*'type'"):
        aggregate_plus([PLUS_RECORDS[0], {"difficulty_city": "easy", "correct": 1}])


def reasonmap_records() -> list[dict]:
    def rec(city: str, difficulty: str, question: str, correct: int, map_score: float, **extra: float) -> dict:
        return {"city": city, "difficulty_city": difficulty, "question": question, "correct": correct} | {
            "map_score": map_score,
            **extra,
        }

    return [
        rec("beijing", "hard", "short", 1, 20, token_count=100),
        rec("miami", "easy", "short", 0, 5, token_count=50),
        rec("shanghai", "middle", "short", 1, 13),
        rec("beijing", "hard", "long", 1, 31, via_stops_score=6, num_via_stop_score=0),
        rec("miami", "easy", "long", 0, 3, via_stops_score=0, num_via_stop_score=4),
        rec("shanghai", "middle", "long", 0, 0, via_stops_score=0, num_via_stop_score=0),
    ]


def test_aggregate_reasonmap_hand_computed() -> None:
    result = aggregate_reasonmap(reasonmap_records())
    original = result["original_cities"]
    assert original["short"]["plain"] == pytest.approx(
        {"count": 2, "correct": 0.5, "map_score": 12.5, "token_count": 75}
    )
    assert original["short"]["weighted_ours"] == pytest.approx(
        {"count": 2, "correct": 2 / 3, "map_score": 45 / 3, "token_count": 250 / 3}
    )
    everything = result["all"]
    assert everything["short"]["plain"] == pytest.approx(
        {"count": 3, "correct": 2 / 3, "map_score": 38 / 3, "token_count": 75}
    )
    assert everything["short"]["weighted_ours"]["map_score"] == pytest.approx(64.5 / 4.5)
    assert everything["long"]["plain"] == pytest.approx(
        {
            "count": 3,
            "correct": 1 / 3,
            "map_score": 34 / 3,
            "via_stops_score": 2,
            "num_via_stop_score": 4 / 3,
            "token_count": None,
        }
    )
    assert everything["long"]["weighted_ours"]["via_stops_score"] == pytest.approx(12 / 4.5)
    assert everything["long"]["weighted_ours"]["num_via_stop_score"] == pytest.approx(4 / 4.5)
    assert json.loads(json.dumps(result)) == result


def test_aggregate_reasonmap_errors_name_the_record() -> None:
    with pytest.raises(ValueError, match=r"#0 \(city 'rome'\).*'medium'"):
        aggregate_reasonmap([{"city": "rome", "question": "medium", "correct": 1, "map_score": 1}])
