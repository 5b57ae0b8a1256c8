"""Never raising on any response, corrected outranking wrong answers, and clear errors for bad samples."""

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewardmap.reward import answer_is_correct, compute_score, extract_answer, score_batch
from rewardmap.reward.answer import match_close

VARIANTS = ("released", "corrected")
PIECES = (
    ["\\boxed{", "oxed{", "OXED{", "{", "}", "[", "]", "(", ")", "（", "）", "--", "\n", "Route Name: ", "route name:"]
    + ["Departure Stop: ", "Arrival Stop:", "Stops: [", ",", "\\text{", "\\mbox{", "=", "\\approx", "the answer is "]
    + ["yes", "B", "3", "站", "\x00", "\ud800", "\udfff", "\u0130", "Line 1", "复兴门站", " "]
)


@pytest.fixture(scope="module")
def samples(stations_root):
    beijing = str(stations_root / "china" / "beijing.json")
    common = {"city": "beijing", "difficulty_city": "hard", "json": beijing, "answer": 1}
    return [
        {
            **common,
            "type": "planning",
            "question_transfer_count": 1,
            "station_1": "南礼士路站",
            "station_2": "阜成门站",
        },
        {**common, "type": "Counting1", "station_1": "军事博物馆站", "station_2": "复兴门站"},
        {**common, "type": "TorF2"},
        {**common, "type": "Counting3"},
    ]


def score_everywhere(response: str, samples: list[dict]) -> None:
    for variant in VARIANTS:
        extract_answer(response, variant)
        for sample in samples:
            for c1 in (False, True):
                score = compute_score(response, sample, variant=variant, counting1_detail=c1)
                assert score.total == score.weight * (score.correctness + 0.5 * score.detail)


@settings(max_examples=150, deadline=None)
@given(text=st.text())
def test_never_raises_on_arbitrary_text(samples, text):
    score_everywhere(text, samples)


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(st.sampled_from(PIECES), max_size=60))
def test_never_raises_on_structured_junk(samples, parts):
    score_everywhere("".join(parts), samples)


@settings(max_examples=50, deadline=None)
@given(blob=st.binary(max_size=300))
def test_never_raises_on_binary_junk(samples, blob):
    score_everywhere(blob.decode("utf-8", "surrogateescape"), samples)
    score_everywhere(blob.decode("latin-1"), samples)


@pytest.mark.parametrize(
    "response",
    [
        "",
        "(" * 1_000_000,
        "Route Name: " * 80_000,
        "OXED{" * 200_000,
        "\\boxed{" + "{" * 500_000 + "}" * 500_000,
        "\\boxed{" + "}" * 1_000_000,
        "\\text{" * 160_000 + "{}" * 10,
        "Stops: [" + "(," * 500_000,
        "--" * 500_000,
        "\x00\ud800" * 500_000,
    ],
)
def test_never_raises_on_one_megabyte(samples, response):
    score_everywhere(response, samples)


def test_match_close_counts_nesting():
    assert match_close("a{b}c}d", 0) == 5
    assert match_close("{}}", 0) == 2
    assert match_close("{{", 0) == -1
    assert match_close("[a, [b]], c]", 1, "[]") == 7


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="{}ab", max_size=40), st.integers(0, 40))
def test_match_close_equals_a_depth_walk(text, start):
    start = min(start, len(text))
    depth, expected = 1, -1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            expected = i
            break
    assert match_close(text, start) == expected


def test_corrected_right_route_beats_wrong_arrival(samples):
    planning = samples[0]
    right = "Route Name: Line 1\nDeparture Stop: 南礼士路站\nArrival Stop: 复兴门站\n--\n"
    for arrival in ("阜成门站", "车公庄站", "西直门站", "北京站"):
        response = right + f"Route Name: Line 2\nDeparture Stop: 复兴门站\nArrival Stop: {arrival}\n"
        score = compute_score(response, planning, variant="corrected")
        assert score.correct == (arrival == "阜成门站")
    good = compute_score(right + "Route Name: Line 2\nDeparture Stop: 复兴门站\nArrival Stop: 阜成门站\n", planning,
                         variant="corrected")  # fmt: skip
    for arrival in ("车公庄站", "西直门站", "北京站", "x"):
        bad = right + f"Route Name: Line 2\nDeparture Stop: 复兴门站\nArrival Stop: {arrival}\n"
        assert good.total > compute_score(bad, planning, variant="corrected").total


@settings(max_examples=100, deadline=None)
@given(prefix=st.text(max_size=40), wrap=st.sampled_from(["\\boxed{%s}", "The answer is %s.", "%s"]))
def test_corrected_right_torf_beats_flipped(samples, prefix, wrap):
    sample = samples[2]  # answer 1 = yes
    right = compute_score(prefix + "\n" + wrap % "yes", sample, variant="corrected")
    flipped = compute_score(prefix + "\n" + wrap % "no", sample, variant="corrected")
    assert right.total >= flipped.total
    if "boxed" not in prefix.lower() and "answer" not in prefix.lower() and wrap != "%s":
        assert right.total > flipped.total


def test_answer_interface_for_evaluation():
    assert extract_answer("The answer is B.") == "b"
    assert answer_is_correct("b", "Counting1", 1)
    assert not answer_is_correct("(b)", "Counting1", 1)
    assert answer_is_correct("٣", "Counting2", 3) and not answer_is_correct("٣", "Counting2", 3, "corrected")
    assert answer_is_correct("0" * 5000 + "7", "Counting3", 7, "corrected")
    assert not answer_is_correct("1" * 5000, "Counting3", 7)
    with pytest.raises(ValueError, match="Counting4"):
        answer_is_correct("1", "Counting4", 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"type": "planing"}, "unknown type 'planing'"),
        ({"type": "Counting4"}, "unknown Counting type 'Counting4'"),
        ({"difficulty_city": "medium"}, "unknown difficulty_city 'medium'"),
        ({"question_transfer_count": "one"}, "question_transfer_count"),
        ({"question_transfer_count": -1}, "must be >= 0"),
        ({"station_1": None}, "station_1 and station_2 must be strings"),
    ],
)
def test_bad_sample_raises_one_clear_error(samples, change, message):
    sample = {**samples[0], **change}
    with pytest.raises(ValueError, match=message) as error:
        compute_score("anything", sample)
    text = str(error.value)
    assert "city='beijing'" in text and f"type={sample['type']!r}" in text and "station_1=" in text


def test_missing_metro_file_names_sample_and_path(samples, tmp_path):
    sample = {**samples[0], "json": "nowhere/atlantis.json"}
    with pytest.raises(FileNotFoundError, match="atlantis.json") as error:
        compute_score("", sample, metro_root=tmp_path)
    assert "station_1='南礼士路站'" in str(error.value) and "metro_root" in str(error.value)


def test_unknown_mode_and_variant_and_batch_checks_first(samples):
    with pytest.raises(ValueError, match="mode"):
        compute_score("", samples[2], mode="hard")
    with pytest.raises(ValueError, match="variant"):
        compute_score("", samples[2], variant="fixed")
    with pytest.raises(ValueError, match="Counting9"):
        score_batch(["x", "y"], [samples[2], {**samples[2], "type": "Counting9"}])
    with pytest.raises(ValueError, match="2 responses but 1 samples"):
        score_batch(["x", "y"], [samples[2]])


def test_negative_transfers_allowed_in_baseline_mode(samples):
    sample = {**samples[0], "question_transfer_count": -1}
    assert compute_score("", sample, mode="baseline").total == 0.0


def test_import_is_pure_stdlib():
    code = "import sys, rewardmap.reward; heavy = {'torch', 'transformers', 'numpy'} & set(sys.modules); print(heavy)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "set()"
