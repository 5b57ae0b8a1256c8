"""ReasonMap-Plus scoring: the reward's released answer extraction and verdict on TorF/Counting rows (EVAL_SPEC §6)."""

import logging
from collections.abc import Mapping

from rewardmap.reward.answer import answer_is_correct, extract_answer

logger = logging.getLogger(__name__)

COUNTING_TYPES = ("Counting1", "Counting2", "Counting3")


def _describe(sample: Mapping) -> str:
    """Name a Plus sample in error messages: city, type and difficulty."""
    return (
        f"ReasonMap-Plus sample {sample.get('country')}/{sample.get('city')} type={sample.get('type')!r} "
        f"difficulty_city={sample.get('difficulty_city')!r}"
    )


def plus_kind(question_type: str, where: str = "ReasonMap-Plus sample") -> str:
    """The verdict kind of a Plus type: `TorF` for any type containing it, else Counting1/2/3 exactly."""
    if isinstance(question_type, str) and "TorF" in question_type:
        return "TorF"
    if question_type in COUNTING_TYPES:
        return question_type
    raise ValueError(
        f"{where}: unknown type {question_type!r}; accepted: any type containing 'TorF', or one of {COUNTING_TYPES}"
    )


def score_plus(response: str, sample: Mapping) -> bool:
    """Whether a Plus answer text is right: released extraction + cleaning + verdict against int(sample['answer'])."""
    where = _describe(sample)
    kind = plus_kind(sample.get("type"), where)
    try:
        answer = int(sample["answer"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: field 'answer' must be an integer, got {sample.get('answer')!r}") from err
    return answer_is_correct(extract_answer(response, "released"), kind, answer, "released")
