"""The curriculum stream: released stage rule, presets, seeded order, easy_to_hard, steps budgets, exact resume."""

import json
from collections import Counter

import pytest

from rewardmap.data.curriculum import PRESETS, CurriculumStream, plan_batches, resolve_stages

TYPES = ["TorF1", "Counting1", "planning", "TorF2", "Counting2", "Counting3"] * 5 + ["torf1", "COUNTING2"]
DIFFICULTIES = (["easy", "middle", "hard"] * 11)[: len(TYPES)]


def test_released_rule_puts_every_type_in_its_stage():
    expected = {"TorF1": 0, "TorF2": 0, "Counting2": 1, "Counting3": 1, "Counting1": 2, "planning": 3}
    canonical = {name.lower(): name for name in expected}
    batches = plan_batches(TYPES, batch_size=4)
    stages = [stage for stage, _ in batches]
    assert stages == sorted(stages)  # stages run in order, never interleaved
    seen = Counter()
    for stage, indices in batches:
        for index in indices:
            assert expected[canonical[TYPES[index].lower()]] == stage
            seen[index] += 1
    assert set(seen) == set(range(len(TYPES))) and set(seen.values()) == {1}  # one pass, nothing dropped


def test_last_partial_batch_of_each_stage_is_trained():
    batches = plan_batches(TYPES, batch_size=4)
    sizes = {stage: [len(indices) for s, indices in batches if s == stage] for stage in range(4)}
    # stage sizes 11 (TorF1 x6 + TorF2 x5), 11, 5, 5: every stage ends with a partial batch, none is dropped
    assert sizes == {0: [4, 4, 3], 1: [4, 4, 3], 2: [4, 1], 3: [4, 1]}


def test_presets_and_the_no_curriculum_ablation():
    assert [s.types for s in resolve_stages("fine-grained")] == [tuple(t) for t in PRESETS["fine-grained"]]
    coarse = plan_batches(TYPES, "coarse", batch_size=100)
    assert [len(indices) for _, indices in coarse] == [27, 5]
    none = plan_batches(TYPES, "none", batch_size=100)
    assert len(none) == 1 and sorted(none[0][1]) == list(range(len(TYPES)))


def test_shuffle_is_seeded():
    first = plan_batches(TYPES, batch_size=4, seed=1)
    assert first == plan_batches(TYPES, batch_size=4, seed=1)
    assert first != plan_batches(TYPES, batch_size=4, seed=2)


def test_easy_to_hard_orders_each_stage_by_difficulty():
    batches = plan_batches(TYPES, batch_size=3, order="easy_to_hard", difficulties=DIFFICULTIES, seed=0)
    rank = {"easy": 0, "middle": 1, "hard": 2}
    for stage in range(4):
        order = [index for s, indices in batches if s == stage for index in indices]
        assert [rank[DIFFICULTIES[i]] for i in order] == sorted(rank[DIFFICULTIES[i]] for i in order)
    other = plan_batches(TYPES, batch_size=3, order="easy_to_hard", difficulties=DIFFICULTIES, seed=1)
    assert other != batches  # equal difficulties are still shuffled (seeded)
    with pytest.raises(ValueError, match="needs one difficulty per row"):
        plan_batches(TYPES, batch_size=3, order="easy_to_hard")


def test_steps_budget_cycles_or_truncates():
    stages = [
        {"types": ["TorF1", "TorF2"], "steps": 5},
        {"types": ["counting1", "Counting2", "Counting3"], "steps": 1},
    ]
    types = ["TorF1", "TorF2", "TorF1", "Counting1", "Counting2", "Counting3", "Counting1", "Counting2"]
    batches = plan_batches(types, stages, batch_size=2)
    assert [stage for stage, _ in batches] == [0] * 5 + [1]
    assert all(len(indices) == 2 for _, indices in batches)  # exactly N full batches
    torf = [index for stage, indices in batches if stage == 0 for index in indices]
    assert set(torf[0:3]) == set(torf[3:6]) == set(torf[6:9]) == {0, 1, 2}  # whole passes, repeated
    assert sorted(Counter(torf).values()) == [3, 3, 4]
    counting = batches[-1][1]
    assert len(set(counting)) == 2 and set(counting) <= {3, 4, 5, 6, 7}  # truncated to one batch


def test_unknown_and_unstaged_types_are_errors():
    with pytest.raises(ValueError, match="unknown question type 'Counting7'"):
        plan_batches(["TorF1", "Counting7"], batch_size=2)
    with pytest.raises(ValueError, match="stage 1: unknown question type 'TorF9'"):
        plan_batches(["TorF1"], [{"types": ["TorF1"]}, {"types": ["TorF9"]}], batch_size=2)
    with pytest.raises(ValueError, match="rows of type Counting1, planning are in no curriculum stage; add them"):
        plan_batches(["TorF1", "planning", "Counting1"], [{"types": ["TorF1"]}], batch_size=2)


def test_resume_continues_with_the_very_next_batch():
    stream = CurriculumStream(TYPES, batch_size=3, seed=7)
    assert len(stream) == len(plan_batches(TYPES, batch_size=3, seed=7))
    head = [stream.next_batch() for _ in range(4)]
    state = json.loads(json.dumps(stream.state_dict()))
    resumed = CurriculumStream(TYPES, batch_size=3, seed=7)
    resumed.load_state_dict(state)
    tail = list(resumed)
    uninterrupted = list(CurriculumStream(TYPES, batch_size=3, seed=7))
    assert head + tail == uninterrupted
    with pytest.raises(StopIteration):
        resumed.next_batch()


def test_resume_refuses_a_different_plan():
    state = CurriculumStream(TYPES, batch_size=3, seed=7).state_dict()
    with pytest.raises(ValueError, match="saved for a different plan"):
        CurriculumStream(TYPES, batch_size=3, seed=8).load_state_dict(state)
