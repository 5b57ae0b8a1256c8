"""ReasonMap-Plus scoring (EVAL_SPEC §6, §8): the reward's released extraction on every type and difficulty."""

import pytest

from rewardmap.eval.plus import plus_kind, score_plus


def plus_row(question_type: str, answer: int, difficulty: str = "easy") -> dict:
    """A ReasonMap-Plus row with the fields score_plus reads (and those errors name)."""
    return {
        "question": "...",
        "type": question_type,
        "answer": answer,
        "difficulty_city": difficulty,
        "country": "china",
        "city": "beijing",
    }


@pytest.mark.parametrize(
    ("question_type", "answer", "response", "expected"),
    [
        ("TorF1", 1, r"\boxed{Yes}", True),
        ("TorF1", 1, r"\boxed{\text{yes}}", False),
        ("Counting2", 10, r"\boxed{1_0}", True),
        ("Counting3", 0, r"\boxed{.}", True),
        ("Counting2", 3, r"\boxed{3.0}", False),
        ("Counting2", 3, r"\boxed{x = 3 km}", True),
        ("Counting1", 1, r"\boxed{(B)}", False),
        ("Counting1", 1, "The answer is B", True),
    ],
)
def test_worked_examples(question_type: str, answer: int, response: str, expected: bool) -> None:
    assert score_plus(response, plus_row(question_type, answer)) is expected


@pytest.mark.parametrize("difficulty", ["easy", "middle", "hard"])
@pytest.mark.parametrize(
    ("question_type", "answer", "right", "wrong"),
    [
        ("TorF1", 0, r"\boxed{No}", r"\boxed{Yes}"),
        ("TorF2", 1, "The final answer is yes.", "The final answer is no."),
        ("Counting1", 3, r"\boxed{D}", r"\boxed{C}"),
        ("Counting2", 12, r"\boxed{12}", r"\boxed{13}"),
        ("Counting3", 4, "So the answer is 4", "So the answer is four"),
    ],
)
def test_every_type_and_difficulty(question_type: str, answer: int, right: str, wrong: str, difficulty: str) -> None:
    sample = plus_row(question_type, answer, difficulty)
    assert score_plus(right, sample) is True
    assert score_plus(wrong, sample) is False


@pytest.mark.parametrize("response", ["", " ", "no idea", r"\boxed{}", "x" * 1_000_000, r"\boxed{" * 1000])
def test_empty_unparseable_and_huge_answers_are_wrong(response: str) -> None:
    assert score_plus(response, plus_row("Counting2", 7)) is False
    assert score_plus(response, plus_row("TorF2", 1)) is False


def test_plus_kinds() -> None:
    assert [plus_kind(t) for t in ("TorF1", "TorF2", "isTorF", "Counting1", "Counting3")] == [
        "TorF",
        "TorF",
        "TorF",
        "Counting1",
        "Counting3",
    ]


def test_errors_name_the_sample() -> None:
    with pytest.raises(ValueError, match=r"china/beijing type='Counting4' difficulty_city='hard'.*TorF"):
        score_plus("1", plus_row("Counting4", 1, "hard"))
    with pytest.raises(ValueError, match=r"type=None"):
        score_plus("1", plus_row("TorF1", 1) | {"type": None})
    with pytest.raises(ValueError, match=r"type='TorF1'.*'answer'.*'yes'"):
        score_plus("1", plus_row("TorF1", 1) | {"answer": "yes"})
